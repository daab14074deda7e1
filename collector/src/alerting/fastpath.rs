//! The fast path: alerting rules that are a plain threshold on one selector
//! (`metric{l="v"} > 90`, any comparison, either side, no `bool`, functions, `offset` or `@`)
//! are checked against every accepted batch, so an alert fires within milliseconds of the
//! sample that crosses the threshold, new series included.
//!
//! The fast path shares the evaluator's alert table: a violating sample makes an inactive
//! alert pending (`activeAt` = sample time), a pending one fires once `activeAt + for` is
//! reached (at once for `for: 0`), and a newly firing alert goes to the sink immediately. It
//! never resolves: query evaluation stays the source of truth. Alert labels are computed by
//! the same function evaluation uses ([`crate::alerting::evaluate::alert_labels`]), so both
//! produce the same alert for a series.

use promql_parser::parser::{Expr, VectorSelector};
use sonde_common::wire::Batch;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use super::evaluate::{ActiveAlert, AlertState, Evaluator, alert_annotations, alert_labels};
use super::rules::{GroupKey, Rule, RuleKind};
use super::{Alert, LabelMap};
use crate::query::eval::{STALE_NAN_BITS, series_selector};
use crate::store::{MatchOp, Matcher};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Gt,
    Lt,
    Ge,
    Le,
    Eq,
    Ne,
}

impl Cmp {
    fn parse(op: &str) -> Option<Cmp> {
        Some(match op {
            ">" => Cmp::Gt,
            "<" => Cmp::Lt,
            ">=" => Cmp::Ge,
            "<=" => Cmp::Le,
            "==" => Cmp::Eq,
            "!=" => Cmp::Ne,
            _ => return None,
        })
    }

    /// `a op b` read as `b op' a`.
    fn flip(self) -> Cmp {
        match self {
            Cmp::Gt => Cmp::Lt,
            Cmp::Lt => Cmp::Gt,
            Cmp::Ge => Cmp::Le,
            Cmp::Le => Cmp::Ge,
            other => other,
        }
    }

    fn holds(self, v: f64, t: f64) -> bool {
        match self {
            Cmp::Gt => v > t,
            Cmp::Lt => v < t,
            Cmp::Ge => v >= t,
            Cmp::Le => v <= t,
            Cmp::Eq => v == t,
            Cmp::Ne => v != t,
        }
    }
}

/// A threshold rule, compiled.
struct FastRule {
    key: GroupKey,
    index: usize,
    rule: Arc<Rule>,
    /// The selector's matchers but the metric name (rules are indexed by it).
    matchers: Vec<Matcher>,
    cmp: Cmp,
    threshold: f64,
    for_ms: i64,
    selector: String,
}

#[derive(Default)]
struct Compiled {
    generation: u64,
    /// tenant -> metric name -> rules.
    by_tenant: HashMap<String, HashMap<String, Vec<Arc<FastRule>>>>,
}

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        other => other,
    }
}

fn number(e: &Expr) -> Option<f64> {
    match unparen(e) {
        Expr::NumberLiteral(n) => Some(n.val),
        Expr::Unary(u) => number(&u.expr).map(|v| -v),
        _ => None,
    }
}

fn selector(e: &Expr) -> Option<&VectorSelector> {
    match unparen(e) {
        Expr::VectorSelector(vs) if vs.offset.is_none() && vs.at.is_none() => Some(vs),
        _ => None,
    }
}

/// The selector, comparison and threshold of a plain threshold expression.
fn threshold_of(expr: &str) -> Option<(VectorSelector, Cmp, f64)> {
    let parsed = promql_parser::parser::parse(expr).ok()?;
    let Expr::Binary(b) = unparen(&parsed) else {
        return None;
    };
    if b.modifier.as_ref().is_some_and(|m| m.return_bool) {
        return None;
    }
    let cmp = Cmp::parse(&b.op.to_string())?;
    if let (Some(vs), Some(t)) = (selector(&b.lhs), number(&b.rhs)) {
        return Some((vs.clone(), cmp, t));
    }
    if let (Some(t), Some(vs)) = (number(&b.lhs), selector(&b.rhs)) {
        return Some((vs.clone(), cmp.flip(), t));
    }
    None
}

/// Compiles a rule if it is a plain threshold: (metric name, rule).
fn compile(key: &GroupKey, index: usize, rule: &Arc<Rule>) -> Option<(String, FastRule)> {
    let RuleKind::Alerting { for_, .. } = &rule.kind else {
        return None;
    };
    let (vs, cmp, threshold) = threshold_of(&rule.expr)?;
    if !vs.matchers.or_matchers.is_empty() {
        return None;
    }
    let text = vs.to_string();
    let matchers = series_selector(&text).ok()?;
    let mut name = None;
    let mut rest = Vec::with_capacity(matchers.len());
    for m in matchers {
        match (&m.op, m.name.as_str()) {
            (MatchOp::Equal(v), "__name__") if name.is_none() => name = Some(v.clone()),
            _ => rest.push(m),
        }
    }
    Some((
        name?,
        FastRule {
            key: key.clone(),
            index,
            rule: rule.clone(),
            matchers: rest,
            cmp,
            threshold,
            for_ms: i64::try_from(for_.as_millis()).unwrap_or(i64::MAX),
            selector: text,
        },
    ))
}

/// Checks accepted batches against the threshold rules of an [`Evaluator`]. Cheap to share
/// behind an `Arc`; follows rule reloads by itself.
pub struct FastPath {
    ev: Evaluator,
    compiled: Mutex<Arc<Compiled>>,
}

impl FastPath {
    pub fn new(ev: &Evaluator) -> FastPath {
        let fp = FastPath {
            ev: ev.clone(),
            compiled: Mutex::new(Arc::new(Compiled {
                generation: u64::MAX,
                ..Compiled::default()
            })),
        };
        fp.current();
        fp
    }

    /// The compiled rules, rebuilt when the evaluator's groups changed.
    fn current(&self) -> Arc<Compiled> {
        let generation = self.ev.generation();
        let mut c = self.compiled.lock().unwrap_or_else(PoisonError::into_inner);
        if c.generation != generation {
            let mut by_tenant: HashMap<String, HashMap<String, Vec<Arc<FastRule>>>> =
                HashMap::new();
            for (key, gs) in self.ev.groups().iter() {
                for (i, r) in gs.group.rules.iter().enumerate() {
                    if let Some((name, fr)) = compile(key, i, r) {
                        by_tenant
                            .entry(key.tenant.clone())
                            .or_default()
                            .entry(name)
                            .or_default()
                            .push(Arc::new(fr));
                    }
                }
            }
            *c = Arc::new(Compiled {
                generation,
                by_tenant,
            });
        }
        c.clone()
    }

    /// Per tenant, the selectors of the threshold rules (what a forwarding collector needs).
    pub fn selectors(&self, tenant: &str) -> Vec<String> {
        let c = self.current();
        let set: BTreeSet<String> = c
            .by_tenant
            .get(tenant)
            .into_iter()
            .flat_map(|m| m.values().flatten())
            .map(|r| r.selector.clone())
            .collect();
        set.into_iter().collect()
    }

    /// Checks `batch` of `tenant` (called for every accepted batch). Allocates nothing for
    /// series no threshold rule selects.
    pub fn offer(&self, tenant: &str, batch: &Batch) {
        let c = self.current();
        let Some(by_name) = c.by_tenant.get(tenant) else {
            return;
        };
        let mut hits: Vec<(&Arc<FastRule>, LabelMap, i64, f64)> = Vec::new();
        for s in batch.iter() {
            let Some(rules) = by_name.get(s.name()) else {
                continue;
            };
            for fr in rules {
                let selected = fr.matchers.iter().all(|m| {
                    let v = s
                        .labels()
                        .find(|(n, _)| *n == m.name)
                        .map_or("", |(_, v)| v);
                    m.matches(v)
                });
                if !selected {
                    continue;
                }
                let mut labels: Option<LabelMap> = None;
                for smp in s.samples() {
                    if smp.value.to_bits() == STALE_NAN_BITS
                        || !fr.cmp.holds(smp.value, fr.threshold)
                    {
                        continue;
                    }
                    let l = labels.get_or_insert_with(|| {
                        let mut l: LabelMap = s
                            .labels()
                            .filter(|(_, v)| !v.is_empty())
                            .map(|(n, v)| (n.to_owned(), v.to_owned()))
                            .collect();
                        l.insert("__name__".into(), s.name().to_owned());
                        l
                    });
                    hits.push((fr, l.clone(), smp.timestamp_ms, smp.value));
                }
            }
        }
        if hits.is_empty() {
            return;
        }
        let mut send: Vec<Alert> = Vec::new();
        {
            let mut groups = self.ev.groups();
            for (fr, series, ts, value) in hits {
                let Some(gs) = groups.get_mut(&fr.key) else {
                    continue;
                };
                let interval = gs.interval;
                let Some(rs) = gs.rules.get_mut(fr.index) else {
                    continue;
                };
                if !Arc::ptr_eq(&rs.rule, &fr.rule) {
                    continue;
                }
                let labels = alert_labels(&fr.rule, &series, value);
                let annotations = alert_annotations(&fr.rule, &series, value);
                let a = rs
                    .alerts
                    .entry(labels.clone())
                    .or_insert_with(|| ActiveAlert {
                        labels,
                        annotations: LabelMap::new(),
                        state: AlertState::Inactive,
                        active_at: ts,
                        fired_at: None,
                        resolved_at: None,
                        keep_firing_since: None,
                        last_sent_at: None,
                        fast_path_at: None,
                        value: None,
                    });
                let mut changed = false;
                if a.state == AlertState::Inactive {
                    a.state = AlertState::Pending;
                    a.active_at = ts;
                    a.fired_at = None;
                    a.resolved_at = None;
                    a.keep_firing_since = None;
                    a.last_sent_at = None;
                    changed = true;
                }
                a.fast_path_at = Some(a.fast_path_at.map_or(ts, |f| f.max(ts)));
                a.set_value(value);
                a.annotations = annotations;
                if a.state == AlertState::Pending && ts - a.active_at >= fr.for_ms {
                    a.state = AlertState::Firing;
                    a.fired_at = Some(ts);
                    a.last_sent_at = Some(ts);
                    changed = true;
                    send.push(
                        self.ev
                            .to_alert(&fr.rule, a, ts.max(super::now_ms()), interval),
                    );
                }
                if changed {
                    gs.dirty = true;
                }
            }
        }
        if !send.is_empty() {
            self.ev.sink().send(tenant, send);
        }
    }
}

impl crate::route::SampleTap for FastPath {
    fn offer(&self, tenant: &str, batch: &Batch) {
        FastPath::offer(self, tenant, batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::evaluate::tests::{T0, batch, env};

    const RULES: &str = r#"
groups:
  - name: fast
    interval: 1m
    rules:
      - alert: Hot
        expr: cpu{env="prod"} > 90
        labels:
          severity: page
          where: "{{ $labels.host }}"
        annotations:
          summary: "{{ $value }}"
      - alert: Slow
        expr: 100 <= (latency)
        for: 1m
      - alert: Rate
        expr: rate(cpu[5m]) > 1
      - alert: Bool
        expr: cpu > bool 90
      - alert: Offset
        expr: cpu offset 1m > 90
      - alert: Agg
        expr: sum(cpu) > 1
      - alert: Vectors
        expr: cpu > latency
"#;

    fn alert_names(alerts: &[Alert]) -> Vec<String> {
        alerts
            .iter()
            .map(|a| a.labels["alertname"].clone())
            .collect()
    }

    #[tokio::test]
    async fn violating_sample_fires_at_once() {
        let e = env(RULES);
        let fp = FastPath::new(&e.ev);
        assert_eq!(fp.selectors(""), ["cpu{env=\"prod\"}", "latency"]);
        assert!(fp.selectors("acme").is_empty());

        fp.offer(
            "",
            &batch("cpu", &[("env", "dev"), ("host", "a")], &[(T0, 99.0)]),
        );
        fp.offer(
            "",
            &batch("cpu", &[("env", "prod"), ("host", "a")], &[(T0, 50.0)]),
        );
        fp.offer(
            "acme",
            &batch("cpu", &[("env", "prod"), ("host", "a")], &[(T0, 99.0)]),
        );
        assert!(e.sink.take().is_empty());

        fp.offer(
            "",
            &batch("cpu", &[("env", "prod"), ("host", "b")], &[(T0, 95.0)]),
        );
        let sent = e.sink.take();
        assert_eq!(alert_names(&sent), ["Hot"]);
        assert_eq!(sent[0].starts_at_ms, T0);
        assert!(sent[0].is_firing(crate::alerting::now_ms()));
        assert_eq!(sent[0].labels["where"], "b");
        assert_eq!(sent[0].annotations["summary"], "95");
        // Already firing: the fast path does not repeat it.
        fp.offer(
            "",
            &batch(
                "cpu",
                &[("env", "prod"), ("host", "b")],
                &[(T0 + 1000, 96.0)],
            ),
        );
        assert!(e.sink.take().is_empty());
    }

    #[tokio::test]
    async fn for_is_honoured() {
        let e = env(RULES);
        let fp = FastPath::new(&e.ev);
        let l = [("host", "a")];
        fp.offer("", &batch("latency", &l, &[(T0, 150.0)]));
        fp.offer("", &batch("latency", &l, &[(T0 + 30_000, 150.0)]));
        assert!(e.sink.take().is_empty(), "pending until for has passed");
        fp.offer("", &batch("latency", &l, &[(T0 + 60_000, 100.0)]));
        let sent = e.sink.take();
        assert_eq!(alert_names(&sent), ["Slow"]);
        assert_eq!(sent[0].starts_at_ms, T0 + 60_000);
    }

    /// The fast path and query evaluation raise the same alert for a series: one entry in the
    /// table, one identity at the sink, the fast path's start kept.
    #[tokio::test]
    async fn labels_identical_to_query_evaluation() {
        let e = env(RULES);
        let fp = FastPath::new(&e.ev);
        let b = batch("cpu", &[("env", "prod"), ("host", "a")], &[(T0, 97.0)]);
        fp.offer("", &b);
        e.store.append(&b).await.unwrap();
        let fast = e.sink.take();
        assert_eq!(fast.len(), 1);

        e.ev.evaluate_group(&e.key(), T0 + 60_000).await.unwrap();
        let evaluated: Vec<Alert> = e
            .sink
            .take()
            .into_iter()
            .filter(|a| a.labels["alertname"] == "Hot")
            .collect();
        assert_eq!(evaluated.len(), 1);
        assert_eq!(evaluated[0].labels, fast[0].labels);
        assert_eq!(evaluated[0].starts_at_ms, fast[0].starts_at_ms);
        let groups = e.ev.groups();
        let hot = &groups.get(&e.key()).unwrap().rules[0];
        assert_eq!(hot.alerts.len(), 1);
    }
}

#[cfg(test)]
mod delay_tests {
    use super::*;
    use crate::alerting::evaluate::tests::{T0, batch, env};

    /// A query evaluated before the sample the fast path fired on does not resolve the alert;
    /// a later query without the series does.
    #[tokio::test]
    async fn query_older_than_the_sample_does_not_resolve() {
        let e =
            env("groups:\n  - name: g\n    rules:\n      - alert: Hot\n        expr: cpu > 90\n");
        let fp = FastPath::new(&e.ev);
        fp.offer("", &batch("cpu", &[("host", "a")], &[(T0, 95.0)]));
        assert_eq!(e.sink.take().len(), 1);
        e.ev.evaluate_group(&e.key(), T0 - 1000).await.unwrap();
        let sent = e.sink.take();
        assert_eq!(sent.len(), 1);
        assert!(sent[0].is_firing(T0));
        e.ev.evaluate_group(&e.key(), T0 + 60_000).await.unwrap();
        let sent = e.sink.take();
        assert_eq!(sent.len(), 1);
        assert!(
            !sent[0].is_firing(T0 + 60_000),
            "resolved once the query saw no data"
        );
    }

    /// A fast-path firing is saved by `flush` (which the evaluator's task runs when it stops),
    /// so a restart keeps its start.
    #[tokio::test]
    async fn fast_path_state_survives_restart() {
        let e =
            env("groups:\n  - name: g\n    rules:\n      - alert: Hot\n        expr: cpu > 90\n");
        let fp = FastPath::new(&e.ev);
        fp.offer("", &batch("cpu", &[("host", "a")], &[(T0, 95.0)]));
        assert_eq!(e.sink.take().len(), 1);
        e.ev.flush().await;
        let ev = crate::alerting::evaluate::tests::evaluator(
            e.dir.path(),
            &e.rules,
            &e.source,
            &e.sink,
            &e.store,
        );
        e.store
            .append(&batch("cpu", &[("host", "a")], &[(T0, 95.0)]))
            .await
            .unwrap();
        ev.evaluate_group(&e.key(), T0 + 60_000).await.unwrap();
        let sent = e.sink.take();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].starts_at_ms, T0);
    }
}
