//! Open file handles from `/proc/sys/fs/file-nr`, as node_exporter's `filefd` collector names
//! them (gauges): `node_filefd_allocated` (the first figure: handles allocated, which since
//! Linux 2.6 is also the number in use) and `node_filefd_maximum` (the third: `fs.file-max`).
//! The second figure, free allocated handles, is always 0 on 2.6+ and is left out as there.

use sonde_common::model::MetricKind;

use super::{ParseError, reading};
use crate::sources::Reading;

/// Parses `allocated free maximum` (tab-separated on one line).
pub fn parse(text: &str, host: &str) -> Result<Vec<Reading>, ParseError> {
    let mut fields = text.split_whitespace();
    let mut values = [0_u64; 3];
    for (i, slot) in values.iter_mut().enumerate() {
        let (line, field) = (1, i + 1);
        *slot = fields
            .next()
            .ok_or(ParseError::MissingField { line, field })?
            .parse()
            .map_err(|_| ParseError::NotANumber { line, field })?;
    }
    Ok(vec![
        reading(
            "node_filefd_allocated",
            MetricKind::Gauge,
            values[0] as f64,
            host,
            &[],
        ),
        reading(
            "node_filefd_maximum",
            MetricKind::Gauge,
            values[2] as f64,
            host,
            &[],
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_allocated_and_maximum() {
        let out = parse("394\t0\t9223372036854775807\n", "h").unwrap();
        let got: Vec<_> = out
            .iter()
            .map(|r| (r.series.name.as_str(), r.value))
            .collect();
        assert_eq!(
            got,
            [
                ("node_filefd_allocated", 394.0),
                ("node_filefd_maximum", 9_223_372_036_854_775_807.0),
            ]
        );
        assert!(out.iter().all(|r| r.kind == MetricKind::Gauge));
        assert!(out.iter().all(|r| r.series.label("host") == Some("h")));
    }

    #[test]
    fn rejects_malformed_input() {
        let missing = ParseError::MissingField { line: 1, field: 3 };
        assert_eq!(parse("394\t0\n", "h"), Err(missing));
        assert_eq!(
            parse("", "h"),
            Err(ParseError::MissingField { line: 1, field: 1 })
        );
        let nan = ParseError::NotANumber { line: 1, field: 2 };
        assert_eq!(parse("394 x 100", "h"), Err(nan));
        let negative = ParseError::NotANumber { line: 1, field: 1 };
        assert_eq!(parse("-1 0 100", "h"), Err(negative));
    }
}
