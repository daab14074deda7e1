//! A small etcd v3 client, shared by the agent (target registration) and the collector (etcd
//! discovery, pool membership). It speaks etcd's HTTP/JSON gateway (`/v3/kv/*`, `/v3/lease/*`,
//! `/v3/watch`) with our hyper client, so no gRPC stack is needed.
//!
//! Design notes:
//! - Endpoints are tried in order: a network error or a retryable status (5xx, 429, per
//!   [`crate::retry`]) moves on to the next one (then back to the first, once), and the last endpoint that answered is tried
//!   first next time. Callers that loop (watch, registration) back off with
//!   [`crate::retry::Backoff`] between rounds.
//! - Everything etcd sends is untrusted: answers are size-limited, parsed leniently (the
//!   gateway writes int64 as strings and omits zero values), and a malformed answer is an
//!   error, never a panic.
//! - [`EtcdClient::watch_prefix`] turns the streaming watch into a channel of events and
//!   resumes from the last revision seen after a failure; if that revision was compacted away
//!   it lists the prefix again and sends a [`WatchEvent::Reset`].
//!   [`EtcdClient::mirror_prefix`] builds on it to keep a whole prefix in a `watch` channel.
//! - [`Registration`] keeps one key alive, bound to a lease, for as long as its owner lives.

mod base64;
mod registration;
pub mod testing;
mod watch;

pub use registration::Registration;
pub use watch::{Snapshot, WatchEvent};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use thiserror::Error;

use crate::retry::{Verdict, classify_status};

/// Timeout of one unary request (not of a watch stream).
const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest unary answer read; a bigger one is refused.
const MAX_ANSWER: usize = 64 << 20;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Debug, Error)]
pub enum EtcdError {
    #[error("no etcd endpoint is configured")]
    NoEndpoints,
    #[error("cannot reach etcd at {endpoint}: {cause}")]
    Unreachable { endpoint: String, cause: String },
    #[error("etcd at {endpoint} answered {status}: {body}")]
    Status {
        endpoint: String,
        status: u16,
        body: String,
    },
    #[error("etcd at {endpoint} sent a malformed answer: {reason}")]
    Malformed { endpoint: String, reason: String },
    #[error("etcd lease {0:x} has expired or was revoked")]
    LeaseLost(i64),
}

/// One key and its value, as etcd holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, as UTF-8 (invalid bytes replaced).
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    /// The lease the key is bound to; 0 if none.
    pub lease: i64,
}

/// A cheap-to-clone handle on an etcd cluster.
#[derive(Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// Base URLs without a trailing slash.
    endpoints: Vec<String>,
    /// The endpoint tried first.
    current: AtomicUsize,
    http: HttpClient,
}

/// The end of a prefix range: the prefix with its last byte incremented (bytes of 0xff are
/// dropped first); `\0` (all keys) for an empty prefix or one of only 0xff bytes.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdClient {
    /// A client for these endpoints (`http://host:port`), tried in order.
    pub fn new(endpoints: Vec<hyper::Uri>) -> EtcdClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(TIMEOUT));
        connector.set_keepalive(Some(Duration::from_secs(30)));
        let http = Client::builder(TokioExecutor::new()).build(connector);
        EtcdClient {
            inner: Arc::new(Inner {
                endpoints: endpoints
                    .iter()
                    .map(|u| u.to_string().trim_end_matches('/').to_owned())
                    .collect(),
                current: AtomicUsize::new(0),
                http,
            }),
        }
    }

    /// The configured endpoints, as base URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    fn request(url: &str, body: &serde_json::Value) -> Option<hyper::Request<Full<Bytes>>> {
        hyper::Request::post(url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .ok()
    }

    /// Posts `body` to `path` on the first endpoint that answers; returns the endpoint and
    /// the answer's body.
    async fn call_raw(
        &self,
        path: &str,
        body: &serde_json::Value,
        not_found_ok: bool,
    ) -> Result<(String, Bytes), EtcdError> {
        let n = self.inner.endpoints.len();
        if n == 0 {
            return Err(EtcdError::NoEndpoints);
        }
        let start = self.inner.current.load(Ordering::Relaxed) % n;
        let mut last = EtcdError::NoEndpoints;
        // One more attempt than endpoints: a pooled connection that etcd closed (a restart)
        // fails the first request on it, and the first endpoint deserves a fresh one.
        for i in 0..=n {
            let idx = (start + i) % n;
            let endpoint = &self.inner.endpoints[idx];
            let url = format!("{endpoint}{path}");
            let unreachable = |cause: String| EtcdError::Unreachable {
                endpoint: endpoint.clone(),
                cause,
            };
            let Some(req) = Self::request(&url, body) else {
                last = unreachable(format!("{url:?} is not a valid URL"));
                continue;
            };
            let answer = tokio::time::timeout(TIMEOUT, async {
                let resp = self
                    .inner
                    .http
                    .request(req)
                    .await
                    .map_err(|e| crate::retry::error_chain(&e))?;
                let status = resp.status().as_u16();
                let body = Limited::new(resp.into_body(), MAX_ANSWER)
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                Ok::<_, String>((status, body))
            })
            .await;
            let (status, bytes) = match answer {
                Ok(Ok(a)) => a,
                Ok(Err(cause)) => {
                    last = unreachable(cause);
                    continue;
                }
                Err(_) => {
                    last = unreachable(format!("no answer within {TIMEOUT:?}"));
                    continue;
                }
            };
            let verdict = classify_status(status);
            if verdict == Verdict::Success || (not_found_ok && status == 404) {
                self.inner.current.store(idx, Ordering::Relaxed);
                return Ok((endpoint.clone(), bytes));
            }
            let text: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
            last = EtcdError::Status {
                endpoint: endpoint.clone(),
                status,
                body: text,
            };
            if verdict == Verdict::Permanent {
                return Err(last);
            }
        }
        Err(last)
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, EtcdError> {
        let (endpoint, bytes) = self.call_raw(path, &body, false).await?;
        serde_json::from_slice(&bytes).map_err(|e| EtcdError::Malformed {
            endpoint,
            reason: e.to_string(),
        })
    }

    /// Writes `key` = `value`, bound to `lease` if given; returns the new revision.
    pub async fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<i64, EtcdError> {
        let mut body = json!({
            "key": base64::encode(key.as_bytes()),
            "value": base64::encode(value),
        });
        if let Some(l) = lease {
            body["lease"] = json!(l.to_string());
        }
        let a: wire::WithHeader = self.call("/v3/kv/put", body).await?;
        Ok(a.header.revision)
    }

    /// Every key under `prefix` and the store's revision at the time of reading.
    pub async fn range_prefix(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), EtcdError> {
        let body = json!({
            "key": base64::encode(prefix.as_bytes()),
            "range_end": base64::encode(&prefix_end(prefix.as_bytes())),
        });
        let (endpoint, bytes) = self.call_raw("/v3/kv/range", &body, false).await?;
        let malformed = |reason: String| EtcdError::Malformed {
            endpoint: endpoint.clone(),
            reason,
        };
        let a: wire::Range =
            serde_json::from_slice(&bytes).map_err(|e| malformed(e.to_string()))?;
        let kvs = a
            .kvs
            .into_iter()
            .map(|kv| kv.decode().map_err(&malformed))
            .collect::<Result<_, _>>()?;
        Ok((kvs, a.header.revision))
    }

    /// Deletes `key`; returns how many keys were deleted (0 or 1).
    pub async fn delete(&self, key: &str) -> Result<i64, EtcdError> {
        let body = json!({ "key": base64::encode(key.as_bytes()) });
        let a: wire::Deleted = self.call("/v3/kv/deleterange", body).await?;
        Ok(a.deleted)
    }

    /// Grants a lease of `ttl_s` seconds; returns its id.
    pub async fn grant(&self, ttl_s: i64) -> Result<i64, EtcdError> {
        let a: wire::Lease = self
            .call("/v3/lease/grant", json!({ "TTL": ttl_s.max(1) }))
            .await?;
        if a.id == 0 {
            return Err(EtcdError::Malformed {
                endpoint: self.inner.endpoints.join(","),
                reason: "lease grant without an ID".into(),
            });
        }
        Ok(a.id)
    }

    /// One keep-alive round for `lease`; returns its renewed TTL in seconds, or
    /// [`EtcdError::LeaseLost`] if etcd no longer knows it.
    pub async fn keepalive(&self, lease: i64) -> Result<i64, EtcdError> {
        let (endpoint, bytes) = self
            .call_raw(
                "/v3/lease/keepalive",
                &json!({ "ID": lease.to_string() }),
                true,
            )
            .await?;
        // The gateway streams `{"result": {...}}` lines; one request gets one answer.
        let first = bytes
            .split(|&b| b == b'\n')
            .find(|l| !l.iter().all(u8::is_ascii_whitespace))
            .unwrap_or_default();
        let a: wire::KeepAlive =
            serde_json::from_slice(first).map_err(|e| EtcdError::Malformed {
                endpoint,
                reason: e.to_string(),
            })?;
        match a.result {
            Some(r) if r.ttl > 0 => Ok(r.ttl),
            _ => Err(EtcdError::LeaseLost(lease)),
        }
    }

    /// Revokes `lease`, deleting the keys bound to it at once. A lease etcd no longer knows
    /// counts as revoked.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call_raw(
            "/v3/lease/revoke",
            &json!({ "ID": lease.to_string() }),
            true,
        )
        .await?;
        Ok(())
    }

    /// The endpoint streaming calls use, and the one after it for the next attempt.
    fn stream_endpoint(&self, failed: bool) -> Option<String> {
        let n = self.inner.endpoints.len();
        if n == 0 {
            return None;
        }
        let idx = if failed {
            self.inner
                .current
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1)
                % n
        } else {
            self.inner.current.load(Ordering::Relaxed) % n
        };
        Some(self.inner.endpoints[idx].clone())
    }
}

/// The gateway's JSON shapes. int64 fields come as strings, zero values are omitted.
mod wire {
    use super::{KeyValue, base64};
    use serde::{Deserialize, Deserializer};

    pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Int {
            S(String),
            N(i64),
        }
        match Int::deserialize(d)? {
            Int::N(n) => Ok(n),
            Int::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }

    #[derive(Deserialize, Default)]
    pub struct Header {
        #[serde(default, deserialize_with = "int")]
        pub revision: i64,
    }

    #[derive(Deserialize)]
    pub struct WithHeader {
        #[serde(default)]
        pub header: Header,
    }

    #[derive(Deserialize)]
    pub struct Kv {
        #[serde(default)]
        pub key: String,
        #[serde(default)]
        pub value: String,
        #[serde(default, deserialize_with = "int")]
        pub mod_revision: i64,
        #[serde(default, deserialize_with = "int")]
        pub lease: i64,
    }

    impl Kv {
        pub fn decode(self) -> Result<KeyValue, String> {
            let key = base64::decode(&self.key).ok_or("a key is not base64")?;
            let value = base64::decode(&self.value).ok_or("a value is not base64")?;
            Ok(KeyValue {
                key: String::from_utf8_lossy(&key).into_owned(),
                value,
                mod_revision: self.mod_revision,
                lease: self.lease,
            })
        }
    }

    #[derive(Deserialize)]
    pub struct Range {
        #[serde(default)]
        pub header: Header,
        #[serde(default)]
        pub kvs: Vec<Kv>,
    }

    #[derive(Deserialize)]
    pub struct Deleted {
        #[serde(default, deserialize_with = "int")]
        pub deleted: i64,
    }

    #[derive(Deserialize)]
    pub struct Lease {
        #[serde(default, rename = "ID", deserialize_with = "int")]
        pub id: i64,
    }

    #[derive(Deserialize)]
    pub struct KeepAliveResult {
        #[serde(default, rename = "TTL", deserialize_with = "int")]
        pub ttl: i64,
    }

    #[derive(Deserialize)]
    pub struct KeepAlive {
        #[serde(default)]
        pub result: Option<KeepAliveResult>,
    }

    #[derive(Deserialize)]
    pub struct Event {
        #[serde(default, rename = "type")]
        pub kind: String,
        pub kv: Option<Kv>,
    }

    #[derive(Deserialize)]
    pub struct WatchResult {
        #[serde(default)]
        pub header: Header,
        #[serde(default)]
        pub created: bool,
        #[serde(default)]
        pub canceled: bool,
        #[serde(default, deserialize_with = "int")]
        pub compact_revision: i64,
        #[serde(default)]
        pub cancel_reason: String,
        #[serde(default)]
        pub events: Vec<Event>,
    }

    #[derive(Deserialize)]
    pub struct WatchLine {
        pub result: Option<WatchResult>,
        pub error: Option<serde_json::Value>,
    }
}

#[cfg(test)]
mod tests;
