//! Range queries evaluated series by series over all steps at once, for the shapes dashboards
//! and rules ask most: an instant selector, a range function over a range selector
//! (`rate(x[5m])`, `max_over_time(x[1h] offset 1d)`, ...), or a `sum`/`avg`/`min`/`max`/
//! `count`/`group`/`stddev`/`stdvar` (with `by`/`without`) of one of those.
//!
//! The step-by-step evaluation reads every selected series into memory first, then visits
//! every series at every step, searching its window again and hashing the labels of each
//! element to group it. Here the store hands over one series at a time
//! ([`SeriesSource::select_each`]); its windows advance with the steps, its values at every step
//! are computed, and its samples are dropped before the next series is read, so a query holds
//! one series' samples (in cache) instead of all of them. Each series' group is found once per
//! query.
//!
//! The values are those the step-by-step evaluation gives, bit for bit: the same functions are
//! applied to the same windows, and a group's elements are folded in the same order, the order
//! in which the step-by-step evaluation lists the series (read in time slices, a series that
//! first appears in a later slice comes after those of earlier ones). The query's limits are
//! charged the same samples and points. Anything else (nested aggregations, whose inner group
//! order can differ from step to step; label sets that clash once the metric name is dropped,
//! which fail at some steps and merge at others) is left to the step-by-step evaluation.

use promql_parser::parser::{AggregateExpr, Call, Expr, MatrixSelector, VectorSelector};
use sonde_common::model::Sample;
// Seeded per process (foldhash): labels come from senders, so hashing must not be
// predictable.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::aggregate::{Acc, Op, group_key, grouping};
use super::functions::{RangeFn, counter_rate, extrapolate, keeps_name, range_fn};
use super::select::{Selector, is_stale, partition_from, read_time, slice_ms, unwrap_parens};
use super::value::Interner;
use super::{EvalError, Evaluator, Labels, RangeSeries, range_ms};

/// Most accumulators (groups x steps) an aggregation keeps at once when its input holds fewer
/// points; past both it is left to the step-by-step evaluation.
const MAX_DENSE: usize = 1 << 22;

/// One series of an intermediate result: its labels and its values at the steps it has one
/// (step index, ascending).
struct Track {
    labels: Labels,
    points: Vec<(u32, f64)>,
}

/// What the steps of a range query are: `start`, `start + step`, ... up to `end`.
pub(super) fn steps(start: i64, end: i64, step: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut t = start;
    while t <= end {
        out.push(t);
        t += step;
    }
    out
}

/// The expressions taken: an optional folding aggregation over the series of one selector.
struct Shape<'e> {
    aggregation: Option<(&'e AggregateExpr, Op)>,
    elements: Elements<'e>,
}

/// The series part of a [`Shape`]: its elements at every step are the selected series, in
/// their order.
enum Elements<'e> {
    Instant(&'e VectorSelector),
    Range {
        f: RangeFn,
        /// For `rate` and `increase`: whether it is `rate` (see [`counter_windows`]).
        counter: Option<bool>,
        ms: &'e MatrixSelector,
        keep_name: bool,
    },
}

fn shape(expr: &Expr) -> Option<Shape<'_>> {
    match unwrap_parens(expr) {
        Expr::Aggregate(a) => Some(Shape {
            aggregation: Some((a, fold_op(a)?)),
            elements: elements(&a.expr)?,
        }),
        e => Some(Shape {
            aggregation: None,
            elements: elements(e)?,
        }),
    }
}

fn elements(expr: &Expr) -> Option<Elements<'_>> {
    match unwrap_parens(expr) {
        Expr::VectorSelector(vs) => Some(Elements::Instant(vs)),
        Expr::Call(c) => range_call(c),
        _ => None,
    }
}

/// The operator of an aggregation that folds its elements' values without a parameter.
fn fold_op(a: &AggregateExpr) -> Option<Op> {
    let op = Op::parse(&a.op.to_string());
    (op.is_fold() && a.param.is_none()).then_some(op)
}

/// A call of a [`RangeFn`] on a range selector alone.
fn range_call(c: &Call) -> Option<Elements<'_>> {
    let f = range_fn(c.func.name)?;
    match c.args.args.as_slice() {
        [arg] => match unwrap_parens(arg) {
            Expr::MatrixSelector(ms) => Some(Elements::Range {
                f,
                counter: counter_rate(c.func.name),
                ms,
                keep_name: keeps_name(c.func.name),
            }),
            _ => None,
        },
        _ => None,
    }
}

/// Whether [`range`] takes `expr`.
#[cfg(test)]
fn supported(expr: &Expr) -> bool {
    shape(expr).is_some()
}

/// The range query's result for `expr` at `steps`, evaluated series by series, if `expr` has
/// a shape this evaluation takes (`None`: evaluate step by step, from a fresh budget).
pub(super) fn range(
    ev: &mut Evaluator<'_>,
    expr: &Expr,
    steps: &[i64],
) -> Result<Option<Vec<RangeSeries>>, EvalError> {
    let Some(shape) = shape(expr) else {
        return Ok(None);
    };
    if steps.is_empty() || u32::try_from(steps.len()).is_err() {
        return Ok(None);
    }
    let (vs, range) = match &shape.elements {
        Elements::Instant(vs) => (*vs, None),
        Elements::Range { ms, .. } => (&ms.vs, Some(range_ms(ms))),
    };
    let (sel, (lo, hi), selected) = ev.plan_selector(vs, range)?;
    let ev = &*ev;
    // The time slices the step-by-step evaluation reads in ([`super::select::fetch`]).
    let slice = i128::from(slice_ms(selected));
    let mut tracks: Vec<(i128, Track)> = Vec::new();
    let mut labels_seen = HashSet::new();
    let mut interner = Interner::default();
    let mut clash = false;
    ev.reader.select_each(&sel.matchers, lo, hi, &mut |data| {
        ev.check_deadline()?;
        let Some(first) = data.samples.first() else {
            return Ok(());
        };
        let order = (i128::from(first.timestamp_ms) - i128::from(lo)) / slice;
        let mut samples = data.samples;
        let (labels, points) = match &shape.elements {
            Elements::Instant(_) => {
                ev.charge(samples.len())?;
                let points = instant(ev, &sel, &samples, steps);
                let labels = Labels::from_series_with(&data.series, true, &mut interner);
                (labels, points)
            }
            Elements::Range {
                f,
                counter,
                ms,
                keep_name,
            } => {
                samples.retain(|s| !is_stale(s));
                ev.charge(samples.len())?;
                let labels = Labels::from_series_with(&data.series, *keep_name, &mut interner);
                // Two series with one label set fail or merge at some steps.
                clash |= !labels_seen.insert(labels.clone());
                let points = match counter {
                    Some(is_rate) => {
                        counter_windows(ev, &sel, *is_rate, range_ms(ms), &samples, steps)
                    }
                    None => over_range(ev, &sel, *f, range_ms(ms), &samples, steps),
                };
                (labels, points)
            }
        };
        if !points.is_empty() && !clash {
            tracks.push((order, Track { labels, points }));
        }
        Ok(())
    })?;
    drop(labels_seen);
    if clash {
        return Ok(None);
    }
    let tracks = match shape.aggregation {
        None => {
            let mut seen = HashSet::with_capacity(tracks.len());
            if !tracks.iter().all(|(_, t)| seen.insert(&t.labels)) {
                // Would merge into one series: left to the step-by-step evaluation.
                return Ok(None);
            }
            tracks.into_iter().map(|(_, t)| t).collect()
        }
        Some((a, op)) => {
            // The step-by-step evaluation's order of the series: by slice of first appearance.
            tracks.sort_by_key(|&(order, _)| order);
            let input = tracks.into_iter().map(|(_, t)| t).collect();
            match aggregate(ev, a, op, input, steps.len())? {
                Some(t) => t,
                None => return Ok(None),
            }
        }
    };
    ev.charge(tracks.iter().map(|t| t.points.len()).sum())?;
    let mut out: Vec<RangeSeries> = tracks
        .into_iter()
        .map(|t| RangeSeries {
            labels: t.labels,
            points: t
                .points
                .into_iter()
                .map(|(k, v)| Sample::new(steps[k as usize], v))
                .collect(),
        })
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(Some(out))
}

/// Room for a series' points: one per step at most, and (a guess that spares most series
/// from growing their vector) not many more than twice its samples.
fn points_room(samples: &[Sample], steps: &[i64]) -> usize {
    steps.len().min(samples.len().saturating_mul(2).max(16))
}

/// An instant selector at every step: the series' newest sample within the lookback, unless
/// it is a stale marker.
fn instant(
    ev: &Evaluator<'_>,
    sel: &Selector,
    samples: &[Sample],
    steps: &[i64],
) -> Vec<(u32, f64)> {
    let mut points = Vec::with_capacity(points_room(samples, steps));
    // samples[..hi] are at or before the read time.
    let mut hi = 0;
    for (k, &t) in steps.iter().enumerate() {
        let rt = read_time(sel, t, ev.start, ev.end);
        hi = partition_from(samples, hi, |s| s.timestamp_ms <= rt);
        let Some(s) = hi.checked_sub(1).map(|i| samples[i]) else {
            continue;
        };
        if s.timestamp_ms >= rt.saturating_sub(ev.lookback_ms) && !is_stale(&s) {
            points.push((k as u32, s.value));
        }
    }
    points
}

/// A range function at every step: `f` of the series' window `[rt - range, rt]` where it is
/// not empty.
fn over_range(
    ev: &Evaluator<'_>,
    sel: &Selector,
    f: RangeFn,
    range: i64,
    samples: &[Sample],
    steps: &[i64],
) -> Vec<(u32, f64)> {
    each_window(ev, sel, range, samples, steps, |rt, lo, hi| {
        f(&samples[lo..hi], rt, range)
    })
}

/// `f(rt, lo, hi)` at every step whose window `samples[lo..hi]` (the samples in
/// `[rt - range, rt]`, `rt` the step's read time) is not empty; the points it gives. The
/// window only moves forward, found from where it was ([`advance`]).
fn each_window(
    ev: &Evaluator<'_>,
    sel: &Selector,
    range: i64,
    samples: &[Sample],
    steps: &[i64],
    mut f: impl FnMut(i64, usize, usize) -> Option<f64>,
) -> Vec<(u32, f64)> {
    let mut points = Vec::with_capacity(points_room(samples, steps));
    let (mut lo, mut hi) = (0usize, 0usize);
    for (k, &t) in steps.iter().enumerate() {
        let rt = read_time(sel, t, ev.start, ev.end);
        (lo, hi) = advance(samples, (lo, hi), rt.saturating_sub(range), rt);
        if lo == hi {
            continue;
        }
        if let Some(v) = f(rt, lo, hi) {
            points.push((k as u32, v));
        }
    }
    points
}

/// The window `samples[lo..hi]` moved forward to the samples in `[from, rt]` (neither bound
/// ever goes back).
fn advance(samples: &[Sample], (lo, hi): (usize, usize), from: i64, rt: i64) -> (usize, usize) {
    let lo = partition_from(samples, lo, |s| s.timestamp_ms < from);
    let hi = lo
        + partition_from(&samples[lo..], hi.saturating_sub(lo), |s| {
            s.timestamp_ms <= rt
        });
    (lo, hi)
}

/// [`over_range`] for `rate` (`is_rate`) and `increase`: the series' counter resets are found
/// once, so a window without one is not scanned for them ([`extrapolate`]).
fn counter_windows(
    ev: &Evaluator<'_>,
    sel: &Selector,
    is_rate: bool,
    range: i64,
    samples: &[Sample],
    steps: &[i64],
) -> Vec<(u32, f64)> {
    // The samples below the one before them: looked for without a branch first (most series
    // have none).
    let any = samples
        .windows(2)
        .fold(false, |any, w| any | (w[1].value < w[0].value));
    let resets: Vec<usize> = if any {
        (1..samples.len())
            .filter(|&i| samples[i].value < samples[i - 1].value)
            .collect()
    } else {
        Vec::new()
    };
    let mut next_reset = 0usize;
    each_window(ev, sel, range, samples, steps, |rt, lo, hi| {
        // The first reset after the window's first sample; the read times never go back.
        next_reset = partition_from_usize(&resets, next_reset, |&i| i <= lo);
        let has_reset = resets.get(next_reset).is_some_and(|&i| i < hi);
        extrapolate(&samples[lo..hi], rt, range, true, is_rate, has_reset)
    })
}

/// `items.partition_point(pred)`, from `hint` on when the answer lies there.
fn partition_from_usize(items: &[usize], hint: usize, pred: impl Fn(&usize) -> bool) -> usize {
    let hint = hint.min(items.len());
    if hint > 0 && !pred(&items[hint - 1]) {
        return items.partition_point(pred);
    }
    hint + items[hint..].partition_point(pred)
}

/// A folding aggregation of `input` (in the step-by-step evaluation's order) at every one of
/// `n` steps: each input series' group found once, each group's value at each step folded from
/// its members' values in input order. `None` when there are too many groups for the points.
fn aggregate(
    ev: &Evaluator<'_>,
    a: &AggregateExpr,
    op: Op,
    input: Vec<Track>,
    n: usize,
) -> Result<Option<Vec<Track>>, EvalError> {
    let (by, names) = grouping(a);
    let mut groups: Vec<Labels> = Vec::new();
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let member_of: Vec<usize> = input
        .iter()
        .map(|t| {
            let key = group_key(&t.labels, by, &names);
            *index.entry(key).or_insert_with_key(|key| {
                groups.push(key.clone());
                groups.len() - 1
            })
        })
        .collect();
    let dense = groups.len().saturating_mul(n);
    let points: usize = input.iter().map(|t| t.points.len()).sum();
    if dense > MAX_DENSE && dense > points {
        return Ok(None);
    }
    let mut acc = vec![Acc::EMPTY; dense];
    for (t, &g) in input.iter().zip(&member_of) {
        ev.check_deadline()?;
        let row = &mut acc[g * n..(g + 1) * n];
        for &(k, v) in &t.points {
            let a = &mut row[k as usize];
            if a.is_empty() {
                *a = Acc::first(op, v);
            } else {
                a.add(op, v);
            }
        }
    }
    Ok(Some(
        groups
            .into_iter()
            .zip(acc.chunks_exact(n))
            .map(|(labels, row)| Track {
                labels,
                points: row
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| !a.is_empty())
                    .map(|(k, a)| (k as u32, a.result(op)))
                    .collect(),
            })
            .filter(|t| !t.points.is_empty())
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::tests::Mem;
    use super::super::{QueryLimits, STALE_NAN_BITS, SeriesSource, parse, range_query_as};
    use super::*;
    use crate::store::{Matcher, SeriesSamples};
    use sonde_common::model::Series;

    /// Counters (`a`, with resets) and gauges (`b`, with NaN and stale markers) per host and
    /// cpu, each starting and stopping at a random time, at a random interval with jitter and
    /// gaps; plus `c`, with `a`'s label sets under another name.
    fn random_data(rng: &mut fastrand::Rng) -> Mem {
        let mut out = Vec::new();
        for name in ["a", "b", "c"] {
            for host in 0..rng.usize(1..5) {
                for cpu in 0..rng.usize(1..3) {
                    if rng.u8(..10) == 0 {
                        continue;
                    }
                    let interval = rng.i64(5_000..60_000);
                    let first = rng.i64(-1_200_000..2_400_000);
                    let last = first + rng.i64(0..4_000_000);
                    let mut samples = Vec::new();
                    let mut t = first;
                    let mut v = rng.f64() * 100.0;
                    while t <= last {
                        match rng.u8(..50) {
                            0 => t += rng.i64(60_000..900_000),
                            1 if name == "b" => {
                                samples.push(Sample::new(t, f64::from_bits(STALE_NAN_BITS)))
                            }
                            2 if name == "b" => samples.push(Sample::new(t, f64::NAN)),
                            3 if name != "b" => {
                                v = rng.f64();
                                samples.push(Sample::new(t, v));
                            }
                            _ => {
                                v = if name == "b" {
                                    (rng.f64() - 0.5) * 1e3
                                } else {
                                    v + (rng.u8(..8) as f64) * 0.25
                                };
                                samples.push(Sample::new(t, v));
                            }
                        }
                        t += interval + rng.i64(0..interval / 5 + 1);
                    }
                    out.push(SeriesSamples {
                        series: Series::new(
                            name,
                            [("host", format!("h{host}")), ("cpu", cpu.to_string())],
                        ),
                        samples,
                    });
                }
            }
        }
        out.sort_by(|x, y| x.series.cmp(&y.series));
        Mem(out)
    }

    const QUERIES: [&str; 37] = [
        "rate(a[5m])",
        // `b` has NaN, stale markers and values going down.
        "rate(b[5m])",
        "sum(increase(b[2m] offset 1m))",
        "increase(a[90s])",
        "sum by (host) (rate(a[5m]))",
        "sum(rate(a[1m]))",
        "avg without (cpu) (increase(a[3m] offset 2m))",
        "max by (host) (irate(a[2m]))",
        "min(delta(b[5m]))",
        "min by (cpu) (idelta(b[1m]))",
        "count by (cpu) (b)",
        "group(b)",
        "stddev by (host) (b offset 1m)",
        "stdvar(b)",
        "sum(b @ 100)",
        "avg(b)",
        "last_over_time(b[10m])",
        "max_over_time(b[4m])",
        "min_over_time(b[7m] offset -3m)",
        "sum by (host) (changes(b[5m]))",
        "resets(a[10m])",
        "deriv(b[5m])",
        "sum_over_time(b[3m])",
        "avg_over_time(b[2m])",
        "count_over_time(a[1m])",
        "present_over_time(b[30s])",
        "stddev_over_time(b[5m])",
        "stdvar_over_time(a[5m] @ 1200)",
        "rate(a[5m] @ end())",
        "b offset -1m",
        "(sum by (host) ((rate((a[5m])))))",
        "sum without (host, cpu) (a)",
        "sum by (__name__) (a)",
        // Label sets that clash once the name is dropped: left to the step-by-step evaluation.
        r#"rate({__name__=~"a|c"}[5m])"#,
        r#"sum by (host) (rate({__name__=~"a|c"}[5m]))"#,
        r#"last_over_time({__name__=~"a|c"}[5m])"#,
        // Not taken (nested aggregation), for comparison.
        "sum(sum by (host) (rate(a[5m])))",
    ];

    /// A result series as its label string and its points' timestamps and value bits.
    type Bits = (String, Vec<(i64, u64)>);

    fn bits(r: Result<Vec<RangeSeries>, EvalError>) -> Result<Vec<Bits>, EvalError> {
        r.map(|series| {
            series
                .into_iter()
                .map(|s| {
                    (
                        s.labels.to_string(),
                        s.points
                            .iter()
                            .map(|p| (p.timestamp_ms, p.value.to_bits()))
                            .collect(),
                    )
                })
                .collect()
        })
    }

    #[test]
    fn series_by_series_equals_step_by_step_on_random_data() {
        let (mut taken, mut nonempty) = (0, 0);
        for seed in 0..60 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let src = random_data(&mut rng);
            let start = rng.i64(-600_000..1_800_000);
            let end = start + rng.i64(0..3_600_000);
            let step = [1_000, 15_000, 60_000, 299_999, 300_000, 3_600_000][rng.usize(..6)];
            let lookback = [60_000, 300_000][rng.usize(..2)];
            for q in QUERIES {
                let range = (start, end, step);
                let limits = QueryLimits::default();
                let fast = range_query_as(&src, q, range, lookback, limits, true);
                let slow = range_query_as(&src, q, range, lookback, limits, false);
                nonempty += usize::from(slow.as_ref().is_ok_and(|r| !r.is_empty()));
                assert_eq!(bits(fast), bits(slow), "seed {seed}: {q} over {range:?}");
                taken += usize::from(supported(&parse(q).unwrap()));
            }
        }
        assert_eq!(taken, 60 * (QUERIES.len() - 1));
        // The data overlap most ranges.
        assert!(nonempty > 60 * QUERIES.len() / 2, "{nonempty}");
    }

    #[test]
    fn series_first_read_in_later_slices_are_folded_in_step_by_step_order() {
        // Few series over two weeks are read in slices of 12 days; `m{i="0"}` starts on day
        // 13, so the step-by-step evaluation lists it after the others, and sums of these
        // values depend on the order they are added in.
        let day = 24 * 3_600_000;
        let every = 600_000;
        let s = |i: &str, from: i64, v: f64| SeriesSamples {
            series: Series::new("m", [("i", i)]),
            samples: (from / every..14 * day / every)
                .map(|k| Sample::new(k * every, v))
                .collect(),
        };
        let src = Mem(vec![
            s("0", 13 * day, 1.0),
            s("1", 0, 1e16),
            s("2", 0, -1e16),
        ]);
        let range = (0, 14 * day, 3_600_000);
        for q in [
            "sum(m)",
            "avg(m)",
            "stddev(m)",
            "sum(last_over_time(m[20m]))",
        ] {
            let limits = QueryLimits::default();
            let fast = bits(range_query_as(&src, q, range, 300_000, limits, true));
            assert_eq!(
                fast,
                bits(range_query_as(&src, q, range, 300_000, limits, false)),
                "{q}"
            );
        }
        // Where all three are summed, the one added last is the one that survives rounding.
        let sum = range_query_as(&src, "sum(m)", range, 300_000, QueryLimits::default(), true);
        assert_eq!(sum.unwrap()[0].points.last().unwrap().value, 1.0);
    }

    #[test]
    fn duplicate_label_sets_still_fail_or_merge_as_step_by_step() {
        // `a` and `c` have the same labels but for the name: where both have a window, the
        // rate fails; where one has, its values merge into one series.
        let s = |name: &str, ts: std::ops::Range<i64>| SeriesSamples {
            series: Series::new(name, [("host", "h")]),
            samples: ts.map(|i| Sample::new(i * 10_000, i as f64)).collect(),
        };
        let q = r#"rate({__name__=~"a|c"}[1m])"#;
        let limits = QueryLimits::default();
        let apart = Mem(vec![s("a", 0..30), s("c", 60..90)]);
        let merged = range_query_as(&apart, q, (0, 900_000, 60_000), 300_000, limits, true);
        assert_eq!(merged.as_ref().map(Vec::len), Ok(1));
        assert_eq!(
            bits(merged),
            bits(range_query_as(
                &apart,
                q,
                (0, 900_000, 60_000),
                300_000,
                limits,
                false
            ))
        );
        let together = Mem(vec![s("a", 0..30), s("c", 0..30)]);
        assert_eq!(
            range_query_as(&together, q, (0, 300_000, 60_000), 300_000, limits, true),
            Err(super::super::execution(
                "vector cannot contain metrics with the same labelset"
            ))
        );
    }

    #[test]
    fn limits_hold_series_by_series() {
        let mut rng = fastrand::Rng::with_seed(1);
        let src = random_data(&mut rng);
        let q = "sum by (host) (rate(a[5m]))";
        assert!(supported(&parse(q).unwrap()));
        let points: usize = range_query_as(
            &src,
            q,
            (0, 3_600_000, 10_000),
            300_000,
            QueryLimits::default(),
            true,
        )
        .unwrap()
        .iter()
        .map(|s| s.points.len())
        .sum();
        let loaded: usize = src
            .select(&[Matcher::equal("__name__", "a")], -300_000, 3_600_000)
            .iter()
            .map(|s| s.samples.len())
            .sum();
        assert!(points > 0);
        for by_series in [true, false] {
            let enough = QueryLimits {
                max_samples: loaded + points,
                ..QueryLimits::default()
            };
            let r = range_query_as(&src, q, (0, 3_600_000, 10_000), 300_000, enough, by_series);
            assert!(r.is_ok(), "{r:?}");
            let few = QueryLimits {
                max_samples: loaded + points - 1,
                ..QueryLimits::default()
            };
            let r = range_query_as(&src, q, (0, 3_600_000, 10_000), 300_000, few, by_series);
            assert!(
                matches!(&r, Err(EvalError::Execution(m)) if m.contains("too many samples")),
                "{r:?}"
            );
            let none = QueryLimits {
                timeout: std::time::Duration::ZERO,
                ..QueryLimits::default()
            };
            let r = range_query_as(&src, q, (0, 3_600_000, 10_000), 300_000, none, by_series);
            assert!(matches!(r, Err(EvalError::Timeout(_))), "{r:?}");
        }
    }
}
