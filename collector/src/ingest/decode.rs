//! Request checks and envelope decoding, in the order that refuses bad input cheapest first:
//! headers, declared length, bounded body read, envelope, payload.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::HeaderMap;
use hyper::body::{Body, Incoming};
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use sonde_common::wire::{self, Batch, Compression, WireLimits};

use super::IngestError;

/// Checks Content-Type and Content-Encoding; returns the compression the sender declared.
pub fn check_headers(headers: &HeaderMap) -> Result<Compression, IngestError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case(wire::CONTENT_TYPE) {
        return Err(IngestError::ContentType(content_type, wire::CONTENT_TYPE));
    }
    let encoding = headers
        .get(CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_else(|| "identity".into());
    Compression::from_http_encoding(&encoding).ok_or(IngestError::ContentEncoding(
        encoding,
        "identity, lz4 or zstd",
    ))
}

/// Reads the body, refusing it by Content-Length before reading and by counted bytes while
/// reading, so an oversized body is never buffered whole.
pub async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    max: usize,
) -> Result<Bytes, IngestError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(|| body.size_hint().exact());
    if let Some(size) = declared
        && size > max as u64
    {
        return Err(IngestError::BodyTooLarge { size, max });
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(IngestError::BodyTooLarge {
            size: max as u64 + 1,
            max,
        }),
        Err(e) => Err(IngestError::Body(e.to_string())),
    }
}

/// Decodes the envelope, checking it agrees with the declared Content-Encoding.
pub fn decode_batch(
    body: &[u8],
    declared: Compression,
    limits: &WireLimits,
) -> Result<Batch, IngestError> {
    let mut batch = Batch::default();
    decode_batch_into(body, declared, limits, &mut batch)?;
    Ok(batch)
}

/// [`decode_batch`] into `out`, reusing its allocations (see [`super::pool`]).
pub fn decode_batch_into(
    body: &[u8],
    declared: Compression,
    limits: &WireLimits,
    out: &mut Batch,
) -> Result<(), IngestError> {
    let envelope = wire::read_envelope(body, limits)?;
    if envelope.compression != declared {
        return Err(IngestError::EncodingMismatch {
            header: declared.http_encoding(),
            envelope: envelope.compression.http_encoding(),
        });
    }
    Ok(wire::decode_into(body, limits, out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(ct: Option<&'static str>, ce: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        if let Some(ce) = ce {
            h.insert(CONTENT_ENCODING, HeaderValue::from_static(ce));
        }
        h
    }

    #[test]
    fn header_checks() {
        assert_eq!(
            check_headers(&headers(Some("application/x-sonde-batch"), Some("zstd"))).unwrap(),
            Compression::Zstd
        );
        assert_eq!(
            check_headers(&headers(Some("application/x-sonde-batch; v=1"), None)).unwrap(),
            Compression::None
        );
        assert!(matches!(
            check_headers(&headers(Some("application/json"), None)),
            Err(IngestError::ContentType(..))
        ));
        assert!(matches!(
            check_headers(&headers(None, None)),
            Err(IngestError::ContentType(..))
        ));
        let err =
            check_headers(&headers(Some("application/x-sonde-batch"), Some("gzip"))).unwrap_err();
        assert_eq!(err.status(), hyper::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
