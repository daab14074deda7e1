//! Silences: per tenant, a set of matchers muting matching alerts between `startsAt` and
//! `endsAt`. Created, updated and expired over the API, and persisted as one JSON snapshot
//! (`silences.json`, replaced atomically) on every change. Expired silences are kept for
//! [`RETENTION_MS`] so the API can still show them, then dropped.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use thiserror::Error;

use super::super::LabelMap;
use super::matchers::{MatchOp, Matcher, all_match};
use super::persist;

/// How long an expired silence is still listed (Alertmanager's default retention, 120h).
pub const RETENTION_MS: i64 = 120 * 3_600_000;
/// Most silences one tenant may hold.
pub const MAX_PER_TENANT: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SilenceMatcher {
    pub name: String,
    pub value: String,
    pub is_regex: bool,
    #[serde(default = "yes")]
    pub is_equal: bool,
}

fn yes() -> bool {
    true
}

impl SilenceMatcher {
    fn compile(&self) -> Result<Matcher, String> {
        let op = match (self.is_regex, self.is_equal) {
            (false, true) => MatchOp::Equal,
            (false, false) => MatchOp::NotEqual,
            (true, true) => MatchOp::Regex,
            (true, false) => MatchOp::NotRegex,
        };
        Matcher::new(&self.name, op, &self.value)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<SilenceMatcher>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub updated_at_ms: i64,
    pub created_by: String,
    pub comment: String,
    #[serde(skip)]
    compiled: Vec<Matcher>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SilenceState {
    Pending,
    Active,
    Expired,
}

impl SilenceState {
    pub fn as_str(self) -> &'static str {
        match self {
            SilenceState::Pending => "pending",
            SilenceState::Active => "active",
            SilenceState::Expired => "expired",
        }
    }
}

impl Silence {
    pub fn state(&self, now_ms: i64) -> SilenceState {
        if self.ends_at_ms <= now_ms {
            SilenceState::Expired
        } else if self.starts_at_ms > now_ms {
            SilenceState::Pending
        } else {
            SilenceState::Active
        }
    }

    pub fn mutes(&self, labels: &LabelMap, now_ms: i64) -> bool {
        self.state(now_ms) == SilenceState::Active && all_match(&self.compiled, labels)
    }
}

/// What a client asks for: a new silence, or (with `id`) a change to one.
#[derive(Debug, Clone)]
pub struct SilenceRequest {
    pub id: Option<String>,
    pub matchers: Vec<SilenceMatcher>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub created_by: String,
    pub comment: String,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SilenceError {
    #[error("silence {0} not found")]
    NotFound(String),
    #[error("invalid silence: {0}")]
    Invalid(String),
    #[error("silence {0} is already expired")]
    AlreadyExpired(String),
    #[error("too many silences (limit {MAX_PER_TENANT} per tenant)")]
    TooMany,
}

/// Every tenant's silences.
#[derive(Default)]
pub struct Silences {
    by_tenant: BTreeMap<String, BTreeMap<String, Silence>>,
    path: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    tenants: BTreeMap<String, Vec<Silence>>,
}

impl Silences {
    /// Loads `path` if present (unreadable JSON is an error: silences must not vanish
    /// silently).
    pub fn open(path: PathBuf) -> Result<Self, String> {
        let mut s = Silences {
            by_tenant: BTreeMap::new(),
            path: Some(path.clone()),
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let snap: Snapshot = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("cannot read silences {}: {e}", path.display()))?;
                for (tenant, list) in snap.tenants {
                    let map = s.by_tenant.entry(tenant).or_default();
                    for mut sil in list {
                        sil.compiled = sil
                            .matchers
                            .iter()
                            .map(SilenceMatcher::compile)
                            .collect::<Result<_, _>>()
                            .map_err(|e| {
                                format!("silence {} in {}: {e}", sil.id, path.display())
                            })?;
                        map.insert(sil.id.clone(), sil);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read silences {}: {e}", path.display())),
        }
        Ok(s)
    }

    fn save(&self) {
        let Some(path) = &self.path else { return };
        let snap = Snapshot {
            tenants: self
                .by_tenant
                .iter()
                .map(|(t, m)| (t.clone(), m.values().cloned().collect()))
                .collect(),
        };
        match serde_json::to_vec(&snap) {
            Ok(bytes) => {
                if let Err(e) = persist::write_atomic(path, &bytes) {
                    tracing::error!("cannot save silences to {}: {e}", path.display());
                }
            }
            Err(e) => tracing::error!("cannot encode silences: {e}"),
        }
    }

    pub fn list(&self, tenant: &str) -> Vec<&Silence> {
        self.by_tenant
            .get(tenant)
            .map(|m| m.values().collect())
            .unwrap_or_default()
    }

    pub fn get(&self, tenant: &str, id: &str) -> Option<&Silence> {
        self.by_tenant.get(tenant).and_then(|m| m.get(id))
    }

    /// Ids of the active silences of `tenant` muting `labels`.
    pub fn muting(&self, tenant: &str, labels: &LabelMap, now_ms: i64) -> Vec<String> {
        self.by_tenant
            .get(tenant)
            .map(|m| {
                m.values()
                    .filter(|s| s.mutes(labels, now_ms))
                    .map(|s| s.id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn active_count(&self, now_ms: i64) -> usize {
        self.by_tenant
            .values()
            .flat_map(BTreeMap::values)
            .filter(|s| s.state(now_ms) == SilenceState::Active)
            .count()
    }

    /// Creates or updates a silence; returns its id. Updating an expired silence creates a
    /// new one, as Alertmanager does.
    pub fn upsert(
        &mut self,
        tenant: &str,
        req: SilenceRequest,
        now_ms: i64,
    ) -> Result<String, SilenceError> {
        if req.matchers.is_empty() {
            return Err(SilenceError::Invalid("it has no matchers".into()));
        }
        let compiled: Vec<Matcher> = req
            .matchers
            .iter()
            .map(SilenceMatcher::compile)
            .collect::<Result<_, _>>()
            .map_err(SilenceError::Invalid)?;
        if compiled.iter().all(|m| m.matches(&LabelMap::new())) {
            return Err(SilenceError::Invalid(
                "at least one matcher must not match the empty string (it would silence everything)".into(),
            ));
        }
        if req.ends_at_ms <= req.starts_at_ms {
            return Err(SilenceError::Invalid(
                "endsAt must be after startsAt".into(),
            ));
        }
        if req.ends_at_ms <= now_ms {
            return Err(SilenceError::Invalid("endsAt is in the past".into()));
        }
        let map = self.by_tenant.entry(tenant.to_owned()).or_default();
        let id = match req.id.filter(|i| !i.is_empty()) {
            Some(id) => {
                let existing = map
                    .get(&id)
                    .ok_or_else(|| SilenceError::NotFound(id.clone()))?;
                if existing.state(now_ms) == SilenceState::Expired {
                    persist::random_id()
                } else {
                    id
                }
            }
            None => {
                if map.len() >= MAX_PER_TENANT {
                    return Err(SilenceError::TooMany);
                }
                persist::random_id()
            }
        };
        // An active silence keeps its start; a new one starting in the past starts now.
        let starts_at_ms = match map.get(&id) {
            Some(old) if old.state(now_ms) == SilenceState::Active => old.starts_at_ms,
            _ => req.starts_at_ms.max(now_ms),
        };
        map.insert(
            id.clone(),
            Silence {
                id: id.clone(),
                matchers: req.matchers,
                starts_at_ms,
                ends_at_ms: req.ends_at_ms,
                updated_at_ms: now_ms,
                created_by: req.created_by,
                comment: req.comment,
                compiled,
            },
        );
        self.save();
        Ok(id)
    }

    /// Expires a silence now.
    pub fn expire(&mut self, tenant: &str, id: &str, now_ms: i64) -> Result<(), SilenceError> {
        let s = self
            .by_tenant
            .get_mut(tenant)
            .and_then(|m| m.get_mut(id))
            .ok_or_else(|| SilenceError::NotFound(id.to_owned()))?;
        match s.state(now_ms) {
            SilenceState::Expired => return Err(SilenceError::AlreadyExpired(id.to_owned())),
            SilenceState::Pending => s.starts_at_ms = now_ms,
            SilenceState::Active => {}
        }
        s.ends_at_ms = now_ms;
        s.updated_at_ms = now_ms;
        self.save();
        Ok(())
    }

    /// Drops silences expired longer than [`RETENTION_MS`] ago.
    pub fn gc(&mut self, now_ms: i64) {
        let mut changed = false;
        for m in self.by_tenant.values_mut() {
            let before = m.len();
            m.retain(|_, s| s.ends_at_ms > now_ms - RETENTION_MS);
            changed |= m.len() != before;
        }
        if changed {
            self.save();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, value: &str, is_regex: bool) -> SilenceMatcher {
        SilenceMatcher {
            name: name.into(),
            value: value.into(),
            is_regex,
            is_equal: true,
        }
    }

    fn req(matchers: Vec<SilenceMatcher>, start: i64, end: i64) -> SilenceRequest {
        SilenceRequest {
            id: None,
            matchers,
            starts_at_ms: start,
            ends_at_ms: end,
            created_by: "ops".into(),
            comment: "maintenance".into(),
        }
    }

    use crate::alerting::label_map as labels;

    #[test]
    fn silences_mute_while_active_and_per_tenant() {
        let mut s = Silences::default();
        let now = 1_000_000;
        let id = s
            .upsert(
                "t1",
                req(vec![m("job", "api|web", true)], now, now + 1000),
                now,
            )
            .expect("create");
        let l = labels(&[("job", "api")]);
        assert_eq!(s.muting("t1", &l, now + 1), vec![id.clone()]);
        assert!(s.muting("t2", &l, now + 1).is_empty(), "another tenant");
        assert!(
            s.muting("t1", &labels(&[("job", "db")]), now + 1)
                .is_empty()
        );
        assert!(s.muting("t1", &l, now + 1000).is_empty(), "ended");
        // Pending until it starts.
        let later = s
            .upsert(
                "t1",
                req(vec![m("job", "db", false)], now + 500, now + 900),
                now,
            )
            .expect("create");
        assert_eq!(
            s.get("t1", &later).map(|x| x.state(now)),
            Some(SilenceState::Pending)
        );
        assert!(s.get("t2", &later).is_none());
    }

    #[test]
    fn update_expire_and_validation() {
        let mut s = Silences::default();
        let now = 1_000_000;
        let id = s
            .upsert("", req(vec![m("a", "b", false)], now, now + 1000), now)
            .expect("create");
        let mut upd = req(vec![m("a", "c", false)], now, now + 2000);
        upd.id = Some(id.clone());
        assert_eq!(s.upsert("", upd.clone(), now + 10), Ok(id.clone()));
        assert_eq!(s.get("", &id).map(|x| x.ends_at_ms), Some(now + 2000));
        assert_eq!(s.expire("", &id, now + 20), Ok(()));
        assert_eq!(
            s.expire("", &id, now + 30),
            Err(SilenceError::AlreadyExpired(id.clone()))
        );
        // Updating an expired silence makes a new one.
        let again = s.upsert("", upd, now + 40).expect("recreate");
        assert_ne!(again, id);
        assert!(matches!(
            s.expire("other", &again, now),
            Err(SilenceError::NotFound(_))
        ));
        for bad in [
            req(vec![], now, now + 10),
            req(vec![m("a", ".*", true)], now, now + 10),
            req(vec![m("a", "b", false)], now, now - 1),
            req(vec![m("a", "(", true)], now, now + 10),
        ] {
            assert!(matches!(
                s.upsert("", bad, now),
                Err(SilenceError::Invalid(_))
            ));
        }
        s.gc(now + 40 + RETENTION_MS + 1);
        assert!(s.get("", &id).is_none());
    }

    #[test]
    fn silences_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("silences.json");
        let now = crate::alerting::now_ms();
        let id = {
            let mut s = Silences::open(path.clone()).expect("open");
            s.upsert("t", req(vec![m("a", "b", false)], now, now + 60_000), now)
                .expect("create")
        };
        let s = Silences::open(path).expect("reopen");
        assert_eq!(s.muting("t", &labels(&[("a", "b")]), now + 1), vec![id]);
    }
}
