//! The streaming watch (`POST /v3/watch`, newline-delimited JSON answers) as a channel of
//! events that survives failures, and a mirror of a whole prefix built on it.
//!
//! Invariant: after a failure the watch resumes at `last seen revision + 1`, so no event is
//! lost or repeated; if etcd compacted that revision away, the prefix is listed again and the
//! consumer gets a [`WatchEvent::Reset`] holding the full current state.

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{EtcdClient, EtcdError, KeyValue, base64, prefix_end, wire};
use crate::retry::Backoff;

/// Events buffered between the watch task and its consumer.
const CHANNEL: usize = 256;
/// Longest line of a watch stream; a longer one ends the stream (and it is resumed).
const MAX_LINE: usize = 64 << 20;

/// A change under a watched prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete {
        key: String,
        mod_revision: i64,
    },
    /// History was compacted past the revision to resume from: `kvs` is the whole prefix at
    /// `revision` and replaces what the consumer held.
    Reset {
        kvs: Vec<KeyValue>,
        revision: i64,
    },
}

/// A prefix as last seen: every key under it, at `revision`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub kvs: BTreeMap<String, KeyValue>,
    pub revision: i64,
    /// False until the prefix was listed once.
    pub synced: bool,
}

/// How one watch stream ended.
enum End {
    Cancelled,
    /// The consumer went away.
    Closed,
    Compacted(i64),
}

impl EtcdClient {
    /// Watches every key under `prefix` from `start_revision` (0: from now) until `cancel`,
    /// reconnecting (with backoff, over the endpoints in turn) from the last revision seen.
    pub fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: i64,
        cancel: CancellationToken,
    ) -> mpsc::Receiver<WatchEvent> {
        let (tx, rx) = mpsc::channel(CHANNEL);
        tokio::spawn(run_watch(
            self.clone(),
            prefix.to_owned(),
            start_revision,
            tx,
            cancel,
        ));
        rx
    }

    /// Keeps every key under `prefix` in a `watch` channel, updated within moments of a
    /// change, until `cancel`. Lists first (retrying until etcd answers), then watches.
    pub fn mirror_prefix(
        &self,
        prefix: &str,
        cancel: CancellationToken,
    ) -> watch::Receiver<Snapshot> {
        let (tx, rx) = watch::channel(Snapshot::default());
        tokio::spawn(run_mirror(self.clone(), prefix.to_owned(), tx, cancel));
        rx
    }
}

/// Sleeps for the next backoff delay; false if cancelled meanwhile.
async fn pause(backoff: &mut Backoff, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(backoff.next_delay(None)) => true,
        _ = cancel.cancelled() => false,
    }
}

async fn run_watch(
    client: EtcdClient,
    prefix: String,
    start_revision: i64,
    tx: mpsc::Sender<WatchEvent>,
    cancel: CancellationToken,
) {
    let mut next = start_revision;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failed = false;
    loop {
        let result = tokio::select! {
            r = watch_once(&client, &prefix, &mut next, &tx, failed, &mut backoff) => r,
            _ = cancel.cancelled() => Ok(End::Cancelled),
        };
        match result {
            Ok(End::Cancelled | End::Closed) => return,
            Ok(End::Compacted(compacted)) => {
                tracing::info!(
                    prefix,
                    from = next,
                    compacted,
                    "etcd watch: history compacted, listing the prefix again"
                );
                loop {
                    match client.range_prefix(&prefix).await {
                        Ok((kvs, revision)) => {
                            next = revision + 1;
                            if tx.send(WatchEvent::Reset { kvs, revision }).await.is_err() {
                                return;
                            }
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(prefix, error = %e, "etcd watch: cannot list the prefix");
                            if !pause(&mut backoff, &cancel).await {
                                return;
                            }
                        }
                    }
                }
                failed = false;
            }
            Err(e) => {
                tracing::warn!(prefix, resume_at = next, error = %e, "etcd watch interrupted; resuming");
                failed = true;
                if !pause(&mut backoff, &cancel).await {
                    return;
                }
            }
        }
    }
}

/// One watch stream, from `*next`; advances `*next` past every event delivered.
async fn watch_once(
    client: &EtcdClient,
    prefix: &str,
    next: &mut i64,
    tx: &mpsc::Sender<WatchEvent>,
    failed: bool,
    backoff: &mut Backoff,
) -> Result<End, EtcdError> {
    let endpoint = client
        .stream_endpoint(failed)
        .ok_or(EtcdError::NoEndpoints)?;
    let unreachable = |cause: String| EtcdError::Unreachable {
        endpoint: endpoint.clone(),
        cause,
    };
    let malformed = |reason: String| EtcdError::Malformed {
        endpoint: endpoint.clone(),
        reason,
    };
    let mut create = json!({
        "key": base64::encode(prefix.as_bytes()),
        "range_end": base64::encode(&prefix_end(prefix.as_bytes())),
    });
    if *next > 0 {
        create["start_revision"] = json!(next.to_string());
    }
    let body = json!({ "create_request": create }).to_string();
    let req = hyper::Request::post(format!("{endpoint}/v3/watch"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| unreachable(e.to_string()))?;
    let resp = tokio::time::timeout(super::TIMEOUT, client.inner.http.request(req))
        .await
        .map_err(|_| unreachable("no answer to the watch request".into()))?
        .map_err(|e| unreachable(crate::retry::error_chain(&e)))?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    if status != 200 {
        return Err(EtcdError::Status {
            endpoint: endpoint.clone(),
            status,
            body: String::new(),
        });
    }
    let mut buf = BytesMut::new();
    loop {
        let frame = match body.frame().await {
            Some(Ok(f)) => f,
            Some(Err(e)) => return Err(unreachable(crate::retry::error_chain(&e))),
            None => return Err(unreachable("the watch stream ended".into())),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(pos + 1);
            let line = &line[..pos];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let parsed: wire::WatchLine =
                serde_json::from_slice(line).map_err(|e| malformed(e.to_string()))?;
            if let Some(err) = parsed.error {
                return Err(malformed(format!("watch error: {err}")));
            }
            let Some(result) = parsed.result else {
                continue;
            };
            if result.compact_revision > 0 {
                return Ok(End::Compacted(result.compact_revision));
            }
            if result.canceled {
                return Err(malformed(format!(
                    "watch canceled: {}",
                    result.cancel_reason
                )));
            }
            if result.created {
                backoff.reset();
                if *next <= 0 {
                    *next = result.header.revision + 1;
                }
            }
            for ev in result.events {
                let Some(kv) = ev.kv else { continue };
                let kv = kv.decode().map_err(&malformed)?;
                *next = (*next).max(kv.mod_revision + 1);
                let event = if ev.kind == "DELETE" {
                    WatchEvent::Delete {
                        key: kv.key,
                        mod_revision: kv.mod_revision,
                    }
                } else {
                    WatchEvent::Put(kv)
                };
                if tx.send(event).await.is_err() {
                    return Ok(End::Closed);
                }
            }
        }
        if buf.len() > MAX_LINE {
            return Err(malformed(format!(
                "a watch line is longer than {MAX_LINE} bytes"
            )));
        }
    }
}

async fn run_mirror(
    client: EtcdClient,
    prefix: String,
    tx: watch::Sender<Snapshot>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let (kvs, revision) = loop {
        let listed = tokio::select! {
            r = client.range_prefix(&prefix) => r,
            _ = cancel.cancelled() => return,
        };
        match listed {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(prefix, error = %e, "etcd: cannot list the prefix; retrying");
                if !pause(&mut backoff, &cancel).await {
                    return;
                }
            }
        }
    };
    let mut snapshot = Snapshot {
        kvs: kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect(),
        revision,
        synced: true,
    };
    tx.send_replace(snapshot.clone());
    let mut events = client.watch_prefix(&prefix, revision + 1, cancel.clone());
    while let Some(first) = events.recv().await {
        apply(&mut snapshot, first);
        // Publish a burst of changes once.
        while let Ok(more) = events.try_recv() {
            apply(&mut snapshot, more);
        }
        tx.send_replace(snapshot.clone());
        if tx.is_closed() {
            return;
        }
    }
}

fn apply(s: &mut Snapshot, event: WatchEvent) {
    match event {
        WatchEvent::Put(kv) => {
            s.revision = s.revision.max(kv.mod_revision);
            s.kvs.insert(kv.key.clone(), kv);
        }
        WatchEvent::Delete { key, mod_revision } => {
            s.revision = s.revision.max(mod_revision);
            s.kvs.remove(&key);
        }
        WatchEvent::Reset { kvs, revision } => {
            s.kvs = kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
            s.revision = revision;
        }
    }
}
