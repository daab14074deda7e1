//! Metrics from local applications, through the real agent into the real collector over real
//! sockets. StatsD: exact totals under concurrent senders, the statsd_exporter-style name
//! mapping, timers as histograms in seconds, bad lines counted by reason without losing the good
//! lines of the same packet, and the cardinality limit. Pushed Prometheus text: accepted, or
//! refused with a reason.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`).

#[path = "../../collector/tests/support/mod.rs"]
mod support;

use std::net::UdpSocket;
use std::time::Duration;
use support::{Proc, free_port, http_get, query, sonde_bin, wait_until};

struct Setup {
    collector_port: u16,
    agent_port: u16,
    statsd_port: u16,
    host: String,
    _collector: Proc,
    agent: Proc,
    _dir: tempfile::TempDir,
}

fn setup(extra: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (collector_port, agent_port) = (free_port(), free_port());
    let statsd_port = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let collector = Proc::spawn(
        "collector",
        sonde_bin("sonde-collector"),
        &[
            "--listen",
            &format!("127.0.0.1:{collector_port}"),
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
    );
    wait_until(Duration::from_secs(20), "collector ready", || {
        http_get(collector_port, "/readyz")
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    });
    let host = format!("statsd-{}-{statsd_port}", std::process::id());
    let mut args = vec![
        "--collector".to_string(),
        format!("http://127.0.0.1:{collector_port}"),
        "--interval".into(),
        "500ms".into(),
        "--flush-jitter".into(),
        "0s".into(),
        "--hostname".into(),
        host.clone(),
        "--http-listen".into(),
        format!("127.0.0.1:{agent_port}"),
        "--statsd-listen".into(),
        format!("127.0.0.1:{statsd_port}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Proc::spawn("agent", sonde_bin("sonde-agent"), &args);
    wait_until(Duration::from_secs(20), "agent ready", || {
        http_get(agent_port, "/healthz")
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    });
    Setup {
        collector_port,
        agent_port,
        statsd_port,
        host,
        _collector: collector,
        agent,
        _dir: dir,
    }
}

/// A self-metric's value; a counter with a label that never happened is 0, anything else
/// missing fails the test.
fn agent_metric(port: u16, line_prefix: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").unwrap();
    let found = body
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok());
    match found {
        Some(v) => v,
        None if line_prefix.contains('{') => {
            let family = line_prefix.split('{').next().unwrap();
            assert!(
                body.contains(&format!("# TYPE {family} ")),
                "{family} missing from the agent's metrics"
            );
            0.0
        }
        None => panic!("{line_prefix:?} missing from the agent's metrics:\n{body}"),
    }
}

/// Waits until `q` has exactly `expected` as its latest value (packets reach different
/// flushes), and returns it.
fn eventually(port: u16, q: &str, expected: f64) -> f64 {
    wait_until(Duration::from_secs(20), q, || {
        latest(port, q).filter(|v| *v == expected)
    })
}

fn latest(port: u16, q: &str) -> Option<f64> {
    let data = query(port, q, None);
    data["result"]
        .as_array()
        .filter(|r| r.len() == 1)
        .and_then(|r| r[0]["value"][1].as_str()?.parse().ok())
}

#[test]
fn concurrent_senders_give_exact_totals() {
    let s = setup(&[]);
    const THREADS: usize = 4;
    const PER_THREAD: usize = 5_000;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let port = s.statsd_port;
            scope.spawn(move || {
                let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                for i in 0..PER_THREAD {
                    // Several lines per packet, as clients batch them; pace so the kernel buffer never overflows.
                    let packet = format!(
                        "app.requests:1|c\napp.bytes:{}|c|#thread:t{t}\napp.errors:2|c|@0.5",
                        i % 10
                    );
                    sock.send_to(packet.as_bytes(), ("127.0.0.1", port))
                        .unwrap();
                    if i % 500 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            });
        }
    });
    let total = (THREADS * PER_THREAD) as f64;
    let h = &s.host;
    let got = wait_until(Duration::from_secs(20), "all increments counted", || {
        latest(
            s.collector_port,
            &format!("app_requests_total{{host=\"{h}\"}}"),
        )
        .filter(|v| *v == total)
    });
    assert_eq!(got, total);
    // @0.5 scales each increment of 2 to 4.
    assert_eq!(
        latest(
            s.collector_port,
            &format!("app_errors_total{{host=\"{h}\"}}")
        ),
        Some(total * 4.0)
    );
    let per_thread_bytes: f64 = (0..PER_THREAD).map(|i| (i % 10) as f64).sum();
    for t in 0..THREADS {
        assert_eq!(
            latest(
                s.collector_port,
                &format!("app_bytes_total{{host=\"{h}\",thread=\"t{t}\"}}")
            ),
            Some(per_thread_bytes),
            "thread t{t}"
        );
    }
    assert_eq!(
        agent_metric(s.agent_port, "sonde_agent_statsd_kernel_drops "),
        0.0,
        "the kernel dropped nothing"
    );
    assert!(agent_metric(s.agent_port, "sonde_agent_statsd_packets_total ") >= total);
}

#[test]
fn mapping_histograms_sets_gauges_and_bad_lines() {
    // One reading thread: packets are recorded in the order sent, so which series hits the limit is known.
    let s = setup(&["--statsd-max-series", "6", "--statsd-threads", "1"]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let send = |p: &str| {
        sock.send_to(p.as_bytes(), ("127.0.0.1", s.statsd_port))
            .unwrap();
    };
    // Good and bad lines mixed in one packet: the good ones count.
    send(
        "api.latency:250|ms\nbroken line\napi.latency:1500|ms|@0.5\nx:1|unknown\nqueue.depth:10|g\nqueue.depth:+5|g",
    );
    send("users.online:alice|s\nusers.online:bob|s\nusers.online:alice|s");
    send("page.views:3|c|#env:prod,region:eu");
    // Beyond the 6-series limit: refused, counted.
    send("overflow.a:1|c\noverflow.b:1|c\noverflow.c:1|c");
    let (cp, h) = (s.collector_port, &s.host);
    wait_until(Duration::from_secs(20), "histogram stored", || {
        latest(cp, &format!("api_latency_seconds_count{{host=\"{h}\"}}")).filter(|v| *v == 3.0)
    });
    eventually(
        cp,
        &format!("api_latency_seconds_sum{{host=\"{h}\"}}"),
        0.25 + 2.0 * 1.5,
    );
    eventually(
        cp,
        &format!("api_latency_seconds_bucket{{host=\"{h}\",le=\"0.25\"}}"),
        1.0,
    );
    eventually(
        cp,
        &format!("api_latency_seconds_bucket{{host=\"{h}\",le=\"+Inf\"}}"),
        3.0,
    );
    eventually(cp, &format!("queue_depth{{host=\"{h}\"}}"), 15.0);
    eventually(
        cp,
        &format!("page_views_total{{env=\"prod\",host=\"{h}\",region=\"eu\"}}"),
        3.0,
    );
    // A set's distinct count is reported for the interval it was seen in.
    let set = query(cp, &format!("users_online{{host=\"{h}\"}}[1m]"), None);
    let values: Vec<&str> = set["result"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[1].as_str().unwrap())
        .collect();
    assert_eq!(values.first(), Some(&"2"), "{set}");
    wait_until(Duration::from_secs(10), "bad lines counted", || {
        agent_metric(
            s.agent_port,
            "sonde_agent_statsd_bad_lines_total{reason=\"cardinality_limit\"} ",
        ) > 0.0
    });
    assert_eq!(
        agent_metric(
            s.agent_port,
            "sonde_agent_statsd_bad_lines_total{reason=\"no_value\"} "
        ),
        1.0
    );
    assert_eq!(
        agent_metric(
            s.agent_port,
            "sonde_agent_statsd_bad_lines_total{reason=\"unknown_type\"} "
        ),
        1.0
    );
    // 6 series admitted: api_latency, queue_depth, users_online, page_views, overflow_a, overflow_b.
    assert_eq!(
        agent_metric(
            s.agent_port,
            "sonde_agent_statsd_bad_lines_total{reason=\"cardinality_limit\"} "
        ),
        1.0
    );
    assert_eq!(
        latest(cp, &format!("overflow_c_total{{host=\"{h}\"}}")),
        None,
        "never merged into another series"
    );
    drop(s.agent);
}

#[test]
fn pushed_prometheus_text_is_forwarded_and_bad_text_refused() {
    let s = setup(&[]);
    let text = "# TYPE jobs_done_total counter\njobs_done_total{queue=\"mail\"} 42\n# TYPE temp gauge\ntemp 21.5\n";
    let (status, body) = support::http_request(
        s.agent_port,
        "POST",
        "/api/v1/import/prometheus",
        &[("Content-Type", "text/plain; version=0.0.4")],
        text.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 204, "{body}");
    let (cp, h) = (s.collector_port, &s.host);
    wait_until(Duration::from_secs(20), "pushed counter stored", || {
        latest(
            cp,
            &format!("jobs_done_total{{host=\"{h}\",queue=\"mail\"}}"),
        )
        .filter(|v| *v == 42.0)
    });
    eventually(cp, &format!("temp{{host=\"{h}\"}}"), 21.5);
    let (status, body) = support::http_request(
        s.agent_port,
        "POST",
        "/api/v1/import/prometheus",
        &[],
        b"jobs{ 1\n",
    )
    .unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("line 1"), "{body}");
    assert_eq!(
        agent_metric(
            s.agent_port,
            "sonde_agent_scrape_errors_total{reason=\"push_parse\"} "
        ),
        1.0
    );
}

#[test]
fn unix_datagram_socket_intake() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("statsd.sock");
    let s = setup(&["--statsd-socket", path.to_str().unwrap()]);
    wait_until(Duration::from_secs(10), "socket bound", || path.exists());
    let sock = std::os::unix::net::UnixDatagram::unbound().unwrap();
    for _ in 0..100 {
        sock.send_to(b"uds.hits:1|c", &path).unwrap();
    }
    let (cp, h) = (s.collector_port, &s.host);
    let got = wait_until(Duration::from_secs(20), "counted", || {
        latest(cp, &format!("uds_hits_total{{host=\"{h}\"}}")).filter(|v| *v == 100.0)
    });
    assert_eq!(got, 100.0);
}

/// Serves `body` as a Prometheus text endpoint on 127.0.0.1 until the test ends.
fn metrics_endpoint(body: &'static str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(1000) {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn local_endpoints_are_scraped() {
    let port = metrics_endpoint(
        "# TYPE app_jobs_total counter\napp_jobs_total{queue=\"a\",instance=\"x\"} 7\n# TYPE app_up gauge\napp_up 1\n",
    );
    let url = format!("http://127.0.0.1:{port}/metrics");
    let s = setup(&["--scrape", &url, "--scrape-interval", "300ms"]);
    let (cp, h) = (s.collector_port, &s.host);
    let q = format!(
        "app_jobs_total{{exported_instance=\"x\",host=\"{h}\",instance=\"127.0.0.1:{port}\",job=\"scrape\",queue=\"a\"}}"
    );
    let got = wait_until(Duration::from_secs(20), "scraped counter stored", || {
        latest(cp, &q)
    });
    assert_eq!(got, 7.0);
    eventually(cp, &format!("app_up{{host=\"{h}\",job=\"scrape\"}}"), 1.0);
}
