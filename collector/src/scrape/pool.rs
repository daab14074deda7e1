//! The collector pool: who the live members are ([`Membership`]: [`Alone`], [`Static`],
//! [`DnsPeers`], [`EtcdMembership`]), and which of them scrape a target ([`owners`]).
//!
//! Every member computes the owners of every target from the same member list with the same
//! stable hash, so they agree without talking to each other; while lists differ (a join or a
//! leave propagating) a target may briefly have one owner too many or too few.

use sonde_common::etcd::{EtcdClient, Registration, Snapshot};
use sonde_common::hash::fnv1a;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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

/// A pool found in DNS (`--pool-dns host:port`), such as a Kubernetes headless Service: every
/// address the name resolves to is a member `http://<address>:<port>`, re-resolved every
/// `refresh`. This collector is always a member (its `--advertise-url` should be its own
/// address as DNS gives it). A failed lookup keeps the last list.
pub struct DnsPeers {
    me: String,
    members: watch::Receiver<Vec<String>>,
}

impl DnsPeers {
    pub fn start(
        me: impl Into<String>,
        name: String,
        refresh: Duration,
        cancel: CancellationToken,
    ) -> DnsPeers {
        let me = me.into();
        let (tx, members) = watch::channel(vec![me.clone()]);
        let mine = me.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                match tokio::net::lookup_host(name.as_str()).await {
                    Ok(addrs) => {
                        let mut list: Vec<String> = addrs.map(|a| format!("http://{a}")).collect();
                        list.push(mine.clone());
                        list.sort();
                        list.dedup();
                        tx.send_if_modified(|cur| {
                            let changed = *cur != list;
                            if changed {
                                *cur = list;
                            }
                            changed
                        });
                        failing = false;
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(name, error = %e, "pool: cannot resolve the peers' DNS name; keeping the last members");
                        }
                        failing = true;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(refresh) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        });
        DnsPeers { me, members }
    }
}

impl Membership for DnsPeers {
    fn me(&self) -> &str {
        &self.me
    }

    fn members(&self) -> watch::Receiver<Vec<String>> {
        self.members.clone()
    }
}

/// Where collectors register as pool members in etcd.
pub const ETCD_MEMBER_PREFIX: &str = "/sonde/collectors/";
/// Lease TTL of a member: how long a collector that died stays in the others' lists.
pub const ETCD_MEMBER_TTL: Duration = Duration::from_secs(5);

/// A fixed pool (`--pool-peer`): the members never change.
pub struct Static {
    me: String,
    members: watch::Sender<Vec<String>>,
}

impl Static {
    /// `peers` with `me` added if missing; sorted, without duplicates or empty names.
    pub fn new(me: impl Into<String>, peers: impl IntoIterator<Item = String>) -> Static {
        let me = me.into();
        let mut list: Vec<String> = peers
            .into_iter()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .chain(std::iter::once(me.clone()))
            .collect();
        list.sort();
        list.dedup();
        let (members, _) = watch::channel(list);
        Static { me, members }
    }
}

impl Membership for Static {
    fn me(&self) -> &str {
        &self.me
    }

    fn members(&self) -> watch::Receiver<Vec<String>> {
        self.members.subscribe()
    }
}

/// A pool whose members register in etcd: each member keeps `prefix + id` (value: its URL)
/// alive with a lease ([`Registration`]), and watches the prefix for the others. A member that
/// stops revokes its lease, so the others see it leave at once; one that dies leaves after the
/// TTL. If its own key vanishes while it runs (deleted by hand), it puts it back.
pub struct EtcdMembership {
    me: String,
    members: watch::Receiver<Vec<String>>,
    registration: Registration,
    task: JoinHandle<()>,
}

/// The etcd key of a member: its URL's hash, so a restarted member takes over its old key.
pub fn member_key(prefix: &str, me: &str) -> String {
    format!("{prefix}{:016x}", fnv1a(me.as_bytes()))
}

impl EtcdMembership {
    /// Registers `me` under `prefix` (e.g. `/sonde/collectors/`) with a lease of `ttl`, and
    /// follows the members until `cancel` or [`EtcdMembership::stop`]. The member list always
    /// holds `me`, even before etcd answers: a collector that cannot see the pool scrapes as if
    /// alone rather than not at all.
    pub fn start(
        client: EtcdClient,
        prefix: &str,
        me: impl Into<String>,
        ttl: Duration,
        cancel: CancellationToken,
    ) -> EtcdMembership {
        let me = me.into();
        let cancel = cancel.child_token();
        let key = member_key(prefix, &me);
        let registration = Registration::start(
            client.clone(),
            key.clone(),
            me.clone().into_bytes(),
            ttl,
            cancel.clone(),
        );
        let (tx, members) = watch::channel(vec![me.clone()]);
        let mirror = client.mirror_prefix(prefix, cancel.clone());
        let task = tokio::spawn(follow(
            mirror,
            me.clone(),
            key,
            registration.refresher(),
            tx,
            cancel,
        ));
        EtcdMembership {
            me,
            members,
            registration,
            task,
        }
    }

    /// Leaves the pool: revokes the lease (the others see this member gone at once) and
    /// stops following.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        self.registration.stop().await;
    }
}

impl EtcdMembership {
    /// Stops without revoking, as a crash would: the others see this member gone after the
    /// TTL.
    pub fn abandon(self) {
        self.task.abort();
        self.registration.abandon();
    }
}

impl Membership for EtcdMembership {
    fn me(&self) -> &str {
        &self.me
    }

    fn members(&self) -> watch::Receiver<Vec<String>> {
        self.members.clone()
    }
}

/// The member list from a snapshot of the prefix: values that are URLs, plus `me`.
fn member_list(snapshot: &Snapshot, me: &str) -> Vec<String> {
    let mut list: Vec<String> = snapshot
        .kvs
        .values()
        .filter_map(|kv| {
            let url = std::str::from_utf8(&kv.value).ok()?.trim();
            let valid = url.len() <= 2048
                && (url.starts_with("http://") || url.starts_with("https://"))
                && !url.contains(char::is_whitespace);
            if !valid {
                tracing::warn!(
                    key = kv.key,
                    "pool: ignoring a member whose value is not a URL"
                );
            }
            valid.then(|| url.to_owned())
        })
        .chain(std::iter::once(me.to_owned()))
        .collect();
    list.sort();
    list.dedup();
    list
}

async fn follow(
    mut mirror: watch::Receiver<Snapshot>,
    me: String,
    key: String,
    refresh: Arc<Notify>,
    tx: watch::Sender<Vec<String>>,
    cancel: CancellationToken,
) {
    loop {
        let (list, own_key_missing) = {
            let s = mirror.borrow_and_update();
            (member_list(&s, &me), s.synced && !s.kvs.contains_key(&key))
        };
        if own_key_missing {
            refresh.notify_one();
        }
        tx.send_if_modified(|old| {
            if *old == list {
                return false;
            }
            tracing::info!(members = ?list, "pool membership changed");
            *old = list;
            true
        });
        tokio::select! {
            changed = mirror.changed() => if changed.is_err() { return },
            _ = cancel.cancelled() => return,
        }
    }
}

/// splitmix64's finalizer: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The weight of `member` for a key whose hash is `key_hash`.
fn weight(member: &str, key_hash: u64) -> u64 {
    mix(fnv1a(member.as_bytes()) ^ key_hash)
}

/// The members that scrape `key` (a target's identity): rendezvous (highest random weight)
/// hashing picks the `replicas` members with the highest weight for the key, best first (fewer
/// if the pool is smaller). When a member joins or leaves, only the keys it wins or held move.
pub fn owners(members: &[String], key: &str, replicas: usize) -> Vec<String> {
    let key_hash = mix(fnv1a(key.as_bytes()));
    let mut weighted: Vec<(u64, &String)> =
        members.iter().map(|m| (weight(m, key_hash), m)).collect();
    // Ties (practically never) are broken by name, so every member agrees.
    weighted.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    weighted.dedup_by(|a, b| a.1 == b.1);
    weighted
        .into_iter()
        .take(replicas)
        .map(|(_, m)| m.clone())
        .collect()
}

/// Whether `me` is one of the `replicas` owners of `key`.
pub fn owns(members: &[String], me: &str, key: &str, replicas: usize) -> bool {
    owners(members, key, replicas).iter().any(|m| m == me)
}

#[cfg(test)]
mod tests;
