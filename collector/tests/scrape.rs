//! The scrape engine in-process against small HTTP servers on 127.0.0.1: samples reach the
//! sink with job/instance labels, `up` tells live from dead targets, a target removed from a
//! file_sd file gets staleness markers, sample_limit fails the scrape, and two pool members
//! split the targets without overlap.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sonde_collector::scrape::config::{ScrapeConfigFile, parse};
use sonde_collector::scrape::pool::{Alone, Membership};
use sonde_collector::scrape::{ScrapeManager, ScrapeManagerOptions, ScrapeSink};
use sonde_common::model::{MetricKind, Series};
use sonde_common::wire::Batch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// A `/metrics` endpoint that counts its scrapes.
struct Endpoint {
    addr: String,
    hits: Arc<AtomicUsize>,
}

async fn endpoint(body: &str) -> Endpoint {
    endpoint_with("text/plain; version=0.0.4", body).await
}

async fn endpoint_with(content_type: &'static str, body: &str) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let body = body.to_owned();
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Endpoint { addr, hits }
}

/// An address nothing listens on.
async fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

#[derive(Default)]
struct Recorder {
    points: Mutex<Vec<(Series, i64, f64)>>,
    kinds: Mutex<Vec<(String, MetricKind)>>,
}

impl ScrapeSink for Recorder {
    fn write<'a>(
        &'a self,
        _tenant: &'a str,
        batch: &'a Batch,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let mut points = self.points.lock().unwrap();
            let mut kinds = self.kinds.lock().unwrap();
            for s in batch.iter() {
                kinds.push((s.name().to_owned(), s.kind()));
                for sample in s.samples() {
                    points.push((s.to_series(), sample.timestamp_ms, sample.value));
                }
            }
            Ok(())
        })
    }
}

impl Recorder {
    fn find(&self, name: &str, instance: &str) -> Vec<f64> {
        self.points
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _, _)| s.name == name && s.label("instance") == Some(instance))
            .map(|(_, _, v)| *v)
            .collect()
    }

    fn instances(&self) -> HashSet<String> {
        self.points
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(s, _, _)| s.label("instance").map(str::to_owned))
            .collect()
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(text: &str, dir: Option<&Path>) -> ScrapeConfigFile {
    parse("test.yml", text, dir).unwrap()
}

fn start(
    cfg: ScrapeConfigFile,
    membership: Arc<dyn Membership>,
) -> (ScrapeManager, Arc<Recorder>, CancellationToken) {
    let sink = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let manager = ScrapeManager::start(
        ScrapeManagerOptions {
            config: cfg,
            default_etcd: Vec::new(),
            tenant: String::new(),
            replicas: 1,
        },
        membership,
        sink.clone(),
        shutdown.clone(),
    );
    (manager, sink, shutdown)
}

async fn stop(manager: ScrapeManager, shutdown: CancellationToken) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), manager.stopped())
        .await
        .expect("the manager stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_and_dead_targets() {
    let live = endpoint("# TYPE requests counter\nrequests_total{path=\"/\"} 7\n").await;
    let dead = dead_address().await;
    let cfg = config(
        &format!(
            "scrape_configs:\n  - job_name: web\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['{}', '{dead}']\n",
            live.addr
        ),
        None,
    );
    let (manager, sink, shutdown) = start(cfg, Arc::new(Alone::new("http://me")));
    eventually("up for both targets", || {
        !sink.find("up", &live.addr).is_empty() && !sink.find("up", &dead).is_empty()
    })
    .await;
    assert_eq!(sink.find("up", &live.addr)[0], 1.0);
    assert_eq!(sink.find("up", &dead)[0], 0.0);
    assert_eq!(sink.find("requests_total", &live.addr)[0], 7.0);
    let points = sink.points.lock().unwrap().clone();
    let (series, _, _) = points
        .iter()
        .find(|(s, _, _)| s.name == "requests_total")
        .unwrap();
    assert_eq!(series.label("job"), Some("web"));
    assert_eq!(series.label("path"), Some("/"));
    assert_eq!(sink.find("scrape_samples_scraped", &live.addr)[0], 1.0);
    assert!(live.hits.load(Ordering::SeqCst) >= 1);

    let data = manager.targets_json();
    let active = data["activeTargets"].as_array().unwrap();
    assert_eq!(active.len(), 2);
    for t in active {
        assert_eq!(t["scrapePool"], "web");
        assert_eq!(t["owner"], "http://me");
        let want = if t["labels"]["instance"] == live.addr.as_str() {
            "up"
        } else {
            "down"
        };
        assert_eq!(t["health"], want, "{t}");
    }
    let down = active.iter().find(|t| t["health"] == "down").unwrap();
    assert!(!down["lastError"].as_str().unwrap().is_empty());
    let mut enc = sonde_common::telemetry::TextEncoder::new();
    manager.render_metrics(&mut enc);
    let text = enc.finish();
    assert!(text.contains("sonde_collector_scrapes_total"), "{text}");
    stop(manager, shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_removed_from_file_sd_goes_stale() {
    let a = endpoint("g 1\n").await;
    let b = endpoint("g 2\n").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.json");
    std::fs::write(
        &file,
        format!(
            r#"[{{"targets": ["{}", "{}"], "labels": {{"team": "x"}}}}]"#,
            a.addr, b.addr
        ),
    )
    .unwrap();
    let cfg = config(
        "scrape_configs:\n  - job_name: f\n    scrape_interval: 1s\n    file_sd_configs:\n      - files: [targets.json]\n",
        Some(dir.path()),
    );
    let (manager, sink, shutdown) = start(cfg, Arc::new(Alone::new("http://me")));
    eventually("samples from both targets", || {
        !sink.find("g", &a.addr).is_empty() && !sink.find("g", &b.addr).is_empty()
    })
    .await;
    std::fs::write(
        &file,
        format!(
            r#"[{{"targets": ["{}"], "labels": {{"team": "x"}}}}]"#,
            a.addr
        ),
    )
    .unwrap();
    eventually("stale markers for the removed target", || {
        sink.find("g", &b.addr)
            .iter()
            .any(|v| v.to_bits() == STALE_NAN_BITS)
            && sink
                .find("up", &b.addr)
                .iter()
                .any(|v| v.to_bits() == STALE_NAN_BITS)
    })
    .await;
    // The kept target is not stale.
    assert!(
        sink.find("g", &a.addr)
            .iter()
            .all(|v| v.to_bits() != STALE_NAN_BITS)
    );
    let hits = b.hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        hits,
        "the removed target is not scraped"
    );
    let data = manager.targets_json();
    assert_eq!(data["activeTargets"].as_array().unwrap().len(), 1);
    stop(manager, shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_limit_fails_the_scrape() {
    let t = endpoint("a 1\nb 2\nc 3\n").await;
    let cfg = config(
        &format!(
            "scrape_configs:\n  - job_name: l\n    scrape_interval: 1s\n    sample_limit: 2\n    static_configs:\n      - targets: ['{}']\n",
            t.addr
        ),
        None,
    );
    let (manager, sink, shutdown) = start(cfg, Arc::new(Alone::new("http://me")));
    eventually("up", || !sink.find("up", &t.addr).is_empty()).await;
    assert_eq!(sink.find("up", &t.addr)[0], 0.0);
    assert!(
        sink.find("a", &t.addr).is_empty(),
        "nothing of the scrape is stored"
    );
    let data = manager.targets_json();
    let err = data["activeTargets"][0]["lastError"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(err.contains("sample limit"), "{err}");
    stop(manager, shutdown).await;
}

/// A fixed pool.
struct StaticPool {
    me: String,
    members: watch::Sender<Vec<String>>,
}

impl StaticPool {
    fn new(me: &str, members: &[&str]) -> StaticPool {
        let (members, _) = watch::channel(members.iter().map(|m| m.to_string()).collect());
        StaticPool {
            me: me.to_owned(),
            members,
        }
    }
}

impl Membership for StaticPool {
    fn me(&self) -> &str {
        &self.me
    }
    fn members(&self) -> watch::Receiver<Vec<String>> {
        self.members.subscribe()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_the_targets() {
    let mut endpoints = Vec::new();
    for i in 0..12 {
        endpoints.push(endpoint(&format!("v {i}\n")).await);
    }
    let list = endpoints
        .iter()
        .map(|e| format!("'{}'", e.addr))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "scrape_configs:\n  - job_name: pool\n    scrape_interval: 1s\n    static_configs:\n      - targets: [{list}]\n"
    );
    let members = ["http://one", "http://two"];
    let (m1, s1, d1) = start(
        config(&text, None),
        Arc::new(StaticPool::new(members[0], &members)),
    );
    let (m2, s2, d2) = start(
        config(&text, None),
        Arc::new(StaticPool::new(members[1], &members)),
    );
    let all: HashSet<String> = endpoints.iter().map(|e| e.addr.clone()).collect();
    eventually("every target scraped by someone", || {
        s1.instances()
            .union(&s2.instances())
            .cloned()
            .collect::<HashSet<_>>()
            == all
    })
    .await;
    // Two more intervals: still no overlap.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (one, two) = (s1.instances(), s2.instances());
    assert!(one.is_disjoint(&two), "{one:?} and {two:?} overlap");
    assert!(!one.is_empty() && !two.is_empty(), "{one:?} / {two:?}");
    for e in &endpoints {
        assert!(e.hits.load(Ordering::SeqCst) >= 1);
    }
    // Both list every target, with the same owner for each.
    let owners = |m: &ScrapeManager| -> BTreeSet<(String, String)> {
        m.targets_json()["activeTargets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["labels"]["instance"].as_str().unwrap().to_owned(),
                    t["owner"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let (o1, o2) = (owners(&m1), owners(&m2));
    assert_eq!(o1.len(), 12);
    assert_eq!(o1, o2);
    for (instance, owner) in &o1 {
        let scraper = if one.contains(instance) {
            members[0]
        } else {
            members[1]
        };
        assert_eq!(owner, scraper, "{instance}");
    }
    let unknown = m1.targets_json()["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["health"] == "unknown")
        .count();
    assert_eq!(unknown, 12 - one.len());
    stop(m1, d1).await;
    stop(m2, d2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_over_when_a_member_joins() {
    let mut endpoints = Vec::new();
    for i in 0..12 {
        endpoints.push(endpoint(&format!("v {i}\n")).await);
    }
    let list = endpoints
        .iter()
        .map(|e| format!("'{}'", e.addr))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "scrape_configs:\n  - job_name: pool\n    scrape_interval: 1s\n    static_configs:\n      - targets: [{list}]\n"
    );
    let pool1 = Arc::new(StaticPool::new("http://one", &["http://one"]));
    let (m1, s1, d1) = start(config(&text, None), pool1.clone());
    let all: HashSet<String> = endpoints.iter().map(|e| e.addr.clone()).collect();
    eventually("the lone member scrapes everything", || {
        s1.instances() == all
    })
    .await;

    // A second member joins.
    let both = ["http://one", "http://two"];
    let (m2, s2, d2) = start(
        config(&text, None),
        Arc::new(StaticPool::new(both[1], &both)),
    );
    eventually("the new member lists every target", || {
        m2.targets_json()["activeTargets"]
            .as_array()
            .is_some_and(|a| a.len() == 12)
    })
    .await;
    let joined_ms = sonde_common::model::now_ms();
    pool1
        .members
        .send_replace(both.iter().map(|m| m.to_string()).collect());
    let moved: Vec<String> = m2.targets_json()["activeTargets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["owner"] == both[1])
        .map(|t| t["labels"]["instance"].as_str().unwrap().to_owned())
        .collect();
    assert!(!moved.is_empty() && moved.len() < 12, "{moved:?}");
    let stale_of = |s: &Recorder, instance: &str| -> Option<i64> {
        s.points
            .lock()
            .unwrap()
            .iter()
            .filter(|(series, _, v)| {
                series.name == "v"
                    && series.label("instance") == Some(instance)
                    && v.to_bits() == STALE_NAN_BITS
            })
            .map(|(_, ts, _)| *ts)
            .next()
    };
    let last_of = |s: &Recorder, instance: &str| -> Option<i64> {
        s.points
            .lock()
            .unwrap()
            .iter()
            .filter(|(series, _, v)| {
                series.name == "v"
                    && series.label("instance") == Some(instance)
                    && v.to_bits() != STALE_NAN_BITS
            })
            .map(|(_, ts, _)| *ts)
            .max()
    };
    // The old owner keeps scraping the moved targets for one more interval, then stops.
    eventually(
        "the old owner scraped the moved targets after the join",
        || {
            moved
                .iter()
                .all(|i| last_of(&s1, i).is_some_and(|ts| ts > joined_ms))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let settled_ms = sonde_common::model::now_ms();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for instance in &moved {
        let last_old = last_of(&s1, instance).unwrap();
        assert!(
            last_old < settled_ms,
            "{instance}: the old owner still scrapes it {}ms after the join",
            last_old - joined_ms
        );
        // A quiet hand-over: no stale markers, the series continues under the new owner.
        assert!(
            stale_of(&s1, instance).is_none(),
            "{instance}: marked stale"
        );
        // The new owner scraped it by the old owner's last slot (both scrape the same slots,
        // a few milliseconds apart): no gap.
        let first_new = s2
            .points
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _, _)| s.name == "v" && s.label("instance") == Some(instance.as_str()))
            .map(|(_, ts, _)| *ts)
            .min();
        assert!(
            first_new.is_some_and(|ts| ts <= last_old + 500),
            "{instance}: a gap between the owners"
        );
    }
    // Targets that stayed are not stale at the old owner.
    for instance in all.iter().filter(|i| !moved.contains(i)) {
        assert!(stale_of(&s1, instance).is_none(), "{instance}");
    }
    // Once the hand-over is over, the old owner lists the moved targets under the new one.
    eventually("the old owner's view shows the new owners", || {
        let owned_by_one = m1.targets_json()["activeTargets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["owner"] == both[0])
            .count();
        owned_by_one == 12 - moved.len()
    })
    .await;
    stop(m1, d1).await;
    stop(m2, d2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_changed_jobs_quiet_and_ends_removed_ones() {
    let a = endpoint("x 1\n").await;
    let b = endpoint("y 1\n").await;
    let text = |interval: &str, with_b: bool| {
        let mut t = format!(
            "scrape_configs:\n  - job_name: a\n    scrape_interval: {interval}\n    static_configs: [{{targets: ['{}']}}]\n",
            a.addr
        );
        if with_b {
            t.push_str(&format!(
                "  - job_name: b\n    scrape_interval: 1s\n    static_configs: [{{targets: ['{}']}}]\n",
                b.addr
            ));
        }
        t
    };
    let (manager, sink, shutdown) = start(
        config(&text("1s", true), None),
        Arc::new(Alone::new("http://me")),
    );
    eventually("both jobs scraped", || {
        !sink.find("x", &a.addr).is_empty() && !sink.find("y", &b.addr).is_empty()
    })
    .await;
    // Job a changes (same target labels), job b goes.
    manager.reload(config(&text("2s", false), None));
    eventually("stale markers for job b", || {
        sink.find("y", &b.addr)
            .iter()
            .any(|v| v.to_bits() == STALE_NAN_BITS)
    })
    .await;
    let before = sink.find("x", &a.addr).len();
    eventually("job a scraped again", || {
        sink.find("x", &a.addr).len() > before
    })
    .await;
    assert!(
        sink.find("x", &a.addr)
            .iter()
            .all(|v| v.to_bits() != STALE_NAN_BITS),
        "a changed job restarts without stale markers"
    );
    let data = manager.targets_json();
    let active = data["activeTargets"].as_array().unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["scrapeInterval"], "2s");
    stop(manager, shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_size_limit_fails_the_scrape() {
    let t = endpoint("a_long_metric_name_here 1\n").await;
    let cfg = config(
        &format!(
            "scrape_configs:\n  - job_name: l\n    scrape_interval: 1s\n    body_size_limit: 10B\n    static_configs:\n      - targets: ['{}']\n",
            t.addr
        ),
        None,
    );
    let (manager, sink, shutdown) = start(cfg, Arc::new(Alone::new("http://me")));
    eventually("up", || !sink.find("up", &t.addr).is_empty()).await;
    assert_eq!(sink.find("up", &t.addr)[0], 0.0);
    let err = manager.targets_json()["activeTargets"][0]["lastError"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(err.contains("body size limit"), "{err}");
    stop(manager, shutdown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmetrics_types_and_timestamps() {
    let t = endpoint_with(
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        "# TYPE jobs counter\njobs_total 3 1700000000.5\n# TYPE lat histogram\n\
         lat_bucket{le=\"+Inf\"} 2\nlat_sum 1.5\nlat_count 2\n# EOF\n",
    )
    .await;
    let cfg = config(
        &format!(
            "scrape_configs:\n  - job_name: om\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['{}']\n",
            t.addr
        ),
        None,
    );
    let (manager, sink, shutdown) = start(cfg, Arc::new(Alone::new("http://me")));
    eventually("up", || !sink.find("up", &t.addr).is_empty()).await;
    assert_eq!(sink.find("up", &t.addr)[0], 1.0);
    let points = sink.points.lock().unwrap().clone();
    let (_, ts, v) = points
        .iter()
        .find(|(s, _, _)| s.name == "jobs_total")
        .unwrap();
    assert_eq!((*ts, *v), (1_700_000_000_500, 3.0));
    let kinds = sink.kinds.lock().unwrap().clone();
    let kind = |name: &str| kinds.iter().find(|(n, _)| n == name).map(|(_, k)| *k);
    assert_eq!(kind("jobs_total"), Some(MetricKind::Counter));
    assert_eq!(kind("lat_bucket"), Some(MetricKind::Histogram));
    assert_eq!(kind("up"), Some(MetricKind::Gauge));
    stop(manager, shutdown).await;
}
