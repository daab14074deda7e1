//! Duplicate suppression for native batches: a retried batch (same tenant, agent id and
//! sequence number) that this collector already accepted is acknowledged again without being
//! stored twice. Bounded: the most recent `capacity` batches are remembered (FIFO). Across
//! collectors a retry that lands elsewhere stays harmless anyway: samples are idempotent.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

pub struct Dedup {
    capacity: usize,
    hasher: RandomState,
    seen: Mutex<(HashSet<u64>, VecDeque<u64>)>,
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            hasher: RandomState::new(),
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    /// The key of a batch; `None` for batches without an agent id (remote write), which are
    /// never deduplicated this way.
    pub fn key(&self, tenant: &str, agent_id: &str, sequence: u64) -> Option<u64> {
        (!agent_id.is_empty()).then(|| self.hasher.hash_one((tenant, agent_id, sequence)))
    }

    pub fn seen(&self, key: u64) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .contains(&key)
    }

    /// Remembers an accepted batch, forgetting the oldest beyond the capacity.
    pub fn remember(&self, key: u64) {
        let mut g = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if g.0.insert(key) {
            g.1.push_back(key);
            if g.1.len() > self.capacity
                && let Some(old) = g.1.pop_front()
            {
                g.0.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_recent_batches_per_tenant_and_agent() {
        let d = Dedup::new(2);
        let a = d.key("t", "agent", 1).unwrap();
        assert!(!d.seen(a));
        d.remember(a);
        assert!(d.seen(a));
        assert_ne!(d.key("other", "agent", 1), Some(a));
        assert_eq!(d.key("t", "", 1), None);
        d.remember(d.key("t", "agent", 2).unwrap());
        d.remember(d.key("t", "agent", 3).unwrap());
        assert!(!d.seen(a), "the oldest is forgotten beyond the capacity");
    }
}
