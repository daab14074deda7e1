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
//! - [`select`]: selectors, instant selection (lookback, staleness) and range windows;
//! - [`functions`]: function calls;
//! - [`aggregate`]: `sum`, `topk`, `quantile`, ... with `by`/`without`;
//! - [`binary`]: operators between scalars and vectors, vector matching.

mod aggregate;
mod binary;
mod functions;
mod select;

pub use select::{At, Selector, SeriesPoints, eval_vector, metric_labels, series_selector};

use promql_parser::parser::value::ValueType;
use promql_parser::parser::{self, Expr, MatrixSelector, VectorSelector};
use sonde_common::model::{Sample, Series};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use crate::store::{Matcher, SeriesSamples, Store};
use select::{Fetched, fetch, instant_sample, range_window, read_time, unwrap_parens};

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

    /// How many series [`SeriesSource::select`] would return, without reading their samples.
    fn count(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> usize {
        self.select(matchers, start_ms, end_ms).len()
    }
}

impl SeriesSource for Reader<'_> {
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<SeriesSamples> {
        Reader::select(self, matchers, start_ms, end_ms)
    }

    fn count(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> usize {
        self.series(matchers, start_ms, end_ms).len()
    }
}

/// Prometheus's stale marker: a specific NaN that ends a series.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Prometheus's cap on points per series in a range query.
pub const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// A label set, sorted by name, `__name__` included like any label; no empty values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    pub fn from_series(series: &Series) -> Labels {
        let mut v = Vec::with_capacity(series.labels.len() + 1);
        if !series.name.is_empty() {
            v.push(("__name__".to_owned(), series.name.clone()));
        }
        v.extend(
            series
                .labels
                .iter()
                .filter(|l| !l.value.is_empty())
                .map(|l| (l.name.clone(), l.value.clone())),
        );
        v.sort();
        v.dedup_by(|a, b| a.0 == b.0);
        Labels(v)
    }

    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Labels {
        let mut l = Labels::default();
        for (n, v) in pairs {
            l.set(n, v);
        }
        l
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The value of `name`, `""` when absent (as Prometheus reads a missing label).
    pub fn get(&self, name: &str) -> &str {
        self.0
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .map(|i| self.0[i].1.as_str())
            .unwrap_or("")
    }

    /// Sets `name`; an empty value removes it.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) if value.is_empty() => {
                self.0.remove(i);
            }
            Ok(i) => self.0[i].1 = value.to_owned(),
            Err(_) if value.is_empty() => {}
            Err(i) => self.0.insert(i, (name.to_owned(), value.to_owned())),
        }
    }

    pub fn del(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }

    pub fn drop_name(&mut self) {
        self.del("__name__");
    }

    pub fn without_name(&self) -> Labels {
        let mut l = self.clone();
        l.drop_name();
        l
    }

    /// Only the labels in `names`.
    pub fn keep(&self, names: &[String]) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|(n, _)| names.iter().any(|k| k == n))
                .cloned()
                .collect(),
        )
    }

    /// All labels but those in `names`.
    pub fn remove(&self, names: &[String]) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|(n, _)| !names.iter().any(|k| k == n))
                .cloned()
                .collect(),
        )
    }
}

impl fmt::Display for Labels {
    /// Prometheus's `labels.String()`: `{a="1", b="2"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (n, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}={v:?}")?;
        }
        f.write_str("}")
    }
}

/// Per series, its samples in a range window.
pub(crate) type Windows<'d> = Vec<(&'d Labels, &'d [Sample])>;

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Elem {
    pub labels: Labels,
    pub value: f64,
}

/// One series of a range vector or range-query result.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSeries {
    pub labels: Labels,
    pub points: Vec<Sample>,
}

/// The value of an expression at one evaluation time.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<Elem>),
    Matrix(Vec<RangeSeries>),
}

/// Why a query failed, in the classes Prometheus's HTTP API distinguishes.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalError {
    /// The query cannot be run as written (syntax, unsupported construct): 400 `bad_data`.
    BadData(String),
    /// Evaluation failed (matching error, limit exceeded): 422 `execution`.
    Execution(String),
    /// The query ran past its time budget: 503 `timeout`.
    Timeout(String),
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::BadData(m) | EvalError::Execution(m) | EvalError::Timeout(m) => {
                f.write_str(m)
            }
        }
    }
}

fn unsupported(what: impl fmt::Display) -> EvalError {
    EvalError::BadData(format!("unsupported expression: {what}"))
}

fn execution(msg: impl Into<String>) -> EvalError {
    EvalError::Execution(msg.into())
}

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

/// Deepest expression accepted: parsing and evaluating recurse once per level, so an untrusted
/// query must not nest deeper than the stack allows. Real queries stay far below.
const MAX_NESTING: usize = 250;

/// An upper bound of the depth of `query`'s syntax tree, from the text alone: the deepest
/// bracket nesting plus the number of operators (a chain `a + b + c ...` nests once per
/// operator). Quoted strings are skipped.
fn nesting_bound(query: &str) -> usize {
    let (mut depth, mut max_depth, mut operators) = (0usize, 0usize, 0usize);
    let mut chars = query.chars().peekable();
    let mut word = String::new();
    let end_word = |word: &mut String, operators: &mut usize| {
        if matches!(word.as_str(), "and" | "or" | "unless" | "atan2") {
            *operators += 1;
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        end_word(&mut word, &mut operators);
        match c {
            '"' | '\'' | '`' => {
                while let Some(d) = chars.next() {
                    if d == '\\' && c != '`' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            '(' | '[' | '{' => {
                depth += 1;
                max_depth = max_depth.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '+' | '-' | '*' | '/' | '%' | '^' | '<' | '>' | '=' | '!' => operators += 1,
            _ => {}
        }
    }
    end_word(&mut word, &mut operators);
    max_depth + operators
}

/// Parses a query; the parser's errors (and, defensively, its panics) become `bad_data`.
pub fn parse(query: &str) -> Result<Expr, String> {
    if nesting_bound(query) > MAX_NESTING {
        return Err(format!(
            "query is nested too deeply: more than {MAX_NESTING} levels of brackets and operators"
        ));
    }
    match std::panic::catch_unwind(|| parser::parse(query)) {
        Ok(r) => r,
        Err(_) => Err(format!("cannot parse query {query:?}")),
    }
}

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

const SUPPORTED_FUNCTIONS: &[&str] = &[
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "predict_linear",
    "changes",
    "resets",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "quantile_over_time",
    "present_over_time",
    "absent_over_time",
    "histogram_quantile",
    "abs",
    "ceil",
    "floor",
    "sqrt",
    "exp",
    "ln",
    "log2",
    "log10",
    "sgn",
    "round",
    "clamp",
    "clamp_min",
    "clamp_max",
    "time",
    "vector",
    "scalar",
    "timestamp",
    "sort",
    "sort_desc",
    "label_replace",
    "label_join",
    "absent",
];

const SUPPORTED_AGGREGATIONS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
];

/// Refuses, with a message naming it, every construct this evaluator does not implement.
pub fn check(expr: &Expr) -> Result<(), EvalError> {
    match expr {
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::Paren(p) => check(&p.expr),
        Expr::Unary(u) => check(&u.expr),
        Expr::VectorSelector(vs) => select::selector(vs).map(|_| ()).map_err(EvalError::BadData),
        Expr::MatrixSelector(ms) => select::selector(&ms.vs)
            .map(|_| ())
            .map_err(EvalError::BadData),
        Expr::Subquery(_) => Err(unsupported(format!(
            "subquery '{expr}' (subqueries are not supported)"
        ))),
        Expr::Extension(_) => Err(unsupported("extension expression")),
        Expr::Aggregate(a) => {
            let op = a.op.to_string();
            if !SUPPORTED_AGGREGATIONS.contains(&op.as_str()) {
                return Err(unsupported(format!("aggregation '{op}' is not supported")));
            }
            if let Some(p) = &a.param {
                check(p)?;
            }
            check(&a.expr)
        }
        Expr::Binary(b) => {
            let op = b.op.to_string();
            if op == "atan2" {
                return Err(unsupported("binary operator 'atan2' is not supported"));
            }
            if let Some(m) = &b.modifier
                && (m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some())
            {
                return Err(unsupported("fill modifiers are not supported"));
            }
            check(&b.lhs)?;
            check(&b.rhs)
        }
        Expr::Call(c) => {
            let name = c.func.name;
            if !SUPPORTED_FUNCTIONS.contains(&name) {
                return Err(unsupported(format!("function '{name}' is not supported")));
            }
            for (i, arg) in c.args.args.iter().enumerate() {
                if c.func.arg_types.get(i) == Some(&ValueType::Matrix)
                    && !matches!(unwrap_parens(arg), Expr::MatrixSelector(_))
                {
                    check(arg)?;
                    return Err(unsupported(format!(
                        "argument '{arg}' of {name}(): only range selectors such as x[5m] are supported"
                    )));
                }
                check(arg)?;
            }
            Ok(())
        }
    }
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
        let fetched = fetch(self.reader, &sel, lo, hi, range.is_none());
        self.charge(fetched.iter().map(|f| f.samples.len()).sum())?;
        self.data.insert(select::key(vs), (sel, fetched));
        Ok(())
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
            .filter_map(|f| {
                instant_sample(&f.samples, rt, self.lookback_ms).map(|s| (&f.labels, s))
            })
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
                .map(|f| (&f.labels, range_window(&f.samples, rt, range)))
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
                        .map(|(labels, w)| RangeSeries {
                            labels: labels.clone(),
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

/// Prometheus's check after functions and operators: no two elements with the same labels.
pub(crate) fn ensure_unique(v: &[Elem]) -> Result<(), EvalError> {
    if v.len() > 1 {
        let mut seen = HashSet::with_capacity(v.len());
        if !v.iter().all(|e| seen.insert(&e.labels)) {
            return Err(execution(
                "vector cannot contain metrics with the same labelset",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
