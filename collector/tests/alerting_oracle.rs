//! The rule evaluator against vmalert: the same rules and the same data, evaluated by vmalert
//! (Debian's, over a real VictoriaMetrics) and by `sonde-collector replay-rules` (over the
//! collector's own query API), must give the same alerts, with the same labels and states,
//! at the same evaluation steps.
//!
//! Both replay a backfilled hour: vmalert with `-replay.timeFrom/-replay.timeTo`, writing its
//! `ALERTS` series back into VictoriaMetrics; ours printing them. The rules stay where
//! PromQL and MetricsQL agree (thresholds, `for`, `avg_over_time`, `max by`, labels).

mod support;

use sonde_common::model::{MetricKind, Sample, Series, now_ms};
use sonde_common::wire::{self, BatchBuilder, BatchHeader, Compression};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::{Proc, free_port, http_get, http_request, sonde_bin, wait_until};

const RULES: &str = r#"
groups:
  - name: temperature
    interval: 30s
    rules:
      - alert: HotNow
        expr: temp > 90
        labels:
          severity: info
      - alert: HotForTwoMinutes
        expr: temp > 90
        for: 2m
        labels:
          severity: page
      - alert: WarmOnAverage
        expr: avg_over_time(temp[2m]) > 70
        for: 1m
      - alert: ZoneHot
        expr: max by (zone) (temp) >= 95
  - name: load
    interval: 1m
    rules:
      - alert: LoadLow
        expr: load < 2
        for: 3m
"#;

const HOSTS: usize = 6;
const STEPS: i64 = 360;
const STEP_MS: i64 = 10_000;

/// A deterministic temperature per host and step: hot spells of different lengths, a flapping
/// host, and a steady one.
fn temp(host: usize, step: i64) -> f64 {
    match host {
        0 if (60..120).contains(&step) => 95.0,
        1 if (100..108).contains(&step) => 92.0,
        2 if step % 20 < 9 => 96.0,
        3 => 60.0 + (step % 40) as f64,
        4 if (200..300).contains(&step) => 91.0 + (step % 5) as f64,
        _ => 50.0,
    }
}

fn load(host: usize, step: i64) -> f64 {
    ((host as i64 * 7 + step) % 30) as f64 / 10.0
}

/// RFC 3339 (UTC, seconds) for seconds since the epoch, via `date`.
fn rfc3339(secs: i64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn binary(name: &str) -> Option<std::path::PathBuf> {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// (step time in s, alertname, labels without alertname/alertgroup, state)
type Row = (i64, String, String, String);

#[test]
fn replayed_rules_fire_like_vmalert() {
    let (Some(vm_bin), Some(vmalert_bin)) = (binary("victoria-metrics"), binary("vmalert")) else {
        panic!("victoria-metrics and vmalert are needed: apt-get install victoria-metrics");
    };
    let dir = tempfile::tempdir().unwrap();
    let vm_port = free_port();
    let _vm = Proc::spawn(
        "victoria-metrics",
        vm_bin,
        &[
            &format!("-storageDataPath={}", dir.path().join("vm").display()),
            &format!("-httpListenAddr=127.0.0.1:{vm_port}"),
            "-retentionPeriod=1",
            "-search.latencyOffset=0s",
            "-loggerLevel=ERROR",
        ],
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = dir.path().join("sonde");
    let _sonde = Proc::spawn(
        "collector",
        sonde_bin("sonde-collector"),
        &[
            "--listen",
            &listen,
            "--data-dir",
            data.to_str().unwrap(),
            "--max-sample-age",
            "3h",
        ],
    );
    for (p, path) in [(vm_port, "/health"), (port, "/readyz")] {
        wait_until(Duration::from_secs(20), "ready", || {
            http_get(p, path).map(|(s, _)| s == 200).unwrap_or(false)
        });
    }

    // An hour of data ending a minute ago, aligned to the minute.
    let start_s = (now_ms() / 1000 - 3600 - 60) / 60 * 60;
    let mut text = String::new();
    for step in 0..STEPS {
        // 5 s off the evaluation grid: no sample sits on a range window's edge, where
        // Prometheus 2 (closed window) and MetricsQL (left-open) legitimately differ.
        let ts = start_s * 1000 + step * STEP_MS + 5_000;
        let mut b = BatchBuilder::new(BatchHeader {
            agent_id: "oracle".into(),
            sequence: step as u64 + 1,
            sent_at_ms: ts,
        });
        for h in 0..HOSTS {
            let host = format!("h{h}");
            let zone = format!("z{}", h % 2);
            let labels = [("host", host.as_str()), ("zone", zone.as_str())];
            for (name, v) in [("temp", temp(h, step)), ("load", load(h, step))] {
                b.push(
                    &Series::new(name, labels),
                    MetricKind::Gauge,
                    None,
                    vec![Sample::new(ts, v)],
                );
                text.push_str(&format!(
                    "{name}{{host=\"{host}\",zone=\"{zone}\"}} {v} {ts}\n"
                ));
            }
        }
        let body = wire::encode(&b.build(), Compression::Zstd).unwrap();
        let (status, resp) = http_request(
            port,
            "POST",
            "/api/v1/push",
            &[
                ("Content-Type", "application/x-sonde-batch"),
                ("Content-Encoding", "zstd"),
            ],
            &body,
        )
        .unwrap();
        assert_eq!(status, 200, "{resp}");
    }
    let (status, resp) = http_request(
        vm_port,
        "POST",
        "/api/v1/import/prometheus",
        &[],
        text.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 204, "{resp}");
    http_get(vm_port, "/internal/force_flush").unwrap();

    let rules = dir.path().join("rules.yml");
    std::fs::write(&rules, RULES).unwrap();
    let from = rfc3339(start_s);
    let to = rfc3339(start_s + STEPS * STEP_MS / 1000 - 60);

    // vmalert's replay, its ALERTS series written back into VictoriaMetrics.
    let vm_url = format!("http://127.0.0.1:{vm_port}");
    let status = Command::new(vmalert_bin)
        .args([
            &format!("-rule={}", rules.display()),
            &format!("-datasource.url={vm_url}"),
            &format!("-remoteWrite.url={vm_url}"),
            // Each group's own interval as the step (this vmalert's default is 5m).
            "-datasource.queryStep=0s",
            &format!("-replay.timeFrom={from}"),
            &format!("-replay.timeTo={to}"),
            "-replay.disableProgressBar",
            "-replay.rulesDelay=0s",
            "-loggerLevel=ERROR",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "vmalert replay failed");
    let mut theirs = BTreeSet::new();
    wait_until(Duration::from_secs(20), "vmalert's ALERTS readable", || {
        http_get(vm_port, "/internal/force_flush").unwrap();
        let (status, body) = http_get(
            vm_port,
            &format!("/api/v1/export?match[]={}", support::encode("ALERTS")),
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        theirs = export_rows(&body);
        !theirs.is_empty()
    });

    // Ours, over the collector's query API.
    let out = Command::new(sonde_bin("sonde-collector"))
        .args([
            "replay-rules",
            "--query-url",
            &format!("http://127.0.0.1:{port}"),
            "--from",
            &from,
            "--to",
            &to,
            rules.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay-rules failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = text_rows(&String::from_utf8(out.stdout).unwrap());

    // Both saw pending and firing alerts of every rule that can fire.
    for name in [
        "HotNow",
        "HotForTwoMinutes",
        "WarmOnAverage",
        "ZoneHot",
        "LoadLow",
    ] {
        assert!(
            ours.iter().any(|r| r.1 == name && r.3 == "firing"),
            "{name} never fired in our replay"
        );
    }
    assert!(ours.iter().any(|r| r.3 == "pending"));
    let only_ours: Vec<_> = ours.difference(&theirs).collect();
    let only_theirs: Vec<_> = theirs.difference(&ours).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "replays differ ({} rows ours, {} vmalert's)\nonly ours: {only_ours:#?}\nonly vmalert's: {only_theirs:#?}",
        ours.len(),
        theirs.len()
    );
}

fn row(labels: &serde_json::Map<String, serde_json::Value>, ts_s: i64) -> Row {
    let mut rest: Vec<(String, String)> = labels
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "__name__" | "alertname" | "alertgroup" | "alertstate"
            )
        })
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
        .collect();
    rest.sort();
    let labels_text = rest
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    (
        ts_s,
        labels["alertname"].as_str().unwrap_or("").to_owned(),
        labels_text,
        labels["alertstate"].as_str().unwrap_or("").to_owned(),
    )
}

/// VictoriaMetrics's export (JSON lines) of ALERTS.
fn export_rows(body: &str) -> BTreeSet<Row> {
    let mut rows = BTreeSet::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let labels = v["metric"].as_object().unwrap();
        for ts in v["timestamps"].as_array().unwrap() {
            rows.insert(row(labels, ts.as_i64().unwrap() / 1000));
        }
    }
    rows
}

/// `replay-rules` output: Prometheus text lines `ALERTS{...} 1 <ms>`.
fn text_rows(body: &str) -> BTreeSet<Row> {
    let mut rows = BTreeSet::new();
    for line in body.lines().filter(|l| l.starts_with("ALERTS{")) {
        let (series, rest) = line.rsplit_once('}').unwrap();
        let ts: i64 = rest.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut labels = serde_json::Map::new();
        for pair in split_labels(&series["ALERTS{".len()..]) {
            let (k, v) = pair.split_once('=').unwrap();
            let v = v
                .trim_matches('"')
                .replace("\\\"", "\"")
                .replace("\\\\", "\\");
            labels.insert(k.to_owned(), serde_json::Value::String(v));
        }
        rows.insert(row(&labels, ts / 1000));
    }
    rows
}

/// Splits `a="x",b="y,z"` at the commas between pairs.
fn split_labels(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in s.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}
