//! Process and thread counts, under Sonde's own names (node_exporter's `processes` collector is
//! off by default and walks every `/proc/<pid>/stat`, far too dear for this agent's budget):
//! - `host_processes`: the numeric directories of `proc_path`, one `readdir` pass with no file
//!   opened (so it counts processes, not threads);
//! - `host_threads`: the kernel's count of scheduling entities, the number after the slash in
//!   `/proc/loadavg`'s fourth field (`1/87`), read once per collection with the load area.
//!
//! Both are gauges.

use std::io;
use std::path::Path;

use sonde_common::model::MetricKind;

use super::{ParseError, reading};
use crate::sources::Reading;

/// The thread count in `/proc/loadavg` (`0.51 0.54 0.25 1/84 6587` -> 84).
pub fn threads(loadavg: &str) -> Result<u64, ParseError> {
    let (line, field) = (1, 4);
    let entities = loadavg
        .split_whitespace()
        .nth(3)
        .ok_or(ParseError::MissingField { line, field })?;
    let (_, total) = entities.split_once('/').ok_or(ParseError::Malformed {
        line,
        reason: "field 4 is not runnable/total",
    })?;
    total
        .parse()
        .map_err(|_| ParseError::NotANumber { line, field })
}

/// Counts the entries of `proc_path` whose names are all digits: one per process.
pub fn count(proc_path: &Path) -> io::Result<u64> {
    let mut processes = 0;
    for entry in std::fs::read_dir(proc_path)? {
        // A process that exits mid-listing is not an error; the count is a snapshot anyway.
        let Ok(entry) = entry else { continue };
        processes += u64::from(is_pid(entry.file_name().as_encoded_bytes()));
    }
    Ok(processes)
}

fn is_pid(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(u8::is_ascii_digit)
}

pub fn readings(processes: u64, threads: u64, host: &str) -> Vec<Reading> {
    vec![
        reading(
            "host_processes",
            MetricKind::Gauge,
            processes as f64,
            host,
            &[],
        ),
        reading("host_threads", MetricKind::Gauge, threads as f64, host, &[]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_come_from_the_fourth_loadavg_field() {
        assert_eq!(threads("0.51 0.54 0.25 1/84 6587\n"), Ok(84));
        assert_eq!(threads("0.00 0.00 0.00 12/30211 99\n"), Ok(30211));
    }

    #[test]
    fn rejects_malformed_loadavg() {
        let missing = ParseError::MissingField { line: 1, field: 4 };
        assert_eq!(threads("0.51 0.54 0.25"), Err(missing));
        assert_eq!(threads(""), Err(missing));
        assert!(matches!(
            threads("0.51 0.54 0.25 84 6587"),
            Err(ParseError::Malformed { line: 1, .. })
        ));
        let nan = ParseError::NotANumber { line: 1, field: 4 };
        assert_eq!(threads("0.51 0.54 0.25 1/ 6587"), Err(nan));
        assert_eq!(threads("0.51 0.54 0.25 1/-3 6587"), Err(nan));
    }

    #[test]
    fn counts_numeric_entries_only() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["1", "42", "31337", "self", "net", "1a", "sys"] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        std::fs::write(dir.path().join("stat"), "").unwrap();
        assert_eq!(count(dir.path()).unwrap(), 3);
        assert!(count(&dir.path().join("absent")).is_err());
        assert!(!is_pid(b""));
    }

    #[test]
    fn readings_are_gauges() {
        let out = readings(120, 250, "h");
        let got: Vec<_> = out
            .iter()
            .map(|r| (r.series.name.as_str(), r.kind, r.value))
            .collect();
        assert_eq!(
            got,
            [
                ("host_processes", MetricKind::Gauge, 120.0),
                ("host_threads", MetricKind::Gauge, 250.0),
            ]
        );
        assert!(out.iter().all(|r| r.series.label("host") == Some("h")));
    }
}
