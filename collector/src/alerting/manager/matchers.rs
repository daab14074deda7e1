//! Alertmanager's label matchers: `name="value"`, `name!="value"`, `name=~"re"`, `name!~"re"`,
//! quoted or unquoted, alone or as a `{a="b", c=~"d"}` list. Regexes are anchored like
//! Alertmanager's (`^(?:re)$`); a missing label matches as the empty string.

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::super::LabelMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl MatchOp {
    fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }

    pub fn is_regex(self) -> bool {
        matches!(self, MatchOp::Regex | MatchOp::NotRegex)
    }

    pub fn is_equal(self) -> bool {
        matches!(self, MatchOp::Equal | MatchOp::Regex)
    }
}

/// One compiled matcher.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    re: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name && self.op == o.op && self.value == o.value
    }
}

impl Matcher {
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("matcher has an empty label name".into());
        }
        let re = if op.is_regex() {
            Some(
                regex::RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("invalid regex '{value}' for label {name}: {e}"))?,
            )
        } else {
            None
        };
        Ok(Self {
            name: name.to_owned(),
            op,
            value: value.to_owned(),
            re,
        })
    }

    pub fn matches(&self, labels: &LabelMap) -> bool {
        let v = labels.get(&self.name).map_or("", String::as_str);
        match (&self.op, &self.re) {
            (MatchOp::Equal, _) => v == self.value,
            (MatchOp::NotEqual, _) => v != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(v),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(v),
            _ => false,
        }
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.as_str(), self.value)
    }
}

/// All of `ms` match `labels` (an empty list matches everything).
pub fn all_match(ms: &[Matcher], labels: &LabelMap) -> bool {
    ms.iter().all(|m| m.matches(labels))
}

/// `{a="b", c=~"d"}`: a list as Alertmanager prints route keys.
pub fn list_string(ms: &[Matcher]) -> String {
    let parts: Vec<String> = ms.iter().map(ToString::to_string).collect();
    format!("{{{}}}", parts.join(","))
}

/// Parses one matcher or a `{...}` list of them, comma separated.
pub fn parse_list(input: &str) -> Result<Vec<Matcher>, String> {
    let s = input.trim();
    let s = match s.strip_prefix('{') {
        Some(inner) => inner
            .strip_suffix('}')
            .ok_or_else(|| format!("matcher list '{input}' is missing its closing '}}'"))?,
        None => s,
    };
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (m, after) = parse_one(rest).map_err(|e| format!("bad matcher '{input}': {e}"))?;
        out.push(m);
        rest = after.trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r.trim_start();
        } else if !rest.is_empty() {
            return Err(format!(
                "bad matcher '{input}': expected ',' before '{rest}'"
            ));
        }
    }
    Ok(out)
}

/// Parses exactly one matcher.
pub fn parse_matcher(input: &str) -> Result<Matcher, String> {
    let mut v = parse_list(input)?;
    match v.len() {
        1 => Ok(v.remove(0)),
        0 => Err(format!("bad matcher '{input}': it is empty")),
        _ => Err(format!("bad matcher '{input}': expected one matcher")),
    }
}

fn parse_one(s: &str) -> Result<(Matcher, &str), String> {
    let (name, rest) = if let Some(q) = s.strip_prefix('"') {
        let (n, r) = quoted(q)?;
        (n, r)
    } else {
        let end = s
            .find(|c: char| matches!(c, '=' | '!' | '~') || c.is_whitespace())
            .ok_or("no operator (=, !=, =~, !~)")?;
        (s[..end].to_owned(), &s[end..])
    };
    let name = name.trim().to_owned();
    let rest = rest.trim_start();
    let (op, rest) = if let Some(r) = rest.strip_prefix("=~") {
        (MatchOp::Regex, r)
    } else if let Some(r) = rest.strip_prefix("!~") {
        (MatchOp::NotRegex, r)
    } else if let Some(r) = rest.strip_prefix("!=") {
        (MatchOp::NotEqual, r)
    } else if let Some(r) = rest.strip_prefix('=') {
        (MatchOp::Equal, r)
    } else {
        return Err("no operator (=, !=, =~, !~)".into());
    };
    let rest = rest.trim_start();
    let (value, rest) = if let Some(q) = rest.strip_prefix('"') {
        quoted(q)?
    } else {
        let end = rest.find(',').unwrap_or(rest.len());
        (rest[..end].trim().to_owned(), &rest[end..])
    };
    Ok((Matcher::new(&name, op, &value)?, rest))
}

/// The rest of a double-quoted string (after the opening quote): its unescaped text and what
/// follows the closing quote.
fn quoted(s: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, e)) => out.push(e),
                None => break,
            },
            _ => out.push(c),
        }
    }
    Err("unterminated quoted string".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::alerting::label_map as labels;

    #[test]
    fn parses_every_operator_quoted_and_unquoted() {
        let l = labels(&[("severity", "critical"), ("job", "api")]);
        for (s, want) in [
            (r#"severity="critical""#, true),
            ("severity=critical", true),
            ("severity!=critical", false),
            (r#"job=~"a|api""#, true),
            (r#"job=~"ap""#, false),
            (r#"job!~"x.*""#, true),
            ("missing=\"\"", true),
            (r#""job" = "api""#, true),
        ] {
            let m = parse_matcher(s).expect(s);
            assert_eq!(m.matches(&l), want, "{s}");
        }
    }

    #[test]
    fn parses_lists_and_escapes() {
        let ms = parse_list(r#"{a="x,y", b=~"1|2", c!="q\"uote"}"#).expect("list");
        assert_eq!(ms.len(), 3);
        assert_eq!(ms[0].value, "x,y");
        assert_eq!(ms[2].value, "q\"uote");
        assert_eq!(list_string(&ms[..1]), r#"{a="x,y"}"#);
        assert!(parse_list("").expect("empty").is_empty());
    }

    #[test]
    fn refuses_garbage() {
        for s in [
            "novalue",
            r#"a="open"#,
            r#"a=~"(""#,
            "=x",
            "{a=b",
            r#"a="b" c="d""#,
        ] {
            assert!(parse_list(s).is_err(), "{s} should fail");
        }
    }
}
