//! The scrape source: reads one local Prometheus or OpenMetrics `/metrics` endpoint and turns
//! its samples into [`Reading`]s. The loop that calls [`Scraper::scrape`] every
//! [`ScrapeConfig::interval`] lives in the pipeline; this file owns one scrape.
//!
//! One scrape is one `GET` that asks for OpenMetrics first and the Prometheus text format second
//! (as Prometheus does), bounded as a whole by [`ScrapeConfig::timeout`] and in size by
//! [`DEFAULT_MAX_BODY_BYTES`]; the body is parsed by [`sonde_common::exposition`] in the format
//! its `Content-Type` names. Anything but a 200, or one bad line, fails the whole scrape, as in
//! Prometheus.
//!
//! Labels, as Prometheus's `honor_labels: false` sets them: every series gets
//! `instance="<host:port of the URL>"` and `job="scrape"`; a scraped label of either name is kept
//! as `exported_instance` / `exported_job` (more `exported_` prefixes if that is taken too).
//! `host="<agent's host name>"`, the label every agent series carries, is added when the target
//! has none, and a target's own `host` is kept.
//!
//! Timestamps: a sample's own timestamp is dropped; every reading of a scrape is taken as of the
//! agent's collection time, like its host readings. Kinds come from the families' TYPE lines
//! (see [`sonde_common::exposition::MetricType::kind`]); `_created` series are skipped.
//!
//! Parsing runs on the calling task: about 1 ms per 100-170 KB of exposition in a release build
//! (0.35 ms for node_exporter's 58 KB; so up to ~150 ms for a body at the 16 MiB limit).

use sonde_common::retry::error_chain;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sonde_common::exposition::{self, Format, ParseError, ParseLimits};
use sonde_common::model::{Label, Limits, Series};
use thiserror::Error;

use super::Reading;

/// What the request asks for: OpenMetrics 1.0, else the text format 0.0.4.
pub const ACCEPT_HEADER: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
/// The largest body a scrape reads.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;
/// The `job` label of scraped series.
pub const JOB: &str = "scrape";
/// Labels a scrape adds to every series: `host`, `instance`, `job`.
const ADDED_LABELS: usize = 3;

/// What the scrape source needs from configuration.
#[derive(Clone, Debug)]
pub struct ScrapeConfig {
    /// The endpoint, `http://host:port/metrics` (no TLS).
    pub url: Uri,
    /// How often the pipeline scrapes.
    pub interval: Duration,
    /// Bounds a whole scrape: connecting, the answer and reading the body.
    pub timeout: Duration,
}

/// Why a scrape failed. [`ScrapeError::reason`] names it for self-metrics.
#[derive(Debug, Error)]
pub enum ScrapeError {
    #[error("no complete answer within the scrape timeout")]
    Timeout,
    #[error("the target answered HTTP {0}")]
    Http(StatusCode),
    #[error("{0}")]
    Network(String),
    #[error("the response body is larger than the scrape's size limit")]
    TooLarge,
    #[error("the exposition is invalid: {0}")]
    Parse(#[from] ParseError),
}

impl ScrapeError {
    /// A short stable name for the `reason` label of error counters.
    pub fn reason(&self) -> &'static str {
        match self {
            ScrapeError::Timeout => "timeout",
            ScrapeError::Http(_) => "http_status",
            ScrapeError::Network(_) => "network",
            ScrapeError::TooLarge => "too_large",
            ScrapeError::Parse(_) => "parse",
        }
    }
}

/// Scrapes one target; keeps its connection between scrapes.
pub struct Scraper {
    cfg: ScrapeConfig,
    client: Client<HttpConnector, Empty<Bytes>>,
    hostname: String,
    instance: String,
    limits: ParseLimits,
    max_body_bytes: usize,
    user_agent: String,
}

impl Scraper {
    /// `hostname` is the value of the `host` label added to series that have none.
    pub fn new(cfg: ScrapeConfig, hostname: impl Into<String>) -> Scraper {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(cfg.interval.max(Duration::from_secs(1)) * 2)
            .build(connector);
        // Prometheus 3 takes the address as written, without adding a default port.
        let instance = cfg
            .url
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let model = Limits::default();
        let limits = ParseLimits {
            // Room for the labels added here, so every reading passes the collector's check.
            max_labels_per_series: model.max_labels_per_series - ADDED_LABELS,
            ..ParseLimits::default()
        };
        Scraper {
            cfg,
            client,
            hostname: hostname.into(),
            instance,
            limits,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            user_agent: format!("sonde-agent/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Replaces [`DEFAULT_MAX_BODY_BYTES`].
    pub fn with_max_body_bytes(mut self, max_body_bytes: usize) -> Scraper {
        self.max_body_bytes = max_body_bytes;
        self
    }

    pub fn config(&self) -> &ScrapeConfig {
        &self.cfg
    }

    /// The `instance` label's value: the URL's `host:port`.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Scrapes once; the readings carry the labels the module doc describes.
    pub async fn scrape(&self) -> Result<Vec<Reading>, ScrapeError> {
        let (format, body) = tokio::time::timeout(self.cfg.timeout, self.fetch())
            .await
            .map_err(|_| ScrapeError::Timeout)??;
        // Timestamps are dropped (module doc), so any default does.
        let exposition = exposition::parse_bytes(&body, format, 0, &self.limits)?;
        let mut out = Vec::with_capacity(exposition.sample_count());
        for (family, sample) in exposition.samples() {
            out.push(Reading {
                series: self.target_labels(&sample.series),
                kind: family.kind(),
                value: sample.value,
            });
        }
        Ok(out)
    }

    async fn fetch(&self) -> Result<(Format, Bytes), ScrapeError> {
        let req = Request::get(self.cfg.url.clone())
            .header(ACCEPT, ACCEPT_HEADER)
            .header(USER_AGENT, &self.user_agent)
            .header(
                "x-prometheus-scrape-timeout-seconds",
                format!("{}", self.cfg.timeout.as_secs_f64()),
            )
            .body(Empty::new())
            .map_err(|e| ScrapeError::Network(format!("cannot build the request: {e}")))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| ScrapeError::Network(error_chain(&e)))?;
        if resp.status() != StatusCode::OK {
            return Err(ScrapeError::Http(resp.status()));
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let format = Format::from_content_type(content_type);
        let body = Limited::new(resp.into_body(), self.max_body_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    ScrapeError::TooLarge
                } else {
                    ScrapeError::Network(error_chain(&*e))
                }
            })?;
        Ok((format, body.to_bytes()))
    }

    /// Adds `instance`, `job` and (if absent) `host`; scraped `instance`/`job` labels move to
    /// `exported_*` names, as Prometheus's `honor_labels: false` does.
    fn target_labels(&self, scraped: &Series) -> Series {
        let mut labels: Vec<Label> = scraped.labels.clone();
        for (name, value) in [("instance", self.instance.as_str()), ("job", JOB)] {
            if let Some(existing) = labels.iter_mut().find(|l| l.name == name) {
                let mut exported = format!("exported_{name}");
                while scraped.label(&exported).is_some() {
                    exported.insert_str(0, "exported_");
                }
                existing.name = exported;
            }
            labels.push(Label::new(name, value));
        }
        if scraped.label("host").is_none() {
            labels.push(Label::new("host", self.hostname.as_str()));
        }
        Series::new(
            scraped.name.as_str(),
            labels.into_iter().map(|l| (l.name, l.value)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper::{HeaderMap, Response};
    use hyper_util::rt::TokioIo;
    use sonde_common::exposition::ParseErrorKind;
    use sonde_common::model::MetricKind;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    /// What the test server answers.
    #[derive(Clone)]
    enum Reply {
        Body(&'static str, Bytes),
        Status(u16),
        Slow(Duration),
    }

    /// Serves `reply` to every request on 127.0.0.1:0; returns the URL and the request headers
    /// seen.
    async fn serve(reply: Reply) -> (Uri, Arc<Mutex<Vec<HeaderMap>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (reply, seen) = (reply.clone(), seen2.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (reply, seen) = (reply.clone(), seen.clone());
                    async move {
                        seen.lock().unwrap().push(req.headers().clone());
                        let mut resp = Response::new(Full::new(Bytes::new()));
                        match reply {
                            Reply::Body(content_type, body) => {
                                *resp.body_mut() = Full::new(body);
                                let ct = content_type.parse().unwrap();
                                resp.headers_mut().insert(CONTENT_TYPE, ct);
                            }
                            Reply::Status(code) => {
                                *resp.status_mut() = StatusCode::from_u16(code).unwrap();
                            }
                            Reply::Slow(delay) => tokio::time::sleep(delay).await,
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                tokio::spawn(
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned(),
                );
            }
        });
        (url.parse().unwrap(), seen)
    }

    fn scraper(url: Uri) -> Scraper {
        let cfg = ScrapeConfig {
            url,
            interval: Duration::from_secs(10),
            timeout: Duration::from_millis(500),
        };
        Scraper::new(cfg, "agent-host")
    }

    const TEXT: &str = r#"# HELP requests_total Requests.
# TYPE requests_total counter
requests_total{code="200"} 10 1395066363000
requests_total{code="500",instance="app-1",job="web"} 2
# TYPE temperature gauge
temperature{host="sensor-7",exported_instance="x"} 21.5
# TYPE latency_seconds histogram
latency_seconds_bucket{le="+Inf"} 3
latency_seconds_sum 1.5
latency_seconds_count 3
"#;

    fn by_series(readings: &[Reading]) -> Vec<(String, MetricKind, f64)> {
        readings
            .iter()
            .map(|r| (r.series.to_string(), r.kind, r.value))
            .collect()
    }

    #[tokio::test]
    async fn scrapes_text_format_and_sets_target_labels() {
        let (url, seen) = serve(Reply::Body(
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from_static(TEXT.as_bytes()),
        ))
        .await;
        let scraper = scraper(url.clone());
        let instance = url.authority().unwrap().as_str().to_owned();
        assert_eq!(scraper.instance(), instance);
        let readings = scraper.scrape().await.unwrap();
        let i = &instance;
        assert_eq!(
            by_series(&readings),
            [
                (
                    format!(
                        r#"requests_total{{code="200",host="agent-host",instance="{i}",job="scrape"}}"#
                    ),
                    MetricKind::Counter,
                    10.0
                ),
                (
                    format!(
                        r#"requests_total{{code="500",exported_instance="app-1",exported_job="web",host="agent-host",instance="{i}",job="scrape"}}"#
                    ),
                    MetricKind::Counter,
                    2.0
                ),
                (
                    format!(
                        r#"temperature{{exported_instance="x",host="sensor-7",instance="{i}",job="scrape"}}"#
                    ),
                    MetricKind::Gauge,
                    21.5
                ),
                (
                    format!(
                        r#"latency_seconds_bucket{{host="agent-host",instance="{i}",job="scrape",le="+Inf"}}"#
                    ),
                    MetricKind::Histogram,
                    3.0
                ),
                (
                    format!(
                        r#"latency_seconds_sum{{host="agent-host",instance="{i}",job="scrape"}}"#
                    ),
                    MetricKind::Histogram,
                    1.5
                ),
                (
                    format!(
                        r#"latency_seconds_count{{host="agent-host",instance="{i}",job="scrape"}}"#
                    ),
                    MetricKind::Histogram,
                    3.0
                ),
            ]
        );
        let limits = Limits::default();
        for r in &readings {
            r.series.validate(&limits).unwrap();
        }
        let headers = seen.lock().unwrap()[0].clone();
        assert_eq!(headers[ACCEPT], ACCEPT_HEADER);
        assert_eq!(headers["x-prometheus-scrape-timeout-seconds"], "0.5");
        assert!(
            headers[USER_AGENT]
                .to_str()
                .unwrap()
                .starts_with("sonde-agent/")
        );
    }

    #[test]
    fn exported_prefixes_stack_when_taken() {
        let s = scraper("http://127.0.0.1:9100/metrics".parse().unwrap());
        let scraped = Series::new("m", [("instance", "a"), ("exported_instance", "b")]);
        let got = s.target_labels(&scraped);
        assert_eq!(got.label("exported_exported_instance"), Some("a"));
        assert_eq!(got.label("exported_instance"), Some("b"));
        assert_eq!(got.label("instance"), Some("127.0.0.1:9100"));
    }

    #[tokio::test]
    async fn scrapes_openmetrics_by_content_type() {
        let body = "# TYPE c counter\nc_total 4 1520879607.789\nc_created 1520430000\n# EOF\n";
        let (url, _) = serve(Reply::Body(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Bytes::from_static(body.as_bytes()),
        ))
        .await;
        let readings = scraper(url).scrape().await.unwrap();
        assert_eq!(readings.len(), 1, "the _created series is skipped");
        assert_eq!(readings[0].series.name, "c_total");
        assert_eq!(readings[0].kind, MetricKind::Counter);
        assert_eq!(readings[0].value, 4.0);
    }

    #[tokio::test]
    async fn http_errors_fail_the_scrape() {
        let (url, _) = serve(Reply::Status(500)).await;
        let err = scraper(url).scrape().await.unwrap_err();
        assert!(matches!(err, ScrapeError::Http(s) if s == 500), "{err}");
        assert_eq!(err.reason(), "http_status");
        assert_eq!(
            err.to_string(),
            "the target answered HTTP 500 Internal Server Error"
        );
    }

    #[tokio::test]
    async fn a_slow_target_times_out() {
        let (url, _) = serve(Reply::Slow(Duration::from_secs(5))).await;
        let started = std::time::Instant::now();
        let err = scraper(url).scrape().await.unwrap_err();
        assert!(matches!(err, ScrapeError::Timeout), "{err}");
        assert_eq!(err.reason(), "timeout");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn an_oversized_body_is_refused() {
        let big = Bytes::from(format!("m 1\n{}", "# padding\n".repeat(200)));
        let (url, _) = serve(Reply::Body("text/plain", big.clone())).await;
        let err = scraper(url.clone())
            .with_max_body_bytes(1024)
            .scrape()
            .await
            .unwrap_err();
        assert!(matches!(err, ScrapeError::TooLarge), "{err}");
        assert_eq!(err.reason(), "too_large");
        // The same body fits a larger limit.
        let ok = scraper(url).with_max_body_bytes(big.len()).scrape().await;
        assert_eq!(ok.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn garbage_is_a_parse_error_with_its_line() {
        let body = Bytes::from_static(b"good 1\nthis is not an exposition\n");
        let (url, _) = serve(Reply::Body("text/plain", body)).await;
        let err = scraper(url).scrape().await.unwrap_err();
        let ScrapeError::Parse(parse) = &err else {
            panic!("not a parse error: {err}");
        };
        assert_eq!(parse.line, 2);
        assert_eq!(parse.kind, ParseErrorKind::InvalidValue);
        assert_eq!(err.reason(), "parse");
        assert_eq!(
            err.to_string(),
            "the exposition is invalid: line 2: the sample's value is not a number"
        );
        // OpenMetrics without its final '# EOF' is incomplete, hence refused.
        let body = Bytes::from_static(b"m 1\n");
        let (url, _) = serve(Reply::Body("application/openmetrics-text", body)).await;
        let err = scraper(url).scrape().await.unwrap_err();
        assert!(matches!(&err, ScrapeError::Parse(p) if p.kind == ParseErrorKind::MissingEof));
    }

    #[tokio::test]
    async fn nobody_listening_is_a_network_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        drop(listener);
        let err = scraper(url.parse().unwrap()).scrape().await.unwrap_err();
        assert!(matches!(err, ScrapeError::Network(_)), "{err}");
        assert_eq!(err.reason(), "network");
    }
}
