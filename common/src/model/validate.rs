//! Validation rules and the limits that bound what an untrusted sender controls.
//!
//! Errors name the offending series and say what the rule is, so a 400 reply is actionable.

use thiserror::Error;

/// Configurable bounds, with defaults that suit host and application metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Labels per series, not counting the metric name.
    pub max_labels_per_series: usize,
    /// Bytes in a metric name or a label name.
    pub max_name_len: usize,
    /// Bytes in a label value.
    pub max_label_value_len: usize,
    /// Series in one batch.
    pub max_series_per_batch: usize,
    /// Samples in one batch, over all its series.
    pub max_samples_per_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_labels_per_series: 32,
            max_name_len: 256,
            max_label_value_len: 2048,
            max_series_per_batch: 100_000,
            max_samples_per_batch: 1_000_000,
        }
    }
}

pub const METRIC_NAME_RULE: &str = "[a-zA-Z_:][a-zA-Z0-9_:]*";
pub const LABEL_NAME_RULE: &str = "[a-zA-Z_][a-zA-Z0-9_]*";

/// Why a series or batch was refused. Every variant names what it refers to.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    #[error("metric name '{name}' is invalid: must match {METRIC_NAME_RULE}")]
    InvalidMetricName { name: String },
    #[error("metric name '{name}…' is {len} bytes long, more than the limit of {max}")]
    MetricNameTooLong {
        name: String,
        len: usize,
        max: usize,
    },
    #[error("label name '{label}' in series '{series}' is invalid: must match {LABEL_NAME_RULE}")]
    InvalidLabelName { series: String, label: String },
    #[error(
        "label name '{label}' in series '{series}' is reserved: names starting with '__' are internal"
    )]
    ReservedLabelName { series: String, label: String },
    #[error(
        "label name '{label}…' in series '{series}' is {len} bytes long, more than the limit of {max}"
    )]
    LabelNameTooLong {
        series: String,
        label: String,
        len: usize,
        max: usize,
    },
    #[error(
        "label '{label}' in series '{series}' has a {len}-byte value, more than the limit of {max}"
    )]
    LabelValueTooLong {
        series: String,
        label: String,
        len: usize,
        max: usize,
    },
    #[error("label '{label}' in series '{series}' has an empty value")]
    EmptyLabelValue { series: String, label: String },
    #[error(
        "labels of series '{series}' are not sorted and unique ('{label}' is out of order or repeated)"
    )]
    UnsortedLabels { series: String, label: String },
    #[error("series '{series}' has {count} labels, more than the limit of {max}")]
    TooManyLabels {
        series: String,
        count: usize,
        max: usize,
    },
    #[error("batch has {count} series, more than the limit of {max}")]
    TooManySeries { count: usize, max: usize },
    #[error("batch has {count} samples, more than the limit of {max}")]
    TooManySamples { count: usize, max: usize },
    #[error("series '{series}' has no samples")]
    NoSamples { series: String },
    #[error("string index {index} is out of range: the batch's string table has {len} entries")]
    BadStringIndex { index: u32, len: usize },
}

impl ValidationError {
    /// A short stable name for the `reason` label of rejection counters.
    pub fn reason(&self) -> &'static str {
        match self {
            ValidationError::InvalidMetricName { .. } => "invalid_metric_name",
            ValidationError::MetricNameTooLong { .. } => "name_too_long",
            ValidationError::InvalidLabelName { .. } => "invalid_label_name",
            ValidationError::ReservedLabelName { .. } => "reserved_label_name",
            ValidationError::LabelNameTooLong { .. } => "name_too_long",
            ValidationError::LabelValueTooLong { .. } => "label_value_too_long",
            ValidationError::EmptyLabelValue { .. } => "empty_label_value",
            ValidationError::UnsortedLabels { .. } => "unsorted_labels",
            ValidationError::TooManyLabels { .. } => "too_many_labels",
            ValidationError::TooManySeries { .. } => "too_many_series",
            ValidationError::TooManySamples { .. } => "too_many_samples",
            ValidationError::NoSamples { .. } => "no_samples",
            ValidationError::BadStringIndex { .. } => "bad_string_index",
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn is_valid_metric_name(name: &str) -> bool {
    let b = name.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' || *c == b':' => {}
        _ => return false,
    }
    b[1..]
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
pub fn is_valid_label_name(name: &str) -> bool {
    let b = name.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {}
        _ => return false,
    }
    b[1..]
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Truncates a possibly huge, attacker-chosen string for an error message.
fn excerpt(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

pub fn validate_metric_name(name: &str, limits: &Limits) -> Result<(), ValidationError> {
    if name.len() > limits.max_name_len {
        return Err(ValidationError::MetricNameTooLong {
            name: excerpt(name),
            len: name.len(),
            max: limits.max_name_len,
        });
    }
    if !is_valid_metric_name(name) {
        return Err(ValidationError::InvalidMetricName {
            name: excerpt(name),
        });
    }
    Ok(())
}

pub fn validate_label_name(
    series: &str,
    label: &str,
    limits: &Limits,
) -> Result<(), ValidationError> {
    if label.len() > limits.max_name_len {
        return Err(ValidationError::LabelNameTooLong {
            series: excerpt(series),
            label: excerpt(label),
            len: label.len(),
            max: limits.max_name_len,
        });
    }
    if !is_valid_label_name(label) {
        return Err(ValidationError::InvalidLabelName {
            series: excerpt(series),
            label: excerpt(label),
        });
    }
    if label.starts_with("__") {
        return Err(ValidationError::ReservedLabelName {
            series: excerpt(series),
            label: excerpt(label),
        });
    }
    Ok(())
}

/// Validates a series given as its parts, so callers holding borrowed strings (a decoded
/// batch's string table) need not build a [`super::Series`] first.
pub(crate) fn validate_series_parts<'a>(
    name: &str,
    labels: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    limits: &Limits,
) -> Result<(), ValidationError> {
    validate_metric_name(name, limits)?;
    if labels.len() > limits.max_labels_per_series {
        return Err(ValidationError::TooManyLabels {
            series: excerpt(name),
            count: labels.len(),
            max: limits.max_labels_per_series,
        });
    }
    let mut previous: Option<&str> = None;
    for (label, value) in labels {
        validate_label_name(name, label, limits)?;
        if previous.is_some_and(|p| p >= label) {
            return Err(ValidationError::UnsortedLabels {
                series: excerpt(name),
                label: excerpt(label),
            });
        }
        previous = Some(label);
        if value.is_empty() {
            return Err(ValidationError::EmptyLabelValue {
                series: excerpt(name),
                label: excerpt(label),
            });
        }
        if value.len() > limits.max_label_value_len {
            return Err(ValidationError::LabelValueTooLong {
                series: excerpt(name),
                label: excerpt(label),
                len: value.len(),
                max: limits.max_label_value_len,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Series;

    #[test]
    fn metric_and_label_name_rules() {
        for ok in ["a", "_x", "node:cpu:rate5m", "A9_"] {
            assert!(is_valid_metric_name(ok), "{ok}");
        }
        for bad in ["", "9a", "a-b", "é", "a b"] {
            assert!(!is_valid_metric_name(bad), "{bad}");
        }
        assert!(is_valid_label_name("_a1"));
        assert!(!is_valid_label_name("a:b"));
        assert!(!is_valid_label_name("1x"));
    }

    #[test]
    fn errors_name_the_series_and_the_rule() {
        let limits = Limits::default();
        let s = Series::new("cpu_seconds_total", [("1x", "v")]);
        let err = s.validate(&limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "label name '1x' in series 'cpu_seconds_total' is invalid: must match [a-zA-Z_][a-zA-Z0-9_]*"
        );
        assert_eq!(err.reason(), "invalid_label_name");

        let s = Series::new("m", [("__name__", "x")]);
        assert!(matches!(
            s.validate(&limits),
            Err(ValidationError::ReservedLabelName { .. })
        ));
    }

    #[test]
    fn limits_are_enforced() {
        let limits = Limits {
            max_labels_per_series: 2,
            max_label_value_len: 4,
            ..Limits::default()
        };
        let s = Series::new("m", [("a", "1"), ("b", "2"), ("c", "3")]);
        assert!(matches!(
            s.validate(&limits),
            Err(ValidationError::TooManyLabels {
                count: 3,
                max: 2,
                ..
            })
        ));
        let s = Series::new("m", [("a", "12345")]);
        assert!(matches!(
            s.validate(&limits),
            Err(ValidationError::LabelValueTooLong { len: 5, max: 4, .. })
        ));
        let long = "x".repeat(300);
        let err = validate_metric_name(&long, &limits).unwrap_err();
        assert!(
            err.to_string().len() < 200,
            "error message must not echo huge input"
        );
    }

    #[test]
    fn unsorted_or_repeated_labels_are_rejected() {
        let limits = Limits::default();
        let labels = [("b", "1"), ("a", "2")];
        let err = validate_series_parts("m", labels.into_iter(), &limits).unwrap_err();
        assert_eq!(err.reason(), "unsorted_labels");
        let labels = [("a", "1"), ("a", "2")];
        let err = validate_series_parts("m", labels.into_iter(), &limits).unwrap_err();
        assert_eq!(err.reason(), "unsorted_labels");
    }
}
