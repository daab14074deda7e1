//! Pressure stall information from `/proc/pressure/{cpu,memory,io,irq}` (Linux 4.20+ with
//! `CONFIG_PSI`; irq since 6.1), as node_exporter's `pressure` collector names it: the
//! cumulative `total=` stall time, in microseconds in the file, as seconds:
//! - `node_pressure_cpu_waiting_seconds_total` (cpu `some`),
//! - `node_pressure_memory_waiting_seconds_total` / `_stalled_` (memory `some` / `full`),
//! - `node_pressure_io_waiting_seconds_total` / `_stalled_` (io `some` / `full`),
//! - `node_pressure_irq_stalled_seconds_total` (irq `full`; the kernel has no irq `some`).
//!
//! All counters. The `avg10/60/300` figures are left out: they are `rate()` of the totals over
//! 10 s, 1 min and 5 min. cpu's `full` line (5.13+) is left out as node_exporter leaves it out;
//! at the system level it is not a meaningful figure. A missing file is not an error (the
//! kernel has no PSI, or `psi=0`, which makes reads fail with EOPNOTSUPP): the I/O side skips it.

use sonde_common::model::MetricKind;

use super::{ParseError, reading};
use crate::sources::Reading;

/// Each resource's file under `proc_path`, with its parser.
pub const FILES: [(&str, super::FileParserFn); 4] = [
    ("pressure/cpu", |text, host| parse("cpu", text, host)),
    ("pressure/memory", |text, host| parse("memory", text, host)),
    ("pressure/io", |text, host| parse("io", text, host)),
    ("pressure/irq", |text, host| parse("irq", text, host)),
];

/// The metric a resource's `some` and `full` lines become; `None`: not reported.
fn names(resource: &str) -> (Option<&'static str>, Option<&'static str>) {
    match resource {
        "cpu" => (Some("node_pressure_cpu_waiting_seconds_total"), None),
        "memory" => (
            Some("node_pressure_memory_waiting_seconds_total"),
            Some("node_pressure_memory_stalled_seconds_total"),
        ),
        "io" => (
            Some("node_pressure_io_waiting_seconds_total"),
            Some("node_pressure_io_stalled_seconds_total"),
        ),
        "irq" => (None, Some("node_pressure_irq_stalled_seconds_total")),
        _ => (None, None),
    }
}

/// Parses `/proc/pressure/<resource>`: lines `some|full avg10=.. avg60=.. avg300=.. total=N`.
/// Lines of another kind are ignored; a line of a reported kind without a valid `total=` is not.
pub fn parse(resource: &str, text: &str, host: &str) -> Result<Vec<Reading>, ParseError> {
    let (some, full) = names(resource);
    let mut out = Vec::with_capacity(2);
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let mut fields = line.split_whitespace();
        let name = match fields.next() {
            Some("some") => some,
            Some("full") => full,
            _ => None,
        };
        let Some(name) = name else { continue };
        let (field, total) = fields
            .enumerate()
            .find_map(|(i, f)| Some((i + 2, f.strip_prefix("total=")?)))
            .ok_or(ParseError::Malformed {
                line: line_no,
                reason: "no total= field",
            })?;
        let micros: u64 = total.parse().map_err(|_| ParseError::NotANumber {
            line: line_no,
            field,
        })?;
        let seconds = micros as f64 / 1e6;
        out.push(reading(name, MetricKind::Counter, seconds, host, &[]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IO: &str = "\
some avg10=0.04 avg60=0.82 avg300=1.54 total=26219465
full avg10=0.02 avg60=0.34 avg300=0.80 total=17666112
";

    fn got(out: &[Reading]) -> Vec<(&str, f64)> {
        out.iter()
            .map(|r| (r.series.name.as_str(), r.value))
            .collect()
    }

    #[test]
    fn parses_some_and_full_totals_as_seconds() {
        let out = parse("io", IO, "h").unwrap();
        assert_eq!(
            got(&out),
            [
                ("node_pressure_io_waiting_seconds_total", 26.219465),
                ("node_pressure_io_stalled_seconds_total", 17.666112),
            ]
        );
        assert!(out.iter().all(|r| r.kind == MetricKind::Counter));
        assert!(out.iter().all(|r| r.series.label("host") == Some("h")));
        let memory = IO.replace("total=26219465", "total=0");
        assert_eq!(
            got(&parse("memory", &memory, "h").unwrap()),
            [
                ("node_pressure_memory_waiting_seconds_total", 0.0),
                ("node_pressure_memory_stalled_seconds_total", 17.666112),
            ]
        );
    }

    #[test]
    fn cpu_reports_only_some_and_irq_only_full() {
        let cpu = "some avg10=0.20 avg60=7.75 avg300=12.84 total=182594132\n\
                   full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(
            got(&parse("cpu", cpu, "h").unwrap()),
            [("node_pressure_cpu_waiting_seconds_total", 182.594132)]
        );
        // Before 5.13 the cpu file has no full line at all.
        let old = "some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n";
        assert_eq!(parse("cpu", old, "h").unwrap().len(), 1);
        let irq = "full avg10=0.00 avg60=0.00 avg300=0.00 total=1500000\n";
        assert_eq!(
            got(&parse("irq", irq, "h").unwrap()),
            [("node_pressure_irq_stalled_seconds_total", 1.5)]
        );
        assert_eq!(parse("gpu", IO, "h"), Ok(Vec::new()));
    }

    #[test]
    fn rejects_malformed_lines_and_ignores_unknown_ones() {
        let no_total = "some avg10=0.04 avg60=0.82 avg300=1.54\n";
        assert!(matches!(
            parse("io", no_total, "h"),
            Err(ParseError::Malformed { line: 1, .. })
        ));
        let garbage = "some avg10=0.04 avg60=0.82 avg300=1.54 total=lots\n";
        assert_eq!(
            parse("io", garbage, "h"),
            Err(ParseError::NotANumber { line: 1, field: 5 })
        );
        let negative = "full total=-1\n";
        assert_eq!(
            parse("io", negative, "h"),
            Err(ParseError::NotANumber { line: 1, field: 2 })
        );
        assert_eq!(parse("io", "", "h"), Ok(Vec::new()));
        assert_eq!(
            parse("io", "\nnone total=1\nsome\u{0}\n", "h"),
            Ok(Vec::new())
        );
    }
}
