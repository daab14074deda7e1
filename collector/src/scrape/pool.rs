//! The collector pool: who the live members are, and which of them scrape a target.

use tokio::sync::watch;

/// The live members of the pool, as member URLs, sorted; this collector is one of them.
pub trait Membership: Send + Sync {
    /// This collector's member URL.
    fn me(&self) -> &str;
    /// The live members, updated as they join and leave.
    fn members(&self) -> watch::Receiver<Vec<String>>;
}

/// A pool of one: this collector scrapes every target.
pub struct Alone {
    me: String,
    members: watch::Sender<Vec<String>>,
}

impl Alone {
    pub fn new(me: impl Into<String>) -> Alone {
        let me = me.into();
        let (members, _) = watch::channel(vec![me.clone()]);
        Alone { me, members }
    }
}

impl Membership for Alone {
    fn me(&self) -> &str {
        &self.me
    }

    fn members(&self) -> watch::Receiver<Vec<String>> {
        self.members.subscribe()
    }
}
