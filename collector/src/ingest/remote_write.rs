//! Prometheus remote write 1.0 intake (`POST /api/v1/write`): protobuf + snappy, so vmagent,
//! Prometheus, Grafana Alloy or an OpenTelemetry Collector can push to Sonde. A write request
//! becomes a native batch (strings interned once) and then takes the same path as ours.

use hyper::HeaderMap;
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE};
use sonde_common::model::{MetricKind, Sample, Series};
use sonde_common::remote_write::{self, WriteRequest};
use sonde_common::wire::{Batch, BatchBuilder, BatchHeader};

use super::IngestError;

/// Checks Content-Type (protobuf) and Content-Encoding (snappy), as the spec requires.
pub fn check_headers(headers: &HeaderMap) -> Result<(), IngestError> {
    let get = |h| {
        headers
            .get(h)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    let ct = get(CONTENT_TYPE);
    let media = ct.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case(remote_write::CONTENT_TYPE) {
        return Err(IngestError::ContentType(ct, remote_write::CONTENT_TYPE));
    }
    let ce = get(CONTENT_ENCODING);
    if !ce
        .trim()
        .eq_ignore_ascii_case(remote_write::CONTENT_ENCODING)
    {
        return Err(IngestError::ContentEncoding(ce, "snappy"));
    }
    Ok(())
}

/// Decodes a write request (bounded by `max_decoded` before decompressing) into a batch.
pub fn decode(body: &[u8], max_decoded: usize) -> Result<Batch, IngestError> {
    let req = remote_write::decode(body, max_decoded)?;
    to_batch(req)
}

fn to_batch(req: WriteRequest) -> Result<Batch, IngestError> {
    let mut b = BatchBuilder::new(BatchHeader {
        agent_id: String::new(),
        sequence: 0,
        sent_at_ms: sonde_common::model::now_ms(),
    });
    for ts in req.timeseries {
        let mut name = None;
        let mut labels: Vec<(String, String)> = Vec::with_capacity(ts.labels.len());
        for l in ts.labels {
            if l.name == "__name__" {
                name = Some(l.value);
            } else if !l.value.is_empty() {
                labels.push((l.name, l.value));
            }
        }
        let Some(name) = name else {
            let shown: Vec<String> = labels
                .iter()
                .take(4)
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            return Err(IngestError::MissingName(shown.join(",")));
        };
        labels.sort_by(|a, c| a.0.cmp(&c.0));
        if let Some(w) = labels.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(IngestError::DuplicateLabel {
                series: name,
                label: w[0].0.clone(),
            });
        }
        if ts.samples.is_empty() {
            continue;
        }
        let series = Series {
            name,
            labels: labels
                .into_iter()
                .map(|(k, v)| sonde_common::model::Label::new(k, v))
                .collect(),
        };
        let samples = ts
            .samples
            .into_iter()
            .map(|s| Sample::new(s.timestamp, s.value))
            .collect();
        b.push(&series, MetricKind::Unknown, None, samples);
    }
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::remote_write::{Label, Sample as RwSample, TimeSeries};

    fn ts(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|(t, v)| RwSample {
                    timestamp: *t,
                    value: *v,
                })
                .collect(),
        }
    }

    #[test]
    fn write_requests_become_batches() {
        let req = WriteRequest {
            timeseries: vec![ts(
                &[("job", "a"), ("__name__", "up"), ("empty", "")],
                &[(1, 1.0), (2, 0.0)],
            )],
        };
        let batch = decode(&remote_write::encode(&req), 1 << 20).unwrap();
        let v = batch.iter().next().unwrap();
        assert_eq!(v.to_series().to_string(), "up{job=\"a\"}");
        assert_eq!(v.samples().len(), 2);
        batch.validate(&Default::default()).unwrap();
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        let no_name = WriteRequest {
            timeseries: vec![ts(&[("job", "a")], &[(1, 1.0)])],
        };
        assert_eq!(
            decode(&remote_write::encode(&no_name), 1 << 20)
                .unwrap_err()
                .reason(),
            "missing_metric_name"
        );
        let dup = WriteRequest {
            timeseries: vec![ts(
                &[("__name__", "m"), ("a", "1"), ("a", "2")],
                &[(1, 1.0)],
            )],
        };
        assert!(
            decode(&remote_write::encode(&dup), 1 << 20)
                .unwrap_err()
                .to_string()
                .contains("label 'a' appears twice in series 'm'")
        );
        assert_eq!(
            decode(b"garbage", 1 << 20).unwrap_err().reason(),
            "malformed"
        );
        let big = WriteRequest {
            timeseries: vec![ts(&[("__name__", "m")], &[(1, 1.0); 100])],
        };
        let err = decode(&remote_write::encode(&big), 64).unwrap_err();
        assert_eq!(err.status(), hyper::StatusCode::PAYLOAD_TOO_LARGE);
    }
}
