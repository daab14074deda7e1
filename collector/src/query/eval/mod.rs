//! PromQL evaluation with Prometheus's semantics for the subset dashboards and alert rules use:
//! selectors (with `offset` and `@`), the common range and instant functions, aggregations,
//! arithmetic, comparison and set operators with vector matching. PromQL is parsed by the
//! `promql-parser` crate; every construct outside the subset is refused up front with a
//! `bad_data` error naming it, before any data is read.
//!
//! A query is evaluated in three stages: [`check`] refuses what is not supported; every selector
//! then reads the store once for the whole query window (bounded by [`QueryLimits`]); finally the
//! expression is evaluated at each step, Prometheus style, from that data.
//!
//! - [`check`]: what is refused before evaluation;
//! - [`value`]: label sets, values and errors;
//! - [`select`]: selectors, instant selection (lookback, staleness) and range windows;
//! - [`functions`]: function calls;
//! - [`aggregate`]: `sum`, `topk`, `quantile`, ... with `by`/`without`;
//! - [`binary`]: operators between scalars and vectors, vector matching.

mod aggregate;
mod binary;
mod check;
mod functions;
mod select;
mod steps;
mod value;

pub use check::{check, parse, step_invariant};
pub use select::{At, Selector, SeriesPoints, eval_vector, metric_labels, series_selector};
pub use value::{Elem, EvalError, Labels, RangeSeries, Value};

use promql_parser::parser::value::ValueType;
use promql_parser::parser::{Expr, MatrixSelector, VectorSelector};
use sonde_common::model::{Sample, Series};
// Seeded per process (foldhash): labels come from senders, so hashing must not be
// predictable; SipHash was a visible share of range queries.
use foldhash::{HashMap, HashMapExt};
use std::time::{Duration, Instant};

use crate::store::{Matcher, SeriesSamples, Store};
use select::{Fetched, fetch, read_time};
use value::{Windows, ensure_unique, execution, unsupported};

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

/// Where the evaluator reads series from: the store through a [`Reader`], or test data.
pub trait SeriesSource {
    /// Series matching all `matchers` with their samples in `[start_ms, end_ms]`.
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<SeriesSamples>;

    /// Calls `f` with each series [`SeriesSource::select`] returns, in its order, one at a time
    /// (a store reads each series' samples when its turn comes); stops at `f`'s first error.
    fn select_each(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        f: &mut dyn FnMut(SeriesSamples) -> Result<(), EvalError>,
    ) -> Result<(), EvalError> {
        self.select(matchers, start_ms, end_ms)
            .into_iter()
            .try_for_each(f)
    }

    /// How many series [`SeriesSource::select`] would return, without reading their samples.
    fn count(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> usize {
        self.select(matchers, start_ms, end_ms).len()
    }
}

impl SeriesSource for Reader<'_> {
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<SeriesSamples> {
        Reader::select(self, matchers, start_ms, end_ms)
    }

    fn select_each(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        f: &mut dyn FnMut(SeriesSamples) -> Result<(), EvalError>,
    ) -> Result<(), EvalError> {
        self.store
            .select_each_tenant(self.tenant, matchers, start_ms, end_ms, f)
    }

    fn count(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> usize {
        self.store
            .count_series_tenant(self.tenant, matchers, start_ms, end_ms)
    }
}

/// Prometheus's stale marker: a specific NaN that ends a series.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Prometheus's cap on points per series in a range query.
pub const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// What one query may cost the process.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    /// Most series all selectors of a query may select together.
    pub max_series: usize,
    /// Most samples a query may load plus points it may produce.
    pub max_samples: usize,
    /// Longest a query may run.
    pub timeout: Duration,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_series: 100_000,
            max_samples: 50_000_000,
            timeout: Duration::from_secs(120),
        }
    }
}

const TOO_MANY_SAMPLES: &str =
    "query processing would load too many samples into memory in query execution";

/// Evaluates `query` at `t` (an instant query).
pub fn instant_query(
    reader: &dyn SeriesSource,
    query: &str,
    t: i64,
    lookback_ms: i64,
    limits: QueryLimits,
) -> Result<Value, EvalError> {
    let expr = parse(query).map_err(EvalError::BadData)?;
    check(&expr)?;
    let mut ev = Evaluator::new(reader, t, t, lookback_ms, limits);
    ev.prefetch(&expr)?;
    let v = ev.eval(&expr, t)?;
    let points = match &v {
        Value::Vector(v) => v.len(),
        Value::Matrix(m) => m.iter().map(|s| s.points.len()).sum(),
        _ => 1,
    };
    ev.charge(points)?;
    Ok(v)
}

/// Evaluates `query` at every `step` from `start` to `end` (a range query): a matrix, sorted by
/// labels.
pub fn range_query(
    reader: &dyn SeriesSource,
    query: &str,
    start: i64,
    end: i64,
    step: i64,
    lookback_ms: i64,
    limits: QueryLimits,
) -> Result<Vec<RangeSeries>, EvalError> {
    range_query_as(reader, query, (start, end, step), lookback_ms, limits, true)
}

/// [`range_query`], evaluated series by series over all steps at once where the expression
/// allows it ([`steps`]) if `by_series`, else step by step.
fn range_query_as(
    reader: &dyn SeriesSource,
    query: &str,
    (start, end, step): (i64, i64, i64),
    lookback_ms: i64,
    limits: QueryLimits,
    by_series: bool,
) -> Result<Vec<RangeSeries>, EvalError> {
    let expr = parse(query).map_err(EvalError::BadData)?;
    match expr.value_type() {
        ValueType::Scalar | ValueType::Vector => {}
        other => {
            let name = match other {
                ValueType::Matrix => "range vector",
                _ => "string",
            };
            return Err(EvalError::BadData(format!(
                "invalid expression type \"{name}\" for range query, must be Scalar or instant Vector"
            )));
        }
    }
    check(&expr)?;
    let mut ev = Evaluator::new(reader, start, end, lookback_ms, limits);
    if by_series
        && step > 0
        && let Some(result) = steps::range(&mut ev, &expr, &steps::steps(start, end, step))?
    {
        return Ok(result);
    }
    // From a fresh budget (the deadline stays).
    ev.series = 0;
    ev.samples.set(0);
    ev.prefetch(&expr)?;
    let mut out: HashMap<Labels, Vec<Sample>> = HashMap::new();
    let mut t = start;
    while t <= end {
        match ev.eval(&expr, t)? {
            Value::Scalar(v) => {
                ev.charge(1)?;
                out.entry(Labels::default())
                    .or_default()
                    .push(Sample::new(t, v));
            }
            Value::Vector(v) => {
                ev.charge(v.len())?;
                for e in v {
                    out.entry(e.labels)
                        .or_default()
                        .push(Sample::new(t, e.value));
                }
            }
            _ => {
                return Err(EvalError::BadData(
                    "range query must evaluate to a scalar or an instant vector".into(),
                ));
            }
        }
        t += step;
    }
    let mut result: Vec<RangeSeries> = out
        .into_iter()
        .map(|(labels, points)| RangeSeries { labels, points })
        .collect();
    result.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(result)
}

/// Evaluation state of one query: its time range, the data each selector read, and the budget.
pub(crate) struct Evaluator<'a> {
    reader: &'a dyn SeriesSource,
    start: i64,
    end: i64,
    lookback_ms: i64,
    limits: QueryLimits,
    deadline: Instant,
    /// Per selector node: its converted form and the series it read.
    data: HashMap<usize, (select::Selector, Vec<Fetched>)>,
    series: usize,
    samples: std::cell::Cell<usize>,
}

impl<'a> Evaluator<'a> {
    fn new(
        reader: &'a dyn SeriesSource,
        start: i64,
        end: i64,
        lookback_ms: i64,
        limits: QueryLimits,
    ) -> Self {
        Evaluator {
            reader,
            start,
            end,
            lookback_ms,
            limits,
            deadline: Instant::now() + limits.timeout,
            data: HashMap::new(),
            series: 0,
            samples: std::cell::Cell::new(0),
        }
    }

    /// Counts `n` more samples or points against the query's budget.
    fn charge(&self, n: usize) -> Result<(), EvalError> {
        let total = self.samples.get().saturating_add(n);
        self.samples.set(total);
        if total > self.limits.max_samples {
            return Err(execution(TOO_MANY_SAMPLES));
        }
        Ok(())
    }

    fn check_deadline(&self) -> Result<(), EvalError> {
        if Instant::now() >= self.deadline {
            return Err(EvalError::Timeout(
                "query timed out in expression evaluation".into(),
            ));
        }
        Ok(())
    }

    /// Reads every selector's data for the whole query window.
    fn prefetch(&mut self, expr: &Expr) -> Result<(), EvalError> {
        match expr {
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => Ok(()),
            Expr::Subquery(s) => self.prefetch(&s.expr),
            Expr::Paren(p) => self.prefetch(&p.expr),
            Expr::Unary(u) => self.prefetch(&u.expr),
            Expr::Aggregate(a) => {
                if let Some(p) = &a.param {
                    self.prefetch(p)?;
                }
                self.prefetch(&a.expr)
            }
            Expr::Binary(b) => {
                self.prefetch(&b.lhs)?;
                self.prefetch(&b.rhs)
            }
            Expr::Call(c) => c.args.args.iter().try_for_each(|a| self.prefetch(a)),
            Expr::VectorSelector(vs) => self.fetch_selector(vs, None),
            Expr::MatrixSelector(ms) => self.fetch_selector(&ms.vs, Some(range_ms(ms))),
        }
    }

    fn fetch_selector(&mut self, vs: &VectorSelector, range: Option<i64>) -> Result<(), EvalError> {
        let (sel, (lo, hi), selected) = self.plan_selector(vs, range)?;
        let fetched = fetch(
            self.reader,
            &sel,
            (lo, hi),
            selected,
            range.is_none(),
            &mut |n| {
                self.check_deadline()?;
                self.charge(n)
            },
        )?;
        self.data.insert(select::key(vs), (sel, fetched));
        Ok(())
    }

    /// Selector `vs` converted, the time span it reads (from `range`, or the lookback for an
    /// instant selector, before its first read time, to its last) and how many series it
    /// selects, counted against the query's series limit.
    fn plan_selector(
        &mut self,
        vs: &VectorSelector,
        range: Option<i64>,
    ) -> Result<(select::Selector, (i64, i64), usize), EvalError> {
        self.check_deadline()?;
        let sel = select::selector(vs).map_err(EvalError::BadData)?;
        let (a, b) = (
            read_time(&sel, self.start, self.start, self.end),
            read_time(&sel, self.end, self.start, self.end),
        );
        let lo = a.min(b).saturating_sub(range.unwrap_or(self.lookback_ms));
        let hi = a.max(b);
        // Counted from the index first, so an oversized selection is refused before its
        // samples are read.
        let selected = self.reader.count(&sel.matchers, lo, hi);
        self.series = self.series.saturating_add(selected);
        if self.series > self.limits.max_series {
            return Err(execution(format!(
                "query selects more than {} series (--query-max-series); narrow the selectors",
                self.limits.max_series
            )));
        }
        Ok((sel, (lo, hi), selected))
    }

    fn selector_data(
        &self,
        vs: &VectorSelector,
    ) -> Result<(&[Fetched], &select::Selector), EvalError> {
        let (sel, data) = self
            .data
            .get(&select::key(vs))
            .ok_or_else(|| execution("internal error: selector data was not read"))?;
        Ok((data, sel))
    }

    /// Instant selection at `t`: each selected series' labels and its current sample.
    pub(crate) fn select_instant(
        &self,
        vs: &VectorSelector,
        t: i64,
    ) -> Result<Vec<(&Labels, Sample)>, EvalError> {
        let (data, sel) = self.selector_data(vs)?;
        let rt = read_time(sel, t, self.start, self.end);
        Ok(data
            .iter()
            .filter_map(|f| f.instant(rt, self.lookback_ms).map(|s| (&f.labels, s)))
            .collect())
    }

    /// Range selection at `t`: the window's end time and, per series, its samples in the window
    /// (series with none left out).
    pub(crate) fn select_range(
        &self,
        ms: &MatrixSelector,
        t: i64,
    ) -> Result<(i64, Windows<'_>), EvalError> {
        let (data, sel) = self.selector_data(&ms.vs)?;
        let rt = read_time(sel, t, self.start, self.end);
        let range = range_ms(ms);
        Ok((
            rt,
            data.iter()
                .map(|f| (f, f.window(rt, range)))
                .filter(|(_, w)| !w.is_empty())
                .collect(),
        ))
    }

    /// Evaluates `expr` at time `t`.
    pub(crate) fn eval(&self, expr: &Expr, t: i64) -> Result<Value, EvalError> {
        self.check_deadline()?;
        match expr {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(v) => Ok(Value::Vector(
                    v.into_iter()
                        .map(|mut e| {
                            e.labels.drop_name();
                            e.value = -e.value;
                            e
                        })
                        .collect(),
                )),
                _ => Err(unsupported(format!("unary minus on '{}'", u.expr))),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(
                self.select_instant(vs, t)?
                    .into_iter()
                    .map(|(labels, s)| Elem {
                        labels: labels.clone(),
                        value: s.value,
                    })
                    .collect(),
            )),
            Expr::MatrixSelector(ms) => {
                let (_, windows) = self.select_range(ms, t)?;
                Ok(Value::Matrix(
                    windows
                        .into_iter()
                        .map(|(series, w)| RangeSeries {
                            labels: series.labels.clone(),
                            points: w.to_vec(),
                        })
                        .collect(),
                ))
            }
            Expr::Call(c) => functions::call(self, c, t),
            Expr::Aggregate(a) => aggregate::aggregate(self, a, t),
            Expr::Binary(b) => binary::binary(self, b, t),
            Expr::Subquery(_) | Expr::Extension(_) => Err(unsupported(expr)),
        }
    }

    pub(crate) fn eval_scalar(&self, expr: &Expr, t: i64) -> Result<f64, EvalError> {
        match self.eval(expr, t)? {
            Value::Scalar(v) => Ok(v),
            _ => Err(EvalError::BadData(format!(
                "expected a scalar, got '{expr}'"
            ))),
        }
    }

    pub(crate) fn eval_vector(&self, expr: &Expr, t: i64) -> Result<Vec<Elem>, EvalError> {
        match self.eval(expr, t)? {
            Value::Vector(v) => Ok(v),
            _ => Err(EvalError::BadData(format!(
                "expected an instant vector, got '{expr}'"
            ))),
        }
    }

    pub(crate) fn eval_string(&self, expr: &Expr, t: i64) -> Result<String, EvalError> {
        match self.eval(expr, t)? {
            Value::String(s) => Ok(s),
            _ => Err(EvalError::BadData(format!(
                "expected a string, got '{expr}'"
            ))),
        }
    }
}

fn range_ms(ms: &MatrixSelector) -> i64 {
    i64::try_from(ms.range.as_millis()).unwrap_or(i64::MAX / 4)
}

#[cfg(test)]
mod tests;
