//! Prometheus relabeling: the same config keys, defaults and results (Prometheus's
//! `model/relabel/relabel.go`). Regexes are anchored at both ends; `replacement` expands
//! `$1`, `${1}` and `${name}` as Go's `Regexp.Expand` does (Rust's `Captures::expand` follows
//! the same rules, including `$1x` meaning the group named `1x`).

use regex::Regex;
use serde::Deserialize;
use sonde_common::model::is_valid_label_name;
use thiserror::Error;

use super::LabelMap;
use super::md5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Replace,
    Keep,
    Drop,
    HashMod,
    LabelMap,
    LabelDrop,
    LabelKeep,
}

impl Action {
    fn from_name(name: &str) -> Option<Action> {
        Some(match name.to_ascii_lowercase().as_str() {
            "replace" => Action::Replace,
            "keep" => Action::Keep,
            "drop" => Action::Drop,
            "hashmod" => Action::HashMod,
            "labelmap" => Action::LabelMap,
            "labeldrop" => Action::LabelDrop,
            "labelkeep" => Action::LabelKeep,
            _ => return None,
        })
    }
}

#[derive(Debug, Error, PartialEq)]
pub enum RelabelError {
    #[error(
        "unsupported relabel action {0:?} (supported: replace, keep, drop, hashmod, labelmap, \
         labeldrop, labelkeep)"
    )]
    UnsupportedAction(String),
    #[error("invalid regex {regex:?}: {reason}")]
    Regex { regex: String, reason: String },
    #[error("relabel action {0} requires a target_label")]
    MissingTarget(&'static str),
    #[error("invalid target_label {0:?}")]
    InvalidTarget(String),
    #[error("relabel action hashmod requires a non-zero modulus")]
    ZeroModulus,
    #[error("invalid source label name {0:?}")]
    InvalidSource(String),
    #[error("{0} action requires only 'regex', and no other fields")]
    OnlyRegex(&'static str),
}

/// One relabel rule as written in YAML.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRelabelConfig {
    #[serde(default)]
    source_labels: Vec<String>,
    #[serde(default)]
    separator: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    modulus: Option<u64>,
    #[serde(default)]
    target_label: Option<String>,
    #[serde(default)]
    replacement: Option<String>,
    #[serde(default)]
    action: Option<String>,
}

/// A checked relabel rule.
#[derive(Debug, Clone)]
pub struct RelabelConfig {
    pub source_labels: Vec<String>,
    pub separator: String,
    /// As written, unanchored (for comparison and display).
    pub regex_text: String,
    regex: Regex,
    pub modulus: u64,
    pub target_label: String,
    pub replacement: String,
    pub action: Action,
}

impl PartialEq for RelabelConfig {
    fn eq(&self, other: &Self) -> bool {
        self.source_labels == other.source_labels
            && self.separator == other.separator
            && self.regex_text == other.regex_text
            && self.modulus == other.modulus
            && self.target_label == other.target_label
            && self.replacement == other.replacement
            && self.action == other.action
    }
}

impl TryFrom<RawRelabelConfig> for RelabelConfig {
    type Error = RelabelError;

    fn try_from(raw: RawRelabelConfig) -> Result<Self, RelabelError> {
        let action_name = raw.action.clone().unwrap_or_else(|| "replace".into());
        let action =
            Action::from_name(&action_name).ok_or(RelabelError::UnsupportedAction(action_name))?;
        let regex_text = raw.regex.clone().unwrap_or_else(|| "(.*)".into());
        let regex =
            Regex::new(&format!("^(?:{regex_text})$")).map_err(|e| RelabelError::Regex {
                regex: regex_text.clone(),
                reason: e.to_string().lines().last().unwrap_or("").trim().to_owned(),
            })?;
        for s in &raw.source_labels {
            if !is_valid_label_name(s) {
                return Err(RelabelError::InvalidSource(s.clone()));
            }
        }
        let target_label = raw.target_label.clone().unwrap_or_default();
        let modulus = raw.modulus.unwrap_or(0);
        match action {
            Action::Replace | Action::HashMod if target_label.is_empty() => {
                return Err(RelabelError::MissingTarget(if action == Action::Replace {
                    "replace"
                } else {
                    "hashmod"
                }));
            }
            Action::HashMod if modulus == 0 => return Err(RelabelError::ZeroModulus),
            Action::HashMod if !is_valid_label_name(&target_label) => {
                return Err(RelabelError::InvalidTarget(target_label));
            }
            Action::Replace
                if !target_label.contains('$') && !is_valid_label_name(&target_label) =>
            {
                return Err(RelabelError::InvalidTarget(target_label));
            }
            Action::LabelDrop | Action::LabelKeep
                if !raw.source_labels.is_empty()
                    || raw.target_label.is_some()
                    || raw.modulus.is_some()
                    || raw.separator.is_some()
                    || raw.replacement.is_some() =>
            {
                return Err(RelabelError::OnlyRegex(if action == Action::LabelDrop {
                    "labeldrop"
                } else {
                    "labelkeep"
                }));
            }
            _ => {}
        }
        Ok(RelabelConfig {
            source_labels: raw.source_labels,
            separator: raw.separator.unwrap_or_else(|| ";".into()),
            regex_text,
            regex,
            modulus,
            target_label,
            replacement: raw.replacement.unwrap_or_else(|| "$1".into()),
            action,
        })
    }
}

/// Applies `configs` in order; `false` when a rule drops the label set. Labels set to an
/// empty value are removed, as Prometheus's label builder does.
pub fn process(labels: &mut LabelMap, configs: &[RelabelConfig]) -> bool {
    configs.iter().all(|c| apply(labels, c))
}

fn set(labels: &mut LabelMap, name: String, value: String) {
    if value.is_empty() {
        labels.remove(&name);
    } else {
        labels.insert(name, value);
    }
}

fn apply(labels: &mut LabelMap, cfg: &RelabelConfig) -> bool {
    let value = cfg
        .source_labels
        .iter()
        .map(|n| labels.get(n).map_or("", String::as_str))
        .collect::<Vec<_>>()
        .join(&cfg.separator);
    match cfg.action {
        Action::Drop => {
            if cfg.regex.is_match(&value) {
                return false;
            }
        }
        Action::Keep => {
            if !cfg.regex.is_match(&value) {
                return false;
            }
        }
        Action::Replace => {
            let Some(caps) = cfg.regex.captures(&value) else {
                return true;
            };
            let mut target = String::new();
            caps.expand(&cfg.target_label, &mut target);
            if !is_valid_label_name(&target) {
                return true;
            }
            let mut result = String::new();
            caps.expand(&cfg.replacement, &mut result);
            set(labels, target, result);
        }
        Action::HashMod => {
            let sum = md5::digest(value.as_bytes());
            let mut tail = [0u8; 8];
            tail.copy_from_slice(&sum[8..]);
            let m = u64::from_be_bytes(tail) % cfg.modulus.max(1);
            set(labels, cfg.target_label.clone(), m.to_string());
        }
        Action::LabelMap => {
            let snapshot: Vec<(String, String)> =
                labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            for (name, v) in snapshot {
                if cfg.regex.is_match(&name) {
                    let new = cfg
                        .regex
                        .replace_all(&name, cfg.replacement.as_str())
                        .into_owned();
                    set(labels, new, v);
                }
            }
        }
        Action::LabelDrop => labels.retain(|name, _| !cfg.regex.is_match(name)),
        Action::LabelKeep => labels.retain(|name, _| cfg.regex.is_match(name)),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> RelabelConfig {
        let raw: RawRelabelConfig = serde_saphyr::from_str(yaml).unwrap();
        RelabelConfig::try_from(raw).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> LabelMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn run(input: &[(&str, &str)], rules: &[&str]) -> Option<LabelMap> {
        let configs: Vec<_> = rules.iter().map(|r| rule(r)).collect();
        let mut l = labels(input);
        process(&mut l, &configs).then_some(l)
    }

    // Cases from Prometheus's model/relabel/relabel_test.go.
    #[test]
    fn replace_with_groups_and_defaults() {
        let out = run(
            &[("a", "foo"), ("b", "bar"), ("c", "baz")],
            &[
                "{source_labels: [a], regex: 'f(.*)', target_label: d, replacement: 'ch${1}-ch${1}'}",
            ],
        );
        assert_eq!(
            out,
            Some(labels(&[
                ("a", "foo"),
                ("b", "bar"),
                ("c", "baz"),
                ("d", "choo-choo")
            ]))
        );
        // Multiple source labels joined by the separator; `$1x` names a group "1x" (empty).
        let out = run(
            &[("a", "foo"), ("b", "bar")],
            &[
                "{source_labels: [a, b], regex: 'f(.*);(.*)r', target_label: a, replacement: 'b${1}${2}m'}",
            ],
        );
        assert_eq!(out, Some(labels(&[("a", "boobam"), ("b", "bar")])));
        let out = run(
            &[("a", "foo")],
            &["{source_labels: [a], regex: '(f).*', target_label: b, replacement: '$1x'}"],
        );
        assert_eq!(out, Some(labels(&[("a", "foo")])));
        // Named groups; the regex is anchored, so a partial match does not replace.
        let out = run(
            &[("a", "foo")],
            &[
                "{source_labels: [a], regex: '(?P<first>f)o', target_label: b, replacement: '${first}'}",
            ],
        );
        assert_eq!(out, Some(labels(&[("a", "foo")])));
        let out = run(
            &[("a", "foo")],
            &[
                "{source_labels: [a], regex: '(?P<first>f)oo', target_label: b, replacement: '${first}'}",
            ],
        );
        assert_eq!(out, Some(labels(&[("a", "foo"), ("b", "f")])));
        // An empty result deletes the target label; templated target names.
        let out = run(
            &[("a", "foo"), ("b", "x")],
            &["{source_labels: [c], target_label: b}"],
        );
        assert_eq!(out, Some(labels(&[("a", "foo")])));
        let out = run(
            &[("a", "some-name-value")],
            &[
                "{source_labels: [a], regex: 'some-([^-]+)-([^,]+)', target_label: '${1}', replacement: '${2}'}",
            ],
        );
        assert_eq!(
            out,
            Some(labels(&[("a", "some-name-value"), ("name", "value")]))
        );
        // An invalid templated name leaves the set alone.
        let out = run(
            &[("a", "some-1name-value")],
            &[
                "{source_labels: [a], regex: 'some-([^-]+)-([^,]+)', target_label: '${1}', replacement: '${2}'}",
            ],
        );
        assert_eq!(out, Some(labels(&[("a", "some-1name-value")])));
    }

    #[test]
    fn keep_and_drop() {
        let input = [("a", "foo"), ("b", "bar")];
        assert!(
            run(
                &input,
                &["{source_labels: [a], regex: 'f.*', action: drop}"]
            )
            .is_none()
        );
        assert!(run(&input, &["{source_labels: [a], regex: 'f', action: drop}"]).is_some());
        assert!(
            run(
                &input,
                &["{source_labels: [a], regex: 'f.*', action: keep}"]
            )
            .is_some()
        );
        assert!(run(&input, &["{source_labels: [a], regex: 'f', action: keep}"]).is_none());
        // A missing source label is the empty string.
        assert!(run(&input, &["{source_labels: [z], regex: '', action: keep}"]).is_some());
    }

    #[test]
    fn hashmod_matches_prometheus() {
        // Prometheus: binary.BigEndian.Uint64(md5("baz")[8:]) % 1000 == 976.
        let out = run(
            &[("a", "foo"), ("b", "bar"), ("c", "baz")],
            &["{source_labels: [c], target_label: d, modulus: 1000, action: hashmod}"],
        );
        assert_eq!(out.unwrap()["d"], "976");
        let out = run(
            &[("a", "foo")],
            &["{source_labels: [a], target_label: d, modulus: 1000, action: hashmod}"],
        );
        assert_eq!(out.unwrap()["d"], "696");
        let out = run(
            &[("a", "foo")],
            &["{source_labels: [z], target_label: d, modulus: 1000, action: hashmod}"],
        );
        assert_eq!(out.unwrap()["d"], "958");
    }

    #[test]
    fn labelmap_labeldrop_labelkeep() {
        let input = [
            ("a", "foo"),
            ("__meta_my_bar", "aaa"),
            ("__meta_my_baz", "bbb"),
            ("__meta_other", "ccc"),
        ];
        let out = run(
            &input,
            &["{regex: '__meta_my_(.+)', action: labelmap, replacement: '${1}'}"],
        );
        assert_eq!(
            out,
            Some(labels(&[
                ("a", "foo"),
                ("__meta_my_bar", "aaa"),
                ("__meta_my_baz", "bbb"),
                ("__meta_other", "ccc"),
                ("bar", "aaa"),
                ("baz", "bbb"),
            ]))
        );
        let out = run(&input, &["{regex: '__meta_.*', action: labeldrop}"]);
        assert_eq!(out, Some(labels(&[("a", "foo")])));
        let out = run(&input, &["{regex: '__meta_my_.*', action: labelkeep}"]);
        assert_eq!(
            out,
            Some(labels(&[
                ("__meta_my_bar", "aaa"),
                ("__meta_my_baz", "bbb")
            ]))
        );
    }

    #[test]
    fn refusals() {
        let check = |yaml: &str| {
            let raw: RawRelabelConfig = serde_saphyr::from_str(yaml).unwrap();
            RelabelConfig::try_from(raw).unwrap_err().to_string()
        };
        assert!(
            check("{action: lowercase, target_label: a}").contains("unsupported relabel action")
        );
        assert!(check("{action: hashmod, target_label: a}").contains("modulus"));
        assert!(check("{action: replace, replacement: x}").contains("target_label"));
        assert!(check("{action: labeldrop, regex: a, target_label: b}").contains("only 'regex'"));
        assert!(check("{regex: '[', target_label: a}").contains("invalid regex"));
        assert!(check("{source_labels: ['1a'], target_label: a}").contains("source label"));
    }
}
