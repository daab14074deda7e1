//! The notification log (Alertmanager's nflog): per (tenant, receiver integration, group key),
//! the firing and resolved alert sets last notified and when. A flush whose sets add nothing to
//! the last notification is skipped until `repeat_interval` has passed.
//!
//! An entry is written when the notification is committed to the persisted outbox, not when a
//! receiver acknowledges it: from then on the outbox owns delivery (and re-sends after a
//! restart), so logging at commit time is what keeps a restart from notifying twice. The log is
//! one JSON snapshot (`nflog.json`), replaced atomically after every flush that changed it.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::persist;

/// Entries untouched this long are dropped (Alertmanager's default retention).
const RETENTION_MS: i64 = 120 * 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub firing: BTreeSet<u64>,
    pub resolved: BTreeSet<u64>,
    pub at_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct Record {
    key: String,
    entry: Entry,
}

#[derive(Default)]
pub struct NotificationLog {
    entries: BTreeMap<String, Entry>,
    path: Option<PathBuf>,
    dirty: bool,
}

/// The log key of one integration of one receiver for one group of one tenant.
pub fn key(tenant: &str, receiver: &str, integration: usize, group_key: &str) -> String {
    format!("{tenant}\u{0}{receiver}\u{0}{integration}\u{0}{group_key}")
}

impl NotificationLog {
    pub fn open(path: PathBuf) -> Result<Self, String> {
        let mut log = NotificationLog {
            entries: BTreeMap::new(),
            path: Some(path.clone()),
            dirty: false,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let records: Vec<Record> = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("cannot read notification log {}: {e}", path.display()))?;
                log.entries = records.into_iter().map(|r| (r.key, r.entry)).collect();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "cannot read notification log {}: {e}",
                    path.display()
                ));
            }
        }
        Ok(log)
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Alertmanager's `needsUpdate`: anything newly firing, everything resolved after a firing
    /// notification, newly resolved (when resolved ones are sent), or `repeat` passed.
    pub fn needs_update(
        &self,
        key: &str,
        firing: &BTreeSet<u64>,
        resolved: &BTreeSet<u64>,
        send_resolved: bool,
        repeat_ms: i64,
        now_ms: i64,
    ) -> bool {
        let Some(prev) = self.entries.get(key) else {
            return !firing.is_empty();
        };
        if !firing.is_subset(&prev.firing) {
            return true;
        }
        if firing.is_empty() {
            return !prev.firing.is_empty();
        }
        if send_resolved && !resolved.is_subset(&prev.resolved) {
            return true;
        }
        prev.at_ms <= now_ms - repeat_ms
    }

    pub fn log(
        &mut self,
        key: String,
        firing: BTreeSet<u64>,
        resolved: BTreeSet<u64>,
        now_ms: i64,
    ) {
        self.entries.insert(
            key,
            Entry {
                firing,
                resolved,
                at_ms: now_ms,
            },
        );
        self.dirty = true;
    }

    pub fn gc(&mut self, now_ms: i64) {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.at_ms > now_ms - RETENTION_MS);
        self.dirty |= self.entries.len() != before;
    }

    /// Writes the snapshot if anything changed since the last save.
    pub fn save(&mut self) {
        if let Some((path, bytes)) = self.take_snapshot() {
            write_snapshot(&path, &bytes);
        }
    }

    /// The snapshot to write if anything changed since the last one, so the caller can write
    /// it without holding the lock that guards the log (writes must stay in order: only the
    /// dispatcher takes snapshots).
    pub fn take_snapshot(&mut self) -> Option<(PathBuf, Vec<u8>)> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        let path = self.path.clone()?;
        let records: Vec<Record> = self
            .entries
            .iter()
            .map(|(k, e)| Record {
                key: k.clone(),
                entry: e.clone(),
            })
            .collect();
        match serde_json::to_vec(&records) {
            Ok(bytes) => Some((path, bytes)),
            Err(e) => {
                tracing::error!("cannot encode notification log: {e}");
                None
            }
        }
    }
}

/// Writes a snapshot from [`NotificationLog::take_snapshot`].
pub fn write_snapshot(path: &std::path::Path, bytes: &[u8]) {
    if let Err(e) = persist::write_atomic(path, bytes) {
        tracing::error!("cannot save notification log {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    #[test]
    fn dedup_follows_alertmanager_rules() {
        let mut log = NotificationLog::default();
        let k = key("t", "r", 0, "{}:{}");
        let hour = 3_600_000;
        assert!(
            !log.needs_update(&k, &set(&[]), &set(&[1]), true, hour, 0),
            "nothing firing"
        );
        assert!(log.needs_update(&k, &set(&[1]), &set(&[]), true, hour, 0));
        log.log(k.clone(), set(&[1, 2]), set(&[]), 1000);
        // Same or fewer firing: skipped until the repeat interval passed.
        assert!(!log.needs_update(&k, &set(&[1, 2]), &set(&[]), true, hour, 2000));
        assert!(!log.needs_update(&k, &set(&[1]), &set(&[]), false, hour, 2000));
        assert!(log.needs_update(&k, &set(&[1, 2]), &set(&[]), true, hour, 1000 + hour));
        // A new firing alert, or a newly resolved one when resolved ones are sent.
        assert!(log.needs_update(&k, &set(&[1, 3]), &set(&[]), true, hour, 2000));
        assert!(log.needs_update(&k, &set(&[1]), &set(&[2]), true, hour, 2000));
        // All resolved after firing: always.
        assert!(log.needs_update(&k, &set(&[]), &set(&[1, 2]), false, hour, 2000));
        log.log(k.clone(), set(&[]), set(&[1, 2]), 3000);
        assert!(!log.needs_update(&k, &set(&[]), &set(&[1, 2]), true, hour, 4000));
    }

    #[test]
    fn the_log_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nflog.json");
        let k = key("t", "r", 0, "g");
        {
            let mut log = NotificationLog::open(path.clone()).expect("open");
            log.log(k.clone(), set(&[7]), set(&[]), 5);
            log.save();
        }
        let log = NotificationLog::open(path).expect("reopen");
        assert_eq!(log.get(&k).map(|e| e.firing.clone()), Some(set(&[7])));
    }
}
