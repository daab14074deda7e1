//! Each sender's last batch, kept by its series identities with work done once for them, so
//! a batch naming the same series in the same order (a scrape target's next scrape, an agent's
//! next flush) skips that work: the store keeps the series' head slots (no hashing and lookup
//! per series), ingest keeps the fact that their names and labels passed validation and their
//! remote-write encoding ([`crate::route::SeriesWork`]).
//!
//! Reuse is decided by comparing the identities, never by trusting the sender: a batch whose
//! string table and series' name and label indices equal the remembered ones names the same
//! series, in the same order. The memory is bounded ([`Shapes`]).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use sonde_common::wire::Batch;

type Hasher = foldhash::fast::RandomState;

/// Bytes of remembered identities (strings and indices) and work kept at most, by default.
pub(crate) const MAX_BYTES: usize = 32 << 20;

/// What is kept with a shape: its size counts towards the bound.
pub(crate) trait ShapeWork {
    /// Heap bytes held.
    fn bytes(&self) -> usize;
}

/// The store's work: each series' head slot.
impl ShapeWork for Vec<u32> {
    fn bytes(&self) -> usize {
        self.capacity() * 4
    }
}

/// One sender's last batch: its series identities, and `work` done for them.
#[derive(Debug)]
pub(crate) struct Shape<W> {
    strings: Vec<String>,
    /// Per series: name, kind, label count, then label name and value indices.
    ids: Vec<u32>,
    series: usize,
    pub(crate) work: W,
}

impl<W: ShapeWork> Shape<W> {
    /// The shape of `batch`, with `work` done for its series.
    pub(crate) fn of(batch: &Batch, work: W) -> Shape<W> {
        let mut ids = Vec::with_capacity(batch.series.len() * 8);
        for s in &batch.series {
            ids.push(s.name);
            ids.push(s.kind as u32);
            ids.push(s.labels.len() as u32);
            for &(n, v) in &s.labels {
                ids.push(n);
                ids.push(v);
            }
        }
        Shape {
            strings: batch.strings.clone(),
            ids,
            series: batch.series.len(),
            work,
        }
    }

    /// Whether `batch` names the same series, of the same kinds, in the same order.
    pub(crate) fn matches(&self, batch: &Batch) -> bool {
        if batch.series.len() != self.series || batch.strings != self.strings {
            return false;
        }
        let mut ids = self.ids.as_slice();
        for s in &batch.series {
            let [name, kind, count, rest @ ..] = ids else {
                return false;
            };
            if *name != s.name || *kind != s.kind as u32 || *count as usize != s.labels.len() {
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
            + self.work.bytes()
            + 96
    }
}

/// Shapes by (tenant, sender), in two generations: a shape is put in the newer one, and found
/// in either; once the newer holds half the budget, it becomes the older and the older is
/// dropped. So the memory stays under the budget (plus one shape), and senders that keep
/// sending keep their shapes while those gone stop taking room.
#[derive(Debug)]
pub(crate) struct Shapes<W> {
    inner: Mutex<Generations<W>>,
    max_bytes: usize,
}

impl<W: ShapeWork> Default for Shapes<W> {
    fn default() -> Self {
        Self::with_max_bytes(MAX_BYTES)
    }
}

#[derive(Debug)]
struct Generations<W> {
    newer: Map<W>,
    older: Map<W>,
}

#[derive(Debug)]
struct Map<W> {
    /// Tenant, then sender.
    by_sender: HashMap<String, HashMap<String, Shape<W>, Hasher>, Hasher>,
    bytes: usize,
}

impl<W> Default for Map<W> {
    fn default() -> Self {
        Self {
            by_sender: HashMap::default(),
            bytes: 0,
        }
    }
}

impl<W: ShapeWork> Map<W> {
    fn take(&mut self, tenant: &str, sender: &str) -> Option<Shape<W>> {
        let shape = self.by_sender.get_mut(tenant)?.remove(sender)?;
        self.bytes = self.bytes.saturating_sub(shape.bytes());
        Some(shape)
    }
}

impl<W: ShapeWork> Shapes<W> {
    /// Remembers shapes of up to about `max_bytes` in all.
    pub(crate) fn with_max_bytes(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Generations {
                newer: Map::default(),
                older: Map::default(),
            }),
            max_bytes,
        }
    }

    /// Takes the shape remembered for `sender` of `tenant` (put it back with [`Shapes::put`]).
    pub(crate) fn take(&self, tenant: &str, sender: &str) -> Option<Shape<W>> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match g.newer.take(tenant, sender) {
            Some(shape) => Some(shape),
            None => g.older.take(tenant, sender),
        }
    }

    pub(crate) fn put(&self, tenant: &str, sender: &str, shape: Shape<W>) {
        let bytes = shape.bytes();
        let half = self.max_bytes / 2;
        if bytes > half / 2 {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if g.newer.bytes + bytes > half {
            g.older = std::mem::take(&mut g.newer);
        }
        let newer = &mut g.newer;
        if !newer.by_sender.contains_key(tenant) {
            newer
                .by_sender
                .insert(tenant.to_owned(), HashMap::default());
        }
        if let Some(senders) = newer.by_sender.get_mut(tenant) {
            newer.bytes += bytes;
            if let Some(old) = senders.insert(sender.to_owned(), shape) {
                newer.bytes = newer.bytes.saturating_sub(old.bytes());
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        [&g.newer, &g.older]
            .iter()
            .flat_map(|m| m.by_sender.values())
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
        // Another kind: the metadata of its family changed.
        let mut retyped = b.clone();
        retyped.series[1].kind = MetricKind::Counter;
        assert!(!shape.matches(&retyped));
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
        let shapes = Shapes::<Vec<u32>>::default();
        let b = batch(&[(0, &[])], &["up"]);
        shapes.put("", "a", Shape::of(&b, vec![1]));
        assert!(shapes.take("t", "a").is_none());
        assert!(shapes.take("", "b").is_none());
        let shape = shapes.take("", "a").expect("remembered");
        assert_eq!(shape.work, vec![1]);
        assert!(shapes.take("", "a").is_none(), "taken out");
        // Bounded: a generation of half the budget, and the one before it.
        let shapes = Shapes::<Vec<u32>>::with_max_bytes(64 << 10);
        let medium = batch(&[(0, &[])], &[&"x".repeat(4000)]);
        let one = Shape::of(&medium, vec![1]).bytes();
        for round in 0..10 {
            // Five other senders a round: fewer than a generation holds.
            for sender in 0..5 {
                let sender = format!("{round}-{sender}");
                shapes.put("", &sender, Shape::of(&medium, vec![1]));
            }
            // A sender that keeps sending keeps its shape.
            let hot = shapes.take("", "hot");
            assert!(round == 0 || hot.is_some(), "round {round}");
            shapes.put("", "hot", Shape::of(&medium, vec![1]));
        }
        for sender in 0..100 {
            shapes.put("", &format!("many-{sender}"), Shape::of(&medium, vec![1]));
        }
        assert!(
            shapes.len() * one <= (64 << 10) + one,
            "{} shapes kept",
            shapes.len()
        );
        assert!(shapes.len() >= (32 << 10) / one);
        assert!(
            shapes.take("", "0-0").is_none(),
            "old senders are forgotten"
        );
        // A shape larger than a quarter of the budget is not kept at all.
        let large = batch(&[(0, &[])], &[&"x".repeat(20_000)]);
        shapes.put("", "large", Shape::of(&large, vec![1]));
        assert!(shapes.take("", "large").is_none());
    }
}
