//! HostSource on this machine and on a fake procfs.

use super::*;
use sonde_common::model::Limits;

#[test]
fn collects_this_machine() {
    let mut source = HostSource::new(HostConfig::default()).unwrap();
    let mut out = Vec::new();
    let stats = source.collect(&mut out);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    assert_eq!(stats.readings, out.len());

    let find = |name: &str, labels: &[(&str, &str)]| {
        out.iter().find(|r| {
            r.series.name == name && labels.iter().all(|(n, v)| r.series.label(n) == Some(v))
        })
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    let total = find("node_memory_MemTotal_bytes", &[]).unwrap();
    assert_eq!(total.value, (kib * 1024) as f64);
    let idle = find("node_cpu_seconds_total", &[("cpu", "0"), ("mode", "idle")]).unwrap();
    assert!(idle.value > 0.0);
    assert!(find("node_load1", &[]).is_some());
    for r in &out {
        assert_eq!(
            r.series.label("host"),
            Some(source.hostname()),
            "{}",
            r.series
        );
        r.series.validate(&Limits::default()).unwrap();
    }
}

#[test]
fn a_failing_area_is_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stat"), "cpu  1 2 3 4 5 6 7 8 0 0\n").unwrap();
    std::fs::write(dir.path().join("loadavg"), "0.50 0.40 abc 1/84 6587\n").unwrap();
    let cfg = HostConfig {
        proc_path: dir.path().to_owned(),
        hostname: Some("h1".into()),
    };
    let mut source = HostSource::new(cfg).unwrap();
    let mut out = Vec::new();
    let stats = source.collect(&mut out);
    let areas: Vec<_> = stats.errors.iter().map(|(a, _)| *a).collect();
    assert_eq!(areas, ["memory", "load", "net"]);
    let load = &stats.errors[1].1;
    assert!(
        load.ends_with("loadavg: line 1: field 3 is not a valid number"),
        "{load}"
    );
    assert!(
        out.iter()
            .any(|r| r.series.name == "node_cpu_total_seconds_total")
    );
    assert!(out.iter().all(|r| r.series.label("host") == Some("h1")));
}

#[test]
fn new_names_the_unreadable_path_and_refuses_an_empty_host_name() {
    let cfg = HostConfig {
        proc_path: "/nonexistent/proc".into(),
        hostname: None,
    };
    let err = HostSource::new(cfg).err().unwrap().to_string();
    assert!(
        err.starts_with("cannot read /nonexistent/proc/stat: "),
        "{err}"
    );
    let cfg = HostConfig {
        hostname: Some(String::new()),
        ..HostConfig::default()
    };
    assert!(matches!(
        HostSource::new(cfg),
        Err(HostError::EmptyHostname)
    ));
}
