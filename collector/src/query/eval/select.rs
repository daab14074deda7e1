//! Series selection: PromQL selectors converted into store matchers, the store read once per
//! selector for the whole query, and Prometheus's instant (lookback, staleness) and range
//! (closed window `[t - range, t]`, stale markers skipped) selection at each evaluation time.

use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{AtModifier, Expr, Offset, VectorSelector};
use sonde_common::model::{Label, Sample, Series};
use std::time::{Duration, UNIX_EPOCH};

use super::value::Interner;
use super::{EvalError, Labels, Reader, STALE_NAN_BITS, SeriesSource};
use crate::store::Matcher;
// Seeded per process (foldhash): labels come from senders, so hashing must not be
// predictable; SipHash was a visible share of range queries.
use foldhash::{HashMap, HashMapExt};

/// A selector as the store understands it, with its time modifiers.
#[derive(Debug, Clone)]
pub struct Selector {
    pub matchers: Vec<Matcher>,
    pub offset_ms: i64,
    pub at: Option<At>,
}

#[derive(Debug, Clone, Copy)]
pub enum At {
    Start,
    End,
    Ms(i64),
}

/// One series of a result, with its points.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPoints {
    pub series: Series,
    pub points: Vec<Sample>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// Converts a parsed selector; `or` inside braces is refused.
pub fn selector(vs: &VectorSelector) -> Result<Selector, String> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err("unsupported expression: 'or' inside a selector's braces".into());
    }
    let mut matchers = Vec::with_capacity(vs.matchers.matchers.len() + 1);
    if let Some(name) = &vs.name {
        matchers.push(Matcher::equal("__name__", name.as_str()));
    }
    for m in &vs.matchers.matchers {
        let converted = match &m.op {
            PMatchOp::Equal => Matcher::equal(m.name.as_str(), m.value.as_str()),
            PMatchOp::NotEqual => Matcher::not_equal(m.name.as_str(), m.value.as_str()),
            PMatchOp::Re(_) => {
                Matcher::regex(m.name.as_str(), &m.value).map_err(|e| e.to_string())?
            }
            PMatchOp::NotRe(_) => {
                Matcher::not_regex(m.name.as_str(), &m.value).map_err(|e| e.to_string())?
            }
        };
        matchers.push(converted);
    }
    let offset_ms = match &vs.offset {
        None => 0,
        Some(Offset::Pos(d)) => millis(*d),
        Some(Offset::Neg(d)) => -millis(*d),
    };
    let at = match &vs.at {
        None => None,
        Some(AtModifier::Start) => Some(At::Start),
        Some(AtModifier::End) => Some(At::End),
        Some(AtModifier::At(t)) => Some(At::Ms(match t.duration_since(UNIX_EPOCH) {
            Ok(d) => millis(d),
            Err(e) => -millis(e.duration()),
        })),
    };
    Ok(Selector {
        matchers,
        offset_ms,
        at,
    })
}

/// Parses a `match[]` series selector into store matchers.
pub fn series_selector(input: &str) -> Result<Vec<Matcher>, String> {
    match super::parse(input)? {
        Expr::VectorSelector(vs) => Ok(selector(&vs)?.matchers),
        _ => Err(format!(
            "invalid series selector '{input}': expected a selector such as up{{job=\"node\"}}"
        )),
    }
}

pub fn is_stale(s: &Sample) -> bool {
    s.value.to_bits() == STALE_NAN_BITS
}

/// The time a selector reads at, for evaluation time `t` of a query over [start, end].
pub fn read_time(sel: &Selector, t: i64, start: i64, end: i64) -> i64 {
    let base = match sel.at {
        None => t,
        Some(At::Start) => start,
        Some(At::End) => end,
        Some(At::Ms(ms)) => ms,
    };
    base.saturating_sub(sel.offset_ms)
}

/// One selected series with the samples a query may need from it.
#[derive(Debug)]
pub struct Fetched {
    pub labels: Labels,
    pub samples: Vec<Sample>,
    /// Where the previous step's window started: steps advance in time, so the next search
    /// gallops forward from here instead of bisecting the whole series again.
    cursor: std::cell::Cell<usize>,
    /// `labels` without the metric name, made once for all steps (see [`Fetched::unnamed`]).
    unnamed: std::cell::OnceCell<Labels>,
}

impl Fetched {
    pub fn new(labels: Labels, samples: Vec<Sample>) -> Self {
        Fetched {
            labels,
            samples,
            cursor: std::cell::Cell::new(0),
            unnamed: std::cell::OnceCell::new(),
        }
    }

    /// The series' labels without `__name__`, as functions return them.
    pub fn unnamed(&self) -> &Labels {
        self.unnamed.get_or_init(|| self.labels.without_name())
    }

    /// [`range_window`], searching from the previous step's position.
    pub fn window(&self, rt: i64, range_ms: i64) -> &[Sample] {
        let start = rt.saturating_sub(range_ms);
        let lo = partition_from(&self.samples, self.cursor.get(), |s| s.timestamp_ms < start);
        self.cursor.set(lo);
        let rest = &self.samples[lo..];
        let hi = partition_from(rest, 0, |s| s.timestamp_ms <= rt);
        &rest[..hi]
    }

    /// [`instant_sample`], searching from the previous step's position.
    pub fn instant(&self, rt: i64, lookback_ms: i64) -> Option<Sample> {
        let start = rt.saturating_sub(lookback_ms);
        let lo = partition_from(&self.samples, self.cursor.get(), |s| s.timestamp_ms < start);
        self.cursor.set(lo);
        let rest = &self.samples[lo..];
        let hi = partition_from(rest, 0, |s| s.timestamp_ms <= rt);
        let s = *rest.get(hi.checked_sub(1)?)?;
        (!is_stale(&s)).then_some(s)
    }
}

/// `samples.partition_point(pred)` (`pred` true then false), galloping forward from `hint`
/// when the answer lies at or after it, else bisecting the whole slice.
pub(crate) fn partition_from(
    samples: &[Sample],
    hint: usize,
    pred: impl Fn(&Sample) -> bool,
) -> usize {
    let hint = hint.min(samples.len());
    if hint > 0 && !pred(&samples[hint - 1]) {
        return samples.partition_point(pred);
    }
    let mut lo = hint;
    let mut step = 1;
    while lo + step <= samples.len() && pred(&samples[lo + step - 1]) {
        lo += step;
        step *= 2;
    }
    let hi = (lo + step).min(samples.len());
    lo + samples[lo..hi].partition_point(pred)
}

/// How much time one store read covers for [`SLICE_SERIES`] series or more: a long window is
/// read slice by slice, so the sample budget is checked before the next slice is loaded.
pub const FETCH_SLICE_MS: i64 = 2 * 3600 * 1000;

/// Fewer series than this get proportionally longer slices, up to 12 times (a day): about as
/// many samples per read as this many series over [`FETCH_SLICE_MS`]. Each read has a fixed
/// cost, and appending its slices copies every sample again.
pub const SLICE_SERIES: usize = 10_000;

/// The slice length for a read of `series` series.
pub fn slice_ms(series: usize) -> i64 {
    let factor = (SLICE_SERIES / series.max(1)).clamp(1, 12) as i64;
    FETCH_SLICE_MS.saturating_mul(factor)
}

/// Reads the series `sel` selects over `[lo, hi]`; stale markers are kept for instant
/// selection (they end a series) and dropped for range selection (they are not samples).
/// `budget` is told how many samples each slice added and stops the read by failing.
pub fn fetch(
    reader: &dyn SeriesSource,
    sel: &Selector,
    (lo, hi): (i64, i64),
    series: usize,
    keep_stale: bool,
    budget: &mut dyn FnMut(usize) -> Result<(), EvalError>,
) -> Result<Vec<Fetched>, EvalError> {
    let mut out: Vec<Fetched> = Vec::new();
    let mut index: HashMap<Series, usize> = HashMap::new();
    let mut interner = Interner::default();
    let mut from = lo;
    while from <= hi {
        let to = from.saturating_add(slice_ms(series) - 1).min(hi);
        let mut added = 0;
        for data in reader.select(&sel.matchers, from, to) {
            let mut samples = data.samples;
            if !keep_stale {
                samples.retain(|s| !is_stale(s));
            }
            added += samples.len();
            match index.get(&data.series) {
                Some(&i) => out[i].samples.extend(samples),
                None => {
                    out.push(Fetched::new(
                        Labels::from_series_with(&data.series, true, &mut interner),
                        samples,
                    ));
                    index.insert(data.series, out.len() - 1);
                }
            }
        }
        budget(added)?;
        if to == hi {
            break;
        }
        from = to + 1;
    }
    Ok(out)
}

/// The newest sample at or before `rt`, if it is within the lookback and not a stale marker.
pub fn instant_sample(samples: &[Sample], rt: i64, lookback_ms: i64) -> Option<Sample> {
    let idx = samples.partition_point(|s| s.timestamp_ms <= rt);
    let s = *samples.get(idx.checked_sub(1)?)?;
    (s.timestamp_ms >= rt.saturating_sub(lookback_ms) && !is_stale(&s)).then_some(s)
}

/// The samples in `[rt - range, rt]` (Prometheus 2.x's closed window), by bisection: the
/// reference [`Fetched::window`] is tested against.
#[cfg(test)]
pub fn range_window(samples: &[Sample], rt: i64, range_ms: i64) -> &[Sample] {
    let lo = samples.partition_point(|s| s.timestamp_ms < rt.saturating_sub(range_ms));
    let hi = samples.partition_point(|s| s.timestamp_ms <= rt);
    &samples[lo..hi.max(lo)]
}

/// Instant vector selection at each of `steps` (evaluation times), Prometheus style: for every
/// step, the newest sample in `[t - lookback, t]` unless it is a stale marker.
pub fn eval_vector(
    store: &Reader<'_>,
    sel: &Selector,
    steps: &[i64],
    start: i64,
    end: i64,
    lookback_ms: i64,
) -> Vec<SeriesPoints> {
    let Some((&first, &last)) = steps.first().zip(steps.last()) else {
        return Vec::new();
    };
    let lo = read_time(sel, first, start, end).min(read_time(sel, last, start, end)) - lookback_ms;
    let hi = read_time(sel, first, start, end).max(read_time(sel, last, start, end));
    let mut out = Vec::new();
    for data in store.select(&sel.matchers, lo, hi) {
        let points: Vec<Sample> = steps
            .iter()
            .filter_map(|&t| {
                instant_sample(&data.samples, read_time(sel, t, start, end), lookback_ms)
                    .map(|s| Sample::new(t, s.value))
            })
            .collect();
        if !points.is_empty() {
            out.push(SeriesPoints {
                series: data.series,
                points,
            });
        }
    }
    out
}

/// The label set of a series as Prometheus shows it: `__name__` first, then the labels.
pub fn metric_labels(series: &Series) -> impl Iterator<Item = (&str, &str)> {
    std::iter::once(("__name__", series.name.as_str())).chain(
        series
            .labels
            .iter()
            .map(|Label { name, value }| (name.as_str(), value.as_str())),
    )
}

/// `expr` without enclosing parentheses.
pub fn unwrap_parens(mut expr: &Expr) -> &Expr {
    while let Expr::Paren(p) = expr {
        expr = &p.expr;
    }
    expr
}

/// Key under which a selector's fetched data is kept: the node's address, stable while the
/// parsed expression lives.
pub fn key(vs: &VectorSelector) -> usize {
    vs as *const VectorSelector as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: i64, v: f64) -> Sample {
        Sample::new(t, v)
    }

    #[test]
    fn instant_selection_honours_lookback_and_staleness() {
        let stale = f64::from_bits(STALE_NAN_BITS);
        let data = [s(1000, 1.0), s(2000, 2.0), s(3000, stale), s(10_000, 4.0)];
        // Exactly at the lookback boundary is still selected (Prometheus 2.x).
        assert_eq!(instant_sample(&data, 2500, 499).map(|x| x.value), None);
        assert_eq!(instant_sample(&data, 2500, 500).map(|x| x.value), Some(2.0));
        assert_eq!(
            instant_sample(&data, 2000, 1000).map(|x| x.value),
            Some(2.0)
        );
        // The stale marker ends the series until the next real sample.
        assert_eq!(instant_sample(&data, 3000, 300_000), None);
        assert_eq!(instant_sample(&data, 9999, 300_000), None);
        assert_eq!(
            instant_sample(&data, 10_000, 300_000).map(|x| x.value),
            Some(4.0)
        );
        assert_eq!(instant_sample(&data, 999, 300_000), None);
    }

    #[test]
    fn cursor_searches_agree_with_bisection_forwards_and_backwards() {
        let data: Vec<Sample> = (0..500)
            .map(|i| s(i * 1000 + (i % 3) * 7, i as f64))
            .collect();
        let f = Fetched::new(
            Labels::from_series(&Series::new("m", std::iter::empty::<(&str, &str)>())),
            data.clone(),
        );
        // Forwards in uneven steps, then jumps back, then past the end.
        let times: Vec<i64> = (0..700)
            .map(|k| k * 733 - 2000)
            .chain([10_000, 3_000, 499_500, 0, -5, 600_000, 250_000])
            .collect();
        for rt in times {
            for range in [0, 999, 1000, 30_000, 300_000] {
                assert_eq!(
                    f.window(rt, range),
                    range_window(&data, rt, range),
                    "{rt} {range}"
                );
                assert_eq!(
                    f.instant(rt, range).map(|x| x.timestamp_ms),
                    instant_sample(&data, rt, range).map(|x| x.timestamp_ms),
                    "{rt} {range}"
                );
            }
        }
    }

    #[test]
    fn range_window_is_closed() {
        let data = [s(1000, 1.0), s(2000, 2.0), s(3000, 3.0)];
        assert_eq!(range_window(&data, 3000, 2000).len(), 3);
        assert_eq!(range_window(&data, 3000, 1999).len(), 2);
        assert_eq!(range_window(&data, 500, 1000).len(), 0);
        assert_eq!(range_window(&data, 5000, 1000).len(), 0);
    }

    #[test]
    fn selectors_convert() {
        let Expr::VectorSelector(vs) =
            super::super::parse(r#"up{job="node",i=~"a.*"} offset 1m"#).unwrap()
        else {
            panic!()
        };
        let sel = selector(&vs).unwrap();
        assert_eq!(sel.matchers.len(), 3);
        assert_eq!(sel.offset_ms, 60_000);
        assert!(series_selector("sum(up)").is_err());
        assert_eq!(series_selector(r#"{job="x"}"#).unwrap().len(), 1);
    }
}
