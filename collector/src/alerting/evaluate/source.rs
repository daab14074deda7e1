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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    /// A process started by the test, killed by PID when dropped (also on failure).
    struct Daemon(Child);

    impl Drop for Daemon {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn http(method: &str, url: &str, body: &str) -> (u16, String) {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let req = Request::builder()
            .method(method)
            .uri(url)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        match client.request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let b = resp.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&b).into_owned())
            }
            Err(_) => (0, String::new()),
        }
    }

    #[tokio::test]
    async fn http_source_against_victoria_metrics() {
        let bin = "/usr/bin/victoria-metrics";
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is needed for this test"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let _vm = Daemon(
            Command::new(bin)
                .arg(format!("-storageDataPath={}", dir.path().display()))
                .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
                .arg("-search.latencyOffset=0s")
                .arg("-search.disableCache")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while http("GET", &format!("{base}/health"), "").await.0 != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "victoria-metrics did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let now = crate::alerting::now_ms() / 1000 * 1000;
        let t = now - 60_000;
        let text = format!("cpu{{host=\"a\"}} 95 {t}\ncpu{{host=\"b\"}} 20 {t}\n");
        let (s, body) = http("POST", &format!("{base}/api/v1/import/prometheus"), &text).await;
        assert!((200..300).contains(&s), "import: {s} {body}");
        let (s, _) = http("GET", &format!("{base}/internal/force_flush"), "").await;
        assert_eq!(s, 200);

        let src = Http::new(
            &base.parse().unwrap(),
            Some("secret".into()),
            Duration::from_secs(5),
        )
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let got = loop {
            let got = src.query("acme", "cpu > 90", t + 1000).await.unwrap();
            if !got.is_empty() || std::time::Instant::now() > deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].labels.get("host").map(String::as_str), Some("a"));
        assert_eq!(got[0].value, 95.0);

        let scalar = src.query("", "1 + 1", t).await.unwrap();
        assert_eq!(
            scalar,
            [QueryElem {
                labels: LabelMap::new(),
                value: 2.0
            }]
        );
        let empty = src.query("", "nothing_here", t).await.unwrap();
        assert!(empty.is_empty());
        // VictoriaMetrics answers a parse error with 422 (errorType "422"): not retried.
        let bad = src.query("", "sum(", t).await.unwrap_err();
        assert!(bad.to_string().contains("unexpected token"), "{bad:?}");
        assert!(!bad.is_retryable());

        // Nobody listening: retryable.
        let down = Http::new(
            &format!("http://127.0.0.1:{}", free_port()).parse().unwrap(),
            None,
            Duration::from_secs(2),
        )
        .unwrap();
        let e = down.query("", "up", t).await.unwrap_err();
        assert!(e.is_retryable(), "{e:?}");
        assert!(Http::new(&"https://x".parse().unwrap(), None, Duration::from_secs(1)).is_err());
    }

    #[tokio::test]
    async fn http_source_against_prometheus() {
        let bin = "/usr/bin/prometheus";
        assert!(
            std::path::Path::new(bin).exists(),
            "{bin} is needed for this test"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 1m\n").unwrap();
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let _prom = Daemon(
            Command::new(bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while http("GET", &format!("{base}/-/ready"), "").await.0 != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "prometheus did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let src = Http::new(&base.parse().unwrap(), None, Duration::from_secs(5)).unwrap();
        let t = crate::alerting::now_ms();
        let got = src
            .query(
                "",
                "label_replace(vector(3), \"job\", \"x\", \"\", \"\") > 2",
                t,
            )
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].labels.get("job").map(String::as_str), Some("x"));
        assert_eq!(got[0].value, 3.0);
        assert_eq!(
            src.query("", "scalar(vector(0.5))", t).await.unwrap()[0].value,
            0.5
        );
        assert!(src.query("", "vector(1) > 2", t).await.unwrap().is_empty());
        let bad = src.query("", "sum(", t).await.unwrap_err();
        assert!(matches!(bad, QueryError::BadData(_)), "{bad:?}");
        let nan = src.query("", "vector(0) / 0", t).await.unwrap();
        assert!(nan[0].value.is_nan());
    }
}

#[cfg(test)]
mod header_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves one request with `answer` (status line and JSON), returning the request's head.
    async fn one_shot(
        status: &'static str,
        answer: &'static str,
    ) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = sock.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some(i) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= i + 4 + len || n == 0 {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
            sock.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf).into_owned()
        });
        (url, task)
    }

    #[tokio::test]
    async fn tenant_token_and_form() {
        let (url, task) = one_shot(
            "200 OK",
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up","job":"a"},"value":[1700000000,"+Inf"]}]}}"#,
        )
        .await;
        let src = Http::new(
            &format!("{url}/prom/").parse().unwrap(),
            Some("tok".into()),
            Duration::from_secs(5),
        )
        .unwrap();
        let got = src
            .query("acme", "up == 1", 1_700_000_000_500)
            .await
            .unwrap();
        assert_eq!(got[0].value, f64::INFINITY);
        assert_eq!(got[0].labels.get("job").map(String::as_str), Some("a"));
        let req = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        let lower = req.to_ascii_lowercase();
        assert!(req.starts_with("POST /prom/api/v1/query HTTP/1.1"), "{req}");
        assert!(lower.contains("x-scope-orgid: acme"), "{req}");
        assert!(lower.contains("authorization: bearer tok"), "{req}");
        assert!(
            req.ends_with("query=up+%3D%3D+1&time=1700000000.500"),
            "{req}"
        );
    }

    #[tokio::test]
    async fn default_tenant_sends_no_header_and_errors_classify() {
        let (url, task) = one_shot(
            "503 Service Unavailable",
            r#"{"status":"error","errorType":"unavailable","error":"overloaded"}"#,
        )
        .await;
        let src = Http::new(&url.parse().unwrap(), None, Duration::from_secs(5)).unwrap();
        let e = src.query("", "up", 0).await.unwrap_err();
        assert_eq!(e, QueryError::Unavailable("overloaded".into()));
        let req = task.await.unwrap().to_ascii_lowercase();
        assert!(!req.contains("x-scope-orgid"), "{req}");
        assert!(!req.contains("authorization"), "{req}");

        let (url, _task) = one_shot(
            "422 Unprocessable Entity",
            r#"{"status":"error","errorType":"execution","error":"too many samples"}"#,
        )
        .await;
        let src = Http::new(&url.parse().unwrap(), None, Duration::from_secs(5)).unwrap();
        let e = src.query("", "up", 0).await.unwrap_err();
        assert_eq!(e, QueryError::Execution("too many samples".into()));
    }
}
