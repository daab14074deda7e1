//! The agent's own HTTP endpoint: `GET /metrics` (self-metrics) and `GET /healthz`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::events::Events;

pub async fn serve(listener: TcpListener, events: Arc<Events>, shutdown: CancellationToken) {
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
        let events = events.clone();
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let events = events.clone();
            async move {
                let (status, ctype, body) = match req.uri().path() {
                    "/metrics" => (
                        StatusCode::OK,
                        "text/plain; version=0.0.4; charset=utf-8",
                        events.render(),
                    ),
                    "/healthz" => (
                        StatusCode::OK,
                        "text/plain; charset=utf-8",
                        "ok\n".to_owned(),
                    ),
                    _ => (
                        StatusCode::NOT_FOUND,
                        "text/plain; charset=utf-8",
                        "not found\n".to_owned(),
                    ),
                };
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                *resp.status_mut() = status;
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
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
