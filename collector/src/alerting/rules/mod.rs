//! Rule files: Prometheus's rule-file format, validated as `promtool check rules` does, and the
//! cached, hot-reloaded set of every tenant's groups ([`RuleStore`]).
//!
//! ```yaml
//! groups:
//!   - name: node
//!     interval: 30s          # optional; the evaluator's default otherwise
//!     limit: 100             # optional; more alerts (or series) than this fails the rule
//!     query_offset: 1m       # optional; queries this much further in the past
//!     rules:
//!       - alert: HighCPU
//!         expr: cpu_usage > 90
//!         for: 5m
//!         keep_firing_for: 2m
//!         labels: { severity: page }
//!         annotations: { summary: "{{ $labels.instance }} at {{ $value | humanize }}%" }
//!         no_data: resolve     # Sonde extension: resolve (default) | keep | fire
//!         query_error: keep    # Sonde extension: keep (default) | resolve | fire
//!       - record: job:cpu:avg
//!         expr: avg by (job) (cpu_usage)
//! ```
//!
//! **Outcomes** (Sonde extensions on alerting rules): what a rule does when its query returns
//! nothing (`no_data`) and when the query fails after its retries (`query_error`):
//! - `resolve`: as if the query returned nothing: pending alerts are dropped, firing ones
//!   resolve (after `keep_firing_for`). The default for `no_data`, which is what Prometheus does.
//! - `keep`: alert states stay as they are (firing alerts are still re-sent, pending ones do
//!   not advance). The default for `query_error`: an outage of the query path neither
//!   resolves nor raises alerts.
//! - `fire`: one alert with the rule's labels only (no series labels) goes pending and fires
//!   after `for`, like any other alert.
//!
//! **Tenancy**: files directly in the rules directory belong to the default tenant `""`; files
//! in `<rules-dir>/<tenant>/` belong to that tenant (one level only). Files ending in `.yml` or
//! `.yaml` are read; names starting with `.` are ignored.
//!
//! **Reload**: [`RuleStore::reload`] (SIGHUP) and the watcher ([`RuleStore::watch`], which polls
//! file names, sizes and modification times every second) re-read the directory. If any file
//! is broken, the whole previous rule set keeps running and the error (file, line, reason) is
//! logged and counted.

pub mod template;

use promql_parser::parser::value::ValueType;
use serde::Deserialize;
use serde_saphyr::Spanned;
use sonde_common::model::{is_valid_label_name, is_valid_metric_name};
use sonde_common::telemetry::{Gauge, LabeledCounter, TextEncoder};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use template::Template;

/// What went wrong in which file, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.render())]
pub struct RuleFileError {
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<u64>,
    pub reason: String,
}

impl RuleFileError {
    fn new(path: &Path, line: Option<u64>, reason: impl Into<String>) -> Self {
        Self {
            path: path.to_owned(),
            line: line.filter(|&l| l > 0),
            reason: reason.into(),
        }
    }

    fn render(&self) -> String {
        match self.line {
            Some(l) => format!("{}:{l}: {}", self.path.display(), self.reason),
            None => format!("{}: {}", self.path.display(), self.reason),
        }
    }
}

/// What an alerting rule does on no data or on a failed query (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Keep,
    Fire,
    Resolve,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    Alerting {
        for_: Duration,
        keep_firing_for: Duration,
        annotations: Vec<(String, Template)>,
        no_data: Outcome,
        query_error: Outcome,
    },
    Recording,
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The alert name or the recorded metric name.
    pub name: String,
    pub expr: String,
    /// Labels as written (templates unexpanded), sorted by name.
    pub labels: BTreeMap<String, String>,
    /// Parsed label templates, in label-name order (alerting rules only: recording rule
    /// labels are literal).
    pub label_templates: Vec<(String, Template)>,
    /// Annotations as written.
    pub annotations: BTreeMap<String, String>,
    pub kind: RuleKind,
}

impl Rule {
    pub fn is_alerting(&self) -> bool {
        matches!(self.kind, RuleKind::Alerting { .. })
    }

    /// Identity used to carry alert state over a reload: kind, name, expression and labels.
    pub fn state_key(&self) -> String {
        let mut k = format!(
            "{}\u{0}{}\u{0}{}",
            if self.is_alerting() {
                "alert"
            } else {
                "record"
            },
            self.name,
            self.expr
        );
        for (n, v) in &self.labels {
            k.push('\u{0}');
            k.push_str(n);
            k.push('=');
            k.push_str(v);
        }
        k
    }
}

/// One validated group, with the tenant and file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub tenant: String,
    pub file: String,
    pub name: String,
    /// `None`: the evaluator's default interval.
    pub interval: Option<Duration>,
    /// 0: no limit.
    pub limit: usize,
    pub query_offset: Duration,
    pub rules: Vec<Arc<Rule>>,
}

/// Identifies a group across reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub tenant: String,
    pub file: String,
    pub name: String,
}

impl Group {
    pub fn key(&self) -> GroupKey {
        GroupKey {
            tenant: self.tenant.clone(),
            file: self.file.clone(),
            name: self.name.clone(),
        }
    }
}

/// Every tenant's groups, sorted by tenant, file and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    pub groups: Vec<Arc<Group>>,
}

impl RuleSet {
    pub fn rule_count(&self) -> usize {
        self.groups.iter().map(|g| g.rules.len()).sum()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDef {
    #[serde(default)]
    groups: Vec<Spanned<GroupDef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupDef {
    name: String,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    query_offset: Option<String>,
    #[serde(default)]
    rules: Vec<Spanned<RuleDef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    #[serde(default)]
    alert: Option<String>,
    #[serde(default)]
    record: Option<String>,
    #[serde(default)]
    expr: Option<String>,
    #[serde(default, rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    no_data: Option<Outcome>,
    #[serde(default)]
    query_error: Option<Outcome>,
}

fn duration(what: &str, s: &str) -> Result<Duration, String> {
    promql_parser::util::parse_duration(s).map_err(|e| format!("invalid {what} {s:?}: {e}"))
}

/// Parses and validates one rule file's text; `path` names it in errors and in the groups.
pub fn parse_rules(path: &Path, tenant: &str, text: &str) -> Result<Vec<Group>, RuleFileError> {
    let file: FileDef = match serde_saphyr::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let line = e.location().map(|l| l.line());
            // The plain message, without the rendered snippet.
            let msg = e.without_snippet().to_string();
            let msg = msg.lines().next().unwrap_or("invalid YAML").to_owned();
            return Err(RuleFileError::new(path, line, msg));
        }
    };
    let file_name = path.display().to_string();
    let mut names = HashSet::new();
    let mut groups = Vec::with_capacity(file.groups.len());
    for (gi, g) in file.groups.into_iter().enumerate() {
        let gline = Some(g.referenced.line());
        let g = g.value;
        let gerr = |reason: String| {
            RuleFileError::new(
                path,
                gline,
                format!("group {} ({:?}): {reason}", gi + 1, g.name),
            )
        };
        if g.name.is_empty() {
            return Err(gerr("group name must not be empty".into()));
        }
        if !names.insert(g.name.clone()) {
            return Err(gerr(format!(
                "groupname: {:?} is repeated in the same file",
                g.name
            )));
        }
        let interval = match &g.interval {
            Some(s) => {
                let d = duration("interval", s).map_err(&gerr)?;
                if d.is_zero() {
                    return Err(gerr("interval must be greater than zero".into()));
                }
                Some(d)
            }
            None => None,
        };
        let query_offset = match &g.query_offset {
            Some(s) => duration("query_offset", s).map_err(&gerr)?,
            None => Duration::ZERO,
        };
        let limit = usize::try_from(g.limit.unwrap_or(0)).unwrap_or(usize::MAX);
        let mut rules = Vec::with_capacity(g.rules.len());
        for (ri, r) in g.rules.into_iter().enumerate() {
            let rline = Some(r.referenced.line());
            let r = r.value;
            let label = r
                .alert
                .clone()
                .or_else(|| r.record.clone())
                .unwrap_or_default();
            let rerr = |reason: String| {
                RuleFileError::new(
                    path,
                    rline,
                    format!("group {:?}, rule {} ({label:?}): {reason}", g.name, ri + 1),
                )
            };
            rules.push(Arc::new(validate_rule(r).map_err(rerr)?));
        }
        groups.push(Group {
            tenant: tenant.to_owned(),
            file: file_name.clone(),
            name: g.name,
            interval,
            limit,
            query_offset,
            rules,
        });
    }
    Ok(groups)
}

fn validate_rule(r: RuleDef) -> Result<Rule, String> {
    let (name, alerting) = match (r.alert, r.record) {
        (Some(_), Some(_)) => return Err("only one of 'record' and 'alert' must be set".into()),
        (None, None) => return Err("one of 'record' or 'alert' must be set".into()),
        (Some(a), None) => (a, true),
        (None, Some(rec)) => (rec, false),
    };
    if name.is_empty() {
        return Err("the rule name must not be empty".into());
    }
    let expr = r.expr.unwrap_or_default();
    if expr.trim().is_empty() {
        return Err("field 'expr' must be set in rule".into());
    }
    let parsed = promql_parser::parser::parse(&expr)
        .map_err(|e| format!("could not parse expression: {e}"))?;
    if !alerting && !is_valid_metric_name(&name) {
        return Err(format!("invalid recording rule name: {name}"));
    }
    let vt = parsed.value_type();
    if alerting && !matches!(vt, ValueType::Vector) {
        return Err(format!(
            "an alerting rule's expression must return an instant vector, not a {vt}"
        ));
    }
    if !alerting && !matches!(vt, ValueType::Vector | ValueType::Scalar) {
        return Err(format!(
            "a recording rule's expression must return a vector or a scalar, not a {vt}"
        ));
    }
    let labels = r.labels.unwrap_or_default();
    let mut label_templates = Vec::with_capacity(labels.len());
    for (n, v) in &labels {
        if !is_valid_label_name(n) || n == "__name__" {
            return Err(format!("invalid label name: {n}"));
        }
        if !alerting && n == "alertname" {
            return Err(format!("invalid label name: {n}"));
        }
        // Recording rule labels are literal, as in Prometheus.
        if alerting {
            let t = Template::parse(v).map_err(|e| format!("label {n:?}: bad template: {e}"))?;
            label_templates.push((n.clone(), t));
        }
    }
    let annotations = r.annotations.unwrap_or_default();
    let kind = if alerting {
        let mut ann = Vec::with_capacity(annotations.len());
        for (n, v) in &annotations {
            if !is_valid_label_name(n) {
                return Err(format!("invalid annotation name: {n}"));
            }
            let t =
                Template::parse(v).map_err(|e| format!("annotation {n:?}: bad template: {e}"))?;
            ann.push((n.clone(), t));
        }
        RuleKind::Alerting {
            for_: r
                .for_
                .as_deref()
                .map(|s| duration("'for'", s))
                .transpose()?
                .unwrap_or_default(),
            keep_firing_for: r
                .keep_firing_for
                .as_deref()
                .map(|s| duration("'keep_firing_for'", s))
                .transpose()?
                .unwrap_or_default(),
            annotations: ann,
            no_data: r.no_data.unwrap_or(Outcome::Resolve),
            query_error: r.query_error.unwrap_or(Outcome::Keep),
        }
    } else {
        for (field, set) in [
            ("for", r.for_.is_some()),
            ("keep_firing_for", r.keep_firing_for.is_some()),
            ("annotations", !annotations.is_empty()),
            ("no_data", r.no_data.is_some()),
            ("query_error", r.query_error.is_some()),
        ] {
            if set {
                return Err(format!("invalid field '{field}' in recording rule"));
            }
        }
        RuleKind::Recording
    };
    Ok(Rule {
        name,
        expr,
        labels,
        label_templates,
        annotations,
        kind,
    })
}

/// Reads and validates one file.
pub fn load_file(path: &Path, tenant: &str) -> Result<Vec<Group>, RuleFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RuleFileError::new(path, None, format!("cannot read: {e}")))?;
    parse_rules(path, tenant, &text)
}

/// Checks one rule file offline; a one-line summary ("2 groups, 5 rules") on success.
pub fn check_file(path: &Path) -> Result<String, RuleFileError> {
    let groups = load_file(path, "")?;
    let rules: usize = groups.iter().map(|g| g.rules.len()).sum();
    Ok(format!(
        "{} group{}, {} rule{}",
        groups.len(),
        if groups.len() == 1 { "" } else { "s" },
        rules,
        if rules == 1 { "" } else { "s" }
    ))
}

fn is_rule_file(p: &Path) -> bool {
    let hidden = p
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    !hidden && matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml"))
}

/// The rule files under `dir` with their tenants, sorted: `(tenant, path)`.
pub fn list_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, RuleFileError> {
    let read = |d: &Path| -> Result<Vec<PathBuf>, RuleFileError> {
        let mut v = Vec::new();
        for entry in std::fs::read_dir(d)
            .map_err(|e| RuleFileError::new(d, None, format!("cannot read directory: {e}")))?
        {
            let entry =
                entry.map_err(|e| RuleFileError::new(d, None, format!("cannot read: {e}")))?;
            v.push(entry.path());
        }
        v.sort();
        Ok(v)
    };
    let mut out = Vec::new();
    for p in read(dir)? {
        if p.is_dir() {
            let Some(tenant) = p.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if tenant.starts_with('.') {
                continue;
            }
            for f in read(&p)? {
                if f.is_file() && is_rule_file(&f) {
                    out.push((tenant.to_owned(), f));
                }
            }
        } else if is_rule_file(&p) {
            out.push((String::new(), p));
        }
    }
    Ok(out)
}

/// Loads every rule file under `dir`; the first broken file fails the whole load.
pub fn load_dir(dir: &Path) -> Result<RuleSet, RuleFileError> {
    let mut groups = Vec::new();
    for (tenant, path) in list_files(dir)? {
        groups.extend(load_file(&path, &tenant)?.into_iter().map(Arc::new));
    }
    groups.sort_by(|a, b| (&a.tenant, &a.file, &a.name).cmp(&(&b.tenant, &b.file, &b.name)));
    Ok(RuleSet { groups })
}

/// What the watcher compares: each file's path, size and modification time.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let Ok(files) = list_files(dir) else {
        return Vec::new();
    };
    files
        .into_iter()
        .map(|(_, p)| {
            let meta = std::fs::metadata(&p).ok();
            let size = meta.as_ref().map_or(0, |m| m.len());
            let mtime = meta.and_then(|m| m.modified().ok());
            (p, size, mtime)
        })
        .collect()
}

struct ReloadStats {
    reloads: LabeledCounter,
    last_ok: Gauge,
    last_success_ts: Gauge,
}

impl Default for ReloadStats {
    fn default() -> Self {
        let reloads = LabeledCounter::new("result");
        reloads.add("success", 0);
        reloads.add("failure", 0);
        Self {
            reloads,
            last_ok: Gauge::default(),
            last_success_ts: Gauge::default(),
        }
    }
}

struct StoreInner {
    dir: PathBuf,
    tx: watch::Sender<Arc<RuleSet>>,
    stats: ReloadStats,
    /// Serialises reloads (SIGHUP and the watcher).
    reloading: Mutex<Vec<(PathBuf, u64, Option<SystemTime>)>>,
}

/// The current rule set of every tenant, reloaded on demand and by the watcher. Cheap to clone.
#[derive(Clone)]
pub struct RuleStore {
    inner: Arc<StoreInner>,
}

impl fmt::Debug for RuleStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleStore")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl RuleStore {
    /// Loads every rule file under `dir`; any broken file is an error (nothing runs yet).
    pub fn load(dir: &Path) -> Result<RuleStore, RuleFileError> {
        let print = fingerprint(dir);
        let set = load_dir(dir)?;
        let stats = ReloadStats::default();
        stats.last_ok.set(1.0);
        stats.last_success_ts.set(unix_seconds());
        let (tx, _) = watch::channel(Arc::new(set));
        Ok(RuleStore {
            inner: Arc::new(StoreInner {
                dir: dir.to_owned(),
                tx,
                stats,
                reloading: Mutex::new(print),
            }),
        })
    }

    /// A store holding `set` and watching nothing (tests, embedding).
    pub fn from_set(set: RuleSet) -> RuleStore {
        let (tx, _) = watch::channel(Arc::new(set));
        RuleStore {
            inner: Arc::new(StoreInner {
                dir: PathBuf::new(),
                tx,
                stats: ReloadStats::default(),
                reloading: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The rule set now.
    pub fn current(&self) -> Arc<RuleSet> {
        self.inner.tx.borrow().clone()
    }

    /// Notified with each new rule set.
    pub fn subscribe(&self) -> watch::Receiver<Arc<RuleSet>> {
        self.inner.tx.subscribe()
    }

    /// Replaces the rule set (tests, or a caller that loaded rules elsewhere).
    pub fn replace(&self, set: RuleSet) {
        self.inner.tx.send_replace(Arc::new(set));
    }

    /// Re-reads the directory. On success the new set replaces the old one (subscribers are
    /// notified only when it differs); on failure the previous set keeps running and the error
    /// is logged and returned. Blocking file I/O: call from a blocking context or accept a
    /// short stall (rule directories are small).
    pub fn reload(&self) -> Result<(), RuleFileError> {
        let mut print = self
            .inner
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *print = fingerprint(&self.inner.dir);
        let stats = &self.inner.stats;
        match load_dir(&self.inner.dir) {
            Ok(set) => {
                stats.reloads.add("success", 1);
                stats.last_ok.set(1.0);
                stats.last_success_ts.set(unix_seconds());
                let groups = set.groups.len();
                let rules = set.rule_count();
                let changed = self.inner.tx.send_if_modified(|cur| {
                    if **cur == set {
                        false
                    } else {
                        *cur = Arc::new(set);
                        true
                    }
                });
                if changed {
                    tracing::info!(groups, rules, "rules reloaded");
                }
                Ok(())
            }
            Err(e) => {
                stats.reloads.add("failure", 1);
                stats.last_ok.set(0.0);
                tracing::error!(error = %e, "rule reload failed; the previous rules keep running");
                Err(e)
            }
        }
    }

    /// [`RuleStore::reload`] on the blocking pool (for SIGHUP handlers in async code).
    pub async fn reload_async(&self) -> Result<(), RuleFileError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || s.reload())
            .await
            .unwrap_or_else(|e| {
                Err(RuleFileError::new(
                    &self.inner.dir,
                    None,
                    format!("reload task failed: {e}"),
                ))
            })
    }

    /// Polls the directory every `period` (1 s in production) and reloads when a file was
    /// added, removed or changed. Runs until `cancel`.
    pub fn watch(
        &self,
        period: Duration,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let s = store.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let now = fingerprint(&s.inner.dir);
                    let same = *s
                        .inner
                        .reloading
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        == now;
                    if !same {
                        let _ = s.reload();
                    }
                })
                .await;
            }
        })
    }

    /// `sonde_collector_rules_*` reload metrics.
    pub fn render_metrics(&self, enc: &mut TextEncoder) {
        let s = &self.inner.stats;
        enc.gauge(
            "sonde_collector_rules_last_reload_successful",
            "Whether the last rule reload succeeded (1) or failed (0).",
            s.last_ok.get(),
        );
        enc.labeled_counter(
            "sonde_collector_rules_reloads_total",
            "Rule reloads by result.",
            &s.reloads,
        );
        enc.gauge(
            "sonde_collector_rules_last_reload_success_timestamp_seconds",
            "When the rules were last loaded successfully (Unix seconds).",
            s.last_success_ts.get(),
        );
    }
}

#[cfg(test)]
mod tests;
