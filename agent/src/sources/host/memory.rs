//! Memory and swap from `/proc/meminfo`: `node_memory_<Field>_bytes` gauges for the fields below,
//! as exact integers (the kernel's "kB" is KiB, so bytes = value * 1024; an `f64` holds every
//! integer up to 8 PiB exactly). A field the kernel does not print (MemAvailable before 3.14) is
//! left out rather than estimated; only MemTotal is required.

use sonde_common::model::MetricKind;

use super::{ParseError, reading};
use crate::sources::Reading;

const FIELDS: [&str; 7] = [
    "MemTotal",
    "MemFree",
    "MemAvailable",
    "Buffers",
    "Cached",
    "SwapTotal",
    "SwapFree",
];

/// Parses `/proc/meminfo`; lines for other fields are not looked at.
pub fn parse(text: &str, host: &str) -> Result<Vec<Reading>, ParseError> {
    let mut out = Vec::with_capacity(FIELDS.len());
    let mut saw_total = false;
    for (index, line) in text.lines().enumerate() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        if !FIELDS.contains(&key) {
            continue;
        }
        let bytes = parse_bytes(rest, index + 1)?;
        saw_total |= key == "MemTotal";
        let name = format!("node_memory_{key}_bytes");
        out.push(reading(&name, MetricKind::Gauge, bytes as f64, host, &[]));
    }
    if !saw_total {
        return Err(ParseError::MissingLine("MemTotal"));
    }
    Ok(out)
}

/// `"   24683656 kB"` -> bytes. Without a unit the value is taken as is, like node_exporter does.
fn parse_bytes(rest: &str, line: usize) -> Result<u64, ParseError> {
    let mut fields = rest.split_whitespace();
    let value: u64 = fields
        .next()
        .ok_or(ParseError::MissingField { line, field: 2 })?
        .parse()
        .map_err(|_| ParseError::NotANumber { line, field: 2 })?;
    match fields.next() {
        None => Ok(value),
        Some("kB") => value.checked_mul(1024).ok_or(ParseError::Malformed {
            line,
            reason: "value overflows 64 bits in bytes",
        }),
        Some(_) => Err(ParseError::Malformed {
            line,
            reason: "unit is not kB",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "\
MemTotal:       24683656 kB
MemFree:        23348532 kB
MemAvailable:   24344464 kB
Buffers:            7880 kB
Cached:          1174756 kB
SwapCached:            0 kB
Active:           492820 kB
Inactive:         686332 kB
Active(anon):       1520 kB
SwapTotal:       2097148 kB
SwapFree:        2097148 kB
Dirty:               224 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    #[test]
    fn parses_fields_as_exact_bytes() {
        let out = parse(MEMINFO, "h").unwrap();
        let got: Vec<_> = out
            .iter()
            .map(|r| (r.series.name.as_str(), r.value))
            .collect();
        assert_eq!(
            got,
            [
                ("node_memory_MemTotal_bytes", 25_276_063_744.0),
                ("node_memory_MemFree_bytes", 23_908_896_768.0),
                ("node_memory_MemAvailable_bytes", 24_928_731_136.0),
                ("node_memory_Buffers_bytes", 8_069_120.0),
                ("node_memory_Cached_bytes", 1_202_950_144.0),
                ("node_memory_SwapTotal_bytes", 2_147_479_552.0),
                ("node_memory_SwapFree_bytes", 2_147_479_552.0),
            ]
        );
        assert!(out.iter().all(|r| r.kind == MetricKind::Gauge));
        assert!(out.iter().all(|r| r.series.label("host") == Some("h")));
    }

    #[test]
    fn a_missing_optional_field_is_left_out() {
        let old_kernel = "MemTotal: 1024 kB\nMemFree: 512 kB\n";
        let out = parse(old_kernel, "h").unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].value, 1_048_576.0);
    }

    #[test]
    fn rejects_malformed_lines() {
        let bad = "MemTotal: 1024 kB\nMemFree: lots kB\n";
        let err = ParseError::NotANumber { line: 2, field: 2 };
        assert_eq!(parse(bad, "h"), Err(err));
        assert_eq!(
            parse("MemTotal:\n", "h"),
            Err(ParseError::MissingField { line: 1, field: 2 })
        );
        let mb = ParseError::Malformed {
            line: 1,
            reason: "unit is not kB",
        };
        assert_eq!(parse("MemTotal: 1 MB\n", "h"), Err(mb));
        let huge = "MemTotal: 18446744073709551615 kB\n";
        assert!(matches!(
            parse(huge, "h"),
            Err(ParseError::Malformed { .. })
        ));
        let nothing = ParseError::MissingLine("MemTotal");
        assert_eq!(parse("MemFree: 1 kB\n", "h"), Err(nothing));
    }
}
