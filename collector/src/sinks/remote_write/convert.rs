//! From native batches to remote-write requests: series to `TimeSeries` (labels sorted by
//! name, `__name__` among them), series to shards by a hash of their identity, and shard
//! contents to requests of at most `max_samples` samples. Pure functions.

use sonde_common::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use sonde_common::wire::{Batch, SeriesView};

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
