//! Gorilla-compressed chunks (Facebook's "Gorilla" paper, as Prometheus's XOR chunk encodes
//! it): the samples of one series, a few bits each.
//!
//! # Format
//! ```text
//! bytes 0..2   sample count, u16 big-endian
//! then a bit stream, most significant bit first:
//!   sample 0   timestamp as a zigzag varint, value as its 64 raw bits
//!   sample 1   timestamp delta as a uvarint of its two's complement bits, value XOR-encoded
//!   sample n   delta-of-delta of the timestamp:
//!                '0'                                  dod == 0
//!                '10'   + 14 bits                     -8191 ..= 8192
//!                '110'  + 17 bits                     -65535 ..= 65536
//!                '1110' + 20 bits                     -524287 ..= 524288
//!                '1111' + 64 bits                     anything else
//!              value XOR-encoded against the previous value:
//!                '0'                                  same bits
//!                '10' + meaningful bits               XOR fits the previous leading/trailing window
//!                '11' + 5 bits leading zeros + 6 bits length (64 as 0) + meaningful bits
//! ```
//! Values are compared and stored as `f64::to_bits`, so every NaN payload (Prometheus's stale
//! marker included), `-0.0` and the infinities survive bit for bit. Timestamp arithmetic wraps,
//! so any `i64` sequence round-trips, though the head only ever appends increasing ones.
//!
//! Decoding never trusts the bytes: a truncated or corrupt chunk ends the iteration early (see
//! [`ChunkIter::is_corrupt`]) and never panics.

use std::sync::Arc;

use sonde_common::model::Sample;

/// The head cuts a new chunk once the open one holds this many samples (Prometheus's number:
/// about 1.3 bytes per sample are reached by then, and a query decodes little it does not need).
pub(crate) const SAMPLES_PER_CHUNK: u16 = 120;

const HEADER_LEN: usize = 2;
/// "No previous window" for the XOR encoder's leading-zero count.
const NO_WINDOW: u8 = 0xff;

/// An open chunk: the encoded bytes plus the encoder state needed to append.
#[derive(Clone, Debug)]
pub(crate) struct Chunk {
    w: BitWriter,
    count: u16,
    min_t: i64,
    t: i64,
    delta: i64,
    v: u64,
    leading: u8,
    trailing: u8,
}

impl Default for Chunk {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunk {
    /// An empty chunk. Allocates nothing until the first append.
    pub(crate) fn new() -> Self {
        Self {
            w: BitWriter::default(),
            count: 0,
            min_t: 0,
            t: 0,
            delta: 0,
            v: 0,
            leading: NO_WINDOW,
            trailing: 0,
        }
    }

    /// A chunk of `samples` (oldest first; past `u16::MAX` of them the rest are left out).
    pub(crate) fn of(samples: impl IntoIterator<Item = Sample>) -> Self {
        let mut c = Self::new();
        for s in samples {
            if !c.append(s.timestamp_ms, s.value) {
                break;
            }
        }
        c
    }

    pub(crate) fn len(&self) -> u16 {
        self.count
    }

    /// Timestamp of the first sample (meaningless while empty).
    pub(crate) fn min_t(&self) -> i64 {
        self.min_t
    }

    /// Timestamp of the last sample (meaningless while empty).
    pub(crate) fn max_t(&self) -> i64 {
        self.t
    }

    /// The encoded chunk, header included.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.w.bytes
    }

    pub(crate) fn iter(&self) -> ChunkIter<'_> {
        ChunkIter::new(&self.w.bytes)
    }

    /// Appends a sample; false (and nothing written) when the chunk already holds `u16::MAX`
    /// samples, the most its header can count.
    pub(crate) fn append(&mut self, t: i64, value: f64) -> bool {
        if self.count == u16::MAX {
            return false;
        }
        let v = value.to_bits();
        match self.count {
            0 => {
                self.w.bytes.reserve(64);
                self.w.bytes.extend_from_slice(&[0; HEADER_LEN]);
                self.w.write_varint(t);
                self.w.write_bits(v, 64);
                self.min_t = t;
            }
            1 => {
                let delta = t.wrapping_sub(self.t);
                self.w.write_uvarint(delta as u64);
                self.write_value(v);
                self.delta = delta;
            }
            _ => {
                let delta = t.wrapping_sub(self.t);
                let dod = delta.wrapping_sub(self.delta);
                if dod == 0 {
                    self.w.write_bits(0, 1);
                } else if fits(dod, 14) {
                    self.w.write_bits(0b10, 2);
                    self.w.write_bits(dod as u64, 14);
                } else if fits(dod, 17) {
                    self.w.write_bits(0b110, 3);
                    self.w.write_bits(dod as u64, 17);
                } else if fits(dod, 20) {
                    self.w.write_bits(0b1110, 4);
                    self.w.write_bits(dod as u64, 20);
                } else {
                    self.w.write_bits(0b1111, 4);
                    self.w.write_bits(dod as u64, 64);
                }
                self.write_value(v);
                self.delta = delta;
            }
        }
        self.t = t;
        self.v = v;
        self.count += 1;
        let [hi, lo] = self.count.to_be_bytes();
        if let [h, l, ..] = self.w.bytes.as_mut_slice() {
            *h = hi;
            *l = lo;
        }
        true
    }

    fn write_value(&mut self, v: u64) {
        let xor = v ^ self.v;
        if xor == 0 {
            self.w.write_bits(0, 1);
            return;
        }
        let leading = (xor.leading_zeros() as u8).min(31);
        let trailing = xor.trailing_zeros() as u8;
        if self.leading != NO_WINDOW && leading >= self.leading && trailing >= self.trailing {
            self.w.write_bits(0b10, 2);
            self.w
                .write_bits(xor >> self.trailing, 64 - self.leading - self.trailing);
            return;
        }
        self.leading = leading;
        self.trailing = trailing;
        let sigbits = 64 - leading - trailing;
        self.w.write_bits(0b11, 2);
        self.w.write_bits(u64::from(leading), 5);
        // 64 meaningful bits are written as 0: six bits hold 0..=63.
        self.w.write_bits(u64::from(sigbits & 63), 6);
        self.w.write_bits(xor >> trailing, sigbits);
    }

    /// The chunk's samples (`samples`, oldest first) in packed form, if every value is a short
    /// decimal and that is smaller than the Gorilla bytes: about half the memory or disk, and
    /// decoded several times faster than the XOR stream. How sealed head chunks, block chunks
    /// and checkpoint chunks choose their form.
    pub(crate) fn packed_if_smaller(&self, samples: &[Sample]) -> Option<Vec<u8>> {
        super::packed::encode(samples).filter(|p| p.len() < self.w.bytes.len())
    }

    /// Freezes the chunk into its immutable, shareable form (packed when smaller).
    pub(crate) fn seal(self) -> SealedChunk {
        let samples: Vec<Sample> = self.iter().collect();
        let bytes = match self.packed_if_smaller(&samples) {
            Some(p) => Arc::from(p),
            None => Arc::from(self.w.bytes),
        };
        SealedChunk {
            min_t: self.min_t,
            max_t: self.t,
            count: self.count,
            bytes,
        }
    }
}

/// A full chunk: immutable, so queries share its bytes instead of copying them. Packed or
/// Gorilla (see [`Chunk::seal`]).
#[derive(Clone, Debug)]
pub(crate) struct SealedChunk {
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
    count: u16,
    pub(crate) bytes: Arc<[u8]>,
}

impl SealedChunk {
    /// A sealed chunk of `count` samples from `min_t` to `max_t`, encoded in `bytes`.
    pub(crate) fn new(min_t: i64, max_t: i64, count: u16, bytes: Vec<u8>) -> Self {
        Self {
            min_t,
            max_t,
            count,
            bytes: Arc::from(bytes),
        }
    }

    pub(crate) fn iter(&self) -> super::decimal::AnyChunkIter<'_> {
        super::decimal::iter(&self.bytes)
    }

    /// Samples in the chunk.
    pub(crate) fn len(&self) -> u16 {
        self.count
    }
}

/// Whether `x` fits the `nbits` bucket of the delta-of-delta encoding.
fn fits(x: i64, nbits: u32) -> bool {
    let half = 1i64 << (nbits - 1);
    -(half - 1) <= x && x <= half
}

/// Iterates over the samples of an encoded chunk.
#[derive(Clone, Debug)]
pub(crate) struct ChunkIter<'a> {
    r: BitReader<'a>,
    total: u16,
    read: u16,
    t: i64,
    delta: i64,
    v: u64,
    leading: u8,
    trailing: u8,
    corrupt: bool,
}

impl<'a> ChunkIter<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        let (total, corrupt, stream) = match bytes {
            [] => (0, false, &[][..]),
            [hi, lo, rest @ ..] => (u16::from_be_bytes([*hi, *lo]), false, rest),
            [_] => (0, true, &[][..]),
        };
        Self {
            r: BitReader::new(stream),
            total,
            read: 0,
            t: 0,
            delta: 0,
            v: 0,
            leading: NO_WINDOW,
            trailing: 0,
            corrupt,
        }
    }

    /// True once decoding stopped early on bytes that are not a valid chunk.
    #[cfg(test)]
    pub(crate) fn is_corrupt(&self) -> bool {
        self.corrupt
    }

    #[inline(always)]
    fn decode_next(&mut self) -> Option<Sample> {
        match self.read {
            0 => {
                self.t = self.r.read_varint()?;
                self.v = self.r.read_bits(64)?;
            }
            1 => {
                self.delta = self.r.read_uvarint()? as i64;
                self.t = self.t.wrapping_add(self.delta);
                self.read_value()?;
            }
            _ => {
                let mut prefix = 0;
                while prefix < 4 && self.r.read_bits(1)? == 1 {
                    prefix += 1;
                }
                let dod = match prefix {
                    0 => 0,
                    1 => self.r.read_signed(14)?,
                    2 => self.r.read_signed(17)?,
                    3 => self.r.read_signed(20)?,
                    _ => self.r.read_bits(64)? as i64,
                };
                self.delta = self.delta.wrapping_add(dod);
                self.t = self.t.wrapping_add(self.delta);
                self.read_value()?;
            }
        }
        Some(Sample::new(self.t, f64::from_bits(self.v)))
    }

    #[inline(always)]
    fn read_value(&mut self) -> Option<()> {
        if self.r.read_bits(1)? == 0 {
            return Some(());
        }
        if self.r.read_bits(1)? == 1 {
            let leading = self.r.read_bits(5)? as u8;
            let sigbits = match self.r.read_bits(6)? as u8 {
                0 => 64,
                n => n,
            };
            self.trailing = 64u8.checked_sub(leading)?.checked_sub(sigbits)?;
            self.leading = leading;
        } else if self.leading == NO_WINDOW {
            return None;
        }
        let sigbits = 64 - self.leading - self.trailing;
        let bits = self.r.read_bits(sigbits)?;
        self.v ^= bits << self.trailing;
        Some(())
    }
}

impl Iterator for ChunkIter<'_> {
    type Item = Sample;

    fn next(&mut self) -> Option<Sample> {
        if self.corrupt || self.read >= self.total {
            return None;
        }
        match self.decode_next() {
            Some(s) => {
                self.read += 1;
                Some(s)
            }
            None => {
                self.corrupt = true;
                None
            }
        }
    }
}

/// Writes bits most significant first.
#[derive(Clone, Debug, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Unused low bits of the last byte.
    free: u8,
}

impl BitWriter {
    /// Writes the low `n` (at most 64) bits of `value`.
    fn write_bits(&mut self, value: u64, mut n: u8) {
        while n > 0 {
            if self.free == 0 {
                self.bytes.push(0);
                self.free = 8;
            }
            let take = n.min(self.free);
            let part = ((value >> (n - take)) & ((1u64 << take) - 1)) as u8;
            if let Some(last) = self.bytes.last_mut() {
                *last |= part << (self.free - take);
            }
            self.free -= take;
            n -= take;
        }
    }

    fn write_uvarint(&mut self, mut x: u64) {
        while x >= 0x80 {
            self.write_bits((x as u8 | 0x80).into(), 8);
            x >>= 7;
        }
        self.write_bits(x, 8);
    }

    fn write_varint(&mut self, x: i64) {
        self.write_uvarint(((x << 1) ^ (x >> 63)) as u64);
    }
}

/// Reads bits most significant first, from a 64-bit buffer refilled a word at a time; every
/// read is bounds-checked and a failed read consumes nothing.
#[derive(Clone, Debug)]
struct BitReader<'a> {
    bytes: &'a [u8],
    /// The first byte of `bytes` not yet in `buf`.
    next: usize,
    /// The unread bits, left-aligned; the bits past `avail` are zero.
    buf: u64,
    /// How many bits of `buf` are unread (0 to 64).
    avail: u32,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            next: 0,
            buf: 0,
            avail: 0,
        }
    }

    /// Bits read so far.
    #[cfg(test)]
    fn pos(&self) -> usize {
        self.next * 8 - self.avail as usize
    }

    /// Tops the buffer up to at least 57 unread bits, or to the end of the bytes.
    fn refill(&mut self) {
        let take = (64 - self.avail) / 8;
        if take == 0 {
            return;
        }
        if let Some(eight) = self.bytes.get(self.next..self.next.saturating_add(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(eight);
            let word = u64::from_be_bytes(word);
            let filled = self.avail + take * 8;
            let keep = if filled == 64 {
                u64::MAX
            } else {
                !(u64::MAX >> filled)
            };
            self.buf |= (word >> self.avail) & keep;
            self.avail = filled;
            self.next += take as usize;
        } else {
            while self.avail <= 56 {
                let Some(&byte) = self.bytes.get(self.next) else {
                    break;
                };
                self.buf |= u64::from(byte) << (56 - self.avail);
                self.avail += 8;
                self.next += 1;
            }
        }
    }

    /// Takes `n` (1 to `avail`) bits from the buffer.
    #[inline(always)]
    fn take(&mut self, n: u32) -> u64 {
        let v = self.buf >> (64 - n);
        self.buf = self.buf.checked_shl(n).unwrap_or(0);
        self.avail -= n;
        v
    }

    /// Reads `n` (at most 64) bits. Inlined: most calls read a constant 1 to 6 bits, and the
    /// buffer check then folds to one compare.
    #[inline(always)]
    fn read_bits(&mut self, n: u8) -> Option<u64> {
        let n = u32::from(n);
        if n == 0 {
            return Some(0);
        }
        if n > 64 {
            return None;
        }
        if self.avail < n {
            self.refill();
        }
        if n <= self.avail {
            return Some(self.take(n));
        }
        self.read_across(n)
    }

    /// The rest of [`BitReader::read_bits`] when a refilled buffer holds fewer than `n` bits:
    /// past the end, or a read of 58 to 64 bits that needs the buffer twice.
    #[cold]
    #[inline(never)]
    fn read_across(&mut self, n: u32) -> Option<u64> {
        let remaining = (self.avail as usize)
            .saturating_add(self.bytes.len().saturating_sub(self.next).saturating_mul(8));
        if remaining < n as usize {
            return None;
        }
        let high_bits = self.avail;
        let high = if high_bits == 0 {
            0
        } else {
            self.take(high_bits)
        };
        self.refill();
        let low_bits = n - high_bits;
        if low_bits > self.avail {
            return None;
        }
        let low = self.take(low_bits);
        Some((high << low_bits) | low)
    }

    /// Reads an `n`-bit two's complement bucket of the delta-of-delta encoding.
    fn read_signed(&mut self, n: u8) -> Option<i64> {
        let bits = self.read_bits(n)? as i64;
        Some(if bits > 1 << (n - 1) {
            bits - (1 << n)
        } else {
            bits
        })
    }

    fn read_uvarint(&mut self) -> Option<u64> {
        let mut x = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.read_bits(8)?;
            if shift == 63 && b > 1 {
                return None;
            }
            x |= (b & 0x7f) << shift;
            if b < 0x80 {
                return Some(x);
            }
        }
        None
    }

    fn read_varint(&mut self) -> Option<i64> {
        let u = self.read_uvarint()?;
        Some((u >> 1) as i64 ^ -((u & 1) as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Prometheus's stale marker.
    const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

    fn encode(samples: &[(i64, u64)]) -> Chunk {
        let mut c = Chunk::new();
        for &(t, v) in samples {
            assert!(c.append(t, f64::from_bits(v)));
        }
        c
    }

    fn decode(bytes: &[u8]) -> Vec<(i64, u64)> {
        let mut it = ChunkIter::new(bytes);
        let out: Vec<_> = it
            .by_ref()
            .map(|s| (s.timestamp_ms, s.value.to_bits()))
            .collect();
        assert!(!it.is_corrupt());
        out
    }

    #[test]
    fn round_trips_special_values_and_irregular_timestamps() {
        let values = [
            1.0,
            -1.0,
            0.0,
            -0.0,
            f64::NAN,
            f64::from_bits(STALE_NAN),
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            1e-300,
            123_456.789,
            123_456.789,
            -5.5,
        ];
        let times = [
            -1_000_000,
            -1,
            0,
            1,
            15_001,
            15_002,
            30_000,
            1_700_000_000_000,
            1_700_000_000_001,
            1_700_000_065_536,
            1_700_000_600_000,
            1_800_000_000_000,
            i64::MAX - 10,
            i64::MAX - 9,
            i64::MAX,
        ];
        let samples: Vec<(i64, u64)> = times
            .iter()
            .zip(values.iter())
            .map(|(&t, &v)| (t, f64::to_bits(v)))
            .collect();
        let c = encode(&samples);
        assert_eq!(decode(c.bytes()), samples);
        assert_eq!(c.min_t(), -1_000_000);
        assert_eq!(c.max_t(), i64::MAX);
        let sealed = c.seal();
        assert_eq!(sealed.iter().count(), samples.len());
        assert_eq!(usize::from(sealed.len()), samples.len());
        assert_eq!(decode(&sealed.bytes), samples);
    }

    #[test]
    fn every_delta_of_delta_bucket_round_trips() {
        let mut t = 1_700_000_000_000i64;
        let mut delta = 15_000i64;
        let mut samples = vec![(t, 0u64), (t + delta, 1)];
        t += delta;
        for (i, dod) in [
            0i64,
            1,
            -1,
            8192,
            -8191,
            8193,
            -8192,
            65536,
            -65535,
            65537,
            524288,
            -524287,
            524289,
            -524288,
            1 << 40,
            -(1 << 40),
        ]
        .into_iter()
        .enumerate()
        {
            delta += dod;
            t += delta;
            samples.push((t, (i as f64).to_bits()));
        }
        assert_eq!(decode(encode(&samples).bytes()), samples);
    }

    #[test]
    fn regular_counter_compresses_well() {
        let samples: Vec<(i64, u64)> = (0..120)
            .map(|i| (1_700_000_000_000 + i * 15_000, (i as f64 * 3.0).to_bits()))
            .collect();
        let c = encode(&samples);
        assert!(c.bytes().len() < 120 * 3, "{} bytes", c.bytes().len());
        let gauge: Vec<(i64, u64)> = (0..120)
            .map(|i| (1_700_000_000_000 + i * 15_000, 42.0f64.to_bits()))
            .collect();
        // Constant value, constant interval: two bits per sample after the first two.
        assert!(encode(&gauge).bytes().len() < 60);
    }

    #[test]
    fn empty_and_truncated_chunks_do_not_panic() {
        assert_eq!(ChunkIter::new(&[]).count(), 0);
        let mut one = ChunkIter::new(&[7]);
        assert_eq!(one.next(), None);
        assert!(one.is_corrupt());
        let samples: Vec<(i64, u64)> = (0..50).map(|i| (i * 1000 + i * i, i as u64)).collect();
        let c = encode(&samples);
        for cut in 0..c.bytes().len() {
            let mut it = ChunkIter::new(&c.bytes()[..cut]);
            let got: Vec<_> = it.by_ref().collect();
            assert!(got.len() <= samples.len());
            if got.len() < samples.len() && cut >= 2 {
                assert!(it.is_corrupt(), "cut at {cut}");
            }
        }
    }

    /// `n` bits at bit `pos`, most significant first, one bit at a time (the reference).
    fn bit_by_bit(bytes: &[u8], pos: usize, n: u8) -> Option<u64> {
        if n > 64 || pos + usize::from(n) > bytes.len() * 8 {
            return None;
        }
        let mut v = 0u64;
        for i in pos..pos + usize::from(n) {
            v = (v << 1) | u64::from((bytes[i / 8] >> (7 - i % 8)) & 1);
        }
        Some(v)
    }

    proptest! {
        #[test]
        fn arbitrary_samples_round_trip(samples in proptest::collection::vec((any::<i64>(), any::<u64>()), 0..300)) {
            let mut c = Chunk::new();
            let mut expected = Vec::new();
            for &(t, v) in &samples {
                if !c.append(t, f64::from_bits(v)) { break; }
                expected.push((t, v));
            }
            prop_assert_eq!(decode(c.bytes()), expected);
        }

        #[test]
        fn increasing_samples_round_trip(
            start in -1_000_000_000_000i64..2_000_000_000_000,
            steps in proptest::collection::vec((0i64..100_000, -1e9f64..1e9), 0..250),
        ) {
            let mut c = Chunk::new();
            let mut t = start;
            let mut expected = Vec::new();
            for (dt, v) in steps {
                t += dt + 1;
                c.append(t, v);
                expected.push((t, v.to_bits()));
            }
            prop_assert_eq!(decode(c.bytes()), expected);
        }

        #[test]
        fn word_reads_agree_with_bit_by_bit_reads(
            bytes in proptest::collection::vec(any::<u8>(), 0..40),
            widths in proptest::collection::vec(0u8..=66, 0..40),
        ) {
            let mut fast = BitReader::new(&bytes);
            let mut pos = 0usize;
            for n in widths {
                let got = fast.read_bits(n);
                let want = bit_by_bit(&bytes, pos, n);
                prop_assert_eq!(got, want, "{} bits at {}", n, pos);
                if want.is_some() {
                    pos += usize::from(n);
                }
                prop_assert_eq!(fast.pos(), pos);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let n = ChunkIter::new(&bytes).count();
            prop_assert!(n <= u16::MAX as usize);
        }
    }
}
