//! etcd discovery: every key under a prefix is one endpoint to scrape, kept up to date by a
//! watch (changes show within moments, no polling).
//!
//! A value is either `host:port`, or JSON `{"address": "host:port", "labels": {...}}`. Each
//! target gets `__address__`, `__meta_etcd_key` and the JSON labels. A value that does not
//! parse is skipped and logged once per revision of its key, never fatal: etcd values are
//! written by anyone with access and are untrusted.

use serde::Deserialize;
use sonde_common::etcd::{EtcdClient, KeyValue, Snapshot};
use std::collections::{BTreeMap, HashMap};
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::scrape::{LabelMap, TargetGroup};

/// Longest value accepted.
const MAX_VALUE: usize = 64 << 10;
/// Most labels one endpoint may carry.
const MAX_LABELS: usize = 64;

#[derive(Debug, Error, PartialEq)]
pub enum EndpointError {
    #[error("value larger than {MAX_VALUE} bytes")]
    TooLarge,
    #[error("value is not UTF-8")]
    NotUtf8,
    #[error("not JSON {{\"address\": ..., \"labels\": ...}}: {0}")]
    Json(String),
    #[error("{0:?} is not host:port")]
    Address(String),
    #[error("{0:?} is not a valid label name")]
    LabelName(String),
    #[error("more than {MAX_LABELS} labels")]
    TooManyLabels,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEndpoint {
    address: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `host:port` or `[v6]:port`, with a port in 1..=65535 and a host without spaces or slashes.
fn valid_address(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[') {
        v6.strip_suffix(']')
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
}

/// One endpoint's target labels from its key and value.
pub fn parse_endpoint(key: &str, value: &[u8]) -> Result<LabelMap, EndpointError> {
    if value.len() > MAX_VALUE {
        return Err(EndpointError::TooLarge);
    }
    let text = std::str::from_utf8(value)
        .map_err(|_| EndpointError::NotUtf8)?
        .trim();
    let mut target = LabelMap::new();
    let address = if text.starts_with('{') {
        let e: JsonEndpoint =
            serde_json::from_str(text).map_err(|e| EndpointError::Json(e.to_string()))?;
        if e.labels.len() > MAX_LABELS {
            return Err(EndpointError::TooManyLabels);
        }
        for (name, value) in e.labels {
            if !valid_label_name(&name) {
                return Err(EndpointError::LabelName(name));
            }
            target.insert(name, value);
        }
        e.address.trim().to_owned()
    } else {
        text.to_owned()
    };
    if !valid_address(&address) {
        return Err(EndpointError::Address(address));
    }
    target.insert("__address__".into(), address);
    target.insert("__meta_etcd_key".into(), key.to_owned());
    Ok(target)
}

/// Turns snapshots of the prefix into target groups; remembers which bad values it logged.
struct Translator {
    source: String,
    /// Key -> revision of a value already reported as bad.
    reported: HashMap<String, i64>,
}

impl Translator {
    fn groups(&mut self, snapshot: &Snapshot) -> Vec<TargetGroup> {
        let mut targets = Vec::with_capacity(snapshot.kvs.len());
        let mut bad = HashMap::new();
        for KeyValue {
            key,
            value,
            mod_revision,
            ..
        } in snapshot.kvs.values()
        {
            match parse_endpoint(key, value) {
                Ok(t) => targets.push(t),
                Err(e) => {
                    if self.reported.get(key) != Some(mod_revision) {
                        tracing::warn!(key, error = %e, "etcd discovery: skipping an endpoint whose value does not parse");
                    }
                    bad.insert(key.clone(), *mod_revision);
                }
            }
        }
        self.reported = bad;
        vec![TargetGroup {
            source: self.source.clone(),
            targets,
            labels: LabelMap::new(),
        }]
    }
}

/// Watches `prefix` until `cancel`; the channel holds one group (source `etcd:<prefix>`) with
/// a target per valid key. It starts empty and is filled once etcd answers; while etcd is
/// unreachable it keeps the last known targets.
pub fn spawn(
    client: EtcdClient,
    prefix: String,
    cancel: CancellationToken,
) -> watch::Receiver<Vec<TargetGroup>> {
    let mut mirror = client.mirror_prefix(&prefix, cancel.clone());
    let mut translator = Translator {
        source: format!("etcd:{prefix}"),
        reported: HashMap::new(),
    };
    let (tx, rx) = watch::channel(Vec::new());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = mirror.changed() => if changed.is_err() { return },
                _ = cancel.cancelled() => return,
            }
            let groups = translator.groups(&mirror.borrow_and_update());
            tx.send_if_modified(|old| {
                let changed = *old != groups;
                *old = groups;
                changed
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::etcd::testing::EtcdServer;
    use std::time::{Duration, Instant};

    #[test]
    fn plain_and_json_values_parse() {
        let t = parse_endpoint("/t/a", b" 10.0.0.1:9100\n").unwrap();
        assert_eq!(t["__address__"], "10.0.0.1:9100");
        assert_eq!(t["__meta_etcd_key"], "/t/a");
        let t = parse_endpoint(
            "/t/b",
            br#"{"address": "web-1.example:8080", "labels": {"env": "prod", "__meta_zone": "a"}}"#,
        )
        .unwrap();
        assert_eq!(t["__address__"], "web-1.example:8080");
        assert_eq!(t["env"], "prod");
        assert_eq!(t["__meta_zone"], "a");
        assert!(parse_endpoint("/t/c", b"[::1]:9100").is_ok());
    }

    #[test]
    fn bad_values_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"no-port",
            b"host:0",
            b"host:99999",
            b"http://host:80/metrics",
            b"a b:1",
            b"\xff\xfe",
            b"{",
            br#"{"labels": {}}"#,
            br#"{"address": 5}"#,
            br#"{"address": "h:1", "labels": {"1bad": "x"}}"#,
            br#"{"address": "h:1", "labels": {"x": 1}}"#,
            br#"{"address": "h:1", "extra": true}"#,
            b"[nonsense]:1",
        ] {
            assert!(
                parse_endpoint("/k", bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_endpoint("/k", &vec![b'a'; MAX_VALUE + 1]),
            Err(EndpointError::TooLarge)
        );
    }

    async fn wait_for(
        rx: &mut watch::Receiver<Vec<TargetGroup>>,
        within: Duration,
        want: impl Fn(&[LabelMap]) -> bool,
    ) -> Option<Duration> {
        let start = Instant::now();
        tokio::time::timeout(
            within,
            rx.wait_for(|g| g.first().is_some_and(|g| want(&g.targets))),
        )
        .await
        .ok()?
        .ok()?;
        Some(start.elapsed())
    }

    #[tokio::test]
    async fn sees_puts_and_deletes_within_a_second() {
        let Some(etcd) = EtcdServer::start() else {
            return;
        };
        let client = EtcdClient::new(vec![etcd.uri()]);
        client
            .put("/sonde/targets/a", b"127.0.0.1:9100", None)
            .await
            .unwrap();
        client
            .put("/sonde/targets/bad", b"not an address", None)
            .await
            .unwrap();
        let cancel = CancellationToken::new();
        let mut rx = spawn(client.clone(), "/sonde/targets/".into(), cancel.clone());
        assert!(
            wait_for(&mut rx, Duration::from_secs(3), |t| t.len() == 1)
                .await
                .is_some(),
            "the existing endpoint is listed; the bad one skipped"
        );
        assert_eq!(rx.borrow()[0].source, "etcd:/sonde/targets/");

        client
            .put(
                "/sonde/targets/b",
                br#"{"address":"127.0.0.1:9200","labels":{"job_hint":"db"}}"#,
                None,
            )
            .await
            .unwrap();
        let took = wait_for(&mut rx, Duration::from_secs(1), |t| {
            t.iter().any(|t| {
                t.get("__address__").map(String::as_str) == Some("127.0.0.1:9200")
                    && t.get("job_hint").map(String::as_str) == Some("db")
                    && t.get("__meta_etcd_key").map(String::as_str) == Some("/sonde/targets/b")
            })
        })
        .await;
        assert!(took.is_some(), "a put shows within a second");

        client.delete("/sonde/targets/a").await.unwrap();
        let took = wait_for(&mut rx, Duration::from_secs(1), |t| {
            t.len() == 1 && t[0]["__address__"] == "127.0.0.1:9200"
        })
        .await;
        assert!(took.is_some(), "a delete shows within a second");

        // Fixing the bad value makes it a target.
        client
            .put("/sonde/targets/bad", b"127.0.0.1:9300", None)
            .await
            .unwrap();
        assert!(
            wait_for(&mut rx, Duration::from_secs(1), |t| t.len() == 2)
                .await
                .is_some()
        );
        cancel.cancel();
    }
}
