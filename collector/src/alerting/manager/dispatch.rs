//! The manager's state and its pure logic: the alert store (per tenant, by fingerprint),
//! routing alerts into aggregation groups, and flushing due groups through muting
//! (silences, inhibition) and the notification log into notifications.
//!
//! Timers, as in Alertmanager: a new group waits `group_wait` before its first notification,
//! then is flushed every `group_interval`; an unchanged firing group is re-sent after
//! `repeat_interval` (the notification log decides). One exception: once every alert of a group
//! that was notified has resolved, it is flushed at once. Resolved alerts leave their group at
//! the flush that saw them resolved, and the store once no group holds them.
//!
//! Nothing here sleeps or does network I/O: [`Core::flush`] takes `now` and returns the
//! notifications to send and the next time it wants to run, so tests drive it by hand.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::super::{Alert, LabelMap};
use super::config::AlertManagerConfig;
use super::history::{AlertRef, HistoryEntry};
use super::metrics::Stats;
use super::nflog::{self, NotificationLog};
use super::notify::{self, GroupInfo, Member, Notification};
use super::persist::{fingerprint, fp_hex};
use super::silence::Silences;
use super::{inhibit, route};

/// Most alerts one tenant may hold; more are dropped (and logged).
pub const MAX_ALERTS_PER_TENANT: usize = 100_000;

pub struct AlertEntry {
    pub alert: Alert,
    pub fp: u64,
    pub updated_ms: i64,
    /// Posted without `endsAt` (it resolves after `resolve_timeout` unless refreshed).
    pub timeout: bool,
    /// Why it was last left out of a notification ("silenced by …", "inhibited by …"), for
    /// recording changes only.
    pub muted: Option<String>,
}

pub struct Group {
    pub key: String,
    pub receiver: String,
    pub labels: LabelMap,
    pub group_interval_ms: i64,
    pub repeat_ms: i64,
    pub alerts: BTreeSet<u64>,
    pub next_flush_ms: i64,
    /// Flushed at least once (so `group_wait` is over).
    pub flushed: bool,
}

#[derive(Default)]
pub struct Tenant {
    pub alerts: HashMap<u64, AlertEntry>,
    pub groups: BTreeMap<String, Group>,
}

/// What a flush or an ingest produced for the shell to carry out.
#[derive(Default)]
pub struct Effects {
    pub history: Vec<HistoryEntry>,
    pub notifications: Vec<Notification>,
}

pub struct Core {
    pub config: Arc<AlertManagerConfig>,
    pub tenants: BTreeMap<String, Tenant>,
    pub silences: Silences,
    pub nflog: NotificationLog,
    pub stats: Arc<Stats>,
    pub external_url: String,
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn alert_ref(e: &AlertEntry) -> AlertRef {
    AlertRef {
        fingerprint: fp_hex(e.fp),
        labels: e.alert.labels.clone(),
    }
}

fn state_entry(tenant: &str, e: &AlertEntry, kind: &str, now_ms: i64) -> HistoryEntry {
    HistoryEntry {
        time_ms: now_ms,
        tenant: tenant.to_owned(),
        kind: kind.into(),
        receiver: String::new(),
        group_key: String::new(),
        alerts: vec![alert_ref(e)],
        detail: String::new(),
    }
}

impl Core {
    /// Takes alerts of `tenant` in (each with its "posted without endsAt" flag): merges them
    /// into the store like Alertmanager (earliest start kept, newest end taken) and puts them
    /// into their groups.
    pub fn ingest(
        &mut self,
        tenant: &str,
        alerts: Vec<(Alert, bool)>,
        now_ms: i64,
        fx: &mut Effects,
    ) {
        let config = Arc::clone(&self.config);
        let t = self.tenants.entry(tenant.to_owned()).or_default();
        for (alert, timeout) in alerts {
            if alert.labels.is_empty() {
                continue;
            }
            let fp = fingerprint(&alert.labels);
            let firing = alert.is_firing(now_ms);
            self.stats
                .alerts_received
                .add(if firing { "firing" } else { "resolved" }, 1);
            let changed = match t.alerts.get_mut(&fp) {
                Some(e) => {
                    let was_firing = e.alert.is_firing(now_ms);
                    let starts = if !was_firing && alert.starts_at_ms > e.alert.ends_at_ms {
                        // It resolved and fires again: a new occurrence.
                        alert.starts_at_ms
                    } else {
                        e.alert.starts_at_ms.min(alert.starts_at_ms)
                    };
                    e.alert = alert;
                    e.alert.starts_at_ms = starts;
                    e.timeout = timeout;
                    e.updated_ms = now_ms;
                    was_firing != firing
                }
                None => {
                    if t.alerts.len() >= MAX_ALERTS_PER_TENANT {
                        tracing::warn!(
                            tenant,
                            "alert dropped: the tenant holds {MAX_ALERTS_PER_TENANT} alerts"
                        );
                        continue;
                    }
                    t.alerts.insert(
                        fp,
                        AlertEntry {
                            alert,
                            fp,
                            updated_ms: now_ms,
                            timeout,
                            muted: None,
                        },
                    );
                    firing
                }
            };
            let Some(e) = t.alerts.get(&fp) else { continue };
            if changed {
                let kind = if firing { "firing" } else { "resolved" };
                fx.history.push(state_entry(tenant, e, kind, now_ms));
            }
            join_groups(&mut t.groups, &config.route, &e.alert.labels, fp, now_ms);
        }
    }

    /// A new configuration: groups are rebuilt from the stored alerts (the notification log
    /// keeps receivers from being notified again of what they already have).
    pub fn reconfigure(&mut self, config: Arc<AlertManagerConfig>, now_ms: i64) {
        self.config = config;
        let tenants: Vec<String> = self.tenants.keys().cloned().collect();
        for tenant in tenants {
            let Some(t) = self.tenants.get_mut(&tenant) else {
                continue;
            };
            t.groups.clear();
            for e in t.alerts.values() {
                join_groups(
                    &mut t.groups,
                    &self.config.route,
                    &e.alert.labels,
                    e.fp,
                    now_ms,
                );
            }
        }
    }

    /// The firing alerts of `t` that are a source of some inhibit rule (usually few), taken
    /// once per flush or listing so muting is not quadratic in the number of alerts.
    pub fn inhibition_sources(&self, t: &Tenant, now_ms: i64) -> Vec<(u64, LabelMap)> {
        let rules = &self.config.inhibit_rules;
        if rules.is_empty() {
            return Vec::new();
        }
        t.alerts
            .values()
            .filter(|a| a.alert.is_firing(now_ms))
            .filter(|a| {
                rules
                    .iter()
                    .any(|r| super::matchers::all_match(&r.source, &a.alert.labels))
            })
            .map(|a| (a.fp, a.alert.labels.clone()))
            .collect()
    }

    /// Why `e` is muted now: the ids of active silences, the fingerprints of inhibiting
    /// alerts (`sources` from [`Core::inhibition_sources`]).
    pub fn mute_reason(
        &self,
        tenant: &str,
        sources: &[(u64, LabelMap)],
        e: &AlertEntry,
        now_ms: i64,
    ) -> (Vec<String>, Vec<String>) {
        let silenced = self.silences.muting(tenant, &e.alert.labels, now_ms);
        let inhibited = inhibit::inhibited_by(
            &self.config.inhibit_rules,
            sources.iter().map(|(fp, l)| (*fp, l)),
            e.fp,
            &e.alert.labels,
        )
        .map(|fp| vec![fp_hex(fp)])
        .unwrap_or_default();
        (silenced, inhibited)
    }

    /// Flushes every due group; returns the next time a flush may be due.
    pub fn flush(&mut self, now_ms: i64, fx: &mut Effects) -> Option<i64> {
        let tenants: Vec<String> = self.tenants.keys().cloned().collect();
        for tenant in &tenants {
            self.flush_tenant(tenant, now_ms, fx);
        }
        self.tenants
            .retain(|_, t| !t.alerts.is_empty() || !t.groups.is_empty());
        self.silences.gc(now_ms);
        self.nflog.gc(now_ms);
        self.next_due(now_ms)
    }

    fn flush_tenant(&mut self, tenant: &str, now_ms: i64, fx: &mut Effects) {
        let Some(mut t) = self.tenants.remove(tenant) else {
            return;
        };
        let due: Vec<String> =
            t.groups
                .values()
                .filter(|g| {
                    g.next_flush_ms <= now_ms
                        || (g.flushed
                            && !g.alerts.iter().any(|fp| {
                                t.alerts.get(fp).is_some_and(|e| e.alert.is_firing(now_ms))
                            }))
                })
                .map(|g| g.key.clone())
                .collect();
        let mut leaving = BTreeSet::new();
        let sources = self.inhibition_sources(&t, now_ms);
        for key in due {
            // Muting, decided once per alert for this flush.
            let mut members = Vec::new();
            let mut resolved_here = Vec::new();
            let mut mute_changes = Vec::new();
            let Some(g) = t.groups.get(&key) else {
                continue;
            };
            for fp in &g.alerts {
                let Some(e) = t.alerts.get(fp) else { continue };
                if !e.alert.is_firing(now_ms) {
                    resolved_here.push(*fp);
                }
                let (silenced, inhibited) = self.mute_reason(tenant, &sources, e, now_ms);
                let reason = match (silenced.first(), inhibited.first()) {
                    (Some(id), _) => Some(format!("silenced by {id}")),
                    (None, Some(fp)) => Some(format!("inhibited by {fp}")),
                    (None, None) => None,
                };
                if reason != e.muted {
                    mute_changes.push((*fp, reason.clone()));
                }
                match reason {
                    Some(r) => {
                        let why = if r.starts_with("silenced") {
                            "silence"
                        } else {
                            "inhibition"
                        };
                        self.stats.muted.add(why, 1);
                    }
                    None => members.push(Member {
                        fp: *fp,
                        alert: &e.alert,
                        timeout: e.timeout,
                    }),
                }
            }
            let firing: BTreeSet<u64> = members
                .iter()
                .filter(|m| m.alert.is_firing(now_ms))
                .map(|m| m.fp)
                .collect();
            let resolved: BTreeSet<u64> = members
                .iter()
                .filter(|m| !m.alert.is_firing(now_ms))
                .map(|m| m.fp)
                .collect();
            let receiver = self.config.receiver(&g.receiver);
            for (i, integ) in receiver
                .map(|r| r.integrations.as_slice())
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let log_key = nflog::key(tenant, &g.receiver, i, &g.key);
                let sent_resolved = if integ.send_resolved {
                    resolved.clone()
                } else {
                    BTreeSet::new()
                };
                // A forward to an Alertmanager is refreshed every group interval, so its
                // copy does not time out while the alert still fires here.
                let repeat = match integ.kind {
                    super::config::IntegrationKind::Alertmanager => {
                        g.repeat_ms.min(g.group_interval_ms)
                    }
                    super::config::IntegrationKind::Webhook => g.repeat_ms,
                };
                if !self.nflog.needs_update(
                    &log_key,
                    &firing,
                    &sent_resolved,
                    integ.send_resolved,
                    repeat,
                    now_ms,
                ) {
                    if !firing.is_empty() {
                        self.stats.deduplicated.add(&g.receiver, 1);
                        fx.history.push(HistoryEntry {
                            time_ms: now_ms,
                            tenant: tenant.to_owned(),
                            kind: "deduplicated".into(),
                            receiver: g.receiver.clone(),
                            group_key: g.key.clone(),
                            alerts: members
                                .iter()
                                .filter_map(|m| t.alerts.get(&m.fp).map(alert_ref))
                                .collect(),
                            detail: "already notified with the same alerts".into(),
                        });
                    }
                    continue;
                }
                self.nflog
                    .log(log_key, firing.clone(), sent_resolved, now_ms);
                let info = GroupInfo {
                    tenant,
                    receiver: &g.receiver,
                    integration: i,
                    key: &g.key,
                    labels: &g.labels,
                    forward_ttl_ms: g.group_interval_ms.saturating_mul(4).max(300_000),
                    repeat_ms: repeat,
                };
                if let Some(n) = notify::build(&info, integ, &members, now_ms, &self.external_url) {
                    fx.notifications.push(n);
                }
            }
            drop(members);
            for (fp, reason) in mute_changes {
                if let Some(e) = t.alerts.get_mut(&fp) {
                    let (kind, detail) = match &reason {
                        Some(r) => ("muted", r.clone()),
                        None => ("unmuted", String::new()),
                    };
                    let mut h = state_entry(tenant, e, kind, now_ms);
                    h.detail = detail;
                    fx.history.push(h);
                    e.muted = reason;
                }
            }
            if let Some(g) = t.groups.get_mut(&key) {
                for fp in &resolved_here {
                    g.alerts.remove(fp);
                    leaving.insert(*fp);
                }
                g.flushed = true;
                g.next_flush_ms = now_ms.saturating_add(g.group_interval_ms);
                if g.alerts.is_empty() {
                    t.groups.remove(&key);
                }
            }
        }
        for fp in leaving {
            let held = t.groups.values().any(|g| g.alerts.contains(&fp));
            if !held
                && t.alerts
                    .get(&fp)
                    .is_some_and(|e| !e.alert.is_firing(now_ms))
            {
                t.alerts.remove(&fp);
            }
        }
        self.tenants.insert(tenant.to_owned(), t);
    }

    /// The earliest of: a group's next flush, and (for groups already notified) the end of a
    /// firing alert, after which the group may have resolved entirely.
    fn next_due(&self, now_ms: i64) -> Option<i64> {
        let mut next: Option<i64> = None;
        let mut consider = |t: i64| next = Some(next.map_or(t, |n| n.min(t)));
        for t in self.tenants.values() {
            for g in t.groups.values() {
                consider(g.next_flush_ms);
                if g.flushed {
                    for fp in &g.alerts {
                        if let Some(e) = t.alerts.get(fp)
                            && e.alert.ends_at_ms > now_ms
                        {
                            consider(e.alert.ends_at_ms);
                        }
                    }
                }
            }
        }
        next
    }
}

/// Puts alert `fp` into the group of every route its `labels` match, creating a group (its first
/// flush after `group_wait`) where there is none yet.
fn join_groups(
    groups: &mut BTreeMap<String, Group>,
    root: &super::config::Route,
    labels: &LabelMap,
    fp: u64,
    now_ms: i64,
) {
    for r in route::matching(root, labels) {
        let group_labels = route::group_labels(r, labels);
        let key = route::group_key(r, &group_labels);
        let g = groups.entry(key.clone()).or_insert_with(|| Group {
            key,
            receiver: r.receiver.clone(),
            labels: group_labels,
            group_interval_ms: ms(r.group_interval),
            repeat_ms: ms(r.repeat_interval),
            alerts: BTreeSet::new(),
            next_flush_ms: now_ms.saturating_add(ms(r.group_wait)),
            flushed: false,
        });
        g.alerts.insert(fp);
    }
}
