//! Decoded batches kept for reuse: a push decodes into a batch taken from here
//! ([`sonde_common::wire::decode_into`] overwrites its strings and vectors in place), and the
//! batch comes back when the push is answered, so a steady stream of pushes decodes without
//! allocating a `String` per label and two vectors per series each time. Bounded in count, and
//! a batch grown unusually large is dropped rather than kept.

use sonde_common::wire::Batch;
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, PoisonError};

/// Batches kept at most (about one per push in flight).
const MAX_POOLED: usize = 64;
/// A batch whose string table or series list can hold more than this is not kept.
const MAX_KEPT_CAPACITY: usize = 16 * 1024;

static FREE: Mutex<Vec<Batch>> = Mutex::new(Vec::new());

/// A batch from the pool; it goes back when dropped.
#[derive(Debug, Default)]
pub struct Pooled(Batch);

impl Pooled {
    /// A batch to decode into: a used one if the pool has one (its contents are to be
    /// overwritten), else an empty one.
    pub fn take() -> Self {
        let batch = FREE
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        Pooled(batch)
    }
}

impl From<Batch> for Pooled {
    fn from(batch: Batch) -> Self {
        Pooled(batch)
    }
}

impl Deref for Pooled {
    type Target = Batch;
    fn deref(&self) -> &Batch {
        &self.0
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Batch {
        &mut self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let batch = std::mem::take(&mut self.0);
        if batch.strings.capacity() > MAX_KEPT_CAPACITY
            || batch.series.capacity() > MAX_KEPT_CAPACITY
        {
            return;
        }
        let mut free = FREE.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < MAX_POOLED {
            free.push(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::model::{MetricKind, Sample, Series};
    use sonde_common::wire::{self, BatchBuilder, BatchHeader, Compression, WireLimits};

    fn batch(n: usize) -> Batch {
        let mut b = BatchBuilder::new(BatchHeader {
            agent_id: "pool".into(),
            sequence: n as u64,
            sent_at_ms: 1,
        });
        for i in 0..n {
            b.push(
                &Series::new("m", [("i", i.to_string())]),
                MetricKind::Gauge,
                None,
                vec![Sample::new(1, i as f64)],
            );
        }
        b.build()
    }

    #[test]
    fn a_returned_batch_is_decoded_into_again_and_oversized_ones_are_not_kept() {
        let big = batch(3);
        let small = batch(1);
        {
            let mut p = Pooled::take();
            let bytes = wire::encode(&big, Compression::Zstd).unwrap();
            wire::decode_into(&bytes, &WireLimits::default(), &mut p).unwrap();
            assert_eq!(*p, big);
        }
        // Whatever batch the pool hands out next decodes to exactly the new contents.
        let mut p = Pooled::take();
        let bytes = wire::encode(&small, Compression::Zstd).unwrap();
        wire::decode_into(&bytes, &WireLimits::default(), &mut p).unwrap();
        assert_eq!(*p, small);
        drop(p);
        let huge = Batch {
            strings: Vec::with_capacity(MAX_KEPT_CAPACITY + 1),
            ..Batch::default()
        };
        let before = FREE.lock().unwrap().len();
        drop(Pooled::from(huge));
        assert!(FREE.lock().unwrap().len() <= before);
    }
}
