//! Routing: which routes of the tree an alert lands in (Alertmanager's depth-first match with
//! `continue`), and the group an alert joins on each route.

use super::super::LabelMap;
use super::config::{GroupBy, Route};
use super::matchers;

/// The routes `labels` land in: the deepest matching node of each matching branch; siblings
/// after a match are tried only when the matching child has `continue: true`. The root always
/// matches, and is the answer when no child does.
pub fn matching<'a>(root: &'a Route, labels: &LabelMap) -> Vec<&'a Route> {
    let mut out = Vec::new();
    walk(root, labels, &mut out);
    out
}

/// Returns whether `route` matched (and so added itself or descendants to `out`).
fn walk<'a>(route: &'a Route, labels: &LabelMap, out: &mut Vec<&'a Route>) -> bool {
    if !matchers::all_match(&route.matchers, labels) {
        return false;
    }
    let mut any_child = false;
    for child in &route.routes {
        if walk(child, labels, out) {
            any_child = true;
            if !child.continue_matching {
                break;
            }
        }
    }
    if !any_child {
        out.push(route);
    }
    true
}

/// The labels an alert is grouped by on `route`.
pub fn group_labels(route: &Route, labels: &LabelMap) -> LabelMap {
    match &route.group_by {
        GroupBy::All => labels.clone(),
        GroupBy::Labels(names) => names
            .iter()
            .filter_map(|n| labels.get(n).map(|v| (n.clone(), v.clone())))
            .collect(),
    }
}

/// Alertmanager's group key: `{route key}:{group labels}`.
pub fn group_key(route: &Route, group_labels: &LabelMap) -> String {
    let parts: Vec<String> = group_labels
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{}:{{{}}}", route.key, parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::manager::config::parse;

    use crate::alerting::label_map as labels;

    const TREE: &str = r#"
route:
  receiver: root
  group_by: [alertname]
  routes:
    - matchers: [team="db"]
      receiver: db
      routes:
        - matchers: [severity="critical"]
          receiver: db-pager
          continue: true
        - matchers: [severity=~"critical|warning"]
          receiver: db-chat
    - matchers: [team="db"]
      receiver: never
    - matchers: [team="web"]
      receiver: web
      continue: true
      group_by: ['...']
    - matchers: [severity="critical"]
      receiver: pager
receivers:
  - name: root
  - name: db
  - name: db-pager
  - name: db-chat
  - name: never
  - name: web
  - name: pager
"#;

    fn receivers(c: &Route, l: &LabelMap) -> Vec<String> {
        matching(c, l).iter().map(|r| r.receiver.clone()).collect()
    }

    #[test]
    fn nested_routes_and_continue() {
        let c = parse(TREE).expect("config");
        let r = &c.route;
        assert_eq!(receivers(r, &labels(&[("alertname", "A")])), ["root"]);
        assert_eq!(
            receivers(r, &labels(&[("team", "db"), ("severity", "critical")])),
            ["db-pager", "db-chat"]
        );
        assert_eq!(
            receivers(r, &labels(&[("team", "db"), ("severity", "info")])),
            ["db"]
        );
        assert_eq!(
            receivers(r, &labels(&[("team", "web"), ("severity", "critical")])),
            ["web", "pager"]
        );
        assert_ne!(r.routes[0].key, r.routes[1].key);
    }

    #[test]
    fn group_labels_and_keys() {
        let c = parse(TREE).expect("config");
        let l = labels(&[("alertname", "A"), ("team", "web"), ("x", "1")]);
        let root = &c.route;
        assert_eq!(group_labels(root, &l), labels(&[("alertname", "A")]));
        assert_eq!(
            group_key(root, &group_labels(root, &l)),
            r#"{}:{alertname="A"}"#
        );
        let web = &c.route.routes[2];
        assert_eq!(group_labels(web, &l), l);
    }
}
