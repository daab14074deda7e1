//! Ingest: the first stage a pushed batch meets. It checks the request's media type and
//! encoding, reads the body within the size limit, decodes the envelope and validates the
//! batch, then hands it to [`crate::route`]. A request is accepted whole or rejected whole.

pub mod auth;
pub mod decode;
pub mod dedup;
pub mod limit;
pub mod pool;
pub mod remote_write;
pub mod validate;

use hyper::StatusCode;
use sonde_common::model::ValidationError;
use sonde_common::wire::DecodeError;
use thiserror::Error;

/// Why a push was refused, mapped to its HTTP status and `reason` label.
#[derive(Debug, Error)]
pub enum IngestError {
    #[error("unsupported Content-Type '{0}': send {1}")]
    ContentType(String, &'static str),
    #[error("unsupported Content-Encoding '{0}': send {1}")]
    ContentEncoding(String, &'static str),
    #[error("{0}")]
    RemoteWrite(#[from] sonde_common::remote_write::RemoteWriteError),
    #[error("series without a metric name (__name__): {{{0}}}")]
    MissingName(String),
    #[error("label '{label}' appears twice in series '{series}'")]
    DuplicateLabel { series: String, label: String },
    #[error("request body of {size} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge { size: u64, max: usize },
    #[error("cannot read request body: {0}")]
    Body(String),
    #[error("Content-Encoding says '{header}' but the batch envelope says '{envelope}'")]
    EncodingMismatch {
        header: &'static str,
        envelope: &'static str,
    },
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    #[error(
        "sample at {timestamp_ms} ms of series '{series}' is too old: samples older than {min_ms} ms (now minus --max-sample-age) are refused"
    )]
    TooOld {
        series: String,
        timestamp_ms: i64,
        min_ms: i64,
    },
    #[error(
        "sample at {timestamp_ms} ms of series '{series}' is in the future: samples after {max_ms} ms (now plus --max-sample-future) are refused; check the sender's clock"
    )]
    TooNew {
        series: String,
        timestamp_ms: i64,
        max_ms: i64,
    },
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::ContentType(..) | IngestError::ContentEncoding(..) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            IngestError::RemoteWrite(sonde_common::remote_write::RemoteWriteError::TooLarge {
                ..
            }) => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::Decode(e) if e.is_too_large() => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::ContentType(..) | IngestError::ContentEncoding(..) => {
                "unsupported_media_type"
            }
            IngestError::RemoteWrite(sonde_common::remote_write::RemoteWriteError::TooLarge {
                ..
            }) => "too_large",
            IngestError::RemoteWrite(_) => "malformed",
            IngestError::MissingName(_) => "missing_metric_name",
            IngestError::DuplicateLabel { .. } => "duplicate_label",
            IngestError::BodyTooLarge { .. } => "too_large",
            IngestError::Body(_) => "body_read_error",
            IngestError::EncodingMismatch { .. } => "malformed",
            IngestError::Decode(e) => e.reason(),
            IngestError::Invalid(e) => e.reason(),
            IngestError::TooOld { .. } => "too_old",
            IngestError::TooNew { .. } => "too_new",
        }
    }
}
