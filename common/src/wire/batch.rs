//! The batch: what one agent sends in one push, with a per-batch string table so each metric
//! name and label string travels once.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::model::{Label, Limits, MetricKind, Sample, Series, ValidationError};

/// Who sent a batch, and which one it is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchHeader {
    /// Stable identity of the sending agent (host name by default).
    pub agent_id: String,
    /// Increases by one per batch an agent cuts; a retry repeats the number.
    pub sequence: u64,
    /// When the batch was first sent, in ms since the epoch.
    pub sent_at_ms: i64,
}

/// One series of a batch. Strings are indices into [`Batch::strings`]; labels are sorted by
/// name and unique (checked by [`Batch::validate`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchSeries {
    pub kind: MetricKind,
    pub name: u32,
    pub labels: Vec<(u32, u32)>,
    /// For counters: when the running total started (a later start is a reset).
    pub start_ms: Option<i64>,
    pub samples: Vec<Sample>,
}

/// A decoded (or to-be-encoded) batch.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub header: BatchHeader,
    pub strings: Vec<String>,
    pub series: Vec<BatchSeries>,
}

/// A borrowed view of one series of a batch, with its strings resolved.
#[derive(Clone, Copy, Debug)]
pub struct SeriesView<'a> {
    batch: &'a Batch,
    entry: &'a BatchSeries,
}

impl<'a> SeriesView<'a> {
    pub fn name(&self) -> &'a str {
        self.batch.string(self.entry.name)
    }
    pub fn labels(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a str)> + 'a {
        let batch = self.batch;
        self.entry
            .labels
            .iter()
            .map(move |&(n, v)| (batch.string(n), batch.string(v)))
    }
    pub fn kind(&self) -> MetricKind {
        self.entry.kind
    }
    pub fn start_ms(&self) -> Option<i64> {
        self.entry.start_ms
    }
    pub fn samples(&self) -> &'a [Sample] {
        &self.entry.samples
    }
    /// An owned copy of the series identity.
    pub fn to_series(&self) -> Series {
        Series {
            name: self.name().to_owned(),
            labels: self.labels().map(|(n, v)| Label::new(n, v)).collect(),
        }
    }
}

impl Batch {
    /// The string at `index`; empty for an index out of range (which [`Batch::validate`]
    /// rejects before anyone reads a decoded batch).
    fn string(&self, index: u32) -> &str {
        self.strings.get(index as usize).map_or("", String::as_str)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = SeriesView<'_>> {
        self.series
            .iter()
            .map(move |entry| SeriesView { batch: self, entry })
    }

    pub fn sample_count(&self) -> usize {
        self.series.iter().map(|s| s.samples.len()).sum()
    }

    /// Checks every index, name, label and count: a batch that passes can be stored as is.
    pub fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        self.validate_counts(limits)?;
        let len = self.strings.len();
        let check = |index: u32| {
            if (index as usize) < len {
                Ok(())
            } else {
                Err(ValidationError::BadStringIndex { index, len })
            }
        };
        for entry in &self.series {
            check(entry.name)?;
            for &(n, v) in &entry.labels {
                check(n)?;
                check(v)?;
            }
        }
        for view in self.iter() {
            crate::model::validate::validate_series_parts(view.name(), view.labels(), limits)?;
        }
        self.validate_samples_present()
    }

    /// [`Batch::validate`] for a batch whose strings and series' indices are those of a batch
    /// that passed it under the same limits: only the counts and the samples are checked.
    pub fn validate_known(&self, limits: &Limits) -> Result<(), ValidationError> {
        self.validate_counts(limits)?;
        self.validate_samples_present()
    }

    fn validate_counts(&self, limits: &Limits) -> Result<(), ValidationError> {
        if self.series.len() > limits.max_series_per_batch {
            return Err(ValidationError::TooManySeries {
                count: self.series.len(),
                max: limits.max_series_per_batch,
            });
        }
        let samples = self.sample_count();
        if samples > limits.max_samples_per_batch {
            return Err(ValidationError::TooManySamples {
                count: samples,
                max: limits.max_samples_per_batch,
            });
        }
        Ok(())
    }

    fn validate_samples_present(&self) -> Result<(), ValidationError> {
        if let Some(view) = self.iter().find(|v| v.samples().is_empty()) {
            return Err(ValidationError::NoSamples {
                series: view.to_series().to_string(),
            });
        }
        Ok(())
    }
}

/// Builds a batch, interning each distinct string once.
#[derive(Debug)]
pub struct BatchBuilder {
    header: BatchHeader,
    strings: Vec<String>,
    index: HashMap<String, u32>,
    series: Vec<BatchSeries>,
    samples: usize,
}

impl BatchBuilder {
    pub fn new(header: BatchHeader) -> Self {
        Self {
            header,
            strings: Vec::new(),
            index: HashMap::new(),
            series: Vec::new(),
            samples: 0,
        }
    }

    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.strings.len() as u32;
        self.strings.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }

    /// Adds a series with its samples. `series.labels` must be sorted and unique, as
    /// [`Series::new`] makes them.
    pub fn push(
        &mut self,
        series: &Series,
        kind: MetricKind,
        start_ms: Option<i64>,
        samples: Vec<Sample>,
    ) {
        let name = self.intern(&series.name);
        let labels = series
            .labels
            .iter()
            .map(|l| (self.intern(&l.name), self.intern(&l.value)))
            .collect();
        self.samples += samples.len();
        self.series.push(BatchSeries {
            kind,
            name,
            labels,
            start_ms,
            samples,
        });
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    pub fn sample_count(&self) -> usize {
        self.samples
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    pub fn build(self) -> Batch {
        Batch {
            header: self.header,
            strings: self.strings,
            series: self.series,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> BatchHeader {
        BatchHeader {
            agent_id: "h1".into(),
            sequence: 7,
            sent_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn builder_interns_strings_once() {
        let mut b = BatchBuilder::new(header());
        for cpu in ["0", "1"] {
            let s = Series::new("node_cpu_seconds_total", [("cpu", cpu), ("host", "h1")]);
            b.push(&s, MetricKind::Counter, Some(1), vec![Sample::new(10, 1.5)]);
        }
        let batch = b.build();
        // name, "cpu", "0", "host", "h1", "1"
        assert_eq!(batch.strings.len(), 6);
        let views: Vec<_> = batch.iter().map(|v| v.to_series().to_string()).collect();
        assert_eq!(
            views,
            [
                r#"node_cpu_seconds_total{cpu="0",host="h1"}"#,
                r#"node_cpu_seconds_total{cpu="1",host="h1"}"#
            ]
        );
        batch.validate(&Limits::default()).unwrap();
    }

    #[test]
    fn validate_rejects_bad_indices_and_counts() {
        let mut b = BatchBuilder::new(header());
        b.push(
            &Series::new("m", [("a", "1")]),
            MetricKind::Gauge,
            None,
            vec![Sample::new(1, 1.0)],
        );
        let mut batch = b.build();
        batch.series[0].labels[0].1 = 99;
        assert_eq!(
            batch.validate(&Limits::default()).unwrap_err(),
            ValidationError::BadStringIndex { index: 99, len: 3 }
        );
        batch.series[0].labels[0].1 = 2;
        let limits = Limits {
            max_samples_per_batch: 0,
            ..Limits::default()
        };
        assert_eq!(
            batch.validate(&limits).unwrap_err().reason(),
            "too_many_samples"
        );
        batch.series[0].samples.clear();
        assert_eq!(
            batch.validate(&Limits::default()).unwrap_err().reason(),
            "no_samples"
        );
    }
}
