//! `agent-bench statsd`: the highest StatsD packet rate each daemon absorbs with under 0.1%
//! loss, `sonde-agent` against the Etsy statsd daemon (npm `statsd@0.9.0`, on node).
//!
//! Method, per daemon and per rate of the ladder: the sender ([`super::sender`]) sends
//! `rate x step` datagrams of one counter increment each (`agentbench.s<step>.hits:1|c`, a new
//! counter per step so every step is counted on its own) over a few UDP sockets, paced at the
//! rate; then the daemon's total for that counter is read back once it has flushed (1 s flush
//! interval on both) and compared with what was sent: loss = 1 - received/sent. The ladder
//! stops at the first rate with 0.1% loss or more, or that the sender cannot reach (achieved
//! below 95% of the target: the sender and the daemon share the machine's cores).
//!
//! Where the totals come from, exactly:
//! - Sonde: the agent flushes its cumulative counter `agentbench_s<step>_hits_total` every
//!   second to a real `sonde-collector`; the total is its latest value through the
//!   collector's query API.
//! - statsd: a small backend (written next to its config, loaded by absolute path) adds each
//!   flush's counter values into running totals and writes them to a JSON file after every
//!   flush (write, then rename). statsd resets counters at each flush, so the management
//!   interface's `counters` command only shows the current interval; the backend sees every
//!   flushed value, which makes the total exact.
//!
//! Also per step: the kernel's drop count for the daemon's port (/proc/net/udp `drops`), the
//! daemon's CPU time while sending and until the total settled, and its resident memory.

use anyhow::{Context, bail};
use serde::Serialize;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    AgentBenchArgs, Watch, cores, encode_param, http_text, mib, parse_duration, target_dir,
    watch_during,
};
use crate::procs::{self, Server};

const STATSD_VERSION: &str = "0.9.0";
/// A step passes with loss below this.
const MAX_LOSS: f64 = 0.001;
/// Below this share of the target rate, the sender is the limit.
const SENDER_SHORTFALL: f64 = 0.95;
const FLUSH: Duration = Duration::from_secs(1);
const SONDE_HOST: &str = "agentbench";
/// The agent's default --statsd-recv-buffer, asked of statsd-rcvbuf too.
const AGENT_RECV_BUFFER: u64 = 8 << 20;

#[derive(Debug, Serialize)]
struct Step {
    target_rate: u64,
    /// A bisection step after the ladder stopped.
    refinement: bool,
    /// Datagrams sent (one counter increment each).
    sent: u64,
    achieved_rate: f64,
    send_seconds: f64,
    send_errors: u64,
    /// The daemon's total for the step's counter.
    received: f64,
    exact: bool,
    loss: f64,
    /// Kernel drops on the daemon's UDP port during the step.
    kernel_drops: u64,
    sender_limited: bool,
    passed: bool,
    /// The daemon's CPU while sending, in percent of one core.
    cpu_percent_sending: f64,
    /// The daemon's CPU from the first datagram until the total settled.
    cpu_seconds: f64,
    cpu_us_per_packet: Option<f64>,
    avg_rss_bytes: u64,
    max_rss_bytes: u64,
    settle_seconds: f64,
}

#[derive(Debug, Serialize)]
struct DaemonResult {
    name: String,
    /// The UDP receive buffer the kernel granted the daemon's socket, when known.
    recv_buffer_bytes: Option<u64>,
    steps: Vec<Step>,
    /// Highest achieved rate among steps with loss below 0.1% (none passed: 0).
    max_rate_under_0_1pct_loss: f64,
    /// Highest achieved rate among steps whose total was exactly what was sent.
    max_rate_exact: f64,
    /// The best passing step was sender-limited: the daemon may absorb more.
    limited_by_sender: bool,
    /// Some rate lost 0.1% or more: the daemon's limit was found (else it is higher than
    /// what was tried or what the sender reached).
    saturated: bool,
    peak_rss_bytes: u64,
    cpu_seconds: f64,
    /// Why the ladder stopped.
    stopped: String,
}

#[derive(Debug, Serialize)]
struct Ratios {
    /// Sonde's best rate over statsd's (target: at least 10).
    rate: Option<f64>,
    /// Sonde lost nothing at any rate tried: its limit, and so the ratio, is higher.
    rate_is_lower_bound: bool,
    /// The same with each daemon's highest rate whose total was exact (no loss at all).
    rate_exact: Option<f64>,
    /// Sonde's peak RSS over statsd's (target: at most 0.25).
    peak_rss: Option<f64>,
    rate_at_least_10x: Option<bool>,
    peak_rss_at_most_a_quarter: Option<bool>,
}

#[derive(Debug, Serialize)]
struct StatsdBench {
    benchmark: &'static str,
    cores: usize,
    step_seconds: f64,
    sockets: usize,
    rates: Vec<u64>,
    /// net.core.rmem_default and rmem_max: statsd's socket gets the default; the agent asks
    /// for 8 MiB (SO_RCVBUFFORCE when privileged, else capped at rmem_max).
    rmem_default_bytes: Option<u64>,
    rmem_max_bytes: Option<u64>,
    note: &'static str,
    daemons: Vec<DaemonResult>,
    /// Sonde against statsd as shipped (the issue's targets).
    ratios: Ratios,
    /// Sonde against statsd with the agent's receive buffer, when measured.
    ratios_vs_statsd_rcvbuf: Option<Ratios>,
}

fn ratios(sonde: Option<&DaemonResult>, statsd: Option<&DaemonResult>) -> Ratios {
    ratios_of(sonde, statsd).unwrap_or(Ratios {
        rate: None,
        rate_is_lower_bound: false,
        rate_exact: None,
        peak_rss: None,
        rate_at_least_10x: None,
        peak_rss_at_most_a_quarter: None,
    })
}

fn ratios_of(sonde: Option<&DaemonResult>, statsd: Option<&DaemonResult>) -> Option<Ratios> {
    let (s, e) = (sonde?, statsd?);
    let rate = (e.max_rate_under_0_1pct_loss > 0.0)
        .then(|| s.max_rate_under_0_1pct_loss / e.max_rate_under_0_1pct_loss);
    let rss = (e.peak_rss_bytes > 0).then(|| s.peak_rss_bytes as f64 / e.peak_rss_bytes as f64);
    // statsd's limit must have been found for the ratio to mean anything; Sonde's may not
    // have been (then the ratio is a lower bound, which can still meet 10x).
    let rate_known = e.saturated;
    let lower_bound = !s.saturated;
    Some(Ratios {
        rate,
        rate_is_lower_bound: lower_bound,
        rate_exact: (e.max_rate_exact > 0.0).then(|| s.max_rate_exact / e.max_rate_exact),
        peak_rss: rss,
        rate_at_least_10x: rate.filter(|_| rate_known).and_then(|r| {
            if r >= 10.0 {
                Some(true)
            } else if lower_bound {
                None
            } else {
                Some(false)
            }
        }),
        peak_rss_at_most_a_quarter: rss.map(|r| r <= 0.25),
    })
}

const NOTE: &str = "the sender and the daemon share the machine's cores; one counter line per datagram; loss = 1 - received/sent";

pub async fn run(args: &AgentBenchArgs) -> anyhow::Result<(String, serde_json::Value)> {
    let step = parse_duration(
        "step-duration",
        args.step_duration
            .as_deref()
            .or(args.duration.as_deref())
            .unwrap_or("10s"),
    )?;
    let rates: Vec<u64> = args
        .rates
        .iter()
        .copied()
        .filter(|r| *r > 0 && args.max_rate.is_none_or(|m| *r <= m))
        .collect();
    anyhow::ensure!(!rates.is_empty(), "--rates/--max-rate leave no rate to try");
    let sockets = args.sockets.max(1);
    let mut daemons = Vec::new();
    for name in &args.daemons {
        // Bounded: each step sends for at most 1.25 x step, settles within ~10 s, pauses 1 s.
        let bound = (step + step / 4 + Duration::from_secs(12))
            * (rates.len() as u32 + args.refine)
            + Duration::from_secs(if name.starts_with("statsd") { 420 } else { 120 });
        let run = async {
            let daemon = match name.as_str() {
                "sonde" => Daemon::sonde().await?,
                "statsd" => Daemon::statsd(args.statsd_dir.clone(), false).await?,
                "statsd-rcvbuf" => Daemon::statsd(args.statsd_dir.clone(), true).await?,
                other => bail!("--daemons: unknown '{other}': sonde, statsd or statsd-rcvbuf"),
            };
            ladder(&daemon, &rates, args.refine, step, sockets).await
        };
        let result = tokio::time::timeout(bound, run).await.map_err(|_| {
            anyhow::anyhow!("statsd bench of {name} did not finish within {bound:?}")
        })??;
        daemons.push(result);
    }
    let find = |n: &str| daemons.iter().find(|d| d.name == n);
    let ratios = ratios(find("sonde-agent"), find("statsd"));
    let ratios_vs_statsd_rcvbuf = ratios_of(find("sonde-agent"), find("statsd-rcvbuf"));
    let result = StatsdBench {
        benchmark: "statsd",
        cores: cores(),
        step_seconds: step.as_secs_f64(),
        sockets,
        rates,
        rmem_default_bytes: sysctl("/proc/sys/net/core/rmem_default"),
        rmem_max_bytes: sysctl("/proc/sys/net/core/rmem_max"),
        note: NOTE,
        daemons,
        ratios,
        ratios_vs_statsd_rcvbuf,
    };
    Ok((text(&result), serde_json::to_value(&result)?))
}

/// A StatsD daemon under test, with what it needs running.
enum Daemon {
    Sonde {
        agent: Server,
        collector: Server,
        udp: u16,
    },
    Statsd {
        node: Server,
        udp: u16,
        totals: PathBuf,
        /// Started with the receive-buffer server module (`statsd-rcvbuf`).
        rcvbuf: bool,
    },
}

impl Daemon {
    async fn sonde() -> anyhow::Result<Daemon> {
        let collector = procs::collector("sonde-collector").await?;
        let (udp, http) = (procs::free_udp_port()?, procs::free_port()?);
        let args = vec![
            "--collector".into(),
            format!("http://127.0.0.1:{}", collector.port),
            "--interval".into(),
            format!("{}ms", FLUSH.as_millis()),
            "--hostname".into(),
            SONDE_HOST.into(),
            "--statsd-listen".into(),
            format!("127.0.0.1:{udp}"),
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
        Ok(Daemon::Sonde {
            agent,
            collector,
            udp,
        })
    }

    /// The Etsy statsd daemon on node; with `rcvbuf`, its UDP server is a copy of statsd's own
    /// (`servers/udp.js`) that asks for the agent's receive buffer (node's `recvBufferSize`,
    /// capped by net.core.rmem_max), to tell the buffer apart from the daemon.
    async fn statsd(dir: Option<PathBuf>, rcvbuf: bool) -> anyhow::Result<Daemon> {
        let dir = match dir {
            Some(d) => d,
            None => target_dir()?.join("npm-statsd"),
        };
        let stats_js = install_statsd(&dir).await?;
        let tmp = tempfile::tempdir()?;
        let backend = tmp.path().join("totals-backend.js");
        std::fs::write(&backend, TOTALS_BACKEND)?;
        let totals = tmp.path().join("totals.json");
        let (udp, mgmt) = (procs::free_udp_port()?, procs::free_port()?);
        let mut config = serde_json::json!({
            "port": udp,
            "address": "127.0.0.1",
            "mgmt_port": mgmt,
            "mgmt_address": "127.0.0.1",
            "flushInterval": FLUSH.as_millis() as u64,
            "backends": [backend.display().to_string()],
            "agentbenchTotals": totals.display().to_string(),
        });
        if rcvbuf {
            let server = tmp.path().join("udp-rcvbuf.js");
            std::fs::write(&server, RCVBUF_SERVER)?;
            config["servers"] = serde_json::json!([{
                "server": server.display().to_string(),
                "port": udp,
                "address": "127.0.0.1",
                "recvBufferSize": AGENT_RECV_BUFFER,
            }]);
        }
        let config_path = tmp.path().join("config.js");
        std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;
        let args = vec![
            stats_js.display().to_string(),
            config_path.display().to_string(),
        ];
        let mut node = procs::spawn_server(
            "statsd",
            mgmt,
            procs::system_binary("node", "nodejs")?,
            args,
            Some(tmp),
        )?;
        node.wait_ready("", Duration::from_secs(30)).await?;
        // The UDP server starts with the management one; give it a flush to be sure.
        let deadline = Instant::now() + Duration::from_secs(10);
        while procs::udp_drops(udp).is_none() || !totals.exists() {
            if Instant::now() > deadline {
                bail!("statsd did not open udp 127.0.0.1:{udp} and flush within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Daemon::Statsd {
            node,
            udp,
            totals,
            rcvbuf,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Daemon::Sonde { .. } => "sonde-agent",
            Daemon::Statsd { rcvbuf: false, .. } => "statsd",
            Daemon::Statsd { rcvbuf: true, .. } => "statsd-rcvbuf",
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Daemon::Sonde { agent, .. } => agent.pid(),
            Daemon::Statsd { node, .. } => node.pid(),
        }
    }

    fn udp(&self) -> u16 {
        match self {
            Daemon::Sonde { udp, .. } | Daemon::Statsd { udp, .. } => *udp,
        }
    }

    /// The daemon's counter total for step `k`, once seen.
    async fn total(&self, k: usize) -> anyhow::Result<Option<f64>> {
        match self {
            Daemon::Sonde { collector, .. } => {
                let query = format!("agentbench_s{k}_hits_total{{host=\"{SONDE_HOST}\"}}");
                let url = format!(
                    "http://127.0.0.1:{}/api/v1/query?query={}",
                    collector.port,
                    encode_param(&query)
                );
                let v: serde_json::Value = serde_json::from_str(&http_text(&url).await?)?;
                let result = v["data"]["result"]
                    .as_array()
                    .with_context(|| format!("unexpected answer to {url}: {v}"))?;
                let mut total = None;
                for r in result {
                    let value = r["value"][1]
                        .as_str()
                        .and_then(|s| s.parse::<f64>().ok())
                        .with_context(|| format!("unexpected sample in {v}"))?;
                    *total.get_or_insert(0.0) += value;
                }
                Ok(total)
            }
            Daemon::Statsd { totals, .. } => {
                let Ok(text) = std::fs::read_to_string(totals) else {
                    return Ok(None);
                };
                let v: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not JSON", totals.display()))?;
                Ok(v["totals"][format!("agentbench.s{k}.hits")].as_f64())
            }
        }
    }
}

fn sysctl(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The receive buffer the kernel granted the UDP socket bound to `port` (`rb` of `ss -m`);
/// `None` without `ss`.
fn recv_buffer(port: u16) -> Option<u64> {
    let out = std::process::Command::new("ss")
        .args([
            "-H",
            "-u",
            "-l",
            "-n",
            "-m",
            "sport",
            "=",
            &format!(":{port}"),
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rb = &text[text.find("rb")? + 2..];
    rb[..rb.find(|c: char| !c.is_ascii_digit())?].parse().ok()
}

/// statsd's backend interface: `init(startupTime, config, events, logger)`; every `flush`
/// event carries the interval's counters before statsd resets them.
const TOTALS_BACKEND: &str = r#"// Written by sonde-loadtest agent-bench: running totals of every counter, for an exact count.
const fs = require('fs');
exports.init = function (startupTime, config, events) {
  const out = config.agentbenchTotals;
  const totals = {};
  let flushes = 0;
  events.on('flush', function (timestamp, metrics) {
    for (const key in metrics.counters) {
      totals[key] = (totals[key] || 0) + metrics.counters[key];
    }
    flushes += 1;
    fs.writeFileSync(out + '.tmp', JSON.stringify({ flushes: flushes, totals: totals }));
    fs.renameSync(out + '.tmp', out);
  });
  return true;
};
"#;

/// statsd 0.9.0's `servers/udp.js`, plus `recvBufferSize` from the server's config.
const RCVBUF_SERVER: &str = r#"// Written by sonde-loadtest agent-bench: statsd's UDP server with a larger receive buffer.
const dgram = require('dgram');
exports.start = function (config, callback) {
  const server = dgram.createSocket({
    type: config.address_ipv6 ? 'udp6' : 'udp4',
    recvBufferSize: config.recvBufferSize,
  }, callback);
  server.bind(config.port || 8125, config.address || undefined);
  this.server = server;
  return true;
};
"#;

/// `npm install statsd@0.9.0` into `dir` unless already there (installed into a temporary
/// directory beside it, then renamed, so an interrupted install leaves nothing half-done).
async fn install_statsd(dir: &Path) -> anyhow::Result<PathBuf> {
    let stats_js = |d: &Path| d.join("node_modules").join("statsd").join("stats.js");
    if stats_js(dir).exists() {
        return Ok(stats_js(dir));
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".npm-statsd-")
        .tempdir_in(parent)?;
    let npm = procs::system_binary("npm", "npm")?;
    eprintln!(
        "statsd: npm install statsd@{STATSD_VERSION} into {}",
        dir.display()
    );
    let mut child = tokio::process::Command::new(npm)
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--omit=optional",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(tmp.path())
        .arg(format!("statsd@{STATSD_VERSION}"))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run npm")?;
    let status = tokio::time::timeout(Duration::from_secs(300), child.wait())
        .await
        .context("npm install did not finish within 300 s")??;
    if !status.success() || !stats_js(tmp.path()).exists() {
        bail!("npm install statsd@{STATSD_VERSION} failed: {status}");
    }
    let installed = tmp.keep();
    if std::fs::rename(&installed, dir).is_err() {
        // Someone else installed it meanwhile: use theirs.
        let _ = std::fs::remove_dir_all(&installed);
    }
    if !stats_js(dir).exists() {
        bail!("statsd is not in {} after installing it", dir.display());
    }
    Ok(stats_js(dir))
}

/// Waits until the daemon's total for step `k` equals `sent` or stops changing; (total,
/// seconds waited).
async fn settle(daemon: &Daemon, k: usize, sent: u64) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let deadline = started + FLUSH * 4 + Duration::from_secs(6);
    let (mut last, mut changed) = (None::<f64>, Instant::now());
    loop {
        let total = daemon.total(k).await?;
        if total != last {
            last = total;
            changed = Instant::now();
        }
        if total == Some(sent as f64) {
            break;
        }
        // Lost datagrams never arrive: settled once the total has held for 3 flushes.
        let now = Instant::now();
        if now > deadline || (total.is_some() && now - changed > FLUSH * 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((last.unwrap_or(0.0), started.elapsed().as_secs_f64()))
}

/// Where a ladder sends: the daemon, its PID and address, and the step's shape.
struct Bench<'a> {
    daemon: &'a Daemon,
    pid: u32,
    target: SocketAddr,
    step_len: Duration,
    sockets: usize,
}

impl Bench<'_> {
    /// One step: send `rate x step` increments of a counter of its own (`k`), wait for the
    /// total, compare.
    async fn step(&self, k: usize, rate: u64, refinement: bool) -> anyhow::Result<Step> {
        let (daemon, pid, name) = (self.daemon, self.pid, self.daemon.name());
        let payload = format!("agentbench.s{k}.hits:1|c").into_bytes();
        let drops0 = procs::udp_drops(daemon.udp()).unwrap_or(0);
        anyhow::ensure!(procs::proc_sample(pid).is_some(), "{name} exited");
        let mut watch = [Watch::start(pid)];
        let (target, step_len, sockets) = (self.target, self.step_len, self.sockets);
        let send = tokio::task::spawn_blocking(move || {
            super::sender::send(target, &payload, rate, step_len, sockets)
        });
        let sent = watch_during(&mut watch, Duration::from_millis(250), send).await??;
        let cpu_sending = watch[0].cpu.seconds();
        let rss = watch[0].rss;
        let settled = settle(daemon, k, sent.packets);
        let (received, settle_seconds) =
            watch_during(&mut watch, Duration::from_millis(250), settled).await?;
        anyhow::ensure!(
            procs::proc_sample(pid).is_some(),
            "{name} exited during the step"
        );
        let cpu = watch[0].cpu.seconds();
        let drops = procs::udp_drops(daemon.udp())
            .unwrap_or(0)
            .saturating_sub(drops0);
        let loss = if sent.packets > 0 {
            1.0 - received / sent.packets as f64
        } else {
            1.0
        };
        let achieved = sent.rate();
        let step = Step {
            target_rate: rate,
            refinement,
            sent: sent.packets,
            achieved_rate: achieved,
            send_seconds: sent.elapsed.as_secs_f64(),
            send_errors: sent.errors,
            received,
            exact: received == sent.packets as f64,
            loss,
            kernel_drops: drops,
            sender_limited: achieved < rate as f64 * SENDER_SHORTFALL,
            passed: sent.packets > 0 && loss < MAX_LOSS && received <= sent.packets as f64,
            cpu_percent_sending: cpu_sending * 100.0 / sent.elapsed.as_secs_f64(),
            cpu_seconds: cpu,
            cpu_us_per_packet: (received > 0.0).then(|| cpu * 1e6 / received),
            avg_rss_bytes: rss.average(),
            max_rss_bytes: rss.max,
            settle_seconds,
        };
        eprintln!("statsd {name}: {}", step_line(&step));
        Ok(step)
    }
}

/// Steps up the rates until one loses 0.1% or more (or the sender falls short), then bisects
/// `refine` times between the last rate that passed and the first that did not.
async fn ladder(
    daemon: &Daemon,
    rates: &[u64],
    refine: u32,
    step_len: Duration,
    sockets: usize,
) -> anyhow::Result<DaemonResult> {
    let name = daemon.name();
    let pid = daemon.pid().context("the daemon is not running")?;
    let bench = Bench {
        daemon,
        pid,
        target: ([127, 0, 0, 1], daemon.udp()).into(),
        step_len,
        sockets,
    };
    let cpu_at_start = procs::proc_sample(pid)
        .map(|p| p.cpu_seconds)
        .unwrap_or(0.0);
    let mut steps: Vec<Step> = Vec::new();
    let mut stopped = "every rate passed".to_owned();
    let (mut passed_at, mut failed_at) = (0u64, None::<u64>);
    for &rate in rates {
        let step = bench.step(steps.len(), rate, false).await?;
        let (passed, limited, overcount) = (
            step.passed,
            step.sender_limited,
            step.received > step.sent as f64,
        );
        let (loss, achieved) = (step.loss, step.achieved_rate);
        steps.push(step);
        if overcount {
            stopped = format!("rate {rate}: counted more than was sent");
            break;
        }
        if !passed {
            stopped = format!("rate {rate}: loss {:.3}% (>= 0.1%)", loss * 100.0);
            failed_at = Some(rate);
            break;
        }
        passed_at = rate;
        if limited {
            stopped =
                format!("rate {rate}: the sender reached only {achieved:.0}/s on this machine");
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let Some(mut hi) = failed_at {
        let mut lo = passed_at;
        for _ in 0..refine {
            // Halfway, on a round thousand.
            let mid = (lo + hi) / 2 / 1000 * 1000;
            if mid <= lo || mid >= hi {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let step = bench.step(steps.len(), mid, true).await?;
            let (passed, limited) = (step.passed, step.sender_limited);
            steps.push(step);
            if passed {
                lo = mid;
                if limited {
                    break;
                }
            } else {
                hi = mid;
            }
        }
        if refine > 0 {
            let _ = write!(stopped, "; refined: passes {lo}/s, fails {hi}/s");
        }
    }
    let end = procs::proc_sample(pid).unwrap_or_default();
    let best = steps
        .iter()
        .filter(|s| s.passed)
        .max_by(|a, b| a.achieved_rate.total_cmp(&b.achieved_rate));
    Ok(DaemonResult {
        name: name.to_owned(),
        recv_buffer_bytes: recv_buffer(daemon.udp()),
        max_rate_under_0_1pct_loss: best.map(|s| s.achieved_rate).unwrap_or(0.0),
        max_rate_exact: steps
            .iter()
            .filter(|s| s.exact)
            .map(|s| s.achieved_rate)
            .fold(0.0, f64::max),
        limited_by_sender: best.is_some_and(|s| s.sender_limited),
        saturated: failed_at.is_some(),
        peak_rss_bytes: end.hwm_bytes,
        cpu_seconds: end.cpu_seconds - cpu_at_start,
        stopped,
        steps,
    })
}

fn step_line(s: &Step) -> String {
    format!(
        "target {:>7}/s achieved {:>9.0}/s sent {:>9} received {:>11} loss {:>7.3}% kernel drops {:>8} {} CPU {:>5.1}% RSS {:>6.1} MiB{}",
        s.target_rate,
        s.achieved_rate,
        s.sent,
        s.received,
        s.loss * 100.0,
        s.kernel_drops,
        if s.exact { "exact" } else { "     " },
        s.cpu_percent_sending,
        mib(s.max_rss_bytes),
        if s.sender_limited {
            " (sender-limited)"
        } else {
            ""
        }
    )
}

fn text(r: &StatsdBench) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== agent-bench statsd ({} cores shared by the sender and the daemon; {} sockets; {:.0}s per rate)",
        r.cores, r.sockets, r.step_seconds
    );
    for d in &r.daemons {
        let _ = writeln!(s, "-- {}", d.name);
        for step in &d.steps {
            let _ = writeln!(s, "  {}", step_line(step));
        }
        let _ = writeln!(
            s,
            "  highest rate under 0.1% loss: {:.0} pkt/s{}; highest exact: {:.0} pkt/s; peak RSS {:.1} MiB; CPU {:.2} s; stopped: {}",
            d.max_rate_under_0_1pct_loss,
            if d.limited_by_sender {
                " (sender-limited: a lower bound)"
            } else {
                ""
            },
            d.max_rate_exact,
            mib(d.peak_rss_bytes),
            d.cpu_seconds,
            d.stopped
        );
    }
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "inconclusive (a limit was not reached)",
    };
    let f = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        s,
        "target: rate >= 10x statsd's: ratio {}{} {}",
        if r.ratios.rate_is_lower_bound {
            ">= "
        } else {
            ""
        },
        f(r.ratios.rate),
        verdict(r.ratios.rate_at_least_10x)
    );
    let _ = writeln!(
        s,
        "        (highest rates with exact totals: ratio {}{})",
        if r.ratios.rate_is_lower_bound {
            ">= "
        } else {
            ""
        },
        f(r.ratios.rate_exact)
    );
    let _ = writeln!(
        s,
        "target: peak RSS <= 1/4 of statsd's: ratio {} {}",
        f(r.ratios.peak_rss),
        verdict(r.ratios.peak_rss_at_most_a_quarter)
    );
    if let Some(x) = &r.ratios_vs_statsd_rcvbuf {
        let _ = writeln!(
            s,
            "against statsd with an {} MiB receive buffer (statsd-rcvbuf): rate ratio {}{}, peak RSS ratio {}",
            AGENT_RECV_BUFFER >> 20,
            if x.rate_is_lower_bound { ">= " } else { "" },
            f(x.rate),
            f(x.peak_rss)
        );
    }
    if let (Some(d), Some(m)) = (r.rmem_default_bytes, r.rmem_max_bytes) {
        let _ = writeln!(
            s,
            "receive buffers: net.core.rmem_default {d}, rmem_max {m}; granted: {}",
            r.daemons
                .iter()
                .map(|x| format!("{} {}", x.name, opt(x.recv_buffer_bytes)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    s
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}
