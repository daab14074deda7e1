//! The chunk a head series is appending to: the one chunk that every query of recent data
//! decodes, so it is kept in a form that decodes several times faster than Gorilla's bit
//! stream, and in about as many bytes.
//!
//! # Forms
//! - *Decimal* (most host metrics: counters, and gauges with a few decimals): every value is an
//!   integer `m / 10^k`. The chunk is a byte stream of zigzag varints: the first sample's `m`;
//!   then for each later sample the timestamp's delta (second sample) or delta of delta (the
//!   rest), and the difference of `m` from the previous one. A counter growing by a few hundred
//!   hundredths a step takes three bytes a sample, decoded with two short varint reads and a
//!   division.
//! - *Gorilla* ([`Chunk`]): any other value (NaN, stale markers, `-0.0`, infinities, more than
//!   six decimals, integers beyond 2^53).
//!
//! A chunk starts decimal at the exponent of its first value. A later value that needs a larger
//! exponent re-encodes the chunk at it (the earlier values keep their bits: `m x 10^d / 10^(k+d)`
//! is the same rational as `m / 10^k`, and IEEE division rounds both to the same double); a
//! value that is no short decimal turns the chunk into Gorilla. Both happen at most a few times
//! per chunk.
//!
//! Sealing ([`OpenChunk::seal`]) packs a decimal chunk from its integers directly
//! ([`super::packed`]); a Gorilla chunk is sealed as [`Chunk::seal`] does.
//!
//! The bytes are the process's own memory, never read from outside; decoding still checks
//! every read and stops at the first bad one instead of panicking.

use sonde_common::model::Sample;

use super::chunk::{Chunk, ChunkIter, SealedChunk};
use super::packed::{self, MAX_EXPONENT, integer_at, pow10, read_uvarint, unzigzag, zigzag};

/// The open chunk of a head series.
#[derive(Clone, Debug)]
pub(crate) struct OpenChunk {
    count: u16,
    min_t: i64,
    max_t: i64,
    form: Form,
}

#[derive(Clone, Debug)]
enum Form {
    Decimal(Decimal),
    Gorilla(Chunk),
}

/// The decimal form's stream and the encoder state needed to append.
#[derive(Clone, Debug)]
struct Decimal {
    k: u8,
    /// 10^k.
    scale: f64,
    bytes: Vec<u8>,
    /// Previous timestamp delta and integer.
    delta: i64,
    m: i64,
}

impl Decimal {
    fn new(k: u8) -> Self {
        Self {
            k,
            scale: pow10(i32::from(k)),
            bytes: Vec::new(),
            delta: 0,
            m: 0,
        }
    }

    /// Reads the stream's `count` samples, the first at `min_t`.
    fn reader(&self, count: u16, min_t: i64) -> DecimalIter<'_> {
        DecimalIter {
            bytes: &self.bytes,
            pos: 0,
            left: count,
            index: 0,
            t: min_t,
            delta: 0,
            m: 0,
            scale: self.scale,
        }
    }

    /// Appends sample `index` (its integer `m`), `prev_t` being the previous timestamp.
    fn push(&mut self, index: u16, t: i64, prev_t: i64, m: i64) {
        match index {
            0 => {}
            1 => {
                let delta = t.wrapping_sub(prev_t);
                packed::write_uvarint(&mut self.bytes, zigzag(delta));
                self.delta = delta;
            }
            _ => {
                let delta = t.wrapping_sub(prev_t);
                packed::write_uvarint(&mut self.bytes, zigzag(delta.wrapping_sub(self.delta)));
                self.delta = delta;
            }
        }
        packed::write_uvarint(&mut self.bytes, zigzag(m.wrapping_sub(self.m)));
        self.m = m;
    }
}

/// The smallest exponent at which `v` is a short decimal, with its integer.
fn short_decimal(v: f64) -> Option<(u8, i64)> {
    (0..=MAX_EXPONENT).find_map(|k| integer_at(v, pow10(k)).map(|m| (k as u8, m)))
}

impl Default for OpenChunk {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenChunk {
    /// An empty chunk. Allocates nothing until the first append.
    pub(crate) fn new() -> Self {
        Self {
            count: 0,
            min_t: 0,
            max_t: 0,
            form: Form::Decimal(Decimal::new(0)),
        }
    }

    /// A chunk holding `samples` (oldest first, at most `u16::MAX`), decimal when every value
    /// is a short decimal.
    fn from_samples(samples: &[Sample]) -> Self {
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
            return Self::new();
        };
        let form = match packed::integers(samples) {
            Some((k, ints)) => {
                let mut d = Decimal::new(k);
                let mut prev_t = first.timestamp_ms;
                for (i, (s, m)) in samples.iter().zip(ints).enumerate() {
                    d.push(i as u16, s.timestamp_ms, prev_t, m);
                    prev_t = s.timestamp_ms;
                }
                Form::Decimal(d)
            }
            None => Form::Gorilla(Chunk::of(samples.iter().copied())),
        };
        Self {
            count: samples.len() as u16,
            min_t: first.timestamp_ms,
            max_t: last.timestamp_ms,
            form,
        }
    }

    pub(crate) fn len(&self) -> u16 {
        self.count
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Timestamp of the first sample (meaningless while empty).
    pub(crate) fn min_t(&self) -> i64 {
        self.min_t
    }

    /// Timestamp of the last sample (meaningless while empty).
    pub(crate) fn max_t(&self) -> i64 {
        self.max_t
    }

    /// Bytes the samples take.
    pub(crate) fn byte_len(&self) -> usize {
        match &self.form {
            Form::Decimal(d) => d.bytes.len(),
            Form::Gorilla(c) => c.bytes().len(),
        }
    }

    /// Appends a sample newer than the last one; false (and nothing written) when the chunk
    /// already holds `u16::MAX` samples.
    pub(crate) fn append(&mut self, t: i64, value: f64) -> bool {
        if self.count == u16::MAX {
            return false;
        }
        match &mut self.form {
            Form::Gorilla(c) => {
                c.append(t, value);
            }
            Form::Decimal(d) if self.count == 0 => match short_decimal(value) {
                Some((k, m)) => {
                    *d = Decimal::new(k);
                    d.bytes.reserve(64);
                    d.push(0, t, t, m);
                }
                None => {
                    let mut c = Chunk::new();
                    c.append(t, value);
                    self.form = Form::Gorilla(c);
                }
            },
            Form::Decimal(d) => match integer_at(value, d.scale) {
                Some(m) => d.push(self.count, t, self.max_t, m),
                None => {
                    // A larger exponent, or no decimal form at all: rebuilt (rare).
                    let mut samples = self.samples();
                    samples.push(Sample::new(t, value));
                    *self = Self::from_samples(&samples);
                    return true;
                }
            },
        }
        if self.count == 0 {
            self.min_t = t;
        }
        self.max_t = t;
        self.count += 1;
        true
    }

    /// The samples, oldest first.
    pub(crate) fn iter(&self) -> OpenIter<'_> {
        match &self.form {
            Form::Decimal(d) => OpenIter::Decimal(d.reader(self.count, self.min_t)),
            Form::Gorilla(c) => OpenIter::Gorilla(c.iter()),
        }
    }

    fn samples(&self) -> Vec<Sample> {
        self.iter().collect()
    }

    /// Appends the samples in `[start, end]` to `out`.
    pub(crate) fn decode_range_into(&self, start: i64, end: i64, out: &mut Vec<Sample>) {
        if self.count == 0 || start > end || start > self.max_t || end < self.min_t {
            return;
        }
        if start <= self.min_t && self.max_t <= end {
            out.extend(self.iter());
            return;
        }
        out.extend(
            self.iter()
                .skip_while(|s| s.timestamp_ms < start)
                .take_while(|s| s.timestamp_ms <= end),
        );
    }

    /// Freezes the chunk: a decimal one packed from its integers (or as Gorilla, when that is
    /// smaller), a Gorilla one as [`Chunk::seal`] does. `None` when empty.
    pub(crate) fn seal(self) -> Option<SealedChunk> {
        if self.count == 0 {
            return None;
        }
        let (min_t, max_t, count) = (self.min_t, self.max_t, self.count);
        match self.form {
            Form::Gorilla(c) => Some(c.seal()),
            Form::Decimal(d) => {
                let mut times = Vec::with_capacity(usize::from(count));
                let mut ints = Vec::with_capacity(usize::from(count));
                let mut it = d.reader(count, min_t);
                while let Some((t, m)) = it.next_raw() {
                    times.push(t);
                    ints.push(m);
                }
                let packed = packed::encode_integers(d.k, &times, &ints);
                if packed.len() <= d.bytes.len() {
                    return Some(SealedChunk::new(min_t, max_t, count, packed));
                }
                // Rare (the varints beat the packing): the smaller of packed and Gorilla.
                let samples = times.iter().zip(&ints);
                Some(Chunk::of(samples.map(|(&t, &m)| Sample::new(t, m as f64 / d.scale))).seal())
            }
        }
    }
}

/// The samples of an [`OpenChunk`].
pub(crate) enum OpenIter<'a> {
    Decimal(DecimalIter<'a>),
    Gorilla(ChunkIter<'a>),
}

impl Iterator for OpenIter<'_> {
    type Item = Sample;

    #[inline]
    fn next(&mut self) -> Option<Sample> {
        match self {
            OpenIter::Decimal(d) => d
                .next_raw()
                .map(|(t, m)| Sample::new(t, m as f64 / d.scale)),
            OpenIter::Gorilla(g) => g.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            OpenIter::Decimal(d) => (0, Some(usize::from(d.left))),
            OpenIter::Gorilla(g) => g.size_hint(),
        }
    }
}

/// Reads a decimal stream.
pub(crate) struct DecimalIter<'a> {
    bytes: &'a [u8],
    pos: usize,
    left: u16,
    index: u16,
    t: i64,
    delta: i64,
    m: i64,
    scale: f64,
}

impl DecimalIter<'_> {
    #[inline]
    fn varint(&mut self) -> Option<i64> {
        // One byte is the common case: a step's delta of delta, and most increments.
        match self.bytes.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Some(unzigzag(u64::from(b)))
            }
            _ => read_uvarint(self.bytes, &mut self.pos).map(unzigzag),
        }
    }

    /// The next timestamp and integer; `None` at the end or at a bad read (which ends it).
    #[inline]
    fn next_raw(&mut self) -> Option<(i64, i64)> {
        if self.left == 0 {
            return None;
        }
        let step = match self.index {
            0 => Some(()),
            1 => self.varint().map(|d| {
                self.delta = d;
                self.t = self.t.wrapping_add(d);
            }),
            _ => self.varint().map(|dod| {
                self.delta = self.delta.wrapping_add(dod);
                self.t = self.t.wrapping_add(self.delta);
            }),
        };
        let dm = step.and_then(|()| self.varint());
        let Some(dm) = dm else {
            self.left = 0;
            return None;
        };
        self.m = self.m.wrapping_add(dm);
        self.left -= 1;
        self.index = self.index.wrapping_add(1);
        Some((self.t, self.m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bits(s: impl IntoIterator<Item = Sample>) -> Vec<(i64, u64)> {
        s.into_iter()
            .map(|x| (x.timestamp_ms, x.value.to_bits()))
            .collect()
    }

    fn filled(samples: &[Sample]) -> OpenChunk {
        let mut c = OpenChunk::new();
        for s in samples {
            assert!(c.append(s.timestamp_ms, s.value));
        }
        c
    }

    fn at_10s(values: &[f64]) -> Vec<Sample> {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| Sample::new(1_700_000_000_000 + i as i64 * 10_000, v))
            .collect()
    }

    /// Reads back bit for bit through every path: iteration, ranges, and the sealed chunk.
    fn check(samples: &[Sample]) {
        let c = filled(samples);
        assert_eq!(usize::from(c.len()), samples.len());
        assert_eq!(bits(c.iter()), bits(samples.iter().copied()));
        if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
            assert_eq!(
                (c.min_t(), c.max_t()),
                (first.timestamp_ms, last.timestamp_ms)
            );
            let (t0, t1) = (first.timestamp_ms, last.timestamp_ms);
            for (a, b) in [
                (t0, t1),
                (t0.saturating_add(1), t1.saturating_sub(1)),
                (t0.saturating_sub(5), t0.saturating_add(25_000)),
                (t1.saturating_sub(20_000), t1.saturating_add(5)),
                (t1, t0),
            ] {
                let mut got = vec![Sample::new(-1, 0.0)];
                c.decode_range_into(a, b, &mut got);
                let want: Vec<Sample> = std::iter::once(Sample::new(-1, 0.0))
                    .chain(
                        samples
                            .iter()
                            .copied()
                            .filter(|s| (a..=b).contains(&s.timestamp_ms)),
                    )
                    .collect();
                assert_eq!(bits(got), bits(want), "[{a}, {b}]");
            }
            let sealed = c.clone().seal().unwrap();
            assert_eq!(
                (sealed.min_t, sealed.max_t, usize::from(sealed.len())),
                (first.timestamp_ms, last.timestamp_ms, samples.len())
            );
            assert_eq!(bits(sealed.iter()), bits(samples.iter().copied()));
        } else {
            assert!(c.seal().is_none());
        }
    }

    #[test]
    fn counters_and_short_gauges_stay_decimal_and_small() {
        let mut v = 1234.56;
        let values: Vec<f64> = (0..120)
            .map(|i| {
                v = ((v * 100.0) as i64 + (i * 37) % 300) as f64 / 100.0;
                v
            })
            .collect();
        let s = at_10s(&values);
        check(&s);
        let c = filled(&s);
        assert!(matches!(c.form, Form::Decimal(Decimal { k: 2, .. })));
        // A delta of delta byte and a two-byte increment at most, per sample.
        assert!(c.byte_len() <= 3 * 120, "{} bytes", c.byte_len());
        // Sealed packed: smaller still.
        let sealed = c.seal().unwrap();
        assert_eq!(sealed.bytes[0], packed::MARKER);
    }

    #[test]
    fn a_value_with_more_decimals_re_encodes_and_keeps_the_earlier_bits() {
        let s = at_10s(&[1.0, 2.0, 3.0, 2.5, 7.0, 0.125, 0.3, 1e12, -4.0]);
        check(&s);
        let c = filled(&s);
        assert!(matches!(c.form, Form::Decimal(Decimal { k: 3, .. })));
    }

    #[test]
    fn values_that_are_no_short_decimal_turn_the_chunk_gorilla() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        for odd in [
            stale,
            f64::NAN,
            -0.0,
            f64::INFINITY,
            1e300,
            0.1234567,
            2f64.powi(60),
        ] {
            check(&at_10s(&[1.0, 2.5, odd, 3.0, 4.0]));
            check(&at_10s(&[odd, 1.0, 2.0]));
            let c = filled(&at_10s(&[1.0, odd]));
            assert!(matches!(c.form, Form::Gorilla(_)), "{odd}");
        }
    }

    #[test]
    fn irregular_and_extreme_timestamps_round_trip() {
        let s: Vec<Sample> = [i64::MIN + 1, -5, 0, 7, 1_000_000, 1_000_001, i64::MAX]
            .iter()
            .enumerate()
            .map(|(i, &t)| Sample::new(t, i as f64))
            .collect();
        check(&s);
        check(&[]);
        check(&at_10s(&[42.0]));
    }

    #[test]
    fn a_full_chunk_refuses_more() {
        let mut c = OpenChunk::new();
        for t in 0..i64::from(u16::MAX) {
            assert!(c.append(t, 1.0));
        }
        assert!(!c.append(i64::from(u16::MAX), 1.0));
        assert_eq!(c.len(), u16::MAX);
    }

    #[test]
    fn a_cut_stream_ends_without_panicking() {
        let c = filled(&at_10s(&[1.0, 200.0, 30000.0, 4.0]));
        let Form::Decimal(d) = &c.form else {
            panic!("decimal expected");
        };
        for cut in 0..d.bytes.len() {
            let mut it = d.reader(c.count, c.min_t);
            it.bytes = &d.bytes[..cut];
            assert!(OpenIter::Decimal(it).count() < 4);
        }
    }

    proptest! {
        #[test]
        fn any_samples_round_trip(
            steps in proptest::collection::vec((1i64..100_000, any::<u64>(), 0u8..4), 0..300)
        ) {
            let mut t = 1_600_000_000_000i64;
            let samples: Vec<Sample> = steps
                .iter()
                .map(|&(dt, raw, kind)| {
                    t += dt;
                    let v = match kind {
                        // Integers, hundredths, and any bits at all.
                        0 => (raw % 1_000_000) as f64,
                        1 => (raw % 100_000_000) as f64 / 100.0,
                        2 => f64::from_bits(raw),
                        _ => (raw % 1000) as f64 / 8.0,
                    };
                    Sample::new(t, v)
                })
                .collect();
            check(&samples);
        }
    }
}
