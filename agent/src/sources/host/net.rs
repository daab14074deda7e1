//! Network interface counters from `/proc/net/dev`, every interface including `lo`:
//! `node_network_{receive,transmit}_{bytes,packets,errs,drop}_total{device}` (counters).
//!
//! sysinfo's `Networks` has six of these eight figures (no drops), reads each from its own
//! sysfs file (so they come from different instants), reports an unreadable file as 0, and looks
//! up every address on each refresh. One read of this file gives all eight, in one snapshot.

use sonde_common::model::MetricKind;

use super::{ParseError, reading};
use crate::sources::Reading;

/// Metric name and column, counted after the interface name (receive 0..8, transmit 8..16).
const COLUMNS: [(&str, usize); 8] = [
    ("node_network_receive_bytes_total", 0),
    ("node_network_receive_packets_total", 1),
    ("node_network_receive_errs_total", 2),
    ("node_network_receive_drop_total", 3),
    ("node_network_transmit_bytes_total", 8),
    ("node_network_transmit_packets_total", 9),
    ("node_network_transmit_errs_total", 10),
    ("node_network_transmit_drop_total", 11),
];

/// Parses `/proc/net/dev`, skipping its two header lines (the ones with `|`).
pub fn parse(text: &str, host: &str) -> Result<Vec<Reading>, ParseError> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.contains('|') || line.trim().is_empty() {
            continue;
        }
        // Interface names cannot contain ':', and big counters may touch it ("eth0:123").
        let (device, counters) = line.split_once(':').ok_or(ParseError::Malformed {
            line: line_no,
            reason: "no ':' after the interface name",
        })?;
        let device = device.trim();
        if device.is_empty() {
            let reason = "empty interface name";
            return Err(ParseError::Malformed {
                line: line_no,
                reason,
            });
        }
        let mut values = [""; 12];
        let mut fields = counters.split_whitespace();
        for (column, slot) in values.iter_mut().enumerate() {
            let field = column + 2;
            *slot = fields.next().ok_or(ParseError::MissingField {
                line: line_no,
                field,
            })?;
        }
        for (name, column) in COLUMNS {
            let field = column + 2;
            let value: u64 = values[column].parse().map_err(|_| ParseError::NotANumber {
                line: line_no,
                field,
            })?;
            let labels = [("device", device)];
            out.push(reading(
                name,
                MetricKind::Counter,
                value as f64,
                host,
                &labels,
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0
  eth0:108599528    6207    3    4    0     0          0         0   439301    3931    5    6    0     0       0          0
docker0:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0    99
";

    fn value(out: &[Reading], name: &str, device: &str) -> f64 {
        let found = out
            .iter()
            .find(|r| r.series.name == name && r.series.label("device") == Some(device));
        found
            .unwrap_or_else(|| panic!("no {name} for {device}"))
            .value
    }

    #[test]
    fn parses_every_interface_including_lo() {
        let out = parse(NET_DEV, "h").unwrap();
        assert_eq!(out.len(), 3 * 8);
        assert_eq!(
            value(&out, "node_network_receive_bytes_total", "lo"),
            3193.0
        );
        assert_eq!(
            value(&out, "node_network_receive_bytes_total", "eth0"),
            108_599_528.0
        );
        assert_eq!(
            value(&out, "node_network_receive_packets_total", "eth0"),
            6207.0
        );
        assert_eq!(value(&out, "node_network_receive_errs_total", "eth0"), 3.0);
        assert_eq!(value(&out, "node_network_receive_drop_total", "eth0"), 4.0);
        assert_eq!(
            value(&out, "node_network_transmit_bytes_total", "eth0"),
            439_301.0
        );
        assert_eq!(
            value(&out, "node_network_transmit_packets_total", "eth0"),
            3931.0
        );
        assert_eq!(value(&out, "node_network_transmit_errs_total", "eth0"), 5.0);
        assert_eq!(value(&out, "node_network_transmit_drop_total", "eth0"), 6.0);
        assert_eq!(
            value(&out, "node_network_transmit_drop_total", "docker0"),
            0.0
        );
        assert!(out.iter().all(|r| r.kind == MetricKind::Counter));
        assert!(out.iter().all(|r| r.series.label("host") == Some("h")));
    }

    #[test]
    fn rejects_malformed_lines() {
        let short = "  eth0: 1 2 3 4 5 6 7 8 9 10\n";
        let err = ParseError::MissingField { line: 1, field: 12 };
        assert_eq!(parse(short, "h"), Err(err));
        let garbage = "  eth0: 1 2 3 -4 5 6 7 8 9 10 11 12 13 14 15 16\n";
        let err = ParseError::NotANumber { line: 1, field: 5 };
        assert_eq!(parse(garbage, "h"), Err(err));
        assert!(matches!(
            parse("Inter-|\n eth0 1 2 3\n", "h"),
            Err(ParseError::Malformed { line: 2, .. })
        ));
        assert!(matches!(
            parse(" : 1 2\n", "h"),
            Err(ParseError::Malformed { .. })
        ));
        assert_eq!(parse("", "h"), Ok(Vec::new()));
    }
}
