//! Block device I/O from `/proc/diskstats`, with node_exporter's `diskstats` names, units and
//! default device filter, labelled `device`:
//!
//! | column | metric | unit |
//! | --- | --- | --- |
//! | 1 | `node_disk_reads_completed_total` | |
//! | 2 | `node_disk_reads_merged_total` | |
//! | 3 | `node_disk_read_bytes_total` | sectors * 512 |
//! | 4 | `node_disk_read_time_seconds_total` | ms / 1000 |
//! | 5 | `node_disk_writes_completed_total` | |
//! | 6 | `node_disk_writes_merged_total` | |
//! | 7 | `node_disk_written_bytes_total` | sectors * 512 |
//! | 8 | `node_disk_write_time_seconds_total` | ms / 1000 |
//! | 9 | `node_disk_io_now` (gauge) | |
//! | 10 | `node_disk_io_time_seconds_total` | ms / 1000 |
//! | 11 | `node_disk_io_time_weighted_seconds_total` | ms / 1000 |
//! | 12 | `node_disk_discards_completed_total` | Linux 4.18+ |
//! | 13 | `node_disk_discards_merged_total` | Linux 4.18+ |
//! | 14 | `node_disk_discarded_sectors_total` | sectors, as node_exporter; 4.18+ |
//! | 15 | `node_disk_discard_time_seconds_total` | ms / 1000; 4.18+ |
//! | 16 | `node_disk_flush_requests_total` | Linux 5.5+ |
//! | 17 | `node_disk_flush_requests_time_seconds_total` | ms / 1000; 5.5+ |
//!
//! Columns count after the device name. All counters but `io_now`. The kernel's sectors are
//! always 512 bytes here, whatever the device's own sector size (Documentation/block/stat.rst).
//!
//! Skipped, as node_exporter skips them by default
//! (`^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$`): RAM disks, loop devices, floppies, and
//! partitions of sd/hd/vd/xvd and NVMe disks, whose I/O their whole disk already counts. Other
//! devices (dm-*, md*, mmcblk*, sr*, nbd*, and their partitions) are kept, as there.
//! node_exporter's `node_disk_info` and udev-derived series are not produced.

use sonde_common::model::MetricKind;

use super::{ParseError, reading};
use crate::sources::Reading;

/// Units of a column per unit reported: the value reported is the column divided by this, so
/// milliseconds become correctly rounded seconds (1/512 is exact in binary, so bytes are exact).
const SECTORS_PER_BYTE: f64 = 1.0 / 512.0;
const MS: f64 = 1000.0;

/// Metric, kind and units per reported unit of each column after the device name, in order.
const COLUMNS: [(&str, MetricKind, f64); 17] = [
    ("node_disk_reads_completed_total", MetricKind::Counter, 1.0),
    ("node_disk_reads_merged_total", MetricKind::Counter, 1.0),
    (
        "node_disk_read_bytes_total",
        MetricKind::Counter,
        SECTORS_PER_BYTE,
    ),
    ("node_disk_read_time_seconds_total", MetricKind::Counter, MS),
    ("node_disk_writes_completed_total", MetricKind::Counter, 1.0),
    ("node_disk_writes_merged_total", MetricKind::Counter, 1.0),
    (
        "node_disk_written_bytes_total",
        MetricKind::Counter,
        SECTORS_PER_BYTE,
    ),
    (
        "node_disk_write_time_seconds_total",
        MetricKind::Counter,
        MS,
    ),
    ("node_disk_io_now", MetricKind::Gauge, 1.0),
    ("node_disk_io_time_seconds_total", MetricKind::Counter, MS),
    (
        "node_disk_io_time_weighted_seconds_total",
        MetricKind::Counter,
        MS,
    ),
    (
        "node_disk_discards_completed_total",
        MetricKind::Counter,
        1.0,
    ),
    ("node_disk_discards_merged_total", MetricKind::Counter, 1.0),
    (
        "node_disk_discarded_sectors_total",
        MetricKind::Counter,
        1.0,
    ),
    (
        "node_disk_discard_time_seconds_total",
        MetricKind::Counter,
        MS,
    ),
    ("node_disk_flush_requests_total", MetricKind::Counter, 1.0),
    (
        "node_disk_flush_requests_time_seconds_total",
        MetricKind::Counter,
        MS,
    ),
];

/// Columns every kernel since 2.6 prints for whole disks.
const REQUIRED: usize = 11;

/// Parses `/proc/diskstats`: `major minor name` then at least 11 counters.
pub fn parse(text: &str, host: &str) -> Result<Vec<Reading>, ParseError> {
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        let mut fields = line.split_whitespace();
        if fields.next().is_none() {
            continue;
        }
        let device = fields.nth(1).ok_or(ParseError::MissingField {
            line: line_no,
            field: 3,
        })?;
        if is_ignored(device) {
            continue;
        }
        let labels = [("device", device)];
        let mut columns = 0;
        for ((name, kind, per), text) in COLUMNS.into_iter().zip(fields) {
            let field = columns + 4;
            let value: u64 = text.parse().map_err(|_| ParseError::NotANumber {
                line: line_no,
                field,
            })?;
            out.push(reading(name, kind, value as f64 / per, host, &labels));
            columns += 1;
        }
        if columns < REQUIRED {
            return Err(ParseError::MissingField {
                line: line_no,
                field: columns + 4,
            });
        }
    }
    Ok(out)
}

/// node_exporter's default `--collector.diskstats.device-exclude`,
/// `^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p)\d+$`, without a regex engine: the name is a
/// known prefix followed by at least one digit. No prefix ends in a digit, so stripping every
/// trailing digit finds the prefix.
pub fn is_ignored(device: &str) -> bool {
    let prefix = device.trim_end_matches(|c: char| c.is_ascii_digit());
    if prefix.len() == device.len() {
        return false;
    }
    match prefix {
        "ram" | "zram" | "loop" | "fd" => true,
        _ => is_disk_letter(prefix) || is_nvme_namespace(prefix),
    }
}

/// `(h|s|v|xv)d[a-z]`
fn is_disk_letter(prefix: &str) -> bool {
    let kind = prefix
        .strip_prefix("xv")
        .or_else(|| prefix.strip_prefix(['h', 's', 'v']));
    match kind.map(str::as_bytes) {
        Some([b'd', letter]) => letter.is_ascii_lowercase(),
        _ => false,
    }
}

/// `nvme\d+n\d+p`
fn is_nvme_namespace(prefix: &str) -> bool {
    let Some(rest) = prefix.strip_prefix("nvme") else {
        return false;
    };
    let Some(rest) = rest.strip_suffix('p') else {
        return false;
    };
    let Some((controller, namespace)) = rest.split_once('n') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(controller) && digits(namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISKSTATS: &str = "\
   7       0 loop0 19 0 56 4 0 0 0 0 0 12 4 0 0 0 0 0 0
 254       0 vda 382536 16352 18711842 609690 387245 181089 34706616 168961 2 50800 790860 40812 74 7747648 5395 114883 6811
 254       1 vda1 380000 16000 18700000 600000 380000 180000 34700000 160000 0 50000 780000 0 0 0 0 0 0
 253       0 zram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 259       0 nvme0n1 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
 259       1 nvme0n1p1 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
 252       0 dm-0 100 0 800 10 200 0 1600 20 0 30 30
   8      16 sdb 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19
";

    fn value(out: &[Reading], name: &str, device: &str) -> Option<f64> {
        out.iter()
            .find(|r| r.series.name == name && r.series.label("device") == Some(device))
            .map(|r| r.value)
    }

    #[test]
    fn parses_whole_disks_in_base_units() {
        let out = parse(DISKSTATS, "h").unwrap();
        let v = |name, device| value(&out, name, device).unwrap();
        assert_eq!(v("node_disk_reads_completed_total", "vda"), 382_536.0);
        assert_eq!(v("node_disk_reads_merged_total", "vda"), 16_352.0);
        assert_eq!(v("node_disk_read_bytes_total", "vda"), 18_711_842.0 * 512.0);
        assert_eq!(v("node_disk_read_time_seconds_total", "vda"), 609.69);
        assert_eq!(v("node_disk_writes_completed_total", "vda"), 387_245.0);
        assert_eq!(v("node_disk_writes_merged_total", "vda"), 181_089.0);
        assert_eq!(
            v("node_disk_written_bytes_total", "vda"),
            34_706_616.0 * 512.0
        );
        assert_eq!(v("node_disk_write_time_seconds_total", "vda"), 168.961);
        assert_eq!(v("node_disk_io_now", "vda"), 2.0);
        assert_eq!(v("node_disk_io_time_seconds_total", "vda"), 50.8);
        assert_eq!(v("node_disk_io_time_weighted_seconds_total", "vda"), 790.86);
        assert_eq!(v("node_disk_discards_completed_total", "vda"), 40_812.0);
        assert_eq!(v("node_disk_discarded_sectors_total", "vda"), 7_747_648.0);
        assert_eq!(v("node_disk_discard_time_seconds_total", "vda"), 5.395);
        assert_eq!(v("node_disk_flush_requests_total", "vda"), 114_883.0);
        assert_eq!(
            v("node_disk_flush_requests_time_seconds_total", "vda"),
            6.811
        );
        for r in &out {
            let expected = if r.series.name == "node_disk_io_now" {
                MetricKind::Gauge
            } else {
                MetricKind::Counter
            };
            assert_eq!(r.kind, expected, "{}", r.series.name);
            assert_eq!(r.series.label("host"), Some("h"));
        }
    }

    #[test]
    fn reports_the_columns_the_kernel_prints() {
        let out = parse(DISKSTATS, "h").unwrap();
        let count = |device| {
            out.iter()
                .filter(|r| r.series.label("device") == Some(device))
                .count()
        };
        assert_eq!(count("vda"), 17);
        assert_eq!(count("nvme0n1"), 15, "4.18 to 5.4: discards, no flushes");
        assert_eq!(count("dm-0"), 11, "before 4.18");
        assert_eq!(count("sdb"), 17, "columns past the known ones are ignored");
        for skipped in ["loop0", "vda1", "zram0", "nvme0n1p1"] {
            assert_eq!(count(skipped), 0, "{skipped}");
        }
        assert_eq!(out.len(), 17 + 15 + 11 + 17);
    }

    #[test]
    fn device_filter_matches_node_exporter_default() {
        for ignored in [
            "ram0",
            "zram12",
            "loop7",
            "fd0",
            "sda1",
            "hdb2",
            "vda15",
            "xvdf3",
            "nvme0n1p1",
            "nvme12n3p45",
        ] {
            assert!(is_ignored(ignored), "{ignored}");
        }
        for kept in [
            "sda",
            "vda",
            "xvdf",
            "nvme0n1",
            "nvme0c0n1",
            "dm-0",
            "md127",
            "mmcblk0",
            "mmcblk0p1",
            "sr0",
            "nbd0",
            "sdaa1",
            "ram",
            "loop",
            "zd0",
            "nvme0n1p",
            "nvmen1p1",
            "vd1",
            "sdA1",
            "",
        ] {
            assert!(!is_ignored(kept), "{kept}");
        }
    }

    #[test]
    fn rejects_malformed_lines() {
        let short = " 254 0 vda 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(
            parse(short, "h"),
            Err(ParseError::MissingField { line: 1, field: 14 })
        );
        let garbage = " 254 0 vda 1 2 x 4 5 6 7 8 9 10 11\n";
        assert_eq!(
            parse(garbage, "h"),
            Err(ParseError::NotANumber { line: 1, field: 6 })
        );
        assert_eq!(
            parse("\n 254 0\n", "h"),
            Err(ParseError::MissingField { line: 2, field: 3 })
        );
        // Ignored devices are not parsed past their name.
        assert_eq!(parse(" 7 0 loop0 junk\n", "h"), Ok(Vec::new()));
        assert_eq!(parse("", "h"), Ok(Vec::new()));
    }
}
