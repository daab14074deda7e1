//! Wire format v1: the batch an agent pushes to a collector (`POST /api/v1/push`).
//!
//! # Layout
//! ```text
//! offset size field
//!  0      4   magic  b"SNDB"
//!  4      1   format version (1)
//!  5      1   compression: 0 none, 1 lz4 (block), 2 zstd (frame)
//!  6      2   reserved, must be zero
//!  8      4   decoded payload length, u32 little-endian
//! 12      4   payload length as sent, u32 little-endian
//! 16      4   CRC-32 (IEEE) of the payload as sent
//! 20      n   payload: a postcard-encoded [`Batch`], compressed as byte 5 says
//! ```
//! Over HTTP the body is exactly this envelope, with `Content-Type: application/x-sonde-batch`
//! and `Content-Encoding` naming the payload's compression (`identity`, `lz4`, `zstd`), in the
//! way Prometheus remote write names its snappy payload.
//!
//! # Why postcard
//! postcard 1.x has a documented, frozen wire specification, works through serde, and decodes
//! hostile bytes safely: serde caps preallocation from a length prefix ("cautious" size hints),
//! so a forged count cannot make it allocate more than the bytes that actually follow.
//! bincode, named in the original design, is unmaintained (RUSTSEC-2025-0141).
//!
//! # Hostile input
//! [`decode`] checks, in order and before any allocation that the sender controls: the envelope
//! length, magic, version (a newer version is a distinct error, so an old collector says what
//! is wrong), compression, the claimed decoded length against [`WireLimits`], the payload
//! length, the checksum; then it decompresses into a buffer of at most the claimed (capped)
//! size and checks the result has exactly that size; then decodes, rejecting trailing bytes.
//! Semantic checks (names, labels, counts, string indices) are [`Batch::validate`]'s job.
//!
//! The format is frozen: `tests/golden.rs` decodes a checked-in v1 batch and must keep doing
//! so. A change of layout is a new version number, and decoders keep reading version 1.

mod batch;

pub use batch::{Batch, BatchBuilder, BatchHeader, BatchSeries, SeriesView};

use thiserror::Error;

pub const MAGIC: [u8; 4] = *b"SNDB";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 20;
pub const CONTENT_TYPE: &str = "application/x-sonde-batch";

/// Payload compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    #[default]
    Zstd,
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Compression::None),
            1 => Some(Compression::Lz4),
            2 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The `Content-Encoding` value that goes with this compression.
    pub fn http_encoding(self) -> &'static str {
        match self {
            Compression::None => "identity",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// Parses a `Content-Encoding` value; `None` for an encoding we do not speak.
    pub fn from_http_encoding(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "identity" | "" => Some(Compression::None),
            "lz4" => Some(Compression::Lz4),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Compression::None),
            other => Compression::from_http_encoding(other)
                .ok_or_else(|| format!("unknown compression '{other}': use none, lz4 or zstd")),
        }
    }
}

/// Size bounds for decoding untrusted envelopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireLimits {
    /// Largest envelope accepted, header included (the HTTP body limit).
    pub max_encoded_bytes: usize,
    /// Largest decoded payload accepted, checked against the header before decompressing.
    pub max_decoded_bytes: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        Self {
            max_encoded_bytes: 16 << 20,
            max_decoded_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Error)]
pub enum EncodeError {
    #[error("cannot serialize batch: {0}")]
    Serialize(#[from] postcard::Error),
    #[error("batch payload of {0} bytes is larger than the format's 4 GiB limit")]
    TooLarge(usize),
    #[error("cannot compress batch: {0}")]
    Compress(std::io::Error),
}

/// Why an envelope was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("batch is {len} bytes, shorter than the {HEADER_LEN}-byte envelope header")]
    TooShort { len: usize },
    #[error("not a Sonde batch: bad magic bytes")]
    BadMagic,
    #[error(
        "batch format version {found} is not supported: this build reads version {VERSION}; upgrade the collector"
    )]
    UnsupportedVersion { found: u8 },
    #[error("unknown compression code {0}")]
    UnknownCompression(u8),
    #[error("reserved header bytes are not zero")]
    ReservedBits,
    #[error("batch of {size} bytes exceeds the limit of {max} bytes")]
    EncodedTooLarge { size: usize, max: usize },
    #[error("batch claims {size} decoded bytes, more than the limit of {max}")]
    DecodedTooLarge { size: usize, max: usize },
    #[error("payload length mismatch: header says {declared} bytes, body has {actual}")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("checksum mismatch: header says {expected:#010x}, payload hashes to {actual:#010x}")]
    Checksum { expected: u32, actual: u32 },
    #[error("cannot decompress payload: {0}")]
    Decompress(String),
    #[error("decompressed payload is {actual} bytes, header says {declared}")]
    DecompressedLength { declared: usize, actual: usize },
    #[error("cannot decode batch: {0}")]
    Deserialize(#[from] postcard::Error),
    #[error("{0} unexpected bytes after the batch")]
    TrailingBytes(usize),
}

impl DecodeError {
    /// True when the input was refused for its size (HTTP 413), not its content (400).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            DecodeError::EncodedTooLarge { .. } | DecodeError::DecodedTooLarge { .. }
        )
    }

    /// A short stable name for the `reason` label of rejection counters.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::EncodedTooLarge { .. } | DecodeError::DecodedTooLarge { .. } => {
                "too_large"
            }
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::Checksum { .. } => "checksum",
            _ => "malformed",
        }
    }
}

thread_local! {
    // zstd contexts hold ~100 KiB of tables that a fresh context allocates and zeroes; reusing
    // one per thread saves that on every batch (it was an eighth of a collector's CPU).
    static ZSTD_COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
    static ZSTD_DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
    /// Decompressed payloads, reused by [`decode_into`].
    static DECODE_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Encodes `batch` into an envelope.
pub fn encode(batch: &Batch, compression: Compression) -> Result<Vec<u8>, EncodeError> {
    let raw = postcard::to_stdvec(batch)?;
    let decoded_len = u32::try_from(raw.len()).map_err(|_| EncodeError::TooLarge(raw.len()))?;
    let payload = match compression {
        Compression::None => raw,
        Compression::Lz4 => lz4_flex::block::compress(&raw),
        Compression::Zstd => ZSTD_COMPRESSOR
            .with_borrow_mut(|c| match c {
                Some(c) => c.compress(&raw),
                None => {
                    let mut fresh = zstd::bulk::Compressor::new(1)?;
                    let out = fresh.compress(&raw);
                    *c = Some(fresh);
                    out
                }
            })
            .map_err(EncodeError::Compress)?,
    };
    let payload_len =
        u32::try_from(payload.len()).map_err(|_| EncodeError::TooLarge(payload.len()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(compression.code());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&decoded_len.to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The fixed part of an envelope, read without touching the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub version: u8,
    pub compression: Compression,
    pub decoded_len: usize,
    pub payload_len: usize,
    pub checksum: u32,
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Reads and checks the envelope header against `limits`.
pub fn read_envelope(bytes: &[u8], limits: &WireLimits) -> Result<Envelope, DecodeError> {
    if bytes.len() > limits.max_encoded_bytes {
        return Err(DecodeError::EncodedTooLarge {
            size: bytes.len(),
            max: limits.max_encoded_bytes,
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::TooShort { len: bytes.len() });
    }
    if bytes[..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if bytes[4] != VERSION {
        return Err(DecodeError::UnsupportedVersion { found: bytes[4] });
    }
    let compression =
        Compression::from_code(bytes[5]).ok_or(DecodeError::UnknownCompression(bytes[5]))?;
    if bytes[6] != 0 || bytes[7] != 0 {
        return Err(DecodeError::ReservedBits);
    }
    let decoded_len = le_u32(bytes, 8) as usize;
    if decoded_len > limits.max_decoded_bytes {
        return Err(DecodeError::DecodedTooLarge {
            size: decoded_len,
            max: limits.max_decoded_bytes,
        });
    }
    let payload_len = le_u32(bytes, 12) as usize;
    let actual = bytes.len() - HEADER_LEN;
    if payload_len != actual {
        return Err(DecodeError::LengthMismatch {
            declared: payload_len,
            actual,
        });
    }
    Ok(Envelope {
        version: bytes[4],
        compression,
        decoded_len,
        payload_len,
        checksum: le_u32(bytes, 16),
    })
}

/// Checks the envelope header and the payload's checksum without decompressing or decoding
/// (for stored batches, such as an agent's spool).
pub fn verify(bytes: &[u8], limits: &WireLimits) -> Result<Envelope, DecodeError> {
    let env = read_envelope(bytes, limits)?;
    let actual = crc32fast::hash(&bytes[HEADER_LEN..]);
    if actual != env.checksum {
        return Err(DecodeError::Checksum {
            expected: env.checksum,
            actual,
        });
    }
    Ok(env)
}

/// Decodes an envelope from untrusted bytes. See the module docs for the order of checks.
pub fn decode(bytes: &[u8], limits: &WireLimits) -> Result<Batch, DecodeError> {
    let mut batch = Batch::default();
    decode_into(bytes, limits, &mut batch)?;
    Ok(batch)
}

/// [`decode`] into `out`, reusing its vectors and strings (and a per-thread decompression
/// buffer), so a caller that keeps batches for reuse decodes without allocating once their
/// capacities have grown to fit. On error `out` holds an unspecified (but valid) batch.
pub fn decode_into(bytes: &[u8], limits: &WireLimits, out: &mut Batch) -> Result<(), DecodeError> {
    let env = verify(bytes, limits)?;
    let payload = &bytes[HEADER_LEN..];
    match env.compression {
        Compression::None => {
            if payload.len() != env.decoded_len {
                return Err(DecodeError::DecompressedLength {
                    declared: env.decoded_len,
                    actual: payload.len(),
                });
            }
            deserialize_into(payload, out)
        }
        Compression::Lz4 => DECODE_BUFFER.with_borrow_mut(|buf| {
            // The buffer is sized by the header's claim, already capped by the limits.
            buf.clear();
            buf.resize(env.decoded_len, 0);
            let n = lz4_flex::block::decompress_into(payload, buf)
                .map_err(|e| DecodeError::Decompress(e.to_string()))?;
            buf.truncate(n);
            check_len(env.decoded_len, buf.len())?;
            let result = deserialize_into(buf, out);
            shrink(buf);
            result
        }),
        Compression::Zstd => DECODE_BUFFER.with_borrow_mut(|buf| {
            buf.clear();
            // Capped by the limits; zstd writes at most this much.
            buf.reserve_exact(env.decoded_len);
            ZSTD_DECOMPRESSOR
                .with_borrow_mut(|d| {
                    let d = match d {
                        Some(d) => d,
                        empty => empty.insert(zstd::bulk::Decompressor::new()?),
                    };
                    d.decompress_to_buffer(payload, buf)
                })
                .map_err(|e| DecodeError::Decompress(e.to_string()))?;
            check_len(env.decoded_len, buf.len())?;
            let result = deserialize_into(buf, out);
            shrink(buf);
            result
        }),
    }
}

fn check_len(declared: usize, actual: usize) -> Result<(), DecodeError> {
    if actual != declared {
        return Err(DecodeError::DecompressedLength { declared, actual });
    }
    Ok(())
}

/// Keeps the per-thread buffer from holding on to a rare huge batch's memory.
fn shrink(buf: &mut Vec<u8>) {
    const KEEP: usize = 1 << 20;
    if buf.capacity() > KEEP {
        *buf = Vec::new();
    }
}

fn deserialize_into(raw: &[u8], out: &mut Batch) -> Result<(), DecodeError> {
    let mut de = postcard::Deserializer::from_bytes(raw);
    serde::Deserialize::deserialize_in_place(&mut de, out)?;
    let rest = de.finalize()?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MetricKind, Sample, Series};

    fn sample_batch() -> Batch {
        let mut b = BatchBuilder::new(BatchHeader {
            agent_id: "host-a".into(),
            sequence: 42,
            sent_at_ms: 1_700_000_000_000,
        });
        for i in 0..50 {
            let s = Series::new(
                "node_cpu_seconds_total",
                [("cpu", i.to_string()), ("mode", "user".into())],
            );
            b.push(
                &s,
                MetricKind::Counter,
                Some(1_699_999_000_000),
                vec![Sample::new(1_700_000_000_000, i as f64 * 1.25)],
            );
        }
        b.build()
    }

    #[test]
    fn round_trip_every_compression() {
        let batch = sample_batch();
        for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let bytes = encode(&batch, c).unwrap();
            assert_eq!(
                read_envelope(&bytes, &WireLimits::default())
                    .unwrap()
                    .compression,
                c
            );
            assert_eq!(decode(&bytes, &WireLimits::default()).unwrap(), batch);
        }
    }

    /// Name, labels, samples.
    type SeriesSpec = (String, Vec<(String, String)>, Vec<(i64, f64)>);

    fn batch_of(agent: &str, series: &[SeriesSpec]) -> Batch {
        let mut b = BatchBuilder::new(BatchHeader {
            agent_id: agent.into(),
            sequence: 7,
            sent_at_ms: 1,
        });
        for (name, labels, samples) in series {
            b.push(
                &Series::new(
                    name.as_str(),
                    labels.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                ),
                MetricKind::Gauge,
                None,
                samples.iter().map(|&(t, v)| Sample::new(t, v)).collect(),
            );
        }
        b.build()
    }

    proptest::proptest! {
        /// Decoding into a batch that held anything before gives exactly what a fresh decode
        /// gives, whatever the sizes of the two.
        #[test]
        fn decoding_into_a_used_batch_equals_a_fresh_decode(
            first in proptest::collection::vec(("[a-z]{1,8}", proptest::collection::vec(("[a-z]{1,4}", "[a-z0-9]{0,6}"), 0..4), proptest::collection::vec((0i64..1000, -1e3f64..1e3), 0..5)), 0..12),
            second in proptest::collection::vec(("[a-z]{1,8}", proptest::collection::vec(("[a-z]{1,4}", "[a-z0-9]{0,6}"), 0..4), proptest::collection::vec((0i64..1000, -1e3f64..1e3), 0..5)), 0..12),
            compression in proptest::sample::select(vec![Compression::None, Compression::Lz4, Compression::Zstd]),
        ) {
            let a = batch_of("agent-a", &first);
            let b = batch_of("b", &second);
            let mut reused = Batch::default();
            for want in [&a, &b, &a] {
                let bytes = encode(want, compression).unwrap();
                decode_into(&bytes, &WireLimits::default(), &mut reused).unwrap();
                proptest::prop_assert_eq!(&reused, want);
                proptest::prop_assert_eq!(&decode(&bytes, &WireLimits::default()).unwrap(), want);
            }
        }
    }

    #[test]
    fn decoding_into_a_used_batch_reuses_its_strings_and_vectors() {
        let batch = sample_batch();
        let bytes = encode(&batch, Compression::Zstd).unwrap();
        let mut reused = Batch::default();
        decode_into(&bytes, &WireLimits::default(), &mut reused).unwrap();
        let strings = reused
            .strings
            .iter()
            .map(|s| s.as_ptr())
            .collect::<Vec<_>>();
        let samples = reused
            .series
            .iter()
            .map(|s| s.samples.as_ptr())
            .collect::<Vec<_>>();
        decode_into(&bytes, &WireLimits::default(), &mut reused).unwrap();
        assert_eq!(reused, batch);
        assert_eq!(
            reused
                .strings
                .iter()
                .map(|s| s.as_ptr())
                .collect::<Vec<_>>(),
            strings,
            "strings decoded in place"
        );
        assert_eq!(
            reused
                .series
                .iter()
                .map(|s| s.samples.as_ptr())
                .collect::<Vec<_>>(),
            samples,
            "sample vectors decoded in place"
        );
        // A bad envelope leaves a batch that the next good one fully overwrites.
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(decode_into(&bad, &WireLimits::default(), &mut reused).is_err());
        decode_into(&bytes, &WireLimits::default(), &mut reused).unwrap();
        assert_eq!(reused, batch);
    }

    #[test]
    fn newer_version_is_a_distinct_error() {
        let mut bytes = encode(&sample_batch(), Compression::Zstd).unwrap();
        bytes[4] = 2;
        let err = decode(&bytes, &WireLimits::default()).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedVersion { found: 2 });
        assert!(err.to_string().contains("upgrade the collector"));
    }

    #[test]
    fn claimed_size_over_limit_is_refused_before_decompressing() {
        let mut bytes = encode(&sample_batch(), Compression::Lz4).unwrap();
        bytes[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode(&bytes, &WireLimits::default()).unwrap_err();
        assert!(err.is_too_large(), "{err}");
        let small = WireLimits {
            max_encoded_bytes: 10,
            ..WireLimits::default()
        };
        assert!(decode(&bytes, &small).unwrap_err().is_too_large());
    }

    #[test]
    fn corruption_is_caught_by_the_checksum() {
        let mut bytes = encode(&sample_batch(), Compression::Zstd).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(matches!(
            decode(&bytes, &WireLimits::default()),
            Err(DecodeError::Checksum { .. })
        ));
    }

    #[test]
    fn understated_decoded_length_is_an_error_not_a_truncation() {
        let batch = sample_batch();
        for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let mut bytes = encode(&batch, c).unwrap();
            let claimed = le_u32(&bytes, 8) - 1;
            bytes[8..12].copy_from_slice(&claimed.to_le_bytes());
            assert!(decode(&bytes, &WireLimits::default()).is_err(), "{c:?}");
        }
    }

    #[test]
    fn a_failed_zstd_decode_does_not_spoil_the_reused_context() {
        let good = encode(&sample_batch(), Compression::Zstd).unwrap();
        let mut bad = good.clone();
        // Corrupt the zstd frame but keep the checksum right, so decompression itself fails.
        let n = bad.len();
        for b in &mut bad[HEADER_LEN + 4..n] {
            *b = b.wrapping_add(0x5a);
        }
        let crc = crc32fast::hash(&bad[HEADER_LEN..]);
        bad[16..20].copy_from_slice(&crc.to_le_bytes());
        assert!(decode(&bad, &WireLimits::default()).is_err());
        assert_eq!(
            decode(&good, &WireLimits::default()).unwrap(),
            sample_batch()
        );
    }

    #[test]
    fn http_encoding_names() {
        for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
            assert_eq!(Compression::from_http_encoding(c.http_encoding()), Some(c));
        }
        assert_eq!(Compression::from_http_encoding("gzip"), None);
        assert_eq!("none".parse::<Compression>(), Ok(Compression::None));
    }
}
