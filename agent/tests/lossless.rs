//! Nothing collected is lost: the real agent keeps what it collects while the real collector is
//! killed (SIGKILL) and delivers all of it once the collector is back; and with `--spool-dir`,
//! what is undelivered at shutdown survives an agent restart.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`).

#[path = "../../collector/tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;
use support::{Proc, free_port, http_get, query, sonde_bin, wait_until};

fn start_collector(port: u16, dir: &std::path::Path) -> Proc {
    let p = Proc::spawn(
        "collector",
        sonde_bin("sonde-collector"),
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            dir.to_str().unwrap(),
        ],
    );
    wait_until(Duration::from_secs(20), "collector ready", || {
        http_get(port, "/readyz")
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    });
    p
}

fn start_agent(collector_port: u16, agent_port: u16, host: &str, extra: &[&str]) -> Proc {
    let interval = extra
        .iter()
        .position(|a| *a == "--interval")
        .and_then(|i| extra.get(i + 1))
        .unwrap_or(&"300ms");
    let extra: Vec<&str> = match extra.iter().position(|a| *a == "--interval") {
        Some(i) => [&extra[..i], extra.get(i + 2..).unwrap_or_default()].concat(),
        None => extra.to_vec(),
    };
    let mut args = vec![
        "--collector".to_string(),
        format!("http://127.0.0.1:{collector_port}"),
        "--interval".into(),
        interval.to_string(),
        "--flush-jitter".into(),
        "0s".into(),
        "--hostname".into(),
        host.into(),
        "--http-listen".into(),
        format!("127.0.0.1:{agent_port}"),
        "--statsd-listen".into(),
        "".into(),
        "--push-backoff".into(),
        "50ms".into(),
        "--push-max-backoff".into(),
        "500ms".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proc::spawn("agent", sonde_bin("sonde-agent"), &args);
    wait_until(Duration::from_secs(20), "agent ready", || {
        http_get(agent_port, "/healthz")
            .map(|(s, _)| s == 200)
            .unwrap_or(false)
    });
    p
}

/// The agent's self-metrics as (line prefix before the value) -> value.
fn agent_metrics(port: u16) -> BTreeMap<String, f64> {
    let (_, body) = http_get(port, "/metrics").unwrap();
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            l.rsplit_once(' ')
                .and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        })
        .collect()
}

fn sum_prefix(m: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

/// Every sample stored for `host` (all series), as a count.
fn stored(port: u16, host: &str) -> u64 {
    let data = query(port, &format!("{{host=\"{host}\"}}[1h]"), None);
    data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["values"].as_array().unwrap().len() as u64)
        .sum()
}

#[test]
fn every_sample_collected_during_a_collector_outage_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (cport, aport) = (free_port(), free_port());
    let host = format!("lossless-{}-{cport}", std::process::id());
    let mut collector = start_collector(cport, dir.path());
    let _agent = start_agent(cport, aport, &host, &[]);
    wait_until(Duration::from_secs(20), "first batches delivered", || {
        sum_prefix(&agent_metrics(aport), "sonde_agent_samples_sent_total") > 0.0
    });

    collector.kill();
    std::thread::sleep(Duration::from_secs(3));
    let during = agent_metrics(aport);
    assert!(
        during["sonde_agent_buffer_batches"] >= 5.0,
        "the agent buffered while the collector was down: {during:?}"
    );
    let _collector = start_collector(cport, dir.path());

    // Find a quiet moment (no flush between two reads of the agent's metrics) with an empty
    // buffer, and compare what the agent collected with what the collector stores.
    let (collected, sent, count) = wait_until(
        Duration::from_secs(30),
        "buffer delivered and a quiet moment",
        || {
            let before = agent_metrics(aport);
            if before["sonde_agent_buffer_batches"] != 0.0 {
                return None;
            }
            let count = stored(cport, &host);
            let after = agent_metrics(aport);
            let collected = sum_prefix(&after, "sonde_agent_samples_collected_total");
            (collected == sum_prefix(&before, "sonde_agent_samples_collected_total")).then_some((
                collected,
                sum_prefix(&after, "sonde_agent_samples_sent_total"),
                count,
            ))
        },
    );
    assert_eq!(
        sum_prefix(&agent_metrics(aport), "sonde_agent_dropped_samples_total"),
        0.0,
        "nothing dropped"
    );
    assert_eq!(sent, collected, "every collected sample was acknowledged");
    assert_eq!(
        count as f64, collected,
        "every collected sample is stored, the outage's included"
    );
    assert!(sum_prefix(&agent_metrics(aport), "sonde_agent_push_retries_total") > 0.0);
}

#[test]
fn the_spool_keeps_undelivered_batches_across_an_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let (cport, aport) = (free_port(), free_port());
    let host = format!("spool-{}-{cport}", std::process::id());
    let spool_arg = spool.path().to_str().unwrap();
    // No collector yet: everything stays undelivered.
    let mut agent = start_agent(
        cport,
        aport,
        &host,
        &["--spool-dir", spool_arg, "--shutdown-timeout", "500ms"],
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.terminate(Duration::from_secs(10)).success());
    let spooled: u64 = std::fs::read_dir(spool.path())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".sndb")?
                .split_once('-')?
                .1
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        spooled > 0,
        "the stopped agent left its batches in the spool"
    );

    let _collector = start_collector(cport, dir.path());
    let restarted_at = sonde_common::model::now_ms();
    let _agent = start_agent(cport, aport, &host, &["--spool-dir", spool_arg]);
    wait_until(Duration::from_secs(30), "spool delivered", || {
        (agent_metrics(aport)["sonde_agent_spool_batches"] == 0.0).then_some(())
    });
    // Everything from before the restart came from the spool.
    let data = query(
        cport,
        &format!("{{host=\"{host}\"}}[1h]"),
        Some(restarted_at as f64 / 1000.0),
    );
    let before_restart: u64 = data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["values"].as_array().unwrap().len() as u64)
        .sum();
    assert_eq!(
        before_restart, spooled,
        "every spooled sample was delivered after the restart"
    );
    assert!(
        std::fs::read_dir(spool.path()).unwrap().count() == 0,
        "delivered batches leave the spool"
    );
}

#[test]
fn the_last_collection_at_sigterm_is_delivered_before_the_agent_exits() {
    let dir = tempfile::tempdir().unwrap();
    let (cport, aport) = (free_port(), free_port());
    let host = format!("last-{}-{cport}", std::process::id());
    let _collector = start_collector(cport, dir.path());
    // One collection at start, the next an hour away: the only other one is the last flush
    // that SIGTERM triggers, after the buffer has been empty for a while.
    let mut agent = start_agent(cport, aport, &host, &["--interval", "1h"]);
    let first = wait_until(
        Duration::from_secs(20),
        "first collection delivered",
        || {
            let n = stored(cport, &host);
            (n > 0).then_some(n)
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        stored(cport, &host),
        first,
        "nothing else collected meanwhile"
    );
    assert!(agent.terminate(Duration::from_secs(20)).success());
    let after = stored(cport, &host);
    assert!(
        after > first,
        "the last collection was stored ({first} samples before SIGTERM, {after} after)"
    );
}
