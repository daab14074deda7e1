//! Side by side with the real node_exporter (Debian's `prometheus-node-exporter`): every series
//! the host source emits under a metric name node_exporter also has must carry the same value.
//!
//! The test starts node_exporter on 127.0.0.1, then scrapes it (with our [`Scraper`]), collects
//! with [`HostSource`], and scrapes it again, so each of our readings is taken between two of
//! node_exporter's. Series are matched by metric name and labels (ignoring `host`, which
//! node_exporter does not set, and the `instance`/`job` the scrape adds). Then, per family:
//! - capacities and totals (`_size_bytes`, `MemTotal`, `SwapTotal`, `_files`, `filefd_maximum`,
//!   `boot_time`, `_info`) must equal node_exporter's value exactly;
//! - everything else must lie between node_exporter's two values, widened by the family's
//!   tolerance ([`rule`] lists them with the reason for each): counters by 1% (CPU seconds by
//!   5 ticks, for the kernel's idle/iowait counters that step backwards and node_exporter then
//!   holds), gauges by what can change between two reads on a busy machine;
//! - a few families are skipped, each with its reason.
//!
//! Series only one side has (node_exporter ignores some filesystems and interfaces we report,
//! and reports some we skip) are counted in the printed table, not failed. A value mismatch, or
//! a counter on one side that is a gauge on the other, fails. Run with `-- --nocapture` to see
//! the table.
//!
//! Needs `/usr/bin/prometheus-node-exporter` (`apt-get install prometheus-node-exporter`), or
//! the path in `SONDE_NODE_EXPORTER`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sonde_agent::sources::Reading;
use sonde_agent::sources::host::{HostConfig, HostSource};
use sonde_agent::sources::scrape::{ScrapeConfig, Scraper};
use sonde_common::model::{Label, MetricKind};

const DEFAULT_BINARY: &str = "/usr/bin/prometheus-node-exporter";

/// Names both sides must report. All but the filesystem one must also share series: which
/// filesystems each side reports depends on the machine (node_exporter skips overlay roots).
const REQUIRED: [&str; 5] = [
    "node_cpu_seconds_total",
    "node_memory_MemTotal_bytes",
    "node_load1",
    "node_network_receive_bytes_total",
    "node_filesystem_size_bytes",
];
/// At least this many families must share series with node_exporter: 22 did when this test was
/// written (CPU 1, memory 7, load 3, network 8, filesystem 3), and the filesystem ones may share
/// none on another machine. More come as the host source grows.
const MIN_COMPARED_FAMILIES: usize = 16;

const MIB: f64 = 1024.0 * 1024.0;

/// How one family is compared.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    /// Equal to node_exporter's first or second value.
    Exact,
    /// Within [min(ne1, ne2) - tol, max(ne1, ne2) + tol], tol = max(abs, rel * |value|).
    Within {
        abs: f64,
        rel: f64,
    },
    Skip(&'static str),
}

/// The rule for a family, from its name and our kind. The first match wins.
fn rule(name: &str, our_kind: MetricKind) -> Rule {
    const EXACT: [&str; 6] = [
        "_size_bytes",
        "MemTotal",
        "SwapTotal",
        "filefd_maximum",
        "boot_time",
        "_info",
    ];
    if name == "node_time_seconds" {
        return Rule::Skip("wall clock: differs by the time between the reads");
    }
    if name.starts_with("node_scrape_") || name.starts_with("node_exporter_") {
        return Rule::Skip("node_exporter's own instrumentation");
    }
    if name == "node_procs_running" || name == "node_procs_blocked" {
        return Rule::Skip("instantaneous task counts that include the reader itself");
    }
    if EXACT.iter().any(|e| name.contains(e)) || name.ends_with("_files") {
        return Rule::Exact;
    }
    if name.starts_with("node_cpu_") && name.ends_with("seconds_total") {
        // 5 ticks of 10 ms: idle and iowait may step back, and node_exporter keeps the old value.
        return Rule::Within {
            abs: 0.05,
            rel: 0.0,
        };
    }
    if our_kind == MetricKind::Gauge
        && (name.starts_with("node_netstat_") || name.starts_with("node_sockstat_"))
    {
        // Socket and connection counts include the test's own connections to node_exporter.
        return Rule::Within {
            abs: 10.0,
            rel: 0.1,
        };
    }
    let counter = our_kind == MetricKind::Counter
        || name.ends_with("_total")
        || name.starts_with("node_netstat_")
        || name.starts_with("node_vmstat_");
    if counter {
        return Rule::Within {
            abs: 0.0,
            rel: 0.01,
        };
    }
    if name.starts_with("node_load") {
        // /proc/loadavg's two decimals; the value changes every 5 s, between the reads or not.
        return Rule::Within {
            abs: 0.01,
            rel: 0.0,
        };
    }
    if name.starts_with("node_memory_") && name.ends_with("_bytes") {
        // Page cache and free memory move by tens of MiB while builds run next to the test.
        return Rule::Within {
            abs: 64.0 * MIB,
            rel: 0.05,
        };
    }
    if name.starts_with("node_filesystem_") && name.ends_with("_bytes") {
        // Free space moves as other processes write (the build's target directory).
        return Rule::Within {
            abs: 64.0 * MIB,
            rel: 0.005,
        };
    }
    // Generous defaults for gauges added later; give a family its own rule when it lands.
    if name.ends_with("_bytes") {
        Rule::Within {
            abs: 64.0 * MIB,
            rel: 0.05,
        }
    } else {
        Rule::Within { abs: 2.0, rel: 0.1 }
    }
}

/// node_exporter as a child process, killed when dropped (also when the test panics).
struct NodeExporter {
    child: Child,
    address: String,
}

impl NodeExporter {
    fn start() -> NodeExporter {
        let binary =
            std::env::var("SONDE_NODE_EXPORTER").unwrap_or_else(|_| DEFAULT_BINARY.to_owned());
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("cannot find a free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(&binary)
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {binary}: {e}; install it with `apt-get install prometheus-node-exporter`"
                )
            });
        NodeExporter { child, address }
    }

    fn scraper(&self) -> Scraper {
        let cfg = ScrapeConfig {
            url: format!("http://{}/metrics", self.address).parse().unwrap(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
        };
        Scraper::new(cfg, "unused")
    }

    /// Scrapes until node_exporter answers (it needs a moment to listen).
    async fn wait_ready(&mut self, scraper: &Scraper) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let err = match scraper.scrape().await {
                Ok(_) => return,
                Err(e) => e,
            };
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("node_exporter exited with {status} before answering");
            }
            assert!(
                Instant::now() < deadline,
                "node_exporter did not answer on {} within 15 s: {err}",
                self.address
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// name -> labels (without `ignored`) -> (kind, value).
type Index = BTreeMap<String, BTreeMap<Vec<Label>, (MetricKind, f64)>>;

fn index(readings: &[Reading], ignored: &[&str]) -> Index {
    let mut out = Index::new();
    for r in readings {
        let labels: Vec<Label> = r
            .series
            .labels
            .iter()
            .filter(|l| !ignored.contains(&l.name.as_str()))
            .cloned()
            .collect();
        out.entry(r.series.name.clone())
            .or_default()
            .insert(labels, (r.kind, r.value));
    }
    out
}

/// One family's outcome, a row of the printed table.
struct Row {
    name: String,
    rule: String,
    compared: usize,
    only_ours: usize,
    only_theirs: usize,
    /// The largest distance of our value outside node_exporter's two values.
    worst: f64,
    failures: Vec<String>,
}

fn compare_family(
    name: &str,
    ours: &BTreeMap<Vec<Label>, (MetricKind, f64)>,
    ne1: &Index,
    ne2: &Index,
) -> Row {
    let empty = BTreeMap::new();
    let (first, second) = (
        ne1.get(name).unwrap_or(&empty),
        ne2.get(name).unwrap_or(&empty),
    );
    let our_kind = ours.values().next().map(|v| v.0).unwrap_or_default();
    let rule = rule(name, our_kind);
    let mut row = Row {
        name: name.to_owned(),
        rule: match rule {
            Rule::Exact => "exact".to_owned(),
            Rule::Within { abs, rel } => format!("within {abs} or {}%", rel * 100.0),
            Rule::Skip(why) => format!("skipped: {why}"),
        },
        compared: 0,
        only_ours: 0,
        only_theirs: first.keys().filter(|k| !ours.contains_key(*k)).count(),
        worst: 0.0,
        failures: Vec::new(),
    };
    if let Rule::Skip(_) = rule {
        return row;
    }
    for (labels, &(kind, value)) in ours {
        let (Some(&(their_kind, v1)), Some(&(_, v2))) = (first.get(labels), second.get(labels))
        else {
            row.only_ours += 1;
            continue;
        };
        row.compared += 1;
        let what = format!("{name}{{{}}}", show(labels));
        let kinds = [kind, their_kind];
        if kinds.contains(&MetricKind::Counter) && kinds.contains(&MetricKind::Gauge) {
            row.failures.push(format!(
                "{what}: we say {}, node_exporter says {}",
                kind.as_str(),
                their_kind.as_str()
            ));
        }
        let (lo, hi) = (v1.min(v2), v1.max(v2));
        let outside = if value < lo {
            lo - value
        } else if value > hi {
            value - hi
        } else {
            0.0
        };
        row.worst = row.worst.max(outside);
        let ok = match rule {
            Rule::Exact => value == v1 || value == v2,
            Rule::Within { abs, rel } => outside <= abs.max(rel * hi.abs().max(lo.abs())),
            Rule::Skip(_) => true,
        };
        if !ok {
            row.failures.push(format!(
                "{what}: ours {value}, node_exporter {v1} then {v2} ({})",
                row.rule
            ));
        }
    }
    row
}

fn show(labels: &[Label]) -> String {
    labels
        .iter()
        .map(|l| format!("{}={:?}", l.name, l.value))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test]
async fn host_source_matches_node_exporter() {
    let mut ne = NodeExporter::start();
    let scraper = ne.scraper();
    ne.wait_ready(&scraper).await;

    let mut host = HostSource::new(HostConfig::default()).expect("cannot start the host source");
    let first = scraper.scrape().await.expect("first scrape");
    let mut ours = Vec::new();
    let stats = host.collect(&mut ours);
    let second = scraper.scrape().await.expect("second scrape");
    assert!(
        stats.errors.is_empty(),
        "host source errors: {:?}",
        stats.errors
    );

    let scrape_labels = ["host", "instance", "job"];
    let (ne1, ne2) = (
        index(&first, &scrape_labels),
        index(&second, &scrape_labels),
    );
    let ours = index(&ours, &["host"]);

    let mut rows = Vec::new();
    let mut not_in_node_exporter = Vec::new();
    for (name, series) in &ours {
        if ne1.contains_key(name) {
            rows.push(compare_family(name, series, &ne1, &ne2));
        } else {
            not_in_node_exporter.push(name.as_str());
        }
    }

    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<44} {:>8} {:>10} {:>9} {:>12}  rule",
        "family", "compared", "only sonde", "only n_e", "worst"
    );
    for r in &rows {
        let status = if !r.failures.is_empty() { "  FAIL" } else { "" };
        let _ = writeln!(
            table,
            "{:<44} {:>8} {:>10} {:>9} {:>12}  {}{status}",
            r.name,
            r.compared,
            r.only_ours,
            r.only_theirs,
            format!("{:.6}", r.worst),
            r.rule
        );
    }
    let _ = writeln!(
        table,
        "ours only (node_exporter has no such name): {}",
        not_in_node_exporter.join(", ")
    );
    println!("{table}");

    let failures: Vec<&String> = rows.iter().flat_map(|r| &r.failures).collect();
    assert!(
        failures.is_empty(),
        "values differ from node_exporter:\n{}\n\n{table}",
        failures
            .iter()
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    for name in REQUIRED {
        let row = rows.iter().find(|r| r.name == name);
        let Some(row) = row else {
            panic!("{name}: must be reported by both sides\n\n{table}");
        };
        assert!(
            row.compared > 0 || name == "node_filesystem_size_bytes",
            "{name}: no series in common with node_exporter\n\n{table}"
        );
    }
    let compared = rows.iter().filter(|r| r.compared > 0).count();
    assert!(
        compared >= MIN_COMPARED_FAMILIES,
        "only {compared} families compared, want at least {MIN_COMPARED_FAMILIES}\n\n{table}"
    );
}

/// The comparison itself, without node_exporter: a value outside the bracket, a wrong exact
/// value and a kind disagreement fail; absent series are only counted.
#[test]
fn comparison_rules_catch_mismatches() {
    let series = |labels: &[(&str, &str)], kind, value| {
        let labels = labels
            .iter()
            .map(|(n, v)| Label::new(*n, *v))
            .collect::<Vec<_>>();
        (labels, (kind, value))
    };
    let family = |entries: Vec<(Vec<Label>, (MetricKind, f64))>| entries.into_iter().collect();
    let c = MetricKind::Counter;
    let name = "node_network_receive_bytes_total";
    let ne1: Index = [(
        name.to_owned(),
        family(vec![
            series(&[("device", "a")], c, 1000.0),
            series(&[("device", "b")], c, 1000.0),
            series(&[("device", "c")], c, 5.0),
            series(&[("device", "x")], c, 5.0),
        ]),
    )]
    .into();
    let mut ne2 = ne1.clone();
    ne2.get_mut(name)
        .unwrap()
        .insert(vec![Label::new("device", "a")], (c, 2000.0));
    let ours = family(vec![
        series(&[("device", "a")], c, 1500.0),
        series(&[("device", "b")], c, 1011.0),
        series(&[("device", "c")], MetricKind::Gauge, 5.0),
        series(&[("device", "lo")], c, 1.0),
    ]);
    let row = compare_family(name, &ours, &ne1, &ne2);
    assert_eq!((row.compared, row.only_ours, row.only_theirs), (3, 1, 1));
    assert_eq!(row.failures.len(), 2, "{:?}", row.failures);
    assert!(row.failures[0].contains("device=\"b\"") && row.failures[0].contains("ours 1011"));
    assert!(row.failures[1].contains("we say gauge, node_exporter says counter"));
    assert_eq!(row.worst, 11.0);

    let name = "node_memory_MemTotal_bytes";
    let g = MetricKind::Gauge;
    let ne: Index = [(name.to_owned(), family(vec![series(&[], g, 4096.0)]))].into();
    let ours = family(vec![series(&[], g, 4097.0)]);
    assert_eq!(compare_family(name, &ours, &ne, &ne).failures.len(), 1);
    assert_eq!(
        rule("node_time_seconds", g),
        Rule::Skip("wall clock: differs by the time between the reads")
    );
}
