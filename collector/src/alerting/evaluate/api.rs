//! The `data` of Prometheus's `/api/v1/rules` and `/api/v1/alerts`, one tenant at a time.

use serde_json::{Value, json};

use super::state::{ActiveAlert, AlertState};
use super::{Evaluator, Health, RuleState};
use crate::alerting::rules::RuleKind;
use crate::alerting::rules::template::go_float;

/// `/api/v1/rules` filters (Prometheus's `type`, `rule_name[]`, `rule_group[]`, `file[]`,
/// `exclude_alerts`). Empty lists match everything.
#[derive(Debug, Clone, Default)]
pub struct RulesFilter {
    /// `Some("alert")` or `Some("record")`.
    pub kind: Option<String>,
    pub rule_names: Vec<String>,
    pub group_names: Vec<String>,
    pub files: Vec<String>,
    pub exclude_alerts: bool,
}

/// RFC 3339 in UTC with milliseconds when non-zero; 0 is Go's zero time, as Prometheus shows
/// a never-evaluated rule.
pub fn rfc3339(t_ms: i64) -> String {
    if t_ms == 0 {
        return "0001-01-01T00:00:00Z".into();
    }
    sonde_common::time::format_rfc3339_ms(t_ms)
}

fn alert_json(a: &ActiveAlert) -> Value {
    let mut v = json!({
        "labels": a.labels,
        "annotations": a.annotations,
        "state": a.state.as_str(),
        "activeAt": rfc3339(a.active_at),
        "value": go_float_e(a.value()),
    });
    if let (Some(k), Some(obj)) = (a.keep_firing_since, v.as_object_mut()) {
        obj.insert("keepFiringSince".into(), Value::String(rfc3339(k)));
    }
    v
}

/// Prometheus prints alert values with `%e`.
fn go_float_e(v: f64) -> String {
    if !v.is_finite() {
        return go_float(v);
    }
    let s = format!("{v:e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let e: i32 = e.parse().unwrap_or(0);
            format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
        }
        None => s,
    }
}

fn active(a: &ActiveAlert) -> bool {
    a.state != AlertState::Inactive
}

fn rule_json(r: &RuleState, exclude_alerts: bool) -> Value {
    let rule = &r.rule;
    let health = r.health.as_str();
    let last_error = (r.health == Health::Err).then(|| r.last_error.clone());
    match &rule.kind {
        RuleKind::Alerting {
            for_,
            keep_firing_for,
            ..
        } => {
            let alerts: Vec<&ActiveAlert> = r.alerts.values().filter(|a| active(a)).collect();
            let state = if alerts.iter().any(|a| a.state == AlertState::Firing) {
                "firing"
            } else if alerts.is_empty() {
                "inactive"
            } else {
                "pending"
            };
            let mut v = json!({
                "state": state,
                "name": rule.name,
                "query": rule.expr,
                "duration": for_.as_secs_f64(),
                "keepFiringFor": keep_firing_for.as_secs_f64(),
                "labels": rule.labels,
                "annotations": rule.annotations,
                "health": health,
                "evaluationTime": r.eval_seconds,
                "lastEvaluation": rfc3339(r.last_eval_ms),
                "type": "alerting",
            });
            if let Some(obj) = v.as_object_mut() {
                if !exclude_alerts {
                    obj.insert(
                        "alerts".into(),
                        Value::Array(alerts.iter().map(|a| alert_json(a)).collect()),
                    );
                }
                if let Some(e) = last_error {
                    obj.insert("lastError".into(), Value::String(e));
                }
            }
            v
        }
        RuleKind::Recording => {
            let mut v = json!({
                "name": rule.name,
                "query": rule.expr,
                "labels": rule.labels,
                "health": health,
                "evaluationTime": r.eval_seconds,
                "lastEvaluation": rfc3339(r.last_eval_ms),
                "type": "recording",
            });
            if let (Some(e), Some(obj)) = (last_error, v.as_object_mut()) {
                obj.insert("lastError".into(), Value::String(e));
            }
            v
        }
    }
}

impl Evaluator {
    /// The `data` of `/api/v1/rules` for `tenant`.
    pub fn rules_json(&self, tenant: &str, filter: &RulesFilter) -> Value {
        let groups = self.groups();
        let mut out = Vec::new();
        for (k, g) in groups.iter().filter(|(k, _)| k.tenant == tenant) {
            if !filter.group_names.is_empty() && !filter.group_names.contains(&k.name) {
                continue;
            }
            if !filter.files.is_empty() && !filter.files.contains(&k.file) {
                continue;
            }
            let rules: Vec<Value> = g
                .rules
                .iter()
                .filter(|r| match filter.kind.as_deref() {
                    Some("alert") => r.rule.is_alerting(),
                    Some("record") => !r.rule.is_alerting(),
                    _ => true,
                })
                .filter(|r| {
                    filter.rule_names.is_empty() || filter.rule_names.contains(&r.rule.name)
                })
                .map(|r| rule_json(r, filter.exclude_alerts))
                .collect();
            let narrowed = filter.kind.is_some() || !filter.rule_names.is_empty();
            if rules.is_empty() && narrowed {
                continue;
            }
            out.push(json!({
                "name": k.name,
                "file": k.file,
                "rules": rules,
                "interval": g.interval.as_secs_f64(),
                "limit": g.group.limit,
                "evaluationTime": g.last_duration,
                "lastEvaluation": rfc3339(g.last_eval_ms),
            }));
        }
        json!({ "groups": out })
    }

    /// The `data` of `/api/v1/alerts` for `tenant`: pending and firing alerts.
    pub fn alerts_json(&self, tenant: &str) -> Value {
        let groups = self.groups();
        let alerts: Vec<Value> = groups
            .iter()
            .filter(|(k, _)| k.tenant == tenant)
            .flat_map(|(_, g)| g.rules.iter())
            .flat_map(|r| r.alerts.values())
            .filter(|a| active(a))
            .map(alert_json)
            .collect();
        json!({ "alerts": alerts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(go_float_e(95.0), "9.5e+01");
        assert_eq!(go_float_e(0.001), "1e-03");
    }
}
