//! The push endpoint against bad input, with the collector running in-process on port 0:
//! every kind of bad request gets its status and a reason, is counted by reason, and loses
//! nothing else (a good batch before and after is stored and queryable).

mod inproc;
mod support;

use inproc::{Server, batch_bytes, push};

use sonde_common::model::now_ms;
use sonde_common::wire::Compression;
use support::{http_get, http_request, query};

const CT: &str = "application/x-sonde-batch";

#[test]
fn bad_input_is_refused_with_a_reason_and_loses_nothing_else() {
    let server = Server::start(&["--max-body-bytes", "100000"]);
    let port = server.port;
    let now = now_ms();

    let good = batch_bytes(
        &[("before_total", &[("host", "a")])],
        now,
        Compression::Zstd,
    );
    assert_eq!(push(port, &good, CT, "zstd").0, 200);

    // Wrong media type and encoding: 415.
    let (status, body) = push(port, &good, "application/json", "zstd");
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("Content-Type"), "{body}");
    assert_eq!(push(port, &good, CT, "gzip").0, 415);
    // Declared encoding disagrees with the envelope: 400.
    let (status, body) = push(port, &good, CT, "lz4");
    assert_eq!(status, 400);
    assert!(body.contains("envelope says 'zstd'"), "{body}");

    // Garbage, truncation, corruption: 400 with the cause.
    let (status, body) = push(port, b"definitely not a batch", CT, "zstd");
    assert_eq!(
        (status, body.trim()),
        (400, "not a Sonde batch: bad magic bytes")
    );
    assert_eq!(push(port, &good[..good.len() - 3], CT, "zstd").0, 400);
    let mut corrupt = good.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    let (status, body) = push(port, &corrupt, CT, "zstd");
    assert_eq!(status, 400);
    assert!(body.contains("checksum mismatch"), "{body}");

    // A newer format version says so.
    let mut newer = good.clone();
    newer[4] = 9;
    let (status, body) = push(port, &newer, CT, "zstd");
    assert_eq!(status, 400);
    assert!(body.contains("version 9 is not supported"), "{body}");

    // Oversized body: 413, refused by Content-Length before reading.
    let (status, body) = push(port, &vec![0u8; 200_000], CT, "zstd");
    assert_eq!(status, 413, "{body}");
    // A decoded size over the limit: 413.
    let mut bomb = good.clone();
    bomb[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(push(port, &bomb, CT, "zstd").0, 413);

    // Invalid names: 400 naming the series; the valid series in the same batch is not stored.
    let bad = batch_bytes(
        &[
            ("half_stored", &[("host", "a")]),
            ("cpu_seconds_total", &[("1x", "v")]),
        ],
        now,
        Compression::Lz4,
    );
    let (status, body) = push(port, &bad, CT, "lz4");
    assert_eq!(status, 400);
    assert_eq!(
        body.trim(),
        "label name '1x' in series 'cpu_seconds_total' is invalid: must match [a-zA-Z_][a-zA-Z0-9_]*"
    );

    // Samples from the far future or past: 400 naming the series.
    let future = batch_bytes(
        &[("clock_skew", &[("host", "a")])],
        now + 3_600_000,
        Compression::None,
    );
    let (status, body) = push(port, &future, CT, "identity");
    assert_eq!(status, 400);
    assert!(
        body.contains("clock_skew{host=\"a\"}") && body.contains("future"),
        "{body}"
    );
    let old = batch_bytes(&[("ancient", &[])], now - 7 * 86_400_000, Compression::None);
    assert!(push(port, &old, CT, "identity").1.contains("too old"));

    // Nothing else was lost: the good batch before, and one after, are both there; the
    // rejected batch's valid series is not.
    let after = batch_bytes(&[("after_total", &[("host", "a")])], now, Compression::None);
    assert_eq!(push(port, &after, CT, "identity").0, 200);
    for (q, n) in [("before_total", 1), ("after_total", 1), ("half_stored", 0)] {
        let data = query(port, q, None);
        assert_eq!(data["result"].as_array().unwrap().len(), n, "{q}: {data}");
    }

    // Every refusal is counted by reason.
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    for line in [
        "sonde_collector_batches_received_total 2",
        "sonde_collector_batches_rejected_total{reason=\"unsupported_media_type\"} 2",
        "sonde_collector_batches_rejected_total{reason=\"malformed\"} 3",
        "sonde_collector_batches_rejected_total{reason=\"checksum\"} 1",
        "sonde_collector_batches_rejected_total{reason=\"unsupported_version\"} 1",
        "sonde_collector_batches_rejected_total{reason=\"too_large\"} 2",
        "sonde_collector_batches_rejected_total{reason=\"invalid_label_name\"} 1",
        "sonde_collector_samples_rejected_total{reason=\"invalid_label_name\"} 2",
        "sonde_collector_batches_rejected_total{reason=\"too_new\"} 1",
        "sonde_collector_batches_rejected_total{reason=\"too_old\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing '{line}' in:\n{metrics}"
        );
    }
}

#[test]
fn retried_batch_is_idempotent() {
    let server = Server::start(&[]);
    let now = now_ms();
    let body = batch_bytes(
        &[("retried_total", &[("host", "a")])],
        now,
        Compression::Zstd,
    );
    for _ in 0..3 {
        assert_eq!(push(server.port, &body, CT, "zstd").0, 200);
    }
    let data = query(server.port, "retried_total[1h]", None);
    let values = data["result"][0]["values"].as_array().unwrap();
    assert_eq!(values.len(), 1, "{data}");
    // The same samples in a new batch (another sequence number) are duplicates at the store.
    let again = batch_bytes(
        &[("retried_total", &[("host", "a")])],
        now,
        Compression::Zstd,
    );
    assert_eq!(push(server.port, &again, CT, "zstd").0, 200);
    let (_, metrics) = http_get(server.port, "/metrics").unwrap();
    for line in [
        "sonde_collector_duplicate_batches_total 2",
        "sonde_collector_samples_dropped_total{reason=\"duplicate_batch\"} 2",
        "sonde_collector_samples_dropped_total{reason=\"duplicate\"} 1",
        "sonde_collector_batches_received_total 2",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing '{line}' in:\n{metrics}"
        );
    }
}

#[test]
fn query_api_shapes_and_errors_match_prometheus() {
    let server = Server::start(&[]);
    let port = server.port;
    let now = (now_ms() / 1000) * 1000;
    let body = batch_bytes(
        &[
            ("up", &[("job", "node"), ("instance", "a:1")]),
            ("up", &[("job", "db"), ("instance", "b:2")]),
        ],
        now,
        Compression::Zstd,
    );
    assert_eq!(push(port, &body, CT, "zstd").0, 200);
    let t = now as f64 / 1000.0;

    let data = query(port, "up{job=~\"no.*\"}", Some(t));
    assert_eq!(data["resultType"], "vector");
    assert_eq!(
        data["result"],
        // Whole seconds are written as integers, as Prometheus does.
        serde_json::json!([{"metric": {"__name__": "up", "instance": "a:1", "job": "node"}, "value": [now / 1000, "42"]}])
    );
    assert_eq!(
        query(port, "up{job!=\"node\"}", Some(t))["result"][0]["metric"]["job"],
        "db"
    );
    // Outside the 5-minute lookback nothing is returned.
    assert_eq!(
        query(port, "up", Some(t + 301.0))["result"],
        serde_json::json!([])
    );
    assert_eq!(
        query(port, "up offset 1m", Some(t + 60.0))["result"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        query(port, "1+1", Some(t))["result"],
        serde_json::json!([now / 1000, "2"])
    );

    let (status, body) = http_get(
        port,
        &format!(
            "/api/v1/query_range?query=up&start={}&end={}&step=15",
            t - 30.0,
            t + 30.0
        ),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["resultType"], "matrix");
    let points = v["data"]["result"][0]["values"].as_array().unwrap();
    assert_eq!(
        points.len(),
        3,
        "steps at t, t+15, t+30 see the sample: {body}"
    );

    let (status, body) = http_get(port, "/api/v1/series?match[]=up").unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2, "{body}");
    let (_, body) = http_get(port, "/api/v1/labels").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["data"],
        serde_json::json!(["__name__", "instance", "job"])
    );
    let (_, body) = http_get(port, "/api/v1/label/__name__/values").unwrap();
    assert!(body.contains("\"up\""), "{body}");

    // POST with a form body, as Grafana sends it.
    let form = format!("query=up&time={t}");
    let (status, body) = http_request(
        port,
        "POST",
        "/api/v1/query",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"resultType\":\"vector\""));

    // Errors have Prometheus's shape.
    for path in [
        "/api/v1/query?query=up%7B",
        "/api/v1/series",
        "/api/v1/query_range?query=up&start=x&end=1&step=1",
        "/api/v1/query?query=rate(up%5B5m%3A1m%5D)",
    ] {
        let (status, body) = http_get(port, path).unwrap();
        assert_eq!(status, 400, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "error", "{body}");
        assert_eq!(v["errorType"], "bad_data", "{body}");
        assert!(!v["error"].as_str().unwrap().is_empty());
    }
}

/// The value of an unlabelled self-metric.
fn self_metric(port: u16, name: &str) -> f64 {
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}

#[test]
fn repeated_range_queries_come_from_the_results_cache_until_a_late_sample_arrives() {
    let server = Server::start(&[]);
    let port = server.port;
    let now = (now_ms() / 60_000) * 60_000;
    for minutes in [20, 15, 10, 5, 0] {
        let body = batch_bytes(
            &[("up", &[("job", "node")])],
            now - minutes * 60_000,
            Compression::Zstd,
        );
        assert_eq!(push(port, &body, CT, "zstd").0, 200);
    }
    let range = |extra: &str| {
        let (status, body) = http_get(
            port,
            &format!(
                "/api/v1/query_range?query=up&start={}&end={}&step=60{extra}",
                (now - 30 * 60_000) / 1000,
                now / 1000
            ),
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        body
    };
    let cached = || self_metric(port, "sonde_query_cache_steps_cached_total");
    let first = range("");
    assert_eq!(cached(), 0.0);
    // The steps up to five minutes before the first query came from the cache, with the
    // same answer.
    assert_eq!(range(""), first);
    assert!(cached() >= 25.0, "{}", cached());
    let before = cached();
    assert_eq!(range("&nocache=1"), first);
    assert_eq!(cached(), before, "nocache=1 bypasses the cache");
    // A late sample (a new series 25 minutes back) invalidates what was kept.
    let late = batch_bytes(
        &[("up", &[("job", "late")])],
        now - 25 * 60_000,
        Compression::Zstd,
    );
    assert_eq!(push(port, &late, CT, "zstd").0, 200);
    let after = range("");
    assert!(after.contains("\"late\""), "{after}");
    assert_eq!(
        cached(),
        before,
        "nothing kept before the late sample is used"
    );
}
