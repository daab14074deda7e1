//! Prometheus remote write 1.0: the protobuf messages (`prompb.WriteRequest`), hand-written as
//! prost generates them so no protoc is needed at build time, and snappy block compression.
//! Senders use [`encode`]; receivers [`decode`], which bounds sizes before allocating.

use thiserror::Error;

pub const CONTENT_TYPE: &str = "application/x-protobuf";
pub const CONTENT_ENCODING: &str = "snappy";
pub const VERSION_HEADER: &str = "X-Prometheus-Remote-Write-Version";
pub const VERSION: &str = "0.1.0";

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

#[derive(Debug, Error, PartialEq)]
pub enum RemoteWriteError {
    #[error("snappy payload claims {size} decoded bytes, more than the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("invalid snappy payload: {0}")]
    Snappy(String),
    #[error("invalid protobuf: {0}")]
    Protobuf(String),
}

/// Serializes and snappy-compresses a write request.
pub fn encode(req: &WriteRequest) -> Vec<u8> {
    compress(&prost::Message::encode_to_vec(req))
}

/// Snappy-compresses (block format) an already serialized write request.
pub fn compress(raw: &[u8]) -> Vec<u8> {
    // Compressing a slice in memory cannot fail except for inputs over 4 GiB.
    snap::raw::Encoder::new()
        .compress_vec(raw)
        .unwrap_or_default()
}

/// The snappy block of the concatenation of `parts`, without building it: each part is
/// compressed on its own and their elements are joined under one length header. That is a
/// valid block, because an element copies only from earlier output of its own part, which a
/// decoder has written where the part's compressor put it.
pub fn compress_parts(parts: &[&[u8]]) -> Vec<u8> {
    thread_local! {
        // The encoder's hash table and the room each part is compressed into, kept per
        // thread: a request's worth of them is allocated once, not for every request.
        static SCRATCH: std::cell::RefCell<(snap::raw::Encoder, Vec<u8>)> =
            std::cell::RefCell::new((snap::raw::Encoder::new(), Vec::new()));
    }
    let total: usize = parts.iter().map(|p| p.len()).sum();
    SCRATCH.with_borrow_mut(|(encoder, scratch)| {
        let room: usize = parts
            .iter()
            .map(|p| snap::raw::max_compress_len(p.len()))
            .sum::<usize>()
            + 10;
        if scratch.len() < room {
            scratch.resize(room, 0);
        }
        let mut at = 0;
        let mut header = [0u8; 10];
        let n = put_varint_into(&mut header, total as u64);
        scratch[..n].copy_from_slice(&header[..n]);
        at += n;
        for part in parts.iter().filter(|p| !p.is_empty()) {
            // Compressing a slice in memory cannot fail except for inputs over 4 GiB.
            let Ok(n) = encoder.compress(part, &mut scratch[at..]) else {
                return compress(&parts.concat());
            };
            // Each part's own length header is dropped: the block has one for them all.
            let own = varint_len(part.len() as u64);
            scratch.copy_within(at + own..at + n, at);
            at += n - own;
        }
        let out = scratch[..at].to_vec();
        if scratch.len() > 16 << 20 {
            // An unusually large request does not pin its room for good.
            *scratch = Vec::new();
        }
        out
    })
}

fn put_varint_into(buf: &mut [u8; 10], mut v: u64) -> usize {
    let mut n = 0;
    while v >= 0x80 {
        buf[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    buf[n] = v as u8;
    n + 1
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Decompresses and parses a write request, refusing a claimed decoded size over `max_decoded`
/// before allocating for it.
pub fn decode(body: &[u8], max_decoded: usize) -> Result<WriteRequest, RemoteWriteError> {
    let size =
        snap::raw::decompress_len(body).map_err(|e| RemoteWriteError::Snappy(e.to_string()))?;
    if size > max_decoded {
        return Err(RemoteWriteError::TooLarge {
            size,
            max: max_decoded,
        });
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| RemoteWriteError::Snappy(e.to_string()))?;
    prost::Message::decode(raw.as_slice()).map_err(|e| RemoteWriteError::Protobuf(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decompress(block: &[u8]) -> Vec<u8> {
        snap::raw::Decoder::new().decompress_vec(block).unwrap()
    }

    proptest! {
        /// Parts compressed apart decompress as their concatenation: repetitive parts (so
        /// elements copy), parts over snappy's 64 KiB block, empty parts.
        #[test]
        fn parts_compressed_apart_decompress_as_one(
            parts in prop::collection::vec(
                (prop::collection::vec(0u8..4, 0..300), 0usize..400),
                0..8,
            )
        ) {
            let parts: Vec<Vec<u8>> = parts
                .into_iter()
                .map(|(seed, repeat)| seed.iter().copied().cycle().take(seed.len() * repeat).collect())
                .collect();
            let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(decompress(&compress_parts(&slices)), parts.concat());
        }
    }

    #[test]
    fn parts_compress_about_as_well_as_their_concatenation() {
        let part: Vec<u8> = (0..30_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 1000) as u8)
            .collect();
        let parts = [&part[..], &part[..], &part[..]];
        let joined = compress(&parts.concat());
        let apart = compress_parts(&parts);
        assert_eq!(decompress(&apart), parts.concat());
        assert!(
            apart.len() < joined.len() * 2,
            "{} vs {}",
            apart.len(),
            joined.len()
        );
    }

    #[test]
    fn round_trip_and_limits() {
        let req = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label {
                    name: "__name__".into(),
                    value: "up".into(),
                }],
                samples: vec![Sample {
                    value: 1.0,
                    timestamp: 1000,
                }],
            }],
        };
        let body = encode(&req);
        assert_eq!(decode(&body, 1 << 20).unwrap(), req);
        assert!(matches!(
            decode(&body, 4),
            Err(RemoteWriteError::TooLarge { .. })
        ));
        assert!(decode(b"\xff\xff\xff\xff\x0fgarbage", 1 << 20).is_err());
    }
}
