//! `sonde-loadtest agent-bench`, short: both benchmarks start their real processes on
//! 127.0.0.1, and their JSON must hold every figure with a sane value.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`), node and npm (the statsd
//! benchmark installs `statsd@0.9.0` into `target/npm-statsd` once), and the Debian packages
//! `prometheus-node-exporter` and `victoria-metrics` (which ships `vmagent`).

use serde_json::Value;
use std::process::Command;
use std::sync::Mutex;

/// The benchmarks measure CPU and loss: never two at once.
static SERIAL: Mutex<()> = Mutex::new(());

fn agent_bench(name: &str, extra: &[&str]) -> Value {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("result.json");
    let status = Command::new(env!("CARGO_BIN_EXE_sonde-loadtest"))
        .args(["agent-bench", name, "--out"])
        .arg(out.path())
        .arg("--json")
        .arg(&json)
        .args(extra)
        .status()
        .unwrap();
    assert!(status.success(), "agent-bench {name} failed: {status}");
    for ext in ["txt", "json"] {
        let path = out.path().join(format!("agent-bench-{name}.{ext}"));
        assert!(path.exists(), "{} missing", path.display());
    }
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn footprint_measures_both_pipelines_at_each_interval() {
    let v = agent_bench("footprint", &["--duration", "12s", "--intervals", "1s,10s"]);
    assert_eq!(v["benchmark"], "footprint");
    let phases = v["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2);
    for (phase, interval) in phases.iter().zip([1.0, 10.0]) {
        assert_eq!(f(&phase["interval_s"]), interval);
        assert!(f(&phase["window_s"]) >= 12.0);
        for side in ["sonde", "peer"] {
            let s = &phase[side];
            let what = format!("{interval}s {side}: {s}");
            assert!(f(&s["collections"]) > 0.0, "{what}");
            assert!(f(&s["samples_per_collection"]) > 10.0, "{what}");
            assert!(f(&s["stored_series"]) > 10.0, "{what}");
            assert!(f(&s["cpu_seconds"]) > 0.0, "{what}");
            assert!(f(&s["cpu_ms_per_collection"]) > 0.0, "{what}");
            assert!(f(&s["cpu_percent"]) < 100.0 * f(&v["cores"]), "{what}");
            assert!(f(&s["avg_rss_bytes"]) > 0.0, "{what}");
            assert!(f(&s["peak_rss_bytes"]) >= f(&s["avg_rss_bytes"]), "{what}");
            for p in s["processes"].as_array().unwrap() {
                assert!(f(&p["avg_rss_bytes"]) > 0.0, "{what}");
                assert!(f(&p["peak_rss_bytes"]) > 0.0, "{what}");
            }
        }
        let names = |side: &str| -> Vec<String> {
            phase[side]["processes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(names("sonde"), ["sonde-agent"]);
        assert_eq!(names("peer"), ["node_exporter", "vmagent"]);
        assert!(f(&phase["peer"]["exposed_samples"]) > 100.0);
        assert!(f(&phase["cpu_per_collection_ratio"]) > 0.0);
        assert!(f(&phase["sonde"]["samples_per_collection_by_source"]["host"]) > 10.0);
        for t in [
            "sonde_peak_rss_at_most_8_mib",
            "sonde_avg_rss_at_most_8_mib",
            "sonde_cpu_per_collection_at_most_a_third_of_peer",
        ] {
            assert!(phase["targets"][t].is_boolean(), "{t}");
        }
    }
    assert!(v["cpu_model"]["sonde"]["ms_per_collection"].is_f64());
    // At a 1 s interval over 12 s, about 12 collections on each side.
    let fast = &phases[0];
    for side in ["sonde", "peer"] {
        let c = f(&fast[side]["collections"]);
        assert!((9.0..=15.0).contains(&c), "{side}: {c} collections");
    }
}

#[test]
fn statsd_steps_up_the_rate_for_each_daemon() {
    let v = agent_bench(
        "statsd",
        &[
            "--max-rate",
            "50000",
            "--step-duration",
            "2s",
            "--refine",
            "1",
        ],
    );
    assert_eq!(v["benchmark"], "statsd");
    let daemons = v["daemons"].as_array().unwrap();
    let names: Vec<&str> = daemons
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sonde-agent", "statsd", "statsd-rcvbuf"]);
    for d in daemons {
        let name = d["name"].as_str().unwrap();
        assert!(f(&d["peak_rss_bytes"]) > 0.0, "{name}");
        assert!(f(&d["cpu_seconds"]) > 0.0, "{name}");
        let steps = d["steps"].as_array().unwrap();
        assert!(!steps.is_empty(), "{name}");
        let first = &steps[0];
        assert_eq!(first["target_rate"], 10_000, "{name}");
        assert_eq!(first["sent"], 20_000, "{name}: the sender keeps 10,000/s");
        let received = f(&first["received"]);
        assert!(received > 0.0 && received <= 20_000.0, "{name}: {first}");
        for s in steps {
            assert!(s["kernel_drops"].is_u64(), "{name}: {s}");
            assert!(f(&s["max_rss_bytes"]) > 0.0, "{name}: {s}");
            assert!(f(&s["cpu_seconds"]) > 0.0, "{name}: {s}");
        }
    }
    // Sonde counts every increment at the lowest rate: its total is exact.
    let sonde = &daemons[0]["steps"][0];
    assert_eq!(f(&sonde["received"]), 20_000.0, "{sonde}");
    assert_eq!(sonde["exact"], true);
    assert_eq!(sonde["kernel_drops"], 0);
    assert!(f(&daemons[0]["max_rate_under_0_1pct_loss"]) >= 9_000.0);
    assert!(v["ratios"]["peak_rss"].as_f64().unwrap() > 0.0);
    assert!(v["ratios_vs_statsd_rcvbuf"]["peak_rss"].as_f64().unwrap() > 0.0);
    // The agent's socket got a larger receive buffer than statsd as shipped.
    let rb = |i: usize| daemons[i]["recv_buffer_bytes"].as_u64();
    if let (Some(sonde), Some(statsd), Some(rcvbuf)) = (rb(0), rb(1), rb(2)) {
        assert!(sonde > statsd, "{sonde} vs {statsd}");
        assert!(rcvbuf > statsd, "{rcvbuf} vs {statsd}");
    }
}
