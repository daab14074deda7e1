//! Evaluation of the PromQL this version answers: series selectors (instant and range, with
//! `offset` and `@`), and number literals with scalar arithmetic. PromQL is parsed by the
//! `promql-parser` crate; every other construct is refused with an error naming it. The storage
//! issue grows this into the full evaluator.

use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{self, AtModifier, Expr, Offset, VectorSelector};
use sonde_common::model::{Label, Sample, Series};
use std::time::{Duration, UNIX_EPOCH};

use crate::store::{Matcher, SeriesSamples, Store};

/// The store as one tenant sees it: every read goes through the tenant's namespace.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    pub store: &'a Store,
    pub tenant: &'a str,
}

impl Reader<'_> {
    pub fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<SeriesSamples> {
        self.store
            .select_tenant(self.tenant, matchers, start_ms, end_ms)
    }

    pub fn series(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<Series> {
        self.store
            .series_tenant(self.tenant, matchers, start_ms, end_ms)
    }

    pub fn label_names(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<String> {
        self.store
            .label_names_tenant(self.tenant, matchers, start_ms, end_ms)
    }

    pub fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<String> {
        self.store
            .label_values_tenant(self.tenant, name, matchers, start_ms, end_ms)
    }
}

/// Prometheus's stale marker: a specific NaN that ends a series.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Prometheus's cap on points per series in a range query.
pub const MAX_POINTS_PER_SERIES: i64 = 11_000;

#[derive(Debug)]
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

/// What a parsed query asks for.
#[derive(Debug)]
pub enum Plan {
    Scalar(f64),
    Vector(Selector),
    Matrix(Selector, i64),
}

/// One series of a result, with its points.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPoints {
    pub series: Series,
    pub points: Vec<Sample>,
}

pub fn plan(query: &str) -> Result<Plan, String> {
    let expr = parser::parse(query)?;
    plan_expr(&expr)
}

fn plan_expr(expr: &Expr) -> Result<Plan, String> {
    match expr {
        Expr::VectorSelector(vs) => Ok(Plan::Vector(selector(vs)?)),
        Expr::MatrixSelector(ms) => {
            Ok(Plan::Matrix(selector(&ms.vs)?, ms.range.as_millis() as i64))
        }
        _ => scalar(expr).map(Plan::Scalar),
    }
}

fn scalar(expr: &Expr) -> Result<f64, String> {
    match expr {
        Expr::NumberLiteral(n) => Ok(n.val),
        Expr::Paren(p) => scalar(&p.expr),
        Expr::Unary(u) => Ok(-scalar(&u.expr)?),
        Expr::Binary(b) => {
            let (l, r) = (scalar(&b.lhs)?, scalar(&b.rhs)?);
            match b.op.to_string().as_str() {
                "+" => Ok(l + r),
                "-" => Ok(l - r),
                "*" => Ok(l * r),
                "/" => Ok(l / r),
                "%" => Ok(l % r),
                "^" => Ok(l.powf(r)),
                op => Err(format!(
                    "unsupported operator '{op}' in this version: only + - * / % ^ between numbers"
                )),
            }
        }
        other => Err(format!(
            "unsupported expression '{other}' in this version: only series selectors (with offset and @), range selectors and number arithmetic are evaluated"
        )),
    }
}

fn millis(d: Duration) -> i64 {
    d.as_millis() as i64
}

fn selector(vs: &VectorSelector) -> Result<Selector, String> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err("unsupported 'or' inside a selector's braces in this version".into());
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
    match parser::parse(input)? {
        Expr::VectorSelector(vs) => Ok(selector(&vs)?.matchers),
        _ => Err(format!(
            "invalid series selector '{input}': expected a selector such as up{{job=\"node\"}}"
        )),
    }
}

fn is_stale(s: &Sample) -> bool {
    s.value.to_bits() == STALE_NAN_BITS
}

/// The time a selector reads at, for evaluation time `t` of a query over [start, end].
fn read_time(sel: &Selector, t: i64, start: i64, end: i64) -> i64 {
    let base = match sel.at {
        None => t,
        Some(At::Start) => start,
        Some(At::End) => end,
        Some(At::Ms(ms)) => ms,
    };
    base - sel.offset_ms
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
        let mut points = Vec::new();
        for &t in steps {
            let rt = read_time(sel, t, start, end);
            // Samples are sorted: the newest at or before rt.
            let idx = data.samples.partition_point(|s| s.timestamp_ms <= rt);
            if idx == 0 {
                continue;
            }
            let s = data.samples[idx - 1];
            if s.timestamp_ms < rt - lookback_ms || is_stale(&s) {
                continue;
            }
            points.push(Sample::new(t, s.value));
        }
        if !points.is_empty() {
            out.push(SeriesPoints {
                series: data.series,
                points,
            });
        }
    }
    out
}

/// Range vector selection at time `t`: every sample in `(t - range, t]`.
pub fn eval_matrix(store: &Reader<'_>, sel: &Selector, t: i64, range_ms: i64) -> Vec<SeriesPoints> {
    let rt = read_time(sel, t, t, t);
    store
        .select(&sel.matchers, rt - range_ms + 1, rt)
        .into_iter()
        .filter_map(|data| {
            let points: Vec<Sample> = data.samples.into_iter().filter(|s| !is_stale(s)).collect();
            (!points.is_empty()).then_some(SeriesPoints {
                series: data.series,
                points,
            })
        })
        .collect()
}

/// The label set of a result series as Prometheus shows it: `__name__` first, then the labels.
pub fn metric_labels(series: &Series) -> impl Iterator<Item = (&str, &str)> {
    std::iter::once(("__name__", series.name.as_str())).chain(
        series
            .labels
            .iter()
            .map(|Label { name, value }| (name.as_str(), value.as_str())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        assert!(matches!(plan("1+1").unwrap(), Plan::Scalar(v) if v == 2.0));
        assert!(matches!(plan("-(2^3)").unwrap(), Plan::Scalar(v) if v == -8.0));
        match plan(r#"up{job="node",instance=~"a.*"} offset 1m"#).unwrap() {
            Plan::Vector(sel) => {
                assert_eq!(sel.matchers.len(), 3);
                assert_eq!(sel.offset_ms, 60_000);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan("up[5m] @ 100").unwrap(),
            Plan::Matrix(
                Selector {
                    at: Some(At::Ms(100_000)),
                    ..
                },
                300_000
            )
        ));
        let err = plan("rate(up[5m])").unwrap_err();
        assert!(err.contains("unsupported expression"), "{err}");
        assert!(plan("up{").is_err());
        assert!(series_selector("sum(up)").is_err());
        assert_eq!(series_selector(r#"{job="x"}"#).unwrap().len(), 1);
    }
}
