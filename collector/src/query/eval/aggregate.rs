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
    value: f64,
    mean: f64,
    count: f64,
    members: Vec<usize>,
}

pub(crate) fn aggregate(ev: &Evaluator<'_>, a: &AggregateExpr, t: i64) -> Result<Value, EvalError> {
    let op = a.op.to_string();
    let (by, mut names): (bool, Vec<String>) = match &a.modifier {
        None => (true, Vec::new()),
        Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
        Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
    };
    if !by {
        names.push("__name__".to_owned());
    }
    let param = a.param.as_deref();
    let mut k = 0i64;
    let mut q = 0.0;
    let mut value_label = String::new();
    match op.as_str() {
        "topk" | "bottomk" | "quantile" => {
            let p = ev.eval_scalar(
                param.ok_or_else(|| EvalError::BadData(format!("{op} needs a parameter")))?,
                t,
            )?;
            if op == "quantile" {
                q = p;
            } else {
                k = if p.is_nan() { 0 } else { p as i64 };
                if k < 1 {
                    return Ok(Value::Vector(Vec::new()));
                }
            }
        }
        "count_values" => {
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
    if op == "count_values" {
        for e in &mut input {
            e.labels.set(&value_label, &format_value(e.value));
        }
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<Labels, usize> = HashMap::new();
    for (i, e) in input.iter().enumerate() {
        let key = if by {
            e.labels.keep(&names)
        } else {
            e.labels.remove(&names)
        };
        let v = e.value;
        let Some(&gi) = index.get(&key) else {
            index.insert(key.clone(), groups.len());
            groups.push(Group {
                labels: key,
                value: match op.as_str() {
                    "stddev" | "stdvar" => 0.0,
                    "group" => 1.0,
                    _ => v,
                },
                mean: v,
                count: 1.0,
                members: vec![i],
            });
            continue;
        };
        let g = &mut groups[gi];
        g.members.push(i);
        match op.as_str() {
            "sum" => g.value += v,
            "avg" => {
                g.count += 1.0;
                if g.mean.is_infinite() {
                    if v.is_infinite() && (g.mean > 0.0) == (v > 0.0) {
                        continue;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        continue;
                    }
                }
                g.mean += v / g.count - g.mean / g.count;
            }
            "max" if g.value < v || g.value.is_nan() => g.value = v,
            "min" if g.value > v || g.value.is_nan() => g.value = v,
            "count" | "count_values" => g.count += 1.0,
            "stddev" | "stdvar" => {
                g.count += 1.0;
                let delta = v - g.mean;
                g.mean += delta / g.count;
                g.value += delta * (v - g.mean);
            }
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let value = match op.as_str() {
            "avg" => g.mean,
            "count" | "count_values" => g.count,
            "stdvar" => g.value / g.count,
            "stddev" => (g.value / g.count).sqrt(),
            "quantile" => {
                let mut values: Vec<f64> = g.members.iter().map(|&i| input[i].value).collect();
                quantile(q, &mut values)
            }
            "topk" | "bottomk" => {
                let mut members = g.members;
                let desc = op == "topk";
                members.sort_by(|&x, &y| nan_last(input[x].value, input[y].value, desc));
                let n = usize::try_from(k).unwrap_or(usize::MAX).min(members.len());
                out.extend(members[..n].iter().map(|&i| input[i].clone()));
                continue;
            }
            _ => g.value,
        };
        out.push(Elem {
            labels: g.labels,
            value,
        });
    }
    Ok(Value::Vector(out))
}
