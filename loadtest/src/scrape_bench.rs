//! The `scrape` scenario: Sonde's collector scraping targets into its embedded store, against
//! vmagent scraping the same targets into VictoriaMetrics, one after the other in the same run.
//!
//! The targets are `--hosts` small HTTP servers in this process (300 by default) on 127.0.0.1,
//! each serving the same /metrics page of [`SERIES_PER_TARGET`] series (counters and gauges
//! with a few labels, in Prometheus's text format) and counting the scrapes it answers. Both
//! scrapers get the same `scrape_configs` (static targets, `--interval`, 1 s by default) and run
//! for `--duration` (30 s) after a warm-up. Reported for each: scrapes answered, samples scraped
//! (scrapes x series), samples stored over the window (a `count_over_time` query on the store
//! afterwards), and CPU seconds of the processes involved (Sonde: the collector, which scrapes
//! and stores; the peer: vmagent plus VictoriaMetrics), hence samples scraped and stored per
//! CPU second.

use anyhow::{Context, bail};
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::procs::{self, Server};
use crate::report::Report;
use crate::scenario::ScenarioArgs;

/// Series on each target's page.
pub const SERIES_PER_TARGET: usize = 200;
const WARM_UP: Duration = Duration::from_secs(5);

/// The page every target serves.
fn page() -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# HELP bench_requests_total Requests handled.\n# TYPE bench_requests_total counter"
    );
    for i in 0..SERIES_PER_TARGET / 2 {
        let _ = writeln!(
            s,
            "bench_requests_total{{handler=\"/api/v{}\",method=\"GET\",code=\"{}\"}} {}",
            i / 5,
            200 + i % 5,
            1000 + i * 37
        );
    }
    let _ = writeln!(
        s,
        "# HELP bench_queue_depth Items waiting.\n# TYPE bench_queue_depth gauge"
    );
    for i in 0..SERIES_PER_TARGET - SERIES_PER_TARGET / 2 {
        let _ = writeln!(
            s,
            "bench_queue_depth{{queue=\"q{}\",shard=\"{}\"}} {}.5",
            i / 4,
            i % 4,
            i * 3
        );
    }
    s
}

/// Target servers: one listener each, all served by this process's runtime.
struct Targets {
    ports: Vec<u16>,
    scrapes: Arc<Vec<AtomicU64>>,
    stop: CancellationToken,
}

impl Targets {
    async fn start(n: usize) -> anyhow::Result<Targets> {
        let body = Arc::new(page());
        let scrapes: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let stop = CancellationToken::new();
        let mut ports = Vec::with_capacity(n);
        for i in 0..n {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            ports.push(listener.local_addr()?.port());
            let (body, scrapes, stop) = (body.clone(), scrapes.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = stop.cancelled() => return,
                    };
                    let Ok((stream, _)) = accepted else { continue };
                    let (body, scrapes) = (body.clone(), scrapes.clone());
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(10),
                            serve(stream, &body, &scrapes[i]),
                        )
                        .await;
                    });
                }
            });
        }
        Ok(Targets {
            ports,
            scrapes,
            stop,
        })
    }

    fn total(&self) -> u64 {
        self.scrapes.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn config(&self, interval: Duration) -> String {
        let targets: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("'127.0.0.1:{p}'"))
            .collect();
        format!(
            "scrape_configs:\n  - job_name: bench\n    scrape_interval: {}ms\n    scrape_timeout: {}ms\n    static_configs:\n      - targets: [{}]\n",
            interval.as_millis(),
            (interval.as_millis() * 9 / 10).max(100),
            targets.join(", ")
        )
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves requests on one connection (keep-alive) until the scraper closes it.
async fn serve(
    mut stream: tokio::net::TcpStream,
    body: &str,
    count: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while crate::serve::next_request(&mut stream, &mut buf)
        .await?
        .is_some()
    {
        count.fetch_add(1, Ordering::Relaxed);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct ScrapeFigures {
    pub system: String,
    pub window_s: f64,
    pub scrapes: u64,
    pub samples_scraped: u64,
    pub samples_stored: Option<u64>,
    pub cpu_seconds: f64,
    pub samples_per_cpu_second: Option<f64>,
    pub peak_rss_bytes: u64,
}

/// Samples of the bench series stored over the last `window` (a count_over_time query).
async fn stored(port: u16, window: Duration) -> Option<u64> {
    let q = format!(
        "sum(count_over_time({{__name__=~\"bench_.*\",job=\"bench\"}}[{}s]))",
        window.as_secs()
    );
    let url = format!(
        "/api/v1/query?query={}",
        url::form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
    );
    let body = http_get(port, &url).await.ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1]
        .as_str()?
        .parse::<f64>()
        .ok()
        .map(|f| f as u64)
}

async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut raw))
        .await
        .context("timed out")??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// After a warm-up: (seconds, scrapes answered, CPU seconds of `servers`, their peak RSS) over
/// `window`.
async fn measure(targets: &Targets, servers: &[&Server], window: Duration) -> (f64, u64, f64, u64) {
    tokio::time::sleep(WARM_UP).await;
    let cpu = |s: &[&Server]| s.iter().map(|s| s.usage().cpu_seconds).sum::<f64>();
    let (s0, c0, t0) = (targets.total(), cpu(servers), Instant::now());
    tokio::time::sleep(window).await;
    let (s1, c1) = (targets.total(), cpu(servers));
    let elapsed = t0.elapsed().as_secs_f64();
    let rss = servers.iter().map(|s| s.usage().peak_rss_bytes).sum();
    (elapsed, s1 - s0, c1 - c0, rss)
}

pub async fn run(
    args: &ScenarioArgs,
    interval: Duration,
) -> anyhow::Result<(Vec<Report>, serde_json::Value)> {
    let window = sonde_common::duration::parse_duration(&args.duration)
        .map_err(anyhow::Error::msg)?
        .max(Duration::from_secs(5));
    if args.hosts == 0 {
        bail!("--hosts (targets) must be at least 1");
    }
    let targets = Targets::start(args.hosts).await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("scrape.yml");
    std::fs::write(&config, targets.config(interval))?;
    let mut figures = Vec::new();

    // Sonde: one collector, scraping into its embedded store.
    if !args.quiet {
        eprintln!("scrape: sonde-collector scraping {} targets", args.hosts);
    }
    let sonde = procs::collector_with(
        "sonde-collector",
        &["--scrape-config".into(), config.display().to_string()],
    )
    .await?;
    let (elapsed, scrapes, cpu, rss) = measure(&targets, &[&sonde], window).await;
    let samples = scrapes * SERIES_PER_TARGET as u64;
    figures.push(ScrapeFigures {
        system: "sonde".into(),
        window_s: elapsed,
        scrapes,
        samples_scraped: samples,
        samples_stored: stored(sonde.port, window).await,
        cpu_seconds: cpu,
        samples_per_cpu_second: (cpu > 0.0).then(|| samples as f64 / cpu),
        peak_rss_bytes: rss,
    });
    drop(sonde);

    // vmagent into VictoriaMetrics.
    if !args.quiet {
        eprintln!(
            "scrape: vmagent scraping {} targets into VictoriaMetrics",
            args.hosts
        );
    }
    let vm = procs::victoria_metrics().await?;
    let port = procs::free_port()?;
    let tmp = tempfile::tempdir()?;
    let vmagent = procs::spawn_server(
        "vmagent",
        port,
        procs::system_binary("vmagent", "victoria-metrics")?,
        vec![
            format!("-promscrape.config={}", config.display()),
            format!("-remoteWrite.url=http://127.0.0.1:{}/api/v1/write", vm.port),
            format!("-remoteWrite.tmpDataPath={}", tmp.path().display()),
            format!("-httpListenAddr=127.0.0.1:{port}"),
            "-loggerLevel=ERROR".into(),
        ],
        Some(tmp),
    );
    let mut vmagent = vmagent?;
    vmagent
        .wait_ready("/health", Duration::from_secs(30))
        .await?;
    let (elapsed, scrapes, cpu, rss) = measure(&targets, &[&vmagent, &vm], window).await;
    let samples = scrapes * SERIES_PER_TARGET as u64;
    // Let vmagent deliver and VictoriaMetrics make it searchable before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = http_get(vm.port, "/internal/force_flush").await;
    figures.push(ScrapeFigures {
        system: "vmagent + victoria-metrics".into(),
        window_s: elapsed,
        scrapes,
        samples_scraped: samples,
        samples_stored: stored(vm.port, window).await,
        cpu_seconds: cpu,
        samples_per_cpu_second: (cpu > 0.0).then(|| samples as f64 / cpu),
        peak_rss_bytes: rss,
    });
    drop(vmagent);
    drop(vm);

    let mut text = format!(
        "scrape: {} targets x {SERIES_PER_TARGET} series every {:?}, {:.0} s window\n",
        args.hosts,
        interval,
        window.as_secs_f64()
    );
    let _ = writeln!(
        text,
        "  {:<28} {:>8} {:>14} {:>14} {:>9} {:>16} {:>10}",
        "system", "scrapes", "samples", "stored", "CPU s", "samples/CPU s", "peak RSS"
    );
    for f in &figures {
        let _ = writeln!(
            text,
            "  {:<28} {:>8} {:>14} {:>14} {:>9.2} {:>16} {:>7.0} MiB",
            f.system,
            f.scrapes,
            f.samples_scraped,
            f.samples_stored.map_or("-".into(), |s| s.to_string()),
            f.cpu_seconds,
            f.samples_per_cpu_second
                .map_or("-".into(), |v| format!("{v:.0}")),
            f.peak_rss_bytes as f64 / 1048576.0
        );
    }
    let ratio = match (
        figures[0].samples_per_cpu_second,
        figures[1].samples_per_cpu_second,
    ) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let _ = writeln!(
        text,
        "  Sonde / vmagent samples per CPU second: {}",
        ratio.map_or("-".into(), |r| format!("{r:.2}x"))
    );
    print!("{text}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("scrape.txt"), &text)?;
    let summary = serde_json::json!({
        "targets": args.hosts,
        "series_per_target": SERIES_PER_TARGET,
        "interval_s": interval.as_secs_f64(),
        "sonde": figures[0],
        "vmagent_victoriametrics": figures[1],
        "ratio_samples_per_cpu_second": ratio,
    });
    Ok((Vec::new(), summary))
}
