//! Memory and swap from `/proc/meminfo`: `node_memory_<Field>_bytes` gauges for the fields below,
//! as exact integers (the kernel's "kB" is KiB, so bytes = value * 1024; an `f64` holds every
//! integer up to 8 PiB exactly). A field the kernel does not print (MemAvailable before 3.14) is
//! left out rather than estimated; only MemTotal is required.
//!
//! Plus one figure of Sonde's own, which node_exporter does not have: `host_memory_used_bytes`
//! = MemTotal - MemAvailable, the memory that cannot be handed to a new workload without
//! swapping (what `free` and most dashboards call "used"; the `host_` prefix marks it as not
//! node_exporter's). Left out when MemAvailable is.

use sonde_common::model::MetricKind;

use super::{ParseError, reading};
use crate::sources::Reading;

const FIELDS: [&str; 13] = [
    "MemTotal",
    "MemFree",
    "MemAvailable",
    "Buffers",
    "Cached",
    "SwapCached",
    "Active",
    "Inactive",
    "SwapTotal",
    "SwapFree",
    "Dirty",
    "Shmem",
    "Slab",
];

/// Parses `/proc/meminfo`; lines for other fields are not looked at.
pub fn parse(text: &str, host: &str) -> Result<Vec<Reading>, ParseError> {
    let mut out = Vec::with_capacity(FIELDS.len() + 1);
    let (mut total, mut available) = (None, None);
    let mut name = String::new();
    for (index, line) in text.lines().enumerate() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        if !FIELDS.contains(&key) {
            continue;
        }
        let bytes = parse_bytes(rest, index + 1)?;
        match key {
            "MemTotal" => total = Some(bytes),
            "MemAvailable" => available = Some(bytes),
            _ => {}
        }
        name.clear();
        name.push_str("node_memory_");
        name.push_str(key);
        name.push_str("_bytes");
        out.push(reading(&name, MetricKind::Gauge, bytes as f64, host, &[]));
    }
    let total = total.ok_or(ParseError::MissingLine("MemTotal"))?;
    if let Some(available) = available {
        let used = total.saturating_sub(available) as f64;
        out.push(reading(
            "host_memory_used_bytes",
            MetricKind::Gauge,
            used,
            host,
            &[],
        ));
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
Shmem:              2096 kB
Slab:             113956 kB
SReclaimable:      58324 kB
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
                ("node_memory_SwapCached_bytes", 0.0),
                ("node_memory_Active_bytes", 504_647_680.0),
                ("node_memory_Inactive_bytes", 702_803_968.0),
                ("node_memory_SwapTotal_bytes", 2_147_479_552.0),
                ("node_memory_SwapFree_bytes", 2_147_479_552.0),
                ("node_memory_Dirty_bytes", 229_376.0),
                ("node_memory_Shmem_bytes", 2_146_304.0),
                ("node_memory_Slab_bytes", 116_690_944.0),
                ("host_memory_used_bytes", 347_332_608.0),
            ]
        );
        assert!(out.iter().all(|r| r.kind == MetricKind::Gauge));
        assert!(out.iter().all(|r| r.series.label("host") == Some("h")));
    }

    #[test]
    fn a_missing_optional_field_is_left_out() {
        let old_kernel = "MemTotal: 1024 kB\nMemFree: 512 kB\n";
        let out = parse(old_kernel, "h").unwrap();
        assert_eq!(
            out.len(),
            2,
            "no MemAvailable, so no host_memory_used_bytes"
        );
        assert_eq!(out[0].value, 1_048_576.0);
    }

    #[test]
    fn used_is_total_minus_available_and_never_negative() {
        let text = "MemTotal: 1024 kB\nMemAvailable: 256 kB\n";
        let out = parse(text, "h").unwrap();
        assert_eq!(out[2].series.name, "host_memory_used_bytes");
        assert_eq!(out[2].value, 768.0 * 1024.0);
        // Not seen on real kernels, but an odd snapshot must not turn into a huge number.
        let odd = "MemAvailable: 2048 kB\nMemTotal: 1024 kB\n";
        let out = parse(odd, "h").unwrap();
        assert_eq!(out[2].value, 0.0);
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
