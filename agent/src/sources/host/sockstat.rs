//! Socket counts from `/proc/net/sockstat` and `/proc/net/sockstat6`, as node_exporter's
//! `sockstat` collector names them (all gauges):
//! - `node_sockstat_sockets_used` (`sockets: used`, IPv4 file only);
//! - `node_sockstat_<PROTOCOL>_<key>` for every protocol line and the keys `inuse`, `orphan`,
//!   `tw`, `alloc`, `mem` (pages) and `memory` (bytes), e.g. `node_sockstat_TCP_inuse`,
//!   `node_sockstat_TCP_tw`, `node_sockstat_UDP_inuse`, `node_sockstat_FRAG_memory`, and from the
//!   IPv6 file `node_sockstat_TCP6_inuse`, `node_sockstat_UDP6_inuse`, ...;
//! - `node_sockstat_<PROTOCOL>_mem_bytes`: `mem` times the page size.
//!
//! Protocols are taken as the kernel prints them (TCP, UDP, UDPLITE, RAW, FRAG and their `6`
//! forms), so a new one appears without a code change; a protocol name that would not make a
//! valid metric name is skipped. The counts are for the agent's network namespace. The IPv6
//! file is absent when IPv6 is disabled, which the I/O side does not count as an error.

use sonde_common::model::MetricKind;

use super::{ParseError, reading};
use crate::sources::Reading;

/// The keys node_exporter reports; others (none today) are ignored.
const KEYS: [&str; 6] = ["inuse", "orphan", "tw", "alloc", "mem", "memory"];

/// Parses either file: lines `PROTOCOL: key value key value ...`. `page_size` turns `mem` pages
/// into bytes.
pub fn parse(text: &str, page_size: u64, host: &str) -> Result<Vec<Reading>, ParseError> {
    let mut out = Vec::new();
    let mut name = String::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let (protocol, pairs) = line.split_once(':').ok_or(ParseError::Malformed {
            line: line_no,
            reason: "no ':' after the protocol",
        })?;
        let protocol = protocol.trim();
        // The collector refuses a whole batch over one invalid name: check before building it.
        let usable = !protocol.is_empty()
            && protocol
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let mut fields = pairs.split_whitespace().enumerate();
        while let Some((i, key)) = fields.next() {
            let field = i + 3;
            let value = fields.next().ok_or(ParseError::MissingField {
                line: line_no,
                field,
            })?;
            let value: u64 = value.1.parse().map_err(|_| ParseError::NotANumber {
                line: line_no,
                field,
            })?;
            let wanted = match protocol {
                "sockets" => key == "used",
                _ => KEYS.contains(&key),
            };
            if !usable || !wanted {
                continue;
            }
            name.clear();
            name.push_str("node_sockstat_");
            name.push_str(protocol);
            name.push('_');
            name.push_str(key);
            out.push(reading(&name, MetricKind::Gauge, value as f64, host, &[]));
            if key == "mem" {
                name.push_str("_bytes");
                let bytes = value.saturating_mul(page_size) as f64;
                out.push(reading(&name, MetricKind::Gauge, bytes, host, &[]));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCKSTAT: &str = "\
sockets: used 291
TCP: inuse 7 orphan 1 tw 113 alloc 11 mem 9
UDP: inuse 4 mem 2
UDPLITE: inuse 0
RAW: inuse 0
FRAG: inuse 0 memory 0
";

    const SOCKSTAT6: &str = "\
TCP6: inuse 3
UDP6: inuse 2
UDPLITE6: inuse 0
RAW6: inuse 1
FRAG6: inuse 0 memory 0
";

    fn got(out: &[Reading]) -> Vec<(&str, f64)> {
        out.iter()
            .map(|r| (r.series.name.as_str(), r.value))
            .collect()
    }

    #[test]
    fn parses_ipv4_counts() {
        let out = parse(SOCKSTAT, 4096, "h").unwrap();
        assert_eq!(
            got(&out),
            [
                ("node_sockstat_sockets_used", 291.0),
                ("node_sockstat_TCP_inuse", 7.0),
                ("node_sockstat_TCP_orphan", 1.0),
                ("node_sockstat_TCP_tw", 113.0),
                ("node_sockstat_TCP_alloc", 11.0),
                ("node_sockstat_TCP_mem", 9.0),
                ("node_sockstat_TCP_mem_bytes", 36_864.0),
                ("node_sockstat_UDP_inuse", 4.0),
                ("node_sockstat_UDP_mem", 2.0),
                ("node_sockstat_UDP_mem_bytes", 8192.0),
                ("node_sockstat_UDPLITE_inuse", 0.0),
                ("node_sockstat_RAW_inuse", 0.0),
                ("node_sockstat_FRAG_inuse", 0.0),
                ("node_sockstat_FRAG_memory", 0.0),
            ]
        );
        assert!(out.iter().all(|r| r.kind == MetricKind::Gauge));
        assert!(out.iter().all(|r| r.series.label("host") == Some("h")));
    }

    #[test]
    fn parses_ipv6_counts() {
        let out = parse(SOCKSTAT6, 4096, "h").unwrap();
        assert_eq!(
            got(&out),
            [
                ("node_sockstat_TCP6_inuse", 3.0),
                ("node_sockstat_UDP6_inuse", 2.0),
                ("node_sockstat_UDPLITE6_inuse", 0.0),
                ("node_sockstat_RAW6_inuse", 1.0),
                ("node_sockstat_FRAG6_inuse", 0.0),
                ("node_sockstat_FRAG6_memory", 0.0),
            ]
        );
    }

    #[test]
    fn skips_unknown_keys_and_unusable_protocol_names() {
        let text =
            "MPTCP: inuse 1 weird 5\nBAD-PROTO: inuse 1\n: inuse 2\nsockets: used 3 other 4\n";
        assert_eq!(
            got(&parse(text, 4096, "h").unwrap()),
            [
                ("node_sockstat_MPTCP_inuse", 1.0),
                ("node_sockstat_sockets_used", 3.0)
            ]
        );
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(matches!(
            parse("TCP inuse 7\n", 4096, "h"),
            Err(ParseError::Malformed { line: 1, .. })
        ));
        assert_eq!(
            parse("sockets: used 1\nTCP: inuse 7 orphan\n", 4096, "h"),
            Err(ParseError::MissingField { line: 2, field: 5 })
        );
        assert_eq!(
            parse("TCP: inuse seven\n", 4096, "h"),
            Err(ParseError::NotANumber { line: 1, field: 3 })
        );
        assert_eq!(parse("\n\n", 4096, "h"), Ok(Vec::new()));
        let huge = "TCP: mem 18446744073709551615\n";
        let out = parse(huge, 4096, "h").unwrap();
        assert_eq!(out[1].value, u64::MAX as f64, "saturates, no overflow");
    }
}
