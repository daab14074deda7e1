//! Semantic checks of a decoded batch: names, labels and counts (the model's rules and limits)
//! and the time window. The first problem found refuses the whole batch, naming the series.

use sonde_common::wire::Batch;

use super::IngestError;
use crate::config::IngestConfig;

/// Checks `batch`; with `known`, its series are those of an earlier batch of the sender that
/// passed (see [`crate::shapes`]), and their names and labels are not checked again.
pub fn validate(
    batch: &Batch,
    cfg: &IngestConfig,
    now_ms: i64,
    known: bool,
) -> Result<(), IngestError> {
    if known {
        batch.validate_known(&cfg.limits)?;
    } else {
        batch.validate(&cfg.limits)?;
    }
    let min_ms = now_ms.saturating_sub(cfg.max_sample_age.as_millis() as i64);
    let max_ms = now_ms.saturating_add(cfg.max_sample_future.as_millis() as i64);
    for view in batch.iter() {
        for sample in view.samples() {
            if sample.timestamp_ms < min_ms {
                return Err(IngestError::TooOld {
                    series: view.to_series().to_string(),
                    timestamp_ms: sample.timestamp_ms,
                    min_ms,
                });
            }
            if sample.timestamp_ms > max_ms {
                return Err(IngestError::TooNew {
                    series: view.to_series().to_string(),
                    timestamp_ms: sample.timestamp_ms,
                    max_ms,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::model::{Limits, MetricKind, Sample, Series};
    use sonde_common::wire::{BatchBuilder, BatchHeader, WireLimits};
    use std::time::Duration;

    fn cfg() -> IngestConfig {
        IngestConfig {
            wire: WireLimits::default(),
            limits: Limits::default(),
            max_sample_age: Duration::from_secs(3600),
            max_sample_future: Duration::from_secs(60),
            tenant_samples_per_second: 0.0,
            dedup_batches: 1,
        }
    }

    fn batch(ts: i64) -> Batch {
        let mut b = BatchBuilder::new(BatchHeader {
            agent_id: "a".into(),
            sequence: 1,
            sent_at_ms: ts,
        });
        b.push(
            &Series::new("up", [("host", "h")]),
            MetricKind::Gauge,
            None,
            vec![Sample::new(ts, 1.0)],
        );
        b.build()
    }

    #[test]
    fn time_window_names_the_series() {
        let now = 1_764_000_000_000;
        for known in [false, true] {
            validate(&batch(now), &cfg(), now, known).unwrap();
            let err = validate(&batch(now - 3_601_000), &cfg(), now, known).unwrap_err();
            assert_eq!(err.reason(), "too_old");
            assert!(err.to_string().contains("up{host=\"h\"}"), "{err}");
            let err = validate(&batch(now + 61_000), &cfg(), now, known).unwrap_err();
            assert_eq!(err.reason(), "too_new");
        }
    }

    #[test]
    fn a_known_shape_skips_only_the_name_and_label_checks() {
        let now = 1_764_000_000_000;
        let mut bad_name = batch(now);
        bad_name.strings[0] = "0bad".into();
        assert!(validate(&bad_name, &cfg(), now, false).is_err());
        // Known means an earlier batch with these very strings passed: not checked again.
        validate(&bad_name, &cfg(), now, true).unwrap();
        // Counts and samples are checked either way.
        let mut empty = batch(now);
        empty.series[0].samples.clear();
        for known in [false, true] {
            let err = validate(&empty, &cfg(), now, known).unwrap_err();
            assert_eq!(err.reason(), "no_samples");
        }
        let mut tight = cfg();
        tight.limits.max_series_per_batch = 0;
        for known in [false, true] {
            let err = validate(&batch(now), &tight, now, known).unwrap_err();
            assert_eq!(err.reason(), "too_many_series", "{err}");
        }
    }
}
