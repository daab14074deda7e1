//! StatsD and DogStatsD line parsing. Pure: a line in, a borrowed [`Line`] out, or a
//! [`BadLine`] reason that costs no allocation (bad input is counted by reason and skipped).
//!
//! Grammar: `name:value[:value...]|type[|@rate][|#tag:value,tag2:value2][|T<unix seconds>][|c:...]`
//! - types: `c` counter, `g` gauge (`+`/`-` prefix: delta), `ms` timer (milliseconds), `h`
//!   histogram, `d` distribution (treated as histogram), `s` set;
//! - `@rate` (0 < rate <= 1): a counter increment counts `value / rate`; a timer or histogram
//!   observation counts `1 / rate` times;
//! - DogStatsD extensions: `#tags`, several values in one line (`name:1:2:3|h`), and unknown
//!   `|x...` sections are ignored (container ids, timestamps).

/// The kind of a StatsD metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Timer,
    Histogram,
    Set,
}

/// A parsed line, borrowing from the packet.
#[derive(Clone, Debug, PartialEq)]
pub struct Line<'a> {
    pub name: &'a str,
    /// The value part (one or several values separated by `:`), parsed by [`Line::values`].
    pub raw_values: &'a str,
    pub kind: Kind,
    pub rate: f64,
    /// Raw DogStatsD tags (`a:1,b:2`), empty if none.
    pub tags: &'a str,
}

/// Why a line was skipped: the `reason` label of the bad-line counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadLine {
    Empty,
    NoValue,
    NoType,
    UnknownType,
    BadValue,
    BadRate,
    BadName,
    TooLong,
}

impl BadLine {
    pub fn reason(self) -> &'static str {
        match self {
            BadLine::Empty => "empty_name",
            BadLine::NoValue => "no_value",
            BadLine::NoType => "no_type",
            BadLine::UnknownType => "unknown_type",
            BadLine::BadValue => "bad_value",
            BadLine::BadRate => "bad_sample_rate",
            BadLine::BadName => "bad_name",
            BadLine::TooLong => "too_long",
        }
    }

    pub const ALL: [BadLine; 8] = [
        BadLine::Empty,
        BadLine::NoValue,
        BadLine::NoType,
        BadLine::UnknownType,
        BadLine::BadValue,
        BadLine::BadRate,
        BadLine::BadName,
        BadLine::TooLong,
    ];
}

/// Longest line accepted (a metric name and its tags); longer ones are refused as `too_long`.
pub const MAX_LINE: usize = 4096;

/// One value of a line: a number, or for gauges a signed delta; sets carry the raw member.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    Number(f64),
    Delta(f64),
    Member(&'a str),
}

impl<'a> Line<'a> {
    /// The line's values (several for DogStatsD's packed form).
    pub fn values(&self) -> impl Iterator<Item = Result<Value<'a>, BadLine>> + 'a {
        let kind = self.kind;
        self.raw_values
            .split(':')
            .map(move |v| parse_value(v, kind))
    }
}

fn parse_value(v: &str, kind: Kind) -> Result<Value<'_>, BadLine> {
    if kind == Kind::Set {
        return if v.is_empty() {
            Err(BadLine::BadValue)
        } else {
            Ok(Value::Member(v))
        };
    }
    let number = |s: &str| -> Result<f64, BadLine> {
        match s.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            _ => Err(BadLine::BadValue),
        }
    };
    if kind == Kind::Gauge && (v.starts_with('+') || v.starts_with('-')) {
        return number(v).map(Value::Delta);
    }
    let x = number(v)?;
    if matches!(kind, Kind::Counter | Kind::Timer | Kind::Histogram)
        && x < 0.0
        && kind != Kind::Histogram
    {
        // A negative counter increment or timer makes no sense in Prometheus's model.
        return Err(BadLine::BadValue);
    }
    Ok(Value::Number(x))
}

/// Parses one line (without its newline).
pub fn parse_line(line: &str) -> Result<Line<'_>, BadLine> {
    if line.len() > MAX_LINE {
        return Err(BadLine::TooLong);
    }
    let (name, rest) = line.split_once(':').ok_or(BadLine::NoValue)?;
    if name.is_empty() {
        return Err(BadLine::Empty);
    }
    if name
        .bytes()
        .any(|b| b.is_ascii_control() || b == b'|' || b == b'#')
    {
        return Err(BadLine::BadName);
    }
    let mut sections = rest.split('|');
    let raw_values = sections.next().unwrap_or("");
    if raw_values.is_empty() {
        return Err(BadLine::NoValue);
    }
    let kind = match sections.next() {
        None => return Err(BadLine::NoType),
        Some("c") => Kind::Counter,
        Some("g") => Kind::Gauge,
        Some("ms") => Kind::Timer,
        Some("h") | Some("d") => Kind::Histogram,
        Some("s") => Kind::Set,
        Some(_) => return Err(BadLine::UnknownType),
    };
    let mut rate = 1.0;
    let mut tags = "";
    for section in sections {
        if let Some(r) = section.strip_prefix('@') {
            rate = match r.parse::<f64>() {
                Ok(x) if x > 0.0 && x <= 1.0 => x,
                _ => return Err(BadLine::BadRate),
            };
        } else if let Some(t) = section.strip_prefix('#') {
            tags = t;
        }
        // Other DogStatsD sections (|c:container, |T timestamp, |e:...) are ignored.
    }
    let line = Line {
        name,
        raw_values,
        kind,
        rate,
        tags,
    };
    // Validate every value now, so a bad line is rejected whole.
    for v in line.values() {
        v?;
    }
    Ok(line)
}

/// Splits a packet into lines (`\n`, tolerating `\r\n` and a trailing newline).
pub fn lines(packet: &str) -> impl Iterator<Item = &str> {
    packet
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.is_empty())
}

/// Iterates DogStatsD tags as (key, value); a tag without a value yields an empty value.
pub fn tags(raw: &str) -> impl Iterator<Item = (&str, &str)> {
    raw.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| t.split_once(':').unwrap_or((t, "")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_type() {
        let l = parse_line("api.requests:1|c").unwrap();
        assert_eq!(
            (l.name, l.kind, l.rate, l.tags),
            ("api.requests", Kind::Counter, 1.0, "")
        );
        assert_eq!(l.values().collect::<Vec<_>>(), [Ok(Value::Number(1.0))]);
        assert_eq!(parse_line("q:3|c|@0.1").unwrap().rate, 0.1);
        assert_eq!(
            parse_line("temp:21.5|g").unwrap().values().next(),
            Some(Ok(Value::Number(21.5)))
        );
        assert_eq!(
            parse_line("temp:+2|g").unwrap().values().next(),
            Some(Ok(Value::Delta(2.0)))
        );
        assert_eq!(
            parse_line("temp:-2|g").unwrap().values().next(),
            Some(Ok(Value::Delta(-2.0)))
        );
        assert_eq!(parse_line("rt:320|ms").unwrap().kind, Kind::Timer);
        assert_eq!(parse_line("size:1.5|h").unwrap().kind, Kind::Histogram);
        assert_eq!(parse_line("size:1.5|d").unwrap().kind, Kind::Histogram);
        let s = parse_line("users:alice|s").unwrap();
        assert_eq!(s.values().next(), Some(Ok(Value::Member("alice"))));
    }

    #[test]
    fn dogstatsd_tags_and_packed_values() {
        let l = parse_line("page.views:1|c|@0.5|#env:prod,region:eu-west,canary").unwrap();
        assert_eq!(l.tags, "env:prod,region:eu-west,canary");
        assert_eq!(
            tags(l.tags).collect::<Vec<_>>(),
            [("env", "prod"), ("region", "eu-west"), ("canary", "")]
        );
        let l = parse_line("lat:1:2:3|h|#a:b|c:abc123|T1700000000").unwrap();
        assert_eq!(l.values().count(), 3);
        assert_eq!(l.tags, "a:b");
    }

    #[test]
    fn bad_lines_have_reasons() {
        for (line, reason) in [
            ("novalue", BadLine::NoValue),
            (":1|c", BadLine::Empty),
            ("a:1", BadLine::NoType),
            ("a:|c", BadLine::NoValue),
            ("a:1|x", BadLine::UnknownType),
            ("a:abc|c", BadLine::BadValue),
            ("a:NaN|g", BadLine::BadValue),
            ("a:inf|ms", BadLine::BadValue),
            ("a:-1|c", BadLine::BadValue),
            ("a:1|c|@0", BadLine::BadRate),
            ("a:1|c|@2", BadLine::BadRate),
            ("a:1|c|@x", BadLine::BadRate),
            ("a:1:x|h", BadLine::BadValue),
            ("a\u{1}b:1|c", BadLine::BadName),
        ] {
            assert_eq!(parse_line(line), Err(reason), "{line}");
        }
        assert_eq!(
            parse_line(&format!("{}:1|c", "x".repeat(MAX_LINE))),
            Err(BadLine::TooLong)
        );
    }

    #[test]
    fn packets_split_into_lines() {
        let p = "a:1|c\r\nb:2|g\n\nc:3|ms\n";
        assert_eq!(lines(p).collect::<Vec<_>>(), ["a:1|c", "b:2|g", "c:3|ms"]);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,64}") {
            for l in lines(&s) {
                if let Ok(line) = parse_line(l) {
                    for v in line.values() {
                        let _ = v;
                    }
                    let _ = tags(line.tags).count();
                }
            }
        }
    }
}
