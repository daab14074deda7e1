//! One HTTP GET of a target's metrics, bounded in time and size.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sonde_common::exposition::Format;
use thiserror::Error;

/// Bytes of a body when the job sets no `body_size_limit`: a target cannot make the collector
/// buffer without bound.
pub const MAX_BODY_BYTES: u64 = 64 << 20;

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// What Prometheus asks for: OpenMetrics preferred, the text format accepted.
const ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                      version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("invalid scrape URL {0:?}")]
    Url(String),
    #[error("Get {url:?}: {cause}")]
    Http { url: String, cause: String },
    #[error("server returned HTTP status {0}")]
    Status(hyper::StatusCode),
    #[error("context deadline exceeded (scrape timeout {0:?})")]
    Timeout(Duration),
    #[error("body size limit exceeded ({0} bytes)")]
    BodyTooLarge(u64),
    #[error("unsupported Content-Encoding {0:?}")]
    Encoding(String),
}

impl FetchError {
    /// A short stable name for the `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Url(_) => "url",
            FetchError::Http { .. } => "http",
            FetchError::Status(_) => "status",
            FetchError::Timeout(_) => "timeout",
            FetchError::BodyTooLarge(_) => "body_size_limit",
            FetchError::Encoding(_) => "encoding",
        }
    }
}

pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// GETs `url`; returns the body and its format. `limit` 0: [`MAX_BODY_BYTES`].
pub async fn fetch(
    client: &HttpClient,
    url: &str,
    timeout: Duration,
    limit: u64,
    user_agent: &str,
) -> Result<(Bytes, Format), FetchError> {
    let limit = if limit == 0 { MAX_BODY_BYTES } else { limit };
    let uri: hyper::Uri = url.parse().map_err(|_| FetchError::Url(url.to_owned()))?;
    let req = hyper::Request::get(uri)
        .header(hyper::header::ACCEPT, ACCEPT)
        .header(hyper::header::USER_AGENT, user_agent)
        .header(
            "X-Prometheus-Scrape-Timeout-Seconds",
            format!("{}", timeout.as_secs_f64()),
        )
        .body(Empty::new())
        .map_err(|_| FetchError::Url(url.to_owned()))?;
    let work = async {
        let resp = client.request(req).await.map_err(|e| FetchError::Http {
            url: url.to_owned(),
            cause: error_chain(&e),
        })?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(FetchError::Status(resp.status()));
        }
        if let Some(enc) = resp.headers().get(hyper::header::CONTENT_ENCODING) {
            let enc = enc.to_str().unwrap_or("?");
            if !enc.eq_ignore_ascii_case("identity") {
                return Err(FetchError::Encoding(enc.to_owned()));
            }
        }
        let format = Format::from_content_type(
            resp.headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| FetchError::Http {
                url: url.to_owned(),
                cause: error_chain(&e),
            })?;
            if let Ok(data) = frame.into_data() {
                out.extend_from_slice(&data);
                if out.len() as u64 > limit {
                    return Err(FetchError::BodyTooLarge(limit));
                }
            }
        }
        Ok((Bytes::from(out), format))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
