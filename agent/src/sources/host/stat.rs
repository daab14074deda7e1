//! Kernel activity from `/proc/stat`, the lines [`cpu`](super::cpu) does not read, named as
//! node_exporter's `stat` collector names them:
//! - `node_context_switches_total` (`ctxt`), `node_intr_total` (the first number of `intr`, the
//!   sum over all interrupts), `node_forks_total` (`processes`, forks since boot): counters;
//! - `node_procs_running`, `node_procs_blocked`: gauges;
//! - `node_boot_time_seconds` (`btime`, Unix seconds): a gauge.
//!
//! The file is read once per collection and shared with the cpu area. Every one of these lines
//! has been printed since Linux 2.6, so a missing one means the file is not `/proc/stat`.

use sonde_common::model::MetricKind;

use super::{ParseError, reading};
use crate::sources::Reading;

/// `/proc/stat` key, metric name, kind; all required.
const LINES: [(&str, &str, MetricKind); 6] = [
    ("intr", "node_intr_total", MetricKind::Counter),
    ("ctxt", "node_context_switches_total", MetricKind::Counter),
    ("btime", "node_boot_time_seconds", MetricKind::Gauge),
    ("processes", "node_forks_total", MetricKind::Counter),
    ("procs_running", "node_procs_running", MetricKind::Gauge),
    ("procs_blocked", "node_procs_blocked", MetricKind::Gauge),
];

/// Parses `/proc/stat`; `cpu*`, `softirq` and unknown lines are ignored.
pub fn parse(text: &str, host: &str) -> Result<Vec<Reading>, ParseError> {
    let mut values: [Option<u64>; LINES.len()] = [None; LINES.len()];
    for (index, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let Some(key) = fields.next() else { continue };
        let Some(slot) = LINES.iter().position(|(k, _, _)| *k == key) else {
            continue;
        };
        let (line, field) = (index + 1, 2);
        let value = fields
            .next()
            .ok_or(ParseError::MissingField { line, field })?
            .parse()
            .map_err(|_| ParseError::NotANumber { line, field })?;
        values[slot] = Some(value);
    }
    let mut out = Vec::with_capacity(LINES.len());
    for ((key, name, kind), value) in LINES.into_iter().zip(values) {
        let value = value.ok_or(ParseError::MissingLine(key))?;
        out.push(reading(name, kind, value as f64, host, &[]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "\
cpu  193282 0 25704 292354 2618 0 889 61 0 0
cpu0 94307 0 12483 149867 512 0 277 28 0 0
intr 4613345 0 9 0 0 0 0 0 0 0 0 0 0 158 0 0 0
ctxt 4128000
btime 1718000000
processes 60084
procs_running 3
procs_blocked 1
softirq 1833071 0 121574 4 796515 476135 0 568 179189 314 258772
";

    #[test]
    fn parses_the_kernel_counters() {
        let out = parse(STAT, "h").unwrap();
        let got: Vec<_> = out
            .iter()
            .map(|r| (r.series.name.as_str(), r.kind, r.value))
            .collect();
        assert_eq!(
            got,
            [
                ("node_intr_total", MetricKind::Counter, 4_613_345.0),
                (
                    "node_context_switches_total",
                    MetricKind::Counter,
                    4_128_000.0
                ),
                ("node_boot_time_seconds", MetricKind::Gauge, 1_718_000_000.0),
                ("node_forks_total", MetricKind::Counter, 60_084.0),
                ("node_procs_running", MetricKind::Gauge, 3.0),
                ("node_procs_blocked", MetricKind::Gauge, 1.0),
            ]
        );
        assert!(out.iter().all(|r| r.series.label("host") == Some("h")));
    }

    #[test]
    fn rejects_malformed_or_missing_lines() {
        let bad = STAT.replace("ctxt 4128000", "ctxt many");
        assert_eq!(
            parse(&bad, "h"),
            Err(ParseError::NotANumber { line: 4, field: 2 })
        );
        let short = STAT.replace("btime 1718000000", "btime");
        assert_eq!(
            parse(&short, "h"),
            Err(ParseError::MissingField { line: 5, field: 2 })
        );
        let negative = STAT.replace("procs_blocked 1", "procs_blocked -1");
        assert!(matches!(
            parse(&negative, "h"),
            Err(ParseError::NotANumber { .. })
        ));
        let no_btime = STAT.replace("btime 1718000000\n", "");
        assert_eq!(parse(&no_btime, "h"), Err(ParseError::MissingLine("btime")));
        assert_eq!(parse("", "h"), Err(ParseError::MissingLine("intr")));
        assert_eq!(
            parse("\n\n   \nbogus\n", "h"),
            Err(ParseError::MissingLine("intr"))
        );
    }
}
