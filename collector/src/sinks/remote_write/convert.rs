//! From native batches to remote-write requests: series to shards by a hash of their identity,
//! and each shard's series straight to protobuf bodies of at most `max_samples` samples (labels
//! sorted by name, `__name__` among them). The `TimeSeries`-building path kept under `cfg(test)`
//! is the obviously correct reference the direct encoder is checked against. Pure functions.

#[cfg(test)]
use sonde_common::remote_write::{Label, Sample, TimeSeries, WriteRequest};
#[cfg(test)]
use sonde_common::wire::Batch;
use sonde_common::wire::SeriesView;

/// The shard a series goes to: FNV-1a over its name and labels, so a series always takes the
/// same shard, whose requests go out one at a time, in order.
pub(crate) fn shard_of(view: &SeriesView<'_>, shards: usize) -> usize {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        }
        // A separator byte that cannot occur in names or values.
        h = (h ^ 0xff).wrapping_mul(PRIME);
    };
    eat(view.name().as_bytes());
    for (n, v) in view.labels() {
        eat(n.as_bytes());
        eat(v.as_bytes());
    }
    (h % shards.max(1) as u64) as usize
}

#[cfg(test)] // the reference the direct encoder is tested against
/// A series as remote write wants it: every label, `__name__` included, sorted by name.
pub(crate) fn to_timeseries(view: &SeriesView<'_>) -> TimeSeries {
    let mut labels: Vec<Label> = Vec::with_capacity(view.labels().len() + 1);
    labels.push(Label {
        name: "__name__".to_owned(),
        value: view.name().to_owned(),
    });
    labels.extend(view.labels().map(|(n, v)| Label {
        name: n.to_owned(),
        value: v.to_owned(),
    }));
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    TimeSeries {
        labels,
        samples: view
            .samples()
            .iter()
            .map(|s| Sample {
                value: s.value,
                timestamp: s.timestamp_ms,
            })
            .collect(),
    }
}

#[cfg(test)] // the reference the direct encoder is tested against
/// Adds every series of `batch` to its shard's list.
pub(crate) fn split(batch: &Batch, shards: &mut [Vec<TimeSeries>]) {
    let n = shards.len();
    for view in batch.iter() {
        if view.samples().is_empty() {
            continue;
        }
        if let Some(list) = shards.get_mut(shard_of(&view, n)) {
            list.push(to_timeseries(&view));
        }
    }
}

#[cfg(test)] // the reference the direct encoder is tested against
/// Cuts one shard's series into requests of at most `max_samples` samples, keeping their
/// order (a series longer than that is split across consecutive requests).
pub(crate) fn chunk(series: Vec<TimeSeries>, max_samples: usize) -> Vec<WriteRequest> {
    let max = max_samples.max(1);
    let mut out = Vec::new();
    let mut current = WriteRequest::default();
    let mut in_current = 0usize;
    for mut ts in series {
        while !ts.samples.is_empty() {
            let room = max - in_current;
            if ts.samples.len() <= room {
                in_current += ts.samples.len();
                current.timeseries.push(ts);
                break;
            }
            let rest = ts.samples.split_off(room);
            current.timeseries.push(TimeSeries {
                labels: ts.labels.clone(),
                samples: std::mem::replace(&mut ts.samples, rest),
            });
            out.push(std::mem::take(&mut current));
            in_current = 0;
        }
        if in_current == max {
            out.push(std::mem::take(&mut current));
            in_current = 0;
        }
    }
    if !current.timeseries.is_empty() {
        out.push(current);
    }
    out
}

/// Encodes one shard's series straight into remote-write protobuf bodies (before snappy) of at
/// most `max_samples` samples each, in order: the bytes `remote_write::encode` would produce
/// for `chunk(series, max_samples)` (default values omitted as prost does), without building
/// a `String` per label. Returns (body, samples) pairs.
pub(crate) fn encode_shard(views: &[SeriesView<'_>], max_samples: usize) -> Vec<(Vec<u8>, usize)> {
    let max = max_samples.max(1);
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut in_buf = 0usize;
    for view in views {
        let mut samples = view.samples();
        while !samples.is_empty() {
            let take = samples.len().min(max - in_buf);
            write_timeseries(&mut buf, view, &samples[..take]);
            in_buf += take;
            samples = &samples[take..];
            if in_buf == max {
                out.push((std::mem::take(&mut buf), in_buf));
                in_buf = 0;
            }
        }
    }
    if in_buf > 0 {
        out.push((buf, in_buf));
    }
    out
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Length of a length-delimited field: tag + length varint + payload.
fn field_len(payload: usize) -> usize {
    1 + varint_len(payload as u64) + payload
}

fn label_len(name: &str, value: &str) -> usize {
    field_len(name.len()) + field_len(value.len())
}

fn sample_len(s: &sonde_common::model::Sample) -> usize {
    let value = if s.value != 0.0 { 9 } else { 0 };
    let ts = if s.timestamp_ms != 0 {
        1 + varint_len(s.timestamp_ms as u64)
    } else {
        0
    };
    value + ts
}

/// The series' labels with `__name__` merged in at its sorted place.
fn sorted_labels<'a>(view: &SeriesView<'a>) -> impl Iterator<Item = (&'a str, &'a str)> {
    let name = view.name();
    let mut pending = Some(("__name__", name));
    let mut labels = view.labels().peekable();
    std::iter::from_fn(move || match (pending, labels.peek()) {
        (Some(p), Some(&(n, _))) if p.0 < n => pending.take(),
        (_, Some(_)) => labels.next(),
        (Some(_), None) => pending.take(),
        (None, None) => None,
    })
}

/// Appends one `WriteRequest.timeseries` field (tag 1) holding `view`'s labels and `samples`.
fn write_timeseries(
    buf: &mut Vec<u8>,
    view: &SeriesView<'_>,
    samples: &[sonde_common::model::Sample],
) {
    let labels_len: usize = sorted_labels(view)
        .map(|(n, v)| field_len(label_len(n, v)))
        .sum();
    let samples_len: usize = samples.iter().map(|s| field_len(sample_len(s))).sum();
    buf.push(0x0a);
    put_varint(buf, (labels_len + samples_len) as u64);
    for (n, v) in sorted_labels(view) {
        buf.push(0x0a);
        put_varint(buf, label_len(n, v) as u64);
        buf.push(0x0a);
        put_varint(buf, n.len() as u64);
        buf.extend_from_slice(n.as_bytes());
        buf.push(0x12);
        put_varint(buf, v.len() as u64);
        buf.extend_from_slice(v.as_bytes());
    }
    for s in samples {
        buf.push(0x12);
        put_varint(buf, sample_len(s) as u64);
        if s.value != 0.0 {
            buf.push(0x09);
            buf.extend_from_slice(&s.value.to_le_bytes());
        }
        if s.timestamp_ms != 0 {
            buf.push(0x10);
            put_varint(buf, s.timestamp_ms as u64);
        }
    }
}

#[cfg(test)] // the reference the direct encoder is tested against
pub(crate) fn sample_count(req: &WriteRequest) -> usize {
    req.timeseries.iter().map(|t| t.samples.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::model::{MetricKind, Sample as NativeSample, Series};
    use sonde_common::wire::{BatchBuilder, BatchHeader};

    /// Name, labels, sample count.
    type Spec<'a> = (&'a str, &'a [(&'a str, &'a str)], usize);

    fn batch(series: &[Spec<'_>]) -> Batch {
        let mut b = BatchBuilder::new(BatchHeader {
            agent_id: "h".into(),
            sequence: 1,
            sent_at_ms: 1,
        });
        for (name, labels, n) in series {
            let samples = (0..*n)
                .map(|i| NativeSample::new(1000 + i as i64, i as f64))
                .collect();
            b.push(
                &Series::new(*name, labels.iter().copied()),
                MetricKind::Counter,
                None,
                samples,
            );
        }
        b.build()
    }

    fn names(ts: &TimeSeries) -> Vec<(&str, &str)> {
        ts.labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect()
    }

    #[test]
    fn labels_are_sorted_with_the_name_among_them() {
        let b = batch(&[
            ("up", &[("job", "api"), ("zone", "a")], 1),
            ("temp", &[("Area", "x"), ("b", "y")], 1),
        ]);
        let mut views = b.iter();
        let first = to_timeseries(&views.next().unwrap());
        assert_eq!(
            names(&first),
            [("__name__", "up"), ("job", "api"), ("zone", "a")]
        );
        // Upper case sorts before '_'.
        let second = to_timeseries(&views.next().unwrap());
        assert_eq!(
            names(&second),
            [("Area", "x"), ("__name__", "temp"), ("b", "y")]
        );
        assert_eq!(
            first.samples,
            [Sample {
                value: 0.0,
                timestamp: 1000
            }]
        );
    }

    #[test]
    fn a_series_always_lands_in_the_same_shard_and_shards_are_used() {
        let labels: Vec<(String, String)> =
            (0..200).map(|i| ("i".to_owned(), i.to_string())).collect();
        let mut used = [0usize; 4];
        for (n, v) in &labels {
            let one = batch(&[("m", &[(n.as_str(), v.as_str())], 1)]);
            let two = batch(&[("m", &[(n.as_str(), v.as_str())], 3)]);
            let a = shard_of(&one.iter().next().unwrap(), 4);
            assert_eq!(a, shard_of(&two.iter().next().unwrap(), 4));
            used[a] += 1;
        }
        assert!(used.iter().all(|&u| u > 20), "{used:?}");
        let b = batch(&[("m", &[("a", "1")], 2), ("n", &[], 1)]);
        let mut shards = vec![Vec::new(); 3];
        split(&b, &mut shards);
        assert_eq!(shards.iter().map(Vec::len).sum::<usize>(), 2);
    }

    #[test]
    fn direct_encoding_matches_prost_over_chunks() {
        let b = batch(&[
            ("a", &[("job", "x"), ("zone", "1")], 3),
            ("b", &[("Area", "up"), ("b", "y")], 7),
            ("c", &[], 1),
            ("d", &[("z", "\u{e9}t\u{e9}")], 4),
        ]);
        for max in [1, 4, 5, 1000] {
            let views: Vec<_> = b.iter().collect();
            let fast = encode_shard(&views, max);
            let series: Vec<TimeSeries> = b.iter().map(|v| to_timeseries(&v)).collect();
            let slow = chunk(series, max);
            assert_eq!(fast.len(), slow.len(), "max {max}");
            for ((bytes, n), req) in fast.iter().zip(&slow) {
                let body = sonde_common::remote_write::compress(bytes);
                let decoded = sonde_common::remote_write::decode(&body, 1 << 20).unwrap();
                assert_eq!(&decoded, req, "max {max}");
                assert_eq!(*n, sample_count(req));
                assert_eq!(
                    body,
                    sonde_common::remote_write::encode(req),
                    "byte-identical to prost"
                );
            }
        }
    }

    #[test]
    fn requests_hold_at_most_max_samples_in_order() {
        let b = batch(&[("a", &[], 3), ("b", &[], 7), ("c", &[], 1), ("d", &[], 4)]);
        let series: Vec<TimeSeries> = b.iter().map(|v| to_timeseries(&v)).collect();
        let reqs = chunk(series.clone(), 4);
        let sizes: Vec<usize> = reqs.iter().map(sample_count).collect();
        assert_eq!(sizes, [4, 4, 4, 3]);
        // Concatenated, the requests hold every sample of every series, in order.
        let mut flat: Vec<(String, i64)> = Vec::new();
        for r in &reqs {
            for ts in &r.timeseries {
                assert!(!ts.samples.is_empty());
                for s in &ts.samples {
                    flat.push((ts.labels[0].value.clone(), s.timestamp));
                }
            }
        }
        let want: Vec<(String, i64)> = series
            .iter()
            .flat_map(|ts| {
                ts.samples
                    .iter()
                    .map(|s| (ts.labels[0].value.clone(), s.timestamp))
            })
            .collect();
        assert_eq!(flat, want);
        assert_eq!(chunk(series, 1000).len(), 1);
        assert!(chunk(Vec::new(), 10).is_empty());
    }
}
