//! `static_configs`: groups written in the scrape config, published once.

use tokio::sync::watch;

use crate::scrape::TargetGroup;

/// Publishes `groups`; they change only with the config (a reload starts a new provider).
pub fn run(groups: Vec<TargetGroup>, tx: watch::Sender<Vec<TargetGroup>>) {
    tx.send_replace(groups);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::LabelMap;

    #[test]
    fn publishes_the_groups() {
        let (tx, rx) = watch::channel(Vec::new());
        let group = TargetGroup {
            source: "0".into(),
            targets: vec![LabelMap::from([("__address__".into(), "a:1".into())])],
            labels: LabelMap::new(),
        };
        run(vec![group.clone()], tx);
        assert_eq!(*rx.borrow(), vec![group]);
    }
}
