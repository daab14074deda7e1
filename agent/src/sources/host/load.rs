//! Load averages from `/proc/loadavg`: `node_load1`, `node_load5`, `node_load15` (gauges).

use sonde_common::model::MetricKind;

use super::{ParseError, reading};
use crate::sources::Reading;

const NAMES: [&str; 3] = ["node_load1", "node_load5", "node_load15"];

/// Parses the first three fields; the runnable/total tasks and last PID that follow are ignored.
pub fn parse(text: &str, host: &str) -> Result<Vec<Reading>, ParseError> {
    let mut fields = text.split_whitespace();
    let mut out = Vec::with_capacity(NAMES.len());
    for (i, name) in NAMES.into_iter().enumerate() {
        let (line, field) = (1, i + 1);
        let text = fields
            .next()
            .ok_or(ParseError::MissingField { line, field })?;
        // f64's parser accepts "nan" and "inf", which no kernel writes.
        let value = text
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or(ParseError::NotANumber { line, field })?;
        out.push(reading(name, MetricKind::Gauge, value, host, &[]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_averages() {
        let out = parse("0.51 0.54 0.25 1/84 6587\n", "h").unwrap();
        let got: Vec<_> = out
            .iter()
            .map(|r| (r.series.name.as_str(), r.value))
            .collect();
        assert_eq!(
            got,
            [
                ("node_load1", 0.51),
                ("node_load5", 0.54),
                ("node_load15", 0.25)
            ]
        );
        assert!(out.iter().all(|r| r.kind == MetricKind::Gauge));
        assert!(out.iter().all(|r| r.series.label("host") == Some("h")));
    }

    #[test]
    fn rejects_malformed_input() {
        let missing = ParseError::MissingField { line: 1, field: 3 };
        assert_eq!(parse("0.51 0.54\n", "h"), Err(missing));
        let nan = ParseError::NotANumber { line: 1, field: 2 };
        assert_eq!(parse("0.51 nan 0.25 1/84 6587", "h"), Err(nan));
        let text = ParseError::NotANumber { line: 1, field: 1 };
        assert_eq!(parse("high 0.54 0.25", "h"), Err(text));
        let empty = ParseError::MissingField { line: 1, field: 1 };
        assert_eq!(parse("", "h"), Err(empty));
    }
}
