//! `agent-bench footprint`: what collecting everything about this host costs, at each interval,
//! both pipelines running at once over the same window:
//!
//! - Sonde: `sonde-agent` (default flags, free ports for its StatsD and HTTP listeners) pushing
//!   to a `sonde-collector` with a temporary data directory. Measured: the agent only.
//! - Peer: `prometheus-node-exporter` scraped at the same interval by `vmagent`, which
//!   remote-writes into `victoria-metrics`. Measured: node_exporter + vmagent.
//!
//! Each side runs `--warmup-intervals` intervals before the window opens. Over the window:
//! collections (the agent's `sonde_agent_collections_total`; vmagent's
//! `vm_promscrape_scraped_samples_count`), samples per collection (the agent's
//! `sonde_agent_samples_collected_total`, every source; vmagent's
//! `vm_promscrape_scraped_samples_sum`), CPU time, VmRSS sampled every 250 ms (average) and
//! VmHWM (peak). After it: the series each store holds for the host, and node_exporter's
//! exposition size.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::{
    AgentBenchArgs, ProcessFigures, Watch, cores, encode_param, exposition_samples, http_text, mib,
    parse_duration, prom_by_label, prom_sum, watch_during,
};
use crate::procs::{self, Server};

/// Sonde agent's resident memory target, from the issue.
const SONDE_RSS_TARGET: u64 = 8 << 20;
/// Sonde's CPU per collection, at most this share of the peer's (the issue).
const CPU_RATIO_TARGET: f64 = 1.0 / 3.0;

#[derive(Debug, Serialize)]
struct Side {
    name: String,
    processes: Vec<ProcessFigures>,
    /// Collections (scrapes, for the peer) inside the window.
    collections: f64,
    samples_per_collection: Option<f64>,
    /// Sonde only: samples per collection by the agent's `source` label.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    samples_per_collection_by_source: BTreeMap<String, f64>,
    /// Series the store holds for the host after the window.
    stored_series: Option<u64>,
    /// Peer only: samples in one node_exporter exposition.
    exposed_samples: Option<u64>,
    /// From the threads' schedstat run times.
    cpu_seconds: f64,
    /// From utime + stime (whole clock ticks): a coarse cross-check.
    cpu_seconds_ticks: f64,
    cpu_ms_per_collection: f64,
    cpu_us_per_sample: Option<f64>,
    /// CPU time over the window, in percent of one core.
    cpu_percent: f64,
    /// Sums over the side's measured processes.
    avg_rss_bytes: u64,
    peak_rss_bytes: u64,
}

#[derive(Debug, Serialize)]
struct Targets {
    sonde_peak_rss_at_most_8_mib: bool,
    sonde_avg_rss_at_most_8_mib: bool,
    sonde_cpu_per_collection_at_most_a_third_of_peer: bool,
}

#[derive(Debug, Serialize)]
struct Phase {
    interval_s: f64,
    warmup_s: f64,
    window_s: f64,
    sonde: Side,
    peer: Side,
    /// Sonde's CPU per collection divided by the peer's (target: at most 1/3).
    cpu_per_collection_ratio: f64,
    avg_rss_ratio: f64,
    peak_rss_ratio: f64,
    targets: Targets,
}

#[derive(Debug, Serialize)]
struct Footprint {
    benchmark: &'static str,
    cores: usize,
    phases: Vec<Phase>,
    /// With two intervals or more: each side's CPU split into a cost per collection and a
    /// cost per second of running (timers, idle wake-ups), fitted over the phases.
    cpu_model: Option<CpuModel>,
}

/// CPU per second of window = `ms_per_collection` x collections per second +
/// `idle_ms_per_second` (least squares over the phases).
#[derive(Debug, Serialize)]
struct CostModel {
    ms_per_collection: f64,
    idle_ms_per_second: f64,
}

#[derive(Debug, Serialize)]
struct CpuModel {
    sonde: CostModel,
    peer: CostModel,
    /// Sonde's marginal CPU per collection over the peer's.
    per_collection_ratio: f64,
}

fn fit(points: &[(f64, f64)]) -> Option<CostModel> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let var: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if var <= 0.0 {
        return None;
    }
    let cov: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let a = cov / var;
    Some(CostModel {
        ms_per_collection: a,
        idle_ms_per_second: my - a * mx,
    })
}

fn cpu_model(phases: &[Phase]) -> Option<CpuModel> {
    let points = |side: fn(&Phase) -> &Side| -> Vec<(f64, f64)> {
        phases
            .iter()
            .map(|p| {
                let s = side(p);
                (s.collections / p.window_s, s.cpu_seconds * 1e3 / p.window_s)
            })
            .collect()
    };
    let sonde = fit(&points(|p| &p.sonde))?;
    let peer = fit(&points(|p| &p.peer))?;
    Some(CpuModel {
        per_collection_ratio: sonde.ms_per_collection / peer.ms_per_collection,
        sonde,
        peer,
    })
}

pub async fn run(args: &AgentBenchArgs) -> anyhow::Result<(String, serde_json::Value)> {
    let window = parse_duration("duration", args.duration.as_deref().unwrap_or("60s"))?;
    let mut intervals = Vec::new();
    for i in &args.intervals {
        intervals.push(parse_duration("intervals", i)?);
    }
    anyhow::ensure!(!intervals.is_empty(), "--intervals: give at least one");
    let mut phases = Vec::new();
    for interval in intervals {
        let warmup = interval * args.warmup_intervals + Duration::from_secs(1);
        // Bounded: start-up, warm-up, window and the reads after it.
        let bound = warmup + window + Duration::from_secs(180);
        eprintln!(
            "footprint: interval {interval:?}, warm-up {warmup:?}, window {window:?} (both pipelines at once)"
        );
        let phase = tokio::time::timeout(bound, phase(interval, warmup, window))
            .await
            .map_err(|_| {
                anyhow::anyhow!("footprint at {interval:?} did not finish within {bound:?}")
            })??;
        eprint!("{}", phase_text(&phase));
        phases.push(phase);
    }
    let result = Footprint {
        benchmark: "footprint",
        cores: cores(),
        cpu_model: cpu_model(&phases),
        phases,
    };
    let mut text = format!(
        "== agent-bench footprint ({} cores; both pipelines run at once)\n",
        result.cores
    );
    for p in &result.phases {
        text.push_str(&phase_text(p));
    }
    if let Some(m) = &result.cpu_model {
        let _ = writeln!(
            text,
            "CPU model over the intervals (CPU = per collection x collections + idle x time):\n  sonde-agent: {:.3} ms per collection + {:.3} ms/s idle\n  node_exporter+vmagent: {:.3} ms per collection + {:.3} ms/s idle\n  per-collection ratio {:.3}",
            m.sonde.ms_per_collection,
            m.sonde.idle_ms_per_second,
            m.peer.ms_per_collection,
            m.peer.idle_ms_per_second,
            m.per_collection_ratio
        );
    }
    Ok((text, serde_json::to_value(&result)?))
}

/// The Sonde side: a collector with its embedded store, and the agent pushing to it.
async fn start_sonde(interval: Duration) -> anyhow::Result<(Server, Server)> {
    let collector = procs::collector("sonde-collector").await?;
    let http = procs::free_port()?;
    let args = vec![
        "--collector".into(),
        format!("http://127.0.0.1:{}", collector.port),
        "--interval".into(),
        format!("{}ms", interval.as_millis()),
        "--statsd-listen".into(),
        format!("127.0.0.1:{}", procs::free_udp_port()?),
        "--http-listen".into(),
        format!("127.0.0.1:{http}"),
    ];
    let mut agent = procs::spawn_server(
        "sonde-agent",
        http,
        procs::sibling("sonde-agent")?,
        args,
        None,
    )?;
    agent
        .wait_ready("/healthz", Duration::from_secs(30))
        .await?;
    Ok((collector, agent))
}

/// The peer side: VictoriaMetrics, node_exporter, and vmagent scraping the one into the other.
async fn start_peer(interval: Duration) -> anyhow::Result<(Server, Server, Server)> {
    let vm = procs::victoria_metrics().await?;
    let port = procs::free_port()?;
    let mut node_exporter = procs::spawn_server(
        "node_exporter",
        port,
        procs::system_binary("prometheus-node-exporter", "prometheus-node-exporter")?,
        vec![format!("--web.listen-address=127.0.0.1:{port}")],
        None,
    )?;
    node_exporter
        .wait_ready("/metrics", Duration::from_secs(30))
        .await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("scrape.yml");
    let ms = interval.as_millis();
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: {ms}ms\n  scrape_timeout: {}ms\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
            ms.min(10_000),
            node_exporter.port
        ),
    )?;
    let port = procs::free_port()?;
    let args = vec![
        format!("-promscrape.config={}", config.display()),
        format!("-remoteWrite.url=http://127.0.0.1:{}/api/v1/write", vm.port),
        format!(
            "-remoteWrite.tmpDataPath={}",
            dir.path().join("tmp").display()
        ),
        format!("-httpListenAddr=127.0.0.1:{port}"),
        "-loggerLevel=ERROR".into(),
    ];
    let mut vmagent = procs::spawn_server(
        "vmagent",
        port,
        procs::system_binary("vmagent", "victoria-metrics")?,
        args,
        Some(dir),
    )?;
    vmagent
        .wait_ready("/health", Duration::from_secs(30))
        .await?;
    Ok((vm, node_exporter, vmagent))
}

/// Counters read from an agent's or vmagent's own /metrics.
#[derive(Debug, Default)]
struct Counters {
    collections: Option<f64>,
    samples: Option<f64>,
    /// Samples by their `source` label (the agent's only).
    by_source: BTreeMap<String, f64>,
}

async fn counters(port: u16, collections: &str, samples: &str) -> Counters {
    match http_text(&format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(text) => Counters {
            collections: prom_sum(&text, collections),
            samples: prom_sum(&text, samples),
            by_source: prom_by_label(&text, samples, "source"),
        },
        Err(e) => {
            eprintln!("footprint: cannot read 127.0.0.1:{port}/metrics: {e}");
            Counters::default()
        }
    }
}

/// Series a Prometheus query API holds matching `selector`.
async fn series_count(port: u16, selector: &str) -> Option<u64> {
    let url = format!(
        "http://127.0.0.1:{port}/api/v1/series?match[]={}",
        encode_param(selector)
    );
    let text = http_text(&url).await.ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(v["data"].as_array()?.len() as u64)
}

async fn phase(interval: Duration, warmup: Duration, window: Duration) -> anyhow::Result<Phase> {
    let (collector, agent) = start_sonde(interval).await?;
    let (vm, node_exporter, vmagent) = start_peer(interval).await?;
    tokio::time::sleep(warmup).await;

    let measured: [&Server; 3] = [&agent, &node_exporter, &vmagent];
    let pids: Vec<u32> = measured.iter().filter_map(|s| s.pid()).collect();
    anyhow::ensure!(pids.len() == 3, "a measured process is not running");
    const AGENT_COLLECTIONS: &str = "sonde_agent_collections_total";
    const AGENT_SAMPLES: &str = "sonde_agent_samples_collected_total";
    const VMAGENT_SCRAPES: &str = "vm_promscrape_scraped_samples_count";
    const VMAGENT_SAMPLES: &str = "vm_promscrape_scraped_samples_sum";
    let a0 = counters(agent.port, AGENT_COLLECTIONS, AGENT_SAMPLES).await;
    let v0 = counters(vmagent.port, VMAGENT_SCRAPES, VMAGENT_SAMPLES).await;
    let mut watches: Vec<Watch> = pids.iter().map(|p| Watch::start(*p)).collect();
    let started = Instant::now();
    watch_during(
        &mut watches,
        Duration::from_millis(250),
        tokio::time::sleep(window),
    )
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut figures = Vec::new();
    for (server, w) in measured.iter().zip(&watches) {
        if procs::proc_sample(w.pid).is_none() {
            anyhow::bail!("{} exited during the window", server.name);
        }
        figures.push(ProcessFigures {
            name: server.name.clone(),
            cpu_seconds: w.cpu.seconds(),
            cpu_seconds_ticks: w.cpu.tick_seconds(),
            avg_rss_bytes: w.rss.average(),
            peak_rss_bytes: w.peak_rss(),
        });
    }

    let a1 = counters(agent.port, AGENT_COLLECTIONS, AGENT_SAMPLES).await;
    let v1 = counters(vmagent.port, VMAGENT_SCRAPES, VMAGENT_SAMPLES).await;
    // After the window, so these reads cost nothing inside it.
    let host = http_text(&format!(
        "http://127.0.0.1:{}/api/v1/label/host/values",
        collector.port
    ))
    .await
    .ok()
    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    .and_then(|v| v["data"][0].as_str().map(str::to_owned));
    let sonde_series = match &host {
        Some(h) => series_count(collector.port, &format!("{{host=\"{h}\"}}")).await,
        None => None,
    };
    let peer_series = series_count(vm.port, "{job=\"node\"}").await;
    let exposed = http_text(&format!("http://127.0.0.1:{}/metrics", node_exporter.port))
        .await
        .ok()
        .map(|t| exposition_samples(&t));

    let expected = window.as_secs_f64() / interval.as_secs_f64();
    let delta = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let mut sonde = side(
        "sonde-agent",
        figures[..1].to_vec(),
        delta(a0.collections, a1.collections).unwrap_or(expected),
        delta(a0.samples, a1.samples),
        sonde_series,
        None,
        elapsed,
    );
    if sonde.collections > 0.0 {
        for (source, n) in &a1.by_source {
            let before = a0.by_source.get(source).copied().unwrap_or(0.0);
            sonde
                .samples_per_collection_by_source
                .insert(source.clone(), (n - before) / sonde.collections);
        }
    }
    let peer = side(
        "node_exporter+vmagent",
        figures[1..].to_vec(),
        delta(v0.collections, v1.collections).unwrap_or(expected),
        delta(v0.samples, v1.samples),
        peer_series,
        exposed,
        elapsed,
    );
    drop((agent, collector, vmagent, node_exporter, vm));

    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let cpu_ratio = ratio(sonde.cpu_ms_per_collection, peer.cpu_ms_per_collection);
    Ok(Phase {
        interval_s: interval.as_secs_f64(),
        warmup_s: warmup.as_secs_f64(),
        window_s: elapsed,
        targets: Targets {
            sonde_peak_rss_at_most_8_mib: sonde.peak_rss_bytes <= SONDE_RSS_TARGET,
            sonde_avg_rss_at_most_8_mib: sonde.avg_rss_bytes <= SONDE_RSS_TARGET,
            sonde_cpu_per_collection_at_most_a_third_of_peer: cpu_ratio <= CPU_RATIO_TARGET,
        },
        cpu_per_collection_ratio: cpu_ratio,
        avg_rss_ratio: ratio(sonde.avg_rss_bytes as f64, peer.avg_rss_bytes as f64),
        peak_rss_ratio: ratio(sonde.peak_rss_bytes as f64, peer.peak_rss_bytes as f64),
        sonde,
        peer,
    })
}

fn side(
    name: &str,
    processes: Vec<ProcessFigures>,
    collections: f64,
    samples: Option<f64>,
    stored_series: Option<u64>,
    exposed_samples: Option<u64>,
    elapsed: f64,
) -> Side {
    let cpu_seconds: f64 = processes.iter().map(|p| p.cpu_seconds).sum();
    let per = |x: f64| {
        if collections > 0.0 {
            x / collections
        } else {
            0.0
        }
    };
    Side {
        name: name.to_owned(),
        collections,
        samples_per_collection: samples.map(per),
        samples_per_collection_by_source: BTreeMap::new(),
        stored_series,
        exposed_samples,
        cpu_seconds,
        cpu_seconds_ticks: processes.iter().map(|p| p.cpu_seconds_ticks).sum(),
        cpu_ms_per_collection: per(cpu_seconds * 1e3),
        cpu_us_per_sample: samples.filter(|s| *s > 0.0).map(|s| cpu_seconds * 1e6 / s),
        cpu_percent: cpu_seconds * 100.0 / elapsed.max(1e-9),
        avg_rss_bytes: processes.iter().map(|p| p.avg_rss_bytes).sum(),
        peak_rss_bytes: processes.iter().map(|p| p.peak_rss_bytes).sum(),
        processes,
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn phase_text(p: &Phase) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "-- interval {}s: window {:.1}s after {:.0}s warm-up",
        p.interval_s, p.window_s, p.warmup_s
    );
    let _ = writeln!(
        s,
        "{:<24} {:>11} {:>11} {:>10} {:>10} {:>12} {:>8} {:>10} {:>8} {:>8}",
        "",
        "collections",
        "samples/col",
        "series",
        "avg RSS",
        "peak RSS",
        "CPU s",
        "CPU ms/col",
        "CPU %",
        "(ticks)"
    );
    for side in [&p.sonde, &p.peer] {
        let _ = writeln!(
            s,
            "{:<24} {:>11.0} {:>11} {:>10} {:>6.1} MiB {:>8.1} MiB {:>8.4} {:>10.3} {:>7.3}% {:>7.2}s",
            side.name,
            side.collections,
            opt(side.samples_per_collection.map(|v| format!("{v:.0}"))),
            opt(side.stored_series),
            mib(side.avg_rss_bytes),
            mib(side.peak_rss_bytes),
            side.cpu_seconds,
            side.cpu_ms_per_collection,
            side.cpu_percent,
            side.cpu_seconds_ticks
        );
        if side.processes.len() > 1 {
            for pr in &side.processes {
                let _ = writeln!(
                    s,
                    "  {:<22} {:>11} {:>11} {:>10} {:>6.1} MiB {:>8.1} MiB {:>8.4} {:>10} {:>8} {:>7.2}s",
                    pr.name,
                    "",
                    "",
                    "",
                    mib(pr.avg_rss_bytes),
                    mib(pr.peak_rss_bytes),
                    pr.cpu_seconds,
                    "",
                    "",
                    pr.cpu_seconds_ticks
                );
            }
        }
    }
    if !p.sonde.samples_per_collection_by_source.is_empty() {
        let _ = writeln!(
            s,
            "sonde-agent samples per collection by source: {}",
            p.sonde
                .samples_per_collection_by_source
                .iter()
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(n) = p.peer.exposed_samples {
        let _ = writeln!(s, "node_exporter exposes {n} samples per scrape");
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let _ = writeln!(
        s,
        "target: Sonde agent RSS <= 8 MiB: peak {:.1} MiB {}, average {:.1} MiB {}",
        mib(p.sonde.peak_rss_bytes),
        verdict(p.targets.sonde_peak_rss_at_most_8_mib),
        mib(p.sonde.avg_rss_bytes),
        verdict(p.targets.sonde_avg_rss_at_most_8_mib)
    );
    let _ = writeln!(
        s,
        "target: CPU per collection <= 1/3 of node_exporter+vmagent: ratio {:.3} {} (RSS ratio: average {:.3}, peak {:.3})",
        p.cpu_per_collection_ratio,
        verdict(p.targets.sonde_cpu_per_collection_at_most_a_third_of_peer),
        p.avg_rss_ratio,
        p.peak_rss_ratio
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_splits_cpu_into_per_collection_and_idle() {
        // 2 ms per collection + 0.5 ms/s idle, at 1 and 0.1 collections per second.
        let m = fit(&[(1.0, 2.5), (0.1, 0.7)]).unwrap();
        assert!((m.ms_per_collection - 2.0).abs() < 1e-9);
        assert!((m.idle_ms_per_second - 0.5).abs() < 1e-9);
        assert!(fit(&[(1.0, 2.5)]).is_none());
        assert!(fit(&[(1.0, 2.5), (1.0, 3.0)]).is_none());
    }
}
