//! Function calls, after Prometheus's promql/functions.go: range-vector functions (`rate` and
//! its extrapolation, `*_over_time`, ...), `histogram_quantile`, value transforms and label
//! manipulation. As in Prometheus, functions that change a value's meaning drop the metric name;
//! `last_over_time`, `sort`, `sort_desc`, `label_replace` and `label_join` keep it.

use promql_parser::parser::{Call, Expr, MatrixSelector};
use sonde_common::model::Sample;

use super::select::unwrap_parens;
use super::{Elem, EvalError, Evaluator, Labels, Value, ensure_unique, execution};

/// Neumaier-compensated summation step, as Prometheus's `kahanSumInc`.
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Go's `math.Max`: NaN wins.
pub(crate) fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Go's `math.Min`: NaN wins.
pub(crate) fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// Prometheus's `quantile`: linear interpolation between the closest ranks; NaN sorts first.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(nan_first);
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Ascending order with NaN first (Prometheus's `vectorByValueHeap`).
pub(crate) fn nan_first(a: &f64, b: &f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    }
}

/// Ascending (or descending) order with NaN last, as `sort` and `sort_desc` order.
pub(crate) fn nan_last(a: f64, b: f64, desc: bool) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Equal,
        (true, false) => Greater,
        (false, true) => Less,
        _ if desc => b.partial_cmp(&a).unwrap_or(Equal),
        _ => a.partial_cmp(&b).unwrap_or(Equal),
    }
}

/// Prometheus's `extrapolatedRate` for `rate`, `increase` and `delta`: the change over the
/// samples of the window `[range_end - range, range_end]`, counter resets compensated, then
/// extrapolated towards the window's edges (at most half an average interval beyond the first
/// and last samples, and never below zero for counters).
pub(crate) fn extrapolated_rate(
    samples: &[Sample],
    range_end: i64,
    range_ms: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    extrapolate(
        samples, range_end, range_ms, is_counter, is_rate, is_counter,
    )
}

/// [`extrapolated_rate`], told whether the window may hold a counter reset: with `resets`
/// false (the caller knows that no sample is below the one before it) the samples between the
/// first and the last are not looked at, and the result is the same.
pub(crate) fn extrapolate(
    samples: &[Sample],
    range_end: i64,
    range_ms: i64,
    is_counter: bool,
    is_rate: bool,
    resets: bool,
) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let range_start = range_end - range_ms;
    let mut result = last.value - first.value;
    if is_counter && resets {
        let mut prev = first.value;
        for s in &samples[1..] {
            if s.value < prev {
                result += prev;
            }
            prev = s.value;
        }
    }
    let mut duration_to_start = (first.timestamp_ms - range_start) as f64 / 1000.0;
    let duration_to_end = (range_end - last.timestamp_ms) as f64 / 1000.0;
    let sampled_interval = (last.timestamp_ms - first.timestamp_ms) as f64 / 1000.0;
    let average_between = sampled_interval / (samples.len() - 1) as f64;
    if is_counter && result > 0.0 && first.value >= 0.0 {
        let duration_to_zero = sampled_interval * (first.value / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }
    let threshold = average_between * 1.1;
    let mut interval = sampled_interval;
    interval += if duration_to_start < threshold {
        duration_to_start
    } else {
        average_between / 2.0
    };
    interval += if duration_to_end < threshold {
        duration_to_end
    } else {
        average_between / 2.0
    };
    let mut factor = interval / sampled_interval;
    if is_rate {
        factor /= range_ms as f64 / 1000.0;
    }
    Some(result * factor)
}

/// `irate` and `idelta`: from the last two samples.
pub(crate) fn instant_value(samples: &[Sample], is_rate: bool) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let last = samples[samples.len() - 1];
    let prev = samples[samples.len() - 2];
    let mut v = if is_rate && last.value < prev.value {
        last.value
    } else {
        last.value - prev.value
    };
    let interval = last.timestamp_ms - prev.timestamp_ms;
    if interval == 0 {
        return None;
    }
    if is_rate {
        v /= interval as f64 / 1000.0;
    }
    Some(v)
}

/// Least-squares fit of the samples, x in seconds relative to `intercept_time`:
/// (slope, intercept), as Prometheus's `linearRegression`.
pub(crate) fn linear_regression(samples: &[Sample], intercept_time: i64) -> (f64, f64) {
    let (mut n, mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = samples[0].value;
    let mut const_y = true;
    for (i, s) in samples.iter().enumerate() {
        if const_y && i > 0 && s.value != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (s.timestamp_ms - intercept_time) as f64 / 1e3;
        (sum_x, c_x) = kahan_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_inc(s.value, sum_y, c_y);
        (sum_xy, c_xy) = kahan_inc(x * s.value, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_inc(x * x, sum_x2, c_x2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sum_x, sum_y, sum_xy, sum_x2) = (sum_x + c_x, sum_y + c_y, sum_xy + c_xy, sum_x2 + c_x2);
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

fn avg_over(values: &[Sample]) -> f64 {
    let (mut mean, mut count) = (0.0f64, 0.0);
    for s in values {
        count += 1.0;
        let v = s.value;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        mean += v / count - mean / count;
    }
    mean
}

fn stdvar_over(values: &[Sample]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for s in values {
        count += 1.0;
        let delta = s.value - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (s.value - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// The range-vector argument of a call (parentheses allowed around it).
fn matrix_arg(c: &Call, i: usize) -> Result<&MatrixSelector, EvalError> {
    match c.args.args.get(i).map(|a| unwrap_parens(a)) {
        Some(Expr::MatrixSelector(ms)) => Ok(ms),
        _ => Err(EvalError::BadData(format!(
            "unsupported expression: {}() needs a range selector such as x[5m]",
            c.func.name
        ))),
    }
}

fn arg(c: &Call, i: usize) -> Result<&Expr, EvalError> {
    c.args.args.get(i).map(|b| b.as_ref()).ok_or_else(|| {
        EvalError::BadData(format!("missing argument {} of {}()", i + 1, c.func.name))
    })
}

/// Applies `f` to each series' window of the range argument at `matrix_index`.
fn over_range(
    ev: &Evaluator<'_>,
    c: &Call,
    t: i64,
    matrix_index: usize,
    f: impl Fn(&[Sample], i64, i64) -> Option<f64>,
) -> Result<Value, EvalError> {
    let ms = matrix_arg(c, matrix_index)?;
    let range = super::range_ms(ms);
    let (rt, windows) = ev.select_range(ms, t)?;
    let keep_name = keeps_name(c.func.name);
    let mut out = Vec::with_capacity(windows.len());
    for (series, w) in windows {
        if let Some(value) = f(w, rt, range) {
            let labels = if keep_name {
                series.labels.clone()
            } else {
                series.unnamed().clone()
            };
            out.push(Elem { labels, value });
        }
    }
    ensure_unique(&out)?;
    Ok(Value::Vector(out))
}

/// Applies `f` to each element's value, dropping the metric name.
fn map_values(
    ev: &Evaluator<'_>,
    c: &Call,
    t: i64,
    f: impl Fn(f64) -> f64,
) -> Result<Value, EvalError> {
    let mut v = ev.eval_vector(arg(c, 0)?, t)?;
    for e in &mut v {
        e.labels.drop_name();
        e.value = f(e.value);
    }
    ensure_unique(&v)?;
    Ok(Value::Vector(v))
}

/// The labels `absent()` gives its one element: the selector's equality matchers (a label
/// matched more than once, or not by equality, is left out).
fn absent_labels(expr: &Expr) -> Labels {
    let vs = match expr {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::default(),
    };
    let mut labels = Labels::default();
    let mut seen: Vec<&str> = Vec::new();
    for m in &vs.matchers.matchers {
        if m.name == "__name__" {
            continue;
        }
        if matches!(m.op, promql_parser::label::MatchOp::Equal) && !seen.contains(&m.name.as_str())
        {
            labels.set(&m.name, &m.value);
            seen.push(&m.name);
        } else {
            labels.del(&m.name);
        }
    }
    labels
}

/// A range function whose value depends only on the window's samples (never empty), the
/// window's end and its range: not on the evaluation time nor on other arguments.
pub(crate) type RangeFn = fn(&[Sample], i64, i64) -> Option<f64>;

/// The [`RangeFn`] of function `name`, if it is one.
pub(crate) fn range_fn(name: &str) -> Option<RangeFn> {
    let f: RangeFn = match name {
        "rate" => |w, rt, range| extrapolated_rate(w, rt, range, true, true),
        "increase" => |w, rt, range| extrapolated_rate(w, rt, range, true, false),
        "delta" => |w, rt, range| extrapolated_rate(w, rt, range, false, false),
        "irate" => |w, _, _| instant_value(w, true),
        "idelta" => |w, _, _| instant_value(w, false),
        "deriv" => |w, _, _| (w.len() >= 2).then(|| linear_regression(w, w[0].timestamp_ms).0),
        "changes" => |w, _, _| {
            Some(
                w.windows(2)
                    .filter(|p| {
                        p[1].value != p[0].value && !(p[1].value.is_nan() && p[0].value.is_nan())
                    })
                    .count() as f64,
            )
        },
        "resets" => |w, _, _| Some(w.windows(2).filter(|p| p[1].value < p[0].value).count() as f64),
        "avg_over_time" => |w, _, _| Some(avg_over(w)),
        "sum_over_time" => |w, _, _| {
            let (mut sum, mut comp) = (0.0, 0.0);
            for s in w {
                (sum, comp) = kahan_inc(s.value, sum, comp);
            }
            Some(if (sum + comp).is_infinite() {
                sum
            } else {
                sum + comp
            })
        },
        "min_over_time" => |w, _, _| {
            Some(w.iter().fold(w[0].value, |m, s| {
                if s.value < m || m.is_nan() {
                    s.value
                } else {
                    m
                }
            }))
        },
        "max_over_time" => |w, _, _| {
            Some(w.iter().fold(w[0].value, |m, s| {
                if s.value > m || m.is_nan() {
                    s.value
                } else {
                    m
                }
            }))
        },
        "count_over_time" => |w, _, _| Some(w.len() as f64),
        "last_over_time" => |w, _, _| w.last().map(|s| s.value),
        "present_over_time" => |_, _, _| Some(1.0),
        "stdvar_over_time" => |w, _, _| Some(stdvar_over(w)),
        "stddev_over_time" => |w, _, _| Some(stdvar_over(w).sqrt()),
        _ => return None,
    };
    Some(f)
}

/// For `rate` (true) and `increase` (false), the counter functions: whether it is a rate.
pub(crate) fn counter_rate(name: &str) -> Option<bool> {
    match name {
        "rate" => Some(true),
        "increase" => Some(false),
        _ => None,
    }
}

/// Whether function `name` keeps the metric name of its input.
pub(crate) fn keeps_name(name: &str) -> bool {
    name == "last_over_time"
}

pub(crate) fn call(ev: &Evaluator<'_>, c: &Call, t: i64) -> Result<Value, EvalError> {
    let name = c.func.name;
    if let Some(f) = range_fn(name) {
        return over_range(ev, c, t, 0, f);
    }
    match name {
        "predict_linear" => {
            let duration = ev.eval_scalar(arg(c, 1)?, t)?;
            over_range(ev, c, t, 0, |w, _, _| {
                (w.len() >= 2).then(|| {
                    let (slope, intercept) = linear_regression(w, t);
                    slope * duration + intercept
                })
            })
        }
        "quantile_over_time" => {
            let q = ev.eval_scalar(arg(c, 0)?, t)?;
            over_range(ev, c, t, 1, |w, _, _| {
                let mut values: Vec<f64> = w.iter().map(|s| s.value).collect();
                Some(quantile(q, &mut values))
            })
        }
        "absent_over_time" => {
            let ms = matrix_arg(c, 0)?;
            let (_, windows) = ev.select_range(ms, t)?;
            Ok(Value::Vector(if windows.is_empty() {
                vec![Elem {
                    labels: absent_labels(unwrap_parens(arg(c, 0)?)),
                    value: 1.0,
                }]
            } else {
                Vec::new()
            }))
        }
        "absent" => {
            let v = ev.eval_vector(arg(c, 0)?, t)?;
            Ok(Value::Vector(if v.is_empty() {
                vec![Elem {
                    labels: absent_labels(arg(c, 0)?),
                    value: 1.0,
                }]
            } else {
                Vec::new()
            }))
        }
        "histogram_quantile" => {
            let q = ev.eval_scalar(arg(c, 0)?, t)?;
            let v = ev.eval_vector(arg(c, 1)?, t)?;
            Ok(Value::Vector(histogram_quantile(q, v)))
        }
        "abs" => map_values(ev, c, t, f64::abs),
        "ceil" => map_values(ev, c, t, f64::ceil),
        "floor" => map_values(ev, c, t, f64::floor),
        "sqrt" => map_values(ev, c, t, f64::sqrt),
        "exp" => map_values(ev, c, t, f64::exp),
        "ln" => map_values(ev, c, t, f64::ln),
        "log2" => map_values(ev, c, t, f64::log2),
        "log10" => map_values(ev, c, t, f64::log10),
        "sgn" => map_values(ev, c, t, |v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        }),
        "round" => {
            let to_nearest = match c.args.args.get(1) {
                Some(a) => ev.eval_scalar(a, t)?,
                None => 1.0,
            };
            let inverse = 1.0 / to_nearest;
            map_values(ev, c, t, |v| (v * inverse + 0.5).floor() / inverse)
        }
        "clamp" => {
            let (min, max) = (
                ev.eval_scalar(arg(c, 1)?, t)?,
                ev.eval_scalar(arg(c, 2)?, t)?,
            );
            if max < min {
                return Ok(Value::Vector(Vec::new()));
            }
            map_values(ev, c, t, |v| go_max(min, go_min(max, v)))
        }
        "clamp_min" => {
            let min = ev.eval_scalar(arg(c, 1)?, t)?;
            map_values(ev, c, t, |v| go_max(min, v))
        }
        "clamp_max" => {
            let max = ev.eval_scalar(arg(c, 1)?, t)?;
            map_values(ev, c, t, |v| go_min(max, v))
        }
        "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
        "vector" => Ok(Value::Vector(vec![Elem {
            labels: Labels::default(),
            value: ev.eval_scalar(arg(c, 0)?, t)?,
        }])),
        "scalar" => {
            let v = ev.eval_vector(arg(c, 0)?, t)?;
            Ok(Value::Scalar(if v.len() == 1 {
                v[0].value
            } else {
                f64::NAN
            }))
        }
        "timestamp" => {
            let a = arg(c, 0)?;
            let out: Vec<Elem> = match unwrap_parens(a) {
                // Of a selector: the time of each selected sample, not the evaluation time.
                Expr::VectorSelector(vs) => ev
                    .select_instant(vs, t)?
                    .into_iter()
                    .map(|(labels, s)| Elem {
                        labels: labels.without_name(),
                        value: s.timestamp_ms as f64 / 1000.0,
                    })
                    .collect(),
                _ => ev
                    .eval_vector(a, t)?
                    .into_iter()
                    .map(|e| Elem {
                        labels: e.labels.without_name(),
                        value: t as f64 / 1000.0,
                    })
                    .collect(),
            };
            ensure_unique(&out)?;
            Ok(Value::Vector(out))
        }
        "sort" | "sort_desc" => {
            let mut v = ev.eval_vector(arg(c, 0)?, t)?;
            // NaN last in both directions.
            let desc = name == "sort_desc";
            v.sort_by(|a, b| nan_last(a.value, b.value, desc));
            Ok(Value::Vector(v))
        }
        "label_replace" => {
            let v = ev.eval_vector(arg(c, 0)?, t)?;
            let dst = ev.eval_string(arg(c, 1)?, t)?;
            let repl = ev.eval_string(arg(c, 2)?, t)?;
            let src = ev.eval_string(arg(c, 3)?, t)?;
            let pattern = ev.eval_string(arg(c, 4)?, t)?;
            let re = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                execution(format!(
                    "invalid regular expression in label_replace(): {pattern}: {e}"
                ))
            })?;
            if !sonde_common::model::is_valid_label_name(&dst) && dst != "__name__" {
                return Err(execution(format!(
                    "invalid destination label name in label_replace(): {dst}"
                )));
            }
            let mut out = Vec::with_capacity(v.len());
            for mut e in v {
                if let Some(caps) = re.captures(e.labels.get(&src)) {
                    let mut res = String::new();
                    caps.expand(&repl, &mut res);
                    e.labels.set(&dst, &res);
                }
                out.push(e);
            }
            ensure_unique(&out)?;
            Ok(Value::Vector(out))
        }
        "label_join" => {
            let v = ev.eval_vector(arg(c, 0)?, t)?;
            let dst = ev.eval_string(arg(c, 1)?, t)?;
            let sep = ev.eval_string(arg(c, 2)?, t)?;
            let srcs = c
                .args
                .args
                .get(3..)
                .unwrap_or_default()
                .iter()
                .map(|a| ev.eval_string(a, t))
                .collect::<Result<Vec<_>, _>>()?;
            if !sonde_common::model::is_valid_label_name(&dst) && dst != "__name__" {
                return Err(execution(format!(
                    "invalid destination label name in label_join(): {dst}"
                )));
            }
            let mut out = Vec::with_capacity(v.len());
            for mut e in v {
                let joined = srcs
                    .iter()
                    .map(|s| e.labels.get(s))
                    .collect::<Vec<_>>()
                    .join(&sep);
                e.labels.set(&dst, &joined);
                out.push(e);
            }
            ensure_unique(&out)?;
            Ok(Value::Vector(out))
        }
        other => Err(EvalError::BadData(format!(
            "unsupported expression: function '{other}' is not supported"
        ))),
    }
}

/// `histogram_quantile(q, buckets)`: per group of `le` buckets (same labels but `le` and the
/// name), the quantile interpolated linearly within its bucket, as Prometheus's `bucketQuantile`.
fn histogram_quantile(q: f64, v: Vec<Elem>) -> Vec<Elem> {
    let mut groups: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
    let mut index: std::collections::HashMap<Labels, usize> = std::collections::HashMap::new();
    for e in v {
        let Some(upper) = parse_go_float(e.labels.get("le")) else {
            continue;
        };
        let mut key = e.labels.without_name();
        key.del("le");
        let i = *index.entry(key.clone()).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push((upper, e.value));
    }
    groups
        .into_iter()
        .map(|(labels, buckets)| Elem {
            labels,
            value: bucket_quantile(q, buckets),
        })
        .collect()
}

/// Go's `strconv.ParseFloat` for the forms an `le` label takes.
fn parse_go_float(s: &str) -> Option<f64> {
    if s.is_empty() {
        return None;
    }
    match s.to_ascii_lowercase().as_str() {
        "+inf" | "inf" | "+infinity" | "infinity" => Some(f64::INFINITY),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

pub(crate) fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    match buckets.last() {
        Some(b) if b.0 == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    // Coalesce buckets with the same upper bound.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for b in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == b.0 => last.1 += b.1,
            _ => merged.push(b),
        }
    }
    // Ensure monotonic counts.
    let mut max = f64::NEG_INFINITY;
    for b in &mut merged {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = merged[..merged.len() - 1].partition_point(|x| x.1 < rank);
    if b == merged.len() - 1 {
        return merged[merged.len() - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let (mut start, end, mut count) = (0.0, merged[b].0, merged[b].1);
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t_s: i64, v: f64) -> Sample {
        Sample::new(t_s * 1000, v)
    }

    #[test]
    fn rate_extrapolates_to_window_edges() {
        // Samples every 10 s from 5 s to 55 s into a 60 s window, +10 each: the change over
        // 50 s is 50; the edges (5 s each) are within 1.1 intervals, so extrapolated to 60 s.
        let w: Vec<Sample> = (0..6)
            .map(|i| s(5 + 10 * i, 100.0 + 10.0 * i as f64))
            .collect();
        let inc = extrapolated_rate(&w, 60_000, 60_000, true, false).unwrap();
        assert!((inc - 60.0).abs() < 1e-9, "{inc}");
        let rate = extrapolated_rate(&w, 60_000, 60_000, true, true).unwrap();
        assert!((rate - 1.0).abs() < 1e-12, "{rate}");
        // Far from the edges: only half an interval is added on each side.
        let w2 = [s(20, 100.0), s(30, 110.0), s(40, 120.0)];
        let inc = extrapolated_rate(&w2, 60_000, 60_000, true, false).unwrap();
        assert!((inc - 30.0).abs() < 1e-9, "{inc}");
        // One sample: no rate.
        assert_eq!(
            extrapolated_rate(&w2[..1], 60_000, 60_000, true, true),
            None
        );
    }

    #[test]
    fn counters_never_extrapolate_below_zero() {
        // Starts at 5 going up 10 per 10 s: zero is reached 5 s before the first sample,
        // sooner than the 30 s to the window start.
        let w = [s(30, 5.0), s(40, 15.0), s(50, 25.0), s(60, 35.0)];
        let inc = extrapolated_rate(&w, 60_000, 60_000, true, false).unwrap();
        assert!((inc - 35.0).abs() < 1e-9, "{inc}");
        // delta is not a counter: negative extrapolation allowed.
        let d = extrapolated_rate(&w, 60_000, 60_000, false, false).unwrap();
        assert!((d - 35.0).abs() < 1e-9, "{d}");
    }

    #[test]
    fn counter_resets_are_compensated() {
        let w = [s(0, 10.0), s(10, 20.0), s(20, 5.0), s(30, 15.0)];
        // 10 + (reset: 5 counted from zero) + 10 = 25 over the 30 s sampled.
        let inc = extrapolated_rate(&w, 30_000, 30_000, true, false).unwrap();
        assert!((inc - 25.0).abs() < 1e-9, "{inc}");
        assert_eq!(instant_value(&w[..3], true), Some(0.5));
        assert_eq!(instant_value(&w[..3], false), Some(-15.0));
        let d = extrapolated_rate(&w, 30_000, 30_000, false, false).unwrap();
        assert!((d - 5.0).abs() < 1e-9, "{d}");
    }

    #[test]
    fn regression_and_quantiles() {
        let w = [s(0, 1.0), s(10, 3.0), s(20, 5.0)];
        let (slope, intercept) = linear_regression(&w, 0);
        assert!((slope - 0.2).abs() < 1e-12 && (intercept - 1.0).abs() < 1e-12);
        assert_eq!(linear_regression(&[s(0, 2.0), s(1, 2.0)], 0), (0.0, 2.0));
        assert_eq!(quantile(0.5, &mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(quantile(0.25, &mut [4.0, 1.0, 2.0, 3.0]), 1.75);
        assert_eq!(quantile(2.0, &mut [1.0]), f64::INFINITY);
        assert!(quantile(0.5, &mut []).is_nan());
    }

    #[test]
    fn histogram_buckets_interpolate() {
        let b = vec![(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (f64::INFINITY, 40.0)];
        // Rank 20 falls halfway into (0.1, 0.5].
        assert!((bucket_quantile(0.5, b.clone()) - 0.3).abs() < 1e-12);
        // Beyond the last finite bucket: its upper bound.
        assert_eq!(bucket_quantile(1.0, b.clone()), 1.0);
        assert!(bucket_quantile(0.5, vec![(1.0, 3.0)]).is_nan());
        assert!(bucket_quantile(0.5, vec![(1.0, 0.0), (f64::INFINITY, 0.0)]).is_nan());
        // Non-monotonic counts are made monotonic.
        let b = vec![(1.0, 10.0), (2.0, 8.0), (f64::INFINITY, 10.0)];
        assert_eq!(bucket_quantile(0.9, b), 1.0 * 0.9);
    }
}
