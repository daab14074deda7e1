//! Batch: turns one collection's readings into an encoded wire batch with the next sequence
//! number. Sequence numbers start at the agent's start time in milliseconds and grow by one per
//! batch, so they keep increasing across restarts and a retried batch keeps its number.

use bytes::Bytes;
use sonde_common::model::Sample;
use sonde_common::wire::{self, BatchBuilder, BatchHeader, Compression, EncodeError};

use crate::sources::Reading;

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

    /// Encodes `readings`, all taken at `timestamp_ms`, as one batch; `None` when there is
    /// nothing to send.
    pub fn cut(
        &mut self,
        readings: &[Reading],
        timestamp_ms: i64,
    ) -> Result<Option<EncodedBatch>, EncodeError> {
        if readings.is_empty() {
            return Ok(None);
        }
        let sequence = self.next_sequence;
        let mut builder = BatchBuilder::new(BatchHeader {
            agent_id: self.agent_id.clone(),
            sequence,
            sent_at_ms: sonde_common::model::now_ms(),
        });
        for r in readings {
            builder.push(
                &r.series,
                r.kind,
                None,
                vec![Sample::new(timestamp_ms, r.value)],
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

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::model::{MetricKind, Series};
    use sonde_common::wire::WireLimits;

    #[test]
    fn cuts_numbered_decodable_batches() {
        let mut b = Batcher::new("h".into(), 100, Compression::Zstd);
        assert!(b.cut(&[], 1).unwrap().is_none());
        let readings = vec![
            Reading {
                series: Series::new("node_load1", [("host", "h")]),
                kind: MetricKind::Gauge,
                value: 0.5,
            },
            Reading {
                series: Series::new("node_load5", [("host", "h")]),
                kind: MetricKind::Gauge,
                value: 0.25,
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
                ("node_load5".into(), 0.25, 2_000)
            ]
        );
    }
}
