//! The `alerting` scenario: Sonde's alerting loop against vmalert over VictoriaMetrics, in the
//! same run, on the same rules and samples.
//!
//! **Notification latency.** Sonde runs as a single node: embedded store, the rules below and
//! its alert manager with a webhook receiver (`group_by: ['...']`, `group_wait: 0s`: every
//! alert is its own group and goes out at once). The peer is VictoriaMetrics with vmalert
//! evaluating the same rule file every second and notifying the same receiver over
//! Alertmanager's v2 API (`-notifier.url`), tuned for speed: VictoriaMetrics with
//! `-search.latencyOffset=0s`, vmalert with `-evaluationInterval=1s`; no Alertmanager sits in
//! between, so the peer's figure is its best case. The receiver is a small HTTP server in this
//! process that notes when each alert first arrives firing.
//!
//! Two rules: `FastThreshold` (`bench_fast > 90`, a plain threshold that Sonde checks on each
//! sample as it arrives) and `QueryThreshold` (`last_over_time(bench_query[1m]) > 90`, which
//! both evaluate by query each second). Background senders push a normal value (50) for
//! [`ROUNDS`] existing hosts to both stores every second. A round pushes 99 for one host to
//! both stores at the same moment, then keeps pushing 99 for it; the latency is from the push
//! to the receiver's first firing notification for that host and rule. Rounds alternate
//! between an existing host and a brand-new one (a series neither store has seen), 1 to 2 s
//! apart at random, so they meet the evaluators' schedules at every phase.
//!
//! **Rule evaluation throughput.** Fresh processes; 10,000 series of `bench_load` (host and
//! zone labels, 10 minutes at a 10 s interval) pushed to both stores; then [`RULE_GROUPS`]
//! groups of [`RULES_PER_GROUP`] alerting rules (selector thresholds, `avg_over_time`, and a
//! `max by (zone)`; each over all 10,000 series, each firing for about ten of them) evaluated
//! every second for `--duration` (30 s by default). Reported: rule evaluations completed (group
//! iterations times rules per group, from each side's self-metrics) per CPU second of the
//! processes involved: Sonde's collector (store, queries and rules in one process) against
//! VictoriaMetrics plus vmalert.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use sonde_common::model::{MetricKind, Sample, Series};
use sonde_common::wire::{self, BatchBuilder, BatchHeader, Compression};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::drive::{HttpClient, client};
use crate::procs::{self, Server};
use crate::report::Report;
use crate::scenario::ScenarioArgs;

/// Latency rounds: half on existing series, half on new ones.
pub const ROUNDS: usize = 20;
/// Time between rounds, plus a random part of up to a second, so rounds fall at every phase
/// of the evaluators' 1 s schedule rather than at one.
const ROUND_SPACING: Duration = Duration::from_millis(1000);
/// Longest wait for a notification after the last round.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(60);
/// Series of the throughput phase.
const LOAD_SERIES: usize = 10_000;
pub const RULE_GROUPS: usize = 4;
pub const RULES_PER_GROUP: usize = 10;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const LATENCY_RULES: &str = r#"groups:
  - name: bench
    interval: 1s
    rules:
      - alert: FastThreshold
        expr: bench_fast > 90
      - alert: QueryThreshold
        expr: last_over_time(bench_query[1m]) > 90
"#;

const SONDE_ROUTE: &str = "route:
  receiver: bench
  group_by: ['...']
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: bench
    webhook_configs:
      - url: URL
";

/// First firing arrival per (system, alertname, host).
type Arrivals = Arc<Mutex<HashMap<(String, String, String), Instant>>>;

/// The notification receiver: Alertmanager webhook JSON on `/sonde`, Alertmanager v2 postable
/// alerts (vmalert's notifier) on `/vmalert/api/v2/alerts`.
struct Receiver {
    port: u16,
    arrivals: Arrivals,
    stop: CancellationToken,
}

impl Receiver {
    async fn start() -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let arrivals: Arrivals = Arc::default();
        let stop = CancellationToken::new();
        let (a, s) = (arrivals.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    _ = s.cancelled() => return,
                };
                let Ok((stream, _)) = conn else { continue };
                let a = a.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(10), serve(stream, a)).await;
                });
            }
        });
        Ok(Receiver {
            port,
            arrivals,
            stop,
        })
    }

    fn arrival(&self, system: &str, alert: &str, host: &str) -> Option<Instant> {
        self.arrivals
            .lock()
            .ok()?
            .get(&(system.to_owned(), alert.to_owned(), host.to_owned()))
            .copied()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves requests on one connection (keep-alive) until the peer closes it.
async fn serve(mut stream: tokio::net::TcpStream, arrivals: Arrivals) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while let Some(crate::serve::Request { path, body }) =
        crate::serve::next_request(&mut stream, &mut buf).await?
    {
        let now = Instant::now();
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
            let (system, alerts) = if path.starts_with("/vmalert") {
                ("vmalert", v.as_array().cloned().unwrap_or_default())
            } else {
                ("sonde", v["alerts"].as_array().cloned().unwrap_or_default())
            };
            let mut map = arrivals.lock().map_err(|_| std::io::ErrorKind::Other)?;
            for a in alerts {
                if !firing(&a) {
                    continue;
                }
                let name = a["labels"]["alertname"].as_str().unwrap_or("").to_owned();
                let host = a["labels"]["host"].as_str().unwrap_or("").to_owned();
                map.entry((system.to_owned(), name, host)).or_insert(now);
            }
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await?;
    }
    Ok(())
}

/// Firing: a webhook alert says so; a postable alert has no end or one in the future (vmalert
/// sends resolved alerts with endsAt in the past).
fn firing(a: &serde_json::Value) -> bool {
    if let Some(s) = a["status"].as_str() {
        return s == "firing";
    }
    match a["endsAt"].as_str() {
        None | Some("") | Some("0001-01-01T00:00:00Z") => true,
        Some(t) => sonde_common::time::parse_rfc3339_ms(t)
            .map_or(true, |end| end > sonde_common::model::now_ms()),
    }
}

/// One gauge sample to push now: name, labels, value.
type Gauge = (String, Vec<(String, String)>, f64);

/// Pushes gauges to Sonde (native batch) and to VictoriaMetrics (text import), concurrently.
async fn push_both(
    http: &HttpClient,
    sonde: u16,
    vm: u16,
    samples: &[Gauge],
) -> anyhow::Result<()> {
    let now = sonde_common::model::now_ms();
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut b = BatchBuilder::new(BatchHeader {
        agent_id: "alerting-bench".into(),
        sequence: SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        sent_at_ms: now,
    });
    let mut text = String::new();
    for (name, labels, v) in samples {
        let s = Series::new(name, labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        b.push(&s, MetricKind::Gauge, None, vec![Sample::new(now, *v)]);
        let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        let _ = writeln!(text, "{name}{{{}}} {v} {now}", l.join(","));
    }
    let native = Bytes::from(wire::encode(&b.build(), Compression::Zstd)?);
    let sonde_url = format!("http://127.0.0.1:{sonde}/api/v1/push");
    let vm_url = format!("http://127.0.0.1:{vm}/api/v1/import/prometheus");
    let to_sonde = post(
        http,
        &sonde_url,
        &[
            ("content-type", wire::CONTENT_TYPE),
            ("content-encoding", "zstd"),
        ],
        native,
    );
    let to_vm = post(
        http,
        &vm_url,
        &[("content-type", "text/plain")],
        Bytes::from(text),
    );
    let (a, b) = tokio::join!(to_sonde, to_vm);
    a.context("push to sonde")?;
    b.context("push to victoria-metrics")?;
    Ok(())
}

async fn post(
    http: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> anyhow::Result<()> {
    let mut req = hyper::Request::post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, http.request(req.body(Full::new(body))?))
        .await
        .context("timed out")??;
    let status = resp.status();
    let text = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("{status}: {}", String::from_utf8_lossy(&text));
    }
    Ok(())
}

async fn get_text(http: &HttpClient, url: &str) -> anyhow::Result<String> {
    let req = hyper::Request::get(url).body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, http.request(req))
        .await
        .context("timed out")??;
    Ok(String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned())
}

/// Sum of every sample of `name` (all label sets) in a text exposition.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn write_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    Ok(p.display().to_string())
}

async fn sonde(dir: &Path, rules: &str, hook: &str) -> anyhow::Result<Server> {
    let rules_dir = dir.join("rules");
    std::fs::create_dir_all(&rules_dir)?;
    write_file(&rules_dir, "bench.yml", rules)?;
    let config = write_file(dir, "alertmanager.yml", &SONDE_ROUTE.replace("URL", hook))?;
    procs::collector_with(
        "sonde-collector",
        &[
            "--rules-dir".into(),
            rules_dir.display().to_string(),
            "--alert-config".into(),
            config,
            "--max-sample-age".into(),
            "1h".into(),
        ],
    )
    .await
}

async fn vmalert(
    dir: &Path,
    rules: &str,
    vm: u16,
    notifier: &str,
) -> anyhow::Result<(Server, Vec<String>)> {
    let rule_file = write_file(dir, "vmalert-rules.yml", rules)?;
    let port = procs::free_port()?;
    let args = vec![
        format!("-rule={rule_file}"),
        format!("-datasource.url=http://127.0.0.1:{vm}"),
        format!("-notifier.url={notifier}"),
        "-evaluationInterval=1s".into(),
        format!("-httpListenAddr=127.0.0.1:{port}"),
        "-loggerLevel=ERROR".into(),
    ];
    let mut s = procs::spawn_server(
        "vmalert",
        port,
        procs::system_binary("vmalert", "victoria-metrics")?,
        args.clone(),
        None,
    )?;
    s.wait_ready("/health", Duration::from_secs(30)).await?;
    Ok((s, args))
}

#[derive(Debug, Serialize, Default, Clone)]
pub struct LatencyFigures {
    pub rounds: usize,
    pub notified: usize,
    pub median_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

fn figures(mut v: Vec<Option<f64>>) -> LatencyFigures {
    let rounds = v.len();
    let mut got: Vec<f64> = v.drain(..).flatten().collect();
    got.sort_by(f64::total_cmp);
    let q = |p: f64| (!got.is_empty()).then(|| got[((got.len() - 1) as f64 * p).round() as usize]);
    LatencyFigures {
        rounds,
        notified: got.len(),
        median_ms: q(0.5),
        p90_ms: q(0.9),
        max_ms: got.last().copied(),
    }
}

#[derive(Debug, Serialize)]
pub struct ThroughputFigures {
    pub rules: usize,
    pub series: usize,
    pub window_s: f64,
    pub evaluations: f64,
    pub cpu_seconds: f64,
    pub rules_per_cpu_second: Option<f64>,
    pub evaluations_per_second: f64,
}

pub async fn run(args: &ScenarioArgs) -> anyhow::Result<(Vec<Report>, serde_json::Value)> {
    let http = client(REQUEST_TIMEOUT);
    let receiver = Receiver::start().await?;
    let dir = tempfile::tempdir()?;
    let hook = format!("http://127.0.0.1:{}/sonde", receiver.port);
    let notifier = format!("http://127.0.0.1:{}/vmalert", receiver.port);

    // Notification latency.
    let so = sonde(dir.path(), LATENCY_RULES, &hook).await?;
    let vm = procs::victoria_metrics().await?;
    let (va, vmalert_flags) = vmalert(dir.path(), LATENCY_RULES, vm.port, &notifier).await?;
    let tag = format!("{:x}", sonde_common::model::now_ms() % 0xff_ffff);
    let existing: Vec<String> = (0..ROUNDS / 2).map(|i| format!("e-{tag}-{i}")).collect();
    let new: Vec<String> = (0..ROUNDS / 2).map(|i| format!("n-{tag}-{i}")).collect();
    let hot: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = CancellationToken::new();
    let background = {
        let (http, hot, stop) = (http.clone(), hot.clone(), stop.clone());
        let (sp, vp) = (so.port, vm.port);
        let existing = existing.clone();
        let new = new.clone();
        tokio::spawn(async move {
            // Bounded: stops on the token, or after ten minutes whatever happens.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop.is_cancelled() && Instant::now() < deadline {
                let hot_now = hot.lock().map(|h| h.clone()).unwrap_or_default();
                let mut samples = Vec::new();
                for h in existing
                    .iter()
                    .chain(new.iter().filter(|h| hot_now.contains(*h)))
                {
                    let v = if hot_now.contains(h) { 99.0 } else { 50.0 };
                    for m in ["bench_fast", "bench_query"] {
                        samples.push((m.to_owned(), vec![("host".into(), h.clone())], v));
                    }
                }
                if let Err(e) = push_both(&http, sp, vp, &samples).await {
                    eprintln!("alerting: background push failed: {e:#}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => {}
                }
            }
        })
    };
    // Both stores have the existing series, and both evaluators have run a few times.
    tokio::time::sleep(Duration::from_secs(5)).await;
    if !args.quiet {
        eprintln!("alerting: {ROUNDS} latency rounds");
    }
    let mut started: Vec<(String, &'static str, Instant)> = Vec::new();
    for i in 0..ROUNDS {
        let (host, kind) = if i % 2 == 0 {
            (existing[i / 2].clone(), "existing")
        } else {
            (new[i / 2].clone(), "new")
        };
        let samples: Vec<_> = ["bench_fast", "bench_query"]
            .iter()
            .map(|m| (m.to_string(), vec![("host".into(), host.clone())], 99.0))
            .collect();
        let t0 = Instant::now();
        push_both(&http, so.port, vm.port, &samples).await?;
        if let Ok(mut h) = hot.lock() {
            h.insert(host.clone());
        }
        started.push((host, kind, t0));
        tokio::time::sleep(ROUND_SPACING + Duration::from_millis(fastrand::u64(0..1000))).await;
    }
    let deadline = Instant::now() + NOTIFY_TIMEOUT;
    loop {
        let all = started.iter().all(|(h, _, _)| {
            ["sonde", "vmalert"].iter().all(|s| {
                ["FastThreshold", "QueryThreshold"]
                    .iter()
                    .all(|a| receiver.arrival(s, a, h).is_some())
            })
        });
        if all || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    let _ = background.await;
    let mut latency: BTreeMap<String, LatencyFigures> = BTreeMap::new();
    for system in ["sonde", "vmalert"] {
        for alert in ["FastThreshold", "QueryThreshold"] {
            for kind in ["existing", "new"] {
                let v: Vec<Option<f64>> = started
                    .iter()
                    .filter(|(_, k, _)| *k == kind)
                    .map(|(h, _, t0)| {
                        receiver
                            .arrival(system, alert, h)
                            .map(|t| t.saturating_duration_since(*t0).as_secs_f64() * 1000.0)
                    })
                    .collect();
                latency.insert(format!("{system}/{alert}/{kind}"), figures(v));
            }
        }
    }
    drop(va);
    drop(vm);
    drop(so);

    // Rule evaluation throughput.
    if !args.quiet {
        eprintln!("alerting: rule throughput over {LOAD_SERIES} series");
    }
    let tdir = tempfile::tempdir()?;
    let rules = throughput_rules();
    let so = sonde(tdir.path(), &rules, &hook).await?;
    let vm = procs::victoria_metrics().await?;
    load_series(&http, so.port, vm.port).await?;
    // Let VictoriaMetrics make the backfill searchable before rules start.
    let _ = get_text(
        &http,
        &format!("http://127.0.0.1:{}/internal/force_flush", vm.port),
    )
    .await;
    let (va, _) = vmalert(tdir.path(), &rules, vm.port, &notifier).await?;
    let window = sonde_common::duration::parse_duration(&args.duration)
        .map_err(anyhow::Error::msg)?
        .max(Duration::from_secs(5));
    let sonde_t = throughput(
        &http,
        &[&so],
        so.port,
        "sonde_collector_rule_group_iterations_total",
        window,
    )
    .await?;
    let vm_t = throughput(
        &http,
        &[&vm, &va],
        va.port,
        "vmalert_iteration_total",
        window,
    )
    .await?;

    let text = table(&latency, &sonde_t, &vm_t, &vmalert_flags);
    print!("{text}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("alerting.txt"), &text)?;
    let summary = serde_json::json!({
        "latency": latency,
        "throughput": {"sonde": sonde_t, "vmalert_victoriametrics": vm_t},
        "vmalert_flags": vmalert_flags,
        "ratios_sonde_to_vmalert": {
            "rules_per_cpu_second": match (sonde_t.rules_per_cpu_second, vm_t.rules_per_cpu_second) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            },
        },
    });
    Ok((Vec::new(), summary))
}

/// The throughput phase's rules: thresholds, `avg_over_time` and `max by (zone)` over all of
/// `bench_load`, each firing for about ten series.
fn throughput_rules() -> String {
    let mut s = String::from("groups:\n");
    for g in 0..RULE_GROUPS {
        let _ = writeln!(s, "  - name: load-{g}\n    interval: 1s\n    rules:");
        for r in 0..RULES_PER_GROUP {
            let expr = match r % 3 {
                0 => format!("bench_load > {}", 99.9 - r as f64 * 0.001),
                1 => format!(
                    "avg_over_time(bench_load[5m]) > {}",
                    99.9 - r as f64 * 0.001
                ),
                _ => format!("max by (zone) (bench_load) > {}", 99.0 + r as f64 * 0.01),
            };
            let _ = writeln!(s, "      - alert: Load{g}x{r}\n        expr: {expr}");
        }
    }
    s
}

/// 10,000 `bench_load` series, 10 minutes at 10 s, pushed to both.
async fn load_series(http: &HttpClient, sonde: u16, vm: u16) -> anyhow::Result<()> {
    let now = sonde_common::model::now_ms() / 10_000 * 10_000;
    for step in (0..60).rev() {
        let ts = now - step * 10_000;
        for chunk in 0..(LOAD_SERIES / 2_000) {
            let mut b = BatchBuilder::new(BatchHeader {
                agent_id: format!("alerting-bench-load-{chunk}"),
                sequence: (60 - step) as u64,
                sent_at_ms: ts,
            });
            let mut text = String::new();
            for i in chunk * 2_000..(chunk + 1) * 2_000 {
                // A fixed value per series in 0..100: the top ~0.1% fire.
                let v = (i * 7919 % LOAD_SERIES) as f64 * 100.0 / LOAD_SERIES as f64;
                let host = format!("h{i:05}");
                let zone = format!("z{}", i % 10);
                let s = Series::new(
                    "bench_load",
                    [("host", host.as_str()), ("zone", zone.as_str())],
                );
                b.push(&s, MetricKind::Gauge, None, vec![Sample::new(ts, v)]);
                let _ = writeln!(
                    text,
                    "bench_load{{host=\"{host}\",zone=\"{zone}\"}} {v} {ts}"
                );
            }
            let native = Bytes::from(wire::encode(&b.build(), Compression::Zstd)?);
            post(
                http,
                &format!("http://127.0.0.1:{sonde}/api/v1/push"),
                &[
                    ("content-type", wire::CONTENT_TYPE),
                    ("content-encoding", "zstd"),
                ],
                native,
            )
            .await
            .context("load to sonde")?;
            post(
                http,
                &format!("http://127.0.0.1:{vm}/api/v1/import/prometheus"),
                &[("content-type", "text/plain")],
                Bytes::from(text),
            )
            .await
            .context("load to victoria-metrics")?;
        }
    }
    Ok(())
}

/// Rule evaluations per CPU second over `window` (extended, up to four times, until an
/// iteration has completed): group iterations (from `metric` on `metrics_port`) times rules
/// per group, over the CPU time of `servers`.
async fn throughput(
    http: &HttpClient,
    servers: &[&Server],
    metrics_port: u16,
    metric: &str,
    window: Duration,
) -> anyhow::Result<ThroughputFigures> {
    // Let the evaluators settle into their schedule first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let cpu = |s: &[&Server]| s.iter().map(|s| s.usage().cpu_seconds).sum::<f64>();
    let it0 = metric_sum(&get_text(http, &url).await?, metric);
    let cpu0 = cpu(servers);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let mut it1 = metric_sum(&get_text(http, &url).await?, metric);
    // A window must hold at least one completed iteration to measure anything: on a loaded
    // machine one may take longer than the window, so wait for it (at most four windows).
    while it1 == it0 && t0.elapsed() < window * 4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        it1 = metric_sum(&get_text(http, &url).await?, metric);
    }
    let cpu1 = cpu(servers);
    let window = t0.elapsed().as_secs_f64();
    let evaluations = (it1 - it0) * RULES_PER_GROUP as f64;
    let cpu_seconds = cpu1 - cpu0;
    Ok(ThroughputFigures {
        rules: RULE_GROUPS * RULES_PER_GROUP,
        series: LOAD_SERIES,
        window_s: window,
        evaluations,
        cpu_seconds,
        rules_per_cpu_second: (cpu_seconds > 0.0 && evaluations > 0.0)
            .then(|| evaluations / cpu_seconds),
        evaluations_per_second: evaluations / window.max(1e-9),
    })
}

fn table(
    latency: &BTreeMap<String, LatencyFigures>,
    so: &ThroughputFigures,
    vm: &ThroughputFigures,
    vmalert_flags: &[String],
) -> String {
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} ms"));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "alerting: push -> webhook latency ({ROUNDS} rounds, half on new series)"
    );
    let _ = writeln!(
        s,
        "  {:<40} {:>9} {:>10} {:>10} {:>10}",
        "system / rule / series", "notified", "median", "p90", "max"
    );
    for (k, f) in latency {
        let _ = writeln!(
            s,
            "  {:<40} {:>4}/{:<4} {:>10} {:>10} {:>10}",
            k,
            f.notified,
            f.rounds,
            ms(f.median_ms),
            ms(f.p90_ms),
            ms(f.max_ms)
        );
    }
    let _ = writeln!(
        s,
        "alerting: rule evaluations per CPU second ({} rules over {} series, every 1s)",
        so.rules, so.series
    );
    for (name, t) in [("sonde", so), ("vmalert + victoria-metrics", vm)] {
        let _ = writeln!(
            s,
            "  {:<28} {:>8.0} evaluations in {:.1} s, {:.2} CPU s: {} per CPU second ({:.1}/s)",
            name,
            t.evaluations,
            t.window_s,
            t.cpu_seconds,
            t.rules_per_cpu_second
                .map_or("-".into(), |v| format!("{v:.0}")),
            t.evaluations_per_second
        );
    }
    let _ = writeln!(s, "  vmalert flags: {}", vmalert_flags.join(" "));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firing_follows_status_or_end_time() {
        assert!(firing(&serde_json::json!({"status": "firing"})));
        assert!(!firing(&serde_json::json!({"status": "resolved"})));
        assert!(firing(&serde_json::json!({"labels": {}})));
        assert!(!firing(
            &serde_json::json!({"endsAt": "2000-01-01T00:00:00Z"})
        ));
        assert!(firing(
            &serde_json::json!({"endsAt": "2999-01-01T00:00:00Z"})
        ));
    }

    #[test]
    fn throughput_rules_are_a_valid_shape() {
        let r = throughput_rules();
        assert_eq!(r.matches("- alert:").count(), RULE_GROUPS * RULES_PER_GROUP);
        assert_eq!(r.matches("- name:").count(), RULE_GROUPS);
    }
}
