//! The Prometheus remote-write sink: forwards validated batches to any remote-write 1.0
//! receiver (VictoriaMetrics, Mimir, Cortex, Thanos Receive, Prometheus itself).
//!
//! # Path
//! [`RemoteWriteSink::enqueue`] encodes the batch for sending ([`convert::prepare`], with the
//! series' labels encoded once per shape of a sender's batches when the route passes them:
//! [`SeriesLabels`]) and keeps what its queue record is made of (native wire format, zstd,
//! with its tenant: [`record`]; a native push's envelope is made into one only if the batch
//! goes to the queue). While the storage keeps up, the [`direct`] path forwards it before answering:
//! batches arriving within `direct.wait` of each other share a request, and the push returns
//! once the storage acknowledged it; the disk queue is not touched. When the storage fails or
//! is slow, batches go to the sink's own [`DiskQueue`] until it has drained, and `enqueue`
//! returns once the batch is durable there. Either is what the collector's 200 means. The
//! queue's sending side ([`RemoteWriteSink::start`], [`send`]) reads records in order and
//! POSTs them. Requests carry `Content-Encoding: snappy`, `Content-Type:
//! application/x-protobuf`, `X-Prometheus-Remote-Write-Version: 0.1.0` and, for a batch with a
//! tenant, `X-Scope-OrgID`.
//!
//! # Ordering, sharding and acknowledgement
//! The direct path and the queue take turns (see [`direct`] for the hand-overs), so a series'
//! samples reach the storage in order across them. The queue's sender takes a *unit*: consecutive records of one tenant, up to
//! `max_samples_per_send x shards` samples (at least one record), waiting up to
//! `flush_interval` after the unit's first record for more (unless draining), so that agents'
//! small batches leave in few large requests: most of a request's cost is per request. Each
//! series goes to the shard a hash of its identity picks; each shard sends its part as requests of at most
//! `max_samples_per_send` samples, one after another, while the shards run in parallel. The
//! unit's records are acked in the queue only when every shard is done (acknowledged, or
//! refused for good), and the next unit starts only then. So a series' samples reach the
//! storage in queue order, and a record is never acked before all of it is delivered: after a
//! crash or a drain deadline, what was not acked is sent again (at least once; samples are
//! idempotent, so a storage keeps one copy).
//!
//! # Retries
//! The shared rule ([`sonde_common::retry`]): 5xx, 429 and network errors or timeouts are
//! retried by the shard, with capped exponential backoff and full jitter, never sooner than a
//! `Retry-After` (capped at `max_backoff`), until they succeed or the sender is stopped; the
//! rest of the unit waits, and the queue absorbs the backlog (the collector answers 429/503
//! once it is full). Other 4xx mean the storage will never take those samples: they are
//! dropped, counted (`samples_dropped{reason="rejected"}`) and logged with the storage's reason
//! (rate-limited), and the shard moves on.
//!
//! # Shutdown
//! When the token passed to `start` is cancelled the sender drains: it keeps sending (and
//! retrying) until the queue has nothing more or `drain_timeout` has passed; then the request
//! in flight is abandoned, and what is left stays in the queue for the next start. Finally the
//! queue is closed (its reader position persisted).
//!
//! # Not done here
//! Metadata (`MetricMetadata`), exemplars, native histograms, remote write 2.0 and created
//! timestamps (counters' start times are not sent), HTTPS and authentication to the storage,
//! and per-sink labels on the self-metrics.

mod convert;
mod direct;
mod record;
mod send;
mod stats;

pub use convert::SeriesLabels;
pub use direct::DirectConfig;
pub use stats::SinkStats;

use direct::{Direct, Item, RecordSource, Submitted};

use bytes::Bytes;
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sonde_common::wire::Batch;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::queue::{DiskQueue, OpenReport, QueueConfig, QueueError, QueueStats};

type HttpClient = Client<HttpConnector, http_body_util::Full<bytes::Bytes>>;

/// One remote-write destination.
#[derive(Clone, Debug)]
pub struct RemoteWriteConfig {
    /// The receiver's URL, e.g. `http://127.0.0.1:8428/api/v1/write` (http only).
    pub url: Uri,
    /// The sink's queue (its own directory).
    pub queue: QueueConfig,
    /// Parallel senders; each series always uses the same one (default 4).
    pub shards: usize,
    /// Most samples in one request (default 5000).
    pub max_samples_per_send: usize,
    /// How long the sender waits for more records to fill its requests after the first one
    /// it takes (default 1 s, vmagent's `-remoteWrite.flushInterval`): the most a sample
    /// waits in the queue when the storage keeps up. Draining does not wait.
    pub flush_interval: Duration,
    /// Per attempt: connect, send, and the whole answer (default 30 s).
    pub timeout: Duration,
    /// Backoff between attempts: first ceiling and cap (default 100 ms and 10 s).
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How long `start`'s task keeps sending after shutdown (default 10 s).
    pub drain_timeout: Duration,
    /// Forward batches before answering their pushes while the storage keeps up, and queue
    /// them only when it does not ([`direct`]; the default). `None` queues every batch.
    pub direct: Option<DirectConfig>,
}

impl RemoteWriteConfig {
    pub fn new(url: Uri, queue_dir: impl Into<PathBuf>) -> Self {
        Self {
            url,
            queue: QueueConfig::new(queue_dir),
            shards: 4,
            max_samples_per_send: 5000,
            flush_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            direct: Some(DirectConfig::default()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("remote-write URL {url} is not usable: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error("tenant {tenant:?} is not a valid tenant ID: {reason}")]
    BadTenant {
        tenant: String,
        reason: &'static str,
    },
    #[error("cannot encode batch for the remote-write queue: {0}")]
    Encode(#[from] sonde_common::wire::EncodeError),
    #[error("remote-write queue: {0}")]
    Queue(#[from] QueueError),
}

impl SinkError {
    /// The queue is full: answer 429/503 with Retry-After; the sender keeps its batch.
    pub fn is_full(&self) -> bool {
        matches!(self, SinkError::Queue(e) if e.is_full())
    }
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainOutcome {
    /// The queue had nothing more to send.
    pub emptied: bool,
    /// Records left in the queue (for the next start).
    pub records_left: u64,
}

/// The sink. Cheap to clone: the route keeps one to enqueue, `start` consumes another.
#[derive(Clone, Debug)]
pub struct RemoteWriteSink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: RemoteWriteConfig,
    queue: DiskQueue,
    direct: Option<Direct>,
    stats: SinkStats,
    client: HttpClient,
    user_agent: String,
}

impl RemoteWriteSink {
    /// Checks the configuration and opens the queue (blocking: call before serving, or from
    /// `spawn_blocking`). Records left by an earlier run are sent once started.
    pub fn open(cfg: RemoteWriteConfig) -> Result<(RemoteWriteSink, OpenReport), SinkError> {
        let bad = |reason| SinkError::BadUrl {
            url: cfg.url.to_string(),
            reason,
        };
        match cfg.url.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(bad("https is not supported yet")),
            _ => return Err(bad("it must be an http:// URL")),
        }
        if cfg.url.host().is_none() {
            return Err(bad("it has no host"));
        }
        let cfg = RemoteWriteConfig {
            shards: cfg.shards.max(1),
            max_samples_per_send: cfg.max_samples_per_send.max(1),
            ..cfg
        };
        let (queue, report) = DiskQueue::open(cfg.queue.clone())?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(cfg.shards * 2)
            .build(connector);
        let sink = RemoteWriteSink {
            inner: Arc::new(Inner {
                direct: cfg.direct.map(Direct::new),
                cfg,
                queue,
                stats: SinkStats::default(),
                client,
                user_agent: format!("sonde-collector/{}", env!("CARGO_PKG_VERSION")),
            }),
        };
        Ok((sink, report))
    }

    /// Takes a validated batch for sending, for `tenant` (sent as `X-Scope-OrgID`). Returns
    /// once the storage has it (the direct path) or it is durable in the queue;
    /// [`SinkError::is_full`] says to answer 429/503.
    pub async fn enqueue(&self, batch: &Batch, tenant: Option<&str>) -> Result<(), SinkError> {
        self.enqueue_with(batch, None, tenant).await
    }

    /// [`RemoteWriteSink::enqueue`] with the batch's envelope as received (`envelope` must
    /// decode to `batch`), which is queued as is instead of being encoded again.
    pub async fn enqueue_with(
        &self,
        batch: &Batch,
        envelope: Option<&[u8]>,
        tenant: Option<&str>,
    ) -> Result<(), SinkError> {
        let envelope = envelope.map(Bytes::copy_from_slice);
        self.enqueue_prepared(batch, envelope.as_ref(), tenant, None)
            .await
    }

    /// [`RemoteWriteSink::enqueue_with`] with the batch's series already encoded (`labels`, of
    /// a batch with the same series in the same order).
    pub async fn enqueue_prepared(
        &self,
        batch: &Batch,
        envelope: Option<&Bytes>,
        tenant: Option<&str>,
        labels: Option<&SeriesLabels>,
    ) -> Result<(), SinkError> {
        let stats = &self.inner.stats;
        // The queue record: the envelope as received, made into a record only if the batch
        // goes to the queue; a batch that came in another form is encoded now, while it is at
        // hand.
        let source = match tenant
            .map_or(Ok(()), record::validate_tenant)
            .and_then(|()| {
                Ok(match envelope {
                    Some(e) => RecordSource::Envelope(e.clone()),
                    None => RecordSource::Record(record::encode(batch, tenant)?),
                })
            }) {
            Ok(s) => s,
            Err(e) => {
                stats.enqueue_refused.add("error", 1);
                return Err(e);
            }
        };
        // Prepared for sending now, while the batch is decoded: the direct path sends it, and
        // the queue's sender takes it along with the record when it comes straight from
        // memory, instead of decoding it again.
        let max = self.inner.cfg.max_samples_per_send;
        let prepared = Bytes::from(match labels {
            Some(labels) => convert::prepare_with(batch, max, labels),
            None => convert::prepare(batch, max),
        });
        let item = Item {
            tenant: tenant.map(Arc::from),
            source,
            prepared,
            samples: batch.sample_count(),
        };
        let Some(direct) = &self.inner.direct else {
            return self.push_to_queue(item).await;
        };
        match direct.submit(item).await {
            Submitted::Pending(verdict) => verdict
                .await
                .unwrap_or(Err(SinkError::Queue(QueueError::Closed))),
            Submitted::Queue(item) => {
                // Counted out however the push ends, even if this future is dropped.
                struct Done<'a>(&'a Direct, &'a Inner);
                impl Drop for Done<'_> {
                    fn drop(&mut self) {
                        self.0.queue_push_done(self.1);
                    }
                }
                let _done = Done(direct, &self.inner);
                self.push_to_queue(item).await
            }
        }
    }

    async fn push_to_queue(&self, item: Item) -> Result<(), SinkError> {
        let result = self
            .inner
            .queue
            .push_with(&[(item.record(), Some(item.prepared))])
            .await;
        self.inner.stats.queued(&result, 1, item.samples);
        result.map_err(SinkError::from)
    }

    /// Starts the sending side: it runs until `shutdown` is cancelled, then drains (see the
    /// module docs) and closes the queue. One sending side per sink.
    pub fn start(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let hard_stop = CancellationToken::new();
            let timer = tokio::spawn({
                let (shutdown, hard_stop) = (shutdown.clone(), hard_stop.clone());
                let drain_timeout = self.inner.cfg.drain_timeout;
                async move {
                    shutdown.cancelled().await;
                    tokio::time::sleep(drain_timeout).await;
                    hard_stop.cancel();
                }
            });
            // The queue's sender drains once the direct path has handed over to it.
            let handed_over = CancellationToken::new();
            let direct = tokio::spawn({
                let (inner, handed_over) = (self.inner.clone(), handed_over.clone());
                async move {
                    match &inner.direct {
                        Some(direct) => direct.run(&inner, &shutdown).await,
                        None => shutdown.cancelled().await,
                    }
                    handed_over.cancel();
                }
            });
            let outcome = send::pump(&self, Some(&handed_over), &hard_stop).await;
            timer.abort();
            if let Err(e) = direct.await {
                tracing::error!("the remote-write direct sender failed: {e}");
            }
            self.log_drain(outcome);
            let queue = self.inner.queue.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || queue.close()).await {
                tracing::error!("cannot close the remote-write queue: {e}");
            }
        })
    }

    /// Sends what the queue holds until it has nothing more or `deadline` passes, without
    /// waiting for new records; what is left stays queued. For a caller that runs the sending
    /// side itself instead of [`RemoteWriteSink::start`] (never both at once).
    pub async fn drain(&self, deadline: tokio::time::Instant) -> DrainOutcome {
        let hard_stop = CancellationToken::new();
        let timer = tokio::spawn({
            let hard_stop = hard_stop.clone();
            async move {
                tokio::time::sleep_until(deadline).await;
                hard_stop.cancel();
            }
        });
        let outcome = send::pump(self, None, &hard_stop).await;
        timer.abort();
        outcome
    }

    fn log_drain(&self, outcome: DrainOutcome) {
        let url = &self.inner.cfg.url;
        if outcome.records_left == 0 {
            tracing::info!(%url, "remote-write sink stopped with its queue empty");
        } else {
            tracing::warn!(
                %url,
                records = outcome.records_left,
                "remote-write sink stopped with batches still queued; they are sent after the next start"
            );
        }
    }

    pub fn stats(&self) -> &SinkStats {
        &self.inner.stats
    }

    pub fn queue_stats(&self) -> QueueStats {
        self.inner.queue.stats()
    }

    /// Pending bytes of the queue over its limit, from 0 to 1.
    pub fn queue_fill(&self) -> f64 {
        self.inner.queue.fill_ratio()
    }

    pub fn url(&self) -> &Uri {
        &self.inner.cfg.url
    }

    /// True while batches are forwarded before their pushes are answered (the direct path),
    /// false while they go through the disk queue.
    pub fn is_direct(&self) -> bool {
        self.inner.direct.as_ref().is_some_and(Direct::is_direct)
    }
}
