//! The alerting loop. An alert's path: [`rules`] (rule files -> a cached, hot-reloaded set of
//! groups) -> [`evaluate`] (each group on its interval against a [`QuerySource`], alert state
//! inactive -> pending -> firing -> resolved) and [`fastpath`] (plain threshold rules checked
//! on each forwarded sample) -> [`manager`] (silences, inhibition, routing, grouping,
//! de-duplication, notification with retries) -> receivers (webhooks, a real Alertmanager).
//!
//! The hand-over between evaluation and the manager is Alertmanager's own model: an [`Alert`]
//! is firing while its `ends_at_ms` lies in the future; the evaluator re-sends firing alerts on
//! every evaluation with `ends_at_ms` a few intervals ahead, and sends a resolved alert with
//! `ends_at_ms` set to the time it resolved. An alert whose sender goes quiet therefore resolves
//! by itself, and any Prometheus or vmalert can post to the manager's `/api/v2/alerts` too.

pub mod evaluate;
pub mod fastpath;
pub mod manager;
pub mod replay;
pub mod rules;
pub mod service;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Label names and values, sorted by name.
pub type LabelMap = BTreeMap<String, String>;

/// One alert as evaluation hands it to the manager (Alertmanager's postable alert).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Identity: the alert's labels, `alertname` included.
    pub labels: LabelMap,
    pub annotations: LabelMap,
    /// When the alert started firing (ms since the epoch).
    pub starts_at_ms: i64,
    /// When it resolved, or, while firing, when it is to be treated as resolved unless the
    /// sender refreshes it (ms since the epoch).
    pub ends_at_ms: i64,
    /// A link back to the rule or expression that produced it.
    pub generator_url: String,
}

impl Alert {
    /// Firing at `now_ms`?
    pub fn is_firing(&self, now_ms: i64) -> bool {
        self.ends_at_ms > now_ms
    }
}

/// Where evaluated alerts go: the manager in this process (or, in tests, a recorder).
pub trait AlertSink: Send + Sync {
    /// Hands `alerts` of `tenant` over; returns at once (the manager queues its own work).
    fn send(&self, tenant: &str, alerts: Vec<Alert>);
}

pub use sonde_common::model::now_ms;

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file: write
/// `<path>.tmp` (extension replaced), fsync, rename, fsync the directory. Rule state and the
/// manager's silences, notification log, outbox and history are saved so.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A label map from pairs (tests).
#[cfg(test)]
pub(crate) fn label_map(pairs: &[(&str, &str)]) -> LabelMap {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
