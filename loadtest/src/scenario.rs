//! Scenarios that ship with the load generator. Each starts the processes it needs on
//! 127.0.0.1, drives load, audits what was stored, writes its reports, and stops everything.
//!
//! - `baseline`: one collector with its embedded store.
//! - `peer`: the same load into our collector (native) and into VictoriaMetrics (remote write),
//!   side by side in one run.
//! - `fleet`: haproxy in front of 1, 2 and 3 collectors, closed loop, throughput per count.
//! - `outage`: a collector killed with SIGKILL mid-run and restarted; nothing acknowledged may
//!   be lost.
//! - `fleet-outage`: haproxy in front of three collectors forwarding by remote write to
//!   VictoriaMetrics (de-duplication on); one collector is killed with SIGKILL and restarted,
//!   and VictoriaMetrics is stopped for a while and restarted; every acknowledged sample must
//!   be in VictoriaMetrics, each (series, timestamp) once.
//! - `storage`: the embedded store against VictoriaMetrics on the same backfill: ingest rate
//!   and CPU, bytes per sample on disk, memory, visibility delay, range-query latency
//!   ([`crate::storage_bench`]).
//! - `alerting`: push-to-webhook latency (fast path and query-based rules, existing and new
//!   series) and rule evaluations per CPU second over 10,000 series, against vmalert over
//!   VictoriaMetrics ([`crate::alerting_bench`]).
//! - `scrape`: a collector scraping `--hosts` targets (300 by default in the docs' command)
//!   against vmagent scraping them into VictoriaMetrics: samples scraped and stored per CPU
//!   second ([`crate::scrape_bench`]).

use anyhow::bail;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::audit;
use crate::drive::{DriveConfig, Mode, Protocol, drive};
use crate::generate::{Host, HostShape};
use crate::procs::{self, Server};
use crate::report::{self, ProcessUsage, Report};

#[derive(Debug, clap::Args)]
pub struct ScenarioArgs {
    /// baseline, peer, fleet, outage, fleet-outage, storage, alerting or scrape.
    pub name: String,
    /// Length of each load phase.
    #[arg(long, default_value = "30s")]
    pub duration: String,
    /// Simulated hosts (each ~164 series).
    #[arg(long, default_value_t = 200)]
    pub hosts: usize,
    /// Push interval of every simulated host (open-loop phases; default 1s), or the interval
    /// between the backfilled samples of each series (storage; default 10s).
    #[arg(long)]
    pub interval: Option<String>,
    /// Concurrent senders in closed-loop phases (fleet).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Share of series that churn (0..1).
    #[arg(long, default_value_t = 0.05)]
    pub churn: f64,
    /// Series to backfill (storage): about 164 per simulated host.
    #[arg(long, default_value_t = 10_000)]
    pub series: usize,
    /// Simulated hours to backfill, ending now (storage).
    #[arg(long, default_value_t = 24.0)]
    pub hours: f64,
    /// When the collectors of `peer` fsync what they acknowledge: `always` (their default),
    /// or a duration such as `1s` (acknowledged once written to the OS, fsynced that often;
    /// VictoriaMetrics acknowledges from memory), passed as --wal-fsync and --queue-fsync
    #[arg(long, default_value = "always")]
    pub fsync: String,
    /// Write the scenario's JSON summary (every report) here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Directory for text, JSON and SVG reports.
    #[arg(long, default_value = "loadtest-results")]
    pub out: PathBuf,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Serialize)]
pub struct ScenarioResult {
    pub scenario: String,
    pub reports: Vec<Report>,
    /// Scenario-specific figures (ratios, scaling).
    pub summary: serde_json::Value,
    /// Lost acknowledged samples over every phase: must be 0.
    pub lost: u64,
}

struct Plan {
    duration: Duration,
    interval: Duration,
    hosts: Arc<Vec<Host>>,
    series_per_host: usize,
    args: ScenarioArgs,
}

fn hosts(n: usize, churn: f64, tag: &str) -> Arc<Vec<Host>> {
    let shape = HostShape {
        churn,
        churn_every: 10,
        ..HostShape::default()
    };
    Arc::new(
        (0..n)
            .map(|i| Host::new(format!("lt-{tag}-{i:05}"), &shape))
            .collect(),
    )
}

fn run_tag() -> String {
    format!("{:x}", sonde_common::model::now_ms() % 0xff_ffff)
}

impl Plan {
    fn drive_config(
        &self,
        target: String,
        protocol: Protocol,
        mode: Mode,
    ) -> anyhow::Result<DriveConfig> {
        Ok(DriveConfig {
            target: target.parse()?,
            protocol,
            interval: self.interval,
            duration: self.duration,
            max_requests: u64::MAX,
            mode,
            max_inflight: 1024,
            timeout: Duration::from_secs(10),
            grace: Duration::from_secs(30),
            quiet: self.args.quiet,
        })
    }

    /// One phase: drive, flush the storage if it buffers (`flush`), audit against
    /// `query_urls`, measure the servers' CPU over the load (`usage`), report.
    async fn phase(
        &self,
        name: &str,
        cfg: DriveConfig,
        query_urls: &[String],
        flush: Option<String>,
        usage: &(dyn Fn() -> Vec<ProcessUsage> + Sync),
    ) -> anyhow::Result<Report> {
        let before = usage();
        let hosts = self.hosts.clone();
        let target = cfg.target.to_string();
        let (protocol, mode) = (cfg.protocol, cfg.mode);
        let result = drive(cfg, hosts.clone()).await;
        let mut after = usage();
        for u in &mut after {
            u.cpu_seconds -= before
                .iter()
                .find(|b| b.name == u.name)
                .map(|b| b.cpu_seconds)
                .unwrap_or(0.0);
        }
        if let Some(url) = flush {
            http_get(&url).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let range_s = (result.elapsed.as_secs() + 120).max(180);
        let audit = audit(
            query_urls,
            hosts,
            &result.acked,
            sonde_common::model::now_ms() + 1000,
            range_s,
        )
        .await;
        let r = Report::new(
            name,
            &target,
            protocol,
            mode,
            self.hosts.len(),
            self.series_per_host,
            self.interval.as_secs_f64(),
            &result,
            Some(audit),
            after,
        );
        eprintln!("\n{}", r.text());
        report::write_all(&r, &self.args.out, name)?;
        Ok(r)
    }
}

fn usage_of(servers: &[&Server]) -> Vec<ProcessUsage> {
    servers.iter().map(|s| s.usage()).collect()
}

fn native_url(s: &Server) -> String {
    format!("http://127.0.0.1:{}/api/v1/push", s.port)
}

fn query_url(s: &Server) -> String {
    format!("http://127.0.0.1:{}", s.port)
}

pub async fn run(args: ScenarioArgs) -> anyhow::Result<ScenarioResult> {
    let duration =
        sonde_common::duration::parse_duration(&args.duration).map_err(anyhow::Error::msg)?;
    let default_interval = if args.name == "storage" { "10s" } else { "1s" };
    let interval = sonde_common::duration::parse_duration(
        args.interval.as_deref().unwrap_or(default_interval),
    )
    .map_err(anyhow::Error::msg)?;
    let hosts = hosts(args.hosts, args.churn, &run_tag());
    let series_per_host = hosts.first().map(Host::series_count).unwrap_or(0);
    let plan = Plan {
        duration,
        interval,
        hosts,
        series_per_host,
        args,
    };
    let name = plan.args.name.clone();
    let (reports, summary) = match name.as_str() {
        "baseline" => {
            let c = procs::collector("sonde-collector").await?;
            let r = plan
                .phase(
                    "baseline",
                    plan.drive_config(native_url(&c), Protocol::Native, Mode::Open)?,
                    &[query_url(&c)],
                    None,
                    &|| usage_of(&[&c]),
                )
                .await?;
            let summary = serde_json::json!({"accepted_per_s": r.accepted_per_s, "p99_ms": r.latency.p99_ms, "server_cpu_us_per_sample": r.server_cpu_us_per_sample});
            (vec![r], summary)
        }
        "peer" => peer(&plan).await?,
        "fleet" => fleet(&plan).await?,
        "outage" => outage(&plan).await?,
        "fleet-outage" => fleet_outage(&plan).await?,
        "storage" => crate::storage_bench::run(&plan.args, plan.interval).await?,
        "alerting" => crate::alerting_bench::run(&plan.args).await?,
        "scrape" => crate::scrape_bench::run(&plan.args, plan.interval).await?,
        other => bail!(
            "unknown scenario '{other}': baseline, peer, fleet, outage, fleet-outage, storage, alerting or scrape"
        ),
    };
    let lost = reports.iter().map(|r| r.lost).sum();
    let result = ScenarioResult {
        scenario: name.clone(),
        reports,
        summary,
        lost,
    };
    let json = serde_json::to_string_pretty(&result)?;
    std::fs::create_dir_all(&plan.args.out)?;
    std::fs::write(plan.args.out.join(format!("scenario-{name}.json")), &json)?;
    if let Some(path) = &plan.args.json {
        std::fs::write(path, &json)?;
    }
    Ok(result)
}

async fn peer(plan: &Plan) -> anyhow::Result<(Vec<Report>, serde_json::Value)> {
    let fsync = plan.args.fsync.clone();
    let c =
        procs::collector_with("sonde-collector", &["--wal-fsync".into(), fsync.clone()]).await?;
    let vm = procs::victoria_metrics().await?;
    let sonde = plan
        .phase(
            "peer-sonde",
            plan.drive_config(native_url(&c), Protocol::Native, Mode::Open)?,
            &[query_url(&c)],
            None,
            &|| usage_of(&[&c]),
        )
        .await?;
    let vm_url = format!("http://127.0.0.1:{}/api/v1/write", vm.port);
    // VictoriaMetrics buffers recent samples in memory before search sees them: flush first.
    let flush = format!("http://127.0.0.1:{}/internal/force_flush", vm.port);
    let vm_report = plan
        .phase(
            "peer-victoriametrics",
            plan.drive_config(vm_url, Protocol::RemoteWrite, Mode::Open)?,
            &[query_url(&vm)],
            Some(flush),
            &|| usage_of(&[&vm]),
        )
        .await?;
    // The stateless tier: a collector that only decodes, validates and forwards by remote write
    // to another VictoriaMetrics. Its CPU alone is measured; the audit reads that storage.
    let vm2 = procs::victoria_metrics().await?;
    let fwd = procs::collector_with(
        "sonde-collector-forward",
        &[
            "--remote-write".into(),
            format!("http://127.0.0.1:{}/api/v1/write", vm2.port),
            "--queue-fsync".into(),
            fsync.clone(),
        ],
    )
    .await?;
    let forward = plan.forward_phase("peer-sonde-forward", &fwd, &vm2).await?;
    let per_sample = |r: &Report| r.server_cpu_us_per_sample;
    let ratio_of = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let ratio = ratio_of(per_sample(&sonde), per_sample(&vm_report));
    let forward_ratio = ratio_of(per_sample(&forward), per_sample(&vm_report));
    let summary = serde_json::json!({
        "fsync": fsync,
        "sonde_cpu_us_per_sample": sonde.server_cpu_us_per_sample,
        "victoriametrics_cpu_us_per_sample": vm_report.server_cpu_us_per_sample,
        "cpu_ratio_sonde_to_victoriametrics": ratio,
        "sonde_forward_cpu_us_per_sample": forward.server_cpu_us_per_sample,
        "cpu_ratio_forward_to_victoriametrics": forward_ratio,
        "sonde_forward_p99_ms": forward.latency.p99_ms,
        "sonde_p99_ms": sonde.latency.p99_ms,
        "victoriametrics_p99_ms": vm_report.latency.p99_ms,
        "sonde_peak_rss_bytes": sonde.servers.first().map(|s| s.peak_rss_bytes),
        "victoriametrics_peak_rss_bytes": vm_report.servers.first().map(|s| s.peak_rss_bytes),
    });
    Ok((vec![sonde, vm_report, forward], summary))
}

async fn http_get(url: &str) {
    use http_body_util::Empty;
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    if let Ok(uri) = url.parse::<hyper::Uri>() {
        let _ = tokio::time::timeout(Duration::from_secs(30), client.get(uri)).await;
    }
}

async fn fleet(plan: &Plan) -> anyhow::Result<(Vec<Report>, serde_json::Value)> {
    let mut reports = Vec::new();
    let mut points = Vec::new();
    for n in 1..=3usize {
        let mut collectors = Vec::new();
        for i in 0..n {
            collectors.push(procs::collector(&format!("sonde-collector-{i}")).await?);
        }
        let ports: Vec<u16> = collectors.iter().map(|c| c.port).collect();
        let lb = procs::haproxy(&ports).await?;
        let queries: Vec<String> = collectors.iter().map(query_url).collect();
        let mut servers: Vec<&Server> = collectors.iter().collect();
        servers.push(&lb);
        let cfg = plan.drive_config(
            format!("http://127.0.0.1:{}/api/v1/push", lb.port),
            Protocol::Native,
            Mode::Closed {
                concurrency: plan.args.concurrency,
            },
        )?;
        let r = plan
            .phase(&format!("fleet-{n}"), cfg, &queries, None, &|| {
                usage_of(&servers)
            })
            .await?;
        let collector_cpu: f64 = r
            .servers
            .iter()
            .filter(|s| s.name.starts_with("sonde-collector"))
            .map(|s| s.cpu_seconds)
            .sum();
        points.push(serde_json::json!({
            "collectors": n,
            "accepted_per_s": r.accepted_per_s,
            "p99_ms": r.latency.p99_ms,
            "collector_cpu_seconds": collector_cpu,
            "samples_per_collector_cpu_second": if collector_cpu > 0.0 { r.accepted as f64 / collector_cpu } else { 0.0 },
        }));
        reports.push(r);
    }
    let line: Vec<(f64, f64)> = points
        .iter()
        .map(|p| {
            (
                p["collectors"].as_f64().unwrap_or(0.0),
                p["accepted_per_s"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    std::fs::write(
        plan.args.out.join("fleet-scaling.svg"),
        report::line_chart(
            "fleet: accepted samples/s by collector count (haproxy, closed loop)",
            "collectors",
            "samples/s",
            &[("accepted", "#1f77b4", line)],
        ),
    )?;
    Ok((
        reports,
        serde_json::json!({"points": points, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)}),
    ))
}

async fn outage(plan: &Plan) -> anyhow::Result<(Vec<Report>, serde_json::Value)> {
    let c = procs::collector("sonde-collector").await?;
    let (url, q, port) = (native_url(&c), query_url(&c), c.port);
    let c = Arc::new(std::sync::Mutex::new(c));
    let kill_after = plan.duration / 3;
    let down_for = (plan.duration / 6).max(Duration::from_secs(1));
    let killer = {
        let c = c.clone();
        tokio::spawn(async move {
            tokio::time::sleep(kill_after).await;
            eprintln!("outage: SIGKILL to the collector");
            c.lock().unwrap_or_else(|e| e.into_inner()).kill9();
            tokio::time::sleep(down_for).await;
            let restarted = c.lock().unwrap_or_else(|e| e.into_inner()).restart();
            let ready = procs::wait_port_ready(port, "/readyz", Duration::from_secs(30)).await;
            eprintln!("outage: collector restarted ({restarted:?}, ready: {ready})");
        })
    };
    let usage = || vec![c.lock().unwrap_or_else(|e| e.into_inner()).usage()];
    let r = plan
        .phase(
            "outage",
            plan.drive_config(url, Protocol::Native, Mode::Open)?,
            &[q],
            None,
            &usage,
        )
        .await?;
    killer.await?;
    let summary = serde_json::json!({"killed_after_s": kill_after.as_secs_f64(), "down_for_s": down_for.as_secs_f64(), "retries": r.retries, "lost": r.lost});
    Ok((vec![r], summary))
}

/// Reads one value from a collector's /metrics (0 if absent).
async fn collector_metric(port: u16, name: &str) -> f64 {
    use http_body_util::{BodyExt, Empty};
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let Ok(uri) = format!("http://127.0.0.1:{port}/metrics").parse::<hyper::Uri>() else {
        return 0.0;
    };
    let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(5), client.get(uri)).await else {
        return 0.0;
    };
    let Ok(body) = resp.into_body().collect().await else {
        return 0.0;
    };
    let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    metric_sum(&text, name)
}

/// The sum of every sample of metric `name` in a text exposition, whatever its labels (e.g.
/// one per remote-write sink).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.rsplit_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

async fn fleet_outage(plan: &Plan) -> anyhow::Result<(Vec<Report>, serde_json::Value)> {
    let vm = Arc::new(std::sync::Mutex::new(
        procs::victoria_metrics_with(&["-dedup.minScrapeInterval=1ms"]).await?,
    ));
    let vm_port = vm.lock().unwrap_or_else(|e| e.into_inner()).port;
    let remote = vec![
        "--remote-write".to_string(),
        format!("http://127.0.0.1:{vm_port}/api/v1/write"),
        "--drain-timeout".into(),
        "5s".into(),
    ];
    let mut collectors = Vec::new();
    for i in 0..3 {
        collectors.push(procs::collector_with(&format!("sonde-collector-{i}"), &remote).await?);
    }
    let ports: Vec<u16> = collectors.iter().map(|c| c.port).collect();
    let lb = procs::haproxy(&ports).await?;
    let victim = Arc::new(std::sync::Mutex::new(collectors.remove(1)));
    let d = plan.duration;
    let chaos = {
        let (victim, vm) = (victim.clone(), vm.clone());
        tokio::spawn(async move {
            tokio::time::sleep(d / 5).await;
            eprintln!("fleet-outage: SIGKILL to collector 1");
            victim.lock().unwrap_or_else(|e| e.into_inner()).kill9();
            tokio::time::sleep(d / 5).await;
            let restarted = victim.lock().unwrap_or_else(|e| e.into_inner()).start();
            eprintln!("fleet-outage: collector 1 restarted ({restarted:?})");
            tokio::time::sleep(d / 10).await;
            eprintln!("fleet-outage: stopping VictoriaMetrics");
            vm.lock()
                .unwrap_or_else(|e| e.into_inner())
                .stop(Duration::from_secs(20));
            tokio::time::sleep(d / 5).await;
            let restarted = vm.lock().unwrap_or_else(|e| e.into_inner()).start();
            eprintln!("fleet-outage: VictoriaMetrics restarted ({restarted:?})");
        })
    };
    let cfg = plan.drive_config(
        format!("http://127.0.0.1:{}/api/v1/push", lb.port),
        Protocol::Native,
        Mode::Open,
    )?;
    let hosts = plan.hosts.clone();
    let target = cfg.target.to_string();
    let result = drive(cfg, hosts.clone()).await;
    chaos.await?;
    // Every collector delivers what its disk queue holds (the restarted one included).
    let all_ports: Vec<u16> = ports.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut pending = 0.0;
        for p in &all_ports {
            pending += collector_metric(*p, "sonde_collector_remote_write_queue_records").await;
        }
        if pending == 0.0 || std::time::Instant::now() > deadline {
            eprintln!("fleet-outage: queues drained ({pending} records left)");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    http_get(&format!("http://127.0.0.1:{vm_port}/internal/force_flush")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let range_s = (result.elapsed.as_secs() + 120).max(180);
    let audit = audit(
        &[format!("http://127.0.0.1:{vm_port}")],
        hosts,
        &result.acked,
        sonde_common::model::now_ms() + 1000,
        range_s,
    )
    .await;
    let mut usage: Vec<ProcessUsage> = collectors.iter().map(|c| c.usage()).collect();
    usage.push(victim.lock().unwrap_or_else(|e| e.into_inner()).usage());
    let r = Report::new(
        "fleet-outage",
        &target,
        Protocol::Native,
        Mode::Open,
        plan.hosts.len(),
        plan.series_per_host,
        plan.interval.as_secs_f64(),
        &result,
        Some(audit),
        usage,
    );
    eprintln!("\n{}", r.text());
    report::write_all(&r, &plan.args.out, "fleet-outage")?;
    let dups = r.audit.as_ref().map(|a| a.duplicate_samples).unwrap_or(0);
    let summary = serde_json::json!({"retries": r.retries, "lost": r.lost, "duplicate_samples": dups, "statuses": r.statuses});
    drop(lb);
    Ok((vec![r], summary))
}

impl Plan {
    /// A phase against a forwarding collector: drive it, wait until its remote-write queue is
    /// empty, flush the storage behind it, audit that storage, and measure the collector alone.
    async fn forward_phase(
        &self,
        name: &str,
        collector: &Server,
        storage: &Server,
    ) -> anyhow::Result<Report> {
        let cfg = self.drive_config(native_url(collector), Protocol::Native, Mode::Open)?;
        let target = cfg.target.to_string();
        let before = collector.usage();
        let result = drive(cfg, self.hosts.clone()).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while collector_metric(collector.port, "sonde_collector_remote_write_queue_records").await
            > 0.0
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // CPU up to the moment everything was forwarded: the sending is part of the cost.
        let mut usage = collector.usage();
        usage.cpu_seconds -= before.cpu_seconds;
        http_get(&format!(
            "http://127.0.0.1:{}/internal/force_flush",
            storage.port
        ))
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let range_s = (result.elapsed.as_secs() + 120).max(180);
        let audit = audit(
            &[query_url(storage)],
            self.hosts.clone(),
            &result.acked,
            sonde_common::model::now_ms() + 1000,
            range_s,
        )
        .await;
        let r = Report::new(
            name,
            &target,
            Protocol::Native,
            Mode::Open,
            self.hosts.len(),
            self.series_per_host,
            self.interval.as_secs_f64(),
            &result,
            Some(audit),
            vec![usage],
        );
        eprintln!("\n{}", r.text());
        report::write_all(&r, &self.args.out, name)?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn metric_sums_cover_labelled_and_bare_samples_of_that_name_only() {
        let text =
            "# TYPE q gauge\nq{url=\"http://a\"} 2\nq{url=\"http://b\"} 3.5\nq_other 100\nq 1\n";
        assert_eq!(metric_sum(text, "q"), 6.5);
        assert_eq!(metric_sum(text, "q_other"), 100.0);
        assert_eq!(metric_sum(text, "missing"), 0.0);
    }
}
