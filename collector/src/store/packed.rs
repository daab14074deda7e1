//! Packed chunks: how a block stores a chunk whose values are all short decimals (counters of
//! bytes, packets or requests, gauges of counts or bytes, seconds with a few decimals), which
//! is most of what hosts report.
//!
//! Timestamps and the integers `value x 10^k` are each written as a sequence of integers in
//! frame-of-reference form: the sequence, its first differences or its second differences
//! (whichever is smallest: a gauge's levels, a counter's increments, a scrape's regular
//! timestamps), minus their minimum, bit-packed at the width of the largest. A counter that
//! grows by up to 2,000 a step costs 11 bits a sample; a timestamp on a regular interval costs
//! none; a gauge moving within a range of 10,000 costs 14 bits. Byte-aligned encodings
//! (varints) would round each of those up to whole bytes, and Gorilla's XOR of two floats keeps
//! far more bits than the integers differ by.
//!
//! # Format
//! ```text
//! byte 0      0xfe (a Gorilla chunk starts with its u16 big-endian sample count, which a
//!             block keeps below 0xfe00; a decimal chunk starts with 0xff)
//! byte 1      k, the decimal exponent (0..=6): value = integer / 10^k
//! uvarint     n, the sample count (1..=65535)
//! sequence    the timestamps
//! sequence    the integers
//!
//! sequence    u8 order o (0, 1 or 2; o <= n)
//!             o zigzag varints: the first value, then (o = 2) the first difference
//!             zigzag varint base: the smallest o-th difference
//!             u8 width w (0..=64)
//!             (n - o) x w bits, least significant first: each o-th difference minus base
//! ```
//! Arithmetic wraps, so every `i64` sequence round-trips. Decoding never trusts the bytes: a
//! malformed chunk yields an error, never a panic or a partial chunk.

use sonde_common::model::Sample;

pub(crate) const MARKER: u8 = 0xfe;
pub(crate) const MAX_EXPONENT: i32 = 6;
/// Integers beyond this lose precision as `f64`; such values stay in Gorilla chunks.
const MAX_INT: f64 = 9_007_199_254_740_992.0;

pub(crate) fn pow10(k: i32) -> f64 {
    10f64.powi(k)
}

/// The integers `v x 10^k` for the smallest `k` at which every value round-trips bit for bit.
pub(crate) fn integers(samples: &[Sample]) -> Option<(u8, Vec<i64>)> {
    'exponent: for k in 0..=MAX_EXPONENT {
        let scale = pow10(k);
        let mut out = Vec::with_capacity(samples.len());
        for s in samples {
            match integer_at(s.value, scale) {
                Some(m) => out.push(m),
                None if short_at_some_exponent(s.value) => continue 'exponent,
                None => return None,
            }
        }
        return Some((k as u8, out));
    }
    None
}

/// `v x scale` (`scale` = 10^k) as an integer, when dividing it by `scale` gives back `v` bit
/// for bit: checked through the integer, exactly as decoding computes it (so -0.0, NaN, the
/// infinities and integers beyond 2^53 never qualify).
#[inline]
pub(crate) fn integer_at(v: f64, scale: f64) -> Option<i64> {
    let m = (v * scale).round();
    if !m.is_finite() || m.abs() >= MAX_INT {
        return None;
    }
    let m = m as i64;
    ((m as f64 / scale).to_bits() == v.to_bits()).then_some(m)
}

/// Whether `v` could be a short decimal at all (finite, and small enough at the largest
/// exponent), so trying a larger exponent may help.
fn short_at_some_exponent(v: f64) -> bool {
    let m = (v * pow10(MAX_EXPONENT)).round();
    m.is_finite() && m.abs() < MAX_INT
}

pub(crate) fn write_uvarint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

pub(crate) fn read_uvarint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut x = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        x |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(x);
        }
    }
    None
}

pub(crate) fn zigzag(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

pub(crate) fn unzigzag(x: u64) -> i64 {
    ((x >> 1) as i64) ^ -((x & 1) as i64)
}

fn uvarint_len(x: u64) -> usize {
    (64 - x.leading_zeros() as usize).max(1).div_ceil(7)
}

/// The packed form of `samples` (oldest first, 1 to 65,535 of them), if every value is a
/// short decimal.
pub(crate) fn encode(samples: &[Sample]) -> Option<Vec<u8>> {
    if samples.is_empty() || samples.len() > usize::from(u16::MAX) {
        return None;
    }
    let (k, ints) = integers(samples)?;
    let times: Vec<i64> = samples.iter().map(|s| s.timestamp_ms).collect();
    Some(encode_integers(k, &times, &ints))
}

/// The packed form of samples already split into timestamps and the integers `value x 10^k`
/// (as many of each, 1 to 65,535, `k` at most 6).
pub(crate) fn encode_integers(k: u8, times: &[i64], ints: &[i64]) -> Vec<u8> {
    debug_assert!(times.len() == ints.len() && i32::from(k) <= MAX_EXPONENT);
    let mut out = Vec::with_capacity(16 + times.len() * 2);
    out.push(MARKER);
    out.push(k);
    write_uvarint(&mut out, times.len() as u64);
    write_sequence(&mut out, times);
    write_sequence(&mut out, ints);
    out
}

/// The `order`-th difference of `x` at index `i` (`i >= order`), wrapping.
#[inline(always)]
fn residual(x: &[i64], order: usize, i: usize) -> i64 {
    match order {
        0 => x[i],
        1 => x[i].wrapping_sub(x[i - 1]),
        _ => x[i]
            .wrapping_sub(x[i - 1])
            .wrapping_sub(x[i - 1].wrapping_sub(x[i - 2])),
    }
}

fn write_sequence(out: &mut Vec<u8>, x: &[i64]) {
    let orders = 2usize.min(x.len());
    // The smallest and largest residual at each order, in one pass.
    let mut lo = [i64::MAX; 3];
    let mut hi = [i64::MIN; 3];
    for i in 0..x.len() {
        for order in 0..=orders.min(i) {
            let r = residual(x, order, i);
            lo[order] = lo[order].min(r);
            hi[order] = hi[order].max(r);
        }
    }
    let heads = |order: usize| -> [i64; 2] {
        match order {
            0 => [0, 0],
            1 => [x[0], 0],
            _ => [x[0], x[1].wrapping_sub(x[0])],
        }
    };
    let cost = |order: usize| -> (usize, u32) {
        let count = x.len() - order;
        let (base, span) = if count == 0 {
            (0, 0)
        } else {
            (lo[order], hi[order].wrapping_sub(lo[order]) as u64)
        };
        let width = 64 - span.leading_zeros();
        let bytes = 2
            + heads(order)[..order]
                .iter()
                .map(|&h| uvarint_len(zigzag(h)))
                .sum::<usize>()
            + uvarint_len(zigzag(base))
            + (count * width as usize).div_ceil(8);
        (bytes, width)
    };
    let Some((order, (_, width))) = (0..=orders).map(|o| (o, cost(o))).min_by_key(|c| c.1.0) else {
        return;
    };
    let base = if x.len() > order { lo[order] } else { 0 };
    out.push(order as u8);
    for &h in &heads(order)[..order] {
        write_uvarint(out, zigzag(h));
    }
    write_uvarint(out, zigzag(base));
    out.push(width as u8);
    let mut acc: u128 = 0;
    let mut bits = 0u32;
    for i in order..x.len() {
        acc |= u128::from(residual(x, order, i).wrapping_sub(base) as u64) << bits;
        bits += width;
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    if bits > 0 {
        out.push(acc as u8);
    }
}

/// Why bytes are not a packed chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Malformed {
    #[error("packed chunk: bad header")]
    Header,
    #[error("packed chunk: sequence ends early or is malformed")]
    Sequence,
}

/// The header of one sequence: what [`Sequence::decode`] needs.
struct Sequence<'a> {
    /// The bit-packed residuals, checked to hold `n - order` of them.
    packed: &'a [u8],
    width: u32,
    base: i64,
    order: usize,
    first: i64,
    first_delta: i64,
    n: usize,
}

impl<'a> Sequence<'a> {
    /// Parses the header of a sequence of `n` integers at `bytes[*pos..]` and moves `*pos`
    /// past the sequence.
    fn parse(bytes: &'a [u8], pos: &mut usize, n: usize) -> Result<Self, Malformed> {
        let byte = |pos: &mut usize| {
            let b = *bytes.get(*pos).ok_or(Malformed::Sequence)?;
            *pos += 1;
            Ok(b)
        };
        let order = usize::from(byte(pos)?);
        if order > 2 || order > n {
            return Err(Malformed::Sequence);
        }
        let varint = |pos: &mut usize| {
            read_uvarint(bytes, pos)
                .map(unzigzag)
                .ok_or(Malformed::Sequence)
        };
        let first = if order >= 1 { varint(pos)? } else { 0 };
        let first_delta = if order >= 2 { varint(pos)? } else { 0 };
        let base = varint(pos)?;
        let width = u32::from(byte(pos)?);
        if width > 64 {
            return Err(Malformed::Sequence);
        }
        let packed_len = ((n - order) * width as usize).div_ceil(8);
        let packed = bytes
            .get(*pos..*pos + packed_len)
            .ok_or(Malformed::Sequence)?;
        *pos += packed_len;
        Ok(Sequence {
            packed,
            width,
            base,
            order,
            first,
            first_delta,
            n,
        })
    }

    /// Decodes the sequence into `out` (resized to `n`), using `padded` as scratch: in one
    /// pass that unpacks each residual and sums it up, or in closed form when every residual is
    /// the same (width 0: regular timestamps, constant values or increments).
    fn decode(&self, padded: &mut Vec<u8>, out: &mut Vec<i64>) {
        out.clear();
        out.reserve(self.n);
        let x1 = self.first.wrapping_add(self.first_delta);
        out.extend_from_slice(&[self.first, x1][..self.order]);
        let count = self.n - self.order;
        let (base, fd) = (self.base, self.first_delta);
        if self.width == 0 {
            match self.order {
                0 => out.resize(self.n, base),
                1 => out.extend(
                    (1..=count as i64).map(|i| self.first.wrapping_add(i.wrapping_mul(base))),
                ),
                // x(1 + j) = x1 + j * first delta + base * j (j + 1) / 2
                _ => out.extend((1..=count as i64).map(|j| {
                    x1.wrapping_add(j.wrapping_mul(fd))
                        .wrapping_add(base.wrapping_mul(j * (j + 1) / 2))
                })),
            }
            return;
        }
        padded.clear();
        padded.extend_from_slice(self.packed);
        padded.extend_from_slice(&[0; 16]);
        let width = self.width;
        match self.order {
            0 => out.extend(Residuals::new(padded, width, count).map(|r| base.wrapping_add(r))),
            1 => {
                let mut x = self.first;
                out.extend(Residuals::new(padded, width, count).map(|r| {
                    x = x.wrapping_add(base.wrapping_add(r));
                    x
                }));
            }
            _ => {
                let (mut x, mut d) = (x1, fd);
                out.extend(Residuals::new(padded, width, count).map(|r| {
                    d = d.wrapping_add(base.wrapping_add(r));
                    x = x.wrapping_add(d);
                    x
                }));
            }
        }
    }
}

/// The `count` values of `width` bits (1 to 64, least significant first) bit-packed in
/// `padded`, which has sixteen zero bytes after them so that every value is one unaligned
/// load.
struct Residuals<'a> {
    padded: &'a [u8],
    width: u32,
    mask: u64,
    bit: usize,
    left: usize,
}

impl<'a> Residuals<'a> {
    fn new(padded: &'a [u8], width: u32, count: usize) -> Self {
        Self {
            padded,
            width,
            mask: u64::MAX >> (64 - width),
            bit: 0,
            left: count,
        }
    }
}

impl Iterator for Residuals<'_> {
    type Item = i64;

    #[inline(always)]
    fn next(&mut self) -> Option<i64> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let p = self.bit >> 3;
        let raw = if self.width <= 56 {
            let mut word = [0u8; 8];
            if let Some(w) = self.padded.get(p..p + 8) {
                word.copy_from_slice(w);
            }
            u64::from_le_bytes(word) >> (self.bit & 7)
        } else {
            let mut word = [0u8; 16];
            if let Some(w) = self.padded.get(p..p + 16) {
                word.copy_from_slice(w);
            }
            (u128::from_le_bytes(word) >> (self.bit & 7)) as u64
        };
        self.bit += self.width as usize;
        Some((raw & self.mask) as i64)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Residuals<'_> {}

/// Scratch space for decoding, reused by each thread.
#[derive(Default)]
struct Scratch {
    padded: Vec<u8>,
    times: Vec<i64>,
    values: Vec<i64>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Appends the samples of packed chunk `bytes` to `out`; on error `out` is left as it was.
pub(crate) fn decode_into(bytes: &[u8], out: &mut Vec<Sample>) -> Result<(), Malformed> {
    let [MARKER, k, ..] = *bytes else {
        return Err(Malformed::Header);
    };
    let k = i32::from(k);
    if k > MAX_EXPONENT {
        return Err(Malformed::Header);
    }
    let mut pos = 2;
    let n = read_uvarint(bytes, &mut pos).ok_or(Malformed::Header)?;
    if n == 0 || n > u64::from(u16::MAX) {
        return Err(Malformed::Header);
    }
    let n = n as usize;
    // Both headers are checked before anything is appended.
    let times = Sequence::parse(bytes, &mut pos, n)?;
    let values = Sequence::parse(bytes, &mut pos, n)?;
    SCRATCH.with_borrow_mut(|s| {
        times.decode(&mut s.padded, &mut s.times);
        values.decode(&mut s.padded, &mut s.values);
        let pairs = s.times.iter().zip(&s.values);
        if k == 0 {
            out.extend(pairs.map(|(&t, &m)| Sample::new(t, m as f64)));
        } else {
            let scale = pow10(k);
            out.extend(pairs.map(|(&t, &m)| Sample::new(t, m as f64 / scale)));
        }
    });
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `values` at a 10 s interval.
    pub(crate) fn samples(values: &[f64]) -> Vec<Sample> {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| Sample::new(1_700_000_000_000 + i as i64 * 10_000, v))
            .collect()
    }

    /// Timestamps and value bits, for exact comparisons (NaN included).
    pub(crate) fn bits(s: &[Sample]) -> Vec<(i64, u64)> {
        s.iter()
            .map(|x| (x.timestamp_ms, x.value.to_bits()))
            .collect()
    }

    fn roundtrip(s: &[Sample]) -> Vec<(i64, u64)> {
        let mut out = Vec::new();
        decode_into(&encode(s).unwrap(), &mut out).unwrap();
        bits(&out)
    }

    #[test]
    fn counters_gauges_and_regular_timestamps_pack_to_their_entropy() {
        // A counter growing by 0..=2000 a step: 11 bits a sample, timestamps free.
        let counter: Vec<f64> = (0..480u64)
            .scan(5_000_000u64, |c, i| {
                *c += (i * 7919) % 2001;
                Some(*c as f64)
            })
            .collect();
        let s = samples(&counter);
        let packed = encode(&s).unwrap();
        assert_eq!(roundtrip(&s), bits(&s));
        assert!(packed.len() <= 480 * 11 / 8 + 24, "{} bytes", packed.len());
        // A gauge around a level: the width of its range.
        let gauge: Vec<f64> = (0..480u64)
            .map(|i| (300_000_000 + (i * 104_729) % 10_000) as f64)
            .collect();
        let s = samples(&gauge);
        let packed = encode(&s).unwrap();
        assert_eq!(roundtrip(&s), bits(&s));
        assert!(packed.len() <= 480 * 14 / 8 + 24, "{} bytes", packed.len());
        // Constant values and seconds with two decimals.
        for values in [
            vec![42.0; 480],
            (0..300).map(|i| (1234567 + i * 3) as f64 / 100.0).collect(),
        ] {
            let s = samples(&values);
            assert_eq!(roundtrip(&s), bits(&s));
        }
        assert!(encode(&samples(&[42.0; 480])).unwrap().len() < 24);
    }

    #[test]
    fn irregular_timestamps_and_single_samples_round_trip() {
        let s: Vec<Sample> = (0..200i64)
            .map(|i| Sample::new(i * 15_000 + (i * 37) % 11 - 5, (i % 7) as f64))
            .collect();
        assert_eq!(roundtrip(&s), bits(&s));
        for one in [
            vec![Sample::new(i64::MIN, -3.0)],
            vec![Sample::new(i64::MAX, 1e15)],
            vec![Sample::new(i64::MIN, 1.0), Sample::new(i64::MAX, -1.0)],
        ] {
            assert_eq!(roundtrip(&one), bits(&one));
        }
    }

    #[test]
    fn values_without_a_short_decimal_form_are_refused() {
        for v in [f64::NAN, f64::INFINITY, -0.0, 1.0 / 3.0, 1e300, 0.1234567] {
            assert!(encode(&samples(&[1.0, v])).is_none(), "{v}");
        }
        assert!(encode(&[]).is_none());
    }

    #[test]
    fn malformed_chunks_leave_the_output_untouched() {
        let s = samples(&[1.0, 5.0, 2.0, 7.0]);
        let good = encode(&s).unwrap();
        let mut out = vec![Sample::new(1, 1.0)];
        for cut in 0..good.len() {
            assert!(decode_into(&good[..cut], &mut out).is_err(), "cut at {cut}");
            assert_eq!(out.len(), 1);
        }
        // An impossible order or width is refused wherever it lands.
        for i in 2..good.len() {
            for byte in [3, 65] {
                let mut bad = good.clone();
                bad[i] = byte;
                if decode_into(&bad, &mut out).is_ok() {
                    out.truncate(1);
                }
                assert_eq!(out.len(), 1);
            }
        }
        decode_into(&good, &mut out).unwrap();
        assert_eq!(bits(&out[1..]), bits(&s));
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut marked = vec![MARKER, 0];
            marked.extend_from_slice(&bytes);
            let mut out = Vec::new();
            let _ = decode_into(&bytes, &mut out);
            if decode_into(&marked, &mut out).is_err() {
                prop_assert!(out.is_empty());
            }
        }

        #[test]
        fn what_encodes_round_trips(
            ints in proptest::collection::vec(any::<i64>().prop_map(|x| x >> 12), 1..600),
            times in proptest::collection::vec(any::<i64>(), 1..600),
            k in 0i32..4,
        ) {
            let s: Vec<Sample> = ints.iter().zip(times.iter().cycle())
                .map(|(&m, &t)| Sample::new(t, m as f64 / pow10(k)))
                .collect();
            if let Some(bytes) = encode(&s) {
                let mut out = Vec::new();
                decode_into(&bytes, &mut out).unwrap();
                prop_assert_eq!(bits(&out), bits(&s));
            }
        }

        #[test]
        fn small_steps_round_trip(
            start in any::<i64>(),
            steps in proptest::collection::vec(-3i64..1000, 1..500),
        ) {
            let s: Vec<Sample> = steps.iter().scan(start, |t, &d| {
                *t = t.wrapping_add(d);
                Some(Sample::new(*t, (d * 3) as f64))
            }).collect();
            let bytes = encode(&s).unwrap();
            let mut out = Vec::new();
            decode_into(&bytes, &mut out).unwrap();
            prop_assert_eq!(bits(&out), bits(&s));
        }
    }
}
