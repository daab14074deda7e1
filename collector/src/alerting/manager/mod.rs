//! The alert manager: takes alerts (from evaluation through [`AlertSink`], or posted to the
//! Alertmanager v2 API), keeps them per tenant, and notifies receivers — Alertmanager's model
//! and package split:
//!
//! - [`config`]: the Alertmanager-format file; [`matchers`]: label matchers;
//! - [`route`]: the route tree; [`dispatch`]: alert store, groups and their timers;
//! - [`silence`] and [`inhibit`]: muting; [`nflog`]: what each receiver already got;
//! - [`notify`]: payloads, the persisted outbox and delivery with retries;
//! - [`history`]: every state change and outcome; [`api`]: the HTTP API.
//!
//! Tasks: one dispatcher loop (flushes due groups, sleeps until the next is due or new
//! alerts arrive) and one sender per outbox notification; all stop on the shutdown token and
//! are tracked so [`Manager::stopped`] can await them. Locks: `core` (store, groups,
//! silences, nflog), then `outbox`, then `history`; never the other way round, and none is held
//! across an await. The outbox and notification log are written outside the `core` lock, in
//! that order (a crash between the two re-sends a notification rather than loses it).
//!
//! State in `dir`: `silences.json`, `nflog.json`, `outbox.json` (atomic snapshots) and
//! `history.jsonl` (append-only, compacted). Alerts themselves are not persisted: senders
//! re-send firing alerts every evaluation, as with Alertmanager.

pub mod api;
pub mod config;
pub mod dispatch;
pub mod history;
pub mod inhibit;
pub mod matchers;
pub mod metrics;
pub mod nflog;
pub mod notify;
pub mod persist;
pub mod route;
pub mod silence;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Alert, AlertSink, LabelMap, now_ms};
use config::AlertManagerConfig;
use dispatch::{Core, Effects};
use history::{History, HistoryEntry};
use metrics::Stats;
use nflog::NotificationLog;
use notify::{Attempt, HttpClient, Notification, Outbox};
use silence::Silences;

/// Longest the dispatcher sleeps without being woken (housekeeping: silence and nflog expiry).
const MAX_IDLE: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum ManagerError {
    #[error("cannot create the alert manager directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load alert manager state: {0}")]
    State(String),
}

/// What [`Manager::open`] needs.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Persistent state (silences, notification log, outbox, history).
    pub dir: PathBuf,
    /// `None`: keep and list alerts, notify nobody.
    pub config: Option<AlertManagerConfig>,
    /// This instance's URL as receivers should link to it (`externalURL` in payloads).
    pub external_url: String,
}

/// The alert manager; clones share one instance.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

struct Inner {
    core: Mutex<Core>,
    outbox: Outbox,
    history: Mutex<History>,
    stats: Arc<Stats>,
    client: HttpClient,
    wake: Notify,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An alert as the API shows it, with its current status.
#[derive(Debug, Clone)]
pub struct AlertView {
    pub alert: Alert,
    pub fingerprint: String,
    pub updated_ms: i64,
    pub timeout: bool,
    pub receivers: Vec<String>,
    pub silenced_by: Vec<String>,
    pub inhibited_by: Vec<String>,
}

/// A group as the API shows it.
#[derive(Debug, Clone)]
pub struct GroupView {
    pub labels: LabelMap,
    pub receiver: String,
    pub alerts: Vec<AlertView>,
}

impl Manager {
    /// Loads the state in `opts.dir` and starts the manager's tasks (inside a tokio runtime).
    /// Notifications left in the outbox by the previous run are sent again.
    pub fn open(opts: ManagerOptions, shutdown: CancellationToken) -> Result<Self, ManagerError> {
        std::fs::create_dir_all(&opts.dir).map_err(|source| ManagerError::Dir {
            path: opts.dir.clone(),
            source,
        })?;
        let silences =
            Silences::open(opts.dir.join("silences.json")).map_err(ManagerError::State)?;
        let nflog =
            NotificationLog::open(opts.dir.join("nflog.json")).map_err(ManagerError::State)?;
        let (outbox, pending) =
            Outbox::open(opts.dir.join("outbox.json")).map_err(ManagerError::State)?;
        let history = History::open(opts.dir.join("history.jsonl"), history::MAX_PER_TENANT)
            .map_err(ManagerError::State)?;
        let stats = Arc::new(Stats::default());
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(notify::ATTEMPT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let config = Arc::new(opts.config.unwrap_or_else(AlertManagerConfig::empty));
        let inner = Arc::new(Inner {
            core: Mutex::new(Core {
                config,
                tenants: BTreeMap::new(),
                silences,
                nflog,
                stats: Arc::clone(&stats),
                external_url: opts.external_url,
            }),
            outbox,
            history: Mutex::new(history),
            stats,
            client,
            wake: Notify::new(),
            shutdown,
            tracker: TaskTracker::new(),
            started: Instant::now(),
        });
        let m = Manager { inner };
        if !pending.is_empty() {
            tracing::info!(
                "alert manager: re-sending {} notifications from the outbox",
                pending.len()
            );
        }
        for n in pending {
            m.spawn_sender(n);
        }
        let d = m.clone();
        m.inner
            .tracker
            .spawn(async move { d.dispatch_loop().await });
        Ok(m)
    }

    /// Swaps the configuration (groups are rebuilt; receivers are not re-notified of what
    /// they already have). `None`: notify nobody.
    pub fn reload(&self, config: Option<AlertManagerConfig>) {
        let config = Arc::new(config.unwrap_or_else(AlertManagerConfig::empty));
        lock(&self.inner.core).reconfigure(config, now_ms());
        self.inner.wake.notify_one();
    }

    /// Waits for every task to end (after the shutdown token was cancelled) and makes the
    /// state durable.
    pub async fn stopped(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        lock(&self.inner.core).nflog.save();
        lock(&self.inner.history).sync();
    }

    pub fn render_metrics(&self, enc: &mut sonde_common::telemetry::TextEncoder) {
        let now = now_ms();
        let (alerts_firing, silences_active) = {
            let core = lock(&self.inner.core);
            let firing = core
                .tenants
                .values()
                .flat_map(|t| t.alerts.values())
                .filter(|e| e.alert.is_firing(now))
                .count();
            (firing, core.silences.active_count(now))
        };
        let gauges = metrics::Gauges {
            alerts_firing,
            silences_active,
            outbox: self.inner.outbox.len(),
            history: lock(&self.inner.history).len(),
        };
        metrics::render(enc, &self.inner.stats, &gauges);
    }

    /// Alerts of `tenant` with `is_firing`, and with `posted_without_end` (resolve by
    /// timeout), as the API receives them.
    pub(crate) fn ingest(&self, tenant: &str, alerts: Vec<(Alert, bool)>) {
        let mut fx = Effects::default();
        lock(&self.inner.core).ingest(tenant, alerts, now_ms(), &mut fx);
        self.record(fx.history);
        self.inner.wake.notify_one();
    }

    fn record(&self, entries: Vec<HistoryEntry>) {
        if entries.is_empty() {
            return;
        }
        let mut h = lock(&self.inner.history);
        for e in entries {
            h.record(e);
        }
    }

    async fn dispatch_loop(self) {
        loop {
            let now = now_ms();
            let mut fx = Effects::default();
            let (next, nflog_snapshot) = {
                let mut core = lock(&self.inner.core);
                let next = core.flush(now, &mut fx);
                (next, core.nflog.take_snapshot())
            };
            // Outbox first, then the log: a crash in between re-sends rather than loses. Both
            // are written outside the core lock, so senders of alerts never wait on an fsync.
            let superseded = self.inner.outbox.put(&fx.notifications);
            if let Some((path, bytes)) = nflog_snapshot {
                nflog::write_snapshot(&path, &bytes);
            }
            for old in superseded {
                fx.history.push(notify::history_entry(
                    &old,
                    "superseded",
                    "a newer notification for the same group replaced it".into(),
                    now,
                ));
            }
            let notifications = std::mem::take(&mut fx.notifications);
            self.record(fx.history);
            for n in notifications {
                self.spawn_sender(n);
            }
            let wait = next
                .map(|t| Duration::from_millis(u64::try_from(t - now).unwrap_or(0)))
                .unwrap_or(MAX_IDLE)
                .clamp(Duration::from_millis(1), MAX_IDLE);
            tokio::select! {
                biased;
                _ = self.inner.shutdown.cancelled() => break,
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn spawn_sender(&self, n: Notification) {
        let m = self.clone();
        self.inner.tracker.spawn(async move { m.deliver(n).await });
    }

    /// Sends `n` until it is delivered, refused, superseded, or the manager shuts down (it
    /// then stays in the outbox for the next run).
    async fn deliver(self, n: Notification) {
        let inner = &self.inner;
        let mut backoff = notify::backoff();
        loop {
            if !inner.outbox.is_current(&n) || inner.shutdown.is_cancelled() {
                return;
            }
            let outcome = tokio::select! {
                biased;
                _ = inner.shutdown.cancelled() => return,
                a = notify::attempt(&inner.client, &n) => a,
            };
            match outcome {
                Attempt::Delivered => {
                    inner.outbox.remove(&n);
                    inner.stats.sent.add(&n.receiver, 1);
                    let detail = format!("idempotency key {}", n.idempotency_key);
                    self.record(vec![notify::history_entry(&n, "sent", detail, now_ms())]);
                    return;
                }
                Attempt::Refused { cause } => {
                    inner.outbox.remove(&n);
                    inner.stats.failed.add(&n.receiver, 1);
                    tracing::warn!(
                        receiver = n.receiver,
                        "notification refused by {}, not retried: {cause}",
                        n.url
                    );
                    self.record(vec![notify::history_entry(&n, "failed", cause, now_ms())]);
                    return;
                }
                Attempt::Retry { cause, retry_after } => {
                    inner.stats.retried.add(&n.receiver, 1);
                    let delay = backoff.next_delay(retry_after);
                    tracing::debug!(
                        receiver = n.receiver,
                        "cannot notify {}: {cause}; retrying in {delay:?}",
                        n.url
                    );
                    self.record(vec![notify::history_entry(&n, "retried", cause, now_ms())]);
                    tokio::select! {
                        biased;
                        _ = inner.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    // ---- reads and changes for the API ----

    pub(crate) fn config(&self) -> Arc<AlertManagerConfig> {
        Arc::clone(&lock(&self.inner.core).config)
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    fn view(
        core: &Core,
        tenant: &str,
        sources: &[(u64, LabelMap)],
        e: &dispatch::AlertEntry,
        now: i64,
    ) -> AlertView {
        let (silenced_by, inhibited_by) = core.mute_reason(tenant, sources, e, now);
        AlertView {
            alert: e.alert.clone(),
            fingerprint: persist::fp_hex(e.fp),
            updated_ms: e.updated_ms,
            timeout: e.timeout,
            receivers: route::matching(&core.config.route, &e.alert.labels)
                .iter()
                .map(|r| r.receiver.clone())
                .collect(),
            silenced_by,
            inhibited_by,
        }
    }

    /// The firing alerts of `tenant`, by labels.
    pub fn alerts(&self, tenant: &str) -> Vec<AlertView> {
        let now = now_ms();
        let core = lock(&self.inner.core);
        let Some(t) = core.tenants.get(tenant) else {
            return Vec::new();
        };
        let sources = core.inhibition_sources(t, now);
        let mut out: Vec<AlertView> = t
            .alerts
            .values()
            .filter(|e| e.alert.is_firing(now))
            .map(|e| Self::view(&core, tenant, &sources, e, now))
            .collect();
        out.sort_by(|a, b| a.alert.labels.cmp(&b.alert.labels));
        out
    }

    /// The groups of `tenant` with their firing alerts.
    pub fn groups(&self, tenant: &str) -> Vec<GroupView> {
        let now = now_ms();
        let core = lock(&self.inner.core);
        let Some(t) = core.tenants.get(tenant) else {
            return Vec::new();
        };
        let sources = core.inhibition_sources(t, now);
        t.groups
            .values()
            .map(|g| GroupView {
                labels: g.labels.clone(),
                receiver: g.receiver.clone(),
                alerts: g
                    .alerts
                    .iter()
                    .filter_map(|fp| t.alerts.get(fp))
                    .filter(|e| e.alert.is_firing(now))
                    .map(|e| Self::view(&core, tenant, &sources, e, now))
                    .collect(),
            })
            .filter(|g| !g.alerts.is_empty())
            .collect()
    }

    pub fn silences(&self, tenant: &str) -> Vec<silence::Silence> {
        lock(&self.inner.core)
            .silences
            .list(tenant)
            .into_iter()
            .cloned()
            .collect()
    }

    pub fn silence(&self, tenant: &str, id: &str) -> Option<silence::Silence> {
        lock(&self.inner.core).silences.get(tenant, id).cloned()
    }

    pub fn upsert_silence(
        &self,
        tenant: &str,
        req: silence::SilenceRequest,
    ) -> Result<String, silence::SilenceError> {
        lock(&self.inner.core)
            .silences
            .upsert(tenant, req, now_ms())
    }

    pub fn expire_silence(&self, tenant: &str, id: &str) -> Result<(), silence::SilenceError> {
        lock(&self.inner.core).silences.expire(tenant, id, now_ms())
    }

    /// History of `tenant`, newest first.
    pub fn history(
        &self,
        tenant: &str,
        fingerprint: Option<&str>,
        alertname: Option<&str>,
        limit: usize,
    ) -> Vec<HistoryEntry> {
        lock(&self.inner.history).query(tenant, fingerprint, alertname, limit)
    }

    /// Notifications waiting for delivery.
    pub fn outbox_len(&self) -> usize {
        self.inner.outbox.len()
    }
}

impl AlertSink for Manager {
    fn send(&self, tenant: &str, alerts: Vec<Alert>) {
        self.ingest(tenant, alerts.into_iter().map(|a| (a, false)).collect());
    }
}

#[cfg(test)]
mod tests;
