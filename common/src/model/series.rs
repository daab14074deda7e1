//! Series identity: metric name + label set, labels sorted by name and unique.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::validate::{Limits, ValidationError, validate_series_parts};

/// One label pair.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Label {
    pub name: String,
    pub value: String,
}

impl Label {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A time series' identity. The metric name is kept apart from the labels (it is the
/// `__name__` label in PromQL); `labels` is always sorted by name with no duplicates once built
/// through [`Series::new`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Series {
    pub name: String,
    pub labels: Vec<Label>,
}

impl Series {
    /// Builds a series, sorting the labels by name. Labels with an empty value are dropped (an
    /// empty value means "no such label" in Prometheus); if a name repeats, the last value wins.
    pub fn new<N, V>(name: impl Into<String>, labels: impl IntoIterator<Item = (N, V)>) -> Self
    where
        N: Into<String>,
        V: Into<String>,
    {
        let mut labels: Vec<Label> = labels
            .into_iter()
            .map(|(n, v)| Label::new(n, v))
            .filter(|l| !l.value.is_empty())
            .collect();
        // Stable sort keeps insertion order among equal names, so "last wins" below holds.
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        let mut deduped: Vec<Label> = Vec::with_capacity(labels.len());
        for label in labels {
            match deduped.last_mut() {
                Some(last) if last.name == label.name => *last = label,
                _ => deduped.push(label),
            }
        }
        Self {
            name: name.into(),
            labels: deduped,
        }
    }

    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|l| l.name.as_str().cmp(name))
            .ok()
            .map(|i| self.labels[i].value.as_str())
    }

    /// Checks the name and labels against Prometheus's rules and `limits`.
    pub fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        validate_series_parts(
            &self.name,
            self.labels
                .iter()
                .map(|l| (l.name.as_str(), l.value.as_str())),
            limits,
        )
    }
}

impl fmt::Display for Series {
    /// Prometheus's notation: `name{a="1",b="2"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.labels.is_empty() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, l) in self.labels.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}=\"", l.name)?;
            for c in l.value.chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '"' => f.write_str("\\\"")?,
                    '\n' => f.write_str("\\n")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\"")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_sorts_dedups_and_drops_empty_values() {
        let s = Series::new("up", [("b", "2"), ("a", "1"), ("c", ""), ("a", "3")]);
        assert_eq!(s.labels, vec![Label::new("a", "3"), Label::new("b", "2")]);
        assert_eq!(s.label("a"), Some("3"));
        assert_eq!(s.label("c"), None);
    }

    #[test]
    fn display_escapes_values() {
        let s = Series::new("m", [("x", "a\"b\\c\nd")]);
        assert_eq!(s.to_string(), r#"m{x="a\"b\\c\nd"}"#);
        assert_eq!(
            Series::new("m", Vec::<(&str, &str)>::new()).to_string(),
            "m"
        );
    }
}
