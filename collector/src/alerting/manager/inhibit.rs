//! Inhibition: a firing alert matching a rule's source matchers mutes alerts matching its
//! target matchers when the `equal` labels agree (absent on both counts as equal). An alert
//! never inhibits itself, and, as in Alertmanager, an alert matching both sides is only muted
//! by a source that does not also match the target side.

use super::super::LabelMap;
use super::config::InhibitRule;
use super::matchers::all_match;

/// The fingerprint of a firing alert that inhibits `target`, if any. `firing` holds every
/// firing alert of the tenant.
pub fn inhibited_by<'a>(
    rules: &[InhibitRule],
    firing: impl Iterator<Item = (u64, &'a LabelMap)> + Clone,
    target_fp: u64,
    target: &LabelMap,
) -> Option<u64> {
    for rule in rules {
        if !all_match(&rule.target, target) {
            continue;
        }
        let target_is_source = all_match(&rule.source, target);
        for (fp, source) in firing.clone() {
            if fp == target_fp || !all_match(&rule.source, source) {
                continue;
            }
            if target_is_source && all_match(&rule.target, source) {
                continue;
            }
            if rule.equal.iter().all(|n| source.get(n) == target.get(n)) {
                return Some(fp);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::manager::matchers::parse_list;

    use crate::alerting::label_map as labels;

    #[test]
    fn critical_mutes_warning_of_the_same_cluster_only() {
        let rules = vec![InhibitRule {
            source: parse_list(r#"severity="critical""#).expect("m"),
            target: parse_list(r#"severity="warning""#).expect("m"),
            equal: vec!["cluster".into()],
        }];
        let crit = labels(&[("severity", "critical"), ("cluster", "a")]);
        let warn_a = labels(&[("severity", "warning"), ("cluster", "a")]);
        let warn_b = labels(&[("severity", "warning"), ("cluster", "b")]);
        let firing = [(1u64, &crit), (2, &warn_a), (3, &warn_b)];
        assert_eq!(
            inhibited_by(&rules, firing.iter().copied(), 2, &warn_a),
            Some(1)
        );
        assert_eq!(
            inhibited_by(&rules, firing.iter().copied(), 3, &warn_b),
            None
        );
        assert_eq!(inhibited_by(&rules, firing.iter().copied(), 1, &crit), None);
        // Without the source firing, nothing is muted.
        let only_warn = [(2u64, &warn_a)];
        assert_eq!(
            inhibited_by(&rules, only_warn.iter().copied(), 2, &warn_a),
            None
        );
    }

    #[test]
    fn an_alert_never_inhibits_itself() {
        let rules = vec![InhibitRule {
            source: parse_list("alertname=Down").expect("m"),
            target: parse_list("alertname=Down").expect("m"),
            equal: vec![],
        }];
        let a = labels(&[("alertname", "Down"), ("i", "1")]);
        let b = labels(&[("alertname", "Down"), ("i", "2")]);
        let firing = [(1u64, &a), (2, &b)];
        assert_eq!(inhibited_by(&rules, firing.iter().copied(), 1, &a), None);
    }
}
