//! Range queries evaluated series by series over all steps at once, for the shapes dashboards
//! and rules ask most: an instant selector, a range function over a range selector
//! (`rate(x[5m])`, `max_over_time(x[1h] offset 1d)`, ...), or a `sum`/`avg`/`min`/`max`/
//! `count`/`group`/`stddev`/`stdvar` (with `by`/`without`) of one of those.
//!
//! The step-by-step evaluation ([`super::Evaluator::eval`] at each step) visits every series at
//! every step, searches its window again and hashes the labels of each element to group it.
//! Here each series is walked once, its windows advancing with the steps, and each series'
//! group is found once per query. The values are those the step-by-step evaluation gives, bit
//! for bit: the same functions are applied to the same windows, and a group's elements are
//! folded in the same order (series order, at each step). Anything else (nested aggregations,
//! whose inner group order can differ from step to step; duplicate label sets, which are an
//! error or merge at some steps) is left to the step-by-step evaluation.

use promql_parser::parser::{AggregateExpr, Call, Expr, MatrixSelector, VectorSelector};
use sonde_common::model::Sample;
// Seeded per process (foldhash): labels come from senders, so hashing must not be
// predictable.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::aggregate::{Acc, Op, group_key, grouping};
use super::functions::{RangeFn, keeps_name, range_fn};
use super::select::{is_stale, partition_from, read_time, unwrap_parens};
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

/// The range query's result for `expr` at `steps`, evaluated series by series, if `expr` has
/// a shape this evaluation takes (`None`: evaluate step by step). Points are charged against
/// the query's budget as the step-by-step evaluation charges them.
pub(super) fn range(
    ev: &Evaluator<'_>,
    expr: &Expr,
    steps: &[i64],
) -> Result<Option<Vec<RangeSeries>>, EvalError> {
    if steps.is_empty() || steps.len() > u32::MAX as usize || !top_supported(expr) {
        return Ok(None);
    }
    let Some(tracks) = tracks(ev, expr, steps)? else {
        return Ok(None);
    };
    let mut seen = HashSet::with_capacity(tracks.len());
    if !tracks.iter().all(|t| seen.insert(&t.labels)) {
        // Would merge into one series: left to the step-by-step evaluation.
        return Ok(None);
    }
    drop(seen);
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

/// Whether `expr` is a shape [`range`] takes: an aggregation of a series expression, or a
/// series expression.
fn top_supported(expr: &Expr) -> bool {
    match unwrap_parens(expr) {
        Expr::Aggregate(a) => fold_op(a).is_some() && series_supported(&a.expr),
        e => series_supported(e),
    }
}

/// An instant selector or a range function over a range selector: expressions whose elements
/// at every step are the selected series, in their order.
fn series_supported(expr: &Expr) -> bool {
    match unwrap_parens(expr) {
        Expr::VectorSelector(_) => true,
        Expr::Call(c) => range_call(c).is_some(),
        _ => false,
    }
}

/// The operator of an aggregation that folds its elements' values without a parameter.
fn fold_op(a: &AggregateExpr) -> Option<Op> {
    let op = Op::parse(&a.op.to_string());
    (op.is_fold() && a.param.is_none()).then_some(op)
}

/// A call of a [`RangeFn`] on a range selector alone: the function and the selector.
fn range_call(c: &Call) -> Option<(RangeFn, &MatrixSelector)> {
    let f = range_fn(c.func.name)?;
    match c.args.args.as_slice() {
        [arg] => match unwrap_parens(arg) {
            Expr::MatrixSelector(ms) => Some((f, ms)),
            _ => None,
        },
        _ => None,
    }
}

/// `expr`'s series over all steps; `None` when it is left to the step-by-step evaluation.
fn tracks(ev: &Evaluator<'_>, expr: &Expr, steps: &[i64]) -> Result<Option<Vec<Track>>, EvalError> {
    match unwrap_parens(expr) {
        Expr::Aggregate(a) => match fold_op(a) {
            Some(op) => aggregate(ev, a, op, steps),
            None => Ok(None),
        },
        Expr::VectorSelector(vs) => instant(ev, vs, steps).map(Some),
        Expr::Call(c) => match range_call(c) {
            Some((f, ms)) => over_range(ev, c, f, ms, steps),
            None => Ok(None),
        },
        _ => Ok(None),
    }
}

/// An instant selector at every step: each series' newest sample within the lookback, unless
/// it is a stale marker.
fn instant(
    ev: &Evaluator<'_>,
    vs: &VectorSelector,
    steps: &[i64],
) -> Result<Vec<Track>, EvalError> {
    let (data, sel) = ev.selector_data(vs)?;
    let mut out = Vec::new();
    for f in data {
        ev.check_deadline()?;
        let samples = &f.samples;
        let mut points = Vec::new();
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
        if !points.is_empty() {
            out.push(Track {
                labels: f.labels.clone(),
                points,
            });
        }
    }
    Ok(out)
}

/// A range function at every step: `f` of each series' (non-empty) window `[rt - range, rt]`.
/// `None` when two series would have the same labels (the step-by-step evaluation fails at
/// the steps where both have a value).
fn over_range(
    ev: &Evaluator<'_>,
    c: &Call,
    f: RangeFn,
    ms: &MatrixSelector,
    steps: &[i64],
) -> Result<Option<Vec<Track>>, EvalError> {
    let (data, sel) = ev.selector_data(&ms.vs)?;
    let range = range_ms(ms);
    let keep_name = keeps_name(c.func.name);
    let labels = |s: &super::select::Fetched| {
        if keep_name {
            s.labels.clone()
        } else {
            s.unnamed().clone()
        }
    };
    let mut seen = HashSet::with_capacity(data.len());
    if !data.iter().all(|s| seen.insert(labels(s))) {
        return Ok(None);
    }
    drop(seen);
    let mut out = Vec::new();
    for series in data {
        ev.check_deadline()?;
        let samples = &series.samples;
        let mut points = Vec::new();
        // The window at each step is samples[lo..hi].
        let (mut lo, mut hi) = (0usize, 0usize);
        for (k, &t) in steps.iter().enumerate() {
            let rt = read_time(sel, t, ev.start, ev.end);
            let from = rt.saturating_sub(range);
            lo = partition_from(samples, lo, |s| s.timestamp_ms < from);
            hi = lo
                + partition_from(&samples[lo..], hi.saturating_sub(lo), |s| {
                    s.timestamp_ms <= rt
                });
            let window = &samples[lo..hi];
            if window.is_empty() {
                continue;
            }
            if let Some(v) = f(window, rt, range) {
                points.push((k as u32, v));
            }
        }
        if !points.is_empty() {
            out.push(Track {
                labels: labels(series),
                points,
            });
        }
    }
    Ok(Some(out))
}

/// A folding aggregation at every step: each input series' group found once, each group's
/// value at each step folded from its members' values in input order.
fn aggregate(
    ev: &Evaluator<'_>,
    a: &AggregateExpr,
    op: Op,
    steps: &[i64],
) -> Result<Option<Vec<Track>>, EvalError> {
    let Some(input) = tracks(ev, &a.expr, steps)? else {
        return Ok(None);
    };
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
    let n = steps.len();
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
    use super::super::{QueryLimits, STALE_NAN_BITS, SeriesSource, parse, range_query_as};
    use super::*;
    use crate::store::{Matcher, SeriesSamples};
    use sonde_common::model::Series;

    /// Series held in memory, selected like the store does.
    struct Mem(Vec<SeriesSamples>);

    impl SeriesSource for Mem {
        fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<SeriesSamples> {
            self.0
                .iter()
                .filter(|s| {
                    let labels = Labels::from_series(&s.series);
                    matchers.iter().all(|m| m.matches(labels.get(&m.name)))
                })
                .map(|s| SeriesSamples {
                    series: s.series.clone(),
                    samples: s
                        .samples
                        .iter()
                        .copied()
                        .filter(|p| p.timestamp_ms >= start_ms && p.timestamp_ms <= end_ms)
                        .collect(),
                })
                .filter(|s| !s.samples.is_empty())
                .collect()
        }
    }

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

    const QUERIES: [&str; 34] = [
        "rate(a[5m])",
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
                taken += usize::from(top_supported(&parse(q).unwrap()));
            }
        }
        assert_eq!(taken, 60 * (QUERIES.len() - 1));
        // The data overlap most ranges.
        assert!(nonempty > 60 * QUERIES.len() / 2, "{nonempty}");
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
        assert!(top_supported(&parse(q).unwrap()));
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
