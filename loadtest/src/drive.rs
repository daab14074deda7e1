//! Drive: pushes the simulated hosts' batches at the target, open loop (every host pushes every
//! interval whatever the server does, so a slow server shows up as latency and backlog, not as
//! a politely lower offered load; latency counts from the scheduled send time) or closed loop
//! (a fixed number of senders, each sending its next batch as soon as the last is answered).
//!
//! Failed requests follow the shared retry rule until the run's grace deadline. Every
//! acknowledged request is remembered (host, tick, timestamp) for the loss audit. Bounded by
//! duration and request count; stops by itself.

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sonde_common::model::{MetricKind, Sample};
use sonde_common::remote_write as rw;
use sonde_common::retry::{Backoff, Verdict, classify_status, parse_retry_after};
use sonde_common::wire::{self, BatchBuilder, BatchHeader, Compression};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use crate::generate::Host;

/// Wire protocol of the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Sonde's native batches (`POST /api/v1/push`).
    Native,
    /// Prometheus remote write 1.0 (`POST /api/v1/write` or the storage's equivalent).
    RemoteWrite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Open,
    Closed { concurrency: usize },
}

#[derive(Clone, Debug)]
pub struct DriveConfig {
    pub target: Uri,
    pub protocol: Protocol,
    pub interval: Duration,
    pub duration: Duration,
    pub max_requests: u64,
    pub mode: Mode,
    /// Open loop: most requests in flight; beyond it sends start late (counted as backlog).
    pub max_inflight: usize,
    pub timeout: Duration,
    /// How long after the end of the run failed requests may still be retried.
    pub grace: Duration,
    pub quiet: bool,
}

/// An acknowledged request: which host, which tick, and the samples' timestamp.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub host: u32,
    pub tick: u64,
    pub timestamp_ms: i64,
}

/// One second of the run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Second {
    pub second: u64,
    pub offered_samples: u64,
    pub accepted_samples: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

struct SecondAcc {
    offered: u64,
    accepted: u64,
    errors: u64,
    latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// One request to make: which host's batch, for which tick, and when it was due.
#[derive(Clone, Copy)]
struct Job {
    host: u32,
    tick: u64,
    timestamp_ms: i64,
    scheduled: Instant,
}

/// Shared counters of a run.
struct Tally {
    started: Instant,
    /// Failed requests are retried until then.
    deadline: Instant,
    seconds: Mutex<Vec<SecondAcc>>,
    latency: Mutex<Histogram<u64>>,
    statuses: Mutex<BTreeMap<String, u64>>,
    acked: Mutex<Vec<Ack>>,
    requests: AtomicU64,
    retries: AtomicU64,
    failed_requests: AtomicU64,
    failed_samples: AtomicU64,
    late_starts: AtomicU64,
    inflight: AtomicUsize,
}

impl Tally {
    fn second(&self, at: Instant) -> usize {
        at.saturating_duration_since(self.started).as_secs() as usize
    }

    fn with_second(&self, at: Instant, f: impl FnOnce(&mut SecondAcc)) {
        let i = self.second(at);
        let mut seconds = self.seconds.lock().unwrap_or_else(|e| e.into_inner());
        while seconds.len() <= i {
            seconds.push(SecondAcc {
                offered: 0,
                accepted: 0,
                errors: 0,
                latency: histogram(),
            });
        }
        f(&mut seconds[i]);
    }

    fn status(&self, key: String) {
        *self
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_insert(0) += 1;
    }
}

/// What a run measured.
pub struct DriveResult {
    pub elapsed: Duration,
    pub requests: u64,
    pub offered_samples: u64,
    pub accepted_samples: u64,
    pub failed_requests: u64,
    pub failed_samples: u64,
    pub retries: u64,
    pub late_starts: u64,
    pub latency: Histogram<u64>,
    pub statuses: BTreeMap<String, u64>,
    pub timeline: Vec<Second>,
    pub acked: Vec<Ack>,
}

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled HTTP client for pushing, with `timeout` to connect.
pub(crate) fn client(timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(timeout));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1024)
        .build(connector)
}

/// Encodes one host's batch for `tick`, all samples at `timestamp_ms`.
pub fn encode(host: &Host, tick: u64, timestamp_ms: i64, protocol: Protocol) -> Bytes {
    match protocol {
        Protocol::Native => {
            let mut b = BatchBuilder::new(BatchHeader {
                agent_id: host.name.clone(),
                sequence: tick,
                sent_at_ms: sonde_common::model::now_ms(),
            });
            for i in 0..host.series_count() {
                let kind = host.templates[i].kind;
                let start =
                    matches!(kind, MetricKind::Counter | MetricKind::Histogram).then_some(0);
                b.push(
                    &host.series(i, tick),
                    kind,
                    start,
                    vec![Sample::new(timestamp_ms, host.value(i, tick))],
                );
            }
            Bytes::from(wire::encode(&b.build(), Compression::Zstd).unwrap_or_default())
        }
        Protocol::RemoteWrite => {
            let timeseries = (0..host.series_count())
                .map(|i| {
                    let s = host.series(i, tick);
                    let labels = std::iter::once(rw::Label {
                        name: "__name__".into(),
                        value: s.name,
                    })
                    .chain(s.labels.into_iter().map(|l| rw::Label {
                        name: l.name,
                        value: l.value,
                    }))
                    .collect();
                    rw::TimeSeries {
                        labels,
                        samples: vec![rw::Sample {
                            value: host.value(i, tick),
                            timestamp: timestamp_ms,
                        }],
                    }
                })
                .collect();
            Bytes::from(rw::encode(&rw::WriteRequest { timeseries }))
        }
    }
}

/// How one push ended: a status (with Retry-After, if given) or a network failure by kind.
pub(crate) enum Sent {
    Status(u16, Option<Duration>),
    Network(&'static str),
}

async fn send_once(client: &HttpClient, cfg: &DriveConfig, body: Bytes) -> Sent {
    post(client, &cfg.target, cfg.protocol, cfg.timeout, body).await
}

/// Pushes `body` (encoded for `protocol`) to `target` once, with its Content-Type and
/// Content-Encoding, waiting at most `timeout` for the answer and again for its body.
pub(crate) async fn post(
    client: &HttpClient,
    target: &hyper::Uri,
    protocol: Protocol,
    timeout: Duration,
    body: Bytes,
) -> Sent {
    let mut req = hyper::Request::post(target.clone());
    req = match protocol {
        Protocol::Native => req
            .header(CONTENT_TYPE, wire::CONTENT_TYPE)
            .header(CONTENT_ENCODING, Compression::Zstd.http_encoding()),
        Protocol::RemoteWrite => req
            .header(CONTENT_TYPE, rw::CONTENT_TYPE)
            .header(CONTENT_ENCODING, rw::CONTENT_ENCODING)
            .header(rw::VERSION_HEADER, rw::VERSION),
    };
    let Ok(req) = req.body(Full::new(body)) else {
        return Sent::Network("bad_request");
    };
    match tokio::time::timeout(timeout, client.request(req)).await {
        Err(_) => Sent::Network("timeout"),
        Ok(Err(_)) => Sent::Network("network"),
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let _ = tokio::time::timeout(timeout, resp.into_body().collect()).await;
            Sent::Status(status, retry_after)
        }
    }
}

/// Sends one request with retries; records its outcome.
async fn request(client: &HttpClient, cfg: &DriveConfig, tally: &Tally, hosts: &[Host], job: Job) {
    let Job {
        host,
        tick,
        timestamp_ms,
        scheduled,
    } = job;
    let deadline = tally.deadline;
    let h = &hosts[host as usize];
    let samples = h.series_count() as u64;
    let body = encode(h, tick, timestamp_ms, cfg.protocol);
    tally.requests.fetch_add(1, Ordering::Relaxed);
    tally.with_second(scheduled, |s| s.offered += samples);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let sent = send_once(client, cfg, body.clone()).await;
        let (verdict, retry_after) = match sent {
            Sent::Status(code, ra) => {
                tally.status(code.to_string());
                (classify_status(code), ra)
            }
            Sent::Network(kind) => {
                tally.status(kind.to_owned());
                (Verdict::Retry, None)
            }
        };
        let now = Instant::now();
        match verdict {
            Verdict::Success => {
                let micros = now.saturating_duration_since(scheduled).as_micros().max(1) as u64;
                tally
                    .latency
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .saturating_record(micros);
                tally.with_second(now, |s| {
                    s.accepted += samples;
                    s.latency.saturating_record(micros);
                });
                tally
                    .acked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Ack {
                        host,
                        tick,
                        timestamp_ms,
                    });
                return;
            }
            Verdict::Retry if now < deadline => {
                tally.retries.fetch_add(1, Ordering::Relaxed);
                tally.with_second(now, |s| s.errors += 1);
                let delay = backoff
                    .next_delay(retry_after)
                    .min(deadline.saturating_duration_since(now));
                tokio::time::sleep(delay).await;
            }
            _ => {
                tally.with_second(now, |s| s.errors += 1);
                tally.failed_requests.fetch_add(1, Ordering::Relaxed);
                tally.failed_samples.fetch_add(samples, Ordering::Relaxed);
                return;
            }
        }
    }
}

fn progress(tally: &Tally, last: &mut (u64, u64)) -> String {
    let seconds = tally.seconds.lock().unwrap_or_else(|e| e.into_inner());
    let offered: u64 = seconds.iter().map(|s| s.offered).sum();
    let accepted: u64 = seconds.iter().map(|s| s.accepted).sum();
    let (d_off, d_acc) = (offered - last.0, accepted - last.1);
    *last = (offered, accepted);
    let lat = seconds
        .iter()
        .rev()
        .find(|s| !s.latency.is_empty())
        .map(|s| {
            (
                s.latency.value_at_quantile(0.5),
                s.latency.value_at_quantile(0.99),
            )
        })
        .unwrap_or((0, 0));
    format!(
        "[{:>4}s] offered {:>9.0}/s accepted {:>9.0}/s p50 {:>7.2}ms p99 {:>7.2}ms inflight {:>4} retries {} failed {}",
        tally.started.elapsed().as_secs(),
        d_off as f64,
        d_acc as f64,
        lat.0 as f64 / 1000.0,
        lat.1 as f64 / 1000.0,
        tally.inflight.load(Ordering::Relaxed),
        tally.retries.load(Ordering::Relaxed),
        tally.failed_requests.load(Ordering::Relaxed),
    )
}

/// Runs the load and returns what it measured.
pub async fn drive(cfg: DriveConfig, hosts: Arc<Vec<Host>>) -> DriveResult {
    let client = client(cfg.timeout);
    let started = Instant::now();
    let tally = Arc::new(Tally {
        started,
        deadline: started + cfg.duration + cfg.grace,
        seconds: Mutex::new(Vec::new()),
        latency: Mutex::new(histogram()),
        statuses: Mutex::new(BTreeMap::new()),
        acked: Mutex::new(Vec::new()),
        requests: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        failed_requests: AtomicU64::new(0),
        failed_samples: AtomicU64::new(0),
        late_starts: AtomicU64::new(0),
        inflight: AtomicUsize::new(0),
    });
    let start = tally.started;
    let end = start + cfg.duration;
    let cfg = Arc::new(cfg);
    let reporter = {
        let tally = tally.clone();
        let quiet = cfg.quiet;
        tokio::spawn(async move {
            let mut last = (0, 0);
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let line = progress(&tally, &mut last);
                if !quiet {
                    eprintln!("{line}");
                }
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    let issued = Arc::new(AtomicU64::new(0));
    match cfg.mode {
        Mode::Open => {
            let permits = Arc::new(Semaphore::new(cfg.max_inflight.max(1)));
            // One request per host at a time, in tick order (tokio's mutex is FIFO), as an
            // agent sends: a late batch delays the host's next one instead of overtaking it.
            // (Tick k of a host is spawned an interval before tick k+1, so it queues first.)
            let host_locks: Vec<Arc<tokio::sync::Mutex<()>>> =
                (0..hosts.len()).map(|_| Arc::default()).collect();
            let start_ms = sonde_common::model::now_ms();
            let interval = cfg.interval;
            let n = hosts.len() as u32;
            // Hosts are spread evenly over the interval, as real agents' clocks are.
            'ticks: for tick in 0u64.. {
                for host in 0..n {
                    let offset = interval.mul_f64(host as f64 / n.max(1) as f64);
                    let scheduled = start + interval * tick as u32 + offset;
                    if scheduled >= end || issued.load(Ordering::Relaxed) >= cfg.max_requests {
                        break 'ticks;
                    }
                    tokio::time::sleep_until(scheduled.into()).await;
                    let permit = match permits.clone().try_acquire_owned() {
                        Ok(p) => p,
                        Err(_) => {
                            tally.late_starts.fetch_add(1, Ordering::Relaxed);
                            match permits.clone().acquire_owned().await {
                                Ok(p) => p,
                                Err(_) => break 'ticks,
                            }
                        }
                    };
                    issued.fetch_add(1, Ordering::Relaxed);
                    let ts = start_ms + (scheduled - start).as_millis() as i64;
                    let (client, cfg, tally, hosts) =
                        (client.clone(), cfg.clone(), tally.clone(), hosts.clone());
                    let lock = host_locks[host as usize].clone();
                    tasks.spawn(async move {
                        let _in_order = lock.lock_owned().await;
                        tally.inflight.fetch_add(1, Ordering::Relaxed);
                        let job = Job {
                            host,
                            tick,
                            timestamp_ms: ts,
                            scheduled,
                        };
                        request(&client, &cfg, &tally, &hosts, job).await;
                        tally.inflight.fetch_sub(1, Ordering::Relaxed);
                        drop(permit);
                    });
                    while tasks.try_join_next().is_some() {}
                }
            }
        }
        Mode::Closed { concurrency } => {
            // Sender j owns hosts j, j+C, j+2C, ...: each host's batches go one at a time, in
            // order, with strictly increasing timestamps, as an agent sends them.
            let senders = concurrency.max(1).min(hosts.len().max(1));
            for j in 0..senders {
                let (client, cfg, tally, hosts, issued) = (
                    client.clone(),
                    cfg.clone(),
                    tally.clone(),
                    hosts.clone(),
                    issued.clone(),
                );
                tasks.spawn(async move {
                    let mine: Vec<u32> = (j..hosts.len())
                        .step_by(senders)
                        .map(|h| h as u32)
                        .collect();
                    let mut state = vec![(0u64, i64::MIN); mine.len()];
                    let mut turn = 0usize;
                    while Instant::now() < end
                        && issued.fetch_add(1, Ordering::Relaxed) < cfg.max_requests
                    {
                        let k = turn % mine.len();
                        turn += 1;
                        let (tick, last) = state[k];
                        let ts = sonde_common::model::now_ms().max(last + 1);
                        state[k] = (tick + 1, ts);
                        tally.inflight.fetch_add(1, Ordering::Relaxed);
                        let job = Job {
                            host: mine[k],
                            tick,
                            timestamp_ms: ts,
                            scheduled: Instant::now(),
                        };
                        request(&client, &cfg, &tally, &hosts, job).await;
                        tally.inflight.fetch_sub(1, Ordering::Relaxed);
                    }
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    reporter.abort();
    let elapsed = start.elapsed();
    let seconds = std::mem::take(&mut *tally.seconds.lock().unwrap_or_else(|e| e.into_inner()));
    let timeline: Vec<Second> = seconds
        .iter()
        .enumerate()
        .map(|(i, s)| Second {
            second: i as u64,
            offered_samples: s.offered,
            accepted_samples: s.accepted,
            errors: s.errors,
            p50_ms: if s.latency.is_empty() {
                0.0
            } else {
                s.latency.value_at_quantile(0.5) as f64 / 1000.0
            },
            p99_ms: if s.latency.is_empty() {
                0.0
            } else {
                s.latency.value_at_quantile(0.99) as f64 / 1000.0
            },
        })
        .collect();
    DriveResult {
        elapsed,
        requests: tally.requests.load(Ordering::Relaxed),
        offered_samples: seconds.iter().map(|s| s.offered).sum(),
        accepted_samples: seconds.iter().map(|s| s.accepted).sum(),
        failed_requests: tally.failed_requests.load(Ordering::Relaxed),
        failed_samples: tally.failed_samples.load(Ordering::Relaxed),
        retries: tally.retries.load(Ordering::Relaxed),
        late_starts: tally.late_starts.load(Ordering::Relaxed),
        latency: tally
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        statuses: tally
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        timeline,
        acked: std::mem::take(&mut *tally.acked.lock().unwrap_or_else(|e| e.into_inner())),
    }
}
