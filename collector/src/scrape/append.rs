//! What one scrape appends, as pure logic: the exposition's samples with the target's labels
//! (honor_labels or `exported_` renaming, as Prometheus), metric relabeling, the limits, the
//! report series (`up`, `scrape_duration_seconds`, ...) and staleness markers for series that
//! were in the previous scrape and are not in this one.
//!
//! A target serves the same series scrape after scrape, so the work is done once per series,
//! not once per sample, in the target's [`SeriesCache`] (as Prometheus's scrape cache does):
//! - the exposition is read with [`exposition::scan`], and each sample's series text *as
//!   written* (`name{labels}`) is looked up; only a text not seen before is lexed, labeled,
//!   relabeled and checked, and gets a *slot* (two texts of one final series share it, so the
//!   first sample wins as before);
//! - a slot remembers in which scrapes it was seen and written, for staleness;
//! - the batch of a scrape whose slots come in the same order as the previous scrape's is that
//!   batch again with new samples ([`SeriesCache::batches`], [`SeriesCache::recycle`]): no
//!   strings are interned or series validated again.

use std::collections::HashMap;
use std::sync::Arc;

use sonde_common::exposition::{self, Format, ParseError, ParseLimits};
use sonde_common::model::{Limits, MetricKind, Sample, Series};
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
    #[error("{0}")]
    Parse(#[from] ParseError),
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
            AppendError::Parse(e) => e.reason(),
            AppendError::SampleLimit { .. } => "sample_limit",
            AppendError::LabelLimit { .. } => "label_limit",
            AppendError::LabelNameLength { .. } => "label_name_length_limit",
            AppendError::LabelValueLength { .. } => "label_value_length_limit",
            AppendError::Invalid(_) => "invalid_series",
        }
    }
}

/// One sample of a series the cache no longer holds: stale markers.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub series: Arc<Series>,
    pub kind: MetricKind,
    pub timestamp_ms: i64,
    pub value: f64,
}

/// One scraped sample: the slot of its series, timestamp and value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotSample {
    pub slot: u32,
    pub timestamp_ms: i64,
    pub value: f64,
}

/// The samples of one exposition, labeled and relabeled.
#[derive(Debug, Default)]
pub struct Scraped {
    pub samples: Vec<SlotSample>,
    /// Samples in the exposition (before metric relabeling).
    pub scraped: usize,
}

/// Reads a scraped body: its samples as slots of `cache` (lexing and labeling only series
/// texts the cache has not seen), or why the scrape fails, with the samples read until then.
/// Call [`SeriesCache::scrape`] next with the result.
pub fn samples(
    body: &[u8],
    format: Format,
    target: &Target,
    job: &ScrapeJob,
    scrape_ms: i64,
    cache: &mut SeriesCache,
) -> Result<Scraped, (AppendError, usize)> {
    let limits = Limits::default();
    cache.current += 1;
    cache.texts_seen = 0;
    let current = cache.current;
    let mut out = Vec::with_capacity(cache.slots.len());
    let mut read = 0usize;
    let scanned = exposition::scan_bytes(body, format, &ParseLimits::default(), |raw| {
        read += 1;
        let slot = match cache.by_text.get_mut(raw.series_text) {
            Some(known) => {
                if known.seen != current {
                    known.seen = current;
                    cache.texts_seen += 1;
                }
                known.slot
            }
            None => {
                let slot = cache.slot_for(&raw.series()?, target, job, &limits)?;
                cache.texts_seen += 1;
                cache.by_text.insert(
                    raw.series_text.into(),
                    Text {
                        slot,
                        seen: current,
                    },
                );
                slot
            }
        };
        let entry = &mut cache.slots[slot as usize];
        if entry.seen == current {
            return Ok(()); // a repeated series: the first sample wins
        }
        entry.seen = current;
        entry.kind = raw.metric_type.kind();
        if entry.out.is_none() {
            return Ok(()); // dropped by metric relabeling
        }
        let timestamp_ms = match raw.timestamp_ms {
            Some(t) if job.honor_timestamps => t,
            _ => scrape_ms,
        };
        out.push(SlotSample {
            slot,
            timestamp_ms,
            value: raw.value,
        });
        Ok::<(), AppendError>(())
    })
    .map_err(|e| (e, read))?;
    if job.sample_limit > 0 && out.len() > job.sample_limit {
        return Err((
            AppendError::SampleLimit {
                count: out.len(),
                limit: job.sample_limit,
            },
            scanned.samples,
        ));
    }
    Ok(Scraped {
        samples: out,
        scraped: scanned.samples,
    })
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

impl Report {
    /// The report series' values, in [`REPORT_NAMES`] order.
    fn values(&self) -> [f64; 5] {
        [
            if self.up { 1.0 } else { 0.0 },
            self.duration_seconds,
            self.scraped as f64,
            self.post_relabel as f64,
            self.added as f64,
        ]
    }
}

const REPORT_NAMES: [&str; 5] = [
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// What a scraped series became, and in which scrapes it was seen and written.
#[derive(Debug)]
struct Slot {
    /// `None`: dropped by metric relabeling.
    out: Option<Arc<Series>>,
    kind: MetricKind,
    /// The last scrape (attempt) that had it.
    seen: u64,
    /// The last successful scrape that wrote it.
    written: u64,
}

/// A series text as scraped: its slot, and the last scrape that had this text.
#[derive(Debug)]
struct Text {
    slot: u32,
    seen: u64,
}

/// The previous scrape's batch, kept to be filled again when the next scrape has the same
/// slots in the same order.
#[derive(Debug)]
struct Template {
    slots: Vec<u32>,
    batch: Batch,
}

/// What one scrape writes: its samples by slot, stale markers, and the report series' values.
#[derive(Debug, Default)]
pub struct Output {
    pub samples: Vec<SlotSample>,
    pub stale: Vec<Point>,
    pub report: [f64; 5],
    pub at_ms: i64,
}

/// A target's scraped series, for the next scrape (their labels computed once) and for
/// staleness (which series the previous scrape wrote).
#[derive(Debug)]
pub struct SeriesCache {
    by_text: HashMap<Box<str>, Text, foldhash::fast::RandomState>,
    /// Final series -> slot: two texts of one series share a slot.
    by_series: HashMap<Arc<Series>, u32, foldhash::fast::RandomState>,
    slots: Vec<Slot>,
    /// The target's report series, in [`REPORT_NAMES`] order.
    report: [Arc<Series>; 5],
    /// The scrape in progress (or last attempted).
    current: u64,
    /// The previous successful scrape (0: none, or it failed since).
    last_ok: u64,
    /// Distinct texts the current scrape has had so far.
    texts_seen: usize,
    template: Option<Template>,
    /// The slots of the batch [`SeriesCache::batches`] last built, if it may become the
    /// template.
    candidate: Option<Vec<u32>>,
}

impl SeriesCache {
    /// An empty cache for a target with these labels.
    pub fn new(target: &LabelMap) -> Self {
        Self {
            by_text: HashMap::default(),
            by_series: HashMap::default(),
            slots: Vec::new(),
            report: REPORT_NAMES.map(|name| Arc::new(Series::new(name, target.clone()))),
            current: 0,
            last_ok: 0,
            texts_seen: 0,
            template: None,
            candidate: None,
        }
    }

    /// The slot of a scraped series not seen as this text before.
    fn slot_for(
        &mut self,
        scraped: &Series,
        target: &Target,
        job: &ScrapeJob,
        limits: &Limits,
    ) -> Result<u32, AppendError> {
        let out = final_series(scraped, target, job, limits)?.map(Arc::new);
        if let Some(series) = &out
            && let Some(&slot) = self.by_series.get(series)
        {
            return Ok(slot);
        }
        let slot = self.slots.len() as u32;
        if let Some(series) = &out {
            self.by_series.insert(series.clone(), slot);
        }
        self.slots.push(Slot {
            out,
            kind: MetricKind::Unknown,
            seen: 0,
            written: 0,
        });
        Ok(slot)
    }

    /// What one scrape writes: `result` (the samples, or `None` for a failed scrape), the
    /// report series and stale markers at `scrape_ms` for series of the previous scrape that
    /// are gone (all of them when the scrape failed, as Prometheus does). Series not in this
    /// scrape leave the cache.
    pub fn scrape(
        &mut self,
        scrape_ms: i64,
        duration_seconds: f64,
        scraped: usize,
        result: Option<Vec<SlotSample>>,
    ) -> (Output, Report) {
        let ok = result.is_some();
        let (current, last_ok) = (self.current, self.last_ok);
        let mut samples = result.unwrap_or_default();
        let post_relabel = samples.len();
        let mut added = 0;
        let mut stale = Vec::new();
        let mut all_here = true;
        for slot in &mut self.slots {
            let here = ok && slot.seen == current;
            if let Some(series) = &slot.out {
                if here {
                    if last_ok == 0 || slot.written != last_ok {
                        added += 1;
                    }
                } else if last_ok != 0 && slot.written == last_ok {
                    stale.push(stale_point(series.clone(), slot.kind, scrape_ms));
                }
            }
            if here {
                slot.written = current;
            }
            all_here &= here;
        }
        if !all_here {
            self.evict(ok, current, &mut samples);
        } else if self.texts_seen < self.by_text.len() {
            // Every series is here, but some under another text than before.
            self.by_text.retain(|_, t| t.seen == current);
        }
        self.last_ok = if ok { current } else { 0 };
        let report = Report {
            up: ok,
            duration_seconds,
            scraped,
            post_relabel,
            added,
        };
        let output = Output {
            samples,
            stale,
            report: report.values(),
            at_ms: scrape_ms,
        };
        (output, report)
    }

    /// Drops the slots (and texts) not seen in scrape `current` (all of them when it failed),
    /// renumbering the rest and the slots in `samples`.
    fn evict(&mut self, ok: bool, current: u64, samples: &mut [SlotSample]) {
        let mut renumber = vec![u32::MAX; self.slots.len()];
        let mut kept = Vec::new();
        for (old, slot) in std::mem::take(&mut self.slots).into_iter().enumerate() {
            if ok && slot.seen == current {
                renumber[old] = kept.len() as u32;
                kept.push(slot);
            }
        }
        self.slots = kept;
        self.by_text.retain(|_, t| {
            t.slot = renumber[t.slot as usize];
            ok && t.seen == current && t.slot != u32::MAX
        });
        self.by_series.retain(|_, slot| {
            *slot = renumber[*slot as usize];
            *slot != u32::MAX
        });
        for s in samples {
            s.slot = renumber[s.slot as usize];
        }
        self.template = None;
    }

    /// Stale markers for every series of the target, report series included: it is gone.
    pub fn end(&mut self, at_ms: i64) -> Vec<Point> {
        let last_ok = self.last_ok;
        let mut out: Vec<Point> = self
            .slots
            .drain(..)
            .filter(|s| last_ok != 0 && s.written == last_ok)
            .filter_map(|s| s.out.map(|series| stale_point(series, s.kind, at_ms)))
            .collect();
        self.by_text.clear();
        self.by_series.clear();
        self.template = None;
        self.last_ok = 0;
        out.extend(
            self.report
                .iter()
                .map(|series| stale_point(series.clone(), MetricKind::Gauge, at_ms)),
        );
        out
    }

    /// The batches of one scrape's output. When it has the slots of the previous scrape's
    /// batch in the same order (and no stale markers), that batch comes back with the new
    /// samples and `true`: it was validated when it was built. Hand the batches back with
    /// [`SeriesCache::recycle`] once written.
    pub fn batches(
        &mut self,
        output: &Output,
        agent_id: &str,
        sequence: &mut u64,
    ) -> (Vec<Batch>, bool) {
        self.candidate = None;
        let header = |sequence: &mut u64| {
            *sequence += 1;
            BatchHeader {
                agent_id: agent_id.to_owned(),
                sequence: *sequence,
                sent_at_ms: sonde_common::model::now_ms(),
            }
        };
        let fits = output.stale.is_empty()
            && output.samples.len() + REPORT_NAMES.len() <= MAX_SERIES_PER_BATCH;
        if fits
            && let Some(mut template) = self.template.take()
            && self.refill(&mut template, output)
        {
            template.batch.header = header(sequence);
            self.candidate = Some(template.slots);
            return (vec![template.batch], true);
        }
        let mut points: Vec<Point> = Vec::with_capacity(output.samples.len() + 5);
        for s in &output.samples {
            let slot = &self.slots[s.slot as usize];
            if let Some(series) = &slot.out {
                points.push(Point {
                    series: series.clone(),
                    kind: slot.kind,
                    timestamp_ms: s.timestamp_ms,
                    value: s.value,
                });
            }
        }
        points.extend(output.stale.iter().cloned());
        points.extend(
            self.report
                .iter()
                .zip(output.report)
                .map(|(series, value)| Point {
                    series: series.clone(),
                    kind: MetricKind::Gauge,
                    timestamp_ms: output.at_ms,
                    value,
                }),
        );
        if fits {
            self.candidate = Some(output.samples.iter().map(|s| s.slot).collect());
        }
        (batches(points, agent_id, sequence), false)
    }

    /// Puts `output`'s samples into the template's batch, if it has the same series in the
    /// same order and of the same kinds.
    fn refill(&self, template: &mut Template, output: &Output) -> bool {
        let n = output.samples.len();
        let same = template.slots.len() == n
            && template.batch.series.len() == n + REPORT_NAMES.len()
            && output
                .samples
                .iter()
                .zip(&template.slots)
                .all(|(s, &t)| s.slot == t)
            && output
                .samples
                .iter()
                .zip(&template.batch.series)
                .all(|(s, b)| self.slots[s.slot as usize].kind == b.kind)
            && template.batch.series.iter().all(|b| b.samples.len() == 1);
        if !same {
            return false;
        }
        for (s, b) in output.samples.iter().zip(&mut template.batch.series) {
            b.samples[0] = Sample::new(s.timestamp_ms, s.value);
        }
        for (value, b) in output.report.iter().zip(&mut template.batch.series[n..]) {
            b.samples[0] = Sample::new(output.at_ms, *value);
        }
        true
    }

    /// Takes back the batches of [`SeriesCache::batches`] once written; a lone, valid batch
    /// of a scrape without stale markers becomes the template for the next scrape.
    pub fn recycle(&mut self, mut batches: Vec<Batch>, valid: bool) {
        if let Some(slots) = self.candidate.take()
            && valid
            && batches.len() == 1
            && let Some(batch) = batches.pop()
        {
            self.template = Some(Template { slots, batch });
        }
    }
}

fn stale_point(series: Arc<Series>, kind: MetricKind, at_ms: i64) -> Point {
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

    /// What a scrape of `text` at `at` writes, as the sink sees it: (series, kind, ts, value),
    /// with the report; and whether the batch was the previous one refilled.
    struct Written {
        points: Vec<(Series, MetricKind, i64, f64)>,
        report: Report,
        refilled: bool,
    }

    impl Written {
        fn value(&self, series: &str) -> Option<f64> {
            self.points
                .iter()
                .find(|p| p.0.to_string() == series)
                .map(|p| p.3)
        }
        fn stale(&self) -> Vec<String> {
            self.points
                .iter()
                .filter(|p| p.3.to_bits() == STALE_NAN_BITS)
                .map(|p| p.0.name.clone())
                .collect()
        }
    }

    fn scrape(
        cache: &mut SeriesCache,
        t: &Target,
        j: &ScrapeJob,
        text: Option<&str>,
        at: i64,
    ) -> Result<Written, AppendError> {
        let result = match text {
            Some(text) => Some(
                samples(text.as_bytes(), Format::PrometheusText, t, j, at, cache)
                    .map_err(|(e, _)| e)?,
            ),
            None => None,
        };
        let scraped = result.as_ref().map_or(0, |r| r.scraped);
        let (output, report) = cache.scrape(at, 0.1, scraped, result.map(|r| r.samples));
        let mut seq = 0;
        let (batches, refilled) = cache.batches(&output, "t", &mut seq);
        let mut points = Vec::new();
        for b in &batches {
            if !refilled {
                b.validate(&Limits::default()).unwrap();
            }
            for v in b.iter() {
                for s in v.samples() {
                    points.push((v.to_series(), v.kind(), s.timestamp_ms, s.value));
                }
            }
        }
        cache.recycle(batches, true);
        Ok(Written {
            points,
            report,
            refilled,
        })
    }

    #[test]
    fn labels_kinds_and_timestamps() {
        let j = job("");
        let t = target(&j);
        let text = "# TYPE c counter\nc_total{a=\"1\"} 5\n# TYPE g gauge\ng 2 777\n";
        let w = scrape(&mut SeriesCache::new(&t.labels), &t, &j, Some(text), 5000).unwrap();
        assert_eq!(w.points.len(), 2 + 5);
        let c = Series::new("c_total", [("a", "1"), ("instance", "h:1"), ("job", "j")]);
        assert_eq!(w.points[0], (c, MetricKind::Counter, 5000, 5.0));
        assert_eq!(w.points[1].1, MetricKind::Gauge);
        assert_eq!(w.points[1].2, 777);
        assert_eq!(w.value("up{instance=\"h:1\",job=\"j\"}"), Some(1.0));
    }

    #[test]
    fn conflicts_exported_or_honored() {
        let text = Some("m{job=\"inner\",exported_job=\"x\"} 1\n");
        let j = job("");
        let t = target(&j);
        let w = scrape(&mut SeriesCache::new(&t.labels), &t, &j, text, 0).unwrap();
        let m = &w.points[0].0;
        assert_eq!(m.label("job"), Some("j"));
        assert_eq!(m.label("exported_job"), Some("x"));
        assert_eq!(m.label("exported_exported_job"), Some("inner"));
        let j = job("    honor_labels: true\n");
        let t = target(&j);
        let w = scrape(&mut SeriesCache::new(&t.labels), &t, &j, text, 0).unwrap();
        assert_eq!(w.points[0].0.label("job"), Some("inner"));
        assert_eq!(w.points[0].0.label("instance"), Some("h:1"));
    }

    #[test]
    fn metric_relabeling_and_limits() {
        let j = job(
            "    metric_relabel_configs:\n      - {source_labels: [__name__], regex: 'drop_.*', action: drop}\n    sample_limit: 2\n",
        );
        let t = target(&j);
        let mut cache = SeriesCache::new(&t.labels);
        let w = scrape(&mut cache, &t, &j, Some("a 1\ndrop_me 2\nb 3\n"), 0).unwrap();
        assert_eq!(w.points.len(), 2 + 5);
        assert_eq!(w.report.scraped, 3);
        assert_eq!(w.report.post_relabel, 2);
        // The dropped series is cached as dropped: the next scrape drops it again.
        let w = scrape(&mut cache, &t, &j, Some("a 1\ndrop_me 2\nb 4\n"), 1).unwrap();
        assert_eq!(w.points.len(), 2 + 5);
        assert!(w.refilled);
        let mut cache = SeriesCache::new(&t.labels);
        let err = scrape(&mut cache, &t, &j, Some("a 1\nb 2\nc 3\n"), 0)
            .err()
            .unwrap();
        assert_eq!(err, AppendError::SampleLimit { count: 3, limit: 2 });
        let j = job("    label_limit: 3\n");
        let t = target(&j);
        let err = scrape(
            &mut SeriesCache::new(&t.labels),
            &t,
            &j,
            Some("a{x=\"1\"} 1\n"),
            0,
        )
        .err()
        .unwrap();
        assert_eq!(err.reason(), "label_limit");
    }

    #[test]
    fn bad_lines_fail_the_scrape_even_when_cached() {
        let j = job("");
        let t = target(&j);
        let mut cache = SeriesCache::new(&t.labels);
        scrape(&mut cache, &t, &j, Some("m{a=\"1\"} 1\n"), 0).unwrap();
        // The series text is cached; a broken value or a broken neighbour still fails.
        for text in [
            "m{a=\"1\"} x\n",
            "m{a=\"1\"} 1\nm{a=\"1\",a=\"2\"} 1\n",
            "m{a=\"1\"} 1 2 3\n",
        ] {
            let err = scrape(&mut cache, &t, &j, Some(text), 1).err().unwrap();
            assert!(matches!(err, AppendError::Parse(_)), "{text}: {err:?}");
        }
    }

    #[test]
    fn texts_of_one_series_share_a_slot_and_the_first_wins() {
        let j = job("");
        let t = target(&j);
        let mut cache = SeriesCache::new(&t.labels);
        let text = "m{a=\"1\",b=\"2\"} 1\nm{b=\"2\",a=\"1\"} 2\nm{ a=\"1\", b=\"2\" } 3\n";
        let w = scrape(&mut cache, &t, &j, Some(text), 0).unwrap();
        assert_eq!(w.points.len(), 1 + 5);
        assert_eq!(w.points[0].3, 1.0);
        assert_eq!(w.report.added, 1);
        assert_eq!(cache.slots.len(), 1);
        assert_eq!(cache.by_text.len(), 3);
        // Only the second text now: same series, no staleness, nothing added.
        let w = scrape(&mut cache, &t, &j, Some("m{b=\"2\",a=\"1\"} 7\n"), 1000).unwrap();
        assert_eq!(w.points[0].3, 7.0);
        assert!(w.stale().is_empty());
        assert_eq!(w.report.added, 0);
        assert_eq!(cache.by_text.len(), 1);
    }

    #[test]
    fn the_same_series_in_the_same_order_refill_the_previous_batch() {
        let j = job("");
        let t = target(&j);
        let mut cache = SeriesCache::new(&t.labels);
        let first = scrape(&mut cache, &t, &j, Some("a 1\nb 2\n"), 1000).unwrap();
        assert!(!first.refilled);
        let second = scrape(&mut cache, &t, &j, Some("a 3\nb 4\n"), 2000).unwrap();
        assert!(second.refilled);
        assert_eq!(second.points.len(), first.points.len());
        assert_eq!(second.value("a{instance=\"h:1\",job=\"j\"}"), Some(3.0));
        assert_eq!(second.value("b{instance=\"h:1\",job=\"j\"}"), Some(4.0));
        assert!(second.points.iter().all(|p| p.2 == 2000));
        assert_eq!(second.report.added, 0);
        let scraped = "scrape_samples_scraped{instance=\"h:1\",job=\"j\"}";
        assert_eq!(second.value(scraped), Some(2.0));
        // Another order, a new series, a change of kind: built anew, and right.
        let w = scrape(&mut cache, &t, &j, Some("b 5\na 6\n"), 3000).unwrap();
        assert!(!w.refilled);
        assert_eq!(w.value("a{instance=\"h:1\",job=\"j\"}"), Some(6.0));
        let w = scrape(&mut cache, &t, &j, Some("b 5\na 6\nc 7\n"), 4000).unwrap();
        assert!(!w.refilled);
        assert_eq!(w.value("c{instance=\"h:1\",job=\"j\"}"), Some(7.0));
        let w = scrape(
            &mut cache,
            &t,
            &j,
            Some("# TYPE b counter\nb 5\na 6\nc 7\n"),
            5000,
        )
        .unwrap();
        assert!(!w.refilled);
        assert_eq!(w.points[0].1, MetricKind::Counter);
        let w = scrape(
            &mut cache,
            &t,
            &j,
            Some("# TYPE b counter\nb 8\na 6\nc 7\n"),
            6000,
        )
        .unwrap();
        assert!(w.refilled);
        assert_eq!(
            w.points[0],
            (
                Series::new("b", [("instance", "h:1"), ("job", "j")]),
                MetricKind::Counter,
                6000,
                8.0
            )
        );
    }

    #[test]
    fn staleness_and_report() {
        let j = job("");
        let t = target(&j);
        let mut cache = SeriesCache::new(&t.labels);
        let w = scrape(&mut cache, &t, &j, Some("a 1\nb 2\n"), 1000).unwrap();
        assert_eq!(w.report.added, 2);
        assert_eq!(w.points.len(), 2 + 5);
        let w = scrape(&mut cache, &t, &j, Some("a 1\n"), 2000).unwrap();
        assert_eq!(w.report.added, 0);
        assert_eq!(w.stale(), ["b"]);
        // The evicted series comes back: added again, and the batch is built anew.
        let w = scrape(&mut cache, &t, &j, Some("a 1\nb 3\n"), 3000).unwrap();
        assert_eq!(w.report.added, 1);
        assert!(!w.refilled);
        assert_eq!(w.value("b{instance=\"h:1\",job=\"j\"}"), Some(3.0));
        // A failed scrape: everything stale, up 0.
        let w = scrape(&mut cache, &t, &j, None, 4000).unwrap();
        assert!(!w.report.up);
        assert_eq!(w.stale(), ["a", "b"]);
        assert_eq!(w.value("up{instance=\"h:1\",job=\"j\"}"), Some(0.0));
        assert!(cache.slots.is_empty() && cache.by_text.is_empty());
        let w = scrape(&mut cache, &t, &j, Some("a 1\n"), 5000).unwrap();
        assert_eq!(w.report.added, 1);
        let end = cache.end(6000);
        assert_eq!(end.len(), 1 + 5);
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
