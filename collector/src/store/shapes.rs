//! The head slots of each sender's last batch, kept with that batch's series identities, so a
//! batch naming the same series in the same order (a scrape target's next scrape, an agent's
//! next flush) skips hashing and looking up every series in the head.
//!
//! Reuse is decided by comparing the identities, never by trusting the sender: a batch whose
//! string table and series' name and label indices equal the remembered ones names the same
//! series, in the same order. Slots stay valid for the life of the head (it never drops a
//! series). The memory is bounded: past [`MAX_BYTES`] of remembered identities, the map is
//! cleared and refills from the batches that come next.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use sonde_common::wire::Batch;

use super::head::Slot;

type Hasher = foldhash::fast::RandomState;

/// Bytes of remembered identities (strings and indices) past which the map is cleared.
pub(crate) const MAX_BYTES: usize = 32 << 20;

/// One sender's last batch: its series identities and their head slots.
#[derive(Debug)]
pub(crate) struct Shape {
    strings: Vec<String>,
    /// Per series: name, label count, then label name and value indices.
    ids: Vec<u32>,
    pub(crate) slots: Vec<Slot>,
}

impl Shape {
    /// The shape of `batch`, whose series are at `slots` in the head.
    pub(crate) fn of(batch: &Batch, slots: Vec<Slot>) -> Shape {
        let mut ids = Vec::with_capacity(batch.series.len() * 8);
        for s in &batch.series {
            ids.push(s.name);
            ids.push(s.labels.len() as u32);
            for &(n, v) in &s.labels {
                ids.push(n);
                ids.push(v);
            }
        }
        Shape {
            strings: batch.strings.clone(),
            ids,
            slots,
        }
    }

    /// Whether `batch` names the same series in the same order.
    pub(crate) fn matches(&self, batch: &Batch) -> bool {
        if batch.series.len() != self.slots.len() || batch.strings != self.strings {
            return false;
        }
        let mut ids = self.ids.as_slice();
        for s in &batch.series {
            let [name, count, rest @ ..] = ids else {
                return false;
            };
            if *name != s.name || *count as usize != s.labels.len() {
                return false;
            }
            let Some((labels, rest)) = rest.split_at_checked(2 * s.labels.len()) else {
                return false;
            };
            if !labels
                .chunks_exact(2)
                .zip(&s.labels)
                .all(|(pair, &(n, v))| pair[0] == n && pair[1] == v)
            {
                return false;
            }
            ids = rest;
        }
        ids.is_empty()
    }

    fn bytes(&self) -> usize {
        self.strings.iter().map(|s| s.len() + 24).sum::<usize>()
            + self.ids.len() * 4
            + self.slots.len() * 4
            + 96
    }
}

/// Shapes by (tenant, sender).
#[derive(Debug, Default)]
pub(crate) struct Shapes {
    inner: Mutex<Map>,
}

#[derive(Debug, Default)]
struct Map {
    /// Tenant, then sender.
    by_sender: HashMap<String, HashMap<String, Shape, Hasher>, Hasher>,
    bytes: usize,
}

impl Shapes {
    /// Takes the shape remembered for `sender` of `tenant` (put it back with [`Shapes::put`]).
    pub(crate) fn take(&self, tenant: &str, sender: &str) -> Option<Shape> {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let shape = map.by_sender.get_mut(tenant)?.remove(sender)?;
        map.bytes = map.bytes.saturating_sub(shape.bytes());
        Some(shape)
    }

    pub(crate) fn put(&self, tenant: &str, sender: &str, shape: Shape) {
        let bytes = shape.bytes();
        if bytes > MAX_BYTES / 4 {
            return;
        }
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Map {
            by_sender,
            bytes: total,
        } = &mut *guard;
        if *total + bytes > MAX_BYTES {
            by_sender.clear();
            *total = 0;
        }
        if !by_sender.contains_key(tenant) {
            by_sender.insert(tenant.to_owned(), HashMap::default());
        }
        if let Some(senders) = by_sender.get_mut(tenant) {
            *total += bytes;
            if let Some(old) = senders.insert(sender.to_owned(), shape) {
                *total = total.saturating_sub(old.bytes());
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_sender
            .values()
            .map(HashMap::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::model::{MetricKind, Sample};
    use sonde_common::wire::{BatchHeader, BatchSeries};

    fn batch(series: &[(u32, &[(u32, u32)])], strings: &[&str]) -> Batch {
        Batch {
            header: BatchHeader {
                agent_id: "a".into(),
                sequence: 1,
                sent_at_ms: 0,
            },
            strings: strings.iter().map(|s| s.to_string()).collect(),
            series: series
                .iter()
                .map(|&(name, labels)| BatchSeries {
                    kind: MetricKind::Gauge,
                    name,
                    labels: labels.to_vec(),
                    start_ms: None,
                    samples: vec![Sample {
                        timestamp_ms: 1,
                        value: 1.0,
                    }],
                })
                .collect(),
        }
    }

    #[test]
    fn only_the_same_series_in_the_same_order_match() {
        let strings = ["up", "job", "a", "b"];
        let b = batch(&[(0, &[(1, 2)]), (0, &[(1, 3)])], &strings);
        let shape = Shape::of(&b, vec![7, 9]);
        assert!(shape.matches(&b));
        // Other values, new samples: still the same series.
        let mut again = b.clone();
        again.series[0].samples[0].value = 5.0;
        assert!(shape.matches(&again));
        // Another order, another label, a string changed, a series more or less: no match.
        assert!(!shape.matches(&batch(&[(0, &[(1, 3)]), (0, &[(1, 2)])], &strings)));
        assert!(!shape.matches(&batch(&[(0, &[(1, 2)]), (0, &[(1, 2)])], &strings)));
        assert!(!shape.matches(&batch(
            &[(0, &[(1, 2)]), (0, &[(1, 3)])],
            &["up", "job", "a", "c"]
        )));
        assert!(!shape.matches(&batch(&[(0, &[(1, 2)])], &strings)));
        assert!(!shape.matches(&batch(
            &[(0, &[(1, 2)]), (0, &[(1, 3)]), (0, &[])],
            &strings
        )));
        // Label boundaries moved between series (same flat indices): no match.
        let flat = batch(&[(0, &[(1, 2), (0, 1)]), (2, &[])], &strings);
        let moved = batch(&[(0, &[(1, 2)]), (0, &[(1, 2)])], &strings);
        assert!(!Shape::of(&flat, vec![1, 2]).matches(&moved));
    }

    #[test]
    fn shapes_are_kept_per_tenant_and_sender_and_bounded() {
        let shapes = Shapes::default();
        let b = batch(&[(0, &[])], &["up"]);
        shapes.put("", "a", Shape::of(&b, vec![1]));
        assert!(shapes.take("t", "a").is_none());
        assert!(shapes.take("", "b").is_none());
        let shape = shapes.take("", "a").expect("remembered");
        assert_eq!(shape.slots, vec![1]);
        assert!(shapes.take("", "a").is_none(), "taken out");
        // Past the byte budget the map starts over instead of growing.
        let big = "x".repeat(MAX_BYTES / 8);
        let large = batch(&[(0, &[])], &[&big]);
        for sender in 0..20 {
            shapes.put("", &sender.to_string(), Shape::of(&large, vec![1]));
        }
        assert!(shapes.len() < 9, "{} shapes kept", shapes.len());
        assert!(shapes.len() >= 1);
    }
}
