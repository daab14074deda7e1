//! Alert state: the per-rule table the evaluator and the fast path share, and its persistence
//! (one JSON file per group in the state directory, written atomically after each evaluation
//! that changed something, read back at start).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::alerting::LabelMap;
use crate::alerting::rules::GroupKey;

/// Prometheus's alert states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Resolved (kept for a while so the resolution is reported).
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert of a rule (one label set), with its history. Times in ms since the epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveAlert {
    pub labels: LabelMap,
    pub annotations: LabelMap,
    pub state: AlertState,
    pub active_at: i64,
    #[serde(default)]
    pub fired_at: Option<i64>,
    #[serde(default)]
    pub resolved_at: Option<i64>,
    #[serde(default)]
    pub keep_firing_since: Option<i64>,
    #[serde(default)]
    pub last_sent_at: Option<i64>,
    /// Newest violating sample the fast path saw: a query evaluated before it cannot
    /// resolve the alert.
    #[serde(default)]
    pub fast_path_at: Option<i64>,
    /// The last value (`None` for NaN, which JSON cannot carry).
    #[serde(default)]
    pub value: Option<f64>,
}

impl ActiveAlert {
    pub fn value(&self) -> f64 {
        self.value.unwrap_or(f64::NAN)
    }

    pub fn set_value(&mut self, v: f64) {
        self.value = (!v.is_nan()).then_some(v);
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RuleFile {
    key: String,
    alerts: Vec<ActiveAlert>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct GroupFile {
    tenant: String,
    file: String,
    group: String,
    rules: Vec<RuleFile>,
}

/// Alerts by rule state key ([`crate::alerting::rules::Rule::state_key`]).
pub type GroupAlerts = HashMap<String, BTreeMap<LabelMap, ActiveAlert>>;

pub use sonde_common::hash::stable_hash;

pub fn file_for(dir: &Path, key: &GroupKey) -> PathBuf {
    dir.join(format!(
        "group-{:016x}.json",
        stable_hash(&[&key.tenant, &key.file, &key.name])
    ))
}

/// Writes `alerts` of group `key` atomically (temporary file, fsync, rename, fsync dir).
pub fn save(dir: &Path, key: &GroupKey, alerts: &GroupAlerts) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut rules: Vec<RuleFile> = alerts
        .iter()
        .filter(|(_, a)| !a.is_empty())
        .map(|(k, a)| RuleFile {
            key: k.clone(),
            alerts: a.values().cloned().collect(),
        })
        .collect();
    rules.sort_by(|a, b| a.key.cmp(&b.key));
    let doc = GroupFile {
        tenant: key.tenant.clone(),
        file: key.file.clone(),
        group: key.name.clone(),
        rules,
    };
    let bytes = serde_json::to_vec(&doc).map_err(std::io::Error::other)?;
    crate::alerting::write_atomic(&file_for(dir, key), &bytes)
}

/// Removes the state file of a group that no longer exists.
pub fn remove(dir: &Path, key: &GroupKey) {
    let _ = std::fs::remove_file(file_for(dir, key));
}

/// Reads every group's saved alerts; unreadable files are logged and skipped.
pub fn load_all(dir: &Path) -> HashMap<GroupKey, GroupAlerts> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let doc: GroupFile = match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring unreadable alert state");
                continue;
            }
        };
        let key = GroupKey {
            tenant: doc.tenant,
            file: doc.file,
            name: doc.group,
        };
        let alerts = doc
            .rules
            .into_iter()
            .map(|r| {
                let map = r
                    .alerts
                    .into_iter()
                    .map(|a| (a.labels.clone(), a))
                    .collect::<BTreeMap<_, _>>();
                (r.key, map)
            })
            .collect();
        out.insert(key, alerts);
    }
    out
}
