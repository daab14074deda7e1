use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

const GOOD: &str = r#"
groups:
  - name: node
    interval: 30s
    limit: 10
    query_offset: 1m
    rules:
      - alert: HighCPU
        expr: cpu_usage > 90
        for: 5m
        keep_firing_for: 1m
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.instance }} at {{ $value | humanize }}%"
        no_data: keep
        query_error: fire
      - record: job:cpu:avg
        expr: avg by (job) (cpu_usage)
        labels:
          source: rule
  - name: other
    rules:
      - alert: Down
        expr: up == 0
"#;

#[test]
fn good_file_parses() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "a.yml", GOOD);
    assert_eq!(check_file(&p).unwrap(), "2 groups, 3 rules");
    let groups = load_file(&p, "t1").unwrap();
    let g = &groups[0];
    assert_eq!(g.tenant, "t1");
    assert_eq!(g.interval, Some(Duration::from_secs(30)));
    assert_eq!(g.limit, 10);
    assert_eq!(g.query_offset, Duration::from_secs(60));
    let RuleKind::Alerting {
        for_,
        keep_firing_for,
        no_data,
        query_error,
        annotations,
    } = &g.rules[0].kind
    else {
        panic!("alerting rule expected")
    };
    assert_eq!(*for_, Duration::from_secs(300));
    assert_eq!(*keep_firing_for, Duration::from_secs(60));
    assert_eq!((*no_data, *query_error), (Outcome::Keep, Outcome::Fire));
    assert_eq!(annotations.len(), 1);
    assert!(!g.rules[1].is_alerting());
    let RuleKind::Alerting {
        no_data,
        query_error,
        ..
    } = &groups[1].rules[0].kind
    else {
        panic!("alerting rule expected")
    };
    assert_eq!((*no_data, *query_error), (Outcome::Resolve, Outcome::Keep));
    assert_eq!(groups[1].interval, None);
}

/// Each kind of error names the file, the line and the reason.
#[test]
fn errors_carry_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, u64, &str)] = &[
        (
            "groups:\n  - name: a\n    rules:\n      - alert: X\n        expr: up\n  - name: a\n    rules: []\n",
            6,
            "repeated",
        ),
        (
            "groups:\n  - name: a\n    rules:\n      - alert: X\n        record: y\n        expr: up\n",
            4,
            "only one of",
        ),
        (
            "groups:\n  - name: a\n    rules:\n      - expr: up\n",
            4,
            "one of 'record' or 'alert'",
        ),
        (
            "groups:\n  - name: a\n    rules:\n      - alert: X\n        expr: up{\n",
            4,
            "could not parse expression",
        ),
        (
            "groups:\n  - name: a\n    rules:\n      - record: 1bad\n        expr: up\n",
            4,
            "invalid recording rule name",
        ),
        (
            "groups:\n  - name: a\n    rules:\n      - alert: X\n        expr: \"1 + 1\"\n",
            4,
            "instant vector",
        ),
        (
            "groups:\n  - name: a\n    rules:\n      - alert: X\n        expr: up\n        labels:\n          bad-name: x\n",
            4,
            "invalid label name",
        ),
        (
            "groups:\n  - name: a\n    rules:\n      - alert: X\n        expr: up\n        annotations:\n          s: \"{{ if $value }}\"\n",
            4,
            "bad template",
        ),
        (
            "groups:\n  - name: a\n    rules:\n      - alert: X\n        expr: up\n        for: 5 minutes\n",
            4,
            "invalid 'for'",
        ),
        (
            "groups:\n  - name: a\n    interval: 0s\n    rules: []\n",
            2,
            "interval",
        ),
        (
            "groups:\n  - name: a\n    rules:\n      - alert: X\n        expr: up\n        severity: page\n",
            6,
            "severity",
        ),
        ("groups:\n  - name: a\n    rules: [\n", 0, ""),
    ];
    for (i, (text, line, reason)) in cases.iter().enumerate() {
        let p = write(dir.path(), &format!("bad{i}.yml"), text);
        let e = check_file(&p).unwrap_err();
        let shown = e.to_string();
        assert!(shown.starts_with(&p.display().to_string()), "{shown}");
        if *line > 0 {
            assert_eq!(e.line, Some(*line), "case {i}: {shown}");
        } else {
            assert!(e.line.is_some(), "case {i}: {shown}");
        }
        assert!(shown.contains(reason), "case {i}: {shown}");
    }
}

#[test]
fn tenants_from_subdirectories() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "base.yml", GOOD);
    write(dir.path(), "acme/r.yaml", GOOD);
    write(dir.path(), "acme/notes.txt", "not rules");
    write(dir.path(), ".hidden.yml", "garbage: [");
    let set = load_dir(dir.path()).unwrap();
    let tenants: Vec<&str> = set.groups.iter().map(|g| g.tenant.as_str()).collect();
    assert_eq!(tenants, ["", "", "acme", "acme"]);
}

#[test]
fn reload_keeps_old_rules_when_a_file_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "a.yml", GOOD);
    let store = RuleStore::load(dir.path()).unwrap();
    let before = store.current();
    assert_eq!(before.rule_count(), 3);
    std::fs::write(&p, "groups:\n  - name: x\n    rules:\n      - alert: X\n").unwrap();
    let e = store.reload().unwrap_err();
    assert_eq!(e.line, Some(4));
    assert_eq!(*store.current(), *before);
    let mut enc = TextEncoder::new();
    store.render_metrics(&mut enc);
    let text = enc.finish();
    assert!(
        text.contains("sonde_collector_rules_last_reload_successful 0"),
        "{text}"
    );
    assert!(
        text.contains("sonde_collector_rules_reloads_total{result=\"failure\"} 1"),
        "{text}"
    );

    std::fs::write(
        &p,
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: up == 0\n",
    )
    .unwrap();
    let mut rx = store.subscribe();
    store.reload().unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(store.current().rule_count(), 1);
    let mut enc = TextEncoder::new();
    store.render_metrics(&mut enc);
    let text = enc.finish();
    assert!(
        text.contains("sonde_collector_rules_last_reload_successful 1"),
        "{text}"
    );
    assert!(
        text.contains("sonde_collector_rules_reloads_total{result=\"success\"} 1"),
        "{text}"
    );
    let _ = rx.borrow_and_update();
    // Unchanged files: no notification.
    store.reload().unwrap();
    assert!(!rx.has_changed().unwrap());
}

#[tokio::test]
async fn watcher_picks_up_changes() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yml", GOOD);
    let store = RuleStore::load(dir.path()).unwrap();
    let cancel = CancellationToken::new();
    let task = store.watch(Duration::from_millis(20), cancel.clone());
    let mut rx = store.subscribe();
    write(
        dir.path(),
        "b.yml",
        "groups:\n  - name: y\n    rules:\n      - record: r\n        expr: up\n",
    );
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.current().rule_count(), 4);
    cancel.cancel();
    task.await.unwrap();
}

#[test]
fn numeric_expr_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "n.yml",
        "groups:\n  - name: n\n    rules:\n      - record: one\n        expr: 1\n",
    );
    assert_eq!(check_file(&p).unwrap(), "1 group, 1 rule");
}
