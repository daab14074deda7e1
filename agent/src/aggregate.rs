//! Aggregate: StatsD lines in, one sample per series per flush out.
//!
//! - counters: increments (scaled by `1/rate`) summed into a cumulative total that lives as long
//!   as the series; each carries its start time, so an agent restart or an eviction is a visible
//!   reset and `increase()` over the stored series equals the increments sent;
//! - gauges: the last value (`+`/`-` deltas apply to it);
//! - timers (ms) and histograms: cumulative buckets plus sum and count (timers converted to
//!   seconds);
//! - sets: the number of distinct members seen during the flush interval.
//!
//! Names follow statsd_exporter: characters outside `[a-zA-Z0-9_:]` become `_` (`api.requests`
//! -> `api_requests`), a leading digit gets a `_` prefix, counters get `_total`, timers
//! `_seconds`. Tags become labels; `host` is added unless a tag sets it.
//!
//! Memory is bounded: a new series beyond `max_series` is refused (never merged into another,
//! which would corrupt counters) and counted; series idle for `idle_timeout` are evicted at
//! flush. The hot path (an existing series) allocates nothing.

use sonde_common::model::{MetricKind, Series};
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::time::Duration;

use crate::batch::Point;
use crate::sources::statsd::parser::{self, Kind, Line, Value};

/// Prometheus's default histogram buckets (seconds for timers).
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug)]
pub struct AggregateConfig {
    pub hostname: String,
    pub max_series: usize,
    pub idle_timeout: Duration,
    /// Upper bounds for timers (in seconds) and histograms, ascending; +Inf is implicit.
    pub buckets: Vec<f64>,
}

/// Why a line was not recorded (beyond parse errors): the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Parse(parser::BadLine),
    /// New series beyond `max_series`.
    CardinalityLimit,
    /// The same series already exists with another type.
    TypeConflict,
    /// A tag's name is reserved (`__`) or its value too long.
    BadTag,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Parse(b) => b.reason(),
            Refused::CardinalityLimit => "cardinality_limit",
            Refused::TypeConflict => "type_conflict",
            Refused::BadTag => "bad_tag",
        }
    }
}

const MAX_TAG_VALUE: usize = 1024;

#[derive(Debug)]
enum State {
    Counter(f64),
    Gauge(f64),
    Histogram {
        buckets: Vec<f64>,
        sum: f64,
        count: f64,
        series: Box<HistogramSeries>,
    },
    Set(HashSet<u64>),
}

/// The series a histogram emits, built once.
#[derive(Debug)]
struct HistogramSeries {
    buckets: Vec<Series>,
    sum: Series,
    count: Series,
}

#[derive(Debug)]
struct Entry {
    series: Series,
    kind: Kind,
    start_ms: i64,
    last_update_ms: i64,
    state: State,
}

pub struct Aggregator {
    cfg: AggregateConfig,
    entries: HashMap<String, Entry>,
    /// Reused for each line's key, so a known series costs no allocation.
    key: String,
    tags: Vec<(String, String)>,
    hasher: std::collections::hash_map::RandomState,
}

/// statsd_exporter's escaping: outside `[a-zA-Z0-9_:]` -> `_`; a leading digit gets `_`.
fn push_metric_name(out: &mut String, name: &str) {
    if name.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        out.push('_');
    }
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            c
        } else {
            '_'
        }
    }));
}

fn push_label_name(out: &mut String, name: &str) {
    if name.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        out.push('_');
    }
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
}

impl Aggregator {
    pub fn new(cfg: AggregateConfig) -> Self {
        let mut buckets = cfg.buckets.clone();
        buckets.retain(|b| b.is_finite());
        buckets.sort_by(f64::total_cmp);
        buckets.dedup();
        Self {
            cfg: AggregateConfig { buckets, ..cfg },
            entries: HashMap::new(),
            key: String::new(),
            tags: Vec::new(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    pub fn series_count(&self) -> usize {
        self.entries.len()
    }

    /// Records one parsed line observed at `now_ms`.
    pub fn record(&mut self, line: &Line<'_>, now_ms: i64) -> Result<(), Refused> {
        // Key: final name, kind, then sorted label pairs, separated by NUL (not in names).
        self.key.clear();
        push_metric_name(&mut self.key, line.name);
        match line.kind {
            Kind::Counter if !self.key.ends_with("_total") => self.key.push_str("_total"),
            Kind::Timer if !self.key.ends_with("_seconds") => self.key.push_str("_seconds"),
            _ => {}
        }
        let name_len = self.key.len();
        self.key.push('\0');
        // Reuse the tag buffers' Strings across calls.
        let mut n = 0;
        let mut has_host = false;
        for (k, v) in parser::tags(line.tags) {
            if v.is_empty() {
                continue;
            }
            if v.len() > MAX_TAG_VALUE || k.starts_with("__") || k.is_empty() {
                return Err(Refused::BadTag);
            }
            if self.tags.len() <= n {
                self.tags.push((String::new(), String::new()));
            }
            let (kb, vb) = &mut self.tags[n];
            kb.clear();
            push_label_name(kb, k);
            vb.clear();
            vb.push_str(v);
            has_host |= kb == "host";
            n += 1;
        }
        let tags = &mut self.tags[..n];
        tags.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, v) in tags.iter() {
            self.key.push_str(k);
            self.key.push('=');
            self.key.push_str(v);
            self.key.push('\0');
        }
        if let Some(e) = self.entries.get_mut(self.key.as_str()) {
            if e.kind != line.kind {
                return Err(Refused::TypeConflict);
            }
            apply(e, line, now_ms, &self.hasher, &self.cfg.buckets);
            return Ok(());
        }
        if self.entries.len() >= self.cfg.max_series {
            return Err(Refused::CardinalityLimit);
        }
        let name = self.key[..name_len].to_owned();
        let mut labels: Vec<(String, String)> = self.tags[..n].to_vec();
        if !has_host {
            labels.push(("host".into(), self.cfg.hostname.clone()));
        }
        let series = Series::new(name.clone(), labels.clone());
        let state = match line.kind {
            Kind::Counter => State::Counter(0.0),
            Kind::Gauge => State::Gauge(0.0),
            Kind::Set => State::Set(HashSet::new()),
            Kind::Timer | Kind::Histogram => {
                let with = |suffix: &str, extra: Option<(&str, String)>| {
                    let mut l = labels.clone();
                    l.extend(extra.map(|(k, v)| (k.to_owned(), v)));
                    Series::new(format!("{name}{suffix}"), l)
                };
                let mut bucket_series: Vec<Series> = self
                    .cfg
                    .buckets
                    .iter()
                    .map(|b| with("_bucket", Some(("le", format!("{b}")))))
                    .collect();
                bucket_series.push(with("_bucket", Some(("le", "+Inf".into()))));
                State::Histogram {
                    buckets: vec![0.0; self.cfg.buckets.len() + 1],
                    sum: 0.0,
                    count: 0.0,
                    series: Box::new(HistogramSeries {
                        buckets: bucket_series,
                        sum: with("_sum", None),
                        count: with("_count", None),
                    }),
                }
            }
        };
        let mut entry = Entry {
            series,
            kind: line.kind,
            start_ms: now_ms,
            last_update_ms: now_ms,
            state,
        };
        apply(&mut entry, line, now_ms, &self.hasher, &self.cfg.buckets);
        self.entries.insert(self.key.clone(), entry);
        Ok(())
    }

    /// Emits one point per live series (and per bucket), evicting series idle longer than the
    /// idle timeout, and resets sets.
    pub fn flush(&mut self, now_ms: i64, out: &mut Vec<Point>) {
        let idle = self.cfg.idle_timeout.as_millis() as i64;
        let bounds = &self.cfg.buckets;
        self.entries.retain(|_, e| {
            if now_ms - e.last_update_ms > idle {
                return false;
            }
            match &mut e.state {
                State::Counter(total) => out.push(Point {
                    series: e.series.clone(),
                    kind: MetricKind::Counter,
                    start_ms: Some(e.start_ms),
                    value: *total,
                }),
                State::Gauge(v) => out.push(Point {
                    series: e.series.clone(),
                    kind: MetricKind::Gauge,
                    start_ms: None,
                    value: *v,
                }),
                State::Set(members) => {
                    if !members.is_empty() {
                        out.push(Point {
                            series: e.series.clone(),
                            kind: MetricKind::Gauge,
                            start_ms: None,
                            value: members.len() as f64,
                        });
                        members.clear();
                    }
                }
                State::Histogram {
                    buckets,
                    sum,
                    count,
                    series,
                } => {
                    let mut cumulative = 0.0;
                    for (i, c) in buckets.iter().enumerate() {
                        cumulative += c;
                        out.push(Point {
                            series: series.buckets[i].clone(),
                            kind: MetricKind::Histogram,
                            start_ms: Some(e.start_ms),
                            value: cumulative,
                        });
                    }
                    debug_assert_eq!(buckets.len(), bounds.len() + 1);
                    out.push(Point {
                        series: series.sum.clone(),
                        kind: MetricKind::Histogram,
                        start_ms: Some(e.start_ms),
                        value: *sum,
                    });
                    out.push(Point {
                        series: series.count.clone(),
                        kind: MetricKind::Histogram,
                        start_ms: Some(e.start_ms),
                        value: *count,
                    });
                }
            }
            true
        });
    }

    /// Histogram bucket bounds in use.
    pub fn buckets(&self) -> &[f64] {
        &self.cfg.buckets
    }
}

fn apply(
    e: &mut Entry,
    line: &Line<'_>,
    now_ms: i64,
    hasher: &std::collections::hash_map::RandomState,
    bounds: &[f64],
) {
    e.last_update_ms = now_ms;
    let weight = 1.0 / line.rate;
    for v in line.values() {
        // Lines were validated by the parser; a bad value cannot reach here.
        let Ok(v) = v else { continue };
        match (&mut e.state, v) {
            (State::Counter(total), Value::Number(x)) => *total += x * weight,
            (State::Gauge(g), Value::Number(x)) => *g = x,
            (State::Gauge(g), Value::Delta(d)) => *g += d,
            (State::Set(members), Value::Member(m)) => {
                members.insert(hasher.hash_one(m));
            }
            (
                State::Histogram {
                    buckets,
                    sum,
                    count,
                    ..
                },
                Value::Number(x),
            ) => {
                let x = if line.kind == Kind::Timer {
                    x / 1000.0
                } else {
                    x
                };
                // Buckets hold per-bucket counts; flush makes them cumulative.
                let i = bounds.partition_point(|b| *b < x);
                buckets[i] += weight;
                *sum += x * weight;
                *count += weight;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::statsd::parser::parse_line;

    fn agg(max_series: usize) -> Aggregator {
        Aggregator::new(AggregateConfig {
            hostname: "h".into(),
            max_series,
            idle_timeout: Duration::from_secs(60),
            buckets: vec![0.1, 1.0],
        })
    }

    fn record(a: &mut Aggregator, line: &str, now: i64) -> Result<(), Refused> {
        a.record(&parse_line(line).map_err(Refused::Parse)?, now)
    }

    fn flush(a: &mut Aggregator, now: i64) -> Vec<(String, f64, Option<i64>)> {
        let mut out = Vec::new();
        a.flush(now, &mut out);
        let mut v: Vec<_> = out
            .into_iter()
            .map(|p| (p.series.to_string(), p.value, p.start_ms))
            .collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    }

    #[test]
    fn counters_are_cumulative_with_a_start_time() {
        let mut a = agg(100);
        for _ in 0..5 {
            record(&mut a, "api.requests:1|c", 1000).unwrap();
        }
        record(&mut a, "api.requests:2|c|@0.5", 1500).unwrap();
        assert_eq!(
            flush(&mut a, 2000),
            [(r#"api_requests_total{host="h"}"#.into(), 9.0, Some(1000))]
        );
        record(&mut a, "api.requests:1|c", 2500).unwrap();
        assert_eq!(
            flush(&mut a, 3000)[0].1,
            10.0,
            "the total keeps growing across flushes"
        );
        // Still reported while idle, until the idle timeout evicts it.
        assert_eq!(flush(&mut a, 4000)[0].1, 10.0);
        assert!(flush(&mut a, 2500 + 60_001).is_empty());
        record(&mut a, "api.requests:1|c", 70_000).unwrap();
        assert_eq!(
            flush(&mut a, 71_000),
            [(r#"api_requests_total{host="h"}"#.into(), 1.0, Some(70_000))],
            "a new start time: a visible reset"
        );
    }

    #[test]
    fn gauges_sets_and_names() {
        let mut a = agg(100);
        record(&mut a, "temp:20|g", 1).unwrap();
        record(&mut a, "temp:+3|g", 2).unwrap();
        record(&mut a, "temp:-1|g", 3).unwrap();
        record(&mut a, "users:alice|s", 4).unwrap();
        record(&mut a, "users:bob|s", 4).unwrap();
        record(&mut a, "users:alice|s", 4).unwrap();
        record(&mut a, "9lives-per.cat:1|g|#Env:prod,host:other,empty:", 5).unwrap();
        assert_eq!(
            flush(&mut a, 10),
            [
                (
                    r#"_9lives_per_cat{Env="prod",host="other"}"#.into(),
                    1.0,
                    None
                ),
                (r#"temp{host="h"}"#.into(), 22.0, None),
                (r#"users{host="h"}"#.into(), 2.0, None),
            ]
        );
        assert_eq!(
            flush(&mut a, 11).len(),
            2,
            "sets count per interval: empty after a flush"
        );
    }

    #[test]
    fn timers_become_histograms_in_seconds() {
        let mut a = agg(100);
        record(&mut a, "rt:50|ms", 1).unwrap();
        record(&mut a, "rt:500|ms|#route:/x", 1).unwrap();
        record(&mut a, "rt:500:2000|ms", 1).unwrap();
        let out = flush(&mut a, 2);
        let plain: Vec<_> = out
            .iter()
            .filter(|(s, _, _)| !s.contains("route"))
            .map(|(s, v, _)| (s.as_str(), *v))
            .collect();
        assert_eq!(
            plain,
            [
                (r#"rt_seconds_bucket{host="h",le="+Inf"}"#, 3.0),
                (r#"rt_seconds_bucket{host="h",le="0.1"}"#, 1.0),
                (r#"rt_seconds_bucket{host="h",le="1"}"#, 2.0),
                (r#"rt_seconds_count{host="h"}"#, 3.0),
                (r#"rt_seconds_sum{host="h"}"#, 2.55),
            ]
        );
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn cardinality_limit_refuses_new_series_and_keeps_existing_ones() {
        let mut a = agg(2);
        record(&mut a, "a:1|c", 1).unwrap();
        record(&mut a, "b:1|c", 1).unwrap();
        assert_eq!(record(&mut a, "c:1|c", 1), Err(Refused::CardinalityLimit));
        assert_eq!(
            record(&mut a, "a:1|c|#new:tag", 1),
            Err(Refused::CardinalityLimit)
        );
        record(&mut a, "a:1|c", 1).unwrap();
        assert_eq!(
            flush(&mut a, 2).iter().map(|p| p.1).collect::<Vec<_>>(),
            [2.0, 1.0],
            "nothing merged into existing series"
        );
    }

    #[test]
    fn conflicts_and_bad_tags_are_refused() {
        let mut a = agg(10);
        record(&mut a, "x:1|g", 1).unwrap();
        assert_eq!(record(&mut a, "x:a|s", 1), Err(Refused::TypeConflict));
        assert_eq!(record(&mut a, "y:1|g|#__name__:z", 1), Err(Refused::BadTag));
        assert_eq!(
            record(&mut a, "y:1|x", 1),
            Err(Refused::Parse(
                crate::sources::statsd::parser::BadLine::UnknownType
            ))
        );
        // Tags in any order are the same series.
        record(&mut a, "z:1|c|#a:1,b:2", 1).unwrap();
        record(&mut a, "z:1|c|#b:2,a:1", 1).unwrap();
        assert_eq!(a.series_count(), 2);
    }

    #[test]
    fn every_flushed_series_is_valid() {
        let mut a = agg(100);
        for l in ["a.b-c:1|c|#x.y:1", "t:1|ms", "s:q|s", "g:1|g|#0k:v"] {
            record(&mut a, l, 1).unwrap();
        }
        let mut out = Vec::new();
        a.flush(2, &mut out);
        for p in out {
            p.series
                .validate(&sonde_common::model::Limits::default())
                .unwrap();
        }
    }
}
