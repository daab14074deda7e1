//! From a job's target groups to targets: the labels Prometheus adds before relabeling, the
//! relabeling itself, `instance`, the scrape URL and a key that every pool member computes
//! alike (it decides ownership and the scrape offset).

use std::time::Duration;

use sonde_common::duration::parse_duration;
use sonde_common::model::is_valid_label_name;

use super::config::ScrapeJob;
use super::{LabelMap, TargetGroup, relabel};

/// A target to scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Labels before relabeling (Prometheus's `discoveredLabels`).
    pub discovered: LabelMap,
    /// Final labels, without `__`-prefixed ones; attached to every scraped sample.
    pub labels: LabelMap,
    pub url: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// `job/` + a stable hash of the labels and URL.
    pub key: String,
}

/// A target that relabeling (or an empty address) dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct DroppedTarget {
    pub discovered: LabelMap,
}

pub use sonde_common::hash::stable_hash;

fn seconds(d: Duration) -> String {
    // Prometheus writes these as model.Duration strings ("15s", "1m").
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Builds the targets of `job` from all its groups.
pub fn build(job: &ScrapeJob, groups: &[TargetGroup]) -> (Vec<Target>, Vec<DroppedTarget>) {
    let mut active = Vec::new();
    let mut dropped = Vec::new();
    for group in groups {
        for t in &group.targets {
            match build_one(job, group, t) {
                Some(target) => {
                    if !active.iter().any(|a: &Target| a.key == target.key) {
                        active.push(target);
                    }
                }
                None => {
                    let mut discovered = group.labels.clone();
                    discovered.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
                    add_scrape_labels(job, &mut discovered);
                    dropped.push(DroppedTarget { discovered });
                }
            }
        }
    }
    (active, dropped)
}

fn add_scrape_labels(job: &ScrapeJob, labels: &mut LabelMap) {
    let mut default = |k: &str, v: String| {
        labels.entry(k.to_owned()).or_insert(v);
    };
    default("job", job.job_name.clone());
    default("__scheme__", job.scheme.clone());
    default("__metrics_path__", job.metrics_path.clone());
    default("__scrape_interval__", seconds(job.scrape_interval));
    default("__scrape_timeout__", seconds(job.scrape_timeout));
    for (name, values) in &job.params {
        if let Some(first) = values.first() {
            default(&format!("__param_{name}"), first.clone());
        }
    }
}

fn build_one(job: &ScrapeJob, group: &TargetGroup, target: &LabelMap) -> Option<Target> {
    let mut labels = group.labels.clone();
    labels.extend(target.iter().map(|(k, v)| (k.clone(), v.clone())));
    add_scrape_labels(job, &mut labels);
    let discovered = labels.clone();
    if !relabel::process(&mut labels, &job.relabel_configs) {
        return None;
    }
    let address = labels.get("__address__").cloned().unwrap_or_default();
    if address.is_empty() || address.contains('/') {
        return None;
    }
    labels
        .entry("instance".to_owned())
        .or_insert_with(|| address.clone());
    let scheme = labels.get("__scheme__").map_or("http", String::as_str);
    let path = labels
        .get("__metrics_path__")
        .map_or("/metrics", String::as_str);
    let interval = labels
        .get("__scrape_interval__")
        .and_then(|s| parse_duration(s).ok())
        .filter(|d| !d.is_zero())?;
    let timeout = labels
        .get("__scrape_timeout__")
        .and_then(|s| parse_duration(s).ok())
        .filter(|d| !d.is_zero() && *d <= interval)?;
    if scheme != "http" {
        tracing::warn!(
            job = job.job_name,
            scheme,
            "scrape: dropping a target whose scheme is not http"
        );
        return None;
    }
    // URL parameters: the job's params, each overridden by a `__param_<name>` label.
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (name, values) in &job.params {
        match labels.get(&format!("__param_{name}")) {
            Some(v) => {
                query.append_pair(name, v);
                any = true;
            }
            None => {
                for v in values {
                    query.append_pair(name, v);
                    any = true;
                }
            }
        }
    }
    for (name, v) in &labels {
        if let Some(p) = name.strip_prefix("__param_")
            && !job.params.contains_key(p)
        {
            query.append_pair(p, v);
            any = true;
        }
    }
    let query = query.finish();
    let url = if any {
        format!("{scheme}://{address}{path}?{query}")
    } else {
        format!("{scheme}://{address}{path}")
    };
    let labels: LabelMap = labels
        .into_iter()
        .filter(|(k, _)| !k.starts_with("__"))
        .collect();
    if let Some(bad) = labels.keys().find(|k| !is_valid_label_name(k)) {
        tracing::warn!(
            job = job.job_name,
            label = bad,
            "scrape: dropping a target with an invalid label name after relabeling"
        );
        return None;
    }
    let mut parts: Vec<&str> = vec![&job.job_name, &url];
    for (k, v) in &labels {
        parts.push(k);
        parts.push(v);
    }
    let key = format!("{}/{:016x}", job.job_name, stable_hash(&parts));
    Some(Target {
        discovered,
        labels,
        url,
        interval,
        timeout,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::config::parse;

    fn job(yaml: &str) -> ScrapeJob {
        parse("t.yml", yaml, None).unwrap().jobs.remove(0)
    }

    fn lm(pairs: &[(&str, &str)]) -> LabelMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_url_and_instance() {
        let j = job(
            "scrape_configs:\n  - job_name: node\n    scrape_interval: 15s\n    params: {module: [m1], x: ['a b']}\n",
        );
        let group = TargetGroup {
            source: "0".into(),
            targets: vec![lm(&[("__address__", "h:9100"), ("__meta_x", "1")])],
            labels: lm(&[("env", "prod")]),
        };
        let (active, dropped) = build(&j, &[group]);
        assert!(dropped.is_empty());
        let t = &active[0];
        assert_eq!(
            t.labels,
            lm(&[("env", "prod"), ("instance", "h:9100"), ("job", "node")])
        );
        assert_eq!(t.url, "http://h:9100/metrics?module=m1&x=a+b");
        assert_eq!(t.discovered["__scrape_interval__"], "15s");
        assert_eq!(t.discovered["__param_module"], "m1");
        assert_eq!(t.discovered["__meta_x"], "1");
        assert_eq!(t.interval, Duration::from_secs(15));
        assert!(t.key.starts_with("node/"));
        // The key is stable.
        let (again, _) = build(
            &j,
            &[TargetGroup {
                source: "other".into(),
                targets: vec![lm(&[("__address__", "h:9100"), ("__meta_x", "1")])],
                labels: lm(&[("env", "prod")]),
            }],
        );
        assert_eq!(again[0].key, t.key);
    }

    #[test]
    fn relabeling_shapes_and_drops_targets() {
        let j = job(r#"scrape_configs:
  - job_name: j
    relabel_configs:
      - source_labels: [__meta_keep]
        regex: "yes"
        action: keep
      - source_labels: [__address__]
        regex: "(.*):.*"
        target_label: instance
      - source_labels: [__meta_path]
        regex: "(.+)"
        target_label: __metrics_path__
      - source_labels: [__meta_module]
        regex: "(.+)"
        target_label: __param_module
"#);
        let group = TargetGroup {
            source: "0".into(),
            targets: vec![
                lm(&[
                    ("__address__", "a:1"),
                    ("__meta_keep", "yes"),
                    ("__meta_path", "/p"),
                    ("__meta_module", "z"),
                ]),
                lm(&[("__address__", "b:1"), ("__meta_keep", "no")]),
            ],
            labels: LabelMap::new(),
        };
        let (active, dropped) = build(&j, &[group]);
        assert_eq!(active.len(), 1);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].discovered["__address__"], "b:1");
        assert_eq!(active[0].labels["instance"], "a");
        assert_eq!(active[0].url, "http://a:1/p?module=z");
    }

    #[test]
    fn invalid_label_names_after_labelmap_drop_the_target() {
        let j = job(
            "scrape_configs:\n  - job_name: j\n    relabel_configs:\n      - {regex: '__meta_(.*)', action: labelmap, replacement: '9$1'}\n",
        );
        let group = TargetGroup {
            source: "0".into(),
            targets: vec![lm(&[("__address__", "a:1"), ("__meta_x", "1")])],
            labels: LabelMap::new(),
        };
        let (active, dropped) = build(&j, &[group]);
        assert!(active.is_empty());
        assert_eq!(dropped.len(), 1);
    }

    #[test]
    fn empty_address_after_relabel_drops() {
        let j = job(
            "scrape_configs:\n  - job_name: j\n    relabel_configs:\n      - {source_labels: [nothing], target_label: __address__}\n",
        );
        let group = TargetGroup {
            source: "0".into(),
            targets: vec![lm(&[("__address__", "a:1")])],
            labels: LabelMap::new(),
        };
        let (active, dropped) = build(&j, &[group]);
        assert!(active.is_empty());
        assert_eq!(dropped.len(), 1);
    }
}
