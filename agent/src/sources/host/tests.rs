//! HostSource on this machine and on a fake procfs and sysfs.

use std::collections::BTreeSet;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::*;
use sonde_common::model::Limits;

fn find<'a>(out: &'a [Reading], name: &str, labels: &[(&str, &str)]) -> Option<&'a Reading> {
    out.iter()
        .find(|r| r.series.name == name && labels.iter().all(|(n, v)| r.series.label(n) == Some(v)))
}

fn value(out: &[Reading], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(out, name, labels)
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
        .value
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn disabled(areas: &[&str]) -> BTreeSet<String> {
    areas.iter().map(|a| a.to_string()).collect()
}

#[test]
fn collects_this_machine() {
    let every_area = HostConfig {
        disabled: BTreeSet::new(),
        ..HostConfig::default()
    };
    let mut source = HostSource::new(every_area).unwrap();
    let mut out = Vec::new();
    let stats = source.collect(&mut out);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    assert_eq!(stats.readings, out.len());

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
    let total = value(&out, "node_memory_MemTotal_bytes", &[]);
    assert_eq!(total, (kib * 1024) as f64);
    let used = value(&out, "host_memory_used_bytes", &[]);
    assert!(used > 0.0 && used < total, "{used}");
    let idle = value(
        &out,
        "node_cpu_seconds_total",
        &[("cpu", "0"), ("mode", "idle")],
    );
    assert!(idle > 0.0);
    assert!(find(&out, "node_load1", &[]).is_some());

    // Boot time agrees with the uptime, and the clock with ours.
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let boot = value(&out, "node_boot_time_seconds", &[]);
    assert!((boot - (now_seconds() - uptime)).abs() < 60.0, "{boot}");
    assert!((value(&out, "node_time_seconds", &[]) - now_seconds()).abs() < 60.0);
    assert!(value(&out, "node_context_switches_total", &[]) > 0.0);
    assert!(value(&out, "node_forks_total", &[]) > 0.0);
    assert!(
        value(&out, "node_procs_running", &[]) >= 1.0,
        "this test runs"
    );

    assert!(value(&out, "node_filefd_maximum", &[]) > 0.0);
    assert!(value(&out, "node_filefd_allocated", &[]) > 0.0);
    let processes = value(&out, "host_processes", &[]);
    assert!(processes >= 1.0);
    assert!(value(&out, "host_threads", &[]) >= processes);

    // A whole disk in /proc/diskstats shows up; partitions do not.
    let diskstats = std::fs::read_to_string("/proc/diskstats").unwrap();
    for device in diskstats
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
    {
        let got = find(&out, "node_disk_read_bytes_total", &[("device", device)]);
        assert_eq!(got.is_none(), disk::is_ignored(device), "{device}");
    }

    // Filesystems carry inodes and flags from the same statvfs call.
    for size in out
        .iter()
        .filter(|r| r.series.name == "node_filesystem_size_bytes")
    {
        let mountpoint = size.series.label("mountpoint").unwrap();
        let labels = [("mountpoint", mountpoint)];
        assert_eq!(
            value(&out, "node_filesystem_device_error", &labels),
            0.0,
            "{mountpoint}"
        );
        let readonly = value(&out, "node_filesystem_readonly", &labels);
        assert!(readonly == 0.0 || readonly == 1.0);
        let files = value(&out, "node_filesystem_files", &labels);
        assert!(value(&out, "node_filesystem_files_free", &labels) <= files);
    }

    assert!(value(&out, "node_sockstat_sockets_used", &[]) > 0.0);
    assert!(find(&out, "node_sockstat_TCP_inuse", &[]).is_some());
    let states = out
        .iter()
        .filter(|r| r.series.name == "node_tcp_connection_states")
        .count();
    assert_eq!(states, 13);
    assert!(find(&out, "node_netstat_Tcp_CurrEstab", &[]).is_some());
    assert!(find(&out, "node_netstat_Udp_InDatagrams", &[]).is_some());
    if std::fs::read_to_string("/proc/pressure/cpu").is_ok() {
        assert!(find(&out, "node_pressure_cpu_waiting_seconds_total", &[]).is_some());
    }

    let mut seen = BTreeSet::new();
    for r in &out {
        assert_eq!(
            r.series.label("host"),
            Some(source.hostname()),
            "{}",
            r.series
        );
        r.series.validate(&Limits::default()).unwrap();
        assert!(r.value.is_finite(), "{}", r.series);
        assert!(seen.insert(&r.series), "duplicate {}", r.series);
    }

    // The second collection reuses the buffers and gives the same series.
    let mut again = Vec::new();
    let stats = source.collect(&mut again);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    let names = |out: &[Reading]| -> BTreeSet<String> {
        out.iter().map(|r| r.series.name.clone()).collect()
    };
    assert_eq!(names(&out), names(&again));
}

/// The time of one collection on this machine, in release mode:
/// `cargo test --release -p sonde-agent --lib collect_timing -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn collect_timing() {
    let rounds = 200;
    let mut out = Vec::new();
    for (what, disabled) in [
        ("default areas", HostConfig::default().disabled),
        ("every area", BTreeSet::new()),
    ] {
        let cfg = HostConfig {
            disabled,
            ..HostConfig::default()
        };
        let mut source = HostSource::new(cfg).unwrap();
        source.collect(&mut out);
        let mut times = Vec::with_capacity(rounds);
        let mut series = 0;
        for _ in 0..rounds {
            out.clear();
            let started = Instant::now();
            let stats = source.collect(&mut out);
            times.push(started.elapsed());
            assert!(stats.errors.is_empty(), "{:?}", stats.errors);
            series = out.len();
        }
        times.sort();
        println!(
            "collect(), {what}: {series} series; median {:?}, p90 {:?}, min {:?}, max {:?}",
            times[rounds / 2],
            times[rounds * 9 / 10],
            times[0],
            times[rounds - 1]
        );
    }
    for area in AREAS {
        let others: Vec<&str> = AREAS.iter().copied().filter(|a| a != area).collect();
        let cfg = HostConfig {
            disabled: disabled(&others),
            ..HostConfig::default()
        };
        let mut source = HostSource::new(cfg).unwrap();
        source.collect(&mut out);
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            out.clear();
            let started = Instant::now();
            source.collect(&mut out);
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "  {area:<10} {:>4} series, median {:?}",
            out.len(),
            times[rounds / 2]
        );
    }
}

/// Every area but the ones that existed before the areas could be switched off.
const NEW_AREAS: &[&str] = &[
    "stat",
    "processes",
    "pressure",
    "disk",
    "sockstat",
    "tcpstat",
    "netstat",
    "filefd",
    "time",
    "hwmon",
    "thermal",
];

#[test]
fn a_failing_area_is_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stat"), "cpu  1 2 3 4 5 6 7 8 0 0\n").unwrap();
    std::fs::write(dir.path().join("loadavg"), "0.50 0.40 abc 1/84 6587\n").unwrap();
    let cfg = HostConfig {
        proc_path: dir.path().to_owned(),
        hostname: Some("h1".into()),
        disabled: disabled(NEW_AREAS),
        ..HostConfig::default()
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

const STAT: &str = "\
cpu  19308 0 2438 32217 227 0 35 15 0 0
cpu0 19308 0 2438 32217 227 0 35 15 0 0
intr 155941 0 0 0
ctxt 237689
btime 1718000000
processes 6601
procs_running 2
procs_blocked 0
";

/// A procfs with every file the areas read, each small but real-looking.
fn fake_proc() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("stat", STAT),
        ("meminfo", "MemTotal: 1024 kB\nMemAvailable: 512 kB\n"),
        ("loadavg", "0.50 0.40 0.30 2/90 6587\n"),
        (
            "pressure/cpu",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=2000000\n",
        ),
        (
            "diskstats",
            " 254 0 vda 1 2 3 4 5 6 7 8 9 10 11\n 254 1 vda1 1 2 3 4 5 6 7 8 9 10 11\n",
        ),
        (
            "net/dev",
            "Inter-|\n face |\n  eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n",
        ),
        (
            "net/sockstat",
            "sockets: used 5\nTCP: inuse 1 orphan 0 tw 0 alloc 1 mem 1\n",
        ),
        (
            "net/tcp",
            "  sl  local_address rem_address   st tx_queue rx_queue\n   \
             0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000\n",
        ),
        ("net/snmp", "Tcp: CurrEstab ActiveOpens\nTcp: 3 10\n"),
        ("net/netstat", "TcpExt: ListenDrops\nTcpExt: 1\n"),
        ("sys/fs/file-nr", "100\t0\t1000\n"),
    ];
    for (file, text) in files {
        let path = dir.path().join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    for pid in ["1", "77"] {
        std::fs::create_dir(dir.path().join(pid)).unwrap();
    }
    dir
}

#[test]
fn reads_every_area_from_a_fake_tree_where_optional_files_are_absent() {
    let proc = fake_proc();
    let sys = tempfile::tempdir().unwrap();
    let cfg = HostConfig {
        proc_path: proc.path().to_owned(),
        sys_path: sys.path().to_owned(),
        hostname: Some("h1".into()),
        disabled: BTreeSet::new(),
    };
    let mut source = HostSource::new(cfg).unwrap();
    let mut out = Vec::new();
    let stats = source.collect(&mut out);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    assert_eq!(value(&out, "node_boot_time_seconds", &[]), 1_718_000_000.0);
    assert_eq!(value(&out, "host_memory_used_bytes", &[]), 524_288.0);
    assert_eq!(value(&out, "host_processes", &[]), 2.0);
    assert_eq!(value(&out, "host_threads", &[]), 90.0);
    assert_eq!(
        value(&out, "node_pressure_cpu_waiting_seconds_total", &[]),
        2.0
    );
    let disks: BTreeSet<_> = out
        .iter()
        .filter_map(|r| {
            r.series
                .label("device")
                .filter(|_| r.series.name.starts_with("node_disk_"))
        })
        .collect();
    assert_eq!(disks, BTreeSet::from(["vda"]));
    assert_eq!(
        value(&out, "node_sockstat_TCP_mem_bytes", &[]),
        source.page_size as f64
    );
    assert_eq!(
        value(&out, "node_tcp_connection_states", &[("state", "listen")]),
        1.0
    );
    assert_eq!(value(&out, "node_netstat_Tcp_CurrEstab", &[]), 3.0);
    assert_eq!(value(&out, "node_netstat_TcpExt_ListenDrops", &[]), 1.0);
    assert_eq!(value(&out, "node_filefd_maximum", &[]), 1000.0);
    assert!(find(&out, "node_time_seconds", &[]).is_some());
    assert!(!out.iter().any(|r| r.series.name.starts_with("node_hwmon")));
}

#[test]
fn each_missing_required_file_fails_only_its_area() {
    let proc = tempfile::tempdir().unwrap();
    std::fs::write(proc.path().join("stat"), STAT).unwrap();
    let cfg = HostConfig {
        proc_path: proc.path().to_owned(),
        sys_path: proc.path().join("no-sys"),
        hostname: Some("h1".into()),
        disabled: BTreeSet::new(),
    };
    let mut source = HostSource::new(cfg).unwrap();
    let mut out = Vec::new();
    let stats = source.collect(&mut out);
    let areas: Vec<_> = stats.errors.iter().map(|(a, _)| *a).collect();
    assert_eq!(
        areas,
        [
            "memory",
            "load",
            "processes",
            "disk",
            "net",
            "sockstat",
            "tcpstat",
            "netstat",
            "filefd"
        ]
    );
    let tcp = &stats.errors[6].1;
    assert!(tcp.contains("net/tcp: "), "{tcp}");
    for area in ["cpu", "stat", "pressure", "fs", "time", "hwmon", "thermal"] {
        assert!(!areas.contains(&area), "{area}");
    }
    assert!(find(&out, "node_context_switches_total", &[]).is_some());
}

#[test]
fn a_disabled_area_is_not_read() {
    // Nothing exists under these paths: only reading would fail.
    let all = HostConfig {
        proc_path: "/nonexistent/proc".into(),
        sys_path: "/nonexistent/sys".into(),
        hostname: Some("h1".into()),
        disabled: disabled(AREAS),
    };
    let mut source = HostSource::new(all).unwrap();
    let mut out = Vec::new();
    assert_eq!(source.collect(&mut out), CollectStats::default());
    assert!(out.is_empty());

    let proc = fake_proc();
    let only_memory: Vec<&str> = AREAS.iter().copied().filter(|a| *a != "memory").collect();
    let cfg = HostConfig {
        proc_path: proc.path().to_owned(),
        hostname: Some("h1".into()),
        disabled: disabled(&only_memory),
        ..HostConfig::default()
    };
    let mut source = HostSource::new(cfg).unwrap();
    let stats = source.collect(&mut out);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    assert!(out.iter().all(|r| r.series.name.contains("memory")));
    assert_eq!(out.len(), 3);
}

#[test]
fn only_tcpstat_is_off_by_default() {
    let cfg = HostConfig::default();
    assert_eq!(cfg.disabled, disabled(&["tcpstat"]));
    cfg.validate().unwrap();
    let enabled = Enabled::new(&cfg.disabled);
    let on: Vec<_> = AREAS.iter().filter(|a| enabled.has(a)).collect();
    assert_eq!(on.len(), AREAS.len() - 1);
}

#[test]
fn unknown_areas_are_refused_with_the_valid_names() {
    let cfg = HostConfig {
        disabled: disabled(&["cpu", "disks"]),
        ..HostConfig::default()
    };
    let err = cfg.validate().unwrap_err().to_string();
    assert!(
        err.starts_with("unknown host metrics area 'disks': the areas are cpu, stat, memory,"),
        "{err}"
    );
    assert!(err.ends_with("hwmon, thermal"), "{err}");
    assert!(matches!(
        HostSource::new(cfg),
        Err(HostError::UnknownArea { name }) if name == "disks"
    ));
    let every = HostConfig {
        disabled: disabled(AREAS),
        ..HostConfig::default()
    };
    every.validate().unwrap();
}

#[test]
fn new_names_the_unreadable_path_and_refuses_an_empty_host_name() {
    let cfg = HostConfig {
        proc_path: "/nonexistent/proc".into(),
        hostname: None,
        ..HostConfig::default()
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
