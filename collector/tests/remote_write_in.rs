//! Prometheus remote write 1.0 into the collector (`POST /api/v1/write`): a hand-made request,
//! bad requests refused with a reason, the real Prometheus (Debian's `prometheus`) pushing its
//! own metrics to us, and the per-tenant rate limit.

mod inproc;
mod support;

use inproc::{Server, batch_bytes, push};
use sonde_common::model::now_ms;
use sonde_common::remote_write::{self, Label, Sample, TimeSeries, WriteRequest};
use sonde_common::wire::Compression;
use std::time::Duration;
use support::{Proc, free_port, http_get, http_request, query, wait_until};

fn write(port: u16, body: &[u8], ctype: &str) -> (u16, String) {
    http_request(
        port,
        "POST",
        "/api/v1/write",
        &[
            ("Content-Type", ctype),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        body,
    )
    .unwrap()
}

fn series(name: &str, labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
    TimeSeries {
        labels: std::iter::once(("__name__", name))
            .chain(labels.iter().copied())
            .map(|(n, v)| Label {
                name: n.into(),
                value: v.into(),
            })
            .collect(),
        samples: samples
            .iter()
            .map(|&(timestamp, value)| Sample { timestamp, value })
            .collect(),
    }
}

#[test]
fn remote_write_requests_are_stored_or_refused_with_a_reason() {
    let server = Server::start(&[]);
    let port = server.port;
    let now = (now_ms() / 1000) * 1000;
    let req = WriteRequest {
        timeseries: vec![
            series(
                "rw_requests_total",
                &[("zone", "b"), ("app", "x")],
                &[(now - 2000, 1.0), (now - 1000, 5.0)],
            ),
            series("rw_temp", &[], &[(now, -3.5)]),
        ],
    };
    let (status, body) = write(port, &remote_write::encode(&req), "application/x-protobuf");
    assert_eq!(status, 204, "{body}");
    let data = query(port, "rw_requests_total[1h]", Some(now as f64 / 1000.0));
    assert_eq!(
        data["result"][0]["metric"],
        serde_json::json!({"__name__": "rw_requests_total", "app": "x", "zone": "b"})
    );
    assert_eq!(data["result"][0]["values"].as_array().unwrap().len(), 2);
    assert_eq!(
        query(port, "rw_temp", Some(now as f64 / 1000.0))["result"][0]["value"][1],
        "-3.5"
    );

    assert_eq!(
        write(port, &remote_write::encode(&req), "application/json").0,
        415
    );
    let (status, body) = write(port, b"\x05not snappy at all", "application/x-protobuf");
    assert_eq!(status, 400, "{body}");
    let nameless = WriteRequest {
        timeseries: vec![TimeSeries {
            labels: vec![Label {
                name: "job".into(),
                value: "x".into(),
            }],
            samples: vec![Sample {
                timestamp: now,
                value: 1.0,
            }],
        }],
    };
    let (status, body) = write(
        port,
        &remote_write::encode(&nameless),
        "application/x-protobuf",
    );
    assert_eq!(status, 400);
    assert!(body.contains("without a metric name"), "{body}");
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert!(
        metrics
            .contains("sonde_collector_batches_rejected_total{reason=\"missing_metric_name\"} 1"),
        "{metrics}"
    );
}

#[test]
fn real_prometheus_pushes_to_sonde() {
    let Ok(prometheus) = which("prometheus") else {
        panic!(
            "prometheus not found: install Debian's prometheus package (the README's test command does)"
        );
    };
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let prom_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['127.0.0.1:{prom_port}']\nremote_write:\n  - url: http://127.0.0.1:{}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n",
            server.port
        ),
    )
    .unwrap();
    let _prom = Proc::spawn(
        "prometheus",
        prometheus,
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{prom_port}"),
            "--log.level=warn",
        ],
    );
    let data = wait_until(
        Duration::from_secs(60),
        "Prometheus's samples in Sonde",
        || {
            let d = query(server.port, "up{job=\"self\"}", None);
            d["result"]
                .as_array()
                .filter(|r| !r.is_empty())
                .map(|_| d.clone())
        },
    );
    assert_eq!(
        data["result"][0]["metric"]["instance"],
        format!("127.0.0.1:{prom_port}")
    );
    assert_eq!(data["result"][0]["value"][1], "1");
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.exists())
        .ok_or(())
}

#[test]
fn tenant_rate_limit_answers_429_with_retry_after() {
    let server = Server::start(&["--tenant-samples-per-second", "10"]);
    let now = now_ms();
    let many: Vec<(String, Vec<(&str, &str)>)> =
        (0..30).map(|i| (format!("m{i}"), vec![])).collect();
    let refs: Vec<(&str, &[(&str, &str)])> = many
        .iter()
        .map(|(n, l)| (n.as_str(), l.as_slice()))
        .collect();
    let body = batch_bytes(&refs, now, Compression::Zstd);
    assert_eq!(
        push(server.port, &body, "application/x-sonde-batch", "zstd").0,
        200,
        "the first burst passes (into debt)"
    );
    let second = batch_bytes(&refs, now + 1, Compression::Zstd);
    let (status, reply) = http_request(
        server.port,
        "POST",
        "/api/v1/push",
        &[
            ("Content-Type", "application/x-sonde-batch"),
            ("Content-Encoding", "zstd"),
        ],
        &second,
    )
    .unwrap();
    assert_eq!(status, 429, "{reply}");
    let raw = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        write!(s, "POST /api/v1/push HTTP/1.0\r\nContent-Type: application/x-sonde-batch\r\nContent-Encoding: zstd\r\nContent-Length: {}\r\n\r\n", second.len()).unwrap();
        s.write_all(&second).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    // 30 samples against a burst of 20 left the bucket 10 samples (1 s) in debt.
    assert!(
        raw.to_ascii_lowercase().contains("retry-after: 1\r\n"),
        "{raw}"
    );
}
