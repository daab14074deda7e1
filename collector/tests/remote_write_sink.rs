//! The remote-write sink against real storages on 127.0.0.1: VictoriaMetrics
//! (`/usr/bin/victoria-metrics`) and Prometheus 2.42 with its remote-write receiver
//! (`/usr/bin/prometheus`), both from Debian's archive. Batches go through the sink's queue and
//! sender; the test reads every sample back through each storage's query API. Also: a storage
//! that starts late (the sink retries, then delivers everything), a storage answering 400 (a
//! tiny in-process server: dropped and counted, never retried), and a sink restarted with
//! records still queued.
//!
//! Every process a test starts is killed by its PID when the test ends, failed or not.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sonde_collector::queue::{FsyncPolicy, QueueConfig};
use sonde_collector::sinks::remote_write::{DirectConfig, RemoteWriteConfig, RemoteWriteSink};
use sonde_common::model::{MetricKind, Sample, Series, now_ms};
use sonde_common::remote_write;
use sonde_common::wire::{Batch, BatchBuilder, BatchHeader};
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const VICTORIA_METRICS: &str = "/usr/bin/victoria-metrics";
const PROMETHEUS: &str = "/usr/bin/prometheus";

// ---------------------------------------------------------------------------------------------
// Processes

/// A storage process, killed (by PID) and reaped when dropped, so a failing test leaves
/// nothing running. Its output goes to a log file, printed if it does not become ready.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
    port: u16,
    _data: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn spawn(
        name: &'static str,
        bin: &str,
        args: &[String],
        port: u16,
        data: tempfile::TempDir,
    ) -> Daemon {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: install Debian's {name} package (.ci/test does)"
        );
        let log = data.path().join("output.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        Daemon {
            name,
            child,
            log,
            port,
            _data: data,
        }
    }

    async fn wait_ready(&mut self, path: &str) {
        for _ in 0..300 {
            if let Ok((200, _)) = get(self.port, path).await {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{} not ready after 30 s:\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Kills the process (SIGKILL) and hands back its data directory, for a restart.
    fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self._data, tempfile::tempdir().unwrap())
    }

    fn write_url(&self) -> hyper::Uri {
        format!("http://127.0.0.1:{}/api/v1/write", self.port)
            .parse()
            .unwrap()
    }
}

async fn victoria_metrics(port: u16) -> Daemon {
    let data = tempfile::tempdir().unwrap();
    let args = vec![
        format!("-storageDataPath={}", data.path().join("vm").display()),
        format!("-httpListenAddr=127.0.0.1:{port}"),
        "-search.latencyOffset=0s".to_owned(),
    ];
    let mut d = Daemon::spawn("victoria-metrics", VICTORIA_METRICS, &args, port, data);
    d.wait_ready("/health").await;
    d
}

async fn prometheus(port: u16) -> Daemon {
    prometheus_in(port, tempfile::tempdir().unwrap()).await
}

/// Prometheus on `port` with its data in `data` (a restart keeps what it stored).
async fn prometheus_in(port: u16, data: tempfile::TempDir) -> Daemon {
    let config = data.path().join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1m\n").unwrap();
    let args = vec![
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", data.path().join("tsdb").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--web.enable-remote-write-receiver".to_owned(),
    ];
    let mut d = Daemon::spawn("prometheus", PROMETHEUS, &args, port, data);
    d.wait_ready("/-/ready").await;
    d
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET over HTTP/1.0: (status, body).
async fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

fn encode_query(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Data

/// (series with `__name__`, timestamp ms, value): what a storage should hold.
type Point = (BTreeMap<String, String>, i64, u64);

/// Three batches of four series (two counters, two gauges), two samples per series each,
/// over the last few minutes; metric names start with `prefix`.
fn batches(prefix: &str) -> Vec<Batch> {
    batches_n(prefix, 3)
}

/// `n` batches like [`batches`]: each batch's samples follow the previous batch's, the last
/// ones a minute ago.
fn batches_n(prefix: &str, n: u64) -> Vec<Batch> {
    let base = now_ms() - n as i64 * 30_000 - 60_000;
    let series = [
        (
            format!("{prefix}_requests_total"),
            vec![("host", "h1"), ("method", "GET")],
            MetricKind::Counter,
        ),
        (
            format!("{prefix}_requests_total"),
            vec![("host", "h1"), ("method", "POST")],
            MetricKind::Counter,
        ),
        (
            format!("{prefix}_temperature_celsius"),
            vec![("host", "h1"), ("sensor", "cpu"), ("zone", "eu-1")],
            MetricKind::Gauge,
        ),
        (
            format!("{prefix}_up"),
            vec![("host", "h2")],
            MetricKind::Gauge,
        ),
    ];
    (0..n)
        .map(|b| {
            let mut builder = BatchBuilder::new(BatchHeader {
                agent_id: "rw-test".into(),
                sequence: b,
                sent_at_ms: now_ms(),
            });
            for (i, (name, labels, kind)) in series.iter().enumerate() {
                let samples = (0..2)
                    .map(|k| {
                        let step = (b * 2 + k) as i64;
                        let value = match kind {
                            MetricKind::Counter => (step * 10 + i as i64) as f64,
                            _ => 20.5 + step as f64 * 0.25 - i as f64,
                        };
                        Sample::new(base + step * 15_000, value)
                    })
                    .collect();
                builder.push(
                    &Series::new(name.as_str(), labels.iter().copied()),
                    *kind,
                    None,
                    samples,
                );
            }
            builder.build()
        })
        .collect()
}

fn expected(batches: &[Batch]) -> BTreeSet<Point> {
    let mut out = BTreeSet::new();
    for batch in batches {
        for view in batch.iter() {
            let mut labels: BTreeMap<String, String> = view
                .labels()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect();
            labels.insert("__name__".to_owned(), view.name().to_owned());
            for s in view.samples() {
                out.insert((labels.clone(), s.timestamp_ms, s.value.to_bits()));
            }
        }
    }
    out
}

fn sample_count(batches: &[Batch]) -> u64 {
    batches.iter().map(|b| b.sample_count() as u64).sum()
}

/// Every sample of the series whose name starts with `prefix`, read back with a range
/// selector through the Prometheus query API.
async fn stored(port: u16, prefix: &str) -> BTreeSet<Point> {
    let q = format!("{{__name__=~\"{prefix}_.*\"}}[1h]");
    let time = now_ms() as f64 / 1000.0 + 1.0;
    let path = format!(
        "/api/v1/query?query={}&time={time}&nocache=1",
        encode_query(&q)
    );
    let (status, body) = get(port, &path).await.expect("query");
    assert_eq!(status, 200, "{q}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success", "{body}");
    let mut out = BTreeSet::new();
    for series in v["data"]["result"].as_array().expect("matrix result") {
        let labels: BTreeMap<String, String> = series["metric"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        for pair in series["values"].as_array().unwrap() {
            let ts = (pair[0].as_f64().unwrap() * 1000.0).round() as i64;
            let value: f64 = pair[1].as_str().unwrap().parse().unwrap();
            out.insert((labels.clone(), ts, value.to_bits()));
        }
    }
    out
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the storage returns exactly `want` (after a flush for VictoriaMetrics).
async fn assert_stored(storage: &Daemon, prefix: &str, want: &BTreeSet<Point>) {
    let mut last = BTreeSet::new();
    for _ in 0..100 {
        if storage.name == "victoria-metrics" {
            let _ = get(storage.port, "/internal/force_flush").await;
        }
        last = stored(storage.port, prefix).await;
        if &last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let missing: Vec<_> = want.difference(&last).take(5).collect();
    let extra: Vec<_> = last.difference(want).take(5).collect();
    panic!(
        "{} holds {} of {} samples; missing (first 5): {missing:?}; unexpected: {extra:?}",
        storage.name,
        last.len(),
        want.len()
    );
}

fn sink_config(url: hyper::Uri, queue_dir: &Path) -> RemoteWriteConfig {
    RemoteWriteConfig {
        queue: QueueConfig {
            fsync: FsyncPolicy::Always,
            ..QueueConfig::new(queue_dir)
        },
        shards: 3,
        // Small, so a unit is split into several requests per shard.
        max_samples_per_send: 5,
        timeout: Duration::from_secs(10),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        drain_timeout: Duration::from_secs(20),
        ..RemoteWriteConfig::new(url, queue_dir)
    }
}

fn open_sink(cfg: RemoteWriteConfig) -> RemoteWriteSink {
    RemoteWriteSink::open(cfg).expect("open sink").0
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_sample_to_victoria_metrics_and_drains_at_shutdown() {
    let vm = victoria_metrics(free_port()).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = open_sink(sink_config(vm.write_url(), dir.path()));
    let data = batches("rwvm");
    for (i, b) in data.iter().enumerate() {
        let tenant = (i == 1).then_some("team-a");
        sink.enqueue(b, tenant).await.unwrap();
    }
    // Shut down at once: the drain still delivers everything queued.
    let shutdown = CancellationToken::new();
    let task = sink.clone().start(shutdown.clone());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("drain within its timeout")
        .unwrap();
    let stats = sink.stats();
    assert_eq!(sink.queue_stats().records, 0);
    assert_eq!(stats.samples_sent.get(), sample_count(&data));
    assert_eq!(stats.requests.get("2xx"), stats.requests.total());
    assert_eq!(stats.retries.get(), 0);
    assert!(stats.last_send_latency() > Duration::ZERO);
    assert_stored(&vm, "rwvm", &expected(&data)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_every_sample_to_prometheus() {
    let prom = prometheus(free_port()).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = open_sink(sink_config(prom.write_url(), dir.path()));
    let shutdown = CancellationToken::new();
    let task = sink.clone().start(shutdown.clone());
    let data = batches("rwprom");
    for b in &data {
        sink.enqueue(b, None).await.unwrap();
    }
    let want = sample_count(&data);
    wait_for(
        "every sample acknowledged",
        Duration::from_secs(30),
        async || sink.stats().samples_sent.get() == want,
    )
    .await;
    assert_eq!(sink.stats().samples_dropped.total(), 0);
    assert_stored(&prom, "rwprom", &expected(&data)).await;
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_while_the_storage_is_down_then_delivers_everything() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let url: hyper::Uri = format!("http://127.0.0.1:{port}/api/v1/write")
        .parse()
        .unwrap();
    let sink = open_sink(sink_config(url, dir.path()));
    let shutdown = CancellationToken::new();
    let task = sink.clone().start(shutdown.clone());
    let data = batches("rwlate");
    for b in &data {
        sink.enqueue(b, None).await.unwrap();
    }
    wait_for("a few retries", Duration::from_secs(10), async || {
        sink.stats().retries.get() >= 3
    })
    .await;
    assert_eq!(sink.stats().samples_sent.get(), 0);
    assert!(sink.stats().requests.get("network") >= 3);
    assert_eq!(sink.queue_stats().records, 3);

    let vm = victoria_metrics(port).await;
    let want = sample_count(&data);
    wait_for(
        "delivery once the storage is up",
        Duration::from_secs(30),
        async || sink.stats().samples_sent.get() == want,
    )
    .await;
    assert_eq!(sink.stats().samples_dropped.total(), 0);
    assert_stored(&vm, "rwlate", &expected(&data)).await;
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(sink.queue_stats().records, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_still_queued_at_shutdown_are_delivered_after_a_restart() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let url: hyper::Uri = format!("http://127.0.0.1:{port}/api/v1/write")
        .parse()
        .unwrap();
    let data = batches("rwrestart");
    {
        let sink = open_sink(RemoteWriteConfig {
            drain_timeout: Duration::from_millis(300),
            ..sink_config(url.clone(), dir.path())
        });
        for b in &data {
            sink.enqueue(b, None).await.unwrap();
        }
        let shutdown = CancellationToken::new();
        let task = sink.clone().start(shutdown.clone());
        tokio::time::sleep(Duration::from_millis(200)).await;
        shutdown.cancel();
        // Nobody listens: the drain gives up after its timeout and leaves the records queued.
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("drain gives up at its deadline")
            .unwrap();
        assert_eq!(sink.stats().samples_sent.get(), 0);
        assert_eq!(sink.queue_stats().records, 3);
    }

    let vm = victoria_metrics(port).await;
    let (sink, report) = RemoteWriteSink::open(sink_config(url, dir.path())).unwrap();
    assert_eq!(report.records, 3);
    // This time without `start`: the caller drains the queue itself.
    let outcome = sink
        .drain(tokio::time::Instant::now() + Duration::from_secs(30))
        .await;
    assert!(outcome.emptied, "{outcome:?}");
    assert_eq!(outcome.records_left, 0);
    assert_eq!(sink.stats().samples_sent.get(), sample_count(&data));
    assert_stored(&vm, "rwrestart", &expected(&data)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_arriving_within_the_flush_interval_leave_in_one_request() {
    let vm = victoria_metrics(free_port()).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = open_sink(RemoteWriteConfig {
        shards: 1,
        max_samples_per_send: 10_000,
        flush_interval: Duration::from_secs(3),
        // Every batch through the queue: the direct path would forward each on its own.
        direct: None,
        ..sink_config(vm.write_url(), dir.path())
    });
    let shutdown = CancellationToken::new();
    let task = sink.clone().start(shutdown.clone());
    let data = batches("rwlinger");
    // Spaced out: a sender that did not wait for more would send each on its own.
    for b in &data {
        sink.enqueue(b, None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let want = sample_count(&data);
    wait_for(
        "every sample acknowledged",
        Duration::from_secs(20),
        async || sink.stats().samples_sent.get() == want,
    )
    .await;
    assert_eq!(data.len(), 3);
    assert_eq!(
        sink.stats().requests.total(),
        1,
        "one request for the three batches"
    );
    assert_stored(&vm, "rwlinger", &expected(&data)).await;
    // Draining does not wait: a batch queued at shutdown leaves at once.
    let more = batches("rwlinger2");
    sink.enqueue(&more[0], None).await.unwrap();
    let started = std::time::Instant::now();
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(sink.queue_stats().records, 0);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the drain waited {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_path_forwards_before_answering_then_queues_while_the_storage_is_down_in_order()
{
    let port = free_port();
    let prom = prometheus(port).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = open_sink(RemoteWriteConfig {
        direct: Some(DirectConfig {
            wait: Duration::from_millis(5),
            timeout: Duration::from_secs(5),
        }),
        ..sink_config(prom.write_url(), dir.path())
    });
    let shutdown = CancellationToken::new();
    let task = sink.clone().start(shutdown.clone());
    wait_for("the direct path", Duration::from_secs(5), async || {
        sink.is_direct()
    })
    .await;
    let data = batches_n("rwdirect", 12);

    // The storage is up: a push returns once the storage has its samples; the queue is never
    // written.
    for b in &data[..4] {
        let before = sink.stats().samples_sent.get();
        sink.enqueue(b, None).await.unwrap();
        assert_eq!(
            sink.stats().samples_sent.get(),
            before + b.sample_count() as u64
        );
    }
    assert_eq!(sink.queue_stats().pushed_records, 0);
    assert_eq!(
        sink.stats().samples_forwarded.get(),
        sample_count(&data[..4])
    );

    // The storage is gone: pushes are still answered, once their batches are in the queue.
    let data_dir = prom.kill();
    for b in &data[4..8] {
        sink.enqueue(b, None).await.unwrap();
    }
    assert_eq!(sink.stats().spills.get(), 1);
    assert!(!sink.is_direct());
    assert_eq!(sink.queue_stats().pushed_records, 4);
    assert_eq!(
        sink.stats().samples_enqueued.get(),
        sample_count(&data[4..8])
    );

    // Back: the queue drains, then batches are forwarded directly again.
    let prom = prometheus_in(port, data_dir).await;
    wait_for(
        "the queue drained and the direct path back",
        Duration::from_secs(30),
        async || sink.is_direct(),
    )
    .await;
    assert_eq!(sink.queue_stats().records, 0);
    for b in &data[8..] {
        sink.enqueue(b, None).await.unwrap();
    }
    assert_eq!(sink.queue_stats().pushed_records, 4);
    assert_eq!(
        sink.stats().samples_forwarded.get(),
        sample_count(&data[..4]) + sample_count(&data[8..])
    );
    // Prometheus refuses a sample older than its series' last one (a 400, counted as dropped):
    // none was, so every series arrived in order across the fall-back and the return.
    assert_eq!(sink.stats().samples_dropped.total(), 0);
    assert_stored(&prom, "rwdirect", &expected(&data)).await;
    shutdown.cancel();
    task.await.unwrap();
}

type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A tiny receiver on 127.0.0.1:0 that answers every request with 400 and a reason, and keeps
/// what it was sent.
async fn refusing_receiver() -> (u16, Seen, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            seen.lock().unwrap().push((parts.headers, body));
                            let mut resp = Response::new(Full::new(Bytes::from(
                                "out of order sample for series rw_bad\n",
                            )));
                            *resp.status_mut() = hyper::StatusCode::BAD_REQUEST;
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    });
    (port, seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_dropped_and_counted_not_retried() {
    let (port, seen, server) = refusing_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let url: hyper::Uri = format!("http://127.0.0.1:{port}/api/v1/write")
        .parse()
        .unwrap();
    let sink = open_sink(sink_config(url, dir.path()));
    let tenant_data = batches("rwten");
    let plain_data = batches("rwplain");
    sink.enqueue(&tenant_data[0], Some("team-a")).await.unwrap();
    sink.enqueue(&plain_data[0], None).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = sink.clone().start(shutdown.clone());
    let want = (tenant_data[0].sample_count() + plain_data[0].sample_count()) as u64;
    wait_for(
        "every sample refused",
        Duration::from_secs(10),
        async || sink.stats().samples_dropped.get("rejected") == want,
    )
    .await;
    // Give a (wrong) retry time to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    task.await.unwrap();
    server.abort();

    let stats = sink.stats();
    let requests = seen.lock().unwrap().clone();
    assert_eq!(stats.retries.get(), 0);
    assert_eq!(stats.samples_sent.get(), 0);
    assert_eq!(stats.requests.get("4xx"), requests.len() as u64);
    assert_eq!(sink.queue_stats().records, 0, "refused records are acked");

    // Each request is sent once, with the remote-write headers and the record's tenant.
    let mut points = BTreeSet::new();
    let mut bodies = BTreeSet::new();
    for (headers, body) in &requests {
        assert!(bodies.insert(body.clone()), "a request was sent twice");
        assert_eq!(headers["content-encoding"], "snappy");
        assert_eq!(headers["content-type"], "application/x-protobuf");
        assert_eq!(headers["x-prometheus-remote-write-version"], "0.1.0");
        let req = remote_write::decode(body, 1 << 20).unwrap();
        assert!(remote_write_samples(&req) <= 5);
        for ts in &req.timeseries {
            let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted, "labels sorted by name");
            let name = ts.labels.iter().find(|l| l.name == "__name__").unwrap();
            let tenant = headers.get("x-scope-orgid").map(|v| v.to_str().unwrap());
            if name.value.starts_with("rwten_") {
                assert_eq!(tenant, Some("team-a"));
            } else {
                assert_eq!(tenant, None);
            }
            let labels: BTreeMap<String, String> = ts
                .labels
                .iter()
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect();
            for s in &ts.samples {
                points.insert((labels.clone(), s.timestamp, s.value.to_bits()));
            }
        }
    }
    let mut want = expected(&tenant_data[..1]);
    want.extend(expected(&plain_data[..1]));
    assert_eq!(points, want);
}

fn remote_write_samples(req: &remote_write::WriteRequest) -> usize {
    req.timeseries.iter().map(|t| t.samples.len()).sum()
}

/// Throughput into VictoriaMetrics, for BENCHMARKS.md: `cargo test --release -p
/// sonde-collector --test remote_write_sink throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_to_victoria_metrics() {
    const BATCHES: usize = 1000;
    const SERIES: usize = 1000;
    let vm = victoria_metrics(free_port()).await;
    let dir = tempfile::tempdir().unwrap();
    let sink = open_sink(RemoteWriteConfig {
        shards: 4,
        max_samples_per_send: 5000,
        ..sink_config(vm.write_url(), dir.path())
    });
    // 10 hosts of 1000 series, 100 samples each: mostly samples of known series, as in steady
    // state (new series cost VictoriaMetrics far more than samples).
    let base = now_ms() - 10 * 60_000;
    let data: Vec<Batch> = (0..BATCHES)
        .map(|b| {
            let host = format!("host-{}", b % 10);
            let mut builder = BatchBuilder::new(BatchHeader {
                agent_id: host.clone(),
                sequence: b as u64,
                sent_at_ms: now_ms(),
            });
            let t = base + (b / 10) as i64 * 10_000;
            for s in 0..SERIES {
                let series = Series::new(
                    "rwbench_value",
                    [("host", host.clone()), ("i", s.to_string())],
                );
                builder.push(
                    &series,
                    MetricKind::Gauge,
                    None,
                    vec![Sample::new(t, s as f64)],
                );
            }
            builder.build()
        })
        .collect();
    let started = std::time::Instant::now();
    for b in &data {
        sink.enqueue(b, None).await.unwrap();
    }
    let enqueued = started.elapsed();
    let queued_bytes = sink.queue_stats().bytes;
    let total = (BATCHES * SERIES) as u64;
    let started = std::time::Instant::now();
    let shutdown = CancellationToken::new();
    let task = sink.clone().start(shutdown.clone());
    wait_for("everything sent", Duration::from_secs(120), async || {
        sink.stats().samples_sent.get() == total
    })
    .await;
    let sent = started.elapsed();
    println!(
        "enqueue (fsync always, one pusher): {:.0} samples/s ({:.0} batches/s); \
         send to VictoriaMetrics (4 shards, 5000 samples per request): {:.0} samples/s, \
         {} requests; per batch of {SERIES} samples: {} bytes queued, {} bytes sent (snappy)",
        total as f64 / enqueued.as_secs_f64(),
        BATCHES as f64 / enqueued.as_secs_f64(),
        total as f64 / sent.as_secs_f64(),
        sink.stats().requests.total(),
        queued_bytes / BATCHES as u64,
        sink.stats().bytes_sent.get() / BATCHES as u64,
    );
    shutdown.cancel();
    task.await.unwrap();
}
