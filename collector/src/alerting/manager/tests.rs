//! Tests of the manager as a whole: the dispatch core driven by hand with explicit times, the
//! running manager against a webhook receiver on 127.0.0.1, restarts, and the API.

use super::config::{AlertManagerConfig, parse};
use super::dispatch::{Core, Effects};
use super::metrics::Stats;
use super::nflog::NotificationLog;
use super::silence::{SilenceMatcher, SilenceRequest, Silences};
use super::*;
use crate::alerting::now_ms;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};

fn alert(name: &str, instance: &str, starts: i64, ends: i64) -> Alert {
    Alert {
        labels: [
            ("alertname".to_owned(), name.to_owned()),
            ("instance".to_owned(), instance.to_owned()),
            ("severity".to_owned(), "warning".to_owned()),
        ]
        .into(),
        annotations: LabelMap::new(),
        starts_at_ms: starts,
        ends_at_ms: ends,
        generator_url: String::new(),
    }
}

fn config(url: &str, wait: &str, interval: &str, repeat: &str) -> AlertManagerConfig {
    parse(&format!(
        r#"
route:
  receiver: hook
  group_by: [alertname]
  group_wait: {wait}
  group_interval: {interval}
  repeat_interval: {repeat}
inhibit_rules:
  - source_matchers: [severity="critical"]
    target_matchers: [severity="warning"]
    equal: [instance]
receivers:
  - name: hook
    webhook_configs:
      - url: {url}
"#
    ))
    .expect("config")
}

fn core(cfg: AlertManagerConfig) -> Core {
    Core {
        config: Arc::new(cfg),
        tenants: BTreeMap::new(),
        silences: Silences::default(),
        nflog: NotificationLog::default(),
        stats: Arc::new(Stats::default()),
        external_url: "http://sonde".into(),
    }
}

fn flush(c: &mut Core, now: i64) -> Vec<Value> {
    let mut fx = Effects::default();
    c.flush(now, &mut fx);
    fx.notifications
        .iter()
        .map(|n| serde_json::from_str(&n.body).expect("json"))
        .collect()
}

fn ingest(c: &mut Core, tenant: &str, alerts: Vec<Alert>, now: i64) {
    let mut fx = Effects::default();
    c.ingest(
        tenant,
        alerts.into_iter().map(|a| (a, false)).collect(),
        now,
        &mut fx,
    );
}

const HOUR: i64 = 3_600_000;

#[test]
fn group_wait_interval_repeat_and_immediate_resolve() {
    let mut c = core(config("http://127.0.0.1:1/", "100ms", "1s", "10s"));
    let t0 = 1_000_000;
    let many: Vec<Alert> = (0..100)
        .map(|i| alert("Down", &format!("i{i}"), t0, t0 + HOUR))
        .collect();
    ingest(&mut c, "", many, t0);
    assert!(flush(&mut c, t0 + 50).is_empty(), "still in group_wait");
    let n = flush(&mut c, t0 + 100);
    assert_eq!(n.len(), 1, "a hundred alerts, one notification");
    assert_eq!(n[0]["alerts"].as_array().map(Vec::len), Some(100));
    assert_eq!(n[0]["status"], "firing");
    // Unchanged: nothing at the next interval.
    assert!(flush(&mut c, t0 + 1100).is_empty());
    // A new alert joins; it goes out at the group interval, not before.
    ingest(
        &mut c,
        "",
        vec![alert("Down", "new", t0 + 1200, t0 + HOUR)],
        t0 + 1200,
    );
    assert!(flush(&mut c, t0 + 1300).is_empty());
    let n = flush(&mut c, t0 + 2100);
    assert_eq!(n[0]["alerts"].as_array().map(Vec::len), Some(101));
    // Repeat interval passed: sent again though unchanged.
    assert!(flush(&mut c, t0 + 3100).is_empty());
    assert_eq!(flush(&mut c, t0 + 2100 + 10_000).len(), 1);
    // Everything resolves: the resolved notification goes out at once.
    let t1 = t0 + 20_050;
    let mut all: Vec<Alert> = (0..100)
        .map(|i| alert("Down", &format!("i{i}"), t0, t1))
        .collect();
    all.push(alert("Down", "new", t0 + 1200, t1));
    ingest(&mut c, "", all, t1);
    let n = flush(&mut c, t1);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0]["status"], "resolved");
    assert!(
        c.tenants.get("").is_none_or(|t| t.alerts.is_empty()),
        "resolved alerts collected"
    );
    assert!(flush(&mut c, t1 + 5000).is_empty());
}

#[test]
fn alerts_resolving_by_time_notify_without_a_new_send() {
    let mut c = core(config("http://127.0.0.1:1/", "0s", "1h", "4h"));
    let t0 = 1_000_000;
    ingest(&mut c, "", vec![alert("Down", "a", t0, t0 + 500)], t0);
    assert_eq!(flush(&mut c, t0).len(), 1);
    let mut fx = Effects::default();
    let next = c.flush(t0 + 1, &mut fx);
    assert_eq!(next, Some(t0 + 500), "wakes when the alert ends");
    let n = flush(&mut c, t0 + 500);
    assert_eq!(n[0]["status"], "resolved");
}

#[test]
fn silenced_and_inhibited_alerts_are_not_notified() {
    let mut c = core(config("http://127.0.0.1:1/", "0s", "1s", "1h"));
    let t0 = now_ms();
    let id = c
        .silences
        .upsert(
            "",
            SilenceRequest {
                id: None,
                matchers: vec![SilenceMatcher {
                    name: "instance".into(),
                    value: "quiet".into(),
                    is_regex: false,
                    is_equal: true,
                }],
                starts_at_ms: t0,
                ends_at_ms: t0 + HOUR,
                created_by: "t".into(),
                comment: "c".into(),
            },
            t0,
        )
        .expect("silence");
    let mut crit = alert("Disk", "box", t0, t0 + HOUR);
    crit.labels.insert("severity".into(), "critical".into());
    let mut fx = Effects::default();
    c.ingest(
        "",
        vec![
            (alert("Down", "quiet", t0, t0 + HOUR), false),
            (alert("Down", "box", t0, t0 + HOUR), false),
            (crit, false),
        ],
        t0,
        &mut fx,
    );
    let mut fx = Effects::default();
    c.flush(t0, &mut fx);
    let bodies: Vec<Value> = fx
        .notifications
        .iter()
        .map(|n| serde_json::from_str(&n.body).expect("json"))
        .collect();
    // Only the critical alert is notified: one silenced, one inhibited by it.
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["groupLabels"]["alertname"], "Disk");
    let muted: Vec<&str> = fx
        .history
        .iter()
        .filter(|h| h.kind == "muted")
        .map(|h| h.detail.as_str())
        .collect();
    assert!(
        muted.contains(&format!("silenced by {id}").as_str()),
        "{muted:?}"
    );
    assert!(
        muted.iter().any(|d| d.starts_with("inhibited by")),
        "{muted:?}"
    );
    assert_eq!(c.stats.muted.get("silence"), 1);
    assert_eq!(c.stats.muted.get("inhibition"), 1);
}

#[test]
fn tenants_are_kept_apart() {
    let mut c = core(config("http://127.0.0.1:1/", "0s", "1s", "1h"));
    let t0 = 1_000_000;
    ingest(&mut c, "a", vec![alert("Down", "x", t0, t0 + HOUR)], t0);
    ingest(&mut c, "b", vec![alert("Down", "x", t0, t0 + HOUR)], t0);
    let mut fx = Effects::default();
    c.flush(t0, &mut fx);
    let tenants: Vec<&str> = fx.notifications.iter().map(|n| n.tenant.as_str()).collect();
    assert_eq!(tenants, ["a", "b"]);
    assert_ne!(fx.notifications[0].slot, fx.notifications[1].slot);
}

// ---- the running manager against a real webhook receiver ----

#[derive(Clone, Default)]
struct Receiver {
    /// (Idempotency-Key header, body) of every request that got 200.
    delivered: Arc<Mutex<Vec<(String, Value)>>>,
    requests: Arc<AtomicUsize>,
    fail_first: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start(fail_first: usize) -> (Receiver, String, CancellationToken) {
        Self::start_on("127.0.0.1:0", fail_first).await
    }

    async fn start_on(addr: &str, fail_first: usize) -> (Receiver, String, CancellationToken) {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let r = Receiver::default();
        r.fail_first.store(fail_first, Ordering::SeqCst);
        let stop = CancellationToken::new();
        let (r2, stop2) = (r.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => return },
                };
                let r3 = r2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<Incoming>| {
                        let r4 = r3.clone();
                        async move {
                            let key = req
                                .headers()
                                .get("idempotency-key")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let n = r4.requests.fetch_add(1, Ordering::SeqCst);
                            let status = if n < r4.fail_first.load(Ordering::SeqCst) {
                                500
                            } else {
                                if let Ok(b) = body {
                                    let v = serde_json::from_slice(&b).unwrap_or(Value::Null);
                                    lock(&r4.delivered).push((key, v));
                                }
                                200
                            };
                            let mut resp = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            ));
                            *resp.status_mut() =
                                hyper::StatusCode::from_u16(status).unwrap_or_default();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (r, format!("http://{addr}/hook"), stop)
    }

    fn delivered(&self) -> Vec<(String, Value)> {
        lock(&self.delivered).clone()
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn open(dir: &std::path::Path, cfg: Option<AlertManagerConfig>) -> (Manager, CancellationToken) {
    let token = CancellationToken::new();
    let m = Manager::open(
        ManagerOptions {
            dir: dir.to_owned(),
            config: cfg,
            external_url: "http://sonde:9090".into(),
        },
        token.clone(),
    )
    .expect("open");
    (m, token)
}

#[tokio::test]
async fn retries_until_delivered_with_one_idempotency_key() {
    let (rx, url, stop) = Receiver::start(3).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (m, token) = open(dir.path(), Some(config(&url, "50ms", "1h", "4h")));
    let now = now_ms();
    m.send("", vec![alert("Down", "a", now, now + HOUR)]);
    until("delivery", || !rx.delivered().is_empty()).await;
    assert_eq!(
        rx.requests.load(Ordering::SeqCst),
        4,
        "three failures, one success"
    );
    let got = rx.delivered();
    assert_eq!(got[0].0, got[0].1["idempotencyKey"].as_str().unwrap_or("-"));
    until("outbox drained", || m.outbox_len() == 0).await;
    let h = m.history("", None, Some("Down"), 100);
    let kinds: Vec<&str> = h.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "retried").count(),
        3,
        "{kinds:?}"
    );
    assert_eq!(kinds.first(), Some(&"sent"), "newest first: {kinds:?}");
    assert_eq!(kinds.last(), Some(&"firing"));
    let mut enc = sonde_common::telemetry::TextEncoder::new();
    m.render_metrics(&mut enc);
    let text = enc.finish();
    assert!(
        text.contains(
            r#"sonde_collector_alertmanager_notifications_sent_total{receiver="hook"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"sonde_collector_alertmanager_notification_retries_total{receiver="hook"} 3"#
        )
    );
    assert!(
        text.contains(r#"sonde_collector_alertmanager_alerts_received_total{state="firing"} 1"#)
    );
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), m.stopped())
        .await
        .expect("stops");
    stop.cancel();
}

#[tokio::test]
async fn a_restart_resends_the_outbox_but_never_renotifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A receiver that is down: the notification waits in the outbox.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let dead_url = format!("http://{dead}/hook");
    let now = now_ms();
    let alerts = vec![
        alert("Down", "a", now, now + HOUR),
        alert("Down", "b", now, now + HOUR),
    ];
    let key_before = {
        let (m, token) = open(dir.path(), Some(config(&dead_url, "0s", "1h", "4h")));
        m.send("t", alerts.clone());
        until("a retry", || {
            m.history("t", None, None, 10)
                .iter()
                .any(|e| e.kind == "retried")
        })
        .await;
        assert_eq!(m.outbox_len(), 1);
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), m.stopped())
            .await
            .expect("stops");
        let outbox: Vec<Notification> =
            serde_json::from_slice(&std::fs::read(dir.path().join("outbox.json")).expect("read"))
                .expect("json");
        outbox[0].idempotency_key.clone()
    };
    // The receiver is back, at the address the outbox holds.
    let (rx, url, stop) = Receiver::start_on(&dead.to_string(), 0).await;
    assert_eq!(url, dead_url);
    let (m, token) = open(dir.path(), Some(config(&url, "0s", "1h", "4h")));
    until("re-sent", || !rx.delivered().is_empty()).await;
    assert_eq!(rx.delivered()[0].0, key_before, "same key after a restart");
    // The evaluator keeps sending the same alerts: no new notification.
    m.send("t", alerts.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.delivered().len(), 1);
    assert!(
        m.history("t", None, None, 100)
            .iter()
            .any(|e| e.kind == "deduplicated"),
        "history kept across the restart and the flush deduplicated"
    );
    token.cancel();
    m.stopped().await;
    // A third run: still nothing re-notified, history still there.
    let (m, token) = open(dir.path(), Some(config(&url, "0s", "1h", "4h")));
    m.send("t", alerts);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.delivered().len(), 1);
    assert!(
        m.history("t", None, None, 1000)
            .iter()
            .any(|e| e.kind == "sent")
    );
    token.cancel();
    m.stopped().await;
    stop.cancel();
}

#[tokio::test]
async fn a_refused_notification_is_not_retried() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let h3 = Arc::clone(&h2);
            tokio::spawn(async move {
                let svc = service_fn(move |_req: hyper::Request<Incoming>| {
                    h3.fetch_add(1, Ordering::SeqCst);
                    async {
                        let mut r = hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"bad payload"),
                        ));
                        *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (m, token) = open(
        dir.path(),
        Some(config(&format!("http://{addr}/"), "0s", "1h", "4h")),
    );
    let now = now_ms();
    m.send("", vec![alert("Down", "a", now, now + HOUR)]);
    until("failure recorded", || {
        m.history("", None, None, 10)
            .iter()
            .any(|e| e.kind == "failed")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(m.outbox_len(), 0);
    let failed = m.history("", None, None, 10);
    assert!(failed[0].detail.contains("400"), "{:?}", failed[0]);
    token.cancel();
    m.stopped().await;
}

#[tokio::test]
async fn without_a_config_alerts_are_kept_and_listed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (m, token) = open(dir.path(), None);
    let now = now_ms();
    m.send(
        "",
        vec![
            alert("Down", "a", now, now + HOUR),
            alert("Gone", "b", now - 10, now - 1),
        ],
    );
    let list = m.alerts("");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].receivers, ["default"]);
    assert!(m.alerts("other").is_empty());
    token.cancel();
    m.stopped().await;
}

#[tokio::test]
async fn reload_regroups_without_renotifying() {
    let (rx, url, stop) = Receiver::start(0).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (m, token) = open(dir.path(), Some(config(&url, "0s", "1h", "4h")));
    let now = now_ms();
    m.send("", vec![alert("Down", "a", now, now + HOUR)]);
    until("delivery", || rx.delivered().len() == 1).await;
    m.reload(Some(config(&url, "0s", "1h", "4h")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.delivered().len(), 1);
    token.cancel();
    m.stopped().await;
    stop.cancel();
}

// ---- the API ----

mod api_tests {
    use super::*;
    use crate::alerting::manager::api::serve;
    use crate::ingest::auth::{Auth, Principal, Scope};
    use hyper::{Method, StatusCode};

    fn principal(tenant: &str, scopes: &str) -> Principal {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("token-0123456789abcdef {tenant} {scopes}\n"))
            .expect("write");
        let auth = Auth::load(&path).expect("auth");
        let header = hyper::header::HeaderValue::from_static("Bearer token-0123456789abcdef");
        let scope = if scopes.contains("read") {
            Scope::Read
        } else {
            Scope::Write
        };
        auth.check(Some(&header), scope).expect("principal")
    }

    fn call(
        m: &Manager,
        p: &Principal,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let resp = serve(m, p, &method, path, query, body.as_bytes());
        let status = resp.status();
        let bytes = futures_body(resp);
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn futures_body(resp: hyper::Response<crate::server::Body>) -> bytes::Bytes {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(async {
            resp.into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default()
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn alerts_silences_status_and_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (m, token) = open(
            dir.path(),
            Some(config("http://127.0.0.1:1/", "1h", "1h", "4h")),
        );
        let admin = Principal::anonymous();
        let posted = r#"[{"labels":{"alertname":"Down","instance":"a","severity":"warning"},"annotations":{"summary":"x"}},
                        {"labels":{"alertname":"Down","instance":"b","severity":"warning"},"startsAt":"2024-01-01T00:00:00Z"}]"#;
        let m2 = m.clone();
        let (status, _) = tokio::task::spawn_blocking(move || {
            call(
                &m2,
                &Principal::anonymous(),
                Method::POST,
                "/api/v2/alerts",
                posted,
            )
        })
        .await
        .expect("join");
        assert_eq!(status, StatusCode::OK);
        let m2 = m.clone();
        let res = tokio::task::spawn_blocking(move || {
            let p = &admin;
            let mut out = Vec::new();
            out.push(call(&m2, p, Method::GET, "/api/v2/alerts", ""));
            out.push(call(&m2, p, Method::GET, "/api/v2/alerts?filter=instance%3D%22a%22", ""));
            let body = r#"{"matchers":[{"name":"instance","value":"a","isRegex":false,"isEqual":true}],
                "startsAt":"2020-01-01T00:00:00Z","endsAt":"2099-01-01T00:00:00Z","createdBy":"ops","comment":"maint"}"#;
            out.push(call(&m2, p, Method::POST, "/api/v2/silences", body));
            out.push(call(&m2, p, Method::GET, "/api/v2/alerts?silenced=false", ""));
            out.push(call(&m2, p, Method::GET, "/api/v2/alerts/groups", ""));
            out.push(call(&m2, p, Method::GET, "/api/v2/status", ""));
            out.push(call(&m2, p, Method::GET, "/api/v1/alerting/history?alertname=Down&limit=1", ""));
            out
        })
        .await
        .expect("join");
        let (s, all) = &res[0];
        assert_eq!(*s, StatusCode::OK);
        let all = all.as_array().expect("list");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0]["status"]["state"], "active");
        assert_eq!(all[0]["receivers"][0]["name"], "hook");
        assert_eq!(all[0]["annotations"]["summary"], "x");
        assert_eq!(all[1]["startsAt"], "2024-01-01T00:00:00Z");
        assert_eq!(all[0]["fingerprint"].as_str().map(str::len), Some(16));
        assert_eq!(res[1].1.as_array().map(Vec::len), Some(1));
        let id = res[2].1["silenceID"].as_str().expect("id").to_owned();
        let unsilenced = res[3].1.as_array().expect("list");
        assert_eq!(unsilenced.len(), 1);
        assert_eq!(unsilenced[0]["labels"]["instance"], "b");
        let groups = res[4].1.as_array().expect("groups");
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0]["labels"]["alertname"], "Down");
        assert_eq!(groups[0]["receiver"]["name"], "hook");
        let silenced = groups[0]["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .find(|a| a["labels"]["instance"] == "a")
            .cloned()
            .expect("a");
        assert_eq!(silenced["status"]["state"], "suppressed");
        assert_eq!(silenced["status"]["silencedBy"][0], id.as_str());
        assert_eq!(res[5].1["cluster"]["status"], "disabled");
        assert!(
            res[5].1["config"]["original"]
                .as_str()
                .is_some_and(|s| s.contains("receivers"))
        );
        let hist = res[6].1["data"].as_array().expect("history");
        assert_eq!(hist.len(), 1);
        assert_eq!(hist[0]["kind"], "firing");

        // Silences: get, tenant isolation, scopes, expire.
        let m2 = m.clone();
        tokio::task::spawn_blocking(move || {
            let admin = Principal::anonymous();
            let (s, one) = call(&m2, &admin, Method::GET, &format!("/api/v2/silence/{id}"), "");
            assert_eq!(s, StatusCode::OK);
            assert_eq!(one["status"]["state"], "active");
            assert_eq!(one["matchers"][0]["name"], "instance");
            let other = principal("other", "read,write,admin");
            let (s, _) = call(&m2, &other, Method::GET, &format!("/api/v2/silence/{id}"), "");
            assert_eq!(s, StatusCode::NOT_FOUND, "another tenant's silence");
            let (s, _) = call(&m2, &other, Method::DELETE, &format!("/api/v2/silence/{id}"), "");
            assert_eq!(s, StatusCode::NOT_FOUND);
            let (s, list) = call(&m2, &other, Method::GET, "/api/v2/alerts", "");
            assert_eq!(s, StatusCode::OK);
            assert_eq!(list.as_array().map(Vec::len), Some(0), "another tenant's alerts");
            let reader = principal("acme", "read");
            let (s, err) = call(&m2, &reader, Method::DELETE, &format!("/api/v2/silence/{id}"), "");
            assert_eq!(s, StatusCode::FORBIDDEN);
            assert!(err["error"].as_str().is_some_and(|e| e.contains("admin")));
            let (s, _) = call(&m2, &reader, Method::POST, "/api/v2/alerts", "[]");
            assert_eq!(s, StatusCode::FORBIDDEN);
            let writer = principal("acme", "write");
            let (s, _) = call(&m2, &writer, Method::GET, "/api/v2/alerts", "");
            assert_eq!(s, StatusCode::FORBIDDEN);
            let (s, _) = call(&m2, &admin, Method::DELETE, &format!("/api/v2/silence/{id}"), "");
            assert_eq!(s, StatusCode::OK);
            let (_, one) = call(&m2, &admin, Method::GET, &format!("/api/v2/silence/{id}"), "");
            assert_eq!(one["status"]["state"], "expired");
            // Bad input.
            for (path, body) in [
                ("/api/v2/alerts", "{not json"),
                ("/api/v2/alerts", r#"[{"labels":{}}]"#),
                ("/api/v2/alerts", r#"[{"labels":{"a":"b"},"startsAt":"yesterday"}]"#),
                ("/api/v2/silences", r#"{"matchers":[],"startsAt":"2020-01-01T00:00:00Z","endsAt":"2099-01-01T00:00:00Z","createdBy":"a","comment":"b"}"#),
            ] {
                let (s, e) = call(&m2, &admin, Method::POST, path, body);
                assert_eq!(s, StatusCode::BAD_REQUEST, "{path} {body}");
                assert!(e.as_str().is_some_and(|e| !e.is_empty()), "message for {body}");
            }
            let (s, e) = call(&m2, &admin, Method::GET, "/api/v2/alerts?filter=%7Bbad", "");
            assert_eq!(s, StatusCode::BAD_REQUEST);
            assert!(e.as_str().is_some_and(|e| e.contains("bad")));
        })
        .await
        .expect("join");
        token.cancel();
        m.stopped().await;
    }
}
