//! Binary operators, as Prometheus's engine.go: arithmetic and comparisons between scalars and
//! vectors, `and`/`or`/`unless`, and vector matching (`on`, `ignoring`, `group_left`,
//! `group_right`) with Prometheus's errors when a match is ambiguous.

use promql_parser::parser::{BinModifier, BinaryExpr, LabelModifier, VectorMatchCardinality};
// Seeded per process (foldhash): labels come from senders, so hashing must not be
// predictable; SipHash was a visible share of range queries.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::{Elem, EvalError, Evaluator, Labels, Value, ensure_unique, execution};

fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

fn is_arithmetic(op: &str) -> bool {
    matches!(op, "+" | "-" | "*" | "/" | "%" | "^")
}

/// Prometheus's `vectorElemBinop`: the value and, for comparisons, whether it holds.
fn elem_op(op: &str, l: f64, r: f64) -> Result<(f64, bool), EvalError> {
    Ok(match op {
        "+" => (l + r, true),
        "-" => (l - r, true),
        "*" => (l * r, true),
        "/" => (l / r, true),
        "%" => (l % r, true),
        "^" => (l.powf(r), true),
        "==" => (l, l == r),
        "!=" => (l, l != r),
        ">" => (l, l > r),
        "<" => (l, l < r),
        ">=" => (l, l >= r),
        "<=" => (l, l <= r),
        other => {
            return Err(EvalError::BadData(format!(
                "unsupported expression: operator '{other}' between these operands"
            )));
        }
    })
}

/// How the two sides of a vector operation are matched.
struct Matching<'m> {
    on: bool,
    names: Vec<String>,
    card: &'m VectorMatchCardinality,
}

impl Matching<'_> {
    fn new(modifier: Option<&BinModifier>) -> Matching<'_> {
        static ONE_TO_ONE: VectorMatchCardinality = VectorMatchCardinality::OneToOne;
        let Some(m) = modifier else {
            return Matching {
                on: false,
                names: Vec::new(),
                card: &ONE_TO_ONE,
            };
        };
        let (on, names) = match &m.matching {
            Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
            Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
            None => (false, Vec::new()),
        };
        Matching {
            on,
            names,
            card: &m.card,
        }
    }

    /// The labels two elements must share to match.
    fn signature(&self, l: &Labels) -> Labels {
        if self.on {
            l.keep(&self.names)
        } else {
            let mut s = l.remove(&self.names);
            s.drop_name();
            s
        }
    }
}

pub(crate) fn binary(ev: &Evaluator<'_>, b: &BinaryExpr, t: i64) -> Result<Value, EvalError> {
    let op = b.op.to_string();
    let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
    let lhs = ev.eval(&b.lhs, t)?;
    let rhs = ev.eval(&b.rhs, t)?;
    match (lhs, rhs) {
        (Value::Scalar(l), Value::Scalar(r)) => {
            let (v, keep) = elem_op(&op, l, r)?;
            Ok(Value::Scalar(if is_comparison(&op) {
                if keep { 1.0 } else { 0.0 }
            } else {
                v
            }))
        }
        (Value::Vector(l), Value::Scalar(r)) => vector_scalar(&op, l, r, false, return_bool),
        (Value::Scalar(l), Value::Vector(r)) => vector_scalar(&op, r, l, true, return_bool),
        (Value::Vector(l), Value::Vector(r)) => {
            let matching = Matching::new(b.modifier.as_ref());
            let out = match op.as_str() {
                "and" => set_and(l, r, &matching, false),
                "unless" => set_and(l, r, &matching, true),
                "or" => set_or(l, r, &matching),
                _ => vector_vector(&op, l, r, &matching, return_bool)?,
            };
            ensure_unique(&out)?;
            Ok(Value::Vector(out))
        }
        _ => Err(EvalError::BadData(format!(
            "unsupported expression: operands of '{op}' in '{b}'"
        ))),
    }
}

fn vector_scalar(
    op: &str,
    v: Vec<Elem>,
    scalar: f64,
    swap: bool,
    return_bool: bool,
) -> Result<Value, EvalError> {
    let mut out = Vec::with_capacity(v.len());
    for mut e in v {
        let (l, r) = if swap {
            (scalar, e.value)
        } else {
            (e.value, scalar)
        };
        let (mut value, mut keep) = elem_op(op, l, r)?;
        if is_comparison(op) && swap {
            value = r;
        }
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if keep {
            e.value = value;
            if is_arithmetic(op) || return_bool {
                e.labels.drop_name();
            }
            out.push(e);
        }
    }
    ensure_unique(&out)?;
    Ok(Value::Vector(out))
}

fn set_and(l: Vec<Elem>, r: Vec<Elem>, m: &Matching<'_>, unless: bool) -> Vec<Elem> {
    if r.is_empty() {
        return if unless { l } else { Vec::new() };
    }
    let right: HashSet<Labels> = r.iter().map(|e| m.signature(&e.labels)).collect();
    l.into_iter()
        .filter(|e| right.contains(&m.signature(&e.labels)) != unless)
        .collect()
}

fn set_or(l: Vec<Elem>, r: Vec<Elem>, m: &Matching<'_>) -> Vec<Elem> {
    let left: HashSet<Labels> = l.iter().map(|e| m.signature(&e.labels)).collect();
    let mut out = l;
    out.extend(
        r.into_iter()
            .filter(|e| !left.contains(&m.signature(&e.labels))),
    );
    out
}

/// Arithmetic and comparisons between two vectors (Prometheus's `VectorBinop`).
fn vector_vector(
    op: &str,
    lhs: Vec<Elem>,
    rhs: Vec<Elem>,
    m: &Matching<'_>,
    return_bool: bool,
) -> Result<Vec<Elem>, EvalError> {
    if lhs.is_empty() || rhs.is_empty() {
        return Ok(Vec::new());
    }
    let (one_to_many, include): (bool, &[String]) = match m.card {
        VectorMatchCardinality::OneToOne => (false, &[]),
        VectorMatchCardinality::ManyToOne(l) => (false, &l.labels),
        VectorMatchCardinality::OneToMany(l) => (true, &l.labels),
        VectorMatchCardinality::ManyToMany => {
            return Err(execution(format!(
                "many-to-many matching is only allowed for set operators, not '{op}'"
            )));
        }
    };
    let one_to_one = matches!(m.card, VectorMatchCardinality::OneToOne);
    let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let mut one_side: HashMap<Labels, &Elem> = HashMap::with_capacity(one.len());
    for e in &one {
        let sig = m.signature(&e.labels);
        if let Some(dup) = one_side.get(&sig) {
            let side = if one_to_many { "left" } else { "right" };
            return Err(execution(format!(
                "found duplicate series for the match group {sig} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                e.labels, dup.labels
            )));
        }
        one_side.insert(sig, e);
    }
    let mut matched: HashMap<Labels, HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for e in &many {
        let sig = m.signature(&e.labels);
        let Some(o) = one_side.get(&sig) else {
            continue;
        };
        let (vl, vr) = if one_to_many {
            (o.value, e.value)
        } else {
            (e.value, o.value)
        };
        let (mut value, keep) = elem_op(op, vl, vr)?;
        if return_bool {
            value = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        let mut labels = e.labels.clone();
        if is_arithmetic(op) {
            labels.drop_name();
        }
        if one_to_one {
            labels = if m.on {
                labels.keep(&m.names)
            } else {
                labels.remove(&m.names)
            };
        }
        for name in include {
            labels.set(name, o.labels.get(name));
        }
        if return_bool {
            labels.drop_name();
        }
        let inserted = matched.entry(sig);
        match inserted {
            std::collections::hash_map::Entry::Occupied(mut seen) => {
                if one_to_one {
                    return Err(execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                    ));
                }
                if !seen.get_mut().insert(labels.clone()) {
                    return Err(execution(
                        "multiple matches for labels: grouping labels must ensure unique matches",
                    ));
                }
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                let mut set = HashSet::new();
                set.insert(labels.clone());
                slot.insert(set);
            }
        }
        out.push(Elem { labels, value });
    }
    Ok(out)
}
