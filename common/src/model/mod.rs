//! The data model: a time series is a metric name plus a sorted, unique label set; a sample is a
//! millisecond timestamp and an `f64` value. Names follow Prometheus's rules; [`validate`] says
//! precisely what is wrong with a name, a label or a batch, and [`Limits`] bounds everything an
//! untrusted sender controls.

mod series;
pub(crate) mod validate;

pub use series::{Label, Series};
pub use validate::{
    Limits, ValidationError, is_valid_label_name, is_valid_metric_name, validate_label_name,
    validate_metric_name,
};

use serde::{Deserialize, Serialize};

/// One observation of a series: collection time in milliseconds since the Unix epoch, and value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub timestamp_ms: i64,
    pub value: f64,
}

impl Sample {
    pub fn new(timestamp_ms: i64, value: f64) -> Self {
        Self {
            timestamp_ms,
            value,
        }
    }
}

/// What a series measures, which decides how it may be aggregated and queried.
///
/// Histograms and summaries travel as their component series (`_bucket{le=..}`, `_sum`,
/// `_count`, or `{quantile=..}`), each tagged with the family's kind, as in Prometheus.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MetricKind {
    #[default]
    Unknown,
    /// Cumulative and monotonic; a decrease is a reset.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Cumulative buckets plus sum and count.
    Histogram,
    /// Quantiles plus sum and count.
    Summary,
}

impl MetricKind {
    /// The name Prometheus's text format and metadata API use.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Unknown => "unknown",
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
            MetricKind::Summary => "summary",
        }
    }
}

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
