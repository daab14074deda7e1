//! The alert manager against real peers over 127.0.0.1: a webhook receiver that fails before
//! it succeeds, Prometheus-style clients posting to the v2 API, and a real Prometheus
//! Alertmanager receiving forwarded alerts.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use sonde_collector::alerting::manager::config::{AlertManagerConfig, parse};
use sonde_collector::alerting::manager::{Manager, ManagerOptions, api};
use sonde_collector::alerting::{Alert, AlertSink, LabelMap, now_ms};
use sonde_collector::ingest::auth::Principal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const HOUR: i64 = 3_600_000;

fn alert(name: &str, instance: &str, ends_in_ms: i64) -> Alert {
    let now = now_ms();
    Alert {
        labels: LabelMap::from([
            ("alertname".to_owned(), name.to_owned()),
            ("instance".to_owned(), instance.to_owned()),
        ]),
        annotations: LabelMap::from([("summary".to_owned(), format!("{instance} is down"))]),
        starts_at_ms: now,
        ends_at_ms: now + ends_in_ms,
        generator_url: "http://prometheus/graph".into(),
    }
}

/// A webhook receiver recording what it accepted; its first `fail_first` requests get 500.
#[derive(Clone, Default)]
struct Webhook {
    accepted: Arc<Mutex<Vec<(String, Value)>>>,
    requests: Arc<AtomicUsize>,
    /// When each request arrived.
    arrivals: Arc<Mutex<Vec<std::time::Instant>>>,
}

impl Webhook {
    async fn start(fail_first: usize) -> (Webhook, String) {
        Self::start_with(fail_first, StatusCode::INTERNAL_SERVER_ERROR, None).await
    }

    /// The first `fail_first` requests get `status`, with `Retry-After: retry_after` if given.
    async fn start_with(
        fail_first: usize,
        status: StatusCode,
        retry_after: Option<&'static str>,
    ) -> (Webhook, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let hook = Webhook::default();
        let h = hook.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let h = h.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let h = h.clone();
                        async move {
                            let key = req
                                .headers()
                                .get("idempotency-key")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let n = h.requests.fetch_add(1, Ordering::SeqCst);
                            h.arrivals
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(std::time::Instant::now());
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            if n < fail_first {
                                *resp.status_mut() = status;
                                if let Some(ra) = retry_after {
                                    resp.headers_mut().insert(
                                        "retry-after",
                                        hyper::header::HeaderValue::from_static(ra),
                                    );
                                }
                            } else if let Ok(b) = body {
                                let v = serde_json::from_slice(&b).unwrap_or(Value::Null);
                                let mut acc = h.accepted.lock().unwrap_or_else(|e| e.into_inner());
                                // De-duplicate by idempotency key, as a receiver should.
                                if !acc.iter().any(|(k, _)| *k == key) {
                                    acc.push((key, v));
                                }
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (hook, url)
    }

    fn accepted(&self) -> Vec<(String, Value)> {
        self.accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn webhook_config(url: &str) -> AlertManagerConfig {
    parse(&format!(
        "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 100ms\n  group_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: {url}\n"
    ))
    .expect("config")
}

fn open(cfg: AlertManagerConfig) -> (Manager, CancellationToken, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = CancellationToken::new();
    let m = Manager::open(
        ManagerOptions {
            dir: dir.path().to_owned(),
            config: Some(cfg),
            external_url: "http://sonde.test:9090".into(),
        },
        token.clone(),
    )
    .expect("open");
    (m, token, dir)
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop(m: Manager, token: CancellationToken) {
    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), m.stopped())
        .await
        .expect("the manager stops");
}

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn call(c: &TestClient, method: &str, url: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("answer in time")
        .expect("request");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_failing_webhook_gets_the_notification_exactly_once_after_retries() {
    let (hook, url) = Webhook::start(4).await;
    let (m, token, _dir) = open(webhook_config(&url));
    m.send("", vec![alert("Down", "a", HOUR), alert("Down", "b", HOUR)]);
    wait_for("delivery", 15, || !hook.accepted().is_empty()).await;
    // Nothing more arrives once it was delivered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hook.requests.load(Ordering::SeqCst),
        5,
        "four 500s, then one 200"
    );
    let got = hook.accepted();
    assert_eq!(got.len(), 1);
    let (key, body) = &got[0];
    assert_eq!(body["idempotencyKey"].as_str(), Some(key.as_str()));
    assert_eq!(body["version"], "4");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["receiver"], "hook");
    assert_eq!(body["externalURL"], "http://sonde.test:9090");
    assert_eq!(body["alerts"].as_array().map(Vec::len), Some(2));
    stop(m, token).await;
}

#[tokio::test]
async fn retry_after_of_a_429_is_honoured() {
    let (hook, url) = Webhook::start_with(1, StatusCode::TOO_MANY_REQUESTS, Some("1")).await;
    let (m, token, _dir) = open(webhook_config(&url));
    m.send("", vec![alert("Down", "a", HOUR)]);
    wait_for("delivery", 15, || !hook.accepted().is_empty()).await;
    let arrivals = hook
        .arrivals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1] - arrivals[0];
    assert!(
        gap >= Duration::from_millis(950),
        "retried after {gap:?}, before Retry-After"
    );
    stop(m, token).await;
}

#[tokio::test]
async fn a_hundred_alerts_of_one_group_give_one_notification() {
    let (hook, url) = Webhook::start(0).await;
    let (m, token, _dir) = open(webhook_config(&url));
    let alerts: Vec<Alert> = (0..100)
        .map(|i| alert("HighLatency", &format!("host-{i}"), HOUR))
        .collect();
    for chunk in alerts.chunks(10) {
        m.send("", chunk.to_vec());
    }
    wait_for("delivery", 10, || !hook.accepted().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(hook.requests.load(Ordering::SeqCst), 1);
    let body = &hook.accepted()[0].1;
    assert_eq!(body["alerts"].as_array().map(Vec::len), Some(100));
    assert_eq!(body["groupLabels"]["alertname"], "HighLatency");
    assert_eq!(body["commonLabels"]["alertname"], "HighLatency");
    stop(m, token).await;
}

/// Serves the manager's API on 127.0.0.1 as the server would (anonymous principal).
async fn serve_api(m: Manager) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let m = m.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let m = m.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            api::handle(&m, &Principal::anonymous(), req).await,
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    base
}

#[tokio::test]
async fn prometheus_style_clients_post_alerts_and_manage_silences_over_http() {
    let (hook, url) = Webhook::start(0).await;
    let (m, token, _dir) = open(webhook_config(&url));
    let base = serve_api(m.clone()).await;
    let c = client();
    let posted = r#"[{"labels":{"alertname":"Posted","instance":"x"},"annotations":{"summary":"s"},"generatorURL":"http://prom/x"}]"#;
    let (s, _) = call(&c, "POST", &format!("{base}/api/v2/alerts"), posted).await;
    assert_eq!(s, StatusCode::OK);
    let (s, list) = call(&c, "GET", &format!("{base}/api/v2/alerts"), "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list[0]["labels"]["alertname"], "Posted");
    wait_for("webhook", 10, || !hook.accepted().is_empty()).await;
    let sent = &hook.accepted()[0].1;
    // Posted without endsAt: shown as Alertmanager's zero time.
    assert_eq!(sent["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(sent["alerts"][0]["generatorURL"], "http://prom/x");

    let silence = r#"{"matchers":[{"name":"alertname","value":"Posted","isRegex":false}],"startsAt":"2020-01-01T00:00:00Z","endsAt":"2099-01-01T00:00:00Z","createdBy":"amtool","comment":"test"}"#;
    let (s, created) = call(&c, "POST", &format!("{base}/api/v2/silences"), silence).await;
    assert_eq!(s, StatusCode::OK);
    let id = created["silenceID"].as_str().expect("id").to_owned();
    let (_, list) = call(&c, "GET", &format!("{base}/api/v2/alerts"), "").await;
    assert_eq!(list[0]["status"]["state"], "suppressed");
    assert_eq!(list[0]["status"]["silencedBy"][0], id.as_str());
    let (s, _) = call(&c, "DELETE", &format!("{base}/api/v2/silence/{id}"), "").await;
    assert_eq!(s, StatusCode::OK);
    let (_, list) = call(&c, "GET", &format!("{base}/api/v2/alerts"), "").await;
    assert_eq!(list[0]["status"]["state"], "active");
    let big = "x".repeat(2 << 20);
    let (s, _) = call(&c, "POST", &format!("{base}/api/v2/alerts"), &big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, hist) = call(
        &c,
        "GET",
        &format!("{base}/api/v1/alerting/history?alertname=Posted"),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let kinds: Vec<&str> = hist["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"sent") && kinds.contains(&"firing"),
        "{kinds:?}"
    );
    stop(m, token).await;
}

/// Kills the Alertmanager by its PID when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

#[tokio::test]
async fn alerts_are_forwarded_to_a_real_alertmanager() {
    if !std::path::Path::new(ALERTMANAGER).exists() {
        eprintln!("skipped: {ALERTMANAGER} is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let am_config = dir.path().join("alertmanager.yml");
    std::fs::write(
        &am_config,
        "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
    )
    .expect("write");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let child = std::process::Command::new(ALERTMANAGER)
        .arg(format!("--config.file={}", am_config.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start alertmanager");
    let _guard = Child(child);
    let base = format!("http://127.0.0.1:{port}");
    let c = client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let req = Request::get(format!("{base}/-/ready"))
            .body(Full::new(Bytes::new()))
            .expect("req");
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), c.request(req)).await
            && r.status() == StatusCode::OK
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alertmanager did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let cfg = parse(&format!(
        "route:\n  receiver: am\n  group_wait: 0s\n  group_interval: 1h\nreceivers:\n  - name: am\n    alertmanager_configs:\n      - url: {base}\n"
    ))
    .expect("config");
    let (m, token, _state) = open(cfg);
    m.send("", vec![alert("ForwardedAlert", "db-1", HOUR)]);
    let mut found = Value::Null;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while found.is_null() {
        let (_, list) = call(&c, "GET", &format!("{base}/api/v2/alerts"), "").await;
        if let Some(a) = list.as_array().and_then(|l| {
            l.iter()
                .find(|a| a["labels"]["alertname"] == "ForwardedAlert")
        }) {
            found = a.clone();
        } else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the alert never reached the Alertmanager: {list}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(found["labels"]["instance"], "db-1");
    assert_eq!(found["annotations"]["summary"], "db-1 is down");
    assert_eq!(found["status"]["state"], "active");
    assert_eq!(found["generatorURL"], "http://prometheus/graph");

    // Resolving it here resolves it there.
    let mut resolved = alert("ForwardedAlert", "db-1", HOUR);
    resolved.ends_at_ms = now_ms() - 1;
    m.send("", vec![resolved]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, list) = call(&c, "GET", &format!("{base}/api/v2/alerts?active=true"), "").await;
        let still = list.as_array().is_some_and(|l| {
            l.iter()
                .any(|a| a["labels"]["alertname"] == "ForwardedAlert")
        });
        if !still {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the Alertmanager never saw the alert resolve: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(m, token).await;
}
