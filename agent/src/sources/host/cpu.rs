//! CPU time from `/proc/stat`: cumulative seconds per mode for each core
//! (`node_cpu_seconds_total{cpu,mode}`) and for the machine (`node_cpu_total_seconds_total{mode}`,
//! the kernel's own aggregate `cpu ` line, so cores going offline do not dent it).
//!
//! The kernel counts in USER_HZ ticks, 100 per second on every Linux ABI, which node_exporter
//! assumes too. Columns past `steal` (guest, guest_nice) are already counted in user and nice.

use sonde_common::model::MetricKind;

use super::{ParseError, reading};
use crate::sources::Reading;

/// Ticks per second of the `/proc/stat` counters.
const USER_HZ: f64 = 100.0;

/// Reported modes, in `/proc/stat`'s column order.
const MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// Parses `/proc/stat`; lines other than `cpu` and `cpuN` are ignored.
pub fn parse(text: &str, host: &str) -> Result<Vec<Reading>, ParseError> {
    let mut out = Vec::new();
    let mut saw_total = false;
    for (index, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let Some(core) = fields.next().and_then(|key| key.strip_prefix("cpu")) else {
            continue;
        };
        if !core.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let ticks = parse_ticks(fields, index + 1)?;
        for (mode, ticks) in MODES.into_iter().zip(ticks) {
            let seconds = ticks as f64 / USER_HZ;
            out.push(if core.is_empty() {
                let labels = [("mode", mode)];
                reading(
                    "node_cpu_total_seconds_total",
                    MetricKind::Counter,
                    seconds,
                    host,
                    &labels,
                )
            } else {
                let labels = [("cpu", core), ("mode", mode)];
                reading(
                    "node_cpu_seconds_total",
                    MetricKind::Counter,
                    seconds,
                    host,
                    &labels,
                )
            });
        }
        saw_total |= core.is_empty();
    }
    if !saw_total {
        return Err(ParseError::MissingLine("cpu"));
    }
    Ok(out)
}

/// The first eight counters after the key; extra columns are ignored.
fn parse_ticks<'a>(
    mut fields: impl Iterator<Item = &'a str>,
    line: usize,
) -> Result<[u64; 8], ParseError> {
    let mut ticks = [0; 8];
    for (i, slot) in ticks.iter_mut().enumerate() {
        let field = i + 2;
        let text = fields
            .next()
            .ok_or(ParseError::MissingField { line, field })?;
        *slot = text
            .parse()
            .map_err(|_| ParseError::NotANumber { line, field })?;
    }
    Ok(ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "\
cpu  19308 0 2438 32217 227 0 35 15 0 0
cpu0 8646 0 1119 17289 45 0 9 6 0 0
cpu1 10662 3 1319 14927 182 0 25 9 0 0 77
intr 155941 0 0 0 0 0 0 0 0 0 0 0
ctxt 237689
btime 1718000000
processes 6601
procs_running 2
procs_blocked 0
softirq 120311 0 41221 2 3120 0 0 1177 39940 0 34851
";

    fn value(out: &[Reading], name: &str, cpu: Option<&str>, mode: &str) -> f64 {
        out.iter()
            .find(|r| {
                r.series.name == name
                    && r.series.label("cpu") == cpu
                    && r.series.label("mode") == Some(mode)
            })
            .unwrap_or_else(|| panic!("no {name} cpu={cpu:?} mode={mode}"))
            .value
    }

    #[test]
    fn parses_total_and_per_core_seconds() {
        let out = parse(STAT, "h").unwrap();
        assert_eq!(out.len(), 3 * 8);
        assert_eq!(
            value(&out, "node_cpu_total_seconds_total", None, "user"),
            193.08
        );
        assert_eq!(
            value(&out, "node_cpu_total_seconds_total", None, "steal"),
            0.15
        );
        assert_eq!(
            value(&out, "node_cpu_seconds_total", Some("0"), "idle"),
            172.89
        );
        assert_eq!(
            value(&out, "node_cpu_seconds_total", Some("1"), "nice"),
            0.03
        );
        assert_eq!(
            value(&out, "node_cpu_seconds_total", Some("1"), "softirq"),
            0.25
        );
        for r in &out {
            assert_eq!(r.kind, MetricKind::Counter);
            assert_eq!(r.series.label("host"), Some("h"));
        }
    }

    #[test]
    fn rejects_malformed_cpu_lines() {
        let short = "cpu  1 2 3 4 5 6 7 8\ncpu0 1 2 3 4\n";
        assert_eq!(
            parse(short, "h"),
            Err(ParseError::MissingField { line: 2, field: 6 })
        );
        let garbage = "cpu  1 2 3 4 5 6 7 8\ncpu0 1 2 x 4 5 6 7 8\n";
        assert_eq!(
            parse(garbage, "h"),
            Err(ParseError::NotANumber { line: 2, field: 4 })
        );
        assert_eq!(
            parse("cpu0 1 2 3 4 5 6 7 8\n", "h"),
            Err(ParseError::MissingLine("cpu"))
        );
        assert_eq!(parse("", "h"), Err(ParseError::MissingLine("cpu")));
    }
}
