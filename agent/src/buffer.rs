//! Buffer: encoded batches waiting for delivery, bounded by bytes. When a new batch does not
//! fit, the oldest batches are dropped (and returned, so the caller counts and logs them):
//! under a long outage the freshest data is the most useful. Delivery takes from the front and
//! removes a batch only once it is acknowledged or permanently refused.

use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

use crate::batch::EncodedBatch;

#[derive(Default)]
struct Inner {
    queue: VecDeque<EncodedBatch>,
    bytes: usize,
}

pub struct Buffer {
    max_bytes: usize,
    inner: Mutex<Inner>,
    /// Signalled when a batch is added; holds a permit if nobody waits, so no wake-up is lost.
    added: Notify,
}

impl Buffer {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            inner: Mutex::new(Inner::default()),
            added: Notify::new(),
        }
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
        self.lock().queue.front().cloned()
    }

    /// Removes the front batch if it is still `sequence` (it may have been dropped for space
    /// while it was being sent). Returns whether it was removed.
    pub fn remove_front(&self, sequence: u64) -> bool {
        let mut inner = self.lock();
        if inner.queue.front().is_some_and(|b| b.sequence == sequence) {
            if let Some(b) = inner.queue.pop_front() {
                inner.bytes -= b.bytes.len();
            }
            return true;
        }
        false
    }

    /// Empties the buffer, returning what it held.
    pub fn drain(&self) -> Vec<EncodedBatch> {
        let mut inner = self.lock();
        inner.bytes = 0;
        inner.queue.drain(..).collect()
    }

    /// Waits until a batch is added (returns at once if one was added since the last wait).
    pub async fn wait_added(&self) {
        self.added.notified().await;
    }

    /// (batches, bytes) held.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.queue.len(), inner.bytes)
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

    #[tokio::test]
    async fn a_push_before_the_wait_is_not_lost() {
        let buf = Buffer::new(100);
        buf.push(batch(1, 10));
        tokio::time::timeout(std::time::Duration::from_secs(1), buf.wait_added())
            .await
            .unwrap();
    }
}
