//! From native batches to remote-write requests: each batch's series encoded once as protobuf
//! `timeseries` fields tagged with a hash of their identity ([`prepare`], at enqueue), then a
//! unit's fields dealt to shards by that hash and concatenated into bodies of at most
//! `max_samples` samples ([`assemble`], at send; labels sorted by name, `__name__` among
//! them). The `TimeSeries`-building path kept under `cfg(test)` is the obviously correct
//! reference the direct encoder is checked against. Pure functions.

#[cfg(test)]
use sonde_common::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use sonde_common::wire::{Batch, SeriesView};

/// A series' shard hash, over its name and labels (foldhash, seeded once per process: the
/// shard only has to be the same for all of a series' pieces within a unit), so a series
/// always takes the same shard, whose requests go out one at a time, in order.
pub(crate) fn series_hash(view: &SeriesView<'_>) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static SEED: std::sync::OnceLock<foldhash::fast::RandomState> = std::sync::OnceLock::new();
    let mut h = SEED
        .get_or_init(foldhash::fast::RandomState::default)
        .build_hasher();
    // Length-prefixed, so no two different series feed the hasher the same bytes.
    let mut eat = |bytes: &[u8]| {
        h.write_usize(bytes.len());
        h.write(bytes);
    };
    eat(view.name().as_bytes());
    for (n, v) in view.labels() {
        eat(n.as_bytes());
        eat(v.as_bytes());
    }
    h.finish()
}

#[cfg(test)]
pub(crate) fn shard_of(view: &SeriesView<'_>, shards: usize) -> usize {
    (series_hash(view) % shards.max(1) as u64) as usize
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
/// order: a series is cut into pieces of `max_samples`, and a request is cut before a piece
/// that does not fit.
pub(crate) fn chunk(series: Vec<TimeSeries>, max_samples: usize) -> Vec<WriteRequest> {
    let max = max_samples.max(1);
    let mut out = Vec::new();
    let mut current = WriteRequest::default();
    let mut in_current = 0usize;
    for ts in series {
        for piece in ts.samples.chunks(max) {
            if in_current > 0 && in_current + piece.len() > max {
                out.push(std::mem::take(&mut current));
                in_current = 0;
            }
            in_current += piece.len();
            current.timeseries.push(TimeSeries {
                labels: ts.labels.clone(),
                samples: piece.to_vec(),
            });
        }
    }
    if !current.timeseries.is_empty() {
        out.push(current);
    }
    out
}

/// Bytes before a prepared batch's index: its sample count (u64) and entry count (u32),
/// little-endian.
const PREFIX: usize = 12;

/// Bytes of a prepared entry's index record: shard hash (u64), samples (u32), field length
/// (u32), little-endian.
const ENTRY_HEADER: usize = 16;

/// A batch's series as remote write names them, encoded once per shape of an agent's batches
/// (see [`crate::shapes`]) rather than for every batch: each series' labels, `__name__` among
/// them, sorted by name, as the `TimeSeries.labels` fields, and its shard hash.
#[derive(Debug, Default)]
pub struct SeriesLabels {
    bytes: Vec<u8>,
    /// Per series: shard hash and where its fields end in `bytes`.
    series: Vec<(u64, usize)>,
}

impl SeriesLabels {
    pub fn of(batch: &Batch) -> SeriesLabels {
        let mut bytes = Vec::with_capacity(batch.series.len() * 128);
        let mut series = Vec::with_capacity(batch.series.len());
        for view in batch.iter() {
            for (n, v) in sorted_labels(&view) {
                bytes.push(0x0a);
                put_varint(&mut bytes, label_len(n, v) as u64);
                bytes.push(0x0a);
                put_varint(&mut bytes, n.len() as u64);
                bytes.extend_from_slice(n.as_bytes());
                bytes.push(0x12);
                put_varint(&mut bytes, v.len() as u64);
                bytes.extend_from_slice(v.as_bytes());
            }
            series.push((series_hash(&view), bytes.len()));
        }
        SeriesLabels { bytes, series }
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.series.capacity() * 16
    }

    /// Series `i`'s hash and label fields.
    fn get(&self, i: usize) -> Option<(u64, &[u8])> {
        let &(hash, end) = self.series.get(i)?;
        let start = i
            .checked_sub(1)
            .and_then(|p| self.series.get(p))
            .map_or(0, |&(_, e)| e);
        Some((hash, self.bytes.get(start..end)?))
    }
}

/// Encodes `batch`'s series (those with samples) for remote write ahead of sending. Each
/// series becomes pieces of at most `max_samples` samples, each piece a `WriteRequest.timeseries`
/// field; the fields follow one another, so a prepared batch's fields ([`fields`]) are a valid
/// `WriteRequest` body, and so are those of several prepared batches concatenated: the bytes
/// prost would encode, without a `String` per label. Before them, the batch's sample count
/// ([`prepared_samples`]) and an index of the pieces (shard hash, samples, length: [`entries`]).
pub(crate) fn prepare(batch: &Batch, max_samples: usize) -> Vec<u8> {
    prepare_with(batch, max_samples, &SeriesLabels::of(batch))
}

/// [`prepare`] with the batch's labels already encoded (`labels` must be of a batch with the
/// same series, in the same order; a series it lacks is left out).
pub(crate) fn prepare_with(batch: &Batch, max_samples: usize, labels: &SeriesLabels) -> Vec<u8> {
    let max = max_samples.max(1);
    let series = batch.series.len().min(labels.series.len());
    let entries: usize = batch.series[..series]
        .iter()
        .map(|s| s.samples.len().div_ceil(max))
        .sum();
    let samples = batch.sample_count();
    let index = PREFIX + entries * ENTRY_HEADER;
    let mut out = Vec::with_capacity(index + labels.bytes.len() + series * 8 + samples * 24);
    out.extend_from_slice(&(samples as u64).to_le_bytes());
    out.extend_from_slice(&(entries as u32).to_le_bytes());
    out.resize(index, 0);
    let mut at = PREFIX;
    for (i, entry) in batch.series[..series].iter().enumerate() {
        let Some((hash, fields)) = labels.get(i) else {
            break;
        };
        for piece in entry.samples.chunks(max) {
            let start = out.len();
            write_timeseries(&mut out, fields, piece);
            let field = (out.len() - start) as u32;
            out[at..at + 8].copy_from_slice(&hash.to_le_bytes());
            out[at + 8..at + 12].copy_from_slice(&(piece.len() as u32).to_le_bytes());
            out[at + 12..at + 16].copy_from_slice(&field.to_le_bytes());
            at += ENTRY_HEADER;
        }
    }
    out
}

/// One piece of a series in a prepared batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub(crate) hash: u64,
    pub(crate) samples: usize,
    /// The encoded `WriteRequest.timeseries` field.
    pub(crate) field: &'a [u8],
}

/// A prepared batch's index and fields (empty for a malformed one, which `prepare` never
/// writes).
fn split_prepared(prepared: &[u8]) -> (&[u8], &[u8]) {
    let count = prepared
        .get(8..PREFIX)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes) as usize;
    let index_end = PREFIX.saturating_add(count.saturating_mul(ENTRY_HEADER));
    match (prepared.get(PREFIX..index_end), prepared.get(index_end..)) {
        (Some(index), Some(fields)) => (index, fields),
        _ => (&[], &[]),
    }
}

/// The fields of a prepared batch: a `WriteRequest` body of all its series.
pub(crate) fn fields(prepared: &[u8]) -> &[u8] {
    split_prepared(prepared).1
}

/// The entries of a prepared batch, in order (stopping at a malformed tail, which `prepare`
/// never writes).
pub(crate) fn entries(prepared: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    let (index, mut fields) = split_prepared(prepared);
    index.chunks_exact(ENTRY_HEADER).map_while(move |header| {
        let word = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let hash = u64::from_le_bytes(header[..8].try_into().ok()?);
        let (field, rest) = fields.split_at_checked(word(12) as usize)?;
        fields = rest;
        Some(Entry {
            hash,
            samples: word(8) as usize,
            field,
        })
    })
}

/// How many samples a prepared batch holds.
pub(crate) fn prepared_samples(prepared: &[u8]) -> usize {
    prepared
        .first_chunk::<8>()
        .map_or(0, |b| u64::from_le_bytes(*b) as usize)
}

/// Deals prepared batches' entries, in order, to `shards` shards by hash, and cuts each
/// shard's into request bodies (before snappy) of at most `max_samples` samples, cutting
/// before an entry that does not fit. Returns each shard's (body, samples) pairs, in order.
pub(crate) fn assemble<'a>(
    prepared: impl IntoIterator<Item = &'a [u8]>,
    shards: usize,
    max_samples: usize,
) -> Vec<Vec<(Vec<u8>, usize)>> {
    let n = shards.max(1);
    let max = max_samples.max(1);
    let prepared: Vec<&[u8]> = prepared.into_iter().collect();
    // Each shard's bytes, so its buffers are allocated once rather than grown.
    let mut left = vec![0usize; n];
    for entry in prepared.iter().flat_map(|p| entries(p)) {
        left[(entry.hash % n as u64) as usize] += entry.field.len();
    }
    let mut out: Vec<Vec<(Vec<u8>, usize)>> = vec![Vec::new(); n];
    let mut open: Vec<(Vec<u8>, usize)> = vec![(Vec::new(), 0); n];
    for entry in prepared.iter().flat_map(|p| entries(p)) {
        let shard = (entry.hash % n as u64) as usize;
        let (buf, in_buf) = &mut open[shard];
        if *in_buf > 0 && *in_buf + entry.samples > max {
            out[shard].push((std::mem::take(buf), std::mem::take(in_buf)));
        }
        if buf.capacity() == 0 {
            buf.reserve_exact(left[shard]);
        }
        buf.extend_from_slice(entry.field);
        left[shard] -= entry.field.len();
        *in_buf += entry.samples;
    }
    for (shard, (buf, in_buf)) in open.into_iter().enumerate() {
        if in_buf > 0 {
            out[shard].push((buf, in_buf));
        }
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

/// Appends one `WriteRequest.timeseries` field (tag 1) holding `labels` (encoded label
/// fields) and `samples`.
fn write_timeseries(buf: &mut Vec<u8>, labels: &[u8], samples: &[sonde_common::model::Sample]) {
    let samples_len: usize = samples.iter().map(|s| field_len(sample_len(s))).sum();
    buf.push(0x0a);
    put_varint(buf, (labels.len() + samples_len) as u64);
    buf.extend_from_slice(labels);
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
    fn labels_encoded_for_one_batch_serve_the_next_of_the_same_shape() {
        let first = batch(&[
            ("a", &[("job", "x"), ("zone", "1")], 3),
            ("b", &[("Area", "up"), ("b", "y")], 7),
            ("c", &[], 1),
        ]);
        let labels = SeriesLabels::of(&first);
        let mut next = first.clone();
        for (i, s) in next.series.iter_mut().enumerate() {
            for (k, sample) in s.samples.iter_mut().enumerate() {
                sample.value = (i * 100 + k) as f64 + 0.5;
                sample.timestamp_ms += 60_000;
            }
        }
        next.series[1].samples.truncate(2);
        for max in [1, 2, 1000] {
            assert_eq!(
                prepare_with(&next, max, &labels),
                prepare(&next, max),
                "max {max}"
            );
        }
        assert!(labels.heap_bytes() > 0);
    }

    #[test]
    fn direct_encoding_matches_prost_over_chunks() {
        let specs: [Spec<'_>; 4] = [
            ("a", &[("job", "x"), ("zone", "1")], 3),
            ("b", &[("Area", "up"), ("b", "y")], 7),
            ("c", &[], 1),
            ("d", &[("z", "\u{e9}t\u{e9}")], 4),
        ];
        let b = batch(&specs);
        // The same series as two batches of one unit: the first two, and the rest.
        let (b1, b2) = (batch(&specs[..2]), batch(&specs[2..]));
        for max in [1, 4, 5, 1000] {
            let whole = prepare(&b, max);
            assert_eq!(prepared_samples(&whole), b.sample_count());
            let (first, second) = (prepare(&b1, max), prepare(&b2, max));
            assert_eq!(
                prepared_samples(&first) + prepared_samples(&second),
                b.sample_count()
            );
            // The fields of both, one after the other, are those of the whole batch.
            assert_eq!([fields(&first), fields(&second)].concat(), fields(&whole));
            let (first, second) = (first.as_slice(), second.as_slice());
            let mut shards = assemble([first, second], 1, max);
            assert_eq!(shards.len(), 1);
            let fast = shards.remove(0);
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
    fn assembled_shards_keep_each_series_in_one_shard_in_order() {
        let specs: Vec<(String, usize)> = (0..40).map(|i| (format!("m{i}"), 1 + i % 6)).collect();
        let spec_refs: Vec<Spec<'_>> = specs
            .iter()
            .map(|(n, k)| (n.as_str(), &[][..], *k))
            .collect();
        let b = batch(&spec_refs);
        let (p1, p2) = (prepare(&b, 4), prepare(&b, 4));
        let shards = assemble([p1.as_slice(), p2.as_slice()], 3, 10);
        let mut reference = vec![Vec::new(); 3];
        split(&b, &mut reference);
        split(&b, &mut reference);
        for (got, want) in shards.iter().zip(reference) {
            let mut flat = Vec::new();
            for (body, n) in got {
                assert!(*n <= 10 && *n > 0);
                let req = sonde_common::remote_write::decode(
                    &sonde_common::remote_write::compress(body),
                    1 << 20,
                )
                .unwrap();
                assert_eq!(sample_count(&req), *n);
                flat.extend(points(&req.timeseries));
            }
            let want = points(&want);
            assert!(!want.is_empty());
            assert_eq!(flat, want);
        }
    }

    /// Every sample as (first label's value, timestamp), in order.
    fn points(series: &[TimeSeries]) -> Vec<(String, i64)> {
        series
            .iter()
            .flat_map(|ts| {
                ts.samples
                    .iter()
                    .map(|s| (ts.labels[0].value.clone(), s.timestamp))
            })
            .collect()
    }

    #[test]
    fn requests_hold_at_most_max_samples_in_order() {
        let b = batch(&[("a", &[], 3), ("b", &[], 7), ("c", &[], 1), ("d", &[], 4)]);
        let series: Vec<TimeSeries> = b.iter().map(|v| to_timeseries(&v)).collect();
        let reqs = chunk(series.clone(), 4);
        let sizes: Vec<usize> = reqs.iter().map(sample_count).collect();
        assert_eq!(sizes, [3, 4, 4, 4]);
        // Concatenated, the requests hold every sample of every series, in order.
        let mut flat: Vec<(String, i64)> = Vec::new();
        for r in &reqs {
            assert!(r.timeseries.iter().all(|ts| !ts.samples.is_empty()));
            flat.extend(points(&r.timeseries));
        }
        assert_eq!(flat, points(&series));
        assert_eq!(chunk(series, 1000).len(), 1);
        assert!(chunk(Vec::new(), 10).is_empty());
    }
}
