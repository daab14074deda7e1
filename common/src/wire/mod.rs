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
    let env = verify(bytes, limits)?;
    let payload = &bytes[HEADER_LEN..];
    let decompressed;
    let raw: &[u8] = match env.compression {
        Compression::None => {
            if payload.len() != env.decoded_len {
                return Err(DecodeError::DecompressedLength {
                    declared: env.decoded_len,
                    actual: payload.len(),
                });
            }
            payload
        }
        Compression::Lz4 => {
            // The buffer is sized by the header's claim, already capped by the limits.
            let mut buf = vec![0u8; env.decoded_len];
            let n = lz4_flex::block::decompress_into(payload, &mut buf)
                .map_err(|e| DecodeError::Decompress(e.to_string()))?;
            buf.truncate(n);
            decompressed = buf;
            &decompressed
        }
        Compression::Zstd => {
            decompressed = ZSTD_DECOMPRESSOR
                .with_borrow_mut(|d| match d {
                    Some(d) => d.decompress(payload, env.decoded_len),
                    None => {
                        let mut fresh = zstd::bulk::Decompressor::new()?;
                        let out = fresh.decompress(payload, env.decoded_len);
                        *d = Some(fresh);
                        out
                    }
                })
                .map_err(|e| DecodeError::Decompress(e.to_string()))?;
            &decompressed
        }
    };
    if raw.len() != env.decoded_len {
        return Err(DecodeError::DecompressedLength {
            declared: env.decoded_len,
            actual: raw.len(),
        });
    }
    let (batch, rest) = postcard::take_from_bytes::<Batch>(raw)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(batch)
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
