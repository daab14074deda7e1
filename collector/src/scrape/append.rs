//! What one scrape appends, as pure logic: the exposition's samples with the target's labels
//! (honor_labels or `exported_` renaming, as Prometheus), metric relabeling, the limits, the
//! report series (`up`, `scrape_duration_seconds`, ...) and staleness markers for series that
//! were in the previous scrape and are not in this one.
//!
//! A target serves the same series scrape after scrape, so what a scraped series becomes
//! (labels merged, relabeled, checked) is computed once and kept in the target's
//! [`SeriesCache`], keyed by the series as scraped, as Prometheus's scrape cache does; the cache
//! also knows which series the previous scrape had, for staleness.

use std::collections::HashMap;
use std::sync::Arc;

use sonde_common::exposition::Exposition;
use sonde_common::model::{Limits, MetricKind, Series};
use sonde_common::wire::{Batch, BatchBuilder, BatchHeader};
use thiserror::Error;

use super::config::ScrapeJob;
use super::target::Target;
use super::{LabelMap, relabel};

/// Prometheus's staleness marker: a NaN no computation produces.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Series per batch handed to the sink (well under the model's limit).
const MAX_SERIES_PER_BATCH: usize = 10_000;

#[derive(Debug, Error, PartialEq)]
pub enum AppendError {
    #[error("sample limit exceeded: {count} samples, limit {limit}")]
    SampleLimit { count: usize, limit: usize },
    #[error("label limit exceeded: a series has {count} labels, limit {limit}")]
    LabelLimit { count: usize, limit: usize },
    #[error("label name {name:?} is longer than the limit of {limit}")]
    LabelNameLength { name: String, limit: usize },
    #[error("a label value of {name:?} is longer than the limit of {limit}")]
    LabelValueLength { name: String, limit: usize },
    #[error("invalid series after relabeling: {0}")]
    Invalid(String),
}

impl AppendError {
    pub fn reason(&self) -> &'static str {
        match self {
            AppendError::SampleLimit { .. } => "sample_limit",
            AppendError::LabelLimit { .. } => "label_limit",
            AppendError::LabelNameLength { .. } => "label_name_length_limit",
            AppendError::LabelValueLength { .. } => "label_value_length_limit",
            AppendError::Invalid(_) => "invalid_series",
        }
    }
}

/// One sample to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub series: Arc<Series>,
    pub kind: MetricKind,
    pub timestamp_ms: i64,
    pub value: f64,
}

/// The samples of one exposition, labeled and relabeled, or why the scrape fails. `cache`
/// remembers what each scraped series became; call [`SeriesCache::scrape`] next with the
/// result.
pub fn samples(
    expo: &Exposition,
    target: &Target,
    job: &ScrapeJob,
    scrape_ms: i64,
    cache: &mut SeriesCache,
) -> Result<Vec<Point>, AppendError> {
    let limits = Limits::default();
    cache.current += 1;
    let current = cache.current;
    let mut out = Vec::with_capacity(expo.sample_count());
    for (family, s) in expo.samples() {
        let kind = family.kind();
        let series = match cache.entries.get_mut(&s.series) {
            Some(e) => {
                if e.seen == current {
                    continue; // a repeated series: the first sample wins
                }
                e.seen = current;
                e.kind = kind;
                e.out.clone()
            }
            None => {
                let out = final_series(&s.series, target, job, &limits)?.map(Arc::new);
                cache.entries.insert(
                    s.series.clone(),
                    Entry {
                        out: out.clone(),
                        kind,
                        seen: current,
                        written: 0,
                    },
                );
                out
            }
        };
        let Some(series) = series else {
            continue; // dropped by metric relabeling
        };
        let timestamp_ms = if job.honor_timestamps && s.has_timestamp {
            s.timestamp_ms
        } else {
            scrape_ms
        };
        out.push(Point {
            series,
            kind,
            timestamp_ms,
            value: s.value,
        });
    }
    if job.sample_limit > 0 && out.len() > job.sample_limit {
        return Err(AppendError::SampleLimit {
            count: out.len(),
            limit: job.sample_limit,
        });
    }
    Ok(out)
}

/// What a scraped series becomes: target labels merged, metric relabeling applied (`None`:
/// dropped), limits and names checked.
fn final_series(
    scraped: &Series,
    target: &Target,
    job: &ScrapeJob,
    limits: &Limits,
) -> Result<Option<Series>, AppendError> {
    let mut labels: LabelMap = scraped
        .labels
        .iter()
        .map(|l| (l.name.clone(), l.value.clone()))
        .collect();
    labels.insert("__name__".into(), scraped.name.clone());
    merge_target_labels(&mut labels, &target.labels, job.honor_labels);
    if !relabel::process(&mut labels, &job.metric_relabel_configs) {
        return Ok(None);
    }
    check_label_limits(&labels, job)?;
    let Some(name) = labels.remove("__name__") else {
        return Ok(None);
    };
    let series = Series::new(name, labels);
    series
        .validate(limits)
        .map_err(|e| AppendError::Invalid(e.to_string()))?;
    Ok(Some(series))
}

/// Target labels onto a scraped label set. On a conflict the target's value wins and the
/// scraped one moves to `exported_<name>` (repeating the prefix until free), unless
/// `honor_labels`, where the scraped value stays.
fn merge_target_labels(labels: &mut LabelMap, target: &LabelMap, honor: bool) {
    for (name, value) in target {
        match labels.get(name).filter(|v| !v.is_empty()).cloned() {
            None => {
                labels.insert(name.clone(), value.clone());
            }
            Some(_) if honor => {}
            Some(scraped) => {
                let mut exported = format!("exported_{name}");
                while labels.contains_key(&exported) {
                    exported = format!("exported_{exported}");
                }
                labels.insert(exported, scraped);
                labels.insert(name.clone(), value.clone());
            }
        }
    }
}

fn check_label_limits(labels: &LabelMap, job: &ScrapeJob) -> Result<(), AppendError> {
    if job.label_limit > 0 && labels.len() > job.label_limit {
        return Err(AppendError::LabelLimit {
            count: labels.len(),
            limit: job.label_limit,
        });
    }
    for (name, value) in labels {
        if job.label_name_length_limit > 0 && name.len() > job.label_name_length_limit {
            return Err(AppendError::LabelNameLength {
                name: name.clone(),
                limit: job.label_name_length_limit,
            });
        }
        if job.label_value_length_limit > 0 && value.len() > job.label_value_length_limit {
            return Err(AppendError::LabelValueLength {
                name: name.clone(),
                limit: job.label_value_length_limit,
            });
        }
    }
    Ok(())
}

/// Figures of one scrape for the report series.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Report {
    pub up: bool,
    pub duration_seconds: f64,
    pub scraped: usize,
    pub post_relabel: usize,
    pub added: usize,
}

const REPORT_NAMES: [&str; 5] = [
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// The report series of a target, with `value` per name.
fn report_points(target: &LabelMap, at_ms: i64, values: [f64; 5]) -> Vec<Point> {
    REPORT_NAMES
        .iter()
        .zip(values)
        .map(|(name, value)| Point {
            series: Arc::new(Series::new(*name, target.clone())),
            kind: MetricKind::Gauge,
            timestamp_ms: at_ms,
            value,
        })
        .collect()
}

/// A cached scraped series: what it became, and in which scrapes it was seen and written.
#[derive(Debug)]
struct Entry {
    /// `None`: dropped by metric relabeling.
    out: Option<Arc<Series>>,
    kind: MetricKind,
    /// The last scrape (attempt) that had it.
    seen: u64,
    /// The last successful scrape that wrote it.
    written: u64,
}

/// A target's scraped series, for the next scrape (their labels computed once) and for
/// staleness (which series the previous scrape wrote).
#[derive(Debug, Default)]
pub struct SeriesCache {
    entries: HashMap<Series, Entry, foldhash::fast::RandomState>,
    /// The scrape in progress (or last attempted).
    current: u64,
    /// The previous successful scrape (0: none, or it failed since).
    last_ok: u64,
}

impl SeriesCache {
    /// What one scrape appends: `result` (the samples, or the failure), the report series and
    /// stale markers at `scrape_ms` for series of the previous scrape that are gone (all of
    /// them when the scrape failed, as Prometheus does).
    pub fn scrape(
        &mut self,
        target: &LabelMap,
        scrape_ms: i64,
        duration_seconds: f64,
        scraped: usize,
        result: Option<Vec<Point>>,
    ) -> (Vec<Point>, Report) {
        let ok = result.is_some();
        let (current, last_ok) = (self.current, self.last_ok);
        let mut out = result.unwrap_or_default();
        let post_relabel = out.len();
        let mut added = 0;
        self.entries.retain(|_, e| {
            let here = ok && e.seen == current;
            if let Some(series) = &e.out {
                if here {
                    if last_ok == 0 || e.written != last_ok {
                        added += 1;
                    }
                } else if last_ok != 0 && e.written == last_ok {
                    out.push(stale(series.clone(), e.kind, scrape_ms));
                }
            }
            if here {
                e.written = current;
            }
            here
        });
        self.last_ok = if ok { current } else { 0 };
        let report = Report {
            up: ok,
            duration_seconds,
            scraped,
            post_relabel,
            added,
        };
        out.extend(report_points(
            target,
            scrape_ms,
            [
                if report.up { 1.0 } else { 0.0 },
                duration_seconds,
                scraped as f64,
                report.post_relabel as f64,
                added as f64,
            ],
        ));
        (out, report)
    }

    /// Stale markers for every series of the target, report series included: it is gone.
    pub fn end(&mut self, target: &LabelMap, at_ms: i64) -> Vec<Point> {
        let last_ok = self.last_ok;
        let mut out: Vec<Point> = self
            .entries
            .drain()
            .filter(|(_, e)| last_ok != 0 && e.written == last_ok)
            .filter_map(|(_, e)| e.out.map(|s| stale(s, e.kind, at_ms)))
            .collect();
        self.last_ok = 0;
        out.extend(report_points(
            target,
            at_ms,
            [f64::from_bits(STALE_NAN_BITS); 5],
        ));
        out
    }
}

fn stale(series: Arc<Series>, kind: MetricKind, at_ms: i64) -> Point {
    Point {
        series,
        kind,
        timestamp_ms: at_ms,
        value: f64::from_bits(STALE_NAN_BITS),
    }
}

/// Points into batches of at most [`MAX_SERIES_PER_BATCH`] series.
pub fn batches(points: Vec<Point>, agent_id: &str, sequence: &mut u64) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut builder: Option<BatchBuilder> = None;
    for p in points {
        let b = builder.get_or_insert_with(|| {
            *sequence += 1;
            BatchBuilder::new(BatchHeader {
                agent_id: agent_id.to_owned(),
                sequence: *sequence,
                sent_at_ms: sonde_common::model::now_ms(),
            })
        });
        b.push(
            &p.series,
            p.kind,
            None,
            vec![sonde_common::model::Sample::new(p.timestamp_ms, p.value)],
        );
        if b.series_count() >= MAX_SERIES_PER_BATCH
            && let Some(full) = builder.take()
        {
            out.push(full.build());
        }
    }
    if let Some(b) = builder {
        out.push(b.build());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::TargetGroup;
    use crate::scrape::config::parse;
    use crate::scrape::target::build;
    use sonde_common::exposition::{Format, ParseLimits, parse as parse_text};

    fn job(extra: &str) -> ScrapeJob {
        parse(
            "t.yml",
            &format!("scrape_configs:\n  - job_name: j\n{extra}"),
            None,
        )
        .unwrap()
        .jobs
        .remove(0)
    }

    fn target(j: &ScrapeJob) -> Target {
        let group = TargetGroup {
            source: "0".into(),
            targets: vec![LabelMap::from([("__address__".into(), "h:1".into())])],
            labels: LabelMap::new(),
        };
        build(j, &[group]).0.remove(0)
    }

    fn expo(text: &str) -> Exposition {
        parse_text(text, Format::PrometheusText, 1000, &ParseLimits::default()).unwrap()
    }

    #[test]
    fn labels_kinds_and_timestamps() {
        let j = job("");
        let t = target(&j);
        let e = expo("# TYPE c counter\nc_total{a=\"1\"} 5\n# TYPE g gauge\ng 2 777\n");
        let p = samples(&e, &t, &j, 5000, &mut SeriesCache::default()).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0].series.to_string(),
            Series::new("c_total", [("a", "1"), ("instance", "h:1"), ("job", "j")]).to_string()
        );
        assert_eq!(p[0].kind, MetricKind::Counter);
        assert_eq!(p[0].timestamp_ms, 5000);
        assert_eq!(p[1].kind, MetricKind::Gauge);
        assert_eq!(p[1].timestamp_ms, 777);
    }

    #[test]
    fn conflicts_exported_or_honored() {
        let e = expo("m{job=\"inner\",exported_job=\"x\"} 1\n");
        let j = job("");
        let p = samples(&e, &target(&j), &j, 0, &mut SeriesCache::default()).unwrap();
        assert_eq!(p[0].series.label("job"), Some("j"));
        assert_eq!(p[0].series.label("exported_job"), Some("x"));
        assert_eq!(p[0].series.label("exported_exported_job"), Some("inner"));
        let j = job("    honor_labels: true\n");
        let p = samples(&e, &target(&j), &j, 0, &mut SeriesCache::default()).unwrap();
        assert_eq!(p[0].series.label("job"), Some("inner"));
        assert_eq!(p[0].series.label("instance"), Some("h:1"));
    }

    #[test]
    fn metric_relabeling_and_limits() {
        let j = job(
            "    metric_relabel_configs:\n      - {source_labels: [__name__], regex: 'drop_.*', action: drop}\n    sample_limit: 2\n",
        );
        let t = target(&j);
        let p = samples(
            &expo("a 1\ndrop_me 2\nb 3\n"),
            &t,
            &j,
            0,
            &mut SeriesCache::default(),
        )
        .unwrap();
        assert_eq!(p.len(), 2);
        let err = samples(
            &expo("a 1\nb 2\nc 3\n"),
            &t,
            &j,
            0,
            &mut SeriesCache::default(),
        )
        .unwrap_err();
        assert_eq!(err, AppendError::SampleLimit { count: 3, limit: 2 });
        let j = job("    label_limit: 3\n");
        let err = samples(
            &expo("a{x=\"1\"} 1\n"),
            &target(&j),
            &j,
            0,
            &mut SeriesCache::default(),
        )
        .unwrap_err();
        assert_eq!(err.reason(), "label_limit");
    }

    #[test]
    fn staleness_and_report() {
        let j = job("");
        let t = target(&j);
        let mut cache = SeriesCache::default();
        let first = samples(&expo("a 1\nb 2\n"), &t, &j, 1000, &mut cache).unwrap();
        let (out, report) = cache.scrape(&t.labels, 1000, 0.1, 2, Some(first));
        assert_eq!(report.added, 2);
        assert_eq!(out.len(), 2 + 5);
        assert!(out.iter().any(|p| p.series.name == "up" && p.value == 1.0));
        let second = samples(&expo("a 1\n"), &t, &j, 2000, &mut cache).unwrap();
        let (out, report) = cache.scrape(&t.labels, 2000, 0.1, 1, Some(second));
        assert_eq!(report.added, 0);
        let stale: Vec<_> = out
            .iter()
            .filter(|p| p.value.to_bits() == STALE_NAN_BITS)
            .collect();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].series.name, "b");
        // A failed scrape: everything stale, up 0.
        let (out, report) = cache.scrape(&t.labels, 3000, 0.1, 0, None);
        assert!(!report.up);
        assert!(
            out.iter()
                .any(|p| p.series.name == "a" && p.value.to_bits() == STALE_NAN_BITS)
        );
        assert!(out.iter().any(|p| p.series.name == "up" && p.value == 0.0));
        let end = cache.end(&t.labels, 4000);
        assert_eq!(end.len(), 5);
        assert!(end.iter().all(|p| p.value.to_bits() == STALE_NAN_BITS));
    }

    #[test]
    fn batches_split_and_validate() {
        let points: Vec<Point> = (0..25_000)
            .map(|i| Point {
                series: Arc::new(Series::new("m", [("i", i.to_string())])),
                kind: MetricKind::Gauge,
                timestamp_ms: 1,
                value: 1.0,
            })
            .collect();
        let mut seq = 0;
        let b = batches(points, "scrape", &mut seq);
        assert_eq!(b.len(), 3);
        assert_eq!(seq, 3);
        for batch in &b {
            batch.validate(&Limits::default()).unwrap();
        }
    }
}
