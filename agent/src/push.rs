//! Push: delivers buffered batches to the collectors, oldest first, one at a time so the
//! collector sees each agent's batches in order.
//!
//! Outcomes follow the shared retry rule ([`sonde_common::retry`]): 2xx removes the batch;
//! 5xx, 429 and network errors keep it, move on to the next collector URL and back off (capped
//! exponential, full jitter, at least Retry-After); any other 4xx means the batch can never be
//! accepted, so it is dropped, counted and logged with the collector's reason.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper::{Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sonde_common::retry::{Backoff, Verdict, classify_status, error_chain, parse_retry_after};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::batch::EncodedBatch;
use crate::buffer::Buffer;
use crate::config::PushConfig;
use crate::events::Events;
use crate::tls::TlsError;

/// What one attempt came to.
#[derive(Debug)]
enum Attempt {
    Delivered,
    Retry {
        reason: &'static str,
        cause: String,
        retry_after: Option<Duration>,
    },
    Refused {
        cause: String,
    },
}

pub struct Pusher {
    cfg: PushConfig,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    events: Arc<Events>,
    user_agent: String,
}

impl Pusher {
    pub fn new(cfg: PushConfig, events: Arc<Events>) -> Result<Self, TlsError> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.timeout));
        // HttpConnector refuses https:// unless told; the TLS layer above handles it.
        connector.enforce_http(false);
        let https = cfg.urls.iter().any(|u| u.scheme_str() == Some("https"));
        let connector = crate::tls::connector(&cfg.tls, https, connector)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self {
            cfg,
            client,
            events,
            user_agent: format!("sonde-agent/{}", env!("CARGO_PKG_VERSION")),
        })
    }

    async fn attempt(&self, url: &Uri, batch: &EncodedBatch) -> Attempt {
        let req = Request::post(url.clone())
            .header(CONTENT_TYPE, sonde_common::wire::CONTENT_TYPE)
            .header(CONTENT_ENCODING, self.cfg.compression.http_encoding())
            .header(USER_AGENT, &self.user_agent);
        let req = match &self.cfg.token {
            Some(t) => req.header(AUTHORIZATION, format!("Bearer {t}")),
            None => req,
        };
        let req = req.body(Full::new(batch.bytes.clone()));
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Refused {
                    cause: format!("cannot build request: {e}"),
                };
            }
        };
        let resp = match tokio::time::timeout(self.cfg.timeout, self.client.request(req)).await {
            Err(_) => {
                return Attempt::Retry {
                    reason: "timeout",
                    cause: format!("no answer within {:?}", self.cfg.timeout),
                    retry_after: None,
                };
            }
            Ok(Err(e)) => {
                return Attempt::Retry {
                    reason: "network",
                    cause: error_chain(&e),
                    retry_after: None,
                };
            }
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // Read (a bounded prefix of) the body: it carries the collector's reason.
        let body = match tokio::time::timeout(self.cfg.timeout, resp.into_body().collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            _ => Bytes::new(),
        };
        let reason_text = String::from_utf8_lossy(&body[..body.len().min(1024)])
            .trim()
            .to_owned();
        match classify_status(status.as_u16()) {
            Verdict::Success => Attempt::Delivered,
            Verdict::Retry => Attempt::Retry {
                reason: if status.as_u16() == 429 {
                    "throttled"
                } else {
                    "server_error"
                },
                cause: format!("HTTP {status}: {reason_text}"),
                retry_after,
            },
            Verdict::Permanent => Attempt::Refused {
                cause: format!("HTTP {status}: {reason_text}"),
            },
        }
    }

    /// Delivers batches until the buffer is empty after `drain` is cancelled, or until
    /// `hard_stop` is cancelled. What is left is returned to the caller to account for.
    pub async fn run(
        self,
        buffer: Arc<Buffer>,
        drain: CancellationToken,
        hard_stop: CancellationToken,
    ) {
        let mut backoff = Backoff::new(self.cfg.backoff, self.cfg.max_backoff);
        let mut current = 0usize;
        loop {
            if hard_stop.is_cancelled() {
                return;
            }
            let Some(batch) = buffer.front() else {
                if drain.is_cancelled() {
                    return;
                }
                tokio::select! {
                    _ = buffer.wait_added() => {}
                    _ = drain.cancelled() => {}
                    _ = hard_stop.cancelled() => return,
                }
                continue;
            };
            let url = &self.cfg.urls[current];
            let started = Instant::now();
            let attempt = tokio::select! {
                a = self.attempt(url, &batch) => a,
                _ = hard_stop.cancelled() => return,
            };
            match attempt {
                Attempt::Delivered => {
                    buffer.remove_front(batch.sequence);
                    self.events.delivered(&batch, started.elapsed());
                    backoff.reset();
                }
                Attempt::Refused { cause } => {
                    buffer.remove_front(batch.sequence);
                    self.events.dropped(
                        "rejected",
                        std::slice::from_ref(&batch),
                        &format!("collector {url} refused batch {}: {cause}", batch.sequence),
                    );
                }
                Attempt::Retry {
                    reason,
                    cause,
                    retry_after,
                } => {
                    let delay = backoff.next_delay(retry_after);
                    self.events.retrying(reason, url, &cause, delay);
                    current = (current + 1) % self.cfg.urls.len();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = hard_stop.cancelled() => return,
                    }
                }
            }
            self.events.buffered(buffer.usage());
            let (spooled, spooled_bytes) = buffer.spool_usage();
            self.events.spool_batches.set(spooled as f64);
            self.events.spool_bytes.set(spooled_bytes as f64);
        }
    }
}
