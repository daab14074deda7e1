//! The `storage` scenario: Sonde's embedded store against VictoriaMetrics on the same data, in
//! the same run.
//!
//! Both are started on 127.0.0.1 with their data in temporary directories and receive the same
//! backfill: N host-metric series (the generator's host shape, ~164 series per simulated host)
//! covering H simulated hours that end now, one sample per series every interval, with values
//! that vary as real ones do ([`Values`]). Senders go in time order, closed loop: [`SENDERS`]
//! senders each own a fixed share of the hosts and send one request per simulated scrape
//! interval holding those hosts' samples, the next as soon as the last is acknowledged; so every
//! series gets strictly increasing timestamps. Sonde gets native batches on `/api/v1/push`,
//! VictoriaMetrics remote write on `/api/v1/write`. The two backfills run one after the other,
//! so neither store competes with the other (the load generator shares the machine with both).
//!
//! Measured for each, side by side: ingest rate and server CPU per sample during the backfill
//! (from /proc); bytes per sample on disk (the whole data directory, index included, after
//! VictoriaMetrics has flushed and its merges have settled); peak resident memory during the
//! ingest and resident memory per series after it; the delay from a push's acknowledgement to
//! the sample's visibility in `/api/v1/query`, for a new sample of an existing series and for a
//! brand-new series (and once more polling with `nocache=1`); and the latency of
//! `sum by (host) (rate(...[5m]))` over about 1,000 series, and of the bare selector, for a 1 h
//! and a 24 h range: the first run, the median of five (repeats, which both stores answer
//! partly from their results caches), and the median of five with `nocache=1` (each store
//! evaluating it all). A query a store refuses is reported as unsupported.
//!
//! Flags passed beyond address and data directory: Sonde `--max-sample-age` (the backfill is
//! older than its 24 h default) and `--maintenance-interval 5s` (so the run ends with the data
//! cut into blocks and compacted, as a long-running store has it; the scenario waits for that
//! and counts its CPU, as it does VictoriaMetrics's flush and merges); VictoriaMetrics `-retentionPeriod` (long enough for the
//! backfill) and `-loggerLevel=ERROR`. Everything else, `-search.latencyOffset` and the caches
//! included, stays at its default.

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use sonde_common::model::{MetricKind, Sample, Series};
use sonde_common::remote_write as rw;
use sonde_common::retry::{Backoff, Verdict, classify_status};
use sonde_common::wire::{self, Batch, BatchBuilder, BatchHeader, Compression};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::drive::{self, DriveResult, HttpClient, Mode, Protocol, Second, Sent};
use crate::generate::{Host, HostShape};
use crate::procs::{self, Server};
use crate::report::{self, ProcessUsage, Report};
use crate::scenario::ScenarioArgs;

/// Concurrent senders per store; each owns every SENDERS-th host.
pub const SENDERS: usize = 4;
/// Longest a backfill may run; what is left is not sent (reported as truncated).
const MAX_BACKFILL: Duration = Duration::from_secs(30 * 60);
/// Timeout of one request (push or query).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a pushed sample may take to become visible before we give up.
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between visibility polls.
const VISIBILITY_POLL: Duration = Duration::from_millis(5);
/// Runs of each query; the median is reported.
const QUERY_RUNS: usize = 5;
/// Shortest wait after VictoriaMetrics's flush (its in-memory parts reach the disk within
/// about 5 s).
const SETTLE_MIN: Duration = Duration::from_secs(12);
/// Longest wait for VictoriaMetrics's merges to settle after its flush.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);
/// The counter of the query benchmark, restricted to 4 of its 8 modes: 16 series per host,
/// about 1,000 series for 10,000 series (61 hosts).
const QUERY_SELECTOR: &str = r#"node_cpu_seconds_total{mode=~"user|system|idle|iowait"}"#;
const QUERY_SERIES_PER_HOST: usize = 16;

fn client() -> HttpClient {
    drive::client(Duration::from_secs(5))
}

async fn post(client: &HttpClient, url: &hyper::Uri, store: Store, body: Bytes) -> Sent {
    drive::post(client, url, store.protocol(), REQUEST_TIMEOUT, body).await
}

/// The backfill's shape: hosts, timestamps.
struct Schedule {
    hosts: Arc<Vec<Host>>,
    series: usize,
    ticks: u64,
    step_ms: i64,
    first_ms: i64,
    last_ms: i64,
    tag: String,
}

impl Schedule {
    fn timestamp(&self, tick: u64) -> i64 {
        self.first_ms + tick as i64 * self.step_ms
    }
    fn samples(&self) -> u64 {
        self.series as u64 * self.ticks
    }
}

/// Which store, and how to reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Store {
    Sonde,
    VictoriaMetrics,
}

impl Store {
    fn label(self) -> &'static str {
        match self {
            Store::Sonde => "Sonde",
            Store::VictoriaMetrics => "VictoriaMetrics",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Store::Sonde => "sonde",
            Store::VictoriaMetrics => "victoriametrics",
        }
    }
    fn protocol(self) -> Protocol {
        match self {
            Store::Sonde => Protocol::Native,
            Store::VictoriaMetrics => Protocol::RemoteWrite,
        }
    }
    fn push_path(self) -> &'static str {
        match self {
            Store::Sonde => "/api/v1/push",
            Store::VictoriaMetrics => "/api/v1/write",
        }
    }
}

/// The backfilled values: the generator's series with values that vary as real ones do
/// (counters grow by irregular increments, gauges move around a level), so that neither
/// store's compression meets unrealistically regular data. Integers, so both keep them
/// exactly. Deterministic: both stores get the same values.
struct Values {
    counters: Vec<bool>,
    keys: Vec<u64>,
    current: Vec<f64>,
}

/// SplitMix64: a well-mixed 64-bit hash of `z`.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Values {
    fn new(hosts: &[Host], cells: &[(usize, usize)]) -> Values {
        Values {
            counters: cells
                .iter()
                .map(|&(h, i)| {
                    matches!(
                        hosts[h].templates[i].kind,
                        MetricKind::Counter | MetricKind::Histogram
                    )
                })
                .collect(),
            keys: cells
                .iter()
                .map(|&(h, i)| mix(((h as u64) << 32) | i as u64))
                .collect(),
            current: vec![0.0; cells.len()],
        }
    }

    /// Moves every series to `tick`; call once per tick, in order.
    fn advance(&mut self, tick: u64) {
        for (c, (&key, &counter)) in self
            .current
            .iter_mut()
            .zip(self.keys.iter().zip(self.counters.iter()))
        {
            let scale = key % 1000 + 1;
            let r = mix(key ^ tick.wrapping_mul(0x2545_f491_4f6c_dd1d));
            if counter {
                *c += (r % (2 * scale + 1)) as f64;
            } else {
                let level = scale * 1_000_000;
                *c = (level + r % (level / 100)) as f64;
            }
        }
    }
}

/// A request body template for one sender's hosts: identities fixed, samples rewritten per
/// tick, so the load generator spends its CPU on encoding rather than on building strings.
enum Template {
    Native {
        batch: Batch,
        values: Values,
    },
    RemoteWrite {
        req: rw::WriteRequest,
        values: Values,
    },
}

impl Template {
    fn new(store: Store, hosts: &[Host], own: &[usize], agent_id: String) -> Template {
        let mut cells = Vec::new();
        for &h in own {
            for i in 0..hosts[h].series_count() {
                cells.push((h, i));
            }
        }
        match store {
            Store::Sonde => {
                let mut b = BatchBuilder::new(BatchHeader {
                    agent_id,
                    sequence: 0,
                    sent_at_ms: 0,
                });
                for &(h, i) in &cells {
                    let kind = hosts[h].templates[i].kind;
                    let start =
                        matches!(kind, MetricKind::Counter | MetricKind::Histogram).then_some(0);
                    b.push(
                        &hosts[h].series(i, 0),
                        kind,
                        start,
                        vec![Sample::new(0, 0.0)],
                    );
                }
                Template::Native {
                    batch: b.build(),
                    values: Values::new(hosts, &cells),
                }
            }
            Store::VictoriaMetrics => {
                let timeseries = cells
                    .iter()
                    .map(|&(h, i)| rw::TimeSeries {
                        labels: rw_labels(&hosts[h].series(i, 0)),
                        samples: vec![rw::Sample {
                            value: 0.0,
                            timestamp: 0,
                        }],
                    })
                    .collect();
                Template::RemoteWrite {
                    req: rw::WriteRequest { timeseries },
                    values: Values::new(hosts, &cells),
                }
            }
        }
    }

    fn samples(&self) -> u64 {
        match self {
            Template::Native { values, .. } | Template::RemoteWrite { values, .. } => {
                values.current.len() as u64
            }
        }
    }

    /// The body of `tick` (ticks in order, from 0): every series' sample at `timestamp_ms`.
    fn encode(&mut self, tick: u64, timestamp_ms: i64) -> Bytes {
        match self {
            Template::Native { batch, values } => {
                values.advance(tick);
                batch.header.sequence = tick;
                batch.header.sent_at_ms = sonde_common::model::now_ms();
                for (s, &v) in batch.series.iter_mut().zip(values.current.iter()) {
                    s.samples[0] = Sample::new(timestamp_ms, v);
                }
                Bytes::from(wire::encode(batch, Compression::Zstd).unwrap_or_default())
            }
            Template::RemoteWrite { req, values } => {
                values.advance(tick);
                for (ts, &v) in req.timeseries.iter_mut().zip(values.current.iter()) {
                    ts.samples[0] = rw::Sample {
                        value: v,
                        timestamp: timestamp_ms,
                    };
                }
                Bytes::from(rw::encode(req))
            }
        }
    }
}

fn rw_labels(s: &Series) -> Vec<rw::Label> {
    std::iter::once(rw::Label {
        name: "__name__".into(),
        value: s.name.clone(),
    })
    .chain(s.labels.iter().map(|l| rw::Label {
        name: l.name.clone(),
        value: l.value.clone(),
    }))
    .collect()
}

/// One-sample body for a single series (the visibility probes).
fn single_sample_body(
    store: Store,
    series: &Series,
    sample: Sample,
    agent_id: &str,
    sequence: u64,
) -> Bytes {
    match store {
        Store::Sonde => {
            let mut b = BatchBuilder::new(BatchHeader {
                agent_id: agent_id.to_owned(),
                sequence,
                sent_at_ms: sonde_common::model::now_ms(),
            });
            b.push(series, MetricKind::Gauge, None, vec![sample]);
            Bytes::from(wire::encode(&b.build(), Compression::Zstd).unwrap_or_default())
        }
        Store::VictoriaMetrics => Bytes::from(rw::encode(&rw::WriteRequest {
            timeseries: vec![rw::TimeSeries {
                labels: rw_labels(series),
                samples: vec![rw::Sample {
                    value: sample.value,
                    timestamp: sample.timestamp_ms,
                }],
            }],
        })),
    }
}

/// GET `url`: status and body, or `None` on a network error or timeout.
async fn get(url: &str) -> Option<(u16, Bytes)> {
    let client: Client<HttpConnector, http_body_util::Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let uri: hyper::Uri = url.parse().ok()?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, client.get(uri))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(REQUEST_TIMEOUT, resp.into_body().collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    Some((status, body))
}

struct SecondAcc {
    accepted: u64,
    errors: u64,
    latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Shared counters of one backfill.
struct Tally {
    started: Instant,
    seconds: Vec<SecondAcc>,
    latency: Histogram<u64>,
    statuses: BTreeMap<String, u64>,
    requests: u64,
    accepted: u64,
    failed_requests: u64,
    failed_samples: u64,
    retries: u64,
    ticks_done: u64,
}

impl Tally {
    fn second(&mut self, at: Instant) -> &mut SecondAcc {
        let i = at.saturating_duration_since(self.started).as_secs() as usize;
        while self.seconds.len() <= i {
            self.seconds.push(SecondAcc {
                accepted: 0,
                errors: 0,
                latency: histogram(),
            });
        }
        &mut self.seconds[i]
    }
}

/// What a backfill measured.
struct Backfill {
    result: DriveResult,
    truncated: bool,
}

/// Sends the whole schedule to `store` at `port`, in time order, closed loop.
async fn backfill(store: Store, port: u16, plan: &Schedule, quiet: bool) -> Backfill {
    let hosts = plan.hosts.clone();
    let url: hyper::Uri = format!("http://127.0.0.1:{port}{}", store.push_path())
        .parse()
        .expect("a valid URL");
    let senders = SENDERS.min(hosts.len()).max(1);
    let started = Instant::now();
    let deadline = started + MAX_BACKFILL;
    let tally = Arc::new(Mutex::new(Tally {
        started,
        seconds: Vec::new(),
        latency: histogram(),
        statuses: BTreeMap::new(),
        requests: 0,
        accepted: 0,
        failed_requests: 0,
        failed_samples: 0,
        retries: 0,
        ticks_done: 0,
    }));
    let reporter = {
        let tally = tally.clone();
        let total = plan.ticks * senders as u64;
        tokio::spawn(async move {
            let mut last = 0;
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let (accepted, done, retries, failed) = {
                    let t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    (t.accepted, t.ticks_done, t.retries, t.failed_requests)
                };
                if !quiet {
                    eprintln!(
                        "[{:>4}s] {}: accepted {:>9}/s, {:>5.1}% sent, retries {retries}, failed {failed}",
                        started.elapsed().as_secs(),
                        store.label(),
                        accepted - last,
                        done as f64 * 100.0 / total.max(1) as f64
                    );
                }
                last = accepted;
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut encoders = Vec::new();
    for j in 0..senders {
        let own: Vec<usize> = (j..hosts.len()).step_by(senders).collect();
        let agent_id = format!("storebench-{}-{j}", plan.tag);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Bytes, u64)>(4);
        let (hosts_e, ticks) = (hosts.clone(), plan.ticks);
        let (first_ms, step_ms) = (plan.first_ms, plan.step_ms);
        // Encoding runs on its own thread, a few bodies ahead of the sender.
        encoders.push(std::thread::spawn(move || {
            let mut template = Template::new(store, &hosts_e, &own, agent_id);
            let samples = template.samples();
            for tick in 0..ticks {
                let body = template.encode(tick, first_ms + tick as i64 * step_ms);
                if tx.blocking_send((body, samples)).is_err() {
                    return;
                }
            }
        }));
        let (tally, url) = (tally.clone(), url.clone());
        tasks.spawn(async move {
            let client = client();
            let mut truncated = false;
            while let Some((body, samples)) = rx.recv().await {
                if Instant::now() > deadline {
                    truncated = true;
                    break;
                }
                let sent_at = Instant::now();
                lock(&tally).requests += 1;
                let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
                loop {
                    let (verdict, retry_after) =
                        match post(&client, &url, store, body.clone()).await {
                            Sent::Status(code, ra) => {
                                *lock(&tally).statuses.entry(code.to_string()).or_insert(0) += 1;
                                (classify_status(code), ra)
                            }
                            Sent::Network(kind) => {
                                *lock(&tally).statuses.entry(kind.to_owned()).or_insert(0) += 1;
                                (Verdict::Retry, None)
                            }
                        };
                    let now = Instant::now();
                    let micros = now.saturating_duration_since(sent_at).as_micros().max(1) as u64;
                    let retry = {
                        let mut t = lock(&tally);
                        match verdict {
                            Verdict::Success => {
                                t.latency.saturating_record(micros);
                                t.accepted += samples;
                                t.ticks_done += 1;
                                let s = t.second(now);
                                s.accepted += samples;
                                s.latency.saturating_record(micros);
                                false
                            }
                            Verdict::Retry if now < deadline => {
                                t.retries += 1;
                                t.second(now).errors += 1;
                                true
                            }
                            _ => {
                                t.failed_requests += 1;
                                t.failed_samples += samples;
                                t.ticks_done += 1;
                                t.second(now).errors += 1;
                                false
                            }
                        }
                    };
                    if !retry {
                        break;
                    }
                    let delay = backoff
                        .next_delay(retry_after)
                        .min(deadline.saturating_duration_since(now));
                    tokio::time::sleep(delay).await;
                }
            }
            truncated
        });
    }
    let mut truncated = false;
    while let Some(r) = tasks.join_next().await {
        truncated |= r.unwrap_or(true);
    }
    let elapsed = started.elapsed();
    reporter.abort();
    for e in encoders {
        let _ = tokio::task::spawn_blocking(move || e.join()).await;
    }
    let t = lock(&tally);
    let offered = plan.samples();
    let timeline = t
        .seconds
        .iter()
        .enumerate()
        .map(|(i, s)| Second {
            second: i as u64,
            offered_samples: s.accepted,
            accepted_samples: s.accepted,
            errors: s.errors,
            p50_ms: quantile_ms(&s.latency, 0.5),
            p99_ms: quantile_ms(&s.latency, 0.99),
        })
        .collect();
    Backfill {
        result: DriveResult {
            elapsed,
            requests: t.requests,
            offered_samples: offered,
            accepted_samples: t.accepted,
            failed_requests: t.failed_requests,
            failed_samples: t.failed_samples,
            retries: t.retries,
            late_starts: 0,
            latency: t.latency.clone(),
            statuses: t.statuses.clone(),
            timeline,
            acked: Vec::new(),
        },
        truncated,
    }
}

fn lock(t: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Sizes of the files under `dir`: (sum of lengths, sum of allocated blocks), in bytes.
fn dir_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    let mut visited = 0usize;
    while let Some(d) = stack.pop() {
        visited += 1;
        if visited > 1_000_000 {
            break;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total.0 += m.len();
                total.1 += m.blocks() * 512;
            }
        }
    }
    total
}

/// Sum of the values of the `/metrics` lines whose name (with labels) starts with `prefix`.
async fn metric_sum(port: u16, prefix: &str) -> Option<f64> {
    let (status, body) = get(&format!("http://127.0.0.1:{port}/metrics")).await?;
    if status != 200 {
        return None;
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let mut found = None;
    for l in text.lines().filter(|l| l.starts_with(prefix)) {
        if let Some(v) = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Flushes VictoriaMetrics's in-memory rows, then waits (bounded) until its data is on disk:
/// `/internal/force_flush` only turns pending rows into in-memory parts, which this version
/// writes to disk some seconds later, so at least [`SETTLE_MIN`] passes, then until no merge
/// runs and the data directory's size has not changed for three readings a second apart.
async fn settle_victoria_metrics(port: u16, dir: &Path) -> Duration {
    let started = Instant::now();
    let _ = get(&format!("http://127.0.0.1:{port}/internal/force_flush")).await;
    let mut last = dir_bytes(dir).0;
    let mut stable = 0;
    while started.elapsed() < SETTLE_TIMEOUT {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let merges = metric_sum(port, "vm_active_merges").await.unwrap_or(0.0);
        let now = dir_bytes(dir).0;
        if merges == 0.0 && now == last {
            stable += 1;
            if stable >= 3 && started.elapsed() >= SETTLE_MIN {
                break;
            }
        } else {
            stable = 0;
        }
        last = now;
    }
    started.elapsed()
}

/// Waits (bounded) until Sonde's maintenance has caught up with the backfill: no block cut,
/// compaction or checkpoint for three readings a second apart, after at least one
/// maintenance interval.
async fn settle_sonde(port: u16) -> Duration {
    let started = Instant::now();
    let mut last = None;
    let mut stable = 0;
    while started.elapsed() < SETTLE_TIMEOUT {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut now = Vec::new();
        for name in [
            "sonde_collector_store_blocks_cut_total",
            "sonde_collector_store_compactions_total",
            "sonde_collector_store_checkpoints_total",
        ] {
            now.push(metric_sum(port, name).await.unwrap_or(0.0));
        }
        if last.as_ref() == Some(&now) {
            stable += 1;
            if stable >= 3 && started.elapsed() >= Duration::from_secs(6) {
                break;
            }
        } else {
            stable = 0;
        }
        last = Some(now);
    }
    started.elapsed()
}

/// Pushes one sample and polls an instant query every few milliseconds until it is returned.
#[derive(Clone, Debug, Serialize)]
pub struct Visibility {
    /// The pushed series.
    pub series: String,
    /// Push request, send to acknowledgement, in ms.
    pub push_ms: f64,
    /// Acknowledgement to the first query that returned the sample, in ms; `None` if it did not
    /// show within the timeout.
    pub visible_after_ms: Option<f64>,
    pub polls: u64,
    pub timeout_s: f64,
    /// The polls carried `nocache=1` (VictoriaMetrics then skips its `-search.latencyOffset`
    /// adjustment of a query time near now; Sonde ignores the parameter).
    pub nocache: bool,
}

/// `sequence` must differ between the probes of one run (Sonde acknowledges a repeated
/// (agent, sequence) as a retry without storing it).
async fn visibility(
    store: Store,
    port: u16,
    series: &Series,
    value: f64,
    tag: &str,
    sequence: u64,
    nocache: bool,
) -> Visibility {
    let client = client();
    let url: hyper::Uri = format!("http://127.0.0.1:{port}{}", store.push_path())
        .parse()
        .expect("a valid URL");
    let sample = Sample::new(sonde_common::model::now_ms(), value);
    let body = single_sample_body(
        store,
        series,
        sample,
        &format!("storebench-probe-{tag}"),
        sequence,
    );
    let selector = format!(
        "{}{{{}}}",
        series.name,
        series
            .labels
            .iter()
            .map(|l| format!("{}=\"{}\"", l.name, l.value))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut out = Visibility {
        series: selector.clone(),
        push_ms: 0.0,
        visible_after_ms: None,
        polls: 0,
        timeout_s: VISIBILITY_TIMEOUT.as_secs_f64(),
        nocache,
    };
    let sent = Instant::now();
    match post(&client, &url, store, body).await {
        Sent::Status(code, _) if (200..300).contains(&code) => {}
        _ => return out,
    }
    let acked = Instant::now();
    out.push_ms = acked.duration_since(sent).as_secs_f64() * 1000.0;
    while acked.elapsed() < VISIBILITY_TIMEOUT {
        let now_s = sonde_common::model::now_ms() as f64 / 1000.0;
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("query", &selector)
            .append_pair("time", &format!("{now_s:.3}"));
        if nocache {
            q.append_pair("nocache", "1");
        }
        let q = q.finish();
        out.polls += 1;
        if let Some((200, body)) = get(&format!("http://127.0.0.1:{port}/api/v1/query?{q}")).await {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let seen = v["data"]["result"].as_array().is_some_and(|r| {
                r.iter().any(|s| {
                    s["value"][1]
                        .as_str()
                        .and_then(|x| x.parse::<f64>().ok())
                        .is_some_and(|x| x == value)
                })
            });
            if seen {
                out.visible_after_ms = Some(acked.elapsed().as_secs_f64() * 1000.0);
                return out;
            }
        }
        tokio::time::sleep(VISIBILITY_POLL).await;
    }
    out
}

/// One range query, run several times.
#[derive(Clone, Debug, Serialize)]
pub struct QueryFigures {
    pub query: String,
    pub range_s: i64,
    pub step_s: i64,
    pub supported: bool,
    /// The store's error when unsupported (or failing).
    pub error: Option<String>,
    pub first_ms: Option<f64>,
    /// Median of [`QUERY_RUNS`] runs, the first included.
    pub median_ms: Option<f64>,
    /// Median with `nocache=1`: each store's results cache bypassed.
    pub median_nocache_ms: Option<f64>,
    pub result_series: usize,
    pub result_points: usize,
}

async fn range_query(
    port: u16,
    query: &str,
    end_s: i64,
    range_s: i64,
    step_s: i64,
) -> QueryFigures {
    let end_s = end_s / step_s * step_s;
    let mut out = QueryFigures {
        query: query.to_owned(),
        range_s,
        step_s,
        supported: false,
        error: None,
        first_ms: None,
        median_ms: None,
        median_nocache_ms: None,
        result_series: 0,
        result_points: 0,
    };
    let url = |nocache: bool| {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        s.append_pair("query", query)
            .append_pair("start", &(end_s - range_s).to_string())
            .append_pair("end", &end_s.to_string())
            .append_pair("step", &step_s.to_string());
        if nocache {
            s.append_pair("nocache", "1");
        }
        format!("http://127.0.0.1:{port}/api/v1/query_range?{}", s.finish())
    };
    let run = |nocache: bool| {
        let url = url(nocache);
        async move {
            let t = Instant::now();
            let r = get(&url).await;
            (t.elapsed().as_secs_f64() * 1000.0, r)
        }
    };
    let mut times = Vec::new();
    for i in 0..QUERY_RUNS {
        let (ms, r) = run(false).await;
        match r {
            Some((200, body)) => {
                if i == 0 {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
                    out.result_series = result.len();
                    out.result_points = result
                        .iter()
                        .map(|s| s["values"].as_array().map(Vec::len).unwrap_or(0))
                        .sum();
                    out.first_ms = Some(ms);
                    out.supported = true;
                }
                times.push(ms);
            }
            Some((status, body)) => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let msg = v["error"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                out.error = Some(format!("{status}: {}", truncate(&msg, 200)));
                out.supported = false;
                return out;
            }
            None => {
                out.error = Some("no answer (network error or timeout)".into());
                out.supported = false;
                return out;
            }
        }
    }
    out.median_ms = median(&mut times);
    let mut nocache = Vec::new();
    for _ in 0..QUERY_RUNS {
        if let (ms, Some((200, _))) = run(true).await {
            nocache.push(ms);
        }
    }
    out.median_nocache_ms = median(&mut nocache);
    out
}

fn truncate(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Everything measured for one store.
#[derive(Clone, Debug, Serialize)]
pub struct StoreFigures {
    pub store: String,
    pub version: String,
    pub flags: Vec<String>,
    pub samples_offered: u64,
    pub samples_ingested: u64,
    pub samples_failed: u64,
    /// The store's own count of the samples it holds (Sonde: head plus blocks;
    /// VictoriaMetrics: rows in its storage parts), read after the ingest.
    pub samples_stored: Option<u64>,
    /// Where Sonde's bytes are (its self-metrics): blocks, their samples, and the WAL (which
    /// holds what the head has not cut into blocks yet, plus the segment being written).
    pub sonde_block_bytes: Option<u64>,
    pub sonde_block_samples: Option<u64>,
    pub sonde_wal_bytes: Option<u64>,
    pub backfill_truncated: bool,
    pub ingest_seconds: f64,
    pub ingest_samples_per_s: f64,
    pub requests: u64,
    pub samples_per_request: f64,
    pub push_p50_ms: f64,
    pub push_p99_ms: f64,
    pub cpu_seconds_ingest: f64,
    pub cpu_us_per_sample: Option<f64>,
    /// CPU from the start of the backfill until the data is flushed and merges have settled.
    pub cpu_seconds_ingest_and_settle: f64,
    pub settle_seconds: f64,
    pub data_dir_bytes: u64,
    pub data_dir_allocated_bytes: u64,
    pub bytes_per_sample: Option<f64>,
    pub peak_rss_bytes: u64,
    pub rss_after_ingest_bytes: u64,
    pub rss_bytes_per_series: Option<f64>,
    pub visibility_existing_series: Visibility,
    pub visibility_new_series: Visibility,
    /// A new series, polled with `nocache=1`.
    pub visibility_new_series_nocache: Visibility,
    /// `sum by (host) (rate(SELECTOR[5m]))`.
    pub query_1h: QueryFigures,
    pub query_24h: QueryFigures,
    /// The bare `SELECTOR`: every matching series' points.
    pub selector_1h: QueryFigures,
    pub selector_24h: QueryFigures,
}

struct Started {
    server: Server,
    dir: PathBuf,
    flags: Vec<String>,
}

async fn start_sonde(hours: f64) -> anyhow::Result<Started> {
    let port = procs::free_port()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_path_buf();
    let max_age_h = (hours.ceil() as u64).max(24) + 24;
    // Maintenance (block cuts, WAL checkpoints, compaction) every 5 s instead of every
    // minute, so a short run ends with the data in blocks as a long-running store has it.
    let flags = vec![
        "--max-sample-age".to_string(),
        format!("{max_age_h}h"),
        "--maintenance-interval".to_string(),
        "5s".to_string(),
    ];
    let mut args: Vec<String> = vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        path.display().to_string(),
        "--log".into(),
        "warn".into(),
    ];
    args.extend(flags.iter().cloned());
    let mut server = procs::spawn_server(
        "sonde-collector",
        port,
        procs::sibling("sonde-collector")?,
        args,
        Some(dir),
    )?;
    server
        .wait_ready("/readyz", Duration::from_secs(30))
        .await?;
    Ok(Started {
        server,
        dir: path,
        flags,
    })
}

async fn start_victoria_metrics(hours: f64) -> anyhow::Result<Started> {
    let port = procs::free_port()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_path_buf();
    // Retention (default: 1 month) must hold the whole backfill.
    let days = ((hours / 24.0).ceil() as u64 + 2).max(31);
    let flags = vec![
        format!("-retentionPeriod={days}d"),
        "-loggerLevel=ERROR".to_string(),
    ];
    let mut args = vec![
        format!("-storageDataPath={}", path.display()),
        format!("-httpListenAddr=127.0.0.1:{port}"),
    ];
    args.extend(flags.iter().cloned());
    let mut server = procs::spawn_server(
        "victoria-metrics",
        port,
        procs::system_binary("victoria-metrics", "victoria-metrics")?,
        args,
        Some(dir),
    )?;
    server
        .wait_ready("/health", Duration::from_secs(30))
        .await?;
    Ok(Started {
        server,
        dir: path,
        flags,
    })
}

/// The store's version: Sonde's is the workspace's; Debian's VictoriaMetrics build reports
/// none of its own, so the package manager is asked.
fn version(store: Store) -> String {
    match store {
        Store::Sonde => format!("sonde-collector {}", env!("CARGO_PKG_VERSION")),
        Store::VictoriaMetrics => std::process::Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", "victoria-metrics"])
            .output()
            .ok()
            .filter(|o| o.status.success() && !o.stdout.is_empty())
            .map(|o| format!("victoria-metrics {}", String::from_utf8_lossy(&o.stdout)))
            .unwrap_or_else(|| "victoria-metrics".into()),
    }
}

/// The stored-sample count each store reports about itself.
async fn stored_samples(store: Store, port: u16) -> Option<u64> {
    match store {
        Store::Sonde => {
            // The head serves what no block holds yet: together every sample, once.
            let head = metric_sum(port, "sonde_collector_store_head_samples").await?;
            let blocks = metric_sum(port, "sonde_collector_store_block_samples").await?;
            Some(head + blocks)
        }
        Store::VictoriaMetrics => metric_sum(port, "vm_rows{type=\"storage/").await,
    }
    .map(|v| v as u64)
}

/// Backfills one store and measures what belongs to the ingest (rate, CPU, disk, memory).
struct Ingested {
    backfill: Backfill,
    cpu_ingest: f64,
    cpu_settle: f64,
    settle: Duration,
    peak_rss: u64,
    rss_after: u64,
    disk: (u64, u64),
    stored: Option<u64>,
    /// Sonde's blocks bytes, block samples and WAL bytes.
    split: (Option<u64>, Option<u64>, Option<u64>),
}

async fn ingest(store: Store, s: &Started, plan: &Schedule, quiet: bool) -> Ingested {
    let pid = s.server.pid().unwrap_or(0);
    let before = procs::proc_sample(pid).unwrap_or_default();
    if !quiet {
        eprintln!(
            "storage: backfilling {} ({} series x {} ticks = {} samples)",
            store.label(),
            plan.series,
            plan.ticks,
            plan.samples()
        );
    }
    let backfill = backfill(store, s.server.port, plan, quiet).await;
    let after = procs::proc_sample(pid).unwrap_or_default();
    let settle = match store {
        Store::VictoriaMetrics => settle_victoria_metrics(s.server.port, &s.dir).await,
        Store::Sonde => settle_sonde(s.server.port).await,
    };
    let settled = procs::proc_sample(pid).unwrap_or_default();
    let stored = stored_samples(store, s.server.port).await;
    let split = match store {
        Store::Sonde => {
            let m = |name| metric_sum(s.server.port, name);
            (
                m("sonde_collector_store_block_bytes")
                    .await
                    .map(|v| v as u64),
                m("sonde_collector_store_block_samples")
                    .await
                    .map(|v| v as u64),
                m("sonde_collector_store_wal_bytes").await.map(|v| v as u64),
            )
        }
        Store::VictoriaMetrics => (None, None, None),
    };
    Ingested {
        split,
        cpu_ingest: after.cpu_seconds - before.cpu_seconds,
        cpu_settle: settled.cpu_seconds - before.cpu_seconds,
        settle,
        peak_rss: after.hwm_bytes,
        rss_after: settled.rss_bytes,
        disk: dir_bytes(&s.dir),
        stored,
        backfill,
    }
}

pub async fn run(
    args: &ScenarioArgs,
    interval: Duration,
) -> anyhow::Result<(Vec<Report>, serde_json::Value)> {
    let shape = HostShape::default();
    let per_host = Host::new(String::new(), &shape).series_count();
    if args.series == 0 {
        bail!("--series must be at least 1");
    }
    if !(args.hours > 0.0 && args.hours <= 24.0 * 365.0) {
        bail!("--hours must be in (0, 8760]");
    }
    let step_ms = interval.as_millis() as i64;
    if step_ms <= 0 {
        bail!("--interval must be at least 1ms");
    }
    let n_hosts = ((args.series as f64 / per_host as f64).round() as usize).max(1);
    let tag = format!("{:x}", sonde_common::model::now_ms() % 0xff_ffff);
    let hosts: Arc<Vec<Host>> = Arc::new(
        (0..n_hosts)
            .map(|i| Host::new(format!("sb-{tag}-{i:05}"), &shape))
            .collect(),
    );
    let ticks = ((args.hours * 3_600_000.0 / step_ms as f64).floor() as u64).max(1);
    let last_ms = sonde_common::model::now_ms() / step_ms * step_ms;
    let plan = Schedule {
        series: n_hosts * per_host,
        hosts,
        ticks,
        step_ms,
        first_ms: last_ms - (ticks as i64 - 1) * step_ms,
        last_ms,
        tag: tag.clone(),
    };
    debug_assert_eq!(plan.timestamp(ticks - 1), plan.last_ms);

    let sonde = start_sonde(args.hours)
        .await
        .context("starting sonde-collector")?;
    let vm = start_victoria_metrics(args.hours)
        .await
        .context("starting victoria-metrics")?;

    // Backfills one after the other: each store has the machine to itself.
    let sonde_in = ingest(Store::Sonde, &sonde, &plan, args.quiet).await;
    let vm_in = ingest(Store::VictoriaMetrics, &vm, &plan, args.quiet).await;

    let mut figures = Vec::new();
    let mut reports = Vec::new();
    for (store, s, ing) in [
        (Store::Sonde, &sonde, sonde_in),
        (Store::VictoriaMetrics, &vm, vm_in),
    ] {
        let port = s.server.port;
        if !args.quiet {
            eprintln!("storage: visibility and queries on {}", store.label());
        }
        // A new sample of an existing series (value outside the generator's range), then a
        // series the store has never seen.
        let h0 = &plan.hosts[0];
        let load1 = (0..h0.series_count())
            .find(|&i| h0.templates[i].name == "node_load1")
            .unwrap_or(0);
        let existing = visibility(
            store,
            port,
            &h0.series(load1, 0),
            1_234_567_890.0,
            &tag,
            1,
            false,
        )
        .await;
        let probe = |suffix: &str| {
            Series::new(
                "storebench_visibility_probe",
                [("probe", format!("{tag}-{}{suffix}", store.key()))],
            )
        };
        let new = visibility(store, port, &probe(""), 42.0, &tag, 2, false).await;
        let new_nocache = visibility(store, port, &probe("-nocache"), 43.0, &tag, 3, true).await;
        let query = format!("sum by (host) (rate({QUERY_SELECTOR}[5m]))");
        let end_s = plan.last_ms / 1000;
        let q1 = range_query(port, &query, end_s, 3600, 60).await;
        let q24 = range_query(port, &query, end_s, 24 * 3600, 300).await;
        // The bare selector, which every PromQL engine answers: the same series read back.
        let sel1 = range_query(port, QUERY_SELECTOR, end_s, 3600, 60).await;
        let sel24 = range_query(port, QUERY_SELECTOR, end_s, 24 * 3600, 300).await;

        let r = &ing.backfill.result;
        let usage = ProcessUsage {
            name: s.server.name.clone(),
            cpu_seconds: ing.cpu_ingest,
            peak_rss_bytes: ing.peak_rss,
        };
        let name = format!("storage-{}", store.key());
        let report = Report::new(
            &name,
            &format!("http://127.0.0.1:{port}{}", store.push_path()),
            store.protocol(),
            Mode::Closed {
                concurrency: SENDERS.min(plan.hosts.len()),
            },
            plan.hosts.len(),
            per_host,
            interval.as_secs_f64(),
            r,
            None,
            vec![usage],
        );
        report::write_all(&report, &args.out, &name)?;
        let ingested = r.accepted_samples;
        figures.push(StoreFigures {
            store: store.label().into(),
            version: version(store),
            flags: s.flags.clone(),
            samples_offered: r.offered_samples,
            samples_ingested: ingested,
            samples_failed: r.failed_samples,
            samples_stored: ing.stored,
            sonde_block_bytes: ing.split.0,
            sonde_block_samples: ing.split.1,
            sonde_wal_bytes: ing.split.2,
            backfill_truncated: ing.backfill.truncated,
            ingest_seconds: r.elapsed.as_secs_f64(),
            ingest_samples_per_s: ingested as f64 / r.elapsed.as_secs_f64().max(1e-9),
            requests: r.requests,
            samples_per_request: r.offered_samples as f64 / r.requests.max(1) as f64,
            push_p50_ms: quantile_ms(&r.latency, 0.5),
            push_p99_ms: quantile_ms(&r.latency, 0.99),
            cpu_seconds_ingest: ing.cpu_ingest,
            cpu_us_per_sample: (ingested > 0).then(|| ing.cpu_ingest * 1e6 / ingested as f64),
            cpu_seconds_ingest_and_settle: ing.cpu_settle,
            settle_seconds: ing.settle.as_secs_f64(),
            data_dir_bytes: ing.disk.0,
            data_dir_allocated_bytes: ing.disk.1,
            bytes_per_sample: (ingested > 0).then(|| ing.disk.0 as f64 / ingested as f64),
            peak_rss_bytes: ing.peak_rss,
            rss_after_ingest_bytes: ing.rss_after,
            rss_bytes_per_series: (plan.series > 0)
                .then(|| ing.rss_after as f64 / plan.series as f64),
            visibility_existing_series: existing,
            visibility_new_series: new,
            visibility_new_series_nocache: new_nocache,
            query_1h: q1,
            query_24h: q24,
            selector_1h: sel1,
            selector_24h: sel24,
        });
        reports.push(report);
    }
    let (so, vm_f) = (&figures[0], &figures[1]);
    let text = table(&plan, interval, so, vm_f);
    print!("{text}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("storage.txt"), &text)?;
    let summary = serde_json::json!({
        "series": plan.series,
        "hosts": plan.hosts.len(),
        "series_per_host": per_host,
        "hours": args.hours,
        "interval_s": interval.as_secs_f64(),
        "ticks": plan.ticks,
        "first_timestamp_ms": plan.first_ms,
        "last_timestamp_ms": plan.last_ms,
        "senders": SENDERS.min(plan.hosts.len()),
        "query_series": QUERY_SERIES_PER_HOST * plan.hosts.len(),
        "sonde": so,
        "victoriametrics": vm_f,
        "ratios_sonde_to_victoriametrics": {
            "ingest_samples_per_s": ratio(Some(so.ingest_samples_per_s), Some(vm_f.ingest_samples_per_s)),
            "cpu_us_per_sample": ratio(so.cpu_us_per_sample, vm_f.cpu_us_per_sample),
            "bytes_per_sample": ratio(so.bytes_per_sample, vm_f.bytes_per_sample),
            "peak_rss": ratio(Some(so.peak_rss_bytes as f64), Some(vm_f.peak_rss_bytes as f64)),
            "rss_per_series": ratio(so.rss_bytes_per_series, vm_f.rss_bytes_per_series),
            "visibility_new_series": ratio(so.visibility_new_series.visible_after_ms, vm_f.visibility_new_series.visible_after_ms),
            "query_1h_median": ratio(so.query_1h.median_ms, vm_f.query_1h.median_ms),
            "query_24h_median": ratio(so.query_24h.median_ms, vm_f.query_24h.median_ms),
            "selector_1h_median": ratio(so.selector_1h.median_ms, vm_f.selector_1h.median_ms),
            "selector_24h_median": ratio(so.selector_24h.median_ms, vm_f.selector_24h.median_ms),
        },
    });
    Ok((reports, summary))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / 1048576.0)
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 1000.0 => format!("{:.2} s", v / 1000.0),
        Some(v) => format!("{v:.1} ms"),
        None => "-".into(),
    }
}

fn visible(v: &Visibility) -> String {
    match v.visible_after_ms {
        Some(_) => ms(v.visible_after_ms),
        None if v.push_ms == 0.0 => "push failed".into(),
        None => format!("not within {:.0} s", v.timeout_s),
    }
}

fn query_cell(q: &QueryFigures, f: fn(&QueryFigures) -> Option<f64>) -> String {
    if q.supported {
        ms(f(q))
    } else {
        "unsupported".into()
    }
}

/// The side-by-side table: metric | Sonde | VictoriaMetrics | ratio (Sonde / VictoriaMetrics).
fn table(plan: &Schedule, interval: Duration, so: &StoreFigures, vm: &StoreFigures) -> String {
    let mut rows: Vec<(String, String, String, Option<f64>)> = Vec::new();
    let mut row = |m: &str, a: String, b: String, r: Option<f64>| rows.push((m.into(), a, b, r));
    let num = |v: f64| format!("{v:.0}");
    row(
        "samples ingested (acknowledged)",
        so.samples_ingested.to_string(),
        vm.samples_ingested.to_string(),
        ratio(
            Some(so.samples_ingested as f64),
            Some(vm.samples_ingested as f64),
        ),
    );
    let stored = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    row(
        "samples stored (store's own count)",
        stored(so.samples_stored),
        stored(vm.samples_stored),
        None,
    );
    row(
        "backfill wall time",
        format!("{:.1} s", so.ingest_seconds),
        format!("{:.1} s", vm.ingest_seconds),
        ratio(Some(so.ingest_seconds), Some(vm.ingest_seconds)),
    );
    row(
        "ingest samples/s",
        num(so.ingest_samples_per_s),
        num(vm.ingest_samples_per_s),
        ratio(Some(so.ingest_samples_per_s), Some(vm.ingest_samples_per_s)),
    );
    row(
        "push latency p50 / p99 (per request)",
        format!("{:.2} / {:.2} ms", so.push_p50_ms, so.push_p99_ms),
        format!("{:.2} / {:.2} ms", vm.push_p50_ms, vm.push_p99_ms),
        ratio(Some(so.push_p50_ms), Some(vm.push_p50_ms)),
    );
    row(
        "server CPU during backfill",
        format!("{:.2} s", so.cpu_seconds_ingest),
        format!("{:.2} s", vm.cpu_seconds_ingest),
        ratio(Some(so.cpu_seconds_ingest), Some(vm.cpu_seconds_ingest)),
    );
    let us = |v: Option<f64>| {
        v.map(|v| format!("{v:.3} µs"))
            .unwrap_or_else(|| "-".into())
    };
    row(
        "server CPU per sample",
        us(so.cpu_us_per_sample),
        us(vm.cpu_us_per_sample),
        ratio(so.cpu_us_per_sample, vm.cpu_us_per_sample),
    );
    row(
        "server CPU incl. flush + merges after",
        format!("{:.2} s", so.cpu_seconds_ingest_and_settle),
        format!(
            "{:.2} s ({:.0} s settle)",
            vm.cpu_seconds_ingest_and_settle, vm.settle_seconds
        ),
        ratio(
            Some(so.cpu_seconds_ingest_and_settle),
            Some(vm.cpu_seconds_ingest_and_settle),
        ),
    );
    row(
        "data directory (file lengths)",
        format!(
            "{} B ({})",
            so.data_dir_bytes,
            mib(so.data_dir_bytes as f64)
        ),
        format!(
            "{} B ({})",
            vm.data_dir_bytes,
            mib(vm.data_dir_bytes as f64)
        ),
        ratio(
            Some(so.data_dir_bytes as f64),
            Some(vm.data_dir_bytes as f64),
        ),
    );
    row(
        "data directory (allocated blocks)",
        mib(so.data_dir_allocated_bytes as f64),
        mib(vm.data_dir_allocated_bytes as f64),
        ratio(
            Some(so.data_dir_allocated_bytes as f64),
            Some(vm.data_dir_allocated_bytes as f64),
        ),
    );
    let bps = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
    row(
        "bytes per sample on disk (index incl.)",
        bps(so.bytes_per_sample),
        bps(vm.bytes_per_sample),
        ratio(so.bytes_per_sample, vm.bytes_per_sample),
    );
    if let (Some(bytes), Some(samples), Some(wal)) = (
        so.sonde_block_bytes,
        so.sonde_block_samples,
        so.sonde_wal_bytes,
    ) {
        row(
            "Sonde blocks: bytes per sample (index incl.)",
            format!(
                "{:.3} ({} of {} samples)",
                bytes as f64 / samples.max(1) as f64,
                samples,
                so.samples_ingested
            ),
            "-".into(),
            None,
        );
        row(
            "Sonde WAL (head not yet in blocks)",
            mib(wal as f64),
            "-".into(),
            None,
        );
    }
    row(
        "peak RSS during ingest",
        mib(so.peak_rss_bytes as f64),
        mib(vm.peak_rss_bytes as f64),
        ratio(
            Some(so.peak_rss_bytes as f64),
            Some(vm.peak_rss_bytes as f64),
        ),
    );
    row(
        "RSS after ingest",
        mib(so.rss_after_ingest_bytes as f64),
        mib(vm.rss_after_ingest_bytes as f64),
        ratio(
            Some(so.rss_after_ingest_bytes as f64),
            Some(vm.rss_after_ingest_bytes as f64),
        ),
    );
    let per = |v: Option<f64>| {
        v.map(|v| format!("{:.0} B", v))
            .unwrap_or_else(|| "-".into())
    };
    row(
        "RSS per active series",
        per(so.rss_bytes_per_series),
        per(vm.rss_bytes_per_series),
        ratio(so.rss_bytes_per_series, vm.rss_bytes_per_series),
    );
    row(
        "ack -> visible, existing series",
        visible(&so.visibility_existing_series),
        visible(&vm.visibility_existing_series),
        ratio(
            so.visibility_existing_series.visible_after_ms,
            vm.visibility_existing_series.visible_after_ms,
        ),
    );
    row(
        "ack -> visible, new series",
        visible(&so.visibility_new_series),
        visible(&vm.visibility_new_series),
        ratio(
            so.visibility_new_series.visible_after_ms,
            vm.visibility_new_series.visible_after_ms,
        ),
    );
    row(
        "ack -> visible, new series, nocache=1",
        visible(&so.visibility_new_series_nocache),
        visible(&vm.visibility_new_series_nocache),
        ratio(
            so.visibility_new_series_nocache.visible_after_ms,
            vm.visibility_new_series_nocache.visible_after_ms,
        ),
    );
    for (label, a, b) in [
        ("sum(rate) 1h (step 60s)", &so.query_1h, &vm.query_1h),
        ("sum(rate) 24h (step 300s)", &so.query_24h, &vm.query_24h),
        ("selector 1h (step 60s)", &so.selector_1h, &vm.selector_1h),
        (
            "selector 24h (step 300s)",
            &so.selector_24h,
            &vm.selector_24h,
        ),
    ] {
        let both = a.supported && b.supported;
        row(
            &format!("{label}, median of {QUERY_RUNS}"),
            query_cell(a, |q| q.median_ms),
            query_cell(b, |q| q.median_ms),
            if both {
                ratio(a.median_ms, b.median_ms)
            } else {
                None
            },
        );
        row(
            &format!("{label}, first run"),
            query_cell(a, |q| q.first_ms),
            query_cell(b, |q| q.first_ms),
            if both {
                ratio(a.first_ms, b.first_ms)
            } else {
                None
            },
        );
        row(
            &format!("{label}, median, nocache=1"),
            query_cell(a, |q| q.median_nocache_ms),
            query_cell(b, |q| q.median_nocache_ms),
            if both {
                ratio(a.median_nocache_ms, b.median_nocache_ms)
            } else {
                None
            },
        );
        let res = |q: &QueryFigures| {
            if q.supported {
                format!("{} series, {} points", q.result_series, q.result_points)
            } else {
                "-".into()
            }
        };
        row(&format!("{label}, result"), res(a), res(b), None);
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== storage: {} series ({} hosts x {}), {:.1} h at {} s = {} samples per store, {} senders, {:.0} samples per request",
        plan.series,
        plan.hosts.len(),
        plan.series / plan.hosts.len().max(1),
        plan.ticks as f64 * plan.step_ms as f64 / 3_600_000.0,
        interval.as_secs_f64(),
        plan.samples(),
        SENDERS.min(plan.hosts.len()),
        so.samples_per_request,
    );
    let _ = writeln!(s, "{}: flags {}", so.version, so.flags.join(" "));
    let _ = writeln!(s, "{}: flags {}", vm.version, vm.flags.join(" "));
    let _ = writeln!(
        s,
        "queries: sum by (host) (rate({QUERY_SELECTOR}[5m])) and the bare selector, over {} series",
        QUERY_SERIES_PER_HOST * plan.hosts.len()
    );
    let w0 = rows
        .iter()
        .map(|r| r.0.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let w1 = rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    let w2 = rows
        .iter()
        .map(|r| r.2.chars().count())
        .max()
        .unwrap_or(15)
        .max(15);
    let _ = writeln!(
        s,
        "{:<w0$} | {:>w1$} | {:>w2$} | ratio",
        "metric", "Sonde", "VictoriaMetrics"
    );
    let _ = writeln!(s, "{}", "-".repeat(w0 + w1 + w2 + 14));
    for (m, a, b, r) in &rows {
        let r = match *r {
            Some(r) if r != 0.0 && r.abs() < 0.001 => format!("{r:.1e}"),
            Some(r) if r.abs() < 0.1 => format!("{r:.4}"),
            Some(r) => format!("{r:.2}"),
            None => "-".into(),
        };
        let pad = |x: &str, w: usize| " ".repeat(w.saturating_sub(x.chars().count()));
        let _ = writeln!(
            s,
            "{m}{} | {}{a} | {}{b} | {r}",
            pad(m, w0),
            pad(a, w1),
            pad(b, w2)
        );
    }
    for (store, f) in [("Sonde", so), ("VictoriaMetrics", vm)] {
        for (what, q) in [
            ("sum(rate) 1h", &f.query_1h),
            ("sum(rate) 24h", &f.query_24h),
            ("selector 1h", &f.selector_1h),
            ("selector 24h", &f.selector_24h),
        ] {
            if let Some(e) = &q.error {
                let _ = writeln!(s, "{store}: {what} refused: {e}");
            }
        }
        if f.backfill_truncated {
            let _ = writeln!(
                s,
                "{store}: backfill stopped at the {} s limit; not every sample was sent",
                MAX_BACKFILL.as_secs()
            );
        }
    }
    let _ = writeln!(s, "ratio = Sonde / VictoriaMetrics");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_ratio() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
        assert_eq!(ratio(Some(1.0), Some(2.0)), Some(0.5));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }

    #[test]
    fn templates_encode_every_series_of_their_hosts() {
        let shape = HostShape::default();
        let hosts: Vec<Host> = (0..3).map(|i| Host::new(format!("h{i}"), &shape)).collect();
        let mut t = Template::new(Store::Sonde, &hosts, &[0, 2], "a".into());
        assert_eq!(t.samples(), 2 * hosts[0].series_count() as u64);
        for tick in 0..7 {
            t.encode(tick, 0);
        }
        let body = t.encode(7, 1_000);
        let batch = wire::decode(&body, &wire::WireLimits::default()).unwrap();
        assert_eq!(batch.header.sequence, 7);
        assert_eq!(batch.sample_count(), 2 * hosts[0].series_count());
        assert!(batch.iter().all(|s| s.samples()[0].timestamp_ms == 1_000));
        let mut t = Template::new(Store::VictoriaMetrics, &hosts, &[1], "a".into());
        let first = rw::decode(&t.encode(0, 1_000), 1 << 24).unwrap();
        let req = rw::decode(&t.encode(1, 2_000), 1 << 24).unwrap();
        assert_eq!(req.timeseries.len(), hosts[1].series_count());
        assert_eq!(req.timeseries[0].samples[0].timestamp, 2_000);
        // node_cpu_seconds_total (a counter) never decreases; values are integers.
        let (a, b) = (
            first.timeseries[0].samples[0].value,
            req.timeseries[0].samples[0].value,
        );
        assert!(b >= a && b.fract() == 0.0);
    }

    #[test]
    fn directory_sizes_count_every_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("a"), [0u8; 10]).unwrap();
        std::fs::write(d.path().join("sub/b"), [0u8; 5]).unwrap();
        assert_eq!(dir_bytes(d.path()).0, 15);
    }
}
