//! The agent's own HTTP endpoint: `GET /metrics` (self-metrics), `GET /healthz`, and
//! `POST /api/v1/import/prometheus` for local applications that prefer to push the Prometheus
//! text format (or OpenMetrics) rather than StatsD: the samples join the next batches like any
//! other source, with `host` added when absent.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sonde_common::exposition::{self, Format, ParseLimits};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::batch::Outbox;
use crate::events::Events;

/// Largest pushed body accepted.
const MAX_PUSH_BYTES: usize = 16 << 20;

/// Where pushed text goes.
#[derive(Clone)]
pub struct PushTarget {
    pub outbox: Arc<Outbox>,
    pub hostname: String,
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn import(
    req: Request<hyper::body::Incoming>,
    push: &PushTarget,
    events: &Events,
) -> Response<Full<Bytes>> {
    let format = Format::from_content_type(
        req.headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    let body = match Limited::new(req.into_body(), MAX_PUSH_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                TEXT,
                format!("body exceeds {MAX_PUSH_BYTES} bytes\n"),
            );
        }
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                TEXT,
                format!("cannot read body: {e}\n"),
            );
        }
    };
    let now = sonde_common::model::now_ms();
    // One label fewer than the collector allows: `host` may be added.
    let limits = ParseLimits {
        max_labels_per_series: sonde_common::model::Limits::default().max_labels_per_series - 1,
        ..ParseLimits::default()
    };
    match exposition::parse_bytes(&body, format, now, &limits) {
        Ok(exp) => {
            let points = crate::selfmetrics::points(&exp, &push.hostname, None);
            let n = points.len();
            push.outbox.submit("push", &points, now);
            tracing::debug!(samples = n, "imported pushed metrics");
            reply(StatusCode::NO_CONTENT, TEXT, String::new())
        }
        Err(e) => {
            events.scrape_errors.add("push_parse", 1);
            reply(
                StatusCode::BAD_REQUEST,
                TEXT,
                format!("cannot parse pushed metrics: {e}\n"),
            )
        }
    }
}

pub async fn serve(
    listener: TcpListener,
    events: Arc<Events>,
    push: PushTarget,
    shutdown: CancellationToken,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("cannot accept connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let (events, push) = (events.clone(), push.clone());
        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
            let (events, push) = (events.clone(), push.clone());
            async move {
                let resp = match (req.method(), req.uri().path()) {
                    (&Method::GET, "/metrics") => reply(
                        StatusCode::OK,
                        "text/plain; version=0.0.4; charset=utf-8",
                        events.render(),
                    ),
                    (&Method::GET, "/healthz") => reply(StatusCode::OK, TEXT, "ok\n".into()),
                    (&Method::POST, "/api/v1/import/prometheus") => {
                        import(req, &push, &events).await
                    }
                    _ => reply(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
                };
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
