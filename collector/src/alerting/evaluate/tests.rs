//! Evaluation against the real embedded store, driven with explicit evaluation times.

use super::*;
use crate::alerting::rules::parse_rules;
use crate::store::{Store, StoreConfig};
use sonde_common::model::Sample;
use std::path::Path;
use std::sync::atomic::AtomicBool;

/// 2023-11-14T22:13:20Z: a whole minute.
pub(crate) const T0: i64 = 1_700_000_040_000;
const MIN: i64 = 60_000;

#[derive(Default)]
pub(crate) struct Recorder(Mutex<Vec<(String, Alert)>>);

impl AlertSink for Recorder {
    fn send(&self, tenant: &str, alerts: Vec<Alert>) {
        let mut v = lock(&self.0);
        v.extend(alerts.into_iter().map(|a| (tenant.to_owned(), a)));
    }
}

impl Recorder {
    pub(crate) fn take(&self) -> Vec<Alert> {
        std::mem::take(&mut *lock(&self.0))
            .into_iter()
            .map(|(_, a)| a)
            .collect()
    }
}

pub(crate) struct StoreRecords(pub Store);

impl RecordSink for StoreRecords {
    fn record<'a>(
        &'a self,
        tenant: &'a str,
        batch: Batch,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            self.0
                .append_tenant(tenant, &batch)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

/// The embedded source, made to fail on demand (Unavailable) and counting calls.
pub(crate) struct Flaky {
    inner: Embedded,
    fail: AtomicBool,
    calls: AtomicU64,
}

impl QuerySource for Flaky {
    fn query<'a>(&'a self, tenant: &'a str, expr: &'a str, t_ms: i64) -> source::QueryFuture<'a> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.fail.load(Ordering::Relaxed) {
            return Box::pin(async { Err(QueryError::Unavailable("connection refused".into())) });
        }
        self.inner.query(tenant, expr, t_ms)
    }
}

pub(crate) struct Env {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub rules: RuleStore,
    pub sink: Arc<Recorder>,
    pub source: Arc<Flaky>,
    pub ev: Evaluator,
}

pub(crate) fn rule_set(tenant: &str, yaml: &str) -> RuleSet {
    let groups = parse_rules(Path::new("rules.yml"), tenant, yaml).unwrap();
    RuleSet {
        groups: groups.into_iter().map(Arc::new).collect(),
    }
}

pub(crate) fn env(yaml: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path().join("data"))).unwrap();
    let rules = RuleStore::from_set(rule_set("", yaml));
    let sink = Arc::new(Recorder::default());
    let source = Arc::new(Flaky {
        inner: Embedded::new(store.clone()),
        fail: AtomicBool::new(false),
        calls: AtomicU64::new(0),
    });
    let ev = evaluator(dir.path(), &rules, &source, &sink, &store);
    Env {
        dir,
        store,
        rules,
        sink,
        source,
        ev,
    }
}

pub(crate) fn evaluator(
    dir: &Path,
    rules: &RuleStore,
    source: &Arc<Flaky>,
    sink: &Arc<Recorder>,
    store: &Store,
) -> Evaluator {
    let mut opts = EvaluatorOptions::new(dir.join("state"));
    opts.external_url = "http://sonde:9470".into();
    opts.retry_initial = Duration::from_millis(5);
    Evaluator::new(
        rules.clone(),
        source.clone(),
        sink.clone(),
        Arc::new(StoreRecords(store.clone())),
        opts,
    )
}

pub(crate) fn batch(name: &str, labels: &[(&str, &str)], samples: &[(i64, f64)]) -> Batch {
    let mut b = BatchBuilder::new(BatchHeader {
        agent_id: "test".into(),
        sequence: 1,
        sent_at_ms: 0,
    });
    b.push(
        &Series::new(name, labels.iter().copied()),
        MetricKind::Gauge,
        None,
        samples.iter().map(|&(t, v)| Sample::new(t, v)).collect(),
    );
    b.build()
}

pub(crate) async fn push(
    store: &Store,
    name: &str,
    labels: &[(&str, &str)],
    from: i64,
    to: i64,
    v: f64,
) {
    let samples: Vec<(i64, f64)> = (0..)
        .map(|i| from + i * 15_000)
        .take_while(|t| *t <= to)
        .map(|t| (t, v))
        .collect();
    store.append(&batch(name, labels, &samples)).await.unwrap();
}

impl Env {
    pub(crate) fn key(&self) -> GroupKey {
        self.rules.current().groups[0].key()
    }

    async fn eval(&self, t: i64) {
        self.ev.evaluate_group(&self.key(), t).await.unwrap();
    }

    fn states(&self) -> Vec<(String, AlertState)> {
        let groups = self.ev.groups();
        groups
            .values()
            .flat_map(|g| g.rules.iter())
            .flat_map(|r| r.alerts.values())
            .map(|a| (a.labels.get("host").cloned().unwrap_or_default(), a.state))
            .collect()
    }
}

fn labels(pairs: &[(&str, &str)]) -> LabelMap {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

const CPU_RULE: &str = r#"
groups:
  - name: node
    interval: 1m
    rules:
      - alert: HighCPU
        expr: cpu > 90
        for: 2m
        keep_firing_for: 1m
        labels:
          severity: page
          host_copy: "{{ $labels.host }}"
        annotations:
          summary: "{{ $labels.host }} at {{ $value }}"
"#;

#[tokio::test]
async fn pending_firing_keep_firing_resolved() {
    let e = env(CPU_RULE);
    push(
        &e.store,
        "cpu",
        &[("host", "a")],
        T0,
        T0 + 3 * MIN + 15_000,
        95.0,
    )
    .await;
    push(
        &e.store,
        "cpu",
        &[("host", "a")],
        T0 + 3 * MIN + 30_000,
        T0 + 10 * MIN,
        10.0,
    )
    .await;

    e.eval(T0).await;
    assert_eq!(e.states(), [("a".into(), AlertState::Pending)]);
    assert!(e.sink.take().is_empty(), "pending alerts are not sent");
    e.eval(T0 + MIN).await;
    assert!(e.sink.take().is_empty());

    e.eval(T0 + 2 * MIN).await;
    assert_eq!(e.states(), [("a".into(), AlertState::Firing)]);
    let sent = e.sink.take();
    assert_eq!(sent.len(), 1);
    let a = &sent[0];
    assert_eq!(
        a.labels,
        labels(&[
            ("alertname", "HighCPU"),
            ("host", "a"),
            ("host_copy", "a"),
            ("severity", "page")
        ])
    );
    assert_eq!(a.annotations, labels(&[("summary", "a at 95")]));
    assert_eq!(a.starts_at_ms, T0 + 2 * MIN);
    assert_eq!(a.ends_at_ms, T0 + 2 * MIN + 4 * MIN);
    assert!(
        a.generator_url
            .starts_with("http://sonde:9470/graph?g0.expr=cpu+%3E+90")
    );

    // Re-sent on every evaluation, same start.
    e.eval(T0 + 3 * MIN).await;
    let sent = e.sink.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].starts_at_ms, T0 + 2 * MIN);
    assert_eq!(sent[0].ends_at_ms, T0 + 7 * MIN);

    // Below the threshold: keeps firing for 1m.
    e.eval(T0 + 4 * MIN).await;
    assert_eq!(e.states(), [("a".into(), AlertState::Firing)]);
    assert!(e.sink.take()[0].is_firing(T0 + 4 * MIN));

    e.eval(T0 + 5 * MIN).await;
    assert_eq!(e.states(), [("a".into(), AlertState::Inactive)]);
    let sent = e.sink.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].ends_at_ms, T0 + 5 * MIN);
    assert!(!sent[0].is_firing(T0 + 5 * MIN));

    // Resolved is sent once, kept 15 minutes, then dropped.
    e.eval(T0 + 6 * MIN).await;
    assert!(e.sink.take().is_empty());
    assert_eq!(e.states().len(), 1);
    e.eval(T0 + 21 * MIN).await;
    assert!(e.states().is_empty());
}

#[tokio::test]
async fn api_shapes() {
    let e = env(CPU_RULE);
    push(&e.store, "cpu", &[("host", "a")], T0 - MIN, T0, 95.0).await;
    e.eval(T0).await;
    let rules = e.ev.rules_json("", &RulesFilter::default());
    let g = &rules["groups"][0];
    assert_eq!(g["name"], "node");
    assert_eq!(g["file"], "rules.yml");
    assert_eq!(g["interval"], 60.0);
    let r = &g["rules"][0];
    assert_eq!(r["state"], "pending");
    assert_eq!(r["name"], "HighCPU");
    assert_eq!(r["query"], "cpu > 90");
    assert_eq!(r["duration"], 120.0);
    assert_eq!(r["keepFiringFor"], 60.0);
    assert_eq!(r["health"], "ok");
    assert_eq!(r["type"], "alerting");
    assert_eq!(r["labels"]["severity"], "page");
    assert_eq!(r["alerts"][0]["activeAt"], "2023-11-14T22:14:00Z");
    assert_eq!(r["alerts"][0]["value"], "9.5e+01");
    assert_eq!(r["alerts"][0]["state"], "pending");
    let alerts = e.ev.alerts_json("");
    assert_eq!(alerts["alerts"][0]["labels"]["host"], "a");
    // Other tenants see nothing.
    assert_eq!(
        e.ev.alerts_json("acme")["alerts"].as_array().unwrap().len(),
        0
    );
    assert_eq!(
        e.ev.rules_json("acme", &RulesFilter::default())["groups"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let f = RulesFilter {
        kind: Some("record".into()),
        ..RulesFilter::default()
    };
    assert_eq!(
        e.ev.rules_json("", &f)["groups"].as_array().unwrap().len(),
        0
    );

    let mut enc = TextEncoder::new();
    e.ev.render_metrics(&mut enc);
    let text = enc.finish();
    assert!(
        text.contains("sonde_collector_rule_group_iterations_total{group=\"rules.yml;node\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "sonde_collector_rule_group_alerts{group=\"rules.yml;node\",state=\"pending\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn restart_remembers_pending_time_and_firing_start() {
    let e = env(CPU_RULE);
    push(
        &e.store,
        "cpu",
        &[("host", "a")],
        T0 - MIN,
        T0 + 10 * MIN,
        95.0,
    )
    .await;
    e.eval(T0).await;
    e.eval(T0 + MIN).await;
    assert_eq!(e.states(), [("a".into(), AlertState::Pending)]);

    // Restart: pending since T0, so it fires at T0 + 2m, not T0 + 3m.
    let ev = evaluator(e.dir.path(), &e.rules, &e.source, &e.sink, &e.store);
    ev.evaluate_group(&e.key(), T0 + 2 * MIN).await.unwrap();
    let sent = e.sink.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].starts_at_ms, T0 + 2 * MIN);

    // Restart again: the firing alert keeps its start (no new notification).
    drop(ev);
    let ev = evaluator(e.dir.path(), &e.rules, &e.source, &e.sink, &e.store);
    ev.evaluate_group(&e.key(), T0 + 3 * MIN).await.unwrap();
    let sent = e.sink.take();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].starts_at_ms, T0 + 2 * MIN);
    assert_eq!(sent[0].ends_at_ms, T0 + 7 * MIN);
}

#[tokio::test]
async fn no_data_outcomes() {
    let yaml = r#"
groups:
  - name: g
    interval: 1m
    rules:
      - alert: Gone
        expr: heartbeat > 0
      - alert: Absent
        expr: heartbeat > 0
        no_data: fire
        labels: { kind: absent }
      - alert: Sticky
        expr: heartbeat > 0
        no_data: keep
"#;
    let e = env(yaml);
    push(&e.store, "heartbeat", &[("host", "a")], T0 - MIN, T0, 1.0).await;
    e.eval(T0).await;
    let sent = e.sink.take();
    let names: Vec<&str> = sent
        .iter()
        .map(|a| a.labels["alertname"].as_str())
        .collect();
    assert_eq!(names, ["Gone", "Absent", "Sticky"]);

    // No data (past the 5m lookback).
    e.eval(T0 + 10 * MIN).await;
    let sent = e.sink.take();
    let got: Vec<(String, bool, LabelMap)> = sent
        .iter()
        .map(|a| {
            (
                a.labels["alertname"].clone(),
                a.is_firing(T0 + 10 * MIN),
                a.labels.clone(),
            )
        })
        .collect();
    // Gone: resolved. Absent: its series alert resolved, a label-less one fires.
    // Sticky: still firing.
    assert!(got.contains(&(
        "Gone".into(),
        false,
        labels(&[("alertname", "Gone"), ("host", "a")])
    )));
    assert!(got.contains(&(
        "Absent".into(),
        false,
        labels(&[("alertname", "Absent"), ("host", "a"), ("kind", "absent")])
    )));
    assert!(got.contains(&(
        "Absent".into(),
        true,
        labels(&[("alertname", "Absent"), ("kind", "absent")])
    )));
    assert!(got.contains(&(
        "Sticky".into(),
        true,
        labels(&[("alertname", "Sticky"), ("host", "a")])
    )));
    assert_eq!(got.len(), 4, "{got:?}");
}

#[tokio::test]
async fn query_error_outcomes_and_retries() {
    let yaml = r#"
groups:
  - name: g
    interval: 1m
    rules:
      - alert: Kept
        expr: load > 1
      - alert: Dropped
        expr: load > 1
        query_error: resolve
"#;
    let e = env(yaml);
    push(
        &e.store,
        "load",
        &[("host", "a")],
        T0 - MIN,
        T0 + 10 * MIN,
        5.0,
    )
    .await;
    e.eval(T0).await;
    assert_eq!(e.sink.take().len(), 2);

    e.source.fail.store(true, Ordering::Relaxed);
    let before = e.source.calls.load(Ordering::Relaxed);
    e.eval(T0 + MIN).await;
    // Three attempts per rule.
    assert_eq!(e.source.calls.load(Ordering::Relaxed) - before, 6);
    let sent = e.sink.take();
    let firing: Vec<(&str, bool)> = sent
        .iter()
        .map(|a| (a.labels["alertname"].as_str(), a.is_firing(T0 + MIN)))
        .collect();
    assert_eq!(firing, [("Kept", true), ("Dropped", false)]);
    let rules = e.ev.rules_json("", &RulesFilter::default());
    let r = &rules["groups"][0]["rules"][0];
    assert_eq!(r["health"], "err");
    assert!(
        r["lastError"]
            .as_str()
            .unwrap()
            .contains("connection refused")
    );
    let mut enc = TextEncoder::new();
    e.ev.render_metrics(&mut enc);
    let text = enc.finish();
    assert!(
        text.contains(
            "sonde_collector_rule_evaluation_failures_total{group=\"rules.yml;g\",rule=\"Kept\"} 1"
        ),
        "{text}"
    );

    e.source.fail.store(false, Ordering::Relaxed);
    e.eval(T0 + 2 * MIN).await;
    let rules = e.ev.rules_json("", &RulesFilter::default());
    assert_eq!(rules["groups"][0]["rules"][0]["health"], "ok");
}

#[tokio::test]
async fn recording_rules_write_back_and_limit() {
    let yaml = r#"
groups:
  - name: rec
    interval: 1m
    limit: 1
    rules:
      - record: job:req:sum
        expr: sum by (job) (req)
        labels: { source: rule }
      - alert: ManyReq
        expr: req > 0
"#;
    let e = env(yaml);
    push(
        &e.store,
        "req",
        &[("job", "api"), ("i", "1")],
        T0 - MIN,
        T0,
        2.0,
    )
    .await;
    push(
        &e.store,
        "req",
        &[("job", "api"), ("i", "2")],
        T0 - MIN,
        T0,
        3.0,
    )
    .await;
    e.eval(T0).await;
    let got = e.source.inner.query("", "job:req:sum", T0).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value, 5.0);
    assert_eq!(
        got[0].labels,
        labels(&[
            ("__name__", "job:req:sum"),
            ("job", "api"),
            ("source", "rule")
        ])
    );
    // Two alerts with a limit of one: the rule fails and holds none.
    let rules = e.ev.rules_json("", &RulesFilter::default());
    let r = &rules["groups"][0]["rules"][1];
    assert_eq!(r["health"], "err");
    assert!(
        r["lastError"]
            .as_str()
            .unwrap()
            .contains("exceeded limit of 1")
    );
    assert!(e.states().is_empty());
}

#[tokio::test]
async fn reload_keeps_state_of_unchanged_rules() {
    let e = env(CPU_RULE);
    push(&e.store, "cpu", &[("host", "a")], T0 - MIN, T0, 95.0).await;
    e.eval(T0).await;
    assert_eq!(e.states().len(), 1);
    let changed = CPU_RULE.replace(
        "      - alert: HighCPU",
        "      - alert: Other\n        expr: cpu > 1000\n      - alert: HighCPU",
    );
    let set = rule_set("", &changed);
    e.rules.replace(set.clone());
    let touched = e.ev.sync(&set);
    assert_eq!(touched, [e.key()]);
    let groups = e.ev.groups();
    let g = groups.get(&e.key()).unwrap();
    assert_eq!(g.rules[0].rule.name, "Other");
    assert!(g.rules[0].alerts.is_empty());
    assert_eq!(
        g.rules[1].alerts.len(),
        1,
        "HighCPU keeps its pending alert"
    );
}

#[test]
fn aligned_times() {
    assert_eq!(next_aligned(1000, 60_000, 7_000), 7_000);
    assert_eq!(next_aligned(7_000, 60_000, 7_000), 7_000);
    assert_eq!(next_aligned(7_001, 60_000, 7_000), 67_000);
    let k = GroupKey {
        tenant: "t".into(),
        file: "f.yml".into(),
        name: "g".into(),
    };
    let o = group_offset_ms(&k, Duration::from_secs(60));
    assert_eq!(o, group_offset_ms(&k.clone(), Duration::from_secs(60)));
    assert!((0..60_000).contains(&o));
}

#[tokio::test]
async fn started_groups_run_and_stop() {
    let yaml = "groups:\n  - name: g\n    interval: 200ms\n    rules:\n      - alert: Up\n        expr: up > 0\n";
    let e = env(yaml);
    let cancel = CancellationToken::new();
    let task = e.ev.start(cancel.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = e.ev.groups().get(&e.key()).map_or(0, |g| g.iterations);
        if n >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "group never evaluated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A reload that changes the group restarts it.
    let set = rule_set("", &yaml.replace("up > 0", "up > 1"));
    e.rules.replace(set);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let done = {
            let g = e.ev.groups();
            let st = g.get(&e.key()).unwrap();
            st.group.rules[0].expr == "up > 1" && st.iterations >= 1
        };
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "changed group never evaluated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}
