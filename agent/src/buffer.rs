//! Buffer: encoded batches waiting for delivery, bounded by bytes. When a new batch does not
//! fit, the oldest batches move to the disk spool if there is one ([`crate::spool`]), and are
//! dropped otherwise (returned, so the caller counts and logs them): under a long outage the
//! freshest data is the most useful. Delivery takes from the front (the spool first: it holds
//! the oldest batches) and removes a batch only once it is acknowledged or permanently refused.

use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

use crate::batch::EncodedBatch;
use crate::spool::Spool;

#[derive(Default)]
struct Inner {
    queue: VecDeque<EncodedBatch>,
    bytes: usize,
    spool: Option<Spool>,
    /// Batches the spool dropped (full, corrupt), for the caller to count: (reason, samples).
    spool_dropped: Vec<(&'static str, usize)>,
}

impl Inner {
    /// Moves the oldest in-memory batch to the spool; false if there is no spool (or it failed).
    fn spill_oldest(&mut self) -> Option<bool> {
        let spool = self.spool.as_mut()?;
        let batch = self.queue.pop_front()?;
        self.bytes -= batch.bytes.len();
        match spool.push(&batch) {
            Ok(dropped) => {
                self.spool_dropped.extend(
                    dropped
                        .into_iter()
                        .map(|(_, samples)| ("spool_full", samples)),
                );
                Some(true)
            }
            Err(e) => {
                tracing::error!("cannot write to the spool: {e}");
                self.spool_dropped.push(("spool_error", batch.samples));
                Some(false)
            }
        }
    }
}

pub struct Buffer {
    max_bytes: usize,
    inner: Mutex<Inner>,
    /// Signalled when a batch is added; holds a permit if nobody waits, so no wake-up is lost.
    added: Notify,
}

impl Buffer {
    pub fn new(max_bytes: usize) -> Self {
        Self::with_spool(max_bytes, None)
    }

    /// A buffer backed by a disk spool (which may already hold batches from an earlier run).
    pub fn with_spool(max_bytes: usize, spool: Option<Spool>) -> Self {
        let has_spooled = spool.as_ref().is_some_and(|s| !s.is_empty());
        let b = Self {
            max_bytes,
            inner: Mutex::new(Inner {
                spool,
                ..Inner::default()
            }),
            added: Notify::new(),
        };
        if has_spooled {
            b.added.notify_one();
        }
        b
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a batch, dropping the oldest ones until it fits. A batch larger than the whole
    /// buffer is itself dropped. Returns what was dropped.
    pub fn push(&self, batch: EncodedBatch) -> Vec<EncodedBatch> {
        let mut dropped = Vec::new();
        if batch.bytes.len() > self.max_bytes {
            dropped.push(batch);
            return dropped;
        }
        {
            let mut inner = self.lock();
            while inner.bytes + batch.bytes.len() > self.max_bytes {
                if inner.spill_oldest() == Some(true) {
                    continue;
                }
                match inner.queue.pop_front() {
                    Some(old) => {
                        inner.bytes -= old.bytes.len();
                        dropped.push(old);
                    }
                    None => break,
                }
            }
            inner.bytes += batch.bytes.len();
            inner.queue.push_back(batch);
        }
        self.added.notify_one();
        dropped
    }

    /// The oldest batch, still buffered (cheap: the bytes are reference-counted).
    pub fn front(&self) -> Option<EncodedBatch> {
        let mut inner = self.lock();
        let mut corrupt = Vec::new();
        let spooled = inner.spool.as_mut().and_then(|s| s.front(&mut corrupt));
        inner.spool_dropped.extend(
            corrupt
                .into_iter()
                .map(|(_, samples)| ("spool_corrupt", samples)),
        );
        spooled.or_else(|| inner.queue.front().cloned())
    }

    /// Samples the spool dropped since the last call, as (reason, samples).
    pub fn take_spool_drops(&self) -> Vec<(&'static str, usize)> {
        std::mem::take(&mut self.lock().spool_dropped)
    }

    /// (batches, bytes) in the spool.
    pub fn spool_usage(&self) -> (usize, u64) {
        self.lock()
            .spool
            .as_ref()
            .map(Spool::usage)
            .unwrap_or((0, 0))
    }

    /// Removes the front batch if it is still `sequence` (it may have been dropped for space
    /// while it was being sent). Returns whether it was removed.
    pub fn remove_front(&self, sequence: u64) -> bool {
        let mut inner = self.lock();
        if let Some(spool) = inner.spool.as_mut()
            && !spool.is_empty()
        {
            return spool.remove_front(sequence);
        }
        if inner.queue.front().is_some_and(|b| b.sequence == sequence) {
            if let Some(b) = inner.queue.pop_front() {
                inner.bytes -= b.bytes.len();
            }
            return true;
        }
        false
    }

    /// Empties the in-memory buffer at shutdown: into the spool if there is one (returning
    /// nothing), else returning what it held for the caller to account for.
    pub fn drain(&self) -> Vec<EncodedBatch> {
        let mut inner = self.lock();
        while inner.spill_oldest() == Some(true) {}
        inner.bytes = 0;
        inner.queue.drain(..).collect()
    }

    /// Waits until a batch is added (returns at once if one was added since the last wait).
    pub async fn wait_added(&self) {
        self.added.notified().await;
    }

    /// (batches, bytes) held in memory.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.queue.len(), inner.bytes)
    }

    /// True when nothing waits, in memory or in the spool.
    pub fn is_empty(&self) -> bool {
        let inner = self.lock();
        inner.queue.is_empty() && inner.spool.as_ref().is_none_or(Spool::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn batch(sequence: u64, size: usize) -> EncodedBatch {
        EncodedBatch {
            sequence,
            samples: 1,
            bytes: Bytes::from(vec![0u8; size]),
        }
    }

    /// A real encoded batch (the spool checks envelopes).
    fn valid(sequence: u64) -> EncodedBatch {
        use sonde_common::model::{MetricKind, Sample, Series};
        use sonde_common::wire::{self, BatchBuilder, BatchHeader, Compression};
        let mut b = BatchBuilder::new(BatchHeader {
            agent_id: "h".into(),
            sequence,
            sent_at_ms: 1,
        });
        b.push(
            &Series::new("m", [("host", "h")]),
            MetricKind::Gauge,
            None,
            vec![Sample::new(1, 1.0)],
        );
        EncodedBatch {
            sequence,
            samples: 1,
            bytes: Bytes::from(wire::encode(&b.build(), Compression::None).unwrap()),
        }
    }

    #[test]
    fn overflow_drops_the_oldest() {
        let buf = Buffer::new(100);
        assert!(buf.push(batch(1, 40)).is_empty());
        assert!(buf.push(batch(2, 40)).is_empty());
        let dropped = buf.push(batch(3, 40));
        assert_eq!(dropped.iter().map(|b| b.sequence).collect::<Vec<_>>(), [1]);
        assert_eq!(buf.usage(), (2, 80));
        assert_eq!(buf.front().unwrap().sequence, 2);
        let too_big = buf.push(batch(4, 101));
        assert_eq!(too_big[0].sequence, 4);
        assert_eq!(buf.usage(), (2, 80));
    }

    #[test]
    fn remove_front_only_removes_the_batch_that_was_sent() {
        let buf = Buffer::new(100);
        buf.push(batch(1, 10));
        buf.push(batch(2, 10));
        assert!(!buf.remove_front(2));
        assert!(buf.remove_front(1));
        assert_eq!(buf.usage(), (1, 10));
        assert_eq!(buf.drain().len(), 1);
        assert_eq!(buf.usage(), (0, 0));
    }

    #[test]
    fn overflow_spills_to_the_spool_and_delivery_takes_the_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let size = valid(1).bytes.len();
        let buf = Buffer::with_spool(size * 5 / 2, Some(spool));
        for seq in 1..=4 {
            assert!(
                buf.push(valid(seq)).is_empty(),
                "nothing dropped with a spool"
            );
        }
        assert_eq!(buf.spool_usage().0, 2);
        assert_eq!(buf.usage(), (2, 2 * size));
        for seq in 1..=4 {
            assert_eq!(buf.front().unwrap().sequence, seq);
            assert!(buf.remove_front(seq));
        }
        assert!(buf.is_empty());
        // At shutdown, what is left goes to the spool and survives a restart.
        buf.push(valid(9));
        assert!(buf.drain().is_empty());
        let again = Buffer::with_spool(size, Some(Spool::open(dir.path(), 1 << 20).unwrap()));
        assert_eq!(again.front().unwrap().sequence, 9);
    }

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_lost() {
        let buf = Buffer::new(100);
        buf.push(batch(1, 10));
        tokio::time::timeout(std::time::Duration::from_secs(1), buf.wait_added())
            .await
            .unwrap();
    }
}
