//! The agent's pipeline: sources -> aggregate -> batch -> buffer -> push, and its shutdown
//! order.
//!
//! - Every interval (after a random first delay, so hosts started together spread their
//!   pushes) the host source is read on a blocking thread, the StatsD aggregator is flushed,
//!   and the agent's own metrics are sampled; the points go to the [`Outbox`], which cuts
//!   bounded batches into the buffer.
//! - StatsD packets are read by the listener's own threads straight into the aggregator; a slow
//!   or absent collector never delays them.
//! - Each `--scrape` target has its own task and interval.
//! - The pusher delivers buffered batches independently of all of the above.
//!
//! Shutdown: stop the StatsD threads and scrape tasks; flush the aggregator and collect one
//! last time; keep pushing until the buffer is empty or the shutdown timeout passes; then
//! spool (if configured) or count and log whatever is left.

use sonde_common::etcd::{EtcdClient, Registration};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::aggregate::Aggregator;
use crate::batch::{Batcher, Outbox, Point};
use crate::buffer::Buffer;
use crate::config::Config;
use crate::events::Events;
use crate::http;
use crate::push::Pusher;
use crate::sources::Reading;
use crate::sources::host::{HostError, HostSource};
use crate::sources::scrape::Scraper;
use crate::sources::statsd::listener::{self, ListenError, Listener};
use crate::spool::Spool;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("cannot start the host source: {0}")]
    Host(#[from] HostError),
    #[error(transparent)]
    Statsd(#[from] ListenError),
    #[error("cannot open the spool in {dir}: {cause}")]
    Spool {
        dir: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("host source task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Everything one flush reads from.
struct Flusher {
    host: Arc<Mutex<HostSource>>,
    aggregator: Option<Arc<Mutex<Aggregator>>>,
    listener: Option<Listener>,
    events: Arc<Events>,
    outbox: Arc<Outbox>,
    readings: Vec<Reading>,
    hostname: String,
    started_ms: i64,
}

impl Flusher {
    /// One collection: host metrics, StatsD aggregates, self-metrics.
    async fn flush(&mut self) -> Result<(), AgentError> {
        let timestamp = sonde_common::model::now_ms();
        let started = Instant::now();
        let source = self.host.clone();
        let mut out = std::mem::take(&mut self.readings);
        let (mut out, stats) = tokio::task::spawn_blocking(move || {
            let mut source = source.lock().unwrap_or_else(|e| e.into_inner());
            let stats = source.collect(&mut out);
            (out, stats)
        })
        .await?;
        self.events.collected(started.elapsed(), &stats.errors);
        let host_points: Vec<Point> = out.drain(..).map(Point::from).collect();
        self.readings = out;
        self.outbox.submit("host", &host_points, timestamp);

        if let Some(agg) = &self.aggregator {
            let mut points = Vec::new();
            let series = {
                let mut agg = agg.lock().unwrap_or_else(|e| e.into_inner());
                agg.flush(timestamp, &mut points);
                agg.series_count()
            };
            self.events.statsd_series.set(series as f64);
            if let Some(drops) = self.listener.as_ref().and_then(Listener::kernel_drops) {
                self.events.statsd_kernel_drops.set(drops as f64);
            }
            self.outbox.submit("statsd", &points, timestamp);
        }

        // Last, so the counts above are in it.
        match crate::selfmetrics::from_text(
            &self.events.render(),
            &self.hostname,
            timestamp,
            self.started_ms,
        ) {
            Ok(points) => self.outbox.submit("self", &points, timestamp),
            Err(e) => tracing::error!("cannot read back the agent's own metrics: {e}"),
        }
        Ok(())
    }
}

/// Runs the agent until `shutdown` is cancelled, then flushes (bounded by the configured
/// shutdown timeout) and returns. `http_listener` serves self-metrics when given.
pub async fn run(
    config: Config,
    http_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let host_cfg = config.host.clone();
    let host = tokio::task::spawn_blocking(move || HostSource::new(host_cfg)).await??;
    let hostname = host.hostname().to_owned();
    let events = Arc::new(Events::default());
    let spool = match &config.spool {
        Some(s) => Some(
            Spool::open(&s.dir, s.max_bytes).map_err(|cause| AgentError::Spool {
                dir: s.dir.clone(),
                cause,
            })?,
        ),
        None => None,
    };
    if let Some(s) = &spool
        && !s.is_empty()
    {
        tracing::info!(
            batches = s.usage().0,
            bytes = s.usage().1,
            "delivering batches spooled by an earlier run first"
        );
    }
    let buffer = Arc::new(Buffer::with_spool(config.buffer_bytes, spool));
    let first_sequence = sonde_common::model::now_ms().max(0) as u64;
    let batcher = Batcher::new(hostname.clone(), first_sequence, config.push.compression);
    let outbox = Arc::new(Outbox::new(
        batcher,
        buffer.clone(),
        events.clone(),
        config.batch_max_samples,
    ));
    outbox.account();

    let (aggregator, listener) = match &config.statsd {
        Some(s) => {
            let agg = Arc::new(Mutex::new(Aggregator::new(
                crate::aggregate::AggregateConfig {
                    hostname: hostname.clone(),
                    ..s.aggregate.clone()
                },
            )));
            let l = listener::start(&s.listener, agg.clone(), events.clone())?;
            (Some(agg), Some(l))
        }
        None => (None, None),
    };
    tracing::info!(host = %hostname, interval = ?config.interval, collectors = ?config.push.urls.iter().map(|u| u.to_string()).collect::<Vec<_>>(), statsd = ?listener.as_ref().and_then(|l| l.local_udp), "agent started");

    let tracker = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    // Cancelled only after the last flush at shutdown: a pusher told to drain stops once the
    // buffer is empty, and the last flush's batches must still find it running.
    let drain = CancellationToken::new();
    let pusher = Pusher::new(config.push.clone(), events.clone())?;
    tracker.spawn(pusher.run(buffer.clone(), drain.clone(), hard_stop.clone()));
    if let Some(listener) = http_listener {
        let push = http::PushTarget {
            outbox: outbox.clone(),
            hostname: hostname.clone(),
        };
        tracker.spawn(http::serve(
            listener,
            events.clone(),
            push,
            hard_stop.clone(),
        ));
    }

    // Registered only once /metrics is served; deregistered first thing at shutdown.
    let registration = config.register.as_ref().map(|r| {
        let value = serde_json::json!({
            "address": r.address,
            "labels": { "__meta_sonde_agent_host": hostname },
        });
        Registration::start(
            EtcdClient::new(r.endpoints.clone()),
            r.key.clone(),
            value.to_string().into_bytes(),
            r.ttl,
            shutdown.clone(),
        )
    });

    for target in &config.scrapes {
        let scraper = Scraper::new(target.clone(), hostname.clone());
        tracker.spawn(scrape_loop(
            scraper,
            outbox.clone(),
            events.clone(),
            shutdown.clone(),
        ));
    }

    let mut flusher = Flusher {
        host: Arc::new(Mutex::new(host)),
        aggregator,
        listener,
        events: events.clone(),
        outbox: outbox.clone(),
        readings: Vec::new(),
        hostname: hostname.clone(),
        started_ms: sonde_common::model::now_ms(),
    };
    let jitter = config
        .flush_jitter
        .min(config.interval)
        .mul_f64(fastrand::f64());
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + jitter, config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        flusher.flush().await?;
    }

    // Shutdown: leave etcd (collectors stop scraping us), stop intake, take a last flush,
    // deliver what we can, keep or count the rest.
    if let Some(r) = registration {
        r.stop().await;
    }
    if let Some(l) = flusher.listener.take() {
        tokio::task::spawn_blocking(move || l.stop()).await?;
    }
    let flushed = flusher.flush().await;
    drain.cancel();
    flushed?;
    tracing::info!(timeout = ?config.shutdown_timeout, buffered = ?buffer.usage(), "shutting down: delivering buffered batches");
    tracker.close();
    let deadline = tokio::time::sleep(config.shutdown_timeout);
    tokio::pin!(deadline);
    while !buffer.is_empty() {
        tokio::select! {
            _ = &mut deadline => break,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    hard_stop.cancel();
    tracker.wait().await;
    let left = buffer.drain();
    if !left.is_empty() {
        events.dropped("shutdown", &left, "shutdown timeout reached before the collectors acknowledged these batches (use --spool-dir to keep them)");
    }
    outbox.account();
    let (spooled, _) = buffer.spool_usage();
    if spooled > 0 {
        tracing::info!(
            batches = spooled,
            "undelivered batches kept in the spool for the next start"
        );
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// Scrapes one local endpoint on its own interval until shutdown; failures are counted by
/// reason and logged (at most once per minute per target), and never stop the loop.
async fn scrape_loop(
    scraper: Scraper,
    outbox: Arc<Outbox>,
    events: Arc<Events>,
    shutdown: CancellationToken,
) {
    let interval = scraper.config().interval;
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + interval.mul_f64(fastrand::f64()),
        interval,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_log: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let timestamp = sonde_common::model::now_ms();
        match scraper.scrape().await {
            Ok(readings) => {
                let points: Vec<Point> = readings.into_iter().map(Point::from).collect();
                outbox.submit("scrape", &points, timestamp);
            }
            Err(e) => {
                events.scrape_errors.add(e.reason(), 1);
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(url = %scraper.config().url, reason = e.reason(), "cannot scrape {}: {e}", scraper.config().url);
                    last_log = Some(Instant::now());
                }
            }
        }
    }
}
