//! The scrape service as the collector runs it: one task per job, started with the collector,
//! reloaded when the config file changes, stopped with the collector's shutdown.
//!
//! Reload keeps unchanged jobs running untouched; a changed job is restarted without stale
//! markers (its targets come straight back), a removed job ends with them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use serde_json::{Value, json};
use sonde_common::telemetry::TextEncoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::{ScrapeConfigFile, ScrapeJob};
use super::events::Stats;
use super::fetch;
use super::job::{self, JobContext, JobView};
use super::pool::Membership;
use super::target_loop::{Health, LoopShared};
use super::{LabelMap, ScrapeSink};

/// What the scrape service is started with.
#[derive(Debug, Clone)]
pub struct ScrapeManagerOptions {
    pub config: ScrapeConfigFile,
    /// The collector's `--etcd` endpoints: the default of `etcd_sd_configs`.
    pub default_etcd: Vec<hyper::Uri>,
    /// The tenant scraped samples are stored under ("" is the default tenant).
    pub tenant: String,
    /// Members that scrape each target (>= 1).
    pub replicas: usize,
}

struct JobEntry {
    config: Arc<ScrapeJob>,
    cancel: CancellationToken,
    quiet: Arc<AtomicBool>,
    view: Arc<Mutex<JobView>>,
}

struct Inner {
    ctx: Arc<JobContext>,
    jobs: Mutex<BTreeMap<String, JobEntry>>,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
}

/// Scrapes the targets of a `scrape_configs` file that this pool member owns.
#[derive(Clone)]
pub struct ScrapeManager {
    inner: Arc<Inner>,
}

impl ScrapeManager {
    /// Starts every job; runs until `shutdown`.
    pub fn start(
        settings: ScrapeManagerOptions,
        membership: Arc<dyn Membership>,
        sink: Arc<dyn ScrapeSink>,
        shutdown: CancellationToken,
    ) -> ScrapeManager {
        let stats = Arc::new(Stats::default());
        let shared = Arc::new(LoopShared {
            client: fetch::client(),
            sink,
            tenant: settings.tenant.clone(),
            user_agent: format!(
                "sonde-collector/{} (+{})",
                env!("CARGO_PKG_VERSION"),
                membership.me()
            ),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
        });
        let ctx = Arc::new(JobContext {
            shared,
            membership,
            replicas: settings.replicas.max(1),
            tracker: TaskTracker::new(),
            default_etcd: settings.default_etcd.clone(),
        });
        let manager = ScrapeManager {
            inner: Arc::new(Inner {
                ctx,
                jobs: Mutex::new(BTreeMap::new()),
                shutdown,
                stats,
            }),
        };
        manager.apply(settings.config);
        manager
    }

    /// Applies a new config: starts new jobs, restarts changed ones, ends removed ones.
    pub fn reload(&self, config: ScrapeConfigFile) {
        self.inner.stats.reloads.inc();
        self.apply(config);
    }

    fn apply(&self, config: ScrapeConfigFile) {
        if self.inner.shutdown.is_cancelled() {
            return;
        }
        let Ok(mut jobs) = self.inner.jobs.lock() else {
            return;
        };
        let mut wanted: BTreeMap<String, ScrapeJob> = config
            .jobs
            .into_iter()
            .map(|j| (j.job_name.clone(), j))
            .collect();
        jobs.retain(|name, entry| match wanted.get(name) {
            Some(new) if *new == *entry.config => {
                wanted.remove(name);
                true
            }
            Some(_) => {
                entry.quiet.store(true, Ordering::Release);
                entry.cancel.cancel();
                false
            }
            None => {
                entry.cancel.cancel();
                false
            }
        });
        for (name, config) in wanted {
            let config = Arc::new(config);
            let cancel = self.inner.shutdown.child_token();
            let quiet = Arc::new(AtomicBool::new(false));
            let view = Arc::new(Mutex::new(JobView::default()));
            self.inner.ctx.tracker.spawn(job::run(
                config.clone(),
                self.inner.ctx.clone(),
                view.clone(),
                cancel.clone(),
                quiet.clone(),
            ));
            jobs.insert(
                name,
                JobEntry {
                    config,
                    cancel,
                    quiet,
                    view,
                },
            );
        }
    }

    /// The `data` of Prometheus's `/api/v1/targets`, plus each active target's `owner`.
    pub fn targets_json(&self) -> Value {
        let mut active = Vec::new();
        let mut dropped = Vec::new();
        let mut dropped_counts = serde_json::Map::new();
        let Ok(jobs) = self.inner.jobs.lock() else {
            return json!({"activeTargets": [], "droppedTargets": []});
        };
        for (name, entry) in jobs.iter() {
            let Ok(view) = entry.view.lock() else {
                continue;
            };
            for t in &view.active {
                let status = t
                    .status
                    .as_ref()
                    .and_then(|s| s.lock().ok().map(|s| s.clone()))
                    .unwrap_or_default();
                let last_scrape = status
                    .last_scrape
                    .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
                    .map_or_else(
                        || "0001-01-01T00:00:00Z".to_owned(),
                        |d| sonde_common::time::format_rfc3339_ms(d.as_millis() as i64),
                    );
                let health = if t.status.is_some() {
                    status.health
                } else {
                    Health::Unknown
                };
                active.push(json!({
                    "discoveredLabels": labels_json(&t.target.discovered),
                    "labels": labels_json(&t.target.labels),
                    "scrapePool": name,
                    "scrapeUrl": t.target.url,
                    "globalUrl": t.target.url,
                    "lastError": status.last_error,
                    "lastScrape": last_scrape,
                    "lastScrapeDuration": status.last_duration,
                    "health": health.as_str(),
                    "scrapeInterval": duration_text(t.target.interval),
                    "scrapeTimeout": duration_text(t.target.timeout),
                    "owner": t.owner,
                }));
            }
            for d in &view.dropped {
                dropped.push(json!({"discoveredLabels": labels_json(&d.discovered)}));
            }
            dropped_counts.insert(name.clone(), json!(view.dropped.len()));
        }
        json!({
            "activeTargets": active,
            "droppedTargets": dropped,
            "droppedTargetCounts": dropped_counts,
        })
    }

    /// The self-metrics, prefix `sonde_collector_scrape`.
    pub fn render_metrics(&self, e: &mut TextEncoder) {
        let (mut known, mut dropped) = (0, 0);
        if let Ok(jobs) = self.inner.jobs.lock() {
            for entry in jobs.values() {
                if let Ok(v) = entry.view.lock() {
                    known += v.active.len();
                    dropped += v.dropped.len();
                }
            }
        }
        self.inner.stats.render(e, known, dropped);
    }

    /// Returns once shutdown has been asked for and every job and target loop has ended.
    pub async fn stopped(&self) {
        self.inner.shutdown.cancelled().await;
        self.inner.ctx.tracker.close();
        self.inner.ctx.tracker.wait().await;
    }
}

fn labels_json(labels: &LabelMap) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

fn duration_text(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms > 0 && ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
