//! The alerting loop as one service inside the collector: the rule cache and its watcher, the
//! evaluator, the fast path and the alert manager, started together from
//! [`crate::config::AlertingConfig`], reloaded together (SIGHUP, `POST /-/reload`), and stopped
//! in order: evaluation first (its last state saved), then the manager (its outbox and logs
//! flushed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use thiserror::Error;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use sonde_common::telemetry::{Counter, Gauge, TextEncoder};

use super::evaluate::{Embedded, Evaluator, EvaluatorOptions, Http, QuerySource, RecordSink};
use super::fastpath::FastPath;
use super::manager::config::AlertManagerConfig;
use super::manager::{Manager, ManagerError, ManagerOptions};
use super::rules::{RuleFileError, RuleStore};
use crate::config::{AlertingConfig, QueryConfig};
use crate::query::eval::QueryLimits;
use crate::store::Store;

/// How often the rules directory and the alert manager file are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("{0}")]
    Rules(#[from] RuleFileError),
    #[error("{0}")]
    AlertConfig(#[from] super::manager::config::ConfigError),
    #[error("cannot open the alert manager: {0}")]
    Manager(#[from] ManagerError),
    #[error("--query-url: {0}")]
    QueryUrl(String),
    #[error("loading the rules failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

#[derive(Default)]
struct ConfigReloads {
    success: Counter,
    failure: Counter,
    last_successful: Gauge,
}

/// The running alerting loop.
pub struct Service {
    pub rules: Option<RuleStore>,
    pub evaluator: Option<Evaluator>,
    pub fastpath: Option<Arc<FastPath>>,
    pub manager: Manager,
    alert_config: Option<PathBuf>,
    config_reloads: Arc<ConfigReloads>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    stop_evaluation: CancellationToken,
    stop_manager: CancellationToken,
}

/// A file's identity for change detection: modification time and length.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Service {
    /// Starts the loop when `cfg` asks for any of it (`--rules-dir` or `--alert-config`);
    /// `None` otherwise. A broken rule file or alert manager file refuses the start.
    pub async fn start(
        cfg: &AlertingConfig,
        query: &QueryConfig,
        data_dir: &Path,
        store: &Store,
        records: Arc<dyn RecordSink>,
    ) -> Result<Option<Service>, ServiceError> {
        if cfg.rules_dir.is_none() && cfg.alert_config.is_none() {
            return Ok(None);
        }
        let dir = data_dir.join("alerting");
        let config = match &cfg.alert_config {
            Some(path) => Some(super::manager::config::load(path)?),
            None => None,
        };
        let stop_manager = CancellationToken::new();
        let manager = {
            let opts = ManagerOptions {
                dir: dir.join("manager"),
                config,
                external_url: cfg.external_url.clone(),
            };
            Manager::open(opts, stop_manager.clone())?
        };
        let stop_evaluation = CancellationToken::new();
        let mut watchers = Vec::new();
        let (mut rules, mut evaluator, mut fastpath) = (None, None, None);
        if let Some(rules_dir) = &cfg.rules_dir {
            let store_rules = {
                let d = rules_dir.clone();
                tokio::task::spawn_blocking(move || RuleStore::load(&d))
                    .await
                    .map_err(ServiceError::Task)??
            };
            let source: Arc<dyn QuerySource> = match &cfg.query_url {
                Some(url) => Arc::new(
                    Http::new(url, cfg.query_token.clone(), query.timeout)
                        .map_err(ServiceError::QueryUrl)?,
                ),
                None => {
                    let mut e = Embedded::new(store.clone());
                    e.lookback = query.lookback;
                    e.limits = QueryLimits {
                        max_series: query.max_series,
                        max_samples: query.max_samples,
                        timeout: query.timeout,
                    };
                    Arc::new(e)
                }
            };
            let mut opts = EvaluatorOptions::new(dir.join("rules"));
            opts.default_interval = cfg.evaluation_interval;
            opts.evaluation_delay = cfg.evaluation_delay;
            opts.external_url = cfg.external_url.clone();
            let ev = Evaluator::new(
                store_rules.clone(),
                source,
                Arc::new(manager.clone()),
                records,
                opts,
            );
            fastpath = Some(Arc::new(FastPath::new(&ev)));
            watchers.push(ev.start(stop_evaluation.clone()));
            watchers.push(store_rules.watch(WATCH_INTERVAL, stop_evaluation.clone()));
            let set = store_rules.current();
            tracing::info!(
                dir = %rules_dir.display(),
                groups = set.groups.len(),
                rules = set.rule_count(),
                query = %cfg.query_url.as_ref().map_or("embedded store".to_owned(), |u| u.to_string()),
                "rules loaded"
            );
            rules = Some(store_rules);
            evaluator = Some(ev);
        }
        let config_reloads = Arc::new(ConfigReloads::default());
        config_reloads.last_successful.set(1.0);
        if let Some(path) = &cfg.alert_config {
            watchers.push(tokio::spawn(watch_alert_config(
                path.clone(),
                manager.clone(),
                Arc::clone(&config_reloads),
                stop_evaluation.clone(),
            )));
        }
        Ok(Some(Service {
            rules,
            evaluator,
            fastpath,
            manager,
            alert_config: cfg.alert_config.clone(),
            config_reloads,
            tasks: std::sync::Mutex::new(watchers),
            stop_evaluation,
            stop_manager,
        }))
    }

    /// Re-reads the rule files and the alert manager file (SIGHUP, `POST /-/reload`). What is
    /// broken is refused with the reason; what ran before keeps running.
    pub async fn reload(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        if let Some(rules) = &self.rules
            && let Err(e) = rules.reload_async().await
        {
            errors.push(e.to_string());
        }
        if let Some(path) = &self.alert_config
            && let Err(e) = reload_alert_config(path, &self.manager, &self.config_reloads).await
        {
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    pub fn render_metrics(&self, e: &mut TextEncoder) {
        if let Some(ev) = &self.evaluator {
            ev.render_metrics(e);
        }
        self.manager.render_metrics(e);
        e.gauge(
            "sonde_collector_alert_config_last_reload_successful",
            "Whether the last reload of the alert manager configuration succeeded (1) or was refused (0).",
            self.config_reloads.last_successful.get(),
        );
        e.family(
            "sonde_collector_alert_config_reloads_total",
            "Reloads of the alert manager configuration, by result.",
            "counter",
        );
        e.labeled_sample(
            "sonde_collector_alert_config_reloads_total",
            &[("result", "success")],
            self.config_reloads.success.get() as f64,
        );
        e.labeled_sample(
            "sonde_collector_alert_config_reloads_total",
            &[("result", "failure")],
            self.config_reloads.failure.get() as f64,
        );
    }

    /// Stops evaluation (saving its state), then the manager (flushing its files).
    pub async fn stop(&self) {
        self.stop_evaluation.cancel();
        let tasks = match self.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => Vec::new(),
        };
        for t in tasks {
            let _ = t.await;
        }
        self.stop_manager.cancel();
        self.manager.stopped().await;
    }
}

async fn reload_alert_config(
    path: &Path,
    manager: &Manager,
    reloads: &ConfigReloads,
) -> Result<(), String> {
    let p = path.to_path_buf();
    let loaded: Result<AlertManagerConfig, String> = tokio::task::spawn_blocking(move || {
        super::manager::config::load(&p).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
    match loaded {
        Ok(cfg) => {
            manager.reload(Some(cfg));
            reloads.success.inc();
            reloads.last_successful.set(1.0);
            tracing::info!(file = %path.display(), "alert manager configuration reloaded");
            Ok(())
        }
        Err(e) => {
            reloads.failure.inc();
            reloads.last_successful.set(0.0);
            tracing::error!(file = %path.display(), error = %e, "alert manager configuration refused; the previous one keeps running");
            Err(e)
        }
    }
}

/// Reloads the alert manager file when it changes.
async fn watch_alert_config(
    path: PathBuf,
    manager: Manager,
    reloads: Arc<ConfigReloads>,
    stop: CancellationToken,
) {
    let mut last = stamp(&path);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            _ = stop.cancelled() => return,
        }
        let now = stamp(&path);
        if now != last {
            last = now;
            let _ = reload_alert_config(&path, &manager, &reloads).await;
        }
    }
}
