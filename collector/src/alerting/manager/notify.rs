//! Notifications: the payload a receiver gets (Alertmanager's webhook JSON, or postable alerts
//! for a real Alertmanager), its idempotency key, the persisted outbox, and delivery with the
//! shared retry rule.
//!
//! Outbox design: one slot per (tenant, receiver, integration, group key) holds the newest
//! notification; a newer one for the same slot supersedes the older (whose sender stops at its
//! next attempt). The whole outbox is one JSON snapshot (`outbox.json`), replaced atomically
//! before a notification is first sent and after it leaves; after a restart every notification
//! still in it is sent again, with the same idempotency key.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sonde_common::retry::{Backoff, Verdict, classify_status, error_chain, parse_retry_after};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use super::super::{Alert, LabelMap};
use super::config::{Integration, IntegrationKind};
use super::history::{AlertRef, HistoryEntry};
use super::persist::{self, Fnv, fp_hex, rfc3339};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// First retry delay, and the cap (before jitter; `Retry-After` is honoured up to the cap).
pub const RETRY_INITIAL: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// One attempt's bound, connect to last byte.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// One notification, as the outbox keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique per notification (tells a superseded one from its successor).
    pub id: u64,
    /// The supersede slot: tenant, receiver, integration, group key.
    pub slot: String,
    pub tenant: String,
    pub receiver: String,
    pub group_key: String,
    pub url: String,
    pub idempotency_key: String,
    pub body: String,
    /// The alerts it carries, for the history.
    pub alerts: Vec<AlertRef>,
    pub created_ms: i64,
}

/// An alert as it goes into a notification.
pub struct Member<'a> {
    pub fp: u64,
    pub alert: &'a Alert,
    /// Posted without `endsAt`: shown as the zero time while firing, like Alertmanager.
    pub timeout: bool,
}

/// The idempotency key: a hash of the receiver, the group key, the firing and resolved sets and
/// the repeat period the notification was made in. The same notification keeps its key on every
/// retry and after a restart (the outbox stores it), several alerting instances notifying the
/// same change give the same key, and a repeat after `repeat_interval` gets a new one.
pub fn idempotency_key(
    receiver: &str,
    group_key: &str,
    firing: &BTreeSet<u64>,
    resolved: &BTreeSet<u64>,
    repeat_period: i64,
) -> String {
    let mut h = Fnv::default();
    h.field(receiver);
    h.field(group_key);
    h.write(&repeat_period.to_be_bytes());
    h.field("firing");
    for fp in firing {
        h.write(&fp.to_be_bytes());
    }
    h.field("resolved");
    for fp in resolved {
        h.write(&fp.to_be_bytes());
    }
    format!("{:016x}", h.finish())
}

fn common(maps: &[&LabelMap]) -> LabelMap {
    let Some((first, rest)) = maps.split_first() else {
        return LabelMap::new();
    };
    first
        .iter()
        .filter(|(k, v)| rest.iter().all(|m| m.get(*k) == Some(*v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// What [`build`] needs about the group.
pub struct GroupInfo<'a> {
    pub tenant: &'a str,
    pub receiver: &'a str,
    pub integration: usize,
    pub key: &'a str,
    pub labels: &'a LabelMap,
    /// For forwarding to an Alertmanager: how long a forwarded firing alert lasts there unless
    /// forwarded again.
    pub forward_ttl_ms: i64,
    /// The repeat interval: a repeat of unchanged alerts falls in the next period of it, and
    /// so gets a new idempotency key.
    pub repeat_ms: i64,
}

/// Builds the notification of `members` (firing first) for one integration; `None` when
/// nothing is left to send (only resolved alerts, and `send_resolved: false`).
pub fn build(
    g: &GroupInfo<'_>,
    integ: &Integration,
    members: &[Member<'_>],
    now_ms: i64,
    external_url: &str,
) -> Option<Notification> {
    let mut chosen: Vec<&Member<'_>> = members
        .iter()
        .filter(|m| integ.send_resolved || m.alert.is_firing(now_ms))
        .collect();
    if chosen.is_empty() {
        return None;
    }
    chosen.sort_by_key(|m| (!m.alert.is_firing(now_ms), m.fp));
    let firing: BTreeSet<u64> = chosen
        .iter()
        .filter(|m| m.alert.is_firing(now_ms))
        .map(|m| m.fp)
        .collect();
    let resolved: BTreeSet<u64> = chosen
        .iter()
        .filter(|m| !m.alert.is_firing(now_ms))
        .map(|m| m.fp)
        .collect();
    let key = idempotency_key(
        g.receiver,
        g.key,
        &firing,
        &resolved,
        now_ms.div_euclid(g.repeat_ms.max(1)),
    );
    let status = if firing.is_empty() {
        "resolved"
    } else {
        "firing"
    };
    let truncated = if integ.max_alerts > 0 && chosen.len() > integ.max_alerts {
        let t = chosen.len() - integ.max_alerts;
        chosen.truncate(integ.max_alerts);
        t
    } else {
        0
    };
    let body = match integ.kind {
        IntegrationKind::Webhook => {
            let alerts: Vec<Value> = chosen
                .iter()
                .map(|m| {
                    let firing = m.alert.is_firing(now_ms);
                    let ends = if firing && m.timeout {
                        0
                    } else {
                        m.alert.ends_at_ms
                    };
                    json!({
                        "status": if firing { "firing" } else { "resolved" },
                        "labels": m.alert.labels,
                        "annotations": m.alert.annotations,
                        "startsAt": rfc3339(m.alert.starts_at_ms),
                        "endsAt": rfc3339(ends),
                        "generatorURL": m.alert.generator_url,
                        "fingerprint": fp_hex(m.fp),
                    })
                })
                .collect();
            let labels: Vec<&LabelMap> = chosen.iter().map(|m| &m.alert.labels).collect();
            let annotations: Vec<&LabelMap> = chosen.iter().map(|m| &m.alert.annotations).collect();
            let mut o = Map::new();
            o.insert("version".into(), json!("4"));
            o.insert("groupKey".into(), json!(g.key));
            o.insert("truncatedAlerts".into(), json!(truncated));
            o.insert("status".into(), json!(status));
            o.insert("receiver".into(), json!(g.receiver));
            o.insert("groupLabels".into(), json!(g.labels));
            o.insert("commonLabels".into(), json!(common(&labels)));
            o.insert("commonAnnotations".into(), json!(common(&annotations)));
            o.insert("externalURL".into(), json!(external_url));
            o.insert("alerts".into(), Value::Array(alerts));
            o.insert("idempotencyKey".into(), json!(key));
            Value::Object(o).to_string()
        }
        IntegrationKind::Alertmanager => {
            let alerts: Vec<Value> = chosen
                .iter()
                .map(|m| {
                    let ends = if m.alert.is_firing(now_ms) {
                        now_ms.saturating_add(g.forward_ttl_ms)
                    } else {
                        m.alert.ends_at_ms
                    };
                    json!({
                        "labels": m.alert.labels,
                        "annotations": m.alert.annotations,
                        "startsAt": rfc3339(m.alert.starts_at_ms),
                        "endsAt": rfc3339(ends),
                        "generatorURL": m.alert.generator_url,
                    })
                })
                .collect();
            Value::Array(alerts).to_string()
        }
    };
    Some(Notification {
        id: fastrand::u64(..),
        slot: format!(
            "{}\u{0}{}\u{0}{}\u{0}{}",
            g.tenant, g.receiver, g.integration, g.key
        ),
        tenant: g.tenant.to_owned(),
        receiver: g.receiver.to_owned(),
        group_key: g.key.to_owned(),
        url: integ.url.clone(),
        idempotency_key: key,
        body,
        alerts: chosen
            .iter()
            .map(|m| AlertRef {
                fingerprint: fp_hex(m.fp),
                labels: m.alert.labels.clone(),
            })
            .collect(),
        created_ms: now_ms,
    })
}

/// The persisted set of notifications not yet delivered.
pub struct Outbox {
    slots: Mutex<BTreeMap<String, Notification>>,
    path: Option<PathBuf>,
}

impl Outbox {
    /// Loads the outbox at `path`; its notifications are to be sent again.
    pub fn open(path: PathBuf) -> Result<(Self, Vec<Notification>), String> {
        let list: Vec<Notification> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("cannot read outbox {}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("cannot read outbox {}: {e}", path.display())),
        };
        let slots = list.iter().map(|n| (n.slot.clone(), n.clone())).collect();
        Ok((
            Outbox {
                slots: Mutex::new(slots),
                path: Some(path),
            },
            list,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Notification>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, slots: &BTreeMap<String, Notification>) {
        let Some(path) = &self.path else { return };
        let list: Vec<&Notification> = slots.values().collect();
        match serde_json::to_vec(&list) {
            Ok(bytes) => {
                if let Err(e) = persist::write_atomic(path, &bytes) {
                    tracing::error!(
                        "cannot save the notification outbox {}: {e}",
                        path.display()
                    );
                }
            }
            Err(e) => tracing::error!("cannot encode the notification outbox: {e}"),
        }
    }

    /// Adds notifications (persisted before returning); returns those they superseded.
    pub fn put(&self, ns: &[Notification]) -> Vec<Notification> {
        if ns.is_empty() {
            return Vec::new();
        }
        let mut slots = self.lock();
        let old: Vec<Notification> = ns
            .iter()
            .filter_map(|n| slots.insert(n.slot.clone(), n.clone()))
            .collect();
        self.save(&slots);
        old
    }

    pub fn is_current(&self, n: &Notification) -> bool {
        self.lock().get(&n.slot).is_some_and(|c| c.id == n.id)
    }

    /// Removes `n` once delivered or refused, unless a newer one took its slot.
    pub fn remove(&self, n: &Notification) {
        let mut slots = self.lock();
        if slots.get(&n.slot).is_some_and(|c| c.id == n.id) {
            slots.remove(&n.slot);
            self.save(&slots);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt {
    Delivered,
    Retry {
        cause: String,
        retry_after: Option<Duration>,
    },
    Refused {
        cause: String,
    },
}

/// One POST of `n`.
pub async fn attempt(client: &HttpClient, n: &Notification) -> Attempt {
    let req = Request::post(n.url.as_str())
        .header(CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", n.idempotency_key.as_str())
        .header(
            USER_AGENT,
            concat!("sonde-collector/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(n.body.clone())));
    let req = match req {
        Ok(r) => r,
        Err(e) => {
            return Attempt::Refused {
                cause: format!("cannot build the request to {}: {e}", n.url),
            };
        }
    };
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| error_chain(&e))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = Limited::new(resp.into_body(), 1024)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Ok::<_, String>((status, retry_after, body))
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, exchange).await {
        Err(_) => Attempt::Retry {
            cause: format!("no answer within {ATTEMPT_TIMEOUT:?}"),
            retry_after: None,
        },
        Ok(Err(cause)) => Attempt::Retry {
            cause,
            retry_after: None,
        },
        Ok(Ok((status, retry_after, body))) => {
            let cause = format!("{status}: {}", body.trim());
            match classify_status(status.as_u16()) {
                Verdict::Success => Attempt::Delivered,
                Verdict::Retry => Attempt::Retry { cause, retry_after },
                Verdict::Permanent => Attempt::Refused { cause },
            }
        }
    }
}

/// A history entry about notification `n`.
pub fn history_entry(n: &Notification, kind: &str, detail: String, now_ms: i64) -> HistoryEntry {
    HistoryEntry {
        time_ms: now_ms,
        tenant: n.tenant.clone(),
        kind: kind.into(),
        receiver: n.receiver.clone(),
        group_key: n.group_key.clone(),
        alerts: n.alerts.clone(),
        detail,
    }
}

/// A fresh backoff for one notification.
pub fn backoff() -> Backoff {
    Backoff::new(RETRY_INITIAL, RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &str, instance: &str, ends: i64) -> Alert {
        Alert {
            labels: [
                ("alertname".to_owned(), name.to_owned()),
                ("instance".to_owned(), instance.to_owned()),
            ]
            .into(),
            annotations: [("summary".to_owned(), "down".to_owned())].into(),
            starts_at_ms: 1_700_000_000_000,
            ends_at_ms: ends,
            generator_url: "http://prom/graph".into(),
        }
    }

    fn webhook(send_resolved: bool, max_alerts: usize) -> Integration {
        Integration {
            kind: IntegrationKind::Webhook,
            url: "http://127.0.0.1:1/hook".into(),
            send_resolved,
            max_alerts,
        }
    }

    #[test]
    fn webhook_payload_has_alertmanagers_shape() {
        let now = 1_700_000_100_000;
        let a = alert("Down", "a", now + 60_000);
        let b = alert("Down", "b", now - 1);
        let labels: LabelMap = [("alertname".to_owned(), "Down".to_owned())].into();
        let g = GroupInfo {
            tenant: "",
            receiver: "hook",
            integration: 0,
            key: "{}:{alertname=\"Down\"}",
            labels: &labels,
            forward_ttl_ms: 0,
            repeat_ms: 3_600_000,
        };
        let members = [
            Member {
                fp: 2,
                alert: &b,
                timeout: false,
            },
            Member {
                fp: 1,
                alert: &a,
                timeout: true,
            },
        ];
        let n = build(&g, &webhook(true, 0), &members, now, "http://sonde:9090").expect("some");
        let v: Value = serde_json::from_str(&n.body).expect("json");
        assert_eq!(v["version"], "4");
        assert_eq!(v["status"], "firing");
        assert_eq!(v["receiver"], "hook");
        assert_eq!(v["groupKey"], "{}:{alertname=\"Down\"}");
        assert_eq!(v["groupLabels"]["alertname"], "Down");
        assert_eq!(v["commonLabels"], json!({"alertname": "Down"}));
        assert_eq!(v["commonAnnotations"], json!({"summary": "down"}));
        assert_eq!(v["externalURL"], "http://sonde:9090");
        assert_eq!(v["truncatedAlerts"], 0);
        assert_eq!(v["idempotencyKey"], n.idempotency_key.as_str());
        let alerts = v["alerts"].as_array().expect("alerts");
        assert_eq!(alerts[0]["status"], "firing");
        assert_eq!(alerts[0]["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(alerts[0]["startsAt"], "2023-11-14T22:13:20Z");
        assert_eq!(alerts[0]["fingerprint"], "0000000000000001");
        assert_eq!(alerts[0]["generatorURL"], "http://prom/graph");
        assert_eq!(alerts[1]["status"], "resolved");

        // send_resolved: false leaves the resolved one out; max_alerts truncates.
        let n2 = build(&g, &webhook(false, 0), &members, now, "").expect("some");
        let v2: Value = serde_json::from_str(&n2.body).expect("json");
        assert_eq!(v2["alerts"].as_array().map(Vec::len), Some(1));
        let n3 = build(&g, &webhook(true, 1), &members, now, "").expect("some");
        let v3: Value = serde_json::from_str(&n3.body).expect("json");
        assert_eq!(v3["truncatedAlerts"], 1);
        assert_eq!(v3["alerts"].as_array().map(Vec::len), Some(1));
        // Only resolved and send_resolved: false: nothing to send.
        assert!(build(&g, &webhook(false, 0), &members[..1], now, "").is_none());
    }

    #[test]
    fn idempotency_keys_are_stable_and_set_sensitive() {
        let f: BTreeSet<u64> = [1, 2].into();
        let r: BTreeSet<u64> = [3].into();
        let k = idempotency_key("hook", "{}:{}", &f, &r, 7);
        assert_eq!(
            k,
            idempotency_key("hook", "{}:{}", &f.clone(), &r.clone(), 7)
        );
        // Pinned: the key must not change between versions, or restarts would re-deliver.
        assert_eq!(
            k,
            idempotency_key("hook", "{}:{}", &[2, 1].into(), &[3].into(), 7)
        );
        assert_ne!(k, idempotency_key("hook", "{}:{}", &r, &f, 7));
        assert_ne!(k, idempotency_key("other", "{}:{}", &f, &r, 7));
        assert_ne!(k, idempotency_key("hook", "{}:{x=\"1\"}", &f, &r, 7));
        // A repeat in the next repeat period is a new notification: a new key.
        assert_ne!(k, idempotency_key("hook", "{}:{}", &f, &r, 8));
        assert_eq!(k.len(), 16);
    }

    #[test]
    fn outbox_supersedes_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.json");
        let mk = |id: u64, slot: &str| Notification {
            id,
            slot: slot.into(),
            tenant: String::new(),
            receiver: "r".into(),
            group_key: "g".into(),
            url: "http://127.0.0.1:1/".into(),
            idempotency_key: format!("k{id}"),
            body: "{}".into(),
            alerts: Vec::new(),
            created_ms: 0,
        };
        let (ob, pending) = Outbox::open(path.clone()).expect("open");
        assert!(pending.is_empty());
        assert!(ob.put(&[mk(1, "a"), mk(2, "b")]).is_empty());
        let old = ob.put(&[mk(3, "a")]);
        assert_eq!(old.iter().map(|n| n.id).collect::<Vec<_>>(), [1]);
        assert!(!ob.is_current(&mk(1, "a")));
        assert!(ob.is_current(&mk(3, "a")));
        ob.remove(&mk(1, "a"));
        assert_eq!(
            ob.len(),
            2,
            "removing a superseded one leaves its successor"
        );
        ob.remove(&mk(2, "b"));
        let (_, pending) = Outbox::open(path).expect("reopen");
        assert_eq!(pending, vec![mk(3, "a")]);
    }
}
