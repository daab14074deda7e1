//! Access control with the collector in-process: bearer tokens carry a tenant and scopes;
//! a missing, wrong or under-scoped token is refused (401/403) and counted; each tenant sees
//! only its own data in every query path; the token file is re-read when it changes.

mod inproc;
mod support;

use inproc::{Server, batch_bytes};
use sonde_common::model::now_ms;
use sonde_common::wire::Compression;
use std::time::Duration;
use support::{encode, http_get, http_request, wait_until};

const ACME_WRITE: &str = "acme-write-token-0001";
const ACME_READ: &str = "acme-read-token-00001";
const GLOBEX_ALL: &str = "globex-all-token-0001";

fn push_as(port: u16, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![
        ("Content-Type", "application/x-sonde-batch"),
        ("Content-Encoding", "zstd"),
    ];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http_request(port, "POST", "/api/v1/push", &headers, body).unwrap()
}

fn get_as(port: u16, token: Option<&str>, path: &str) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    http_request(port, "GET", path, &headers, b"").unwrap()
}

fn count(port: u16, token: &str, q: &str) -> usize {
    let (status, body) = get_as(
        port,
        Some(token),
        &format!("/api/v1/query?query={}", encode(q)),
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["data"]["result"].as_array().unwrap().len()
}

#[test]
fn tokens_scopes_and_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!(
            "{ACME_WRITE} acme write\n{ACME_READ} acme read\n{GLOBEX_ALL} globex read,write,admin\n"
        ),
    )
    .unwrap();
    let server = Server::start(&["--token-file", tokens.to_str().unwrap()]);
    let port = server.port;
    let now = now_ms();
    let acme = batch_bytes(
        &[("orders_total", &[("shop", "a")])],
        now,
        Compression::Zstd,
    );
    let globex = batch_bytes(
        &[("orders_total", &[("shop", "g")]), ("secret", &[])],
        now,
        Compression::Zstd,
    );

    // Probes are open; everything else needs a token.
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(port, "/readyz").unwrap().0, 200);
    let (status, body) = push_as(port, None, &acme);
    assert_eq!(status, 401, "{body}");
    assert_eq!(push_as(port, Some("wrong-token-000000000"), &acme).0, 401);
    let (status, body) = push_as(port, Some(ACME_READ), &acme);
    assert_eq!(
        (status, body.trim()),
        (403, "this token lacks the 'write' scope")
    );
    assert_eq!(push_as(port, Some(ACME_WRITE), &acme).0, 200);
    assert_eq!(push_as(port, Some(GLOBEX_ALL), &globex).0, 200);

    // Query paths: 401 without a token (Prometheus's error shape), 403 without read scope.
    let (status, body) = get_as(port, None, "/api/v1/query?query=up");
    assert_eq!(status, 401);
    assert!(body.contains("\"status\":\"error\""), "{body}");
    assert_eq!(
        get_as(port, Some(ACME_WRITE), "/api/v1/query?query=up").0,
        403
    );
    assert_eq!(get_as(port, None, "/metrics").0, 401);
    assert_eq!(get_as(port, Some(ACME_READ), "/metrics").0, 200);

    // Each tenant sees only its own data, in every query path.
    assert_eq!(count(port, ACME_READ, "orders_total"), 1);
    assert_eq!(count(port, ACME_READ, "secret"), 0);
    assert_eq!(count(port, ACME_READ, "{__name__=~\".+\"}"), 1);
    assert_eq!(
        count(port, ACME_READ, "orders_total{__tenant__=\"globex\"}"),
        0,
        "the tenant label cannot be queried across"
    );
    assert_eq!(count(port, GLOBEX_ALL, "orders_total"), 1);
    let (_, body) = get_as(port, Some(ACME_READ), "/api/v1/label/__name__/values");
    assert!(
        body.contains("orders_total") && !body.contains("secret"),
        "{body}"
    );
    let (_, body) = get_as(
        port,
        Some(ACME_READ),
        "/api/v1/series?match[]=%7Bshop%3D~%22.%2B%22%7D",
    );
    assert!(body.contains("\"a\"") && !body.contains("\"g\""), "{body}");
    let (_, body) = get_as(port, Some(ACME_READ), "/api/v1/labels");
    assert!(!body.contains("__tenant__"), "{body}");
    let (_, body) = get_as(port, Some(ACME_READ), "/");
    assert!(body.contains("orders_total") && !body.contains("secret"));

    // A changed token file takes effect; a broken one is refused and the old tokens stay.
    std::fs::write(&tokens, "not a valid line\n").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        get_as(port, Some(ACME_READ), "/api/v1/labels").0,
        200,
        "old tokens stay in force"
    );
    std::fs::write(&tokens, "rotated-read-token-01 acme read\n").unwrap();
    wait_until(Duration::from_secs(10), "new token accepted", || {
        get_as(port, Some("rotated-read-token-01"), "/api/v1/labels").0 == 200
    });
    assert_eq!(
        get_as(port, Some(ACME_READ), "/api/v1/labels").0,
        401,
        "removed token refused"
    );
    let (_, metrics) = get_as(port, Some("rotated-read-token-01"), "/metrics");
    assert!(
        metrics.contains("sonde_collector_requests_denied_total{reason=\"forbidden\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sonde_collector_token_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sonde_collector_token_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
}

#[test]
fn non_loopback_without_tokens_is_refused() {
    use clap::Parser;
    let cli =
        sonde_collector::cli::Cli::try_parse_from(["sonde-collector", "--listen", "0.0.0.0:0"])
            .unwrap();
    let err = sonde_collector::config::Config::try_from(cli)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--token-file"), "{err}");
}
