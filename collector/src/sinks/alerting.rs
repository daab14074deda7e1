//! The alerting fast path across processes (`--alerting URL`): a fleet collector forwards to a
//! separate alerting instance only the samples its threshold rules want.
//!
//! The alerting instance publishes the selectors of its plain-threshold rules per tenant at
//! `GET /api/v1/alerting/selectors`; this sink polls them every [`POLL_INTERVAL`], and for every
//! batch the route has made durable, picks the samples that match (an index by metric name keeps
//! the cost of a non-matching sample at one hash lookup), and posts them as a native batch to
//! `POST /api/v1/alerting/samples` with the tenant in `X-Scope-OrgID`.
//!
//! Best effort by design: the samples are already durable in storage and the alerting
//! instance's query-based evaluation, the source of truth, sees them at its next evaluation. So
//! this sink never slows ingest: a full channel drops the forward (counted, logged), and a
//! failed post is retried briefly and then dropped (counted, logged).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sonde_common::telemetry::{Counter, Gauge, LabeledCounter, TextEncoder};
use sonde_common::wire::{self, Batch, BatchBuilder, Compression};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::Matcher;

/// How often the wanted selectors are fetched again.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Forwards waiting to be posted; beyond it new ones are dropped.
const CHANNEL: usize = 1024;
/// Attempts per post before the forward is dropped.
const ATTEMPTS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(5);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// One tenant's selectors, indexed by the metric name they require (if any).
#[derive(Default)]
struct TenantSelectors {
    by_name: HashMap<String, Vec<Vec<Matcher>>>,
    /// Selectors without a fixed metric name: checked against every sample.
    any_name: Vec<Vec<Matcher>>,
    count: usize,
}

impl TenantSelectors {
    fn add(&mut self, matchers: Vec<Matcher>) {
        self.count += 1;
        let name = matchers.iter().find_map(|m| match &m.op {
            crate::store::MatchOp::Equal(v) if m.name == "__name__" => Some(v.clone()),
            _ => None,
        });
        match name {
            Some(n) => self.by_name.entry(n).or_default().push(matchers),
            None => self.any_name.push(matchers),
        }
    }

    fn wants(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        let check = |ms: &Vec<Matcher>| {
            ms.iter().all(|m| {
                let v = if m.name == "__name__" {
                    name
                } else {
                    labels
                        .iter()
                        .find(|(k, _)| *k == m.name)
                        .map_or("", |(_, v)| v)
                };
                m.matches(v)
            })
        };
        self.by_name.get(name).is_some_and(|v| v.iter().any(check))
            || self.any_name.iter().any(check)
    }
}

struct Stats {
    forwarded_samples: Counter,
    dropped_samples: LabeledCounter,
    posts_failed: Counter,
    polls_failed: Counter,
    selectors: Gauge,
}

/// Forwards matching samples to the alerting instance at `base`.
#[derive(Clone)]
pub struct AlertingForwarder {
    selectors: Arc<RwLock<HashMap<String, TenantSelectors>>>,
    tx: mpsc::Sender<(String, Batch)>,
    stats: Arc<Stats>,
}

impl AlertingForwarder {
    /// Starts the selector poller and the sender; both stop on `shutdown`.
    pub fn start(base: hyper::Uri, token: Option<String>, shutdown: CancellationToken) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(TIMEOUT));
        let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);
        let base = base.to_string().trim_end_matches('/').to_owned();
        let stats = Arc::new(Stats {
            forwarded_samples: Counter::default(),
            dropped_samples: LabeledCounter::new("reason"),
            posts_failed: Counter::default(),
            polls_failed: Counter::default(),
            selectors: Gauge::default(),
        });
        let selectors: Arc<RwLock<HashMap<String, TenantSelectors>>> = Arc::default();
        let (tx, rx) = mpsc::channel(CHANNEL);
        tokio::spawn(poll(
            client.clone(),
            base.clone(),
            token.clone(),
            Arc::clone(&selectors),
            Arc::clone(&stats),
            shutdown.clone(),
        ));
        tokio::spawn(send(client, base, token, rx, Arc::clone(&stats), shutdown));
        AlertingForwarder {
            selectors,
            tx,
            stats,
        }
    }

    /// Picks the samples of `batch` the alerting instance wants and queues them; never waits.
    pub fn offer(&self, tenant: &str, batch: &Batch) {
        let Ok(all) = self.selectors.read() else {
            return;
        };
        let Some(wanted) = all.get(tenant) else {
            return;
        };
        let mut out: Option<BatchBuilder> = None;
        let mut labels: Vec<(&str, &str)> = Vec::new();
        for s in batch.iter() {
            labels.clear();
            labels.extend(s.labels());
            if !wanted.wants(s.name(), &labels) {
                continue;
            }
            out.get_or_insert_with(|| BatchBuilder::new(batch.header.clone()))
                .push(&s.to_series(), s.kind(), s.start_ms(), s.samples().to_vec());
        }
        drop(all);
        let Some(out) = out else { return };
        let out = out.build();
        let n = out.sample_count() as u64;
        if self.tx.try_send((tenant.to_owned(), out)).is_err() {
            self.stats.dropped_samples.add("queue_full", n);
            tracing::warn!(
                samples = n,
                "alerting fast path: forward queue full, samples dropped (query evaluation still sees them)"
            );
        }
    }

    pub fn render_metrics(&self, e: &mut TextEncoder) {
        e.counter(
            "sonde_collector_alerting_forwarded_samples_total",
            "Samples forwarded to the alerting instance's fast path.",
            &self.stats.forwarded_samples,
        );
        e.labeled_counter(
            "sonde_collector_alerting_forward_dropped_samples_total",
            "Samples not forwarded to the alerting instance, by reason (query evaluation still sees them).",
            &self.stats.dropped_samples,
        );
        e.counter(
            "sonde_collector_alerting_forward_failures_total",
            "Posts to the alerting instance that failed after retries.",
            &self.stats.posts_failed,
        );
        e.counter(
            "sonde_collector_alerting_selector_poll_failures_total",
            "Failed fetches of the alerting instance's selectors.",
            &self.stats.polls_failed,
        );
        e.gauge(
            "sonde_collector_alerting_selectors",
            "Selectors the alerting instance wants forwarded (all tenants).",
            self.stats.selectors.get(),
        );
    }
}

impl crate::route::SampleTap for AlertingForwarder {
    fn offer(&self, tenant: &str, batch: &Batch) {
        AlertingForwarder::offer(self, tenant, batch);
    }
}

fn request(
    method: hyper::Method,
    url: &str,
    token: Option<&str>,
    tenant: &str,
    body: Bytes,
) -> Option<hyper::Request<Full<Bytes>>> {
    let mut req = hyper::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {t}"));
    }
    if !tenant.is_empty() {
        req = req.header("X-Scope-OrgID", tenant);
    }
    req.body(Full::new(body)).ok()
}

/// Parses the selectors answer: `{"status":"success","data":{"<tenant>":["sel", ...]}}`.
fn parse_selectors(body: &[u8]) -> Result<HashMap<String, TenantSelectors>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let data = v["data"]
        .as_object()
        .ok_or_else(|| "no `data` object".to_owned())?;
    let mut out = HashMap::new();
    for (tenant, list) in data {
        let mut t = TenantSelectors::default();
        for sel in list.as_array().into_iter().flatten() {
            let Some(text) = sel.as_str() else { continue };
            match crate::query::eval::series_selector(text) {
                Ok(m) => t.add(m),
                Err(e) => {
                    tracing::warn!(selector = text, error = %e, "alerting fast path: ignoring a selector")
                }
            }
        }
        out.insert(tenant.clone(), t);
    }
    Ok(out)
}

async fn poll(
    client: HttpClient,
    base: String,
    token: Option<String>,
    selectors: Arc<RwLock<HashMap<String, TenantSelectors>>>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let url = format!("{base}/api/v1/alerting/selectors");
    let mut failing = false;
    loop {
        let result = async {
            let req = request(hyper::Method::GET, &url, token.as_deref(), "", Bytes::new())
                .ok_or("bad request")?;
            let resp = tokio::time::timeout(TIMEOUT, client.request(req))
                .await
                .map_err(|_| "timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !status.is_success() {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
            }
            parse_selectors(&body)
        }
        .await;
        match result {
            Ok(new) => {
                let count: usize = new.values().map(|t| t.count).sum();
                stats.selectors.set(count as f64);
                if let Ok(mut s) = selectors.write() {
                    *s = new;
                }
                if failing {
                    tracing::info!(url, "alerting fast path: selectors fetched again");
                }
                failing = false;
            }
            Err(e) => {
                stats.polls_failed.inc();
                if !failing {
                    tracing::warn!(url, error = %e, "alerting fast path: cannot fetch selectors; keeping the last ones");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn send(
    client: HttpClient,
    base: String,
    token: Option<String>,
    mut rx: mpsc::Receiver<(String, Batch)>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let url = format!("{base}/api/v1/alerting/samples");
    loop {
        let (tenant, batch) = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            _ = shutdown.cancelled() => return,
        };
        let n = batch.sample_count() as u64;
        let body = match wire::encode(&batch, Compression::Zstd) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                stats.dropped_samples.add("encode", n);
                tracing::warn!(error = %e, "alerting fast path: cannot encode a forward");
                continue;
            }
        };
        let mut last_error = String::new();
        let mut sent = false;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            let Some(mut req) = request(
                hyper::Method::POST,
                &url,
                token.as_deref(),
                &tenant,
                body.clone(),
            ) else {
                break;
            };
            req.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(wire::CONTENT_TYPE),
            );
            req.headers_mut().insert(
                CONTENT_ENCODING,
                hyper::header::HeaderValue::from_static("zstd"),
            );
            match tokio::time::timeout(TIMEOUT, client.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => {
                    sent = true;
                    break;
                }
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    last_error = status.to_string();
                    // Other 4xx will not get better by retrying.
                    if status.is_client_error() && status.as_u16() != 429 {
                        break;
                    }
                }
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = "timed out".into(),
            }
        }
        if sent {
            stats.forwarded_samples.add(n);
        } else {
            stats.posts_failed.inc();
            stats.dropped_samples.add("post_failed", n);
            tracing::warn!(url, samples = n, error = %last_error, "alerting fast path: forward dropped (query evaluation still sees the samples)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::model::{MetricKind, Sample, Series};
    use sonde_common::wire::BatchHeader;

    fn batch(series: &[(&str, &[(&str, &str)])]) -> Batch {
        let mut b = BatchBuilder::new(BatchHeader {
            agent_id: "t".into(),
            sequence: 1,
            sent_at_ms: 1,
        });
        for (name, labels) in series {
            b.push(
                &Series::new(*name, labels.iter().copied()),
                MetricKind::Gauge,
                None,
                vec![Sample::new(1, 1.0)],
            );
        }
        b.build()
    }

    #[test]
    fn selectors_parse_per_tenant_and_pick_matching_series_only() {
        let body = br#"{"status":"success","data":{"acme":["cpu{host=~\"a.*\"}","{job=\"x\"}","not a selector ("],"other":["mem"]}}"#;
        let map = parse_selectors(body).unwrap();
        let acme = &map["acme"];
        assert_eq!(acme.count, 2, "the broken selector is skipped");
        assert!(acme.wants("cpu", &[("host", "ab")]));
        assert!(!acme.wants("cpu", &[("host", "ba")]));
        assert!(acme.wants("anything", &[("job", "x")]));
        assert!(!acme.wants("mem", &[]));
        assert!(map["other"].wants("mem", &[("host", "z")]));
        assert!(parse_selectors(b"nope").is_err());
    }

    #[tokio::test]
    async fn offer_forwards_only_what_a_tenant_wants() {
        let shutdown = CancellationToken::new();
        // Nothing listens here: posts fail and are counted, offers never block.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let f = AlertingForwarder::start(
            format!("http://127.0.0.1:{port}").parse().unwrap(),
            None,
            shutdown.clone(),
        );
        *f.selectors.write().unwrap() =
            parse_selectors(br#"{"data":{"acme":["cpu{host=\"a\"}"]}}"#).unwrap();
        // Another tenant's and non-matching samples are not queued at all.
        f.offer("globex", &batch(&[("cpu", &[("host", "a")])]));
        f.offer("acme", &batch(&[("cpu", &[("host", "b")]), ("mem", &[])]));
        assert_eq!(f.tx.capacity(), CHANNEL);
        for _ in 0..CHANNEL + 10 {
            f.offer("acme", &batch(&[("cpu", &[("host", "a")])]));
        }
        assert!(f.stats.dropped_samples.get("queue_full") >= 1);
        shutdown.cancel();
    }
}
