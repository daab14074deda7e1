//! `sonde-loadtest`: simulated hosts pushing to Sonde or to any Prometheus remote-write
//! endpoint, with latency, throughput and a loss audit (`run`); ready-made scenarios that start
//! the processes they need on 127.0.0.1 (`scenario`); and `demo`, a collector plus an agent on
//! this host.

mod agentbench;
mod alerting_bench;
mod audit;
mod demo;
mod drive;
mod generate;
mod procs;
mod report;
mod scenario;
mod scrape_bench;
mod serve;
mod storage_bench;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drive::{DriveConfig, Mode, Protocol};
use generate::{Host, HostShape};

#[derive(Debug, Parser)]
#[command(
    name = "sonde-loadtest",
    version,
    about = "Sonde's load generator, scenarios and demo runner"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive load at a running target and report (optionally auditing its storage).
    Run(RunArgs),
    /// Run a ready-made scenario: baseline, peer, fleet, outage, fleet-outage, storage, alerting or scrape.
    Scenario(scenario::ScenarioArgs),
    /// Run a collector (embedded store) and an agent on this host, until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Measure the agent beside its peers: footprint or statsd.
    AgentBench(agentbench::AgentBenchArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Push URL: a collector's /api/v1/push (native) or any remote-write endpoint.
    #[arg(long)]
    target: String,
    /// native or remote-write.
    #[arg(long, default_value = "native")]
    protocol: String,
    /// Base URL(s) of a Prometheus query API holding what the target stored, for the loss
    /// audit (repeatable: the union is audited). Without it the audit is skipped.
    #[arg(long = "query-url")]
    query_urls: Vec<String>,
    /// Simulated hosts (each ~164 series: CPU, memory, disks, network, filesystems, an app).
    #[arg(long, default_value_t = 100)]
    hosts: usize,
    /// Push interval of every host (open loop).
    #[arg(long, default_value = "1s")]
    interval: String,
    /// How long to offer load.
    #[arg(long, default_value = "30s")]
    duration: String,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 10_000_000)]
    max_requests: u64,
    /// Closed loop with this many concurrent senders, as fast as the target answers.
    #[arg(long)]
    closed_loop: Option<usize>,
    /// Share of series that churn (0..1).
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// Timeout of one request.
    #[arg(long, default_value = "10s")]
    timeout: String,
    /// Directory for the text, JSON and SVG reports.
    #[arg(long, default_value = "loadtest-results")]
    out: PathBuf,
    /// Name of the run (report file names).
    #[arg(long, default_value = "run")]
    name: String,
    /// Allow targets that are not loopback addresses.
    #[arg(long)]
    allow_non_loopback: bool,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

/// Refuses a URL whose host is not a loopback address (unless allowed).
fn check_loopback(url: &str, allow: bool) -> anyhow::Result<()> {
    if allow {
        return Ok(());
    }
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("'{url}' is not a URL"))?;
    let host = uri
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    if !loopback {
        bail!(
            "'{url}' is not a loopback address; pass --allow-non-loopback to load another machine"
        );
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<bool> {
    check_loopback(&args.target, args.allow_non_loopback)?;
    for q in &args.query_urls {
        check_loopback(q, args.allow_non_loopback)?;
    }
    let protocol = match args.protocol.as_str() {
        "native" => Protocol::Native,
        "remote-write" => Protocol::RemoteWrite,
        other => bail!("--protocol: unknown '{other}': native or remote-write"),
    };
    let parse = |flag: &str, v: &str| {
        sonde_common::duration::parse_duration(v).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
    };
    let interval = parse("interval", &args.interval)?;
    let duration = parse("duration", &args.duration)?;
    let shape = HostShape {
        churn: args.churn,
        ..HostShape::default()
    };
    let tag = format!("{:x}", sonde_common::model::now_ms() % 0xff_ffff);
    let hosts: Arc<Vec<Host>> = Arc::new(
        (0..args.hosts)
            .map(|i| Host::new(format!("lt-{tag}-{i:05}"), &shape))
            .collect(),
    );
    let mode = match args.closed_loop {
        Some(c) => Mode::Closed { concurrency: c },
        None => Mode::Open,
    };
    let cfg = DriveConfig {
        target: args.target.parse()?,
        protocol,
        interval,
        duration,
        max_requests: args.max_requests,
        mode,
        max_inflight: 1024,
        timeout: parse("timeout", &args.timeout)?,
        grace: Duration::from_secs(30),
        quiet: args.quiet,
    };
    let result = drive::drive(cfg, hosts.clone()).await;
    let audit = if args.query_urls.is_empty() {
        None
    } else {
        let range_s = (result.elapsed.as_secs() + 120).max(180);
        Some(
            audit::audit(
                &args.query_urls,
                hosts.clone(),
                &result.acked,
                sonde_common::model::now_ms() + 1000,
                range_s,
            )
            .await,
        )
    };
    let series = hosts.first().map(Host::series_count).unwrap_or(0);
    let r = report::Report::new(
        &args.name,
        &args.target,
        protocol,
        mode,
        args.hosts,
        series,
        interval.as_secs_f64(),
        &result,
        audit,
        Vec::new(),
    );
    print!("{}", r.text());
    report::write_all(&r, &args.out, &args.name)?;
    Ok(r.lost == 0)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ok = match cli.command {
        Command::Run(args) => runtime.block_on(run(args))?,
        Command::Scenario(args) => {
            let result = runtime.block_on(scenario::run(args))?;
            println!(
                "scenario {}: accepted {} samples, lost {}",
                result.scenario,
                result.reports.iter().map(|r| r.accepted).sum::<u64>(),
                result.lost
            );
            result.lost == 0
        }
        Command::Demo(args) => {
            runtime.block_on(demo::run(args))?;
            true
        }
        Command::AgentBench(args) => {
            runtime.block_on(agentbench::run(args))?;
            true
        }
    };
    if !ok {
        bail!("acknowledged samples were lost (see the audit above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_by_default() {
        assert!(check_loopback("http://127.0.0.1:9470/api/v1/push", false).is_ok());
        assert!(check_loopback("http://localhost:1/x", false).is_ok());
        assert!(check_loopback("http://[::1]:1/x", false).is_ok());
        assert!(check_loopback("http://10.0.0.1:9470/", false).is_err());
        assert!(check_loopback("http://example.com/", false).is_err());
        assert!(check_loopback("http://10.0.0.1:9470/", true).is_ok());
    }
}
