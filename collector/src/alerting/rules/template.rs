//! The subset of Prometheus's Go templates that alert labels and annotations use:
//!
//! - variables: `$labels.name`, `.Labels.name`, `$value`, `.Value`, `index $labels "name"`;
//! - literals: `"strings"`, `` `raw strings` ``, numbers;
//! - functions: `humanize`, `humanize1024`, `humanizePercentage`, `humanizeDuration`,
//!   `toUpper`, `toLower`, `title`, `printf` (`%s %v %d %f %.Nf %e %g %.Ng %%`), `index`;
//! - pipelines (`{{ $value | humanizePercentage }}`), trim markers (`{{-`, `-}}`) and comments
//!   (`{{/* ... */}}`).
//!
//! Anything else (`if`, `range`, `query`, `$externalLabels`, ...) is refused when the rule file
//! is loaded, never at fire time. Numbers print as Go prints a `float64` (`%v`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A parsed template; [`Template::render`] expands it.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Action(Vec<Command>),
}

/// One command of a pipeline: an operand alone, or a function with arguments.
#[derive(Debug, Clone, PartialEq)]
enum Command {
    Operand(Operand),
    Call(Func, Vec<Operand>),
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Label(String),
    Labels,
    Value,
    Str(String),
    Num(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Humanize,
    Humanize1024,
    HumanizePercentage,
    HumanizeDuration,
    ToUpper,
    ToLower,
    Title,
    Printf,
    Index,
}

impl Func {
    fn from_name(name: &str) -> Option<Func> {
        Some(match name {
            "humanize" => Func::Humanize,
            "humanize1024" => Func::Humanize1024,
            "humanizePercentage" => Func::HumanizePercentage,
            "humanizeDuration" => Func::HumanizeDuration,
            "toUpper" => Func::ToUpper,
            "toLower" => Func::ToLower,
            "title" => Func::Title,
            "printf" => Func::Printf,
            "index" => Func::Index,
            _ => return None,
        })
    }
}

/// A value while a pipeline runs.
#[derive(Debug, Clone)]
enum Val<'a> {
    Str(String),
    Num(f64),
    Labels(&'a BTreeMap<String, String>),
}

impl Template {
    /// Parses `src`; the error names the construct refused.
    pub fn parse(src: &str) -> Result<Template, String> {
        let mut nodes = Vec::new();
        let mut rest = src;
        let mut trim_next = false;
        while !rest.is_empty() {
            let (text, after) = match rest.find("{{") {
                Some(i) => (&rest[..i], Some(&rest[i + 2..])),
                None => (rest, None),
            };
            let mut text = text;
            if trim_next {
                text = text.trim_start();
            }
            let Some(after) = after else {
                push_text(&mut nodes, text);
                break;
            };
            let (after, trim_before) = match after.strip_prefix("- ") {
                Some(a) => (a, true),
                None => match after.strip_prefix("-}}") {
                    Some(_) => return Err("bad trim marker in \"{{-}}\"".into()),
                    None => (after, false),
                },
            };
            if trim_before {
                text = text.trim_end();
            }
            push_text(&mut nodes, text);
            let (commands, consumed, trim_after) = parse_action(after)?;
            if let Some(c) = commands {
                nodes.push(Node::Action(c));
            }
            rest = &after[consumed..];
            trim_next = trim_after;
        }
        Ok(Template { nodes })
    }

    /// Whether the template has no actions (its text is the output).
    pub fn is_plain(&self) -> bool {
        self.nodes.iter().all(|n| matches!(n, Node::Text(_)))
    }

    /// Expands the template for a series' `labels` and `value`. A run-time error (a string
    /// that is not a number given to `humanize`, ...) expands to
    /// `<error expanding template: ...>`, as Prometheus does.
    pub fn render(&self, labels: &BTreeMap<String, String>, value: f64) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Action(cmds) => match run(cmds, labels, value) {
                    Ok(s) => out.push_str(&s),
                    Err(e) => return format!("<error expanding template: {e}>"),
                },
            }
        }
        out
    }
}

fn push_text(nodes: &mut Vec<Node>, text: &str) {
    if !text.is_empty() {
        nodes.push(Node::Text(text.to_owned()));
    }
}

#[derive(Debug, PartialEq)]
enum Tok {
    Var(String),
    Field(String),
    Ident(String),
    Str(String),
    Num(f64),
    Pipe,
}

/// Parses one action after its `{{`: the commands (`None` for a comment), the bytes consumed
/// up to and including `}}`, and whether it ends with a trim marker.
fn parse_action(s: &str) -> Result<(Option<Vec<Command>>, usize, bool), String> {
    if let Some(body) = s.strip_prefix("/*") {
        let end = body.find("*/").ok_or("unterminated comment")?;
        let after = &body[end + 2..];
        let (consumed, trim) = if after.starts_with(" -}}") {
            (4, true)
        } else if after.starts_with("}}") {
            (2, false)
        } else {
            return Err("comment must end the action".into());
        };
        return Ok((None, 2 + end + 2 + consumed, trim));
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut toks = Vec::new();
    let end_trim;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            return Err("unclosed action: missing \"}}\"".into());
        }
        if s[i..].starts_with("}}") {
            i += 2;
            end_trim = false;
            break;
        }
        if s[i..].starts_with("-}}") && i > 0 && b[i - 1].is_ascii_whitespace() {
            i += 3;
            end_trim = true;
            break;
        }
        let c = b[i];
        if c == b'|' {
            toks.push(Tok::Pipe);
            i += 1;
        } else if c == b'"' {
            let (v, n) = quoted(&s[i..])?;
            toks.push(Tok::Str(v));
            i += n;
        } else if c == b'`' {
            let end = s[i + 1..].find('`').ok_or("unterminated raw string")?;
            toks.push(Tok::Str(s[i + 1..i + 1 + end].to_owned()));
            i += end + 2;
        } else if c == b'$' || c == b'.' || c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            let word = &s[start..i];
            toks.push(match c {
                b'$' => Tok::Var(word.to_owned()),
                b'.' => Tok::Field(word.to_owned()),
                _ => Tok::Ident(word.to_owned()),
            });
        } else if c.is_ascii_digit() || c == b'-' || c == b'+' {
            let start = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            let word = &s[start..i];
            let n: f64 = word
                .replace('_', "")
                .parse()
                .map_err(|_| format!("bad number {word:?}"))?;
            toks.push(Tok::Num(n));
        } else {
            let ch = s[i..].chars().next().unwrap_or('?');
            return Err(format!("unexpected {ch:?} in action"));
        }
    }
    if toks.is_empty() {
        return Err("empty action".into());
    }
    let mut commands = Vec::new();
    for part in toks.split(|t| *t == Tok::Pipe) {
        commands.push(command(part, commands.is_empty())?);
    }
    Ok((Some(commands), i, end_trim))
}

fn quoted(s: &str) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                Some(other) => return Err(format!("unsupported escape \\{other}")),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err("unterminated string".into())
}

fn operand(t: &Tok) -> Result<Operand, String> {
    Ok(match t {
        Tok::Var(v) if v == "$value" => Operand::Value,
        Tok::Var(v) if v == "$labels" => Operand::Labels,
        Tok::Field(v) if v == ".Value" => Operand::Value,
        Tok::Field(v) if v == ".Labels" => Operand::Labels,
        Tok::Var(v) | Tok::Field(v) => {
            let name = v
                .strip_prefix("$labels.")
                .or_else(|| v.strip_prefix(".Labels."))
                .ok_or_else(|| format!("unsupported variable {v}"))?;
            if name.is_empty() || name.contains('.') {
                return Err(format!("unsupported variable {v}"));
            }
            Operand::Label(name.to_owned())
        }
        Tok::Str(s) => Operand::Str(s.clone()),
        Tok::Num(n) => Operand::Num(*n),
        Tok::Ident(name) => return Err(format!("function {name:?} cannot be an argument")),
        Tok::Pipe => return Err("empty command in pipeline".into()),
    })
}

fn command(toks: &[Tok], first: bool) -> Result<Command, String> {
    match toks {
        [] => Err("empty command in pipeline".into()),
        [Tok::Ident(name), args @ ..] => {
            let f = match Func::from_name(name) {
                Some(f) => f,
                None if matches!(name.as_str(), "if" | "range" | "with" | "end" | "else") => {
                    return Err(format!("unsupported template action {name:?}"));
                }
                None => return Err(format!("function {name:?} not defined")),
            };
            let args = args.iter().map(operand).collect::<Result<Vec<_>, _>>()?;
            // Arguments including a piped-in value.
            let n = args.len() + usize::from(!first);
            let ok = match f {
                Func::Printf => n >= 1,
                Func::Index => n == 2,
                _ => n == 1,
            };
            if !ok {
                return Err(format!("wrong number of arguments for {name}"));
            }
            Ok(Command::Call(f, args))
        }
        [one] if first => Ok(Command::Operand(operand(one)?)),
        [_] => Err("only a function can follow '|'".into()),
        _ => Err("an operand cannot take arguments".into()),
    }
}

fn run(cmds: &[Command], labels: &BTreeMap<String, String>, value: f64) -> Result<String, String> {
    let mut cur: Option<Val<'_>> = None;
    for cmd in cmds {
        let v = match cmd {
            Command::Operand(o) => eval_operand(o, labels, value),
            Command::Call(f, args) => {
                let mut vals: Vec<Val<'_>> = args
                    .iter()
                    .map(|a| eval_operand(a, labels, value))
                    .collect();
                if let Some(p) = cur.take() {
                    vals.push(p);
                }
                call(*f, vals)?
            }
        };
        cur = Some(v);
    }
    match cur {
        Some(Val::Str(s)) => Ok(s),
        Some(Val::Num(n)) => Ok(go_float(n)),
        Some(Val::Labels(l)) => {
            let mut s = String::from("map[");
            for (i, (k, v)) in l.iter().enumerate() {
                if i > 0 {
                    s.push(' ');
                }
                let _ = write!(s, "{k}:{v}");
            }
            s.push(']');
            Ok(s)
        }
        None => Ok(String::new()),
    }
}

fn eval_operand<'a>(o: &Operand, labels: &'a BTreeMap<String, String>, value: f64) -> Val<'a> {
    match o {
        Operand::Label(n) => Val::Str(labels.get(n).cloned().unwrap_or_default()),
        Operand::Labels => Val::Labels(labels),
        Operand::Value => Val::Num(value),
        Operand::Str(s) => Val::Str(s.clone()),
        Operand::Num(n) => Val::Num(*n),
    }
}

fn to_num(v: &Val<'_>) -> Result<f64, String> {
    match v {
        Val::Num(n) => Ok(*n),
        Val::Str(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("can't convert {s:?} to float")),
        Val::Labels(_) => Err("can't convert a label map to float".into()),
    }
}

fn to_str(v: &Val<'_>) -> Result<String, String> {
    match v {
        Val::Str(s) => Ok(s.clone()),
        Val::Num(n) => Ok(go_float(*n)),
        Val::Labels(_) => Err("expected a string, got a label map".into()),
    }
}

fn call<'a>(f: Func, mut args: Vec<Val<'a>>) -> Result<Val<'a>, String> {
    let first = || {
        args.first()
            .cloned()
            .ok_or_else(|| "missing argument".to_owned())
    };
    Ok(match f {
        Func::Humanize => Val::Str(humanize(to_num(&first()?)?)),
        Func::Humanize1024 => Val::Str(humanize1024(to_num(&first()?)?)),
        Func::HumanizePercentage => Val::Str(format!("{}%", go_g(to_num(&first()?)? * 100.0, 4))),
        Func::HumanizeDuration => Val::Str(humanize_duration(to_num(&first()?)?)),
        Func::ToUpper => Val::Str(to_str(&first()?)?.to_uppercase()),
        Func::ToLower => Val::Str(to_str(&first()?)?.to_lowercase()),
        Func::Title => Val::Str(title(&to_str(&first()?)?)),
        Func::Index => {
            let key = to_str(&args.pop().ok_or("missing argument")?)?;
            match args.pop() {
                Some(Val::Labels(l)) => Val::Str(l.get(&key).cloned().unwrap_or_default()),
                _ => return Err("index expects $labels and a name".into()),
            }
        }
        Func::Printf => {
            let fmt = to_str(&args.first().cloned().ok_or("missing format")?)?;
            Val::Str(printf(&fmt, &args[1..])?)
        }
    })
}

fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !c.is_alphanumeric();
    }
    out
}

/// Go's `fmt.Sprintf` for the verbs templates use.
fn printf(fmt: &str, args: &[Val<'_>]) -> Result<String, String> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut prec: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = 0usize;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                p = p.saturating_mul(10).saturating_add(d as usize).min(64);
                chars.next();
            }
            prec = Some(p);
        }
        let verb = chars.next().ok_or("format ends with '%'")?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        match verb {
            's' | 'v' | 'q' => {
                let s = to_str(arg)?;
                if verb == 'q' {
                    let _ = write!(out, "{s:?}");
                } else {
                    out.push_str(&s);
                }
            }
            'd' => {
                let n = to_num(arg)?;
                let _ = write!(out, "{}", n.trunc() as i64);
            }
            'f' | 'F' => {
                let n = to_num(arg)?;
                out.push_str(
                    &go_special(n).unwrap_or_else(|| format!("{n:.*}", prec.unwrap_or(6))),
                );
            }
            'e' => {
                let n = to_num(arg)?;
                out.push_str(&go_special(n).unwrap_or_else(|| go_e(n, prec.unwrap_or(6))));
            }
            'g' => {
                let n = to_num(arg)?;
                out.push_str(&match prec {
                    Some(p) => go_g(n, p.max(1)),
                    None => go_float(n),
                });
            }
            other => return Err(format!("unsupported printf verb %{other}")),
        }
    }
    Ok(out)
}

fn go_special(v: f64) -> Option<String> {
    if v.is_nan() {
        Some("NaN".into())
    } else if v.is_infinite() {
        Some(if v > 0.0 { "+Inf" } else { "-Inf" }.into())
    } else {
        None
    }
}

/// Decimal digits of `|v|` (no trailing zeros, at least one digit) and the decimal point
/// position; `sig` significant digits, or the shortest exact form for `None`.
fn digits(v: f64, sig: Option<usize>) -> (Vec<u8>, i32) {
    let s = match sig {
        Some(p) => format!("{:.*e}", p.saturating_sub(1), v.abs()),
        None => format!("{:e}", v.abs()),
    };
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut d: Vec<u8> = mant.bytes().filter(u8::is_ascii_digit).collect();
    while d.len() > 1 && d.last() == Some(&b'0') {
        d.pop();
    }
    if d == [b'0'] {
        return (d, 1);
    }
    (d, exp + 1)
}

fn fmt_e(neg: bool, d: &[u8], dp: i32, decimals: usize) -> String {
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    s.push(d[0] as char);
    if decimals > 0 {
        s.push('.');
        for i in 1..=decimals {
            s.push(*d.get(i).unwrap_or(&b'0') as char);
        }
    }
    let exp = if d == [b'0'] { 0 } else { dp - 1 };
    let _ = write!(s, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    s
}

fn fmt_f(neg: bool, d: &[u8], dp: i32, decimals: usize) -> String {
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    let digit = |i: i32| -> char {
        if i >= 0 {
            *d.get(i as usize).unwrap_or(&b'0') as char
        } else {
            '0'
        }
    };
    if dp > 0 {
        for i in 0..dp {
            s.push(digit(i));
        }
    } else {
        s.push('0');
    }
    if decimals > 0 {
        s.push('.');
        for i in 0..decimals as i32 {
            s.push(digit(dp + i));
        }
    }
    s
}

/// Go's `%g`-family formatting: `prec` significant digits, or the shortest form (`%v`).
fn go_g_impl(v: f64, prec: Option<usize>) -> String {
    if let Some(s) = go_special(v) {
        return s;
    }
    let neg = v.is_sign_negative() && v != 0.0;
    let (d, dp) = digits(v, prec);
    let nd = d.len() as i32;
    let mut p = prec.map_or(nd, |p| p as i32);
    let eprec = match prec {
        None => 6,
        Some(_) if p > nd && nd >= dp => nd,
        Some(_) => p,
    };
    let exp = dp - 1;
    if exp < -4 || exp >= eprec {
        if p > nd {
            p = nd;
        }
        return fmt_e(neg, &d, dp, (p - 1).max(0) as usize);
    }
    if p > dp {
        p = nd;
    }
    fmt_f(neg, &d, dp, (p - dp).max(0) as usize)
}

/// `fmt.Sprint(float64)`.
pub fn go_float(v: f64) -> String {
    go_g_impl(v, None)
}

/// `fmt.Sprintf("%.<prec>g", v)`.
pub fn go_g(v: f64, prec: usize) -> String {
    go_g_impl(v, Some(prec))
}

fn go_e(v: f64, prec: usize) -> String {
    let neg = v.is_sign_negative() && v != 0.0;
    let (d, dp) = digits(v, Some(prec + 1));
    fmt_e(neg, &d, dp, prec)
}

fn humanize_with(v: f64, base: f64, big: &[&str], small: &[&str]) -> String {
    if v == 0.0 || !v.is_finite() {
        return go_g(v, 4);
    }
    let mut v = v;
    let mut prefix = "";
    if v.abs() >= 1.0 {
        for p in big {
            if v.abs() < base {
                break;
            }
            prefix = p;
            v /= base;
        }
    } else {
        for p in small {
            if v.abs() >= 1.0 {
                break;
            }
            prefix = p;
            v *= 1000.0;
        }
    }
    format!("{}{prefix}", go_g(v, 4))
}

const SMALL: [&str; 8] = ["m", "u", "n", "p", "f", "a", "z", "y"];

/// Prometheus's `humanize`: SI prefixes, 4 significant digits.
pub fn humanize(v: f64) -> String {
    humanize_with(v, 1000.0, &["k", "M", "G", "T", "P", "E", "Z", "Y"], &SMALL)
}

fn humanize1024(v: f64) -> String {
    if v.abs() < 1.0 {
        return go_g(v, 4);
    }
    humanize_with(
        v,
        1024.0,
        &["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"],
        &[],
    )
}

fn humanize_duration(v: f64) -> String {
    if !v.is_finite() {
        return go_g(v, 4);
    }
    if v == 0.0 {
        return format!("{}s", go_g(v, 4));
    }
    if v.abs() >= 1.0 {
        let (sign, v) = if v < 0.0 { ("-", -v) } else { ("", v) };
        let d = v as i64;
        let (s, m, h, days) = (d % 60, (d / 60) % 60, (d / 3600) % 24, d / 86400);
        return if days != 0 {
            format!("{sign}{days}d {h}h {m}m {s}s")
        } else if h != 0 {
            format!("{sign}{h}h {m}m {s}s")
        } else if m != 0 {
            format!("{sign}{m}m {s}s")
        } else {
            format!("{sign}{}s", go_g(v, 4))
        };
    }
    let mut v = v;
    let mut prefix = "";
    for p in SMALL {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", go_g(v, 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, labels: &[(&str, &str)], value: f64) -> String {
        let l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Template::parse(src).unwrap().render(&l, value)
    }

    #[test]
    fn variables_and_pipelines() {
        let l = [("instance", "web-1"), ("job", "api")];
        assert_eq!(
            render("{{ $labels.instance }} is at {{ $value }}", &l, 95.5),
            "web-1 is at 95.5"
        );
        assert_eq!(render("{{ .Labels.job }}/{{ .Value }}", &l, 1.0), "api/1");
        assert_eq!(render("{{ $labels.job | toUpper }}", &l, 0.0), "API");
        assert_eq!(render("{{ index $labels \"job\" }}", &l, 0.0), "api");
        assert_eq!(render("{{ $labels.missing }}", &l, 0.0), "");
        assert_eq!(render("a {{- $value -}} b", &l, 2.0), "a2b");
        assert_eq!(render("x{{/* note */}}y", &l, 2.0), "xy");
        assert_eq!(render("plain", &l, 2.0), "plain");
        assert!(Template::parse("plain").unwrap().is_plain());
    }

    #[test]
    fn number_formatting_matches_go() {
        assert_eq!(go_float(95.0), "95");
        assert_eq!(go_float(0.5), "0.5");
        assert_eq!(go_float(1e6), "1e+06");
        assert_eq!(go_float(123456.0), "123456");
        assert_eq!(go_float(1234567.0), "1.234567e+06");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(-2.5), "-2.5");
        assert_eq!(go_float(f64::NAN), "NaN");
        assert_eq!(go_g(1234.5678, 4), "1235");
        assert_eq!(go_g(12.34, 4), "12.34");
        assert_eq!(go_g(100.0, 4), "100");
        assert_eq!(go_g(1.5, 4), "1.5");
        assert_eq!(go_g(12345.0, 4), "1.234e+04");
    }

    #[test]
    fn functions() {
        assert_eq!(render("{{ humanize $value }}", &[], 1234567.0), "1.235M");
        assert_eq!(render("{{ humanize $value }}", &[], 0.0012), "1.2m");
        assert_eq!(render("{{ $value | humanize }}", &[], 999.0), "999");
        assert_eq!(render("{{ humanize1024 $value }}", &[], 2048.0), "2ki");
        assert_eq!(
            render("{{ $value | humanizePercentage }}", &[], 0.256),
            "25.6%"
        );
        assert_eq!(
            render("{{ humanizeDuration $value }}", &[], 3723.0),
            "1h 2m 3s"
        );
        assert_eq!(render("{{ humanizeDuration $value }}", &[], 0.25), "250ms");
        assert_eq!(render("{{ printf \"%.2f\" $value }}", &[], 5.4321), "5.43");
        assert_eq!(
            render(
                "{{ printf \"%s=%d%%\" $labels.a $value }}",
                &[("a", "x")],
                7.9
            ),
            "x=7%"
        );
        assert_eq!(
            render("{{ title \"hello world\" }}", &[], 0.0),
            "Hello World"
        );
        assert_eq!(
            render("{{ humanize $labels.a }}", &[("a", "nope")], 0.0),
            "<error expanding template: can't convert \"nope\" to float>"
        );
    }

    #[test]
    fn refused_at_parse() {
        for bad in [
            "{{ if $value }}x{{ end }}",
            "{{ query \"up\" }}",
            "{{ $externalLabels.x }}",
            "{{ $labels.a.b }}",
            "{{ $value",
            "{{ }}",
            "{{ $value | }}",
            "{{ humanize }}",
            "{{ humanize $value $value }}",
            "{{ $value $value }}",
            "{{ \"open }}",
            "{{ $value | $labels.a }}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
