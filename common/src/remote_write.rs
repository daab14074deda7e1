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
