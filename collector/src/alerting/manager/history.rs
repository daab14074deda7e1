//! The alert history: every state change (an alert received firing or resolved) and every
//! notification outcome (sent, retried, failed, superseded, muted and by what, deduplicated),
//! per tenant, newest kept, queryable by fingerprint and alert name.
//!
//! On disk it is an append-only JSON-lines file (`history.jsonl`). Once the file holds twice
//! as many lines as are kept in memory it is rewritten from memory (atomically), so it stays
//! bounded and a restart reads back exactly what was kept.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, Write};
use std::path::PathBuf;

use super::super::LabelMap;
use super::persist;

/// Entries kept per tenant.
pub const MAX_PER_TENANT: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRef {
    pub fingerprint: String,
    pub labels: LabelMap,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub time_ms: i64,
    pub tenant: String,
    /// firing, resolved, sent, retried, failed, superseded, muted, unmuted, deduplicated.
    pub kind: String,
    #[serde(default)]
    pub receiver: String,
    #[serde(default)]
    pub group_key: String,
    pub alerts: Vec<AlertRef>,
    /// The error, the silence id or inhibiting fingerprint, the idempotency key.
    #[serde(default)]
    pub detail: String,
}

pub struct History {
    by_tenant: BTreeMap<String, VecDeque<HistoryEntry>>,
    cap: usize,
    path: Option<PathBuf>,
    file: Option<std::fs::File>,
    lines_in_file: usize,
    total: usize,
}

impl Default for History {
    fn default() -> Self {
        Self {
            by_tenant: BTreeMap::new(),
            cap: MAX_PER_TENANT,
            path: None,
            file: None,
            lines_in_file: 0,
            total: 0,
        }
    }
}

impl History {
    /// Reads `path` back (lines that do not parse, e.g. a torn last line, are skipped).
    pub fn open(path: PathBuf, cap: usize) -> Result<Self, String> {
        let mut h = History {
            cap: cap.max(1),
            path: Some(path.clone()),
            ..History::default()
        };
        match std::fs::File::open(&path) {
            Ok(f) => {
                for line in std::io::BufReader::new(f).lines() {
                    let line =
                        line.map_err(|e| format!("cannot read history {}: {e}", path.display()))?;
                    if let Ok(entry) = serde_json::from_str::<HistoryEntry>(&line) {
                        h.push_memory(entry);
                    }
                    h.lines_in_file += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read history {}: {e}", path.display())),
        }
        h.rewrite();
        Ok(h)
    }

    fn push_memory(&mut self, entry: HistoryEntry) {
        let q = self.by_tenant.entry(entry.tenant.clone()).or_default();
        q.push_back(entry);
        self.total += 1;
        if q.len() > self.cap {
            q.pop_front();
            self.total -= 1;
        }
    }

    /// Rewrites the file from memory and reopens it for appending.
    fn rewrite(&mut self) {
        let Some(path) = &self.path else { return };
        let mut out = Vec::new();
        for q in self.by_tenant.values() {
            for e in q {
                if serde_json::to_writer(&mut out, e).is_ok() {
                    out.push(b'\n');
                }
            }
        }
        if let Err(e) = persist::write_atomic(path, &out) {
            tracing::error!("cannot rewrite history {}: {e}", path.display());
        }
        self.lines_in_file = self.total;
        self.file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| tracing::error!("cannot open history {}: {e}", path.display()))
            .ok();
    }

    pub fn record(&mut self, entry: HistoryEntry) {
        if let Some(f) = &mut self.file
            && let Ok(mut line) = serde_json::to_vec(&entry)
        {
            line.push(b'\n');
            if let Err(e) = f.write_all(&line) {
                tracing::warn!("cannot append to the alert history: {e}");
            }
            self.lines_in_file += 1;
        }
        self.push_memory(entry);
        if self.lines_in_file > 2 * self.total.max(self.cap) {
            self.rewrite();
        }
    }

    /// Makes appended lines durable (at shutdown).
    pub fn sync(&self) {
        if let Some(f) = &self.file {
            let _ = f.sync_data();
        }
    }

    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Newest first; `fingerprint` and `alertname` select entries naming such an alert.
    pub fn query(
        &self,
        tenant: &str,
        fingerprint: Option<&str>,
        alertname: Option<&str>,
        limit: usize,
    ) -> Vec<HistoryEntry> {
        let Some(q) = self.by_tenant.get(tenant) else {
            return Vec::new();
        };
        q.iter()
            .rev()
            .filter(|e| {
                fingerprint.is_none_or(|f| e.alerts.iter().any(|a| a.fingerprint == f))
                    && alertname.is_none_or(|n| {
                        e.alerts
                            .iter()
                            .any(|a| a.labels.get("alertname").map(String::as_str) == Some(n))
                    })
            })
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tenant: &str, i: i64, name: &str) -> HistoryEntry {
        HistoryEntry {
            time_ms: i,
            tenant: tenant.into(),
            kind: "firing".into(),
            receiver: String::new(),
            group_key: String::new(),
            alerts: vec![AlertRef {
                fingerprint: format!("{i:016x}"),
                labels: [("alertname".to_owned(), name.to_owned())].into(),
            }],
            detail: String::new(),
        }
    }

    #[test]
    fn bounded_per_tenant_filtered_newest_first_and_persisted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.jsonl");
        {
            let mut h = History::open(path.clone(), 5).expect("open");
            for i in 0..40 {
                h.record(entry("a", i, if i % 2 == 0 { "Even" } else { "Odd" }));
            }
            h.record(entry("b", 100, "Other"));
            assert_eq!(h.len(), 6);
            let q = h.query("a", None, Some("Even"), 10);
            assert_eq!(q.iter().map(|e| e.time_ms).collect::<Vec<_>>(), [38, 36]);
            assert_eq!(
                h.query("a", Some(&format!("{:016x}", 39)), None, 10).len(),
                1
            );
            assert!(h.query("c", None, None, 10).is_empty());
        }
        let lines = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .count();
        assert!(lines <= 20, "file grows without bound: {lines} lines");
        let h = History::open(path, 5).expect("reopen");
        assert_eq!(h.len(), 6);
        assert_eq!(h.query("a", None, None, 1)[0].time_ms, 39);
        assert_eq!(h.query("b", None, None, 10).len(), 1);
    }
}
