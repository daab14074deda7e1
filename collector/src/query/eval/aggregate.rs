//! Aggregation operators with `by`/`without`, as Prometheus's `aggregation` in engine.go:
//! groups in order of first appearance, `by` keeps only the listed labels, `without` drops the
//! listed ones and the metric name; `topk`/`bottomk` keep their elements' full labels.

use promql_parser::parser::{AggregateExpr, LabelModifier};
use sonde_common::telemetry::format_value;
// Seeded per process (foldhash): labels come from senders, so hashing must not be
// predictable; SipHash was a visible share of range queries.
use foldhash::{HashMap, HashMapExt};

use super::functions::{nan_last, quantile};
use super::{Elem, EvalError, Evaluator, Labels, Value, execution};

struct Group {
    labels: Labels,
    acc: Acc,
    members: Vec<usize>,
}

/// An aggregation operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Sum,
    Avg,
    Max,
    Min,
    Count,
    CountValues,
    Group,
    Stddev,
    Stdvar,
    Quantile,
    Topk,
    Bottomk,
    /// Any other: the value of each group's first element.
    Other,
}

impl Op {
    pub(crate) fn parse(op: &str) -> Op {
        match op {
            "sum" => Op::Sum,
            "avg" => Op::Avg,
            "max" => Op::Max,
            "min" => Op::Min,
            "count" => Op::Count,
            "count_values" => Op::CountValues,
            "group" => Op::Group,
            "stddev" => Op::Stddev,
            "stdvar" => Op::Stdvar,
            "quantile" => Op::Quantile,
            "topk" => Op::Topk,
            "bottomk" => Op::Bottomk,
            _ => Op::Other,
        }
    }

    /// Whether a group's value is folded from its elements' values one by one ([`Acc`]),
    /// without a parameter.
    pub(crate) fn is_fold(self) -> bool {
        matches!(
            self,
            Op::Sum | Op::Avg | Op::Max | Op::Min | Op::Count | Op::Group | Op::Stddev | Op::Stdvar
        )
    }
}

/// A group's running value, folded from its elements' values in order, as Prometheus's
/// `aggregation` does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Acc {
    value: f64,
    mean: f64,
    /// Elements folded in for `count`, `avg`, `stddev` and `stdvar`; 1 for the others. Never 0
    /// once a value was folded in: [`Acc::EMPTY`] is the only accumulator with none.
    count: f64,
}

impl Acc {
    /// No element yet.
    pub(crate) const EMPTY: Acc = Acc {
        value: 0.0,
        mean: 0.0,
        count: 0.0,
    };

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0.0
    }

    /// The group's first element.
    pub(crate) fn first(op: Op, v: f64) -> Acc {
        Acc {
            value: match op {
                Op::Stddev | Op::Stdvar => 0.0,
                Op::Group => 1.0,
                _ => v,
            },
            mean: v,
            count: 1.0,
        }
    }

    /// Folds in the group's next element.
    pub(crate) fn add(&mut self, op: Op, v: f64) {
        match op {
            Op::Sum => self.value += v,
            Op::Avg => {
                self.count += 1.0;
                if self.mean.is_infinite() {
                    if v.is_infinite() && (self.mean > 0.0) == (v > 0.0) {
                        return;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        return;
                    }
                }
                self.mean += v / self.count - self.mean / self.count;
            }
            Op::Max if self.value < v || self.value.is_nan() => self.value = v,
            Op::Min if self.value > v || self.value.is_nan() => self.value = v,
            Op::Count | Op::CountValues => self.count += 1.0,
            Op::Stddev | Op::Stdvar => {
                self.count += 1.0;
                let delta = v - self.mean;
                self.mean += delta / self.count;
                self.value += delta * (v - self.mean);
            }
            _ => {}
        }
    }

    /// The group's value (for every operator but `quantile`, `topk` and `bottomk`).
    pub(crate) fn result(&self, op: Op) -> f64 {
        match op {
            Op::Avg => self.mean,
            Op::Count | Op::CountValues => self.count,
            Op::Stdvar => self.value / self.count,
            Op::Stddev => (self.value / self.count).sqrt(),
            _ => self.value,
        }
    }
}

/// The labels `by`/`without` group on: (`by`, the names kept or dropped; `without` drops the
/// metric name too).
pub(crate) fn grouping(a: &AggregateExpr) -> (bool, Vec<String>) {
    let (by, mut names): (bool, Vec<String>) = match &a.modifier {
        None => (true, Vec::new()),
        Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
        Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
    };
    if !by {
        names.push("__name__".to_owned());
    }
    (by, names)
}

/// The group an element with `labels` falls in.
pub(crate) fn group_key(labels: &Labels, by: bool, names: &[String]) -> Labels {
    if by {
        labels.keep(names)
    } else {
        labels.remove(names)
    }
}

pub(crate) fn aggregate(ev: &Evaluator<'_>, a: &AggregateExpr, t: i64) -> Result<Value, EvalError> {
    let op_name = a.op.to_string();
    let op = Op::parse(&op_name);
    let (by, mut names) = grouping(a);
    let param = a.param.as_deref();
    let mut k = 0i64;
    let mut q = 0.0;
    let mut value_label = String::new();
    match op {
        Op::Topk | Op::Bottomk | Op::Quantile => {
            let p = ev.eval_scalar(
                param.ok_or_else(|| EvalError::BadData(format!("{op_name} needs a parameter")))?,
                t,
            )?;
            if op == Op::Quantile {
                q = p;
            } else {
                k = if p.is_nan() { 0 } else { p as i64 };
                if k < 1 {
                    return Ok(Value::Vector(Vec::new()));
                }
            }
        }
        Op::CountValues => {
            value_label = ev.eval_string(
                param.ok_or_else(|| EvalError::BadData("count_values needs a label".into()))?,
                t,
            )?;
            if !sonde_common::model::is_valid_label_name(&value_label) {
                return Err(execution(format!("invalid label name {value_label:?}")));
            }
            if by {
                names.push(value_label.clone());
            }
        }
        _ => {}
    }
    let mut input = ev.eval_vector(&a.expr, t)?;
    if op == Op::CountValues {
        for e in &mut input {
            e.labels.set(&value_label, &format_value(e.value));
        }
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<Labels, usize> = HashMap::new();
    for (i, e) in input.iter().enumerate() {
        let key = group_key(&e.labels, by, &names);
        let v = e.value;
        let Some(&gi) = index.get(&key) else {
            index.insert(key.clone(), groups.len());
            groups.push(Group {
                labels: key,
                acc: Acc::first(op, v),
                members: vec![i],
            });
            continue;
        };
        let g = &mut groups[gi];
        g.members.push(i);
        g.acc.add(op, v);
    }
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let value = match op {
            Op::Quantile => {
                let mut values: Vec<f64> = g.members.iter().map(|&i| input[i].value).collect();
                quantile(q, &mut values)
            }
            Op::Topk | Op::Bottomk => {
                let mut members = g.members;
                let desc = op == Op::Topk;
                members.sort_by(|&x, &y| nan_last(input[x].value, input[y].value, desc));
                let n = usize::try_from(k).unwrap_or(usize::MAX).min(members.len());
                out.extend(members[..n].iter().map(|&i| input[i].clone()));
                continue;
            }
            _ => g.acc.result(op),
        };
        out.push(Elem {
            labels: g.labels,
            value,
        });
    }
    Ok(Value::Vector(out))
}
