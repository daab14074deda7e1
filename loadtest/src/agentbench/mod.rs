//! `agent-bench`: the agent measured side by side with its peers in the same run. Every
//! process is started here on 127.0.0.1 with temporary directories and free ports, and stopped
//! by its PID when the benchmark ends, fails or times out (each [`Server`] stops its process
//! when dropped). CPU time comes from `/proc/<pid>/stat` (utime + stime, all threads), memory
//! from `/proc/<pid>/status` (VmRSS sampled during the window, VmHWM for the peak).
//!
//! - `footprint`: resident memory and CPU per collection of `sonde-agent` (pushing to a real
//!   `sonde-collector`) against the peer pipeline for the same host: `prometheus-node-exporter`
//!   scraped by `vmagent`, remote-writing into `victoria-metrics`. See [`footprint`].
//! - `statsd`: the highest StatsD packet rate absorbed with under 0.1% loss, `sonde-agent`
//!   against the Etsy statsd daemon (npm `statsd@0.9.0`). See [`statsd`].
//!
//! Targets from the issue are reported (met or missed), never turned into a failure: these are
//! measurements.
//!
//! [`Server`]: crate::procs::Server

mod footprint;
mod sender;
mod statsd;

use anyhow::{Context, bail};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct AgentBenchArgs {
    /// footprint or statsd.
    pub name: String,
    /// footprint: the measured window at each interval (default 60s). statsd: how long each
    /// rate is sent, when --step-duration is not given.
    #[arg(long)]
    pub duration: Option<String>,
    /// footprint: the collection (and scrape) intervals measured, in order.
    #[arg(long, value_delimiter = ',', default_value = "10s,1s")]
    pub intervals: Vec<String>,
    /// footprint: intervals each side runs before the measured window opens.
    #[arg(long, default_value_t = 2)]
    pub warmup_intervals: u32,
    /// statsd: packet rates tried in order (packets/s, one counter line per packet); the
    /// ladder stops at the first rate with 0.1% loss or more, or that the sender cannot reach.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,25000,50000,100000,200000,400000,800000"
    )]
    pub rates: Vec<u64>,
    /// statsd: leave out rates above this.
    #[arg(long)]
    pub max_rate: Option<u64>,
    /// statsd: after the ladder stops on loss, bisect this many times between the last rate
    /// that passed and the first that did not.
    #[arg(long, default_value_t = 2)]
    pub refine: u32,
    /// statsd: how long each rate is sent (default 10s).
    #[arg(long)]
    pub step_duration: Option<String>,
    /// statsd: UDP sockets the sender uses, one thread each.
    #[arg(long, default_value_t = 2)]
    pub sockets: usize,
    /// statsd: the daemons measured, in order: sonde (the agent), statsd (as shipped: the
    /// kernel's default receive buffer), statsd-rcvbuf (statsd with the agent's 8 MiB receive
    /// buffer, to tell the buffer apart from the daemon).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sonde,statsd,statsd-rcvbuf"
    )]
    pub daemons: Vec<String>,
    /// statsd: where `npm install statsd@0.9.0` is cached (default: <target dir>/npm-statsd);
    /// installed there when missing, reused afterwards.
    #[arg(long)]
    pub statsd_dir: Option<PathBuf>,
    /// Write the JSON result here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Directory for the text and JSON reports.
    #[arg(long, default_value = "loadtest-results")]
    pub out: PathBuf,
}

pub async fn run(args: AgentBenchArgs) -> anyhow::Result<()> {
    let load_before = load_average();
    let (mut text, mut json) = match args.name.as_str() {
        "footprint" => footprint::run(&args).await?,
        "statsd" => statsd::run(&args).await?,
        other => bail!("unknown agent benchmark '{other}': footprint or statsd"),
    };
    // Other work on the machine skews every figure: say how busy it was.
    let load_after = load_average();
    text.push_str(&format!(
        "machine load average (1 min) before {} and after {}\n",
        load_before.as_deref().unwrap_or("-"),
        load_after.as_deref().unwrap_or("-")
    ));
    if let Some(o) = json.as_object_mut() {
        o.insert("load_average_before".into(), load_before.into());
        o.insert("load_average_after".into(), load_after.into());
    }
    print!("{text}");
    let name = format!("agent-bench-{}", args.name);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let pretty = serde_json::to_string_pretty(&json)?;
    std::fs::write(args.out.join(format!("{name}.txt")), &text)?;
    std::fs::write(args.out.join(format!("{name}.json")), &pretty)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &pretty)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    eprintln!(
        "reports: {}",
        args.out.join(format!("{name}.{{txt,json}}")).display()
    );
    Ok(())
}

/// The 1-minute load average from /proc/loadavg.
fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    s.split_whitespace().next().map(str::to_owned)
}

fn parse_duration(flag: &str, v: &str) -> anyhow::Result<Duration> {
    sonde_common::duration::parse_duration(v).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// The workspace's target directory: this executable lives in `<target>/<profile>/`.
fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("this executable has no target directory")
}

/// `GET url` on 127.0.0.1; the body of a 2xx answer as text.
async fn http_text(url: &str) -> anyhow::Result<String> {
    use http_body_util::{BodyExt, Empty};
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("'{url}' is not a URL"))?;
    let body = async {
        let resp = client.get(uri).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), body)
        .await
        .with_context(|| format!("GET {url}: no answer within 10 s"))?
        .with_context(|| format!("GET {url}"))?;
    let text = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        bail!("GET {url}: HTTP {status}: {}", &text[..text.len().min(300)]);
    }
    Ok(text)
}

fn encode_param(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// The sum of every sample of metric `name` in a Prometheus text exposition (all label sets);
/// `None` when the metric is absent.
fn prom_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.as_bytes().first() {
            Some(b'{') => rest.rfind('}').map(|i| &rest[i + 1..]),
            Some(b' ') => Some(rest),
            _ => None,
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The samples of metric `name` in a Prometheus text exposition, summed by the value of label
/// `label` (e.g. `sonde_agent_samples_collected_total` by `source`).
fn prom_by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let key = format!("{label}=\"");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some(end) = rest.rfind('}') else {
            continue;
        };
        let (labels, value) = (&rest[..end], &rest[end + 1..]);
        let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let Some(i) = labels.find(&key) else {
            continue;
        };
        let lv = &labels[i + key.len()..];
        let lv = &lv[..lv.find('"').unwrap_or(lv.len())];
        *out.entry(lv.to_owned()).or_insert(0.0) += v;
    }
    out
}

/// Samples in a Prometheus text exposition (lines that are neither comments nor blank).
fn exposition_samples(text: &str) -> u64 {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count() as u64
}

/// Resident memory of processes sampled while something runs.
#[derive(Clone, Copy, Debug, Default)]
struct RssStats {
    sum: u128,
    samples: u64,
    max: u64,
}

impl RssStats {
    fn add(&mut self, rss: u64) {
        self.sum += rss as u128;
        self.samples += 1;
        self.max = self.max.max(rss);
    }

    fn average(&self) -> u64 {
        if self.samples == 0 {
            0
        } else {
            (self.sum / self.samples as u128) as u64
        }
    }
}

/// CPU time of one process over a window, two ways: the sum of its threads' schedstat run
/// times (nanoseconds; sampled with the memory, so threads that exit mid-window keep what they
/// used until their last sample), and utime + stime from /proc/<pid>/stat (whole clock ticks,
/// 10 ms at 100 Hz: too coarse for an agent that works a millisecond per collection, kept as a
/// cross-check).
#[derive(Debug)]
struct CpuTracker {
    pid: u32,
    base: HashMap<u32, u64>,
    last: HashMap<u32, u64>,
    ticks_base: f64,
}

impl CpuTracker {
    fn start(pid: u32) -> CpuTracker {
        let now: HashMap<u32, u64> = crate::procs::thread_cpu_ns(pid).into_iter().collect();
        CpuTracker {
            pid,
            base: now.clone(),
            last: now,
            ticks_base: crate::procs::proc_sample(pid)
                .map(|p| p.cpu_seconds)
                .unwrap_or(0.0),
        }
    }

    fn sample(&mut self) {
        for (tid, ns) in crate::procs::thread_cpu_ns(self.pid) {
            self.last.insert(tid, ns);
        }
    }

    /// Seconds on CPU since [`CpuTracker::start`], up to the last sample (schedstat).
    fn seconds(&self) -> f64 {
        self.last
            .iter()
            .map(|(tid, ns)| ns.saturating_sub(self.base.get(tid).copied().unwrap_or(0)))
            .sum::<u64>() as f64
            / 1e9
    }

    /// Seconds on CPU since [`CpuTracker::start`], from utime + stime (clock ticks), now.
    fn tick_seconds(&self) -> f64 {
        crate::procs::proc_sample(self.pid)
            .map(|p| p.cpu_seconds - self.ticks_base)
            .unwrap_or(0.0)
    }
}

/// One process watched over a window: its resident memory and CPU time.
#[derive(Debug)]
struct Watch {
    pid: u32,
    rss: RssStats,
    cpu: CpuTracker,
}

impl Watch {
    fn start(pid: u32) -> Watch {
        let mut w = Watch {
            pid,
            rss: RssStats::default(),
            cpu: CpuTracker::start(pid),
        };
        w.sample();
        w
    }

    fn sample(&mut self) {
        if let Some(p) = crate::procs::proc_sample(self.pid) {
            self.rss.add(p.rss_bytes);
        }
        self.cpu.sample();
    }

    /// VmHWM now (and at least the largest VmRSS seen).
    fn peak_rss(&self) -> u64 {
        crate::procs::proc_sample(self.pid)
            .map(|p| p.hwm_bytes)
            .unwrap_or(0)
            .max(self.rss.max)
    }
}

/// Runs `work` while sampling every watched process every `every`, and once more at the end.
async fn watch_during<F: Future>(watches: &mut [Watch], every: Duration, work: F) -> F::Output {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(work);
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = tick.tick() => watches.iter_mut().for_each(Watch::sample),
        }
    };
    watches.iter_mut().for_each(Watch::sample);
    out
}

/// One process's figures over a measured window.
#[derive(Clone, Debug, Serialize)]
struct ProcessFigures {
    name: String,
    /// From the threads' schedstat run times.
    cpu_seconds: f64,
    /// From utime + stime (whole clock ticks): a coarse cross-check.
    cpu_seconds_ticks: f64,
    avg_rss_bytes: u64,
    peak_rss_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prom_sum_adds_every_label_set_of_one_metric() {
        let text = "# HELP a x\n# TYPE a counter\na 3\na_total 100\nb{source=\"host\"} 5\nb{source=\"self\",x=\"}\"} 7\nbb 1\n";
        assert_eq!(prom_sum(text, "a"), Some(3.0));
        assert_eq!(prom_sum(text, "b"), Some(12.0));
        assert_eq!(prom_sum(text, "c"), None);
        let by = prom_by_label(text, "b", "source");
        assert_eq!(by.get("host"), Some(&5.0));
        assert_eq!(by.get("self"), Some(&7.0));
        assert_eq!(exposition_samples(text), 5);
    }

    #[test]
    fn rss_average() {
        let mut s = RssStats::default();
        assert_eq!(s.average(), 0);
        s.add(10);
        s.add(20);
        assert_eq!((s.average(), s.max), (15, 20));
    }
}
