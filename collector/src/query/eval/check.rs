//! What is refused before evaluation: queries nested deeper than the stack allows (before
//! parsing), and every construct outside the supported subset (before any data is read), each
//! with a `bad_data` error naming it.

use promql_parser::parser::value::ValueType;
use promql_parser::parser::{self, Expr};

use super::select::{self, unwrap_parens};
use super::{EvalError, unsupported};

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

/// Whether each step of a range query of `query` depends on its own time alone (and on
/// samples at or before it): no `@` modifier (which evaluates at the query's start, end or a
/// fixed time) and no negative offset (which reads samples after the step). What a results
/// cache may keep per step. False for what does not parse.
pub fn step_invariant(query: &str) -> bool {
    fn walk(expr: &Expr) -> bool {
        use promql_parser::parser::Offset;
        let selector = |vs: &parser::VectorSelector| {
            vs.at.is_none() && !matches!(vs.offset, Some(Offset::Neg(_)))
        };
        match expr {
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) => true,
            Expr::Paren(p) => walk(&p.expr),
            Expr::Unary(u) => walk(&u.expr),
            Expr::VectorSelector(vs) => selector(vs),
            Expr::MatrixSelector(ms) => selector(&ms.vs),
            Expr::Subquery(_) | Expr::Extension(_) => false,
            Expr::Aggregate(a) => a.param.as_deref().is_none_or(walk) && walk(&a.expr),
            Expr::Binary(b) => walk(&b.lhs) && walk(&b.rhs),
            Expr::Call(c) => c.args.args.iter().all(|a| walk(a)),
        }
    }
    parse(query).is_ok_and(|e| walk(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_depend_on_their_own_time_unless_at_or_a_negative_offset() {
        for q in [
            "up",
            "rate(x[5m])",
            "sum by (a) (rate(x[5m] offset 1h)) / on (a) group_left count(y)",
            "time() - timestamp(z)",
            "topk(3, -x)",
            "label_replace(x, \"a\", \"$1\", \"b\", \"(.*)\")",
        ] {
            assert!(step_invariant(q), "{q}");
        }
        for q in [
            "x @ end()",
            "rate(x[5m] @ start())",
            "x @ 1700000000",
            "x offset -5m",
            "sum(rate(x[1m] offset -1m))",
            "1 + (y @ 100)",
            "rate(x[5m])[1h:1m]",
            "not a query (",
        ] {
            assert!(!step_invariant(q), "{q}");
        }
    }
}
