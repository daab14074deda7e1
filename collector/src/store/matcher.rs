//! Label matchers: the `{name op value}` terms of a PromQL series selector.
//!
//! Semantics follow Prometheus: a series that lacks a label has the value `""` for it, so
//! `foo=""` selects series without `foo`, `foo!="x"` also selects series without `foo`, and a
//! regex is anchored at both ends (`=~"ab"` does not match `"abc"`). The metric name is the
//! label `__name__`.

use std::fmt;

use regex::Regex;

/// How a matcher compares a label value.
#[derive(Clone, Debug)]
pub enum MatchOp {
    Equal(String),
    NotEqual(String),
    /// Anchored: compiled as `^(?:pattern)$`.
    Regex(Regex),
    /// Anchored: compiled as `^(?:pattern)$`.
    NotRegex(Regex),
}

/// One term of a series selector. `name` `__name__` matches the metric name.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
}

impl Matcher {
    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            op: MatchOp::Equal(value.into()),
        }
    }

    pub fn not_equal(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            op: MatchOp::NotEqual(value.into()),
        }
    }

    /// A regex matcher; `pattern` is anchored at both ends, as in PromQL.
    pub fn regex(name: impl Into<String>, pattern: &str) -> Result<Self, regex::Error> {
        Ok(Self {
            name: name.into(),
            op: MatchOp::Regex(anchored(pattern)?),
        })
    }

    /// A negated regex matcher; `pattern` is anchored at both ends, as in PromQL.
    pub fn not_regex(name: impl Into<String>, pattern: &str) -> Result<Self, regex::Error> {
        Ok(Self {
            name: name.into(),
            op: MatchOp::NotRegex(anchored(pattern)?),
        })
    }

    /// Whether a label value satisfies the matcher; pass `""` for a missing label.
    pub fn matches(&self, value: &str) -> bool {
        match &self.op {
            MatchOp::Equal(v) => v == value,
            MatchOp::NotEqual(v) => v != value,
            MatchOp::Regex(re) => re.is_match(value),
            MatchOp::NotRegex(re) => !re.is_match(value),
        }
    }
}

fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    // Parse the pattern on its own first: a pattern such as `)|(.*` is invalid alone but would
    // compile once wrapped, escaping the anchors.
    regex::RegexBuilder::new(pattern).build()?;
    Regex::new(&format!("^(?:{pattern})$"))
}

/// The pattern as the user wrote it, without the anchors [`anchored`] added.
fn unanchored(re: &Regex) -> &str {
    let s = re.as_str();
    s.strip_prefix("^(?:")
        .and_then(|s| s.strip_suffix(")$"))
        .unwrap_or(s)
}

impl fmt::Display for Matcher {
    /// PromQL notation: `name="value"`, `name!~"pattern"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (op, value) = match &self.op {
            MatchOp::Equal(v) => ("=", v.as_str()),
            MatchOp::NotEqual(v) => ("!=", v.as_str()),
            MatchOp::Regex(re) => ("=~", unanchored(re)),
            MatchOp::NotRegex(re) => ("!~", unanchored(re)),
        };
        write!(f, "{}{op}{value:?}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_and_not_equal() {
        let m = Matcher::equal("job", "api");
        assert!(m.matches("api"));
        assert!(!m.matches("api2"));
        assert!(!m.matches(""));
        let m = Matcher::not_equal("job", "api");
        assert!(!m.matches("api"));
        assert!(m.matches("db"));
        assert!(m.matches(""), "a missing label is not equal to 'api'");
    }

    #[test]
    fn regex_is_anchored() {
        let m = Matcher::regex("job", "ap.").unwrap();
        assert!(m.matches("api"));
        assert!(!m.matches("apis"));
        assert!(!m.matches("xapi"));
        let m = Matcher::regex("job", "a|b").unwrap();
        assert!(m.matches("a") && m.matches("b") && !m.matches("ab"));
        let m = Matcher::not_regex("job", "ap.").unwrap();
        assert!(!m.matches("api"));
        assert!(m.matches("apis"));
    }

    #[test]
    fn missing_label_is_the_empty_value() {
        assert!(Matcher::equal("x", "").matches(""));
        assert!(!Matcher::not_equal("x", "").matches(""));
        assert!(Matcher::regex("x", ".*").unwrap().matches(""));
        assert!(!Matcher::regex("x", ".+").unwrap().matches(""));
        assert!(Matcher::not_regex("x", ".+").unwrap().matches(""));
    }

    #[test]
    fn bad_regex_is_an_error_not_a_panic() {
        assert!(Matcher::regex("x", "(").is_err());
        assert!(Matcher::not_regex("x", "[z-a]").is_err());
        // The anchoring group cannot be closed early by the pattern.
        assert!(Matcher::regex("x", ")|(.*").is_err());
    }

    #[test]
    fn display_uses_promql_notation() {
        assert_eq!(Matcher::equal("a", "b\"c").to_string(), r#"a="b\"c""#);
        assert_eq!(
            Matcher::not_regex("__name__", "up|down")
                .unwrap()
                .to_string(),
            r#"__name__!~"up|down""#
        );
    }
}
