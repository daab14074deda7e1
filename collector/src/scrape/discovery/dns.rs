//! `dns_sd_configs`: A and AAAA records through the system resolver, SRV records through a
//! small DNS client of our own over UDP (the system resolver does not answer SRV queries).
//! Names are re-resolved every `refresh_interval`; a failed lookup keeps the name's previous
//! targets. Meta labels as Prometheus: `__meta_dns_name`, `__meta_dns_srv_record_target`,
//! `__meta_dns_srv_record_port`.
//!
//! The SRV client sends one query (recursion desired) to the first `nameserver` of
//! /etc/resolv.conf and reads one answer; names are used as written (no search domains), and a
//! truncated answer is used as far as it goes. Answers are untrusted input: every read is
//! bounds-checked and compression pointers may only point backwards.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::scrape::config::{DnsRecordType, DnsSdConfig};
use crate::scrape::{LabelMap, TargetGroup};

const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;

#[derive(Debug, Error, PartialEq)]
pub enum DnsError {
    #[error("invalid DNS name {0:?}")]
    BadName(String),
    #[error("malformed DNS answer: {0}")]
    Malformed(&'static str),
    #[error("DNS server answered with error code {0}")]
    Rcode(u8),
    #[error("DNS query failed: {0}")]
    Io(String),
    #[error("DNS query timed out")]
    Timeout,
    #[error("no nameserver in /etc/resolv.conf")]
    NoServer,
}

/// One SRV record's target and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Without the trailing dot.
    pub target: String,
}

/// The first `nameserver` line of resolv.conf text, port 53.
pub fn nameserver_from_resolv_conf(text: &str) -> Option<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            let ip = rest.trim().split('%').next()?;
            ip.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
}

fn system_nameserver() -> Result<SocketAddr, DnsError> {
    let text = std::fs::read_to_string("/etc/resolv.conf").map_err(|_| DnsError::NoServer)?;
    nameserver_from_resolv_conf(&text).ok_or(DnsError::NoServer)
}

/// A query for `name`'s SRV records.
pub fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let mut out = Vec::with_capacity(name.len() + 18);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes()); // recursion desired
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    let trimmed = name.trim_end_matches('.');
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(DnsError::BadName(name.to_owned()));
    }
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(DnsError::BadName(name.to_owned()));
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&TYPE_SRV.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(out)
}

fn u16_at(buf: &[u8], at: usize) -> Result<u16, DnsError> {
    match buf.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(DnsError::Malformed("message ends early")),
    }
}

/// Reads a (possibly compressed) name at `at`; returns it and the offset after it.
fn read_name(buf: &[u8], mut at: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *buf
            .get(at)
            .ok_or(DnsError::Malformed("name runs past the end"))?;
        match len {
            0 => {
                return Ok((name, end.unwrap_or(at + 1)));
            }
            l if l & 0xc0 == 0xc0 => {
                let target = (u16_at(buf, at)? & 0x3fff) as usize;
                if target >= at || jumps > 32 {
                    return Err(DnsError::Malformed("bad compression pointer"));
                }
                end.get_or_insert(at + 2);
                jumps += 1;
                at = target;
            }
            l if l & 0xc0 != 0 => return Err(DnsError::Malformed("bad label type")),
            l => {
                let label = buf
                    .get(at + 1..at + 1 + l as usize)
                    .ok_or(DnsError::Malformed("label runs past the end"))?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(&String::from_utf8_lossy(label));
                if name.len() > 255 {
                    return Err(DnsError::Malformed("name too long"));
                }
                at += 1 + l as usize;
            }
        }
    }
}

/// The SRV records of an answer to query `id`.
pub fn parse_srv_response(buf: &[u8], id: u16) -> Result<Vec<SrvRecord>, DnsError> {
    if buf.len() < 12 {
        return Err(DnsError::Malformed("shorter than a header"));
    }
    if u16_at(buf, 0)? != id {
        return Err(DnsError::Malformed("answer to another query"));
    }
    let flags = u16_at(buf, 2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::Malformed("not a response"));
    }
    let rcode = (flags & 0x000f) as u8;
    if rcode == 3 {
        return Ok(Vec::new()); // NXDOMAIN: no targets
    }
    if rcode != 0 {
        return Err(DnsError::Rcode(rcode));
    }
    let questions = u16_at(buf, 4)?;
    let answers = u16_at(buf, 6)?;
    let mut at = 12;
    for _ in 0..questions {
        at = read_name(buf, at)?.1 + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        let (_, after) = read_name(buf, at)?;
        let rtype = u16_at(buf, after)?;
        let rdlen = u16_at(buf, after + 8)? as usize;
        let rdata = after + 10;
        if buf.len() < rdata + rdlen {
            return Err(DnsError::Malformed("record runs past the end"));
        }
        if rtype == TYPE_SRV {
            if rdlen < 7 {
                return Err(DnsError::Malformed("SRV record too short"));
            }
            let (target, _) = read_name(buf, rdata + 6)?;
            out.push(SrvRecord {
                priority: u16_at(buf, rdata)?,
                weight: u16_at(buf, rdata + 2)?,
                port: u16_at(buf, rdata + 4)?,
                target,
            });
        }
        at = rdata + rdlen;
    }
    Ok(out)
}

/// Asks `server` for `name`'s SRV records.
pub async fn lookup_srv(name: &str, server: SocketAddr) -> Result<Vec<SrvRecord>, DnsError> {
    let id = fastrand::u16(..);
    let query = encode_query(id, name)?;
    let bind: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let io = |e: std::io::Error| DnsError::Io(e.to_string());
    let socket = UdpSocket::bind(bind).await.map_err(io)?;
    socket.connect(server).await.map_err(io)?;
    socket.send(&query).await.map_err(io)?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + QUERY_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| DnsError::Timeout)?
            .map_err(io)?;
        match parse_srv_response(&buf[..n], id) {
            // A stray datagram for another query: keep waiting for ours.
            Err(DnsError::Malformed("answer to another query")) => continue,
            other => return other,
        }
    }
}

/// The group of one name: its targets now.
async fn resolve(
    cfg: &DnsSdConfig,
    name: &str,
    server: Option<SocketAddr>,
) -> Result<TargetGroup, DnsError> {
    let mut targets = Vec::new();
    let base = |address: String| {
        LabelMap::from([
            ("__address__".to_owned(), address),
            ("__meta_dns_name".to_owned(), name.to_owned()),
        ])
    };
    match cfg.record_type {
        DnsRecordType::Srv => {
            let server = match server {
                Some(s) => s,
                None => system_nameserver()?,
            };
            for r in lookup_srv(name, server).await? {
                let host = r.target.trim_end_matches('.').to_owned();
                let address = if host.contains(':') {
                    format!("[{host}]:{}", r.port)
                } else {
                    format!("{host}:{}", r.port)
                };
                let mut t = base(address);
                t.insert("__meta_dns_srv_record_target".into(), host);
                t.insert("__meta_dns_srv_record_port".into(), r.port.to_string());
                targets.push(t);
            }
        }
        DnsRecordType::A | DnsRecordType::Aaaa => {
            let want_v4 = cfg.record_type == DnsRecordType::A;
            let addrs =
                tokio::time::timeout(QUERY_TIMEOUT, tokio::net::lookup_host((name, cfg.port)))
                    .await
                    .map_err(|_| DnsError::Timeout)?
                    .map_err(|e| DnsError::Io(e.to_string()))?;
            let mut seen: Vec<SocketAddr> = addrs.filter(|a| a.is_ipv4() == want_v4).collect();
            seen.sort();
            seen.dedup();
            for a in seen {
                targets.push(base(a.to_string()));
            }
        }
    }
    Ok(TargetGroup {
        source: name.to_owned(),
        targets,
        labels: LabelMap::new(),
    })
}

/// The provider task. `server` overrides resolv.conf's nameserver for SRV queries.
pub async fn run(
    job: String,
    cfg: DnsSdConfig,
    server: Option<SocketAddr>,
    tx: watch::Sender<Vec<TargetGroup>>,
    cancel: CancellationToken,
) {
    let mut groups: BTreeMap<String, TargetGroup> = BTreeMap::new();
    loop {
        let mut changed = false;
        for name in &cfg.names {
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = resolve(&cfg, name, server) => r,
            };
            match result {
                Ok(group) => {
                    if groups.get(name) != Some(&group) {
                        groups.insert(name.clone(), group);
                        changed = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(job, name, error = %e,
                        "scrape: DNS lookup failed; keeping the name's previous targets");
                }
            }
        }
        if changed || tx.borrow().is_empty() {
            tx.send_replace(groups.values().cloned().collect());
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(cfg.refresh_interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `query` with SRV records `(port, target)`, target names compressed
    /// against the question where they share its suffix, as real servers do.
    fn answer(query: &[u8], records: &[(u16, &str)]) -> Vec<u8> {
        let mut out = query.to_vec();
        out[2] = 0x81;
        out[3] = 0x80;
        out[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for (port, target) in records {
            out.extend_from_slice(&[0xc0, 12]); // the question's name
            out.extend_from_slice(&TYPE_SRV.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&60u32.to_be_bytes());
            let mut rdata = vec![0, 10, 0, 5];
            rdata.extend_from_slice(&port.to_be_bytes());
            for label in target.split('.') {
                rdata.push(label.len() as u8);
                rdata.extend_from_slice(label.as_bytes());
            }
            rdata.push(0);
            out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            out.extend_from_slice(&rdata);
        }
        out
    }

    #[test]
    fn query_and_answer_round_trip() {
        let q = encode_query(7, "_prom._tcp.example.org.").unwrap();
        let a = answer(&q, &[(9100, "a.example.org"), (9200, "b.example.org")]);
        let records = parse_srv_response(&a, 7).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].port, 9100);
        assert_eq!(records[0].target, "a.example.org");
        assert_eq!(records[0].priority, 10);
        assert_eq!(records[1].target, "b.example.org");
    }

    #[test]
    fn hostile_answers_are_errors_not_panics() {
        let q = encode_query(7, "x.org").unwrap();
        let a = answer(&q, &[(1, "a.org")]);
        for cut in 0..a.len() {
            let _ = parse_srv_response(&a[..cut], 7);
        }
        // A pointer to itself.
        let mut looped = q.clone();
        looped[2] = 0x81;
        looped[6] = 0;
        looped[7] = 1;
        looped.extend_from_slice(&[0xc0, (looped.len()) as u8]);
        assert!(parse_srv_response(&looped, 7).is_err());
        assert!(parse_srv_response(&a, 8).is_err());
        assert!(encode_query(1, "").is_err());
        assert!(encode_query(1, &"x".repeat(64)).is_err());
    }

    #[test]
    fn resolv_conf() {
        let text = "# c\nsearch x\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n";
        assert_eq!(
            nameserver_from_resolv_conf(text),
            Some("10.0.0.2:53".parse().unwrap())
        );
        assert_eq!(nameserver_from_resolv_conf("search x\n"), None);
    }

    #[tokio::test]
    async fn srv_discovery_against_a_tiny_server() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let responder = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = server.recv_from(&mut buf).await else {
                    return;
                };
                let reply = answer(
                    &buf[..n],
                    &[(9100, "node-1.example.org"), (9101, "node-2.example.org")],
                );
                let _ = server.send_to(&reply, from).await;
            }
        });
        let cfg = DnsSdConfig {
            names: vec!["_node._tcp.example.org".into()],
            record_type: DnsRecordType::Srv,
            port: 0,
            refresh_interval: Duration::from_secs(30),
        };
        let (tx, mut rx) = watch::channel(Vec::new());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run("j".into(), cfg, Some(addr), tx, cancel.clone()));
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        let groups = rx.borrow().clone();
        assert_eq!(groups.len(), 1);
        let t = &groups[0].targets;
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["__address__"], "node-1.example.org:9100");
        assert_eq!(t[0]["__meta_dns_name"], "_node._tcp.example.org");
        assert_eq!(t[0]["__meta_dns_srv_record_target"], "node-1.example.org");
        assert_eq!(t[1]["__meta_dns_srv_record_port"], "9101");
        cancel.cancel();
        task.await.unwrap();
        responder.abort();
    }

    #[tokio::test]
    async fn a_records_through_the_system_resolver() {
        let cfg = DnsSdConfig {
            names: vec!["localhost".into()],
            record_type: DnsRecordType::A,
            port: 9100,
            refresh_interval: Duration::from_secs(30),
        };
        let group = resolve(&cfg, "localhost", None).await.unwrap();
        assert!(
            group
                .targets
                .iter()
                .any(|t| t["__address__"] == "127.0.0.1:9100")
        );
    }
}
