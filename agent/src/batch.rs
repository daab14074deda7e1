//! Batch: turns one collection's readings into an encoded wire batch with the next sequence
//! number. Sequence numbers start at the agent's start time in milliseconds and grow by one per
//! batch, so they keep increasing across restarts and a retried batch keeps its number.

use bytes::Bytes;
use sonde_common::model::Sample;
use sonde_common::wire::{self, BatchBuilder, BatchHeader, Compression, EncodeError};

use sonde_common::model::{MetricKind, Series};
use std::sync::{Arc, Mutex};

use crate::buffer::Buffer;
use crate::events::Events;
use crate::sources::Reading;

/// One sample ready for a batch: a series, its kind, for cumulative kinds the time its running
/// total started, and the value.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub series: Series,
    pub kind: MetricKind,
    pub start_ms: Option<i64>,
    pub value: f64,
}

impl From<Reading> for Point {
    fn from(r: Reading) -> Self {
        Point {
            series: r.series,
            kind: r.kind,
            start_ms: None,
            value: r.value,
        }
    }
}

/// An encoded batch waiting in the buffer.
#[derive(Clone, Debug)]
pub struct EncodedBatch {
    pub sequence: u64,
    pub samples: usize,
    pub bytes: Bytes,
}

pub struct Batcher {
    agent_id: String,
    next_sequence: u64,
    compression: Compression,
}

impl Batcher {
    pub fn new(agent_id: String, first_sequence: u64, compression: Compression) -> Self {
        Self {
            agent_id,
            next_sequence: first_sequence,
            compression,
        }
    }

    /// Encodes `points`, all taken at `timestamp_ms`, as one batch; `None` when there is
    /// nothing to send.
    pub fn cut(
        &mut self,
        points: &[Point],
        timestamp_ms: i64,
    ) -> Result<Option<EncodedBatch>, EncodeError> {
        if points.is_empty() {
            return Ok(None);
        }
        let sequence = self.next_sequence;
        let mut builder = BatchBuilder::new(BatchHeader {
            agent_id: self.agent_id.clone(),
            sequence,
            sent_at_ms: sonde_common::model::now_ms(),
        });
        for p in points {
            builder.push(
                &p.series,
                p.kind,
                p.start_ms,
                vec![Sample::new(timestamp_ms, p.value)],
            );
        }
        let samples = builder.sample_count();
        let bytes = wire::encode(&builder.build(), self.compression)?;
        self.next_sequence += 1;
        Ok(Some(EncodedBatch {
            sequence,
            samples,
            bytes: Bytes::from(bytes),
        }))
    }
}

/// Where every source hands its points: cuts them into batches of at most `max_samples`
/// (so a large flush becomes several requests of bounded size), numbers them, and buffers them.
pub struct Outbox {
    batcher: Mutex<Batcher>,
    buffer: Arc<Buffer>,
    events: Arc<Events>,
    max_samples: usize,
}

impl Outbox {
    pub fn new(
        batcher: Batcher,
        buffer: Arc<Buffer>,
        events: Arc<Events>,
        max_samples: usize,
    ) -> Self {
        Self {
            batcher: Mutex::new(batcher),
            buffer,
            events,
            max_samples: max_samples.max(1),
        }
    }

    /// Batches and buffers `points`, all collected at `timestamp_ms` by `source`.
    pub fn submit(&self, source: &'static str, points: &[Point], timestamp_ms: i64) {
        self.events.collected_samples(source, points.len());
        for chunk in points.chunks(self.max_samples) {
            let cut = self
                .batcher
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cut(chunk, timestamp_ms);
            match cut {
                Ok(Some(batch)) => {
                    let dropped = self.buffer.push(batch);
                    if !dropped.is_empty() {
                        self.events.dropped("buffer_full", &dropped, "the push buffer is full (collectors unreachable for long); dropped the oldest batches");
                    }
                }
                Ok(None) => {}
                Err(e) => self.events.dropped_samples_only(
                    "encode_error",
                    chunk.len(),
                    &format!("cannot encode batch: {e}"),
                ),
            }
        }
        self.account();
    }

    /// Updates buffer gauges and counts what the spool dropped.
    pub fn account(&self) {
        self.events.buffered(self.buffer.usage());
        let (batches, bytes) = self.buffer.spool_usage();
        self.events.spool_batches.set(batches as f64);
        self.events.spool_bytes.set(bytes as f64);
        for (reason, samples) in self.buffer.take_spool_drops() {
            self.events.dropped_samples_only(
                reason,
                samples,
                "the disk spool dropped a batch (full, or a corrupt file)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::wire::WireLimits;

    #[test]
    fn cuts_numbered_decodable_batches() {
        let mut b = Batcher::new("h".into(), 100, Compression::Zstd);
        assert!(b.cut(&[], 1).unwrap().is_none());
        let readings: Vec<Point> = vec![
            Reading {
                series: Series::new("node_load1", [("host", "h")]),
                kind: MetricKind::Gauge,
                value: 0.5,
            }
            .into(),
            Point {
                series: Series::new("reqs_total", [("host", "h")]),
                kind: MetricKind::Counter,
                start_ms: Some(7),
                value: 3.0,
            },
        ];
        let first = b.cut(&readings, 1_000).unwrap().unwrap();
        let second = b.cut(&readings, 2_000).unwrap().unwrap();
        assert_eq!((first.sequence, second.sequence), (100, 101));
        assert_eq!(first.samples, 2);
        let batch = wire::decode(&second.bytes, &WireLimits::default()).unwrap();
        assert_eq!(batch.header.agent_id, "h");
        assert_eq!(batch.header.sequence, 101);
        let loads: Vec<(String, f64, i64)> = batch
            .iter()
            .map(|v| {
                (
                    v.name().to_owned(),
                    v.samples()[0].value,
                    v.samples()[0].timestamp_ms,
                )
            })
            .collect();
        assert_eq!(
            loads,
            [
                ("node_load1".into(), 0.5, 2_000),
                ("reqs_total".into(), 3.0, 2_000)
            ]
        );
        assert_eq!(batch.iter().nth(1).unwrap().start_ms(), Some(7));
    }
}
