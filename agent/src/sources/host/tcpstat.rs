//! TCP connections by state from `/proc/net/tcp` and `/proc/net/tcp6`, summed over both, as
//! node_exporter's `tcpstat` collector names them: `node_tcp_connection_states{state}` (gauge),
//! `state` one of `established`, `syn_sent`, `syn_recv`, `fin_wait1`, `fin_wait2`, `time_wait`,
//! `close`, `close_wait`, `last_ack`, `listen`, `closing` (the kernel's `st` codes 01 to 0B), plus
//! the two sums node_exporter reports under the same name, `rx_queued_bytes` and
//! `tx_queued_bytes` (the `tx_queue:rx_queue` column; for a listening socket the kernel puts its
//! accept backlog in `rx_queue`).
//!
//! Unlike node_exporter, every state is reported, 0 included, so a state that empties reads 0
//! instead of vanishing. An `st` code outside 01-0B (none is printed today) is not counted.
//!
//! Cost: these files list every socket of the agent's network namespace, about 150 bytes each,
//! so a host with 100,000 connections makes the kernel format 15 MB per collection. The I/O side
//! therefore feeds [`TcpStates`] line by line from a small reused buffer instead of reading the
//! file whole (node_exporter now asks netlink's `sock_diag` instead, which this agent does not
//! do yet); disable the `tcpstat` area on hosts with that many connections.

use sonde_common::model::MetricKind;

use super::{ParseError, reading};
use crate::sources::Reading;

/// State names by kernel code - 1 (`include/net/tcp_states.h`).
const STATES: [&str; 11] = [
    "established",
    "syn_sent",
    "syn_recv",
    "fin_wait1",
    "fin_wait2",
    "time_wait",
    "close",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
];

const METRIC: &str = "node_tcp_connection_states";

/// Connection counts and queued bytes, accumulated over the lines of one or more files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpStates {
    counts: [u64; STATES.len()],
    rx_queued: u64,
    tx_queued: u64,
}

impl TcpStates {
    /// Adds one line: `sl local rem st tx_queue:rx_queue ...`. The header line (`sl ...`) and
    /// blank lines are skipped. `line` counts from 1, for the error.
    pub fn add_line(&mut self, text: &str, line: usize) -> Result<(), ParseError> {
        let mut fields = text.split_whitespace();
        match fields.next() {
            None | Some("sl") => return Ok(()),
            Some(_) => {}
        }
        let mut fields = fields.skip(2);
        let st = fields
            .next()
            .ok_or(ParseError::MissingField { line, field: 4 })?;
        let queues = fields
            .next()
            .ok_or(ParseError::MissingField { line, field: 5 })?;
        let st =
            u8::from_str_radix(st, 16).map_err(|_| ParseError::NotANumber { line, field: 4 })?;
        let (tx, rx) = queues.split_once(':').ok_or(ParseError::Malformed {
            line,
            reason: "field 5 is not tx_queue:rx_queue",
        })?;
        let hex =
            |s| u64::from_str_radix(s, 16).map_err(|_| ParseError::NotANumber { line, field: 5 });
        let (tx, rx) = (hex(tx)?, hex(rx)?);
        self.tx_queued = self.tx_queued.saturating_add(tx);
        self.rx_queued = self.rx_queued.saturating_add(rx);
        if let Some(count) = usize::from(st)
            .checked_sub(1)
            .and_then(|i| self.counts.get_mut(i))
        {
            *count += 1;
        }
        Ok(())
    }

    /// Adds every line of a whole file's text.
    #[cfg(test)]
    pub fn add_text(&mut self, text: &str) -> Result<(), ParseError> {
        for (index, line) in text.lines().enumerate() {
            self.add_line(line, index + 1)?;
        }
        Ok(())
    }

    pub fn readings(&self, host: &str) -> Vec<Reading> {
        let counts = STATES.into_iter().zip(self.counts);
        let queues = [
            ("rx_queued_bytes", self.rx_queued),
            ("tx_queued_bytes", self.tx_queued),
        ];
        counts
            .chain(queues)
            .map(|(state, value)| {
                let labels = [("state", state)];
                reading(METRIC, MetricKind::Gauge, value as f64, host, &labels)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000002 00:00000000 00000000     0        0 1077 1 000000006a2c2e79 100 0 0 10 0
   1: 0100007F:4C0E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 76238 1 00000000434901ff 100 0 0 10 0
   2: 0100007F:ABC0 0100007F:A185 06 00000000:00000000 03:00000326 00000000     0        0 0 3 0000000062bb19ec
   3: 0F02000A:0016 0202000A:C5A2 01 00000024:00000000 01:00000014 00000000     0        0 5123 4 00000000deadbeef 20 4 30 10 -1
   4: 0F02000A:0016 0202000A:C5A4 01 00000000:000001F4 01:00000014 00000000     0        0 5124 4 00000000deadbef0 20 4 30 10 -1
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000011111111 100 0 0 10 0
   1: 00000000000000000000000001000000:0277 00000000000000000000000001000000:D2F4 08 00000000:00000001 00:00000000 00000000     0        0 2002 1 0000000022222222 20 4 0 10 -1
";

    fn state(out: &[Reading], state: &str) -> f64 {
        out.iter()
            .find(|r| r.series.label("state") == Some(state))
            .unwrap_or_else(|| panic!("no state {state}"))
            .value
    }

    #[test]
    fn counts_states_over_both_files() {
        let mut states = TcpStates::default();
        states.add_text(TCP).unwrap();
        states.add_text(TCP6).unwrap();
        let out = states.readings("h");
        assert_eq!(
            out.len(),
            13,
            "every state, zeros included, and two queue sums"
        );
        assert_eq!(state(&out, "listen"), 3.0);
        assert_eq!(state(&out, "established"), 2.0);
        assert_eq!(state(&out, "time_wait"), 1.0);
        assert_eq!(state(&out, "close_wait"), 1.0);
        assert_eq!(state(&out, "syn_recv"), 0.0);
        assert_eq!(state(&out, "closing"), 0.0);
        assert_eq!(state(&out, "tx_queued_bytes"), 36.0);
        assert_eq!(state(&out, "rx_queued_bytes"), 2.0 + 500.0 + 1.0);
        for r in &out {
            assert_eq!(r.series.name, "node_tcp_connection_states");
            assert_eq!(r.kind, MetricKind::Gauge);
            assert_eq!(r.series.label("host"), Some("h"));
        }
    }

    #[test]
    fn an_empty_table_reports_zeros() {
        let mut states = TcpStates::default();
        states
            .add_text("  sl  local_address rem_address   st tx_queue rx_queue\n")
            .unwrap();
        states.add_text("").unwrap();
        let out = states.readings("h");
        assert_eq!(out.len(), 13);
        assert!(out.iter().all(|r| r.value == 0.0));
    }

    #[test]
    fn unknown_states_are_not_counted() {
        let mut states = TcpStates::default();
        let line = "0: 00000000:0016 00000000:0000 0C 00000001:00000000 00:00000000";
        states.add_line(line, 2).unwrap();
        states.add_line(&line.replace(" 0C ", " 00 "), 3).unwrap();
        let out = states.readings("h");
        assert_eq!(
            out.iter().map(|r| r.value).sum::<f64>(),
            2.0,
            "only tx bytes"
        );
    }

    #[test]
    fn rejects_malformed_lines() {
        let mut states = TcpStates::default();
        let short = "0: 00000000:0016 00000000:0000";
        assert_eq!(
            states.add_line(short, 2),
            Err(ParseError::MissingField { line: 2, field: 4 })
        );
        let no_queues = "0: 00000000:0016 00000000:0000 0A";
        assert_eq!(
            states.add_line(no_queues, 2),
            Err(ParseError::MissingField { line: 2, field: 5 })
        );
        let bad_state = "0: 00000000:0016 00000000:0000 ZZ 0:0";
        assert_eq!(
            states.add_line(bad_state, 3),
            Err(ParseError::NotANumber { line: 3, field: 4 })
        );
        let huge_state = "0: 00000000:0016 00000000:0000 1FF 0:0";
        assert_eq!(
            states.add_line(huge_state, 3),
            Err(ParseError::NotANumber { line: 3, field: 4 })
        );
        let bad_queue = "0: 00000000:0016 00000000:0000 0A 00000000";
        assert!(matches!(
            states.add_line(bad_queue, 4),
            Err(ParseError::Malformed { line: 4, .. })
        ));
        let bad_hex = "0: 00000000:0016 00000000:0000 0A 0000000g:00000000";
        assert_eq!(
            states.add_line(bad_hex, 5),
            Err(ParseError::NotANumber { line: 5, field: 5 })
        );
        assert_eq!(states, TcpStates::default(), "nothing half-counted");
    }
}
