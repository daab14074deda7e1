//! One line of an exposition, lexed without knowing its neighbours: a sample (name, labels,
//! value, timestamp; an exemplar is checked to start right and skipped), a metadata line, a
//! comment or a blank line. Limits are checked on the borrowed text before anything is
//! allocated; label values are unescaped into a new string only when they hold a backslash.

use std::borrow::Cow;

use super::error::ParseErrorKind as E;
use super::{Format, MetricType, ParseLimits};

/// A lexed line. Names and plain label values borrow from the input.
#[derive(Debug, PartialEq)]
pub(super) enum Line<'a> {
    Blank,
    Comment,
    Help {
        name: &'a str,
        text: Cow<'a, str>,
    },
    Type {
        name: &'a str,
        metric_type: MetricType,
    },
    Unit {
        name: &'a str,
        unit: &'a str,
    },
    Eof,
    Sample(SampleLine<'a>),
}

/// Label pairs as lexed: names borrowed from the line, values unescaped only when they must be.
pub(super) type LexedLabels<'a> = Vec<(&'a str, Cow<'a, str>)>;

#[derive(Debug, PartialEq)]
pub(super) struct SampleLine<'a> {
    pub name: &'a str,
    /// Empty when the line was lexed with `Labels::Skip` (see [`lex_series`]).
    pub labels: LexedLabels<'a>,
    /// The series as written: the name and the label block, if any, up to its `}`.
    pub series_text: &'a str,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

/// Whether a sample line's label block is lexed (checked, unescaped) or only skipped over, for
/// a caller that has seen the same series text before and lexes it with [`lex_series`] only
/// when it has not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Labels {
    Lex,
    Skip,
}

/// Lexes one line, without its `\n` (a trailing `\r` is tolerated and dropped).
pub(super) fn lex<'a>(
    line: &'a str,
    format: Format,
    limits: &ParseLimits,
    labels: Labels,
) -> Result<Line<'a>, E> {
    if line.len() > limits.max_line_len {
        return Err(E::LineTooLong {
            len: line.len(),
            max: limits.max_line_len,
        });
    }
    let line = line.strip_suffix('\r').unwrap_or(line);
    // The text format ignores leading and trailing blanks; OpenMetrics has none to ignore.
    let line = line.trim_matches(is_blank);
    if line.is_empty() {
        return Ok(Line::Blank);
    }
    if let Some(rest) = line.strip_prefix('#') {
        return lex_comment(rest, format, limits);
    }
    lex_sample(line, format, limits, labels).map(Line::Sample)
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `# HELP name text`, `# TYPE name type`, `# UNIT name unit` (OpenMetrics), `# EOF`
/// (OpenMetrics); any other `#` line is a comment.
fn lex_comment<'a>(rest: &'a str, format: Format, limits: &ParseLimits) -> Result<Line<'a>, E> {
    let rest = rest.trim_start_matches(is_blank);
    let (keyword, rest) = split_token(rest);
    let om = format == Format::OpenMetrics;
    let what = match keyword {
        "HELP" => "HELP",
        "TYPE" => "TYPE",
        "UNIT" if om => "UNIT",
        "EOF" if om => {
            return if rest.is_empty() {
                Ok(Line::Eof)
            } else {
                Err(E::MalformedMetadata("EOF"))
            };
        }
        _ => return Ok(Line::Comment),
    };
    let (name, rest) = split_token(rest);
    if name.is_empty() {
        return Err(E::MalformedMetadata(what));
    }
    check_metric_name(name, limits)?;
    match what {
        "HELP" => Ok(Line::Help {
            name,
            text: unescape(rest),
        }),
        "TYPE" => {
            let (type_name, extra) = split_token(rest);
            if type_name.is_empty() || !extra.is_empty() {
                return Err(E::MalformedMetadata("TYPE"));
            }
            let metric_type = MetricType::from_name(type_name).ok_or(E::UnknownType)?;
            Ok(Line::Type { name, metric_type })
        }
        _ => Ok(Line::Unit { name, unit: rest }),
    }
}

/// The next blank-delimited token and what follows it, with leading blanks removed.
fn split_token(s: &str) -> (&str, &str) {
    let end = s.find(is_blank).unwrap_or(s.len());
    (&s[..end], s[end..].trim_start_matches(is_blank))
}

fn lex_sample<'a>(
    line: &'a str,
    format: Format,
    limits: &ParseLimits,
    lex_labels_as: Labels,
) -> Result<SampleLine<'a>, E> {
    let bytes = line.as_bytes();
    if bytes[0] == b'{' {
        return Err(if bytes.get(1) == Some(&b'"') {
            E::QuotedName
        } else {
            E::InvalidMetricName
        });
    }
    let name_end = bytes
        .iter()
        .position(|&c| !is_metric_name_byte(c))
        .unwrap_or(bytes.len());
    let name = &line[..name_end];
    check_metric_name(name, limits)?;
    let mut pos = skip_blanks(bytes, name_end);
    let mut labels = Vec::new();
    if bytes.get(pos) == Some(&b'{') {
        pos = match lex_labels_as {
            Labels::Lex => lex_labels(line, pos + 1, limits, &mut labels)?,
            Labels::Skip => skip_labels(bytes, pos + 1)?,
        };
    } else if pos == name_end && pos < bytes.len() {
        // Something glued to the name that cannot continue it, like `a-b 1` or `é 1`.
        return Err(E::InvalidMetricName);
    } else {
        pos = name_end;
    }
    let series_text = &line[..pos];
    let pos = skip_blanks(bytes, pos);
    let (value_text, rest) = split_token(&line[pos..]);
    if value_text.is_empty() {
        return Err(E::MissingValue);
    }
    let value = parse_value(value_text).ok_or(E::InvalidValue)?;
    let mut timestamp_ms = None;
    let mut rest = rest;
    if !rest.is_empty() && !rest.starts_with('#') {
        let (ts_text, after) = split_token(rest);
        timestamp_ms = Some(match format {
            Format::PrometheusText => ts_text.parse::<i64>().map_err(|_| E::InvalidTimestampMs)?,
            Format::OpenMetrics => {
                parse_seconds_as_ms(ts_text).ok_or(E::InvalidTimestampSeconds)?
            }
        });
        rest = after;
    }
    if let Some(exemplar) = rest.strip_prefix('#') {
        // Exemplars are skipped; only their start is checked, so a stray '#' is not taken for one.
        if !exemplar.trim_start_matches(is_blank).starts_with('{') {
            return Err(E::InvalidExemplar);
        }
    } else if !rest.is_empty() {
        return Err(E::TrailingText);
    }
    Ok(SampleLine {
        name,
        labels,
        series_text,
        value,
        timestamp_ms,
    })
}

/// Lexes the series text of a line lexed with `Labels::Skip` (the name and the label block as
/// [`SampleLine::series_text`] has them), with every check [`lex`] makes on them.
pub(super) fn lex_series<'a>(
    series_text: &'a str,
    limits: &ParseLimits,
) -> Result<(&'a str, LexedLabels<'a>), E> {
    let bytes = series_text.as_bytes();
    let name_end = bytes
        .iter()
        .position(|&c| !is_metric_name_byte(c))
        .unwrap_or(bytes.len());
    let name = &series_text[..name_end];
    check_metric_name(name, limits)?;
    let pos = skip_blanks(bytes, name_end);
    let mut labels = Vec::new();
    if bytes.get(pos) == Some(&b'{') {
        let end = lex_labels(series_text, pos + 1, limits, &mut labels)?;
        // `skip_labels` found the same end, or the line would not have got here; checked
        // anyway, so a disagreement is an error rather than a wrong series.
        if end != bytes.len() {
            return Err(E::ExpectedCommaOrBrace);
        }
    } else if name_end != bytes.len() {
        return Err(E::InvalidMetricName);
    }
    Ok((name, labels))
}

/// Finds the end of a label block from `pos` (just after `{`) without checking it: the
/// position after the first `}` outside a quoted value. A quoted value ends at the first `"`
/// not escaped by a backslash, as [`scan_quoted`] reads it.
fn skip_labels(bytes: &[u8], mut pos: usize) -> Result<usize, E> {
    let mut quoted = false;
    while pos < bytes.len() {
        match bytes[pos] {
            b'\\' if quoted => pos += 1,
            b'"' => quoted = !quoted,
            b'}' if !quoted => return Ok(pos + 1),
            _ => {}
        }
        pos += 1;
    }
    Err(if quoted {
        E::UnterminatedLabelValue
    } else {
        E::ExpectedCommaOrBrace
    })
}

/// Lexes `name="value", ...}` from `pos` (just after `{`); returns the position after `}`.
fn lex_labels<'a>(
    line: &'a str,
    mut pos: usize,
    limits: &ParseLimits,
    labels: &mut LexedLabels<'a>,
) -> Result<usize, E> {
    let bytes = line.as_bytes();
    loop {
        pos = skip_blanks(bytes, pos);
        match bytes.get(pos) {
            Some(b'}') => return Ok(pos + 1),
            Some(b'"') => return Err(E::QuotedName),
            None => return Err(E::ExpectedCommaOrBrace),
            Some(_) => {}
        }
        let start = pos;
        while pos < bytes.len() && is_label_name_byte(bytes[pos]) {
            pos += 1;
        }
        let name = &line[start..pos];
        check_label_name(name, limits)?;
        if labels.len() >= limits.max_labels_per_series {
            return Err(E::TooManyLabels {
                max: limits.max_labels_per_series,
            });
        }
        if labels.iter().any(|(n, _)| *n == name) {
            return Err(E::DuplicateLabel);
        }
        pos = skip_blanks(bytes, pos);
        if bytes.get(pos) != Some(&b'=') {
            return Err(E::ExpectedEquals);
        }
        pos = skip_blanks(bytes, pos + 1);
        if bytes.get(pos) != Some(&b'"') {
            return Err(E::ExpectedQuote);
        }
        let (raw, end) = scan_quoted(line, pos + 1, limits.max_label_value_len)?;
        labels.push((name, unescape(raw)));
        pos = skip_blanks(bytes, end + 1);
        match bytes.get(pos) {
            Some(b',') => pos += 1,
            Some(b'}') => return Ok(pos + 1),
            _ => return Err(E::ExpectedCommaOrBrace),
        }
    }
}

/// Finds the closing quote of a value starting at `start`; returns the raw (still escaped) text
/// and the quote's position. The unescaped length is checked against `max_len` on the way.
fn scan_quoted(line: &str, start: usize, max_len: usize) -> Result<(&str, usize), E> {
    let bytes = line.as_bytes();
    let mut pos = start;
    let mut len = 0usize;
    while pos < bytes.len() {
        match bytes[pos] {
            b'"' => {
                if len > max_len {
                    return Err(E::LabelValueTooLong { len, max: max_len });
                }
                return Ok((&line[start..pos], pos));
            }
            b'\\' => match bytes.get(pos + 1) {
                Some(b'\\' | b'"' | b'n') => {
                    pos += 2;
                    len += 1;
                }
                // An unknown escape stands for itself, backslash included (as Prometheus reads it).
                Some(_) => {
                    pos += 1;
                    len += 1;
                }
                None => break,
            },
            _ => {
                pos += 1;
                len += 1;
            }
        }
    }
    Err(E::UnterminatedLabelValue)
}

/// Replaces `\\`, `\"` and `\n`; other backslashes are kept as they are.
fn unescape(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.clone().next() {
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('n') => out.push('\n'),
            _ => {
                out.push('\\');
                continue;
            }
        }
        chars.next();
    }
    Cow::Owned(out)
}

/// A sample value: a decimal or exponent number, `NaN`, `+Inf`, `-Inf` (any case, as Go's
/// `ParseFloat` reads them; `Infinity` too). Go's hexadecimal floats are not accepted.
fn parse_value(text: &str) -> Option<f64> {
    // Rust's parser also takes "inf"/"nan" in any case and a leading '+', like Go's; it rejects
    // '_' and hexadecimal, which Go takes only with a base prefix nobody writes in expositions.
    text.parse::<f64>().ok()
}

/// An OpenMetrics timestamp (seconds, possibly fractional) as milliseconds, rounded.
fn parse_seconds_as_ms(text: &str) -> Option<i64> {
    let seconds = text.parse::<f64>().ok().filter(|s| s.is_finite())?;
    let ms = (seconds * 1000.0).round();
    // i64's range is ±9.2e18; as f64 the bound itself rounds up, so compare strictly below it.
    (ms.abs() < 9.0e18).then_some(ms as i64)
}

fn skip_blanks(bytes: &[u8], mut pos: usize) -> usize {
    while pos < bytes.len() && (bytes[pos] == b' ' || bytes[pos] == b'\t') {
        pos += 1;
    }
    pos
}

fn is_metric_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

fn is_label_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn check_metric_name(name: &str, limits: &ParseLimits) -> Result<(), E> {
    if name.len() > limits.max_name_len {
        return Err(E::NameTooLong {
            len: name.len(),
            max: limits.max_name_len,
        });
    }
    let ok = name.as_bytes().first().is_some_and(|c| !c.is_ascii_digit())
        && name.bytes().all(is_metric_name_byte);
    if ok {
        Ok(())
    } else {
        Err(E::InvalidMetricName)
    }
}

fn check_label_name(name: &str, limits: &ParseLimits) -> Result<(), E> {
    if name.len() > limits.max_name_len {
        return Err(E::NameTooLong {
            len: name.len(),
            max: limits.max_name_len,
        });
    }
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        return Err(E::InvalidLabelName);
    }
    if name.starts_with("__") {
        return Err(E::ReservedLabelName);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(line: &str) -> Result<SampleLine<'_>, E> {
        match lex(
            line,
            Format::PrometheusText,
            &ParseLimits::default(),
            Labels::Lex,
        )? {
            Line::Sample(s) => Ok(s),
            other => panic!("not a sample: {other:?}"),
        }
    }

    #[test]
    fn unescape_handles_known_and_unknown_escapes() {
        assert_eq!(unescape(r"plain"), Cow::Borrowed("plain"));
        assert_eq!(unescape(r#"a\\b\"c\nd"#), "a\\b\"c\nd");
        assert_eq!(unescape(r"\a\"), "\\a\\");
        assert_eq!(unescape(r"\\n"), "\\n");
    }

    #[test]
    fn blanks_around_tokens_are_allowed_in_text_format() {
        let s = sample("\t m { a = \"1\" , b=\"2\", } \t 3 \t 4 ").unwrap();
        assert_eq!(s.name, "m");
        assert_eq!(s.labels.len(), 2);
        assert_eq!((s.value, s.timestamp_ms), (3.0, Some(4)));
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(sample("9m 1"), Err(E::InvalidMetricName));
        assert_eq!(sample("a-b 1"), Err(E::InvalidMetricName));
        assert_eq!(sample("é 1"), Err(E::InvalidMetricName));
        assert_eq!(sample(r#"{"a.b"} 1"#), Err(E::QuotedName));
        assert_eq!(sample(r#"m{1a="x"} 1"#), Err(E::InvalidLabelName));
        assert_eq!(sample(r#"m{__x="x"} 1"#), Err(E::ReservedLabelName));
        assert_eq!(sample(r#"m{="x"} 1"#), Err(E::InvalidLabelName));
    }
}
