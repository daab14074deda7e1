//! The values an expression evaluates to (label sets, instant and range vectors, scalars,
//! strings) and the errors evaluation reports, in the classes Prometheus's HTTP API uses.

use sonde_common::model::{Sample, Series};
// Seeded per process (foldhash): labels come from senders, so hashing must not be
// predictable; SipHash was a visible share of range queries.
use foldhash::{HashSet, HashSetExt};
use std::fmt;
use std::sync::Arc;

/// A label set, sorted by name, `__name__` included like any label; no empty values. The set
/// and its strings are shared: evaluation copies label sets at every step, and a copy is one
/// reference count; changing a shared set copies it first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Labels(Arc<Vec<(Arc<str>, Arc<str>)>>);

/// Shares equal label strings within one query: series read together repeat most of their
/// label names and values, which are then allocated once each.
#[derive(Default)]
pub struct Interner(HashSet<Arc<str>>);

impl Interner {
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(a.clone());
        a
    }
}

impl Labels {
    pub fn from_series(series: &Series) -> Labels {
        Self::from_series_with(series, true, &mut Interner::default())
    }

    /// [`Labels::from_series`], with `__name__` only if `name`, and the strings shared
    /// through `interner`.
    pub fn from_series_with(series: &Series, name: bool, interner: &mut Interner) -> Labels {
        let mut v = Vec::with_capacity(series.labels.len() + 1);
        if name && !series.name.is_empty() {
            v.push((interner.get("__name__"), interner.get(&series.name)));
        }
        v.extend(
            series
                .labels
                .iter()
                .filter(|l| !l.value.is_empty() && (name || l.name != "__name__"))
                .map(|l| (interner.get(&l.name), interner.get(&l.value))),
        );
        v.sort();
        v.dedup_by(|a, b| a.0 == b.0);
        Labels(Arc::new(v))
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
        self.0.iter().map(|(n, v)| (&**n, &**v))
    }

    /// The value of `name`, `""` when absent (as Prometheus reads a missing label).
    pub fn get(&self, name: &str) -> &str {
        self.0
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .map(|i| &*self.0[i].1)
            .unwrap_or("")
    }

    /// Sets `name`; an empty value removes it.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.binary_search_by(|(n, _)| (**n).cmp(name)) {
            Ok(i) if value.is_empty() => {
                Arc::make_mut(&mut self.0).remove(i);
            }
            Ok(i) => Arc::make_mut(&mut self.0)[i].1 = Arc::from(value),
            Err(_) if value.is_empty() => {}
            Err(i) => Arc::make_mut(&mut self.0).insert(i, (Arc::from(name), Arc::from(value))),
        }
    }

    pub fn del(&mut self, name: &str) {
        if self.0.iter().any(|(n, _)| &**n == name) {
            Arc::make_mut(&mut self.0).retain(|(n, _)| &**n != name);
        }
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
        Labels(Arc::new(
            self.0
                .iter()
                .filter(|(n, _)| names.iter().any(|k| **k == **n))
                .cloned()
                .collect(),
        ))
    }

    /// All labels but those in `names`.
    pub fn remove(&self, names: &[String]) -> Labels {
        Labels(Arc::new(
            self.0
                .iter()
                .filter(|(n, _)| !names.iter().any(|k| **k == **n))
                .cloned()
                .collect(),
        ))
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
pub(crate) type Windows<'d> = Vec<(&'d super::select::Fetched, &'d [Sample])>;

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

pub(crate) fn unsupported(what: impl fmt::Display) -> EvalError {
    EvalError::BadData(format!("unsupported expression: {what}"))
}

pub(crate) fn execution(msg: impl Into<String>) -> EvalError {
    EvalError::Execution(msg.into())
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
