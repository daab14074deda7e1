//! Where rules get their data: [`QuerySource`], an instant query for one tenant. [`Embedded`]
//! evaluates against the store in this process; [`Http`] calls any Prometheus-compatible query
//! API (Prometheus, VictoriaMetrics, Mimir, Thanos), sending the tenant as `X-Scope-OrgID`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use sonde_common::retry::{Verdict, classify_status, error_chain};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::alerting::LabelMap;
use crate::query::eval::{EvalError, QueryLimits, Reader, Value, instant_query};
use crate::store::Store;

/// One element of an instant query's result: a series' labels (`__name__` included when the
/// result has it) and its value. A scalar result is one element without labels.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryElem {
    pub labels: LabelMap,
    pub value: f64,
}

/// Why a query failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// The query cannot run as written: retrying does not help.
    #[error("bad query: {0}")]
    BadData(String),
    /// Evaluation failed (limits, matching): retrying does not help.
    #[error("query execution failed: {0}")]
    Execution(String),
    /// The query path is down, overloaded or too slow: worth retrying.
    #[error("query unavailable: {0}")]
    Unavailable(String),
}

impl QueryError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, QueryError::Unavailable(_))
    }
}

/// The boxed future a [`QuerySource`] returns.
pub type QueryFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<QueryElem>, QueryError>> + Send + 'a>>;

/// An instant query for one tenant at `t_ms`.
pub trait QuerySource: Send + Sync {
    fn query<'a>(&'a self, tenant: &'a str, expr: &'a str, t_ms: i64) -> QueryFuture<'a>;
}

/// The store in this process.
#[derive(Clone)]
pub struct Embedded {
    pub store: Store,
    pub lookback: Duration,
    pub limits: QueryLimits,
}

impl Embedded {
    /// Prometheus's defaults: a 5 minute lookback, the default query limits.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            lookback: Duration::from_secs(300),
            limits: QueryLimits::default(),
        }
    }
}

fn labels_of(l: &crate::query::eval::Labels) -> LabelMap {
    l.iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

impl QuerySource for Embedded {
    fn query<'a>(&'a self, tenant: &'a str, expr: &'a str, t_ms: i64) -> QueryFuture<'a> {
        let store = self.store.clone();
        let tenant = tenant.to_owned();
        let expr = expr.to_owned();
        let lookback = i64::try_from(self.lookback.as_millis()).unwrap_or(i64::MAX);
        let limits = self.limits;
        Box::pin(async move {
            let res = tokio::task::spawn_blocking(move || {
                let reader = Reader {
                    store: &store,
                    tenant: &tenant,
                };
                instant_query(&reader, &expr, t_ms, lookback, limits)
            })
            .await
            .map_err(|e| QueryError::Unavailable(format!("query task failed: {e}")))?;
            match res {
                Ok(Value::Vector(v)) => Ok(v
                    .iter()
                    .map(|e| QueryElem {
                        labels: labels_of(&e.labels),
                        value: e.value,
                    })
                    .collect()),
                Ok(Value::Scalar(v)) => Ok(vec![QueryElem {
                    labels: LabelMap::new(),
                    value: v,
                }]),
                Ok(_) => Err(QueryError::BadData(
                    "rule expressions must return a vector or a scalar".into(),
                )),
                Err(EvalError::BadData(m)) => Err(QueryError::BadData(m)),
                Err(EvalError::Execution(m)) => Err(QueryError::Execution(m)),
                Err(EvalError::Timeout(m)) => Err(QueryError::Unavailable(m)),
            }
        })
    }
}

const TENANT_HEADER: &str = "X-Scope-OrgID";
/// Largest query answer read.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// A remote Prometheus-compatible query API (`POST <base>/api/v1/query`).
#[derive(Clone)]
pub struct Http {
    base: String,
    token: Option<String>,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ApiAnswer {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct ApiData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct ApiSample {
    #[serde(default)]
    metric: LabelMap,
    value: (serde_json::Value, String),
}

fn parse_value(s: &str) -> Result<f64, QueryError> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => s
            .parse()
            .map_err(|_| QueryError::Execution(format!("bad sample value {s:?} in answer"))),
    }
}

impl Http {
    /// `base` is the API's root (`http://vm:8428`, `http://mimir/prometheus`); only `http`
    /// is supported. `token` is sent as a bearer token.
    pub fn new(
        base: &hyper::Uri,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Http, String> {
        if base.scheme_str() != Some("http") || base.host().is_none() {
            return Err(format!(
                "query URL {base} must be an http:// URL with a host (https is not supported yet)"
            ));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Http {
            base: base.to_string().trim_end_matches('/').to_owned(),
            token,
            timeout,
            client,
        })
    }

    async fn run(&self, tenant: &str, expr: &str, t_ms: i64) -> Result<Vec<QueryElem>, QueryError> {
        let time = format!("{:.3}", t_ms as f64 / 1000.0);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("query", expr)
            .append_pair("time", &time)
            .finish();
        let mut req = Request::post(format!("{}/api/v1/query", self.base))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(
                USER_AGENT,
                concat!("sonde-collector/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        if !tenant.is_empty() {
            req = req.header(TENANT_HEADER, tenant);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| QueryError::BadData(format!("cannot build request: {e}")))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| QueryError::Unavailable(error_chain(&e)))?;
        let status = resp.status().as_u16();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| QueryError::Unavailable(format!("reading the answer: {e}")))?
            .to_bytes();
        let answer: Option<ApiAnswer> = serde_json::from_slice(&bytes).ok();
        let verdict = classify_status(status);
        let Some(answer) = answer else {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            let msg = format!("HTTP {status}: {}", text.trim());
            return Err(match verdict {
                Verdict::Retry => QueryError::Unavailable(msg),
                _ => QueryError::Execution(msg),
            });
        };
        if answer.status != "success" {
            let msg = answer.error.unwrap_or_else(|| format!("HTTP {status}"));
            return Err(match (answer.error_type.as_deref(), verdict) {
                (Some("bad_data"), _) => QueryError::BadData(msg),
                (Some("timeout" | "unavailable"), _) | (_, Verdict::Retry) => {
                    QueryError::Unavailable(msg)
                }
                _ => QueryError::Execution(msg),
            });
        }
        let data = answer
            .data
            .ok_or_else(|| QueryError::Execution("answer without data".into()))?;
        match data.result_type.as_str() {
            "vector" => {
                let samples: Vec<ApiSample> = serde_json::from_value(data.result)
                    .map_err(|e| QueryError::Execution(format!("bad vector in answer: {e}")))?;
                samples
                    .into_iter()
                    .map(|s| {
                        Ok(QueryElem {
                            labels: s.metric,
                            value: parse_value(&s.value.1)?,
                        })
                    })
                    .collect()
            }
            "scalar" => {
                let (_, v): (serde_json::Value, String) = serde_json::from_value(data.result)
                    .map_err(|e| QueryError::Execution(format!("bad scalar in answer: {e}")))?;
                Ok(vec![QueryElem {
                    labels: LabelMap::new(),
                    value: parse_value(&v)?,
                }])
            }
            other => Err(QueryError::BadData(format!(
                "rule expressions must return a vector or a scalar, got a {other}"
            ))),
        }
    }
}

impl QuerySource for Http {
    fn query<'a>(&'a self, tenant: &'a str, expr: &'a str, t_ms: i64) -> QueryFuture<'a> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.run(tenant, expr, t_ms))
                .await
                .map_err(|_| {
                    QueryError::Unavailable(format!("query timed out after {:?}", self.timeout))
                })?
        })
    }
}
