//! The alerting loop end to end, with real processes on 127.0.0.1: `sonde-collector` (rules,
//! alert manager, embedded store), `sonde-agent`, and a webhook receiver in the test. Each test
//! pushes values across a threshold and checks what the receiver got: how many notifications,
//! with which alerts, and when.

mod support;

use serde_json::{Value, json};
use sonde_common::model::{MetricKind, Sample, Series, now_ms};
use sonde_common::wire::{self, BatchBuilder, BatchHeader, Compression};
use std::path::Path;
use std::time::{Duration, Instant};
use support::{Proc, Webhook, free_port, http_get, http_request, sonde_bin, wait_until};

/// Every batch gets its own sequence number, as an agent's do.
static NEXT_SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Pushes one gauge sample per `labels` entry (all `value`), as a native batch.
fn push_gauges(
    port: u16,
    token: Option<&str>,
    name: &str,
    labels: &[Vec<(&str, &str)>],
    value: f64,
) {
    let now = now_ms();
    let mut b = BatchBuilder::new(BatchHeader {
        agent_id: format!("alerting-test-{}", std::process::id()),
        sequence: NEXT_SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        sent_at_ms: now,
    });
    for l in labels {
        let s = Series::new(name, l.iter().copied());
        b.push(&s, MetricKind::Gauge, None, vec![Sample::new(now, value)]);
    }
    let body = wire::encode(&b.build(), Compression::Zstd).unwrap();
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("Content-Type", "application/x-sonde-batch"),
        ("Content-Encoding", "zstd"),
    ];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let (status, body) = http_request(port, "POST", "/api/v1/push", &headers, &body).unwrap();
    assert_eq!(status, 200, "push: {body}");
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// A collector with rules and an alert manager sending to `hook`.
struct Alerting {
    port: u16,
    proc: Proc,
    dir: tempfile::TempDir,
}

const RULES: &str = r#"
groups:
  - name: temperature
    interval: 1s
    rules:
      - alert: TooHot
        expr: app_temperature_celsius > 90
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.host }} is at {{ $value }} degrees"
"#;

fn alert_config(hook: &str, group_wait: &str) -> String {
    format!(
        r#"
route:
  receiver: hook
  group_by: [alertname]
  group_wait: {group_wait}
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {hook}
"#
    )
}

impl Alerting {
    fn start(rules: &str, alert_config: &str, extra: &[&str]) -> Alerting {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rules")).unwrap();
        write(&dir.path().join("rules/rules.yml"), rules);
        write(&dir.path().join("alertmanager.yml"), alert_config);
        let port = free_port();
        let proc = Self::spawn(port, dir.path(), extra);
        Alerting { port, proc, dir }
    }

    fn spawn(port: u16, dir: &Path, extra: &[&str]) -> Proc {
        let listen = format!("127.0.0.1:{port}");
        let data = dir.join("data");
        let rules = dir.join("rules");
        let config = dir.join("alertmanager.yml");
        let mut args = vec![
            "--listen",
            &listen,
            "--data-dir",
            data.to_str().unwrap(),
            "--rules-dir",
            rules.to_str().unwrap(),
            "--alert-config",
            config.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let proc = Proc::spawn("collector", sonde_bin("sonde-collector"), &args);
        wait_until(Duration::from_secs(20), "collector ready", || {
            http_get(port, "/readyz")
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
        });
        proc
    }

    fn restart(&mut self, extra: &[&str]) {
        self.proc.terminate(Duration::from_secs(20));
        self.proc = Self::spawn(self.port, self.dir.path(), extra);
    }

    /// `/api/v1/alerts`' alerts.
    fn alerts(&self) -> Vec<Value> {
        let (status, body) = http_get(self.port, "/api/v1/alerts").unwrap();
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["alerts"].as_array().cloned().unwrap_or_default()
    }

    fn history(&self) -> Vec<Value> {
        let (status, body) = http_get(self.port, "/api/v1/alerting/history").unwrap();
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"].as_array().cloned().unwrap_or_default()
    }
}

/// Firing and resolved alerts of the accepted notifications, as (status, alert status, host).
fn summary(hook: &Webhook) -> Vec<(String, Vec<(String, String)>)> {
    hook.accepted()
        .iter()
        .map(|d| {
            let alerts = d.body["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    (
                        a["status"].as_str().unwrap().to_owned(),
                        a["labels"]["host"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            (d.body["status"].as_str().unwrap().to_owned(), alerts)
        })
        .collect()
}

#[test]
fn agent_pushed_value_fires_once_then_resolves_once() {
    let hook = Webhook::start(0);
    let alerting = Alerting::start(RULES, &alert_config(&hook.url(), "200ms"), &[]);
    let agent_port = free_port();
    let host = format!("alerting-{}", std::process::id());
    let _agent = Proc::spawn(
        "agent",
        sonde_bin("sonde-agent"),
        &[
            "--collector",
            &format!("http://127.0.0.1:{}", alerting.port),
            "--interval",
            "300ms",
            "--flush-jitter",
            "0s",
            "--hostname",
            &host,
            "--http-listen",
            &format!("127.0.0.1:{agent_port}"),
            "--statsd-listen",
            "",
        ],
    );
    wait_until(Duration::from_secs(20), "agent ready", || {
        http_get(agent_port, "/healthz")
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    });
    // An application on the host reports its temperature to the agent.
    let report = |v: f64| {
        let (status, body) = http_request(
            agent_port,
            "POST",
            "/api/v1/import/prometheus",
            &[("Content-Type", "text/plain")],
            format!("app_temperature_celsius {v}\n").as_bytes(),
        )
        .unwrap();
        assert!((200..300).contains(&status), "{status} {body}");
    };
    report(95.0);
    wait_until(Duration::from_secs(20), "a firing notification", || {
        !hook.accepted().is_empty()
    });
    let first = &hook.accepted()[0];
    assert_eq!(first.body["status"], "firing", "{}", first.body);
    assert_eq!(first.body["version"], "4");
    assert_eq!(first.body["receiver"], "hook");
    let alert = &first.body["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "TooHot");
    assert_eq!(alert["labels"]["severity"], "page");
    assert_eq!(alert["labels"]["host"], host.as_str());
    assert_eq!(
        alert["annotations"]["summary"],
        format!("{host} is at 95 degrees")
    );

    report(20.0);
    wait_until(Duration::from_secs(20), "a resolved notification", || {
        hook.accepted().len() >= 2
    });
    // Nothing more comes: not a second firing, not a second resolved.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        summary(&hook),
        vec![
            ("firing".into(), vec![("firing".into(), host.clone())]),
            ("resolved".into(), vec![("resolved".into(), host.clone())]),
        ]
    );
}

#[test]
fn failing_receiver_gets_the_notification_exactly_once_after_retries() {
    let hook = Webhook::start(3);
    let alerting = Alerting::start(RULES, &alert_config(&hook.url(), "100ms"), &[]);
    push_gauges(
        alerting.port,
        None,
        "app_temperature_celsius",
        &[vec![("host", "a")]],
        99.0,
    );
    wait_until(Duration::from_secs(30), "a delivered notification", || {
        !hook.accepted().is_empty()
    });
    std::thread::sleep(Duration::from_secs(2));
    let all = hook.all();
    assert_eq!(
        all.iter().map(|d| d.status).collect::<Vec<_>>(),
        vec![500, 500, 500, 200],
        "three failures, then one success, and no more"
    );
    let keys: Vec<_> = all.iter().map(|d| d.header("idempotency-key")).collect();
    assert!(
        keys[0].is_some(),
        "every notification has an idempotency key"
    );
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "retries keep their key: {keys:?}"
    );
    let history = alerting.history();
    let retried = history.iter().filter(|h| h["kind"] == "retried").count();
    assert!(
        retried >= 3,
        "the history records the failed attempts: {history:?}"
    );
}

#[test]
fn restart_during_pending_neither_loses_nor_duplicates_the_alert() {
    let hook = Webhook::start(0);
    let rules = r#"
groups:
  - name: temperature
    interval: 1s
    rules:
      - alert: TooHot
        expr: app_temperature_celsius > 90
        for: 6s
"#;
    let mut alerting = Alerting::start(rules, &alert_config(&hook.url(), "100ms"), &[]);
    let port = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(alerting.port));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A host keeps reporting 95 degrees every 250 ms (pushes during the restart are retried).
    let pusher = {
        let stop = stop.clone();
        let port = port.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let p = port.load(std::sync::atomic::Ordering::Relaxed);
                let _ = std::panic::catch_unwind(|| {
                    push_gauges(
                        p,
                        None,
                        "app_temperature_celsius",
                        &[vec![("host", "a")]],
                        95.0,
                    )
                });
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let active_at = wait_until(Duration::from_secs(20), "a pending alert", || {
        alerting
            .alerts()
            .into_iter()
            .find(|a| a["state"] == "pending")
            .map(|a| a["activeAt"].as_str().unwrap().to_owned())
    });
    std::thread::sleep(Duration::from_secs(2));
    let restarted_at = Instant::now();
    alerting.restart(&[]);
    // The pending alert kept its start: it is pending (or firing) with the same activeAt.
    let after = alerting.alerts();
    assert!(
        after.is_empty() || after[0]["activeAt"] == active_at.as_str(),
        "activeAt survives the restart: {active_at} vs {after:?}"
    );
    wait_until(Duration::from_secs(20), "a firing notification", || {
        !hook.accepted().is_empty()
    });
    let fired_after_restart = restarted_at.elapsed();
    // `for: 6s` counted from the first activeAt: 2 s had passed before the restart, so it must
    // fire well before 6 s more (a forgotten pending start would take 6 s after the restart).
    assert!(
        fired_after_restart < Duration::from_millis(5500),
        "pending time was forgotten across the restart: fired {fired_after_restart:?} after it"
    );
    let firing = alerting
        .alerts()
        .into_iter()
        .find(|a| a["state"] == "firing")
        .expect("firing alert");
    assert_eq!(firing["activeAt"], active_at.as_str());
    // A restart while firing does not notify again.
    alerting.restart(&[]);
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    pusher.join().unwrap();
    let firing: Vec<_> = summary(&hook);
    assert_eq!(
        firing,
        vec![("firing".into(), vec![("firing".into(), "a".into())])],
        "exactly one firing notification across two restarts"
    );
}

#[test]
fn a_silence_mutes_the_alert_and_expiring_it_lets_the_notification_through() {
    let hook = Webhook::start(0);
    let alerting = Alerting::start(RULES, &alert_config(&hook.url(), "100ms"), &[]);
    let now = sonde_common::time::format_rfc3339_ms(now_ms());
    let later = sonde_common::time::format_rfc3339_ms(now_ms() + 3_600_000);
    let silence = json!({
        "matchers": [{"name": "alertname", "value": "TooHot", "isRegex": false, "isEqual": true}],
        "startsAt": now,
        "endsAt": later,
        "createdBy": "test",
        "comment": "maintenance",
    });
    let (status, body) = http_request(
        alerting.port,
        "POST",
        "/api/v2/silences",
        &[("Content-Type", "application/json")],
        silence.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["silenceID"]
        .as_str()
        .unwrap()
        .to_owned();
    push_gauges(
        alerting.port,
        None,
        "app_temperature_celsius",
        &[vec![("host", "a")]],
        99.0,
    );
    // The alert is there, suppressed by the silence, and nobody is notified.
    let alert = wait_until(Duration::from_secs(20), "a silenced alert", || {
        let (_, body) = http_get(alerting.port, "/api/v2/alerts").unwrap();
        let alerts: Value = serde_json::from_str(&body).unwrap();
        alerts.as_array().and_then(|a| a.first().cloned())
    });
    assert_eq!(alert["status"]["state"], "suppressed", "{alert}");
    assert_eq!(alert["status"]["silencedBy"], json!([id.clone()]));
    std::thread::sleep(Duration::from_secs(3));
    assert!(hook.all().is_empty(), "a silenced alert notified");
    let muted = wait_until(Duration::from_secs(10), "history names the silence", || {
        alerting
            .history()
            .into_iter()
            .find(|h| h["kind"] == "muted" && h["detail"].as_str().is_some_and(|d| d.contains(&id)))
    });
    assert_eq!(muted["alerts"][0]["labels"]["alertname"], "TooHot");

    // Expire it: the alert notifies.
    let (status, body) = http_request(
        alerting.port,
        "DELETE",
        &format!("/api/v2/silence/{id}"),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    wait_until(Duration::from_secs(20), "notified after expiry", || {
        !hook.accepted().is_empty()
    });
    assert_eq!(hook.accepted()[0].body["status"], "firing");
}

#[test]
fn a_hundred_hosts_crossing_together_give_one_notification() {
    let hook = Webhook::start(0);
    let alerting = Alerting::start(RULES, &alert_config(&hook.url(), "1s"), &[]);
    let hosts: Vec<String> = (0..100).map(|i| format!("host-{i:03}")).collect();
    let labels: Vec<Vec<(&str, &str)>> = hosts.iter().map(|h| vec![("host", h.as_str())]).collect();
    push_gauges(
        alerting.port,
        None,
        "app_temperature_celsius",
        &labels,
        97.0,
    );
    wait_until(Duration::from_secs(20), "a notification", || {
        !hook.accepted().is_empty()
    });
    std::thread::sleep(Duration::from_secs(3));
    let got = hook.accepted();
    assert_eq!(
        got.len(),
        1,
        "one grouped notification: {:?}",
        summary(&hook)
    );
    let alerts = got[0].body["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 100);
    let mut seen: Vec<&str> = alerts
        .iter()
        .map(|a| a["labels"]["host"].as_str().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, hosts.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(got[0].body["groupLabels"], json!({"alertname": "TooHot"}));
}

#[test]
fn the_alerting_api_refuses_missing_tokens_wrong_scopes_and_other_tenants() {
    const ACME_RW: &str = "acme-read-write-token-01";
    const ACME_ADMIN: &str = "acme-admin-token-000001";
    const GLOBEX_ADMIN: &str = "globex-admin-token-0001";
    let hook = Webhook::start(0);
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    write(
        &tokens,
        &format!(
            "{ACME_RW} acme read,write\n{ACME_ADMIN} acme read,admin\n{GLOBEX_ADMIN} globex read,write,admin\n"
        ),
    );
    // Rules of tenant acme live in the rules directory's `acme` subdirectory.
    let alerting = Alerting::start(
        "groups: []\n",
        &alert_config(&hook.url(), "100ms"),
        &["--token-file", tokens.to_str().unwrap()],
    );
    let acme_rules = alerting.dir.path().join("rules/acme");
    std::fs::create_dir(&acme_rules).unwrap();
    write(&acme_rules.join("acme.yml"), RULES);
    push_gauges(
        alerting.port,
        Some(ACME_RW),
        "app_temperature_celsius",
        &[vec![("host", "a")]],
        99.0,
    );
    let get = |token: Option<&str>, path: &str| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        http_request(alerting.port, "GET", path, &headers, b"").unwrap()
    };
    wait_until(Duration::from_secs(30), "acme's alert fires", || {
        let (_, body) = get(Some(ACME_RW), "/api/v1/alerts");
        body.contains("TooHot")
    });

    for path in [
        "/api/v1/alerts",
        "/api/v1/rules",
        "/api/v2/alerts",
        "/api/v2/silences",
        "/api/v1/alerting/history",
    ] {
        assert_eq!(get(None, path).0, 401, "{path} without a token");
        assert_eq!(get(Some("not-a-known-token-000"), path).0, 401, "{path}");
        // Another tenant sees nothing of acme's.
        let (status, body) = get(Some(GLOBEX_ADMIN), path);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(
            !body.contains("TooHot"),
            "{path} leaks acme's alerts to globex: {body}"
        );
    }
    let (status, body) = get(Some(ACME_RW), "/api/v1/rules");
    assert_eq!(status, 200);
    assert!(body.contains("TooHot"), "{body}");

    // Silences need the admin scope, and only touch their own tenant.
    let silence = json!({
        "matchers": [{"name": "alertname", "value": "TooHot", "isRegex": false}],
        "startsAt": sonde_common::time::format_rfc3339_ms(now_ms()),
        "endsAt": sonde_common::time::format_rfc3339_ms(now_ms() + 60_000),
        "createdBy": "test",
        "comment": "c",
    })
    .to_string();
    let post = |token: &str| {
        http_request(
            alerting.port,
            "POST",
            "/api/v2/silences",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", &format!("Bearer {token}")),
            ],
            silence.as_bytes(),
        )
        .unwrap()
    };
    assert_eq!(post(ACME_RW).0, 403, "a silence without the admin scope");
    let (status, body) = post(ACME_ADMIN);
    assert_eq!(status, 200, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["silenceID"]
        .as_str()
        .unwrap()
        .to_owned();
    let delete = |token: &str| {
        http_request(
            alerting.port,
            "DELETE",
            &format!("/api/v2/silence/{id}"),
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
        .unwrap()
        .0
    };
    assert_eq!(delete(ACME_RW), 403, "expiring needs the admin scope");
    assert_eq!(
        delete(GLOBEX_ADMIN),
        404,
        "another tenant's silence is not there"
    );
    // A token of one tenant asking for another tenant's data is refused.
    let (status, _) = http_request(
        alerting.port,
        "GET",
        "/api/v2/alerts",
        &[
            ("Authorization", &format!("Bearer {GLOBEX_ADMIN}")),
            ("X-Scope-OrgID", "acme"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(status, 403, "X-Scope-OrgID naming another tenant");
    assert_eq!(delete(ACME_ADMIN), 200);
}

#[test]
fn a_fleet_collector_forwards_threshold_samples_to_the_alerting_instance() {
    // The storage collector: embedded store, forwards what the alerting instance's threshold
    // rules want. The alerting instance: rules and manager, querying the storage collector.
    let hook = Webhook::start(0);
    let store_port = free_port();
    let alerting_port = free_port();
    let store_dir = tempfile::tempdir().unwrap();
    let store_listen = format!("127.0.0.1:{store_port}");
    let alerting_url = format!("http://127.0.0.1:{alerting_port}");
    let store = Proc::spawn(
        "store collector",
        sonde_bin("sonde-collector"),
        &[
            "--listen",
            &store_listen,
            "--data-dir",
            store_dir.path().to_str().unwrap(),
            "--alerting",
            &alerting_url,
        ],
    );
    let _store = store;
    wait_until(Duration::from_secs(20), "store collector ready", || {
        http_get(store_port, "/readyz")
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    });
    // Query-based evaluation every minute: only the fast path can be quick here.
    let rules = RULES.replace("interval: 1s", "interval: 1m");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    write(&dir.path().join("rules/rules.yml"), &rules);
    write(
        &dir.path().join("alertmanager.yml"),
        &alert_config(&hook.url(), "0s"),
    );
    let query_url = format!("http://127.0.0.1:{store_port}");
    let _alerting = Alerting::spawn(alerting_port, dir.path(), &["--query-url", &query_url]);
    // The storage collector learns the selectors within a few seconds.
    wait_until(Duration::from_secs(20), "selectors learned", || {
        let (_, body) = http_get(store_port, "/metrics").unwrap();
        body.lines()
            .any(|l| l.starts_with("sonde_collector_alerting_selectors ") && !l.ends_with(" 0"))
    });
    let pushed = Instant::now();
    push_gauges(
        store_port,
        None,
        "app_temperature_celsius",
        &[vec![("host", "brand-new")]],
        120.0,
    );
    wait_until(Duration::from_secs(10), "a fast-path notification", || {
        !hook.accepted().is_empty()
    });
    let latency = pushed.elapsed();
    assert!(
        latency < Duration::from_secs(2),
        "the fast path took {latency:?} for a new series"
    );
    assert_eq!(
        hook.accepted()[0].body["alerts"][0]["labels"]["host"],
        "brand-new"
    );
}

/// Runs Alertmanager's own command-line client against the collector.
fn amtool(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("amtool")
        .arg(format!("--alertmanager.url=http://127.0.0.1:{port}"))
        .args(args)
        .output()
        .expect("amtool (apt-get install prometheus-alertmanager)");
    assert!(
        out.status.success(),
        "amtool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn amtool_lists_alerts_and_manages_silences() {
    let hook = Webhook::start(0);
    let alerting = Alerting::start(RULES, &alert_config(&hook.url(), "100ms"), &[]);
    push_gauges(
        alerting.port,
        None,
        "app_temperature_celsius",
        &[vec![("host", "a")]],
        99.0,
    );
    wait_until(Duration::from_secs(20), "amtool lists the alert", || {
        amtool(alerting.port, &["alert", "query"]).contains("TooHot")
    });
    let id = amtool(
        alerting.port,
        &[
            "silence",
            "add",
            "alertname=TooHot",
            "--comment=maintenance",
            "--author=test",
            "--duration=1h",
        ],
    )
    .trim()
    .to_owned();
    assert!(!id.is_empty());
    let silences = amtool(alerting.port, &["silence", "query"]);
    assert!(
        silences.contains(&id) && silences.contains("maintenance"),
        "{silences}"
    );
    wait_until(
        Duration::from_secs(10),
        "the alert shows as suppressed",
        || {
            let out = amtool(alerting.port, &["alert", "query", "--silenced"]);
            out.contains("TooHot") && out.contains("suppressed")
        },
    );
    amtool(alerting.port, &["silence", "expire", &id]);
    assert!(!amtool(alerting.port, &["silence", "query"]).contains(&id));
    let routes = amtool(alerting.port, &["config", "routes"]);
    assert!(routes.contains("receiver: hook"), "{routes}");
}

#[test]
fn recording_rules_write_through_the_ingest_route_and_are_queryable() {
    let hook = Webhook::start(0);
    let rules = r#"
groups:
  - name: recording
    interval: 1s
    rules:
      - record: app:temperature_celsius:max
        expr: max(app_temperature_celsius)
        labels:
          source: rule
"#;
    let alerting = Alerting::start(rules, &alert_config(&hook.url(), "100ms"), &[]);
    push_gauges(
        alerting.port,
        None,
        "app_temperature_celsius",
        &[vec![("host", "a")], vec![("host", "b")]],
        71.5,
    );
    let result = wait_until(Duration::from_secs(20), "the recorded series", || {
        let data = support::query(alerting.port, "app:temperature_celsius:max", None);
        data["result"]
            .as_array()
            .filter(|r| !r.is_empty())
            .map(|r| r[0].clone())
    });
    assert_eq!(
        result["metric"],
        json!({"__name__": "app:temperature_celsius:max", "source": "rule"})
    );
    assert_eq!(result["value"][1], "71.5");
    // The rule's health and last evaluation show in /api/v1/rules.
    let (_, body) = http_get(alerting.port, "/api/v1/rules?type=record").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let rule = &v["data"]["groups"][0]["rules"][0];
    assert_eq!(rule["type"], "recording");
    assert_eq!(rule["health"], "ok", "{rule}");
}
