//! Rule evaluation: every (tenant, group) on its own task, at aligned instants, against a
//! [`QuerySource`]; alerting rules drive Prometheus's state machine and hand alerts to an
//! [`AlertSink`], recording rules write their results back through a [`RecordSink`].
//!
//! - **Timing**: a group evaluates at multiples of its interval plus a stable per-group offset
//!   (a hash of tenant, file and group name), so restarts and several instances evaluate at the
//!   same instants. The query runs at that instant minus the evaluation delay and the group's
//!   `query_offset`; recorded samples carry the query time.
//! - **States** as in Prometheus: a new result series makes a pending alert (`activeAt`), which
//!   fires once it has been active for `for`; a firing alert missing from the result keeps
//!   firing for `keep_firing_for`, then resolves; a pending one is dropped. Resolved alerts are
//!   kept 15 minutes, then forgotten. Alert labels are the series labels without `__name__`,
//!   plus the rule's (templated) labels, plus `alertname`.
//! - **Sending**: firing alerts are sent on every evaluation with `ends_at = now + 4 *
//!   max(interval, resend delay)`; a resolved alert is sent once with `ends_at` = resolve time.
//!   `starts_at` is when the alert fired.
//! - **Failures**: a failed query is retried (capped backoff) within half the interval; then the
//!   rule's `query_error` outcome applies, as `no_data` does for an empty result (see
//!   [`crate::alerting::rules`]). An alert the fast path raised from a sample newer than the
//!   query time is not resolved by that query.
//! - **Persistence**: alert state is saved per group after each evaluation that changed it and
//!   restored at start, so a restart keeps pending time and firing alerts keep their
//!   `starts_at`.
//! - **Reload**: a changed group restarts; rules whose kind, name, expression and labels did
//!   not change keep their alerts.

mod api;
pub mod source;
pub mod state;
#[cfg(test)]
pub(crate) mod tests;

pub use api::RulesFilter;
pub use source::{Embedded, Http, QueryElem, QueryError, QuerySource};
pub use state::{ActiveAlert, AlertState};

use sonde_common::model::{MetricKind, Sample, Series};
use sonde_common::retry::Backoff;
use sonde_common::telemetry::TextEncoder;
use sonde_common::wire::{Batch, BatchBuilder, BatchHeader};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::rules::{Group, GroupKey, Outcome, Rule, RuleKind, RuleSet, RuleStore};
use super::{Alert, AlertSink, LabelMap, now_ms};
use state::GroupAlerts;

/// Where recording rules write their results: the server routes them like any ingested batch.
pub trait RecordSink: Send + Sync {
    fn record<'a>(
        &'a self,
        tenant: &'a str,
        batch: Batch,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// How the evaluator runs.
#[derive(Debug, Clone)]
pub struct EvaluatorOptions {
    /// For groups without an `interval`.
    pub default_interval: Duration,
    /// Queries run this much before the evaluation instant (late data).
    pub evaluation_delay: Duration,
    /// Prefix of alerts' generator URLs (`<external_url>/graph?g0.expr=...`).
    pub external_url: String,
    /// Where alert state is persisted.
    pub state_dir: PathBuf,
    /// Prometheus's `--rules.alert.resend-delay` (1m): part of `ends_at`.
    pub resend_delay: Duration,
    /// How long resolved alerts are kept (15m).
    pub resolved_retention: Duration,
    /// Query attempts per rule and evaluation (3).
    pub query_attempts: u32,
    /// First retry delay (500ms); doubles, capped at a quarter of the interval.
    pub retry_initial: Duration,
}

impl EvaluatorOptions {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            default_interval: Duration::from_secs(60),
            evaluation_delay: Duration::ZERO,
            external_url: String::new(),
            state_dir: state_dir.into(),
            resend_delay: Duration::from_secs(60),
            resolved_retention: Duration::from_secs(15 * 60),
            query_attempts: 3,
            retry_initial: Duration::from_millis(500),
        }
    }
}

/// A rule's health, as `/api/v1/rules` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Ok,
    Err,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Ok => "ok",
            Health::Err => "err",
        }
    }
}

/// One rule's live state.
pub(crate) struct RuleState {
    pub(crate) rule: Arc<Rule>,
    pub(crate) alerts: BTreeMap<LabelMap, ActiveAlert>,
    pub(crate) health: Health,
    pub(crate) last_error: String,
    /// Wall-clock time of the last evaluation (ms), 0 never.
    pub(crate) last_eval_ms: i64,
    pub(crate) eval_seconds: f64,
    pub(crate) failures: u64,
}

impl RuleState {
    fn new(rule: Arc<Rule>, alerts: BTreeMap<LabelMap, ActiveAlert>) -> Self {
        Self {
            rule,
            alerts,
            health: Health::Unknown,
            last_error: String::new(),
            last_eval_ms: 0,
            eval_seconds: 0.0,
            failures: 0,
        }
    }
}

/// One group's live state.
pub(crate) struct GroupState {
    pub(crate) group: Arc<Group>,
    pub(crate) interval: Duration,
    pub(crate) rules: Vec<RuleState>,
    pub(crate) last_eval_ms: i64,
    pub(crate) last_duration: f64,
    pub(crate) iterations: u64,
    pub(crate) missed: u64,
    /// Changed since last saved (the fast path sets it too).
    pub(crate) dirty: bool,
}

struct Inner {
    rules: RuleStore,
    source: Arc<dyn QuerySource>,
    alerts: Arc<dyn AlertSink>,
    records: Arc<dyn RecordSink>,
    opts: EvaluatorOptions,
    groups: Mutex<BTreeMap<GroupKey, GroupState>>,
    /// Saved state not yet claimed by a group (restored at start).
    restored: Mutex<HashMap<GroupKey, GroupAlerts>>,
    /// Bumped on every change of the group set (the fast path recompiles).
    generation: AtomicU64,
    query_retries: AtomicU64,
}

/// The rule evaluator. Cheap to clone.
#[derive(Clone)]
pub struct Evaluator {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The first instant `>= from` of the form `k * interval + offset`.
pub fn next_aligned(from_ms: i64, interval_ms: i64, offset_ms: i64) -> i64 {
    let interval_ms = interval_ms.max(1);
    let base = from_ms - offset_ms;
    let k = base.div_euclid(interval_ms) + i64::from(base.rem_euclid(interval_ms) != 0);
    k * interval_ms + offset_ms
}

/// A group's stable offset within its interval.
pub fn group_offset_ms(key: &GroupKey, interval: Duration) -> i64 {
    let i = u64::try_from(ms(interval).max(1)).unwrap_or(1);
    i64::try_from(state::stable_hash(&[&key.tenant, &key.file, &key.name]) % i).unwrap_or(0)
}

/// The labels of the alert `rule` raises for a result element (`series`: its labels,
/// `__name__` included when present): the series labels without `__name__`, the rule's
/// labels expanded, `alertname`. The fast path uses the same function, so both agree.
pub fn alert_labels(rule: &Rule, series: &LabelMap, value: f64) -> LabelMap {
    let mut out = series.clone();
    out.remove("__name__");
    for (n, t) in &rule.label_templates {
        let v = t.render(series, value);
        if v.is_empty() {
            out.remove(n);
        } else {
            out.insert(n.clone(), v);
        }
    }
    out.insert("alertname".into(), rule.name.clone());
    out
}

/// The annotations of an alert, expanded.
pub fn alert_annotations(rule: &Rule, series: &LabelMap, value: f64) -> LabelMap {
    match &rule.kind {
        RuleKind::Alerting { annotations, .. } => annotations
            .iter()
            .map(|(n, t)| (n.clone(), t.render(series, value)))
            .collect(),
        RuleKind::Recording => LabelMap::new(),
    }
}

/// What one evaluation of an alerting rule hands to the sink, and whether state changed.
struct Applied {
    send: Vec<Alert>,
    changed: bool,
}

impl Evaluator {
    /// Builds the evaluator and restores alert state from `opts.state_dir`. Nothing runs until
    /// [`Evaluator::start`].
    pub fn new(
        rules: RuleStore,
        source: Arc<dyn QuerySource>,
        alerts: Arc<dyn AlertSink>,
        records: Arc<dyn RecordSink>,
        opts: EvaluatorOptions,
    ) -> Evaluator {
        let restored = state::load_all(&opts.state_dir);
        let ev = Evaluator {
            inner: Arc::new(Inner {
                rules,
                source,
                alerts,
                records,
                opts,
                groups: Mutex::new(BTreeMap::new()),
                restored: Mutex::new(restored),
                generation: AtomicU64::new(0),
                query_retries: AtomicU64::new(0),
            }),
        };
        let set = ev.inner.rules.current();
        ev.sync(&set);
        ev
    }

    pub fn rules(&self) -> &RuleStore {
        &self.inner.rules
    }

    pub fn options(&self) -> &EvaluatorOptions {
        &self.inner.opts
    }

    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    pub(crate) fn groups(&self) -> MutexGuard<'_, BTreeMap<GroupKey, GroupState>> {
        lock(&self.inner.groups)
    }

    pub(crate) fn sink(&self) -> &Arc<dyn AlertSink> {
        &self.inner.alerts
    }

    fn interval_of(&self, g: &Group) -> Duration {
        g.interval.unwrap_or(self.inner.opts.default_interval)
    }

    /// Brings the state table in line with `set`: new groups get state (restored from disk
    /// when saved), changed groups keep the alerts of unchanged rules, removed groups go.
    /// Returns the keys of groups that are new or changed.
    fn sync(&self, set: &RuleSet) -> Vec<GroupKey> {
        let mut groups = self.groups();
        let mut restored = lock(&self.inner.restored);
        let mut touched = Vec::new();
        let wanted: HashSet<GroupKey> = set.groups.iter().map(|g| g.key()).collect();
        let gone: Vec<GroupKey> = groups
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            groups.remove(&k);
            state::remove(&self.inner.opts.state_dir, &k);
        }
        for g in &set.groups {
            let key = g.key();
            if let Some(cur) = groups.get(&key)
                && *cur.group == **g
            {
                continue;
            }
            let mut old: GroupAlerts = match groups.remove(&key) {
                Some(cur) => cur
                    .rules
                    .into_iter()
                    .map(|r| (r.rule.state_key(), r.alerts))
                    .collect(),
                None => restored.remove(&key).unwrap_or_default(),
            };
            let rules = g
                .rules
                .iter()
                .map(|r| {
                    let alerts = old.remove(&r.state_key()).unwrap_or_default();
                    RuleState::new(r.clone(), alerts)
                })
                .collect();
            groups.insert(
                key.clone(),
                GroupState {
                    group: g.clone(),
                    interval: self.interval_of(g),
                    rules,
                    last_eval_ms: 0,
                    last_duration: 0.0,
                    iterations: 0,
                    missed: 0,
                    dirty: true,
                },
            );
            touched.push(key);
        }
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        touched
    }

    /// Runs every group on its own task and follows rule reloads, until `cancel`; then stops
    /// the group tasks and saves unsaved state. Await the handle to know it is done.
    pub fn start(&self, cancel: CancellationToken) -> JoinHandle<()> {
        let ev = self.clone();
        tokio::spawn(async move { ev.supervise(cancel).await })
    }

    async fn supervise(self, cancel: CancellationToken) {
        let mut rx = self.inner.rules.subscribe();
        let mut tasks: HashMap<GroupKey, (CancellationToken, JoinHandle<()>)> = HashMap::new();
        let mut set = rx.borrow_and_update().clone();
        let mut first = true;
        loop {
            let touched: HashSet<GroupKey> = self.sync(&set).into_iter().collect();
            let wanted: HashSet<GroupKey> = set.groups.iter().map(|g| g.key()).collect();
            let stop: Vec<GroupKey> = tasks
                .keys()
                .filter(|k| !wanted.contains(*k) || touched.contains(*k))
                .cloned()
                .collect();
            for k in stop {
                if let Some((c, h)) = tasks.remove(&k) {
                    c.cancel();
                    let _ = h.await;
                }
            }
            for k in wanted {
                if first || !tasks.contains_key(&k) {
                    let c = cancel.child_token();
                    let ev = self.clone();
                    let key = k.clone();
                    let cc = c.clone();
                    tasks.insert(
                        k,
                        (c, tokio::spawn(async move { ev.run_group(key, cc).await })),
                    );
                }
            }
            first = false;
            tokio::select! {
                () = cancel.cancelled() => break,
                r = rx.changed() => {
                    if r.is_err() {
                        cancel.cancelled().await;
                        break;
                    }
                    set = rx.borrow_and_update().clone();
                }
            }
        }
        for (_, (c, h)) in tasks {
            c.cancel();
            let _ = h.await;
        }
        self.flush().await;
    }

    /// Saves the state of every group changed since its last save (the fast path's changes
    /// between evaluations). [`Evaluator::start`]'s task does this when it stops.
    pub async fn flush(&self) {
        let dirty: Vec<(GroupKey, GroupAlerts)> = self
            .groups()
            .iter_mut()
            .filter(|(_, g)| g.dirty)
            .map(|(k, g)| {
                g.dirty = false;
                let alerts = g
                    .rules
                    .iter()
                    .map(|r| (r.rule.state_key(), r.alerts.clone()))
                    .collect();
                (k.clone(), alerts)
            })
            .collect();
        if dirty.is_empty() {
            return;
        }
        let dir = self.inner.opts.state_dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (k, alerts) in dirty {
                if let Err(e) = state::save(&dir, &k, &alerts) {
                    tracing::warn!(group = %k.name, error = %e, "cannot save alert state");
                }
            }
        })
        .await;
    }

    async fn run_group(self, key: GroupKey, cancel: CancellationToken) {
        let Some(interval) = self.groups().get(&key).map(|g| g.interval) else {
            return;
        };
        let interval_ms = ms(interval).max(1);
        let offset = group_offset_ms(&key, interval);
        let mut next = next_aligned(now_ms(), interval_ms, offset);
        loop {
            let wait = u64::try_from(next - now_ms()).unwrap_or(0);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
            if let Err(e) = self.evaluate_group(&key, next).await {
                tracing::debug!(group = %key.name, error = %e, "group not evaluated");
                return;
            }
            let after = next_aligned(now_ms(), interval_ms, offset);
            let following = next + interval_ms;
            if after > following {
                let missed = u64::try_from((after - following) / interval_ms).unwrap_or(0);
                if let Some(g) = self.groups().get_mut(&key) {
                    g.missed += missed;
                }
                tracing::warn!(group = %key.name, missed, "rule group evaluation took longer than its interval");
            }
            next = after.max(following);
        }
    }

    async fn query_with_retries(
        &self,
        tenant: &str,
        expr: &str,
        t_ms: i64,
        budget: Duration,
    ) -> Result<Vec<QueryElem>, QueryError> {
        let started = Instant::now();
        let mut backoff = Backoff::new(self.inner.opts.retry_initial, budget / 2);
        let mut attempt = 1;
        loop {
            match self.inner.source.query(tenant, expr, t_ms).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() && attempt < self.inner.opts.query_attempts => {
                    let delay = backoff.next_delay(None);
                    if started.elapsed() + delay > budget {
                        return Err(e);
                    }
                    self.inner.query_retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Evaluates group `key` as at instant `t_ms` (the aligned evaluation time): queries each
    /// rule, updates alert states, sends alerts and recorded series, saves changed state.
    /// The group tasks call this; tests drive it with explicit times.
    pub async fn evaluate_group(&self, key: &GroupKey, t_ms: i64) -> Result<(), String> {
        let started = Instant::now();
        let (group, interval) = {
            let groups = self.groups();
            let g = groups
                .get(key)
                .ok_or_else(|| format!("no group {:?} in {}", key.name, key.file))?;
            (g.group.clone(), g.interval)
        };
        let opts = &self.inner.opts;
        let q_ms = t_ms - ms(opts.evaluation_delay) - ms(group.query_offset);
        let budget = interval / 2;
        let mut to_send: Vec<Alert> = Vec::new();
        let mut changed = false;
        for (idx, rule) in group.rules.iter().enumerate() {
            let rule_started = Instant::now();
            let res = self
                .query_with_retries(&group.tenant, &rule.expr, q_ms, budget)
                .await;
            let mut record_err = None;
            if let (RuleKind::Recording, Ok(elems)) = (&rule.kind, &res)
                && !elems.is_empty()
            {
                match recorded_batch(rule, elems, q_ms) {
                    Ok(batch) => {
                        if let Err(e) = self.inner.records.record(&group.tenant, batch).await {
                            record_err = Some(format!("writing recorded series: {e}"));
                        }
                    }
                    Err(e) => record_err = Some(e),
                }
            }
            let mut groups = self.groups();
            let Some(gs) = groups.get_mut(key) else {
                return Err("group removed during evaluation".into());
            };
            if !Arc::ptr_eq(&gs.group, &group) {
                return Err("group changed during evaluation".into());
            }
            let rs = &mut gs.rules[idx];
            rs.last_eval_ms = now_ms();
            let err = match (&res, record_err) {
                (Err(e), _) => Some(e.to_string()),
                (_, Some(e)) => Some(e),
                _ => None,
            };
            if rule.is_alerting() {
                let applied = self.apply_alerting(rs, res, t_ms, q_ms, group.limit, interval);
                changed |= applied.changed;
                to_send.extend(applied.send);
            } else if let Some(e) = err {
                rs.health = Health::Err;
                rs.last_error = e;
                rs.failures += 1;
            } else {
                rs.health = Health::Ok;
                rs.last_error.clear();
            }
            rs.eval_seconds = rule_started.elapsed().as_secs_f64();
            if rs.health == Health::Err {
                tracing::debug!(rule = %rule.name, error = %rs.last_error, "rule evaluation failed");
            }
        }
        let save = {
            let mut groups = self.groups();
            match groups.get_mut(key) {
                Some(gs) if Arc::ptr_eq(&gs.group, &group) => {
                    gs.last_eval_ms = now_ms();
                    gs.last_duration = started.elapsed().as_secs_f64();
                    gs.iterations += 1;
                    let dirty = gs.dirty || changed;
                    gs.dirty = false;
                    dirty.then(|| {
                        gs.rules
                            .iter()
                            .map(|r| (r.rule.state_key(), r.alerts.clone()))
                            .collect::<GroupAlerts>()
                    })
                }
                _ => None,
            }
        };
        if !to_send.is_empty() {
            self.inner.alerts.send(&group.tenant, to_send);
        }
        if let Some(alerts) = save {
            let dir = opts.state_dir.clone();
            let k = key.clone();
            let res = tokio::task::spawn_blocking(move || state::save(&dir, &k, &alerts)).await;
            if let Ok(Err(e)) | Err(e) = res.map_err(std::io::Error::other) {
                tracing::warn!(group = %key.name, error = %e, "cannot save alert state");
            }
        }
        Ok(())
    }

    fn generator_url(&self, expr: &str) -> String {
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("g0.expr", expr)
            .append_pair("g0.tab", "1")
            .finish();
        format!(
            "{}/graph?{q}",
            self.inner.opts.external_url.trim_end_matches('/')
        )
    }

    /// The alert as the sink sees it at `t_ms`.
    pub(crate) fn to_alert(
        &self,
        rule: &Rule,
        a: &ActiveAlert,
        t_ms: i64,
        interval: Duration,
    ) -> Alert {
        let delta = ms(interval.max(self.inner.opts.resend_delay));
        Alert {
            labels: a.labels.clone(),
            annotations: a.annotations.clone(),
            starts_at_ms: a.fired_at.unwrap_or(a.active_at),
            ends_at_ms: match (a.state, a.resolved_at) {
                (AlertState::Inactive, Some(r)) => r,
                _ => t_ms.saturating_add(delta.saturating_mul(4)),
            },
            generator_url: self.generator_url(&rule.expr),
        }
    }

    /// Prometheus's `AlertingRule.Eval` plus the no-data and query-error outcomes.
    fn apply_alerting(
        &self,
        rs: &mut RuleState,
        res: Result<Vec<QueryElem>, QueryError>,
        t_ms: i64,
        q_ms: i64,
        limit: usize,
        interval: Duration,
    ) -> Applied {
        let rule = rs.rule.clone();
        let RuleKind::Alerting {
            for_,
            keep_firing_for,
            no_data,
            query_error,
            ..
        } = &rule.kind
        else {
            return Applied {
                send: Vec::new(),
                changed: false,
            };
        };
        let fire_elem = || {
            vec![QueryElem {
                labels: LabelMap::new(),
                value: f64::NAN,
            }]
        };
        // The result to apply (None: keep states), and the error to report.
        let (elems, err) = match res {
            Ok(v) if v.is_empty() => match no_data {
                Outcome::Keep => (None, None),
                Outcome::Resolve => (Some(Vec::new()), None),
                Outcome::Fire => (Some(fire_elem()), None),
            },
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e.to_string())),
        };
        // Labels and annotations per element; duplicates are an error.
        let mut computed: Option<Vec<(LabelMap, LabelMap, f64)>> = None;
        let mut err = err;
        if let Some(elems) = &elems {
            let mut seen = HashSet::with_capacity(elems.len());
            let mut v = Vec::with_capacity(elems.len());
            for e in elems {
                let labels = alert_labels(&rule, &e.labels, e.value);
                if !seen.insert(labels.clone()) {
                    err = Some(
                        "vector contains metrics with the same labelset after applying alert labels"
                            .into(),
                    );
                    break;
                }
                let ann = alert_annotations(&rule, &e.labels, e.value);
                v.push((labels, ann, e.value));
            }
            if err.is_none() {
                computed = Some(v);
            }
        }
        if err.is_some() {
            computed = match query_error {
                Outcome::Keep => None,
                Outcome::Resolve => Some(Vec::new()),
                Outcome::Fire => Some(vec![(
                    alert_labels(&rule, &LabelMap::new(), f64::NAN),
                    alert_annotations(&rule, &LabelMap::new(), f64::NAN),
                    f64::NAN,
                )]),
            };
        }
        let mut changed = false;
        if let Some(computed) = computed {
            let for_ms = ms(*for_);
            let kff_ms = ms(*keep_firing_for);
            let mut seen = HashSet::with_capacity(computed.len());
            for (labels, ann, value) in computed {
                seen.insert(labels.clone());
                match rs.alerts.get_mut(&labels) {
                    Some(a) if a.state != AlertState::Inactive => {
                        a.set_value(value);
                        a.annotations = ann;
                    }
                    _ => {
                        let mut a = ActiveAlert {
                            labels: labels.clone(),
                            annotations: ann,
                            state: AlertState::Pending,
                            active_at: t_ms,
                            fired_at: None,
                            resolved_at: None,
                            keep_firing_since: None,
                            last_sent_at: None,
                            fast_path_at: None,
                            value: None,
                        };
                        a.set_value(value);
                        rs.alerts.insert(labels, a);
                        changed = true;
                    }
                }
            }
            let retention = ms(self.inner.opts.resolved_retention);
            let mut drop = Vec::new();
            for (labels, a) in rs.alerts.iter_mut() {
                // Raised by the fast path from data the query did not see yet.
                let newer =
                    a.fast_path_at.is_some_and(|f| f > q_ms) && a.state != AlertState::Inactive;
                if !seen.contains(labels) && !newer {
                    let mut keep_firing = false;
                    if kff_ms > 0 && a.state == AlertState::Firing {
                        let since = *a.keep_firing_since.get_or_insert(t_ms);
                        keep_firing = t_ms - since < kff_ms;
                        changed = true;
                    }
                    if !keep_firing {
                        if a.state == AlertState::Pending
                            || a.resolved_at.is_some_and(|r| t_ms - r > retention)
                        {
                            drop.push(labels.clone());
                            changed = true;
                            continue;
                        }
                        if a.state != AlertState::Inactive {
                            a.state = AlertState::Inactive;
                            a.resolved_at = Some(t_ms);
                            changed = true;
                        }
                        continue;
                    }
                } else if a.keep_firing_since.take().is_some() {
                    changed = true;
                }
                if a.state == AlertState::Pending && t_ms - a.active_at >= for_ms {
                    a.state = AlertState::Firing;
                    a.fired_at = Some(t_ms);
                    changed = true;
                }
            }
            for l in drop {
                rs.alerts.remove(&l);
            }
            if limit > 0 {
                let active = rs
                    .alerts
                    .values()
                    .filter(|a| a.state != AlertState::Inactive)
                    .count();
                if active > limit {
                    rs.alerts.clear();
                    err = Some(format!("exceeded limit of {limit} with {active} alerts"));
                    changed = true;
                }
            }
        }
        match err {
            Some(e) => {
                rs.health = Health::Err;
                rs.last_error = e;
                rs.failures += 1;
            }
            None => {
                rs.health = Health::Ok;
                rs.last_error.clear();
            }
        }
        let mut send = Vec::new();
        for a in rs.alerts.values_mut() {
            let due = match a.state {
                AlertState::Pending => false,
                AlertState::Firing => true,
                AlertState::Inactive => a
                    .resolved_at
                    .is_some_and(|r| a.last_sent_at.is_none_or(|s| s < r)),
            };
            if due {
                a.last_sent_at = Some(t_ms);
                send.push(self.to_alert(&rule, a, t_ms, interval));
            }
        }
        Applied { send, changed }
    }

    /// Self-metrics of the loop (and of the rule store's reloads).
    pub fn render_metrics(&self, enc: &mut TextEncoder) {
        self.inner.rules.render_metrics(enc);
        let groups = self.groups();
        let fams: [(&str, &str, &str); 5] = [
            (
                "sonde_collector_rule_group_last_duration_seconds",
                "How long the last evaluation of the group took.",
                "gauge",
            ),
            (
                "sonde_collector_rule_group_iterations_total",
                "Evaluations of the group.",
                "counter",
            ),
            (
                "sonde_collector_rule_group_iterations_missed_total",
                "Evaluations skipped because the previous one ran too long.",
                "counter",
            ),
            (
                "sonde_collector_rule_group_interval_seconds",
                "The group's evaluation interval.",
                "gauge",
            ),
            (
                "sonde_collector_rule_group_last_evaluation_timestamp_seconds",
                "When the group was last evaluated (Unix seconds).",
                "gauge",
            ),
        ];
        for (i, (name, help, kind)) in fams.iter().enumerate() {
            enc.family(name, help, kind);
            for (k, g) in groups.iter() {
                let gl = format!("{};{}", k.file, k.name);
                let v = match i {
                    0 => g.last_duration,
                    1 => g.iterations as f64,
                    2 => g.missed as f64,
                    3 => g.interval.as_secs_f64(),
                    _ => g.last_eval_ms as f64 / 1000.0,
                };
                enc.labeled_sample(name, &[("tenant", &k.tenant), ("group", &gl)], v);
            }
        }
        enc.family(
            "sonde_collector_rule_evaluation_failures_total",
            "Rule evaluations that failed (after retries).",
            "counter",
        );
        for (k, g) in groups.iter() {
            let gl = format!("{};{}", k.file, k.name);
            for r in &g.rules {
                enc.labeled_sample(
                    "sonde_collector_rule_evaluation_failures_total",
                    &[
                        ("tenant", &k.tenant),
                        ("group", &gl),
                        ("rule", &r.rule.name),
                    ],
                    r.failures as f64,
                );
            }
        }
        enc.family(
            "sonde_collector_rule_group_alerts",
            "Alerts of the group's rules by state.",
            "gauge",
        );
        for (k, g) in groups.iter() {
            let gl = format!("{};{}", k.file, k.name);
            for st in [AlertState::Pending, AlertState::Firing] {
                let n = g
                    .rules
                    .iter()
                    .flat_map(|r| r.alerts.values())
                    .filter(|a| a.state == st)
                    .count();
                enc.labeled_sample(
                    "sonde_collector_rule_group_alerts",
                    &[
                        ("tenant", &k.tenant),
                        ("group", &gl),
                        ("state", st.as_str()),
                    ],
                    n as f64,
                );
            }
        }
        drop(groups);
        enc.counter_value(
            "sonde_collector_rule_query_retries_total",
            "Rule queries retried after a retryable failure.",
            self.inner.query_retries.load(Ordering::Relaxed),
        );
    }
}

/// The batch a recording rule writes: each element as a gauge named after the rule, with the
/// rule's labels, at `t_ms`.
fn recorded_batch(rule: &Rule, elems: &[QueryElem], t_ms: i64) -> Result<Batch, String> {
    let mut b = BatchBuilder::new(BatchHeader {
        agent_id: "sonde-rules".into(),
        sequence: 0,
        sent_at_ms: now_ms(),
    });
    let mut seen = HashSet::with_capacity(elems.len());
    for e in elems {
        let mut labels = e.labels.clone();
        labels.remove("__name__");
        for (n, v) in &rule.labels {
            if v.is_empty() {
                labels.remove(n);
            } else {
                labels.insert(n.clone(), v.clone());
            }
        }
        if !seen.insert(labels.clone()) {
            return Err(
                "vector contains metrics with the same labelset after applying rule labels".into(),
            );
        }
        let series = Series::new(rule.name.clone(), labels);
        b.push(
            &series,
            MetricKind::Gauge,
            None,
            vec![Sample::new(t_ms, e.value)],
        );
    }
    Ok(b.build())
}
