//! Protocol counters from `/proc/net/snmp`, `/proc/net/netstat` and `/proc/net/snmp6`, as
//! node_exporter's `netstat` collector names them, `node_netstat_<Protocol>_<Field>` with no
//! `_total` suffix even on counters, and only the fields its default
//! `--collector.netstat.fields` selects ([`is_reported`]):
//! - snmp: `Ip_Forwarding`, `Icmp_{InMsgs,OutMsgs,InErrors}`,
//!   `Tcp_{ActiveOpens,PassiveOpens,CurrEstab,InSegs,OutSegs,RetransSegs,OutRsts,InErrs}`,
//!   `Udp_{InDatagrams,OutDatagrams,NoPorts,InErrors,RcvbufErrors,SndbufErrors}`,
//!   `UdpLite_InErrors`;
//! - netstat: `TcpExt_{ListenOverflows,ListenDrops,Syncookies*,TCPSynRetrans,TCPTimeouts,
//!   TCPOFOQueue,TCPRcvQFull}`, `IpExt_{InOctets,OutOctets}`;
//! - snmp6 (absent when IPv6 is disabled): `Ip6_{InOctets,OutOctets}`,
//!   `Icmp6_{InMsgs,OutMsgs,InErrors}`, `Udp6_{InDatagrams,OutDatagrams,NoPorts,InErrors,
//!   RcvbufErrors,SndbufErrors}`, `UdpLite6_InErrors`.
//!
//! node_exporter exports them untyped; here `Tcp_CurrEstab` and `Ip_Forwarding` are gauges and
//! the rest counters, which is what they are. The figures are for the agent's network namespace.

use sonde_common::model::MetricKind;

use super::{ParseError, reading};
use crate::sources::Reading;

/// node_exporter's default field filter,
/// `^(.*_(InErrors|InErrs)|Ip_Forwarding|Ip(6|Ext)_(InOctets|OutOctets)|Icmp6?_(InMsgs|OutMsgs)|
/// TcpExt_(Listen.*|Syncookies.*|TCPSynRetrans|TCPTimeouts|TCPOFOQueue|TCPRcvQFull)|
/// Tcp_(ActiveOpens|InSegs|OutSegs|OutRsts|PassiveOpens|RetransSegs|CurrEstab)|
/// Udp6?_(InDatagrams|OutDatagrams|NoPorts|RcvbufErrors|SndbufErrors))$`, without a regex engine.
/// A protocol that would not make a valid metric name is never reported.
pub fn is_reported(protocol: &str, field: &str) -> bool {
    let valid = !protocol.is_empty()
        && protocol
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return false;
    }
    matches!(field, "InErrors" | "InErrs")
        || match protocol {
            "Ip" => field == "Forwarding",
            "Ip6" | "IpExt" => matches!(field, "InOctets" | "OutOctets"),
            "Icmp" | "Icmp6" => matches!(field, "InMsgs" | "OutMsgs"),
            "TcpExt" => {
                field.starts_with("Listen")
                    || field.starts_with("Syncookies")
                    || matches!(
                        field,
                        "TCPSynRetrans" | "TCPTimeouts" | "TCPOFOQueue" | "TCPRcvQFull"
                    )
            }
            "Tcp" => matches!(
                field,
                "ActiveOpens"
                    | "InSegs"
                    | "OutSegs"
                    | "OutRsts"
                    | "PassiveOpens"
                    | "RetransSegs"
                    | "CurrEstab"
            ),
            "Udp" | "Udp6" => matches!(
                field,
                "InDatagrams" | "OutDatagrams" | "NoPorts" | "RcvbufErrors" | "SndbufErrors"
            ),
            _ => false,
        }
}

/// Parses `/proc/net/snmp` or `/proc/net/netstat`: pairs of lines, names then values, both
/// starting with the same `Protocol:`.
pub fn parse(text: &str, host: &str) -> Result<Vec<Reading>, ParseError> {
    let mut out = Vec::new();
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    while let Some((index, names)) = lines.next() {
        let (names_no, values_no) = (index + 1, index + 2);
        let (protocol, names) = names.split_once(':').ok_or(ParseError::Malformed {
            line: names_no,
            reason: "no ':' after the protocol",
        })?;
        let (index, values) = lines.next().ok_or(ParseError::Malformed {
            line: values_no,
            reason: "a line of names has no line of values",
        })?;
        let line = index + 1;
        let values = values
            .strip_prefix(protocol)
            .and_then(|v| v.strip_prefix(':'))
            .ok_or(ParseError::Malformed {
                line,
                reason: "the values' protocol differs from the names'",
            })?;
        let mut values = values.split_whitespace();
        for (i, field) in names.split_whitespace().enumerate() {
            let field_no = i + 2;
            let value = values.next().ok_or(ParseError::MissingField {
                line,
                field: field_no,
            })?;
            if is_reported(protocol, field) {
                let value = number(value, line, field_no)?;
                push(&mut out, protocol, field, value, host);
            }
        }
        if values.next().is_some() {
            let reason = "more values than names";
            return Err(ParseError::Malformed { line, reason });
        }
    }
    Ok(out)
}

/// Parses `/proc/net/snmp6`: one `Ip6InOctets  123` per line; the protocol is the name up to and
/// including its first `6`. Lines without a `6` in the name are skipped, as node_exporter does.
pub fn parse_snmp6(text: &str, host: &str) -> Result<Vec<Reading>, ParseError> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let mut fields = line.split_whitespace();
        let Some(name) = fields.next() else { continue };
        let Some(six) = name.find('6') else { continue };
        let (protocol, field) = name.split_at(six + 1);
        if !is_reported(protocol, field) {
            continue;
        }
        let value = fields.next().ok_or(ParseError::MissingField {
            line: line_no,
            field: 2,
        })?;
        let value = number(value, line_no, 2)?;
        push(&mut out, protocol, field, value, host);
    }
    Ok(out)
}

/// Counters are unsigned 64-bit; a few fields (`Tcp_MaxConn`) are -1.
fn number(text: &str, line: usize, field: usize) -> Result<f64, ParseError> {
    match text.parse::<u64>() {
        Ok(v) => Ok(v as f64),
        Err(_) => text
            .parse::<i64>()
            .map(|v| v as f64)
            .map_err(|_| ParseError::NotANumber { line, field }),
    }
}

fn push(out: &mut Vec<Reading>, protocol: &str, field: &str, value: f64, host: &str) {
    let kind = match (protocol, field) {
        ("Tcp", "CurrEstab") | ("Ip", "Forwarding") => MetricKind::Gauge,
        _ => MetricKind::Counter,
    };
    let name = format!("node_netstat_{protocol}_{field}");
    out.push(reading(&name, kind, value, host, &[]));
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits
Ip: 2 64 819023 0 0 0 0 0 819023 813819 0 0 0 0 0 0 0 0 0 813819
Icmp: InMsgs InErrors InCsumErrors InDestUnreachs InTimeExcds InParmProbs InSrcQuenchs InRedirects InEchos InEchoReps InTimestamps InTimestampReps InAddrMasks InAddrMaskReps OutMsgs OutErrors OutRateLimitGlobal OutRateLimitHost OutDestUnreachs OutTimeExcds OutParmProbs OutSrcQuenchs OutRedirects OutEchos OutEchoReps OutTimestamps OutTimestampReps OutAddrMasks OutAddrMaskReps
Icmp: 1 0 0 1 0 0 0 0 0 0 0 0 0 0 3 0 0 0 0 0 0 0 0 0 0 0 0 0 0
IcmpMsg: InType3
IcmpMsg: 1
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 4075 1739 2268 365 5 818887 814001 463 7 2549 0
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 135 4 2 136 1 0 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
";

    const NETSTAT: &str = "\
TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts ListenOverflows ListenDrops TCPTimeouts TCPSynRetrans TCPOFOQueue TCPRcvQFull TCPHPHits
TcpExt: 0 0 1 0 12 13 40 41 42 43 1000
IpExt: InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InBcastPkts OutBcastPkts InOctets OutOctets InMcastOctets
IpExt: 0 0 0 0 0 0 18446744073709551615 4321 0
MPTcpExt: MPCapableSYNRX
MPTcpExt: 0
";

    const SNMP6: &str = "\
Ip6InReceives                   \t1
Ip6InOctets                     \t1100
Ip6OutOctets                    \t2200
Icmp6InMsgs                     \t3
Icmp6InErrors                   \t0
Icmp6OutMsgs                    \t4
Icmp6InType133                  \t1
Udp6InDatagrams                 \t5
Udp6NoPorts                     \t6
Udp6InErrors                    \t7
Udp6OutDatagrams                \t8
Udp6RcvbufErrors                \t9
Udp6SndbufErrors                \t10
UdpLite6InErrors                \t11
Ip6OutNoRoutes                  \t0
";

    fn got(out: &[Reading]) -> Vec<(&str, f64)> {
        out.iter()
            .map(|r| (r.series.name.as_str(), r.value))
            .collect()
    }

    #[test]
    fn parses_the_default_snmp_fields() {
        let out = parse(SNMP, "h").unwrap();
        assert_eq!(
            got(&out),
            [
                ("node_netstat_Ip_Forwarding", 2.0),
                ("node_netstat_Icmp_InMsgs", 1.0),
                ("node_netstat_Icmp_InErrors", 0.0),
                ("node_netstat_Icmp_OutMsgs", 3.0),
                ("node_netstat_Tcp_ActiveOpens", 4075.0),
                ("node_netstat_Tcp_PassiveOpens", 1739.0),
                ("node_netstat_Tcp_CurrEstab", 5.0),
                ("node_netstat_Tcp_InSegs", 818_887.0),
                ("node_netstat_Tcp_OutSegs", 814_001.0),
                ("node_netstat_Tcp_RetransSegs", 463.0),
                ("node_netstat_Tcp_InErrs", 7.0),
                ("node_netstat_Tcp_OutRsts", 2549.0),
                ("node_netstat_Udp_InDatagrams", 135.0),
                ("node_netstat_Udp_NoPorts", 4.0),
                ("node_netstat_Udp_InErrors", 2.0),
                ("node_netstat_Udp_OutDatagrams", 136.0),
                ("node_netstat_Udp_RcvbufErrors", 1.0),
                ("node_netstat_Udp_SndbufErrors", 0.0),
                ("node_netstat_UdpLite_InErrors", 0.0),
            ]
        );
        let kind = |name: &str| out.iter().find(|r| r.series.name == name).unwrap().kind;
        assert_eq!(kind("node_netstat_Tcp_CurrEstab"), MetricKind::Gauge);
        assert_eq!(kind("node_netstat_Ip_Forwarding"), MetricKind::Gauge);
        assert_eq!(kind("node_netstat_Tcp_RetransSegs"), MetricKind::Counter);
        assert!(out.iter().all(|r| r.series.label("host") == Some("h")));
    }

    #[test]
    fn parses_the_default_netstat_fields() {
        let out = parse(NETSTAT, "h").unwrap();
        assert_eq!(
            got(&out),
            [
                ("node_netstat_TcpExt_SyncookiesSent", 0.0),
                ("node_netstat_TcpExt_SyncookiesRecv", 0.0),
                ("node_netstat_TcpExt_SyncookiesFailed", 1.0),
                ("node_netstat_TcpExt_ListenOverflows", 12.0),
                ("node_netstat_TcpExt_ListenDrops", 13.0),
                ("node_netstat_TcpExt_TCPTimeouts", 40.0),
                ("node_netstat_TcpExt_TCPSynRetrans", 41.0),
                ("node_netstat_TcpExt_TCPOFOQueue", 42.0),
                ("node_netstat_TcpExt_TCPRcvQFull", 43.0),
                ("node_netstat_IpExt_InOctets", u64::MAX as f64),
                ("node_netstat_IpExt_OutOctets", 4321.0),
            ]
        );
    }

    #[test]
    fn parses_the_default_snmp6_fields() {
        let out = parse_snmp6(SNMP6, "h").unwrap();
        assert_eq!(
            got(&out),
            [
                ("node_netstat_Ip6_InOctets", 1100.0),
                ("node_netstat_Ip6_OutOctets", 2200.0),
                ("node_netstat_Icmp6_InMsgs", 3.0),
                ("node_netstat_Icmp6_InErrors", 0.0),
                ("node_netstat_Icmp6_OutMsgs", 4.0),
                ("node_netstat_Udp6_InDatagrams", 5.0),
                ("node_netstat_Udp6_NoPorts", 6.0),
                ("node_netstat_Udp6_InErrors", 7.0),
                ("node_netstat_Udp6_OutDatagrams", 8.0),
                ("node_netstat_Udp6_RcvbufErrors", 9.0),
                ("node_netstat_Udp6_SndbufErrors", 10.0),
                ("node_netstat_UdpLite6_InErrors", 11.0),
            ]
        );
        assert!(out.iter().all(|r| r.kind == MetricKind::Counter));
    }

    #[test]
    fn the_filter_matches_node_exporter_default() {
        for (p, f) in [
            ("Tcp", "InErrs"),
            ("IcmpMsg", "InErrors"),
            ("TcpExt", "ListenFoo"),
            ("Ip6", "InOctets"),
        ] {
            assert!(is_reported(p, f), "{p}_{f}");
        }
        for (p, f) in [
            ("", "InErrors"),
            ("Tcp-X", "InErrors"),
            ("Tcp", "MaxConn"),
            ("Ip", "InReceives"),
            ("Ip6", "Forwarding"),
            ("Udp", "InCsumErrors"),
            ("UdpLite", "InDatagrams"),
            ("TcpExt", "TCPHPHits"),
            ("Icmp6", "InType133"),
        ] {
            assert!(!is_reported(p, f), "{p}_{f}");
        }
    }

    #[test]
    fn rejects_malformed_pairs() {
        let unpaired = "Tcp: ActiveOpens\n";
        assert!(matches!(
            parse(unpaired, "h"),
            Err(ParseError::Malformed { line: 2, .. })
        ));
        let mismatched = "Tcp: ActiveOpens\nUdp: 1\n";
        assert!(matches!(
            parse(mismatched, "h"),
            Err(ParseError::Malformed { line: 2, .. })
        ));
        let short = "Tcp: ActiveOpens PassiveOpens\nTcp: 1\n";
        assert_eq!(
            parse(short, "h"),
            Err(ParseError::MissingField { line: 2, field: 3 })
        );
        let long = "Tcp: ActiveOpens\nTcp: 1 2\n";
        assert!(matches!(
            parse(long, "h"),
            Err(ParseError::Malformed { line: 2, .. })
        ));
        let garbage = "Tcp: ActiveOpens\nTcp: many\n";
        assert_eq!(
            parse(garbage, "h"),
            Err(ParseError::NotANumber { line: 2, field: 2 })
        );
        let no_colon = "Tcp ActiveOpens\nTcp 1\n";
        assert!(matches!(
            parse(no_colon, "h"),
            Err(ParseError::Malformed { line: 1, .. })
        ));
        // An unreported field is not parsed, so its odd value does not matter.
        assert_eq!(parse("Tcp: MaxConn\nTcp: -1\n", "h"), Ok(Vec::new()));
        assert_eq!(parse("", "h"), Ok(Vec::new()));
        assert_eq!(
            parse_snmp6("Udp6InErrors\n", "h"),
            Err(ParseError::MissingField { line: 1, field: 2 })
        );
        assert_eq!(
            parse_snmp6("Udp6InErrors x\n", "h"),
            Err(ParseError::NotANumber { line: 1, field: 2 })
        );
        assert_eq!(parse_snmp6("\nIpInOctets 5\n6 7\n", "h"), Ok(Vec::new()));
    }
}
