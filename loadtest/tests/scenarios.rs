//! The shipped scenarios, short: each starts its real processes on 127.0.0.1 (our collector,
//! VictoriaMetrics and haproxy from Debian's archive), drives load, and its loss audit must find
//! every acknowledged sample.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`) and the Debian packages
//! `victoria-metrics` and `haproxy` (the README's test command installs them).

use serde_json::Value;
use std::process::Command;

fn scenario(name: &str, extra: &[&str]) -> Value {
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("result.json");
    let status = Command::new(env!("CARGO_BIN_EXE_sonde-loadtest"))
        .args(["scenario", name, "--hosts", "20", "--quiet", "--out"])
        .arg(out.path())
        .arg("--json")
        .arg(&json)
        .args(extra)
        .status()
        .unwrap();
    assert!(status.success(), "scenario {name} failed: {status}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for report in v["reports"].as_array().unwrap() {
        let name = report["name"].as_str().unwrap();
        let accepted = report["accepted"].as_u64().unwrap();
        assert!(accepted > 0, "{name}: nothing accepted");
        assert_eq!(report["lost"], 0, "{name}: {}", report["audit"]);
        assert_eq!(
            report["audit"]["checked_samples"].as_u64().unwrap(),
            accepted,
            "{name}: the audit checks every accepted sample"
        );
        assert_eq!(report["audit"]["query_errors"], 0, "{name}");
        // The report's files are all there, plots included.
        for ext in ["txt", "json", "throughput.svg", "latency.svg"] {
            let sep = if ext.ends_with("svg") { "-" } else { "." };
            let path = out.path().join(format!("{name}{sep}{ext}"));
            assert!(path.exists(), "{} missing", path.display());
        }
    }
    assert_eq!(v["lost"], 0);
    v
}

#[test]
fn baseline() {
    let v = scenario("baseline", &["--duration", "3s"]);
    let r = &v["reports"][0];
    assert!(r["latency"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(
        r["statuses"]["200"].as_u64().unwrap(),
        r["requests"].as_u64().unwrap()
    );
    assert!(r["servers"][0]["cpu_seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn peer_runs_the_same_load_into_victoriametrics() {
    let v = scenario("peer", &["--duration", "3s"]);
    assert_eq!(v["reports"][1]["protocol"], "remote-write");
    assert_eq!(
        v["reports"][0]["offered"], v["reports"][1]["offered"],
        "the same load on both"
    );
    assert!(
        v["summary"]["cpu_ratio_sonde_to_victoriametrics"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[test]
fn fleet_behind_haproxy() {
    let v = scenario("fleet", &["--duration", "2s", "--concurrency", "8"]);
    let points = v["summary"]["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    // Every collector behind the balancer took a share.
    let last = &v["reports"][2];
    let collectors: Vec<&Value> = last["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"].as_str().unwrap().starts_with("sonde-collector"))
        .collect();
    assert_eq!(collectors.len(), 3);
    assert!(
        collectors
            .iter()
            .all(|c| c["cpu_seconds"].as_f64().unwrap() > 0.0)
    );
}

#[test]
fn outage_loses_nothing_acknowledged() {
    let v = scenario("outage", &["--duration", "6s"]);
    let r = &v["reports"][0];
    assert!(
        r["retries"].as_u64().unwrap() > 0,
        "the outage forced retries"
    );
    assert_eq!(r["failed"], 0);
}

#[test]
fn fleet_outage_loses_nothing_and_stores_each_sample_once() {
    let v = scenario("fleet-outage", &["--duration", "12s"]);
    let r = &v["reports"][0];
    assert_eq!(
        r["audit"]["duplicate_samples"], 0,
        "VictoriaMetrics (dedup on) returns each (series, timestamp) once"
    );
    assert_eq!(r["failed"], 0);
    assert_eq!(r["servers"].as_array().unwrap().len(), 3);
}

#[test]
fn storage_backfills_both_stores_and_measures_them_side_by_side() {
    if !std::path::Path::new("/usr/bin/victoria-metrics").exists() {
        eprintln!(
            "skipped: /usr/bin/victoria-metrics is absent (apt-get install victoria-metrics)"
        );
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("result.json");
    let status = Command::new(env!("CARGO_BIN_EXE_sonde-loadtest"))
        .args(["scenario", "storage", "--series", "164", "--hours", "1"])
        .args(["--quiet", "--out"])
        .arg(out.path())
        .arg("--json")
        .arg(&json)
        .status()
        .unwrap();
    assert!(status.success(), "scenario storage failed: {status}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let s = &v["summary"];
    assert_eq!(s["series"], 164);
    let samples = 164 * 360;
    for store in ["sonde", "victoriametrics"] {
        let f = &s[store];
        assert_eq!(f["samples_ingested"], samples, "{store}: {f}");
        assert_eq!(f["samples_failed"], 0, "{store}");
        assert_eq!(f["samples_stored"], samples, "{store}: its own count");
        assert!(f["ingest_samples_per_s"].as_f64().unwrap() > 0.0, "{store}");
        assert!(f["cpu_us_per_sample"].as_f64().unwrap() > 0.0, "{store}");
        assert!(f["data_dir_bytes"].as_u64().unwrap() > 0, "{store}");
        assert!(f["bytes_per_sample"].as_f64().unwrap() > 0.0, "{store}");
        assert!(f["peak_rss_bytes"].as_u64().unwrap() > 0, "{store}");
        assert!(f["rss_bytes_per_series"].as_f64().unwrap() > 0.0, "{store}");
        for probe in [
            "visibility_existing_series",
            "visibility_new_series",
            "visibility_new_series_nocache",
        ] {
            let ms = f[probe]["visible_after_ms"].as_f64();
            assert!(
                ms.is_some_and(|ms| (0.0..=60_000.0).contains(&ms)),
                "{store} {probe}: {}",
                f[probe]
            );
        }
        for q in ["query_1h", "query_24h"] {
            let q = &f[q];
            // Both answer the rate query, one result series per host.
            assert_eq!(q["supported"], true, "{store}: {q}");
            assert_eq!(q["result_series"], 1, "{store}: {q}");
            assert!(q["median_ms"].as_f64().unwrap() > 0.0, "{store}");
        }
    }
    // Both answer the bare selector: every matching series (16 per host) comes back.
    for store in ["sonde", "victoriametrics"] {
        for q in ["selector_1h", "selector_24h"] {
            let q = &s[store][q];
            assert_eq!(q["supported"], true, "{store}: {q}");
            assert_eq!(q["result_series"], 16, "{store}: {q}");
        }
    }
    // The usual per-store reports are written too.
    for name in ["storage-sonde", "storage-victoriametrics"] {
        assert!(out.path().join(format!("{name}.txt")).exists());
    }
    assert!(out.path().join("storage.txt").exists());
    assert_eq!(v["lost"], 0);
}

#[test]
fn alerting_measures_notification_latency_and_rule_throughput_against_vmalert() {
    if !std::path::Path::new("/usr/bin/vmalert").exists() {
        eprintln!("skipped: /usr/bin/vmalert is absent (apt-get install victoria-metrics)");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("result.json");
    let status = Command::new(env!("CARGO_BIN_EXE_sonde-loadtest"))
        .args([
            "scenario",
            "alerting",
            "--duration",
            "5s",
            "--quiet",
            "--out",
        ])
        .arg(out.path())
        .arg("--json")
        .arg(&json)
        .status()
        .unwrap();
    assert!(status.success(), "scenario alerting failed: {status}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let latency = &v["summary"]["latency"];
    for system in ["sonde", "vmalert"] {
        for rule in ["FastThreshold", "QueryThreshold"] {
            for kind in ["existing", "new"] {
                let f = &latency[format!("{system}/{rule}/{kind}")];
                assert_eq!(f["notified"], f["rounds"], "{system}/{rule}/{kind}: {f}");
                assert!(f["median_ms"].as_f64().unwrap() > 0.0);
            }
        }
    }
    // The fast path notifies well within half a second, new series included; query-based
    // rules within one evaluation interval (1 s) plus a second.
    for kind in ["existing", "new"] {
        let fast = latency[format!("sonde/FastThreshold/{kind}")]["median_ms"]
            .as_f64()
            .unwrap();
        assert!(fast < 500.0, "fast path {kind}: {fast} ms");
        let query = latency[format!("sonde/QueryThreshold/{kind}")]["median_ms"]
            .as_f64()
            .unwrap();
        assert!(query < 2000.0, "query-based {kind}: {query} ms");
    }
    for side in ["sonde", "vmalert_victoriametrics"] {
        let t = &v["summary"]["throughput"][side];
        assert!(t["evaluations"].as_f64().unwrap() > 0.0, "{side}: {t}");
        assert!(t["cpu_seconds"].as_f64().unwrap() > 0.0, "{side}: {t}");
    }
    assert!(out.path().join("alerting.txt").exists());
}

#[test]
fn scrape_measures_the_collector_against_vmagent_on_the_same_targets() {
    if !std::path::Path::new("/usr/bin/vmagent").exists() {
        eprintln!("skipped: /usr/bin/vmagent is absent (apt-get install victoria-metrics)");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("result.json");
    let status = Command::new(env!("CARGO_BIN_EXE_sonde-loadtest"))
        .args(["scenario", "scrape", "--hosts", "30", "--duration", "5s"])
        .args(["--quiet", "--out"])
        .arg(out.path())
        .arg("--json")
        .arg(&json)
        .status()
        .unwrap();
    assert!(status.success(), "scenario scrape failed: {status}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for side in ["sonde", "vmagent_victoriametrics"] {
        let f = &v["summary"][side];
        let scrapes = f["scrapes"].as_u64().unwrap();
        // 30 targets every second for 5 s: about 150 scrapes.
        assert!((100..=200).contains(&scrapes), "{side}: {f}");
        let scraped = f["samples_scraped"].as_u64().unwrap();
        assert_eq!(scraped, scrapes * 200, "{side}");
        // What was scraped in the window is stored (the window's edges may differ by a scrape
        // per target).
        let stored = f["samples_stored"].as_u64().unwrap();
        assert!(
            stored + 30 * 200 * 2 >= scraped && stored <= scraped + 30 * 200 * 2,
            "{side}: stored {stored} of {scraped}"
        );
        assert!(f["cpu_seconds"].as_f64().unwrap() > 0.0, "{side}");
    }
    assert!(out.path().join("scrape.txt").exists());
}
