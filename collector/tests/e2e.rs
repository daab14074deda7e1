//! End to end with real processes on 127.0.0.1: the real agent pushes this host's metrics to
//! the real collector; the test reads them back through the query API, checks them against
//! /proc, kills the collector with SIGKILL, restarts it on the same data directory, and checks
//! that every sample acknowledged before the kill is still there.
//!
//! Needs both binaries built: `cargo build --workspace --bins && cargo test --workspace`.

mod support;

use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use support::{Proc, free_port, http_get, query, sonde_bin, wait_until};

fn mem_total_bytes() -> f64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap();
    let kb: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024.0
}

fn start_collector(port: u16, data: &std::path::Path) -> Proc {
    let p = Proc::spawn(
        "collector",
        sonde_bin("sonde-collector"),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            data.to_str().unwrap(),
            "--drain-timeout",
            "5s",
        ],
    );
    wait_until(Duration::from_secs(20), "collector ready", || {
        http_get(port, "/readyz")
            .map(|(status, _)| status == 200)
            .unwrap_or(false)
    });
    p
}

/// Every (series, timestamp, value) of `host` stored at or before `at_s`, as a set.
fn stored_samples(port: u16, host: &str, at_s: f64) -> BTreeSet<(String, i64, String)> {
    let q = format!("{{host=\"{host}\"}}[1h]");
    let data = query(port, &q, Some(at_s));
    assert_eq!(data["resultType"], "matrix", "{data}");
    let mut out = BTreeSet::new();
    for series in data["result"].as_array().unwrap() {
        let key = series["metric"].to_string();
        for v in series["values"].as_array().unwrap() {
            let ts = (v[0].as_f64().unwrap() * 1000.0).round() as i64;
            out.insert((key.clone(), ts, v[1].as_str().unwrap().to_owned()));
        }
    }
    out
}

fn agent_samples_sent(port: u16) -> u64 {
    let (status, body) = http_get(port, "/metrics").expect("agent metrics");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix("sonde_agent_samples_sent_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("sonde_agent_samples_sent_total in agent metrics")
}

#[test]
fn agent_to_collector_survives_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let agent_port = free_port();
    let host = format!("e2e-{}", std::process::id());
    let mut collector = start_collector(port, data.path());
    let mut agent = Proc::spawn(
        "agent",
        sonde_bin("sonde-agent"),
        &[
            "--collector",
            &format!("http://127.0.0.1:{port}"),
            "--interval",
            "500ms",
            "--hostname",
            &host,
            "--http-listen",
            &format!("127.0.0.1:{agent_port}"),
            "--push-backoff",
            "100ms",
            "--push-max-backoff",
            "1s",
            "--statsd-listen",
            "",
        ],
    );

    // The host's metrics become queryable, with values that match /proc.
    let mem_query = format!("node_memory_MemTotal_bytes{{host=\"{host}\"}}");
    let mem = wait_until(Duration::from_secs(30), "memory series queryable", || {
        let data = query(port, &mem_query, None);
        data["result"]
            .as_array()
            .filter(|r| !r.is_empty())
            .map(|r| r[0].clone())
    });
    let value: f64 = mem["value"][1].as_str().unwrap().parse().unwrap();
    assert_eq!(
        value,
        mem_total_bytes(),
        "MemTotal must equal /proc/meminfo's"
    );
    assert_eq!(mem["metric"]["__name__"], "node_memory_MemTotal_bytes");

    let cpu_query = format!("node_cpu_seconds_total{{host=\"{host}\",cpu=\"0\",mode=\"idle\"}}");
    let cpu = query(port, &cpu_query, None);
    let idle: f64 = cpu["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        idle > 0.0 && idle <= uptime + 1.0,
        "cpu0 idle seconds {idle} must be in (0, uptime {uptime}]"
    );
    let avail = query(
        port,
        &format!("node_memory_MemAvailable_bytes{{host=\"{host}\"}}"),
        None,
    );
    let avail: f64 = avail["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(avail > 0.0 && avail <= mem_total_bytes());

    // The metadata endpoints see the same series.
    let (status, body) = http_get(port, "/api/v1/label/host/values").unwrap();
    assert_eq!(status, 200);
    let values: Value = serde_json::from_str(&body).unwrap();
    assert!(
        values["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == host.as_str()),
        "{body}"
    );
    // Each family's type, as the agent declared it.
    let (status, body) = http_get(port, "/api/v1/metadata").unwrap();
    assert_eq!(status, 200, "{body}");
    let meta: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        meta["data"]["node_cpu_seconds_total"][0]["type"], "counter",
        "{body}"
    );
    assert_eq!(
        meta["data"]["node_memory_MemTotal_bytes"][0]["type"],
        "gauge"
    );
    let (_, body) = http_get(port, "/api/v1/metadata?metric=node_load1").unwrap();
    let one: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(one["data"].as_object().unwrap().len(), 1, "{body}");

    // Let a few more batches land, then kill the collector without warning.
    wait_until(
        Duration::from_secs(30),
        "agent delivered several batches",
        || (agent_samples_sent(agent_port) > 300).then_some(()),
    );
    let acked_by_agent = agent_samples_sent(agent_port);
    let kill_at_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let before = stored_samples(port, &host, kill_at_s);
    collector.kill();
    assert!(
        before.len() as u64 >= acked_by_agent,
        "stored {} < acknowledged {acked_by_agent}",
        before.len()
    );

    // While the collector is down the agent keeps collecting and buffering.
    std::thread::sleep(Duration::from_millis(1500));
    let mut collector = start_collector(port, data.path());
    let after = stored_samples(port, &host, kill_at_s);
    let lost: Vec<_> = before.difference(&after).take(5).collect();
    assert!(
        lost.is_empty(),
        "{} of {} samples acknowledged before SIGKILL are missing after restart, e.g. {lost:?}",
        before.difference(&after).count(),
        before.len()
    );

    // The agent's buffer drains into the restarted collector.
    let sent_before_restart = agent_samples_sent(agent_port);
    wait_until(Duration::from_secs(30), "agent delivers again", || {
        (agent_samples_sent(agent_port) > sent_before_restart).then_some(())
    });

    // Both stop cleanly on SIGTERM.
    assert!(
        agent.terminate(Duration::from_secs(15)).success(),
        "agent exit status"
    );
    assert!(
        collector.terminate(Duration::from_secs(15)).success(),
        "collector exit status"
    );
}

/// The agent authenticates with a token file; its data lands in the token's tenant.
#[test]
fn agent_pushes_into_its_tokens_tenant() {
    let data = tempfile::tempdir().unwrap();
    let (port, agent_port) = (free_port(), free_port());
    let tokens = data.path().join("tokens");
    std::fs::write(&tokens, "agent-token-000000001 blue write\nreader-token-00000001 blue read\nother-token-000000001 red read\n").unwrap();
    let agent_token = data.path().join("agent-token");
    std::fs::write(&agent_token, "agent-token-000000001\n").unwrap();
    let store = data.path().join("store");
    let _collector = Proc::spawn(
        "collector",
        sonde_bin("sonde-collector"),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            store.to_str().unwrap(),
            "--token-file",
            tokens.to_str().unwrap(),
        ],
    );
    wait_until(Duration::from_secs(20), "collector ready", || {
        http_get(port, "/readyz")
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    });
    let host = format!("e2e-auth-{}", std::process::id());
    let _agent = Proc::spawn(
        "agent",
        sonde_bin("sonde-agent"),
        &[
            "--collector",
            &format!("http://127.0.0.1:{port}"),
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
            "--token-file",
            agent_token.to_str().unwrap(),
        ],
    );
    let q = format!(
        "/api/v1/query?query={}",
        support::encode(&format!("node_load1{{host=\"{host}\"}}"))
    );
    let as_reader = |token: &str| {
        support::http_request(
            port,
            "GET",
            &q,
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
        .unwrap()
    };
    wait_until(
        Duration::from_secs(20),
        "agent's data visible to its tenant",
        || {
            as_reader("reader-token-00000001")
                .1
                .contains("\"node_load1\"")
        },
    );
    let (status, body) = as_reader("other-token-000000001");
    assert_eq!(status, 200);
    assert!(
        !body.contains("node_load1"),
        "another tenant sees nothing: {body}"
    );
}
