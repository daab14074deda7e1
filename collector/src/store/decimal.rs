//! Block chunks, read in any of their forms: Gorilla (see [`super::chunk`]), packed (see
//! [`super::packed`], what blocks are written in when every value is a short decimal) and
//! decimal, the form blocks written before packed chunks existed use for such values: the
//! timestamps as a Gorilla chunk, the integers `value x 10^k` as zigzag-varint differences.
//!
//! # Format
//! ```text
//! byte 0        0xff: a Gorilla chunk starts with its u16 big-endian count, at most
//!               `SAMPLES_PER_CHUNK` (120), so its first byte is never 0xff
//! byte 1        k, the decimal exponent (0..=6): value = integer / 10^k
//! bytes 2..6    length of the timestamp part, u32 little-endian
//! timestamps    a Gorilla chunk of the timestamps (every value 0: one bit each)
//! values        the first integer as a zigzag varint, then each difference from the previous
//! ```
//! Decoding never trusts the bytes: a malformed chunk ends the iteration early, never panics.

use sonde_common::model::Sample;

#[cfg(test)]
use super::chunk::Chunk;
use super::chunk::ChunkIter;
use super::packed::{self, MAX_EXPONENT, pow10, read_uvarint, unzigzag};
#[cfg(test)]
use super::packed::{integers, write_uvarint, zigzag};

const MARKER: u8 = 0xff;
#[cfg(test)]
const HEADER_LEN: usize = 6;

/// The decimal form of `samples` (oldest first, at most `u16::MAX`), if every value has one.
/// Blocks are written in packed form now; this stays to test that older blocks still read.
#[cfg(test)]
pub(crate) fn encode(samples: &[Sample]) -> Option<Vec<u8>> {
    let (k, ints) = integers(samples)?;
    let mut times = Chunk::new();
    for s in samples {
        if !times.append(s.timestamp_ms, 0.0) {
            return None;
        }
    }
    let times = times.bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + times.len() + ints.len() * 2);
    out.push(MARKER);
    out.push(k);
    out.extend_from_slice(&u32::try_from(times.len()).ok()?.to_le_bytes());
    out.extend_from_slice(times);
    let mut prev = 0i64;
    for m in ints {
        write_uvarint(&mut out, zigzag(m.wrapping_sub(prev)));
        prev = m;
    }
    Some(out)
}

/// Iterates over a block chunk in any form.
pub(crate) enum AnyChunkIter<'a> {
    Gorilla(ChunkIter<'a>),
    Packed(std::vec::IntoIter<Sample>),
    Decimal {
        times: ChunkIter<'a>,
        values: &'a [u8],
        pos: usize,
        prev: i64,
        scale: f64,
    },
}

/// Appends the samples of a block chunk in any form to `out` (a packed chunk in one pass, the
/// others through [`iter`]). A malformed chunk appends what could be read of it (nothing, if
/// packed).
pub(crate) fn decode_into(bytes: &[u8], out: &mut Vec<Sample>) {
    match bytes {
        [packed::MARKER, ..] => {
            let _ = packed::decode_into(bytes, out);
        }
        _ => out.extend(iter(bytes)),
    }
}

/// [`decode_into`], keeping only the samples in `[start, end]` (a chunk's samples are in time
/// order).
pub(crate) fn decode_range_into(bytes: &[u8], start: i64, end: i64, out: &mut Vec<Sample>) {
    let from = out.len();
    decode_into(bytes, out);
    let tail = &out[from..];
    let lo = tail.partition_point(|s| s.timestamp_ms < start);
    // At least `lo`: an empty range (`end < start`) keeps nothing.
    let hi = tail.partition_point(|s| s.timestamp_ms <= end).max(lo);
    out.truncate(from + hi);
    out.drain(from..from + lo);
}

/// Reads a block chunk, Gorilla, packed or decimal. A malformed chunk yields what could be
/// read of it (nothing, if packed).
pub(crate) fn iter(bytes: &[u8]) -> AnyChunkIter<'_> {
    match bytes {
        [packed::MARKER, ..] => {
            let mut out = Vec::new();
            let _ = packed::decode_into(bytes, &mut out);
            AnyChunkIter::Packed(out.into_iter())
        }
        [MARKER, k, l0, l1, l2, l3, rest @ ..] => {
            let len = u32::from_le_bytes([*l0, *l1, *l2, *l3]) as usize;
            let k = i32::from(*k);
            if len > rest.len() || k > MAX_EXPONENT {
                // Malformed: yields nothing.
                return AnyChunkIter::Gorilla(ChunkIter::new(&[]));
            }
            let (times, values) = rest.split_at(len);
            AnyChunkIter::Decimal {
                times: ChunkIter::new(times),
                values,
                pos: 0,
                prev: 0,
                scale: pow10(k),
            }
        }
        _ => AnyChunkIter::Gorilla(ChunkIter::new(bytes)),
    }
}

impl Iterator for AnyChunkIter<'_> {
    type Item = Sample;

    fn next(&mut self) -> Option<Sample> {
        match self {
            AnyChunkIter::Gorilla(it) => it.next(),
            AnyChunkIter::Packed(it) => it.next(),
            AnyChunkIter::Decimal {
                times,
                values,
                pos,
                prev,
                scale,
            } => {
                let t = times.next()?.timestamp_ms;
                let m = prev.wrapping_add(unzigzag(read_uvarint(values, pos)?));
                *prev = m;
                Some(Sample::new(t, m as f64 / *scale))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::packed::tests::{bits, samples};
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(s: &[Sample]) -> Vec<(i64, u64)> {
        bits(&iter(&encode(s).unwrap()).collect::<Vec<_>>())
    }

    #[test]
    fn integers_and_short_decimals_round_trip_and_shrink() {
        let counter: Vec<f64> = (0..120)
            .map(|i| (1_000_000 + i * 37 + i % 5) as f64)
            .collect();
        let seconds: Vec<f64> = (0..120).map(|i| 12_345.67 + i as f64 * 0.01).collect();
        let seconds: Vec<f64> = seconds
            .iter()
            .map(|v| (v * 100.0).round() / 100.0)
            .collect();
        for values in [&counter, &seconds] {
            let s = samples(values);
            assert_eq!(roundtrip(&s), bits(&s));
            let gorilla = Chunk::of(s.iter().copied());
            let decimal = encode(&s).unwrap();
            assert!(
                decimal.len() < gorilla.bytes().len(),
                "{} vs {}",
                decimal.len(),
                gorilla.bytes().len()
            );
        }
        assert_eq!(integers(&samples(&[1.5, 2.25])).unwrap().0, 2);
    }

    #[test]
    fn values_without_a_short_decimal_form_are_refused() {
        for v in [f64::NAN, f64::INFINITY, -0.0, 1.0 / 3.0, 1e300, 0.1234567] {
            assert!(encode(&samples(&[1.0, v])).is_none(), "{v}");
        }
        // Prometheus's stale marker is a NaN.
        assert!(encode(&samples(&[f64::from_bits(0x7ff0_0000_0000_0002)])).is_none());
    }

    #[test]
    fn every_form_decodes_into_a_vector_as_it_iterates() {
        let s = samples(&[1.0, 5.0, 2.5, 7.0]);
        let gorilla = Chunk::of(s.iter().copied());
        let forms = [
            gorilla.bytes().to_vec(),
            encode(&s).unwrap(),
            packed::encode(&s).unwrap(),
        ];
        for bytes in &forms {
            let mut out = vec![Sample::new(0, 0.0)];
            decode_into(bytes, &mut out);
            assert_eq!(bits(&out[1..]), bits(&s));
            assert_eq!(bits(&iter(bytes).collect::<Vec<_>>()), bits(&s));
        }
    }

    #[test]
    fn range_decoding_keeps_the_samples_in_the_range() {
        let s = samples(&[1.0, 5.0, 2.5, 7.0, 3.0]);
        let t = |i: usize| s[i].timestamp_ms;
        for bytes in [encode(&s).unwrap(), packed::encode(&s).unwrap()] {
            for (start, end, want) in [
                (i64::MIN, i64::MAX, 0..5),
                (t(1), t(3), 1..4),
                (t(1) + 1, t(3) - 1, 2..3),
                (t(3), t(1), 0..0),
                (t(4) + 1, i64::MAX, 0..0),
            ] {
                let mut out = vec![Sample::new(0, 0.0)];
                decode_range_into(&bytes, start, end, &mut out);
                assert_eq!(bits(&out[1..]), bits(&s[want]), "[{start}, {end}]");
            }
        }
    }

    #[test]
    fn gorilla_chunks_still_read() {
        let mut c = Chunk::new();
        c.append(5, 1.5);
        c.append(7, f64::NAN);
        let got: Vec<i64> = iter(c.bytes()).map(|s| s.timestamp_ms).collect();
        assert_eq!(got, [5, 7]);
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut marked = vec![MARKER];
            marked.extend_from_slice(&bytes);
            let _ = iter(&bytes).count();
            let _ = iter(&marked).count();
        }

        #[test]
        fn what_encodes_round_trips(
            ints in proptest::collection::vec(-1_000_000_000i64..1_000_000_000, 1..130),
            k in 0i32..4,
        ) {
            let s: Vec<Sample> = ints.iter().map(|&m| m as f64 / pow10(k)).collect::<Vec<_>>()
                .iter().enumerate()
                .map(|(i, &v)| Sample::new(i as i64 * 15_000 - 7, v))
                .collect();
            if let Some(bytes) = encode(&s) {
                let got: Vec<(i64, u64)> = iter(&bytes).map(|x| (x.timestamp_ms, x.value.to_bits())).collect();
                prop_assert_eq!(got, bits(&s));
            }
        }
    }
}
