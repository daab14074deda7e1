//! Format stability: checked-in v1 batches must decode to the same content forever.
//!
//! The files under `tests/golden/` were written once by this test with
//! `SONDE_WRITE_GOLDEN=1 cargo test -p sonde-common --test golden`; never rewrite them for an
//! existing version: a layout change is a new format version.

use sonde_common::model::{MetricKind, Sample, Series};
use sonde_common::wire::{self, Batch, BatchBuilder, BatchHeader, Compression, WireLimits};
use std::path::PathBuf;

fn golden_batch() -> Batch {
    let mut b = BatchBuilder::new(BatchHeader {
        agent_id: "golden-host".into(),
        sequence: 1234567,
        sent_at_ms: 1_764_000_000_123,
    });
    for cpu in 0..2 {
        for (mode, v) in [("user", 1234.56), ("idle", 98765.43)] {
            let s = Series::new(
                "node_cpu_seconds_total",
                [
                    ("cpu", cpu.to_string()),
                    ("host", "golden-host".into()),
                    ("mode", mode.into()),
                ],
            );
            b.push(
                &s,
                MetricKind::Counter,
                Some(1_763_999_000_000),
                vec![Sample::new(1_764_000_000_000, v + cpu as f64)],
            );
        }
    }
    let mem = Series::new("node_memory_MemTotal_bytes", [("host", "golden-host")]);
    b.push(
        &mem,
        MetricKind::Gauge,
        None,
        vec![Sample::new(1_764_000_000_000, 25_165_824_000.0)],
    );
    for (le, c) in [("0.1", 3.0), ("1", 7.0), ("+Inf", 9.0)] {
        let s = Series::new(
            "http_request_duration_seconds_bucket",
            [("host", "golden-host"), ("le", le)],
        );
        b.push(
            &s,
            MetricKind::Histogram,
            Some(1_763_999_000_000),
            vec![
                Sample::new(1_764_000_000_000, c),
                Sample::new(1_764_000_010_000, c + 1.0),
            ],
        );
    }
    let odd = Series::new(
        "odd_values",
        [("host", "golden-host"), ("text", "ünïcödé \"quoted\"\n")],
    );
    b.push(
        &odd,
        MetricKind::Unknown,
        None,
        vec![
            Sample::new(-1, f64::NEG_INFINITY),
            Sample::new(0, -0.0),
            Sample::new(i64::MAX, f64::MAX),
        ],
    );
    b.build()
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

#[test]
fn golden_v1_batches_decode_to_the_same_content() {
    let expected = golden_batch();
    let cases = [
        ("batch-v1-none.bin", Compression::None),
        ("batch-v1-lz4.bin", Compression::Lz4),
        ("batch-v1-zstd.bin", Compression::Zstd),
    ];
    if std::env::var_os("SONDE_WRITE_GOLDEN").is_some() {
        for (name, c) in cases {
            std::fs::write(golden_path(name), wire::encode(&expected, c).unwrap()).unwrap();
        }
    }
    for (name, compression) in cases {
        let bytes = std::fs::read(golden_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let env = wire::read_envelope(&bytes, &WireLimits::default()).unwrap();
        assert_eq!(env.version, 1, "{name}");
        assert_eq!(env.compression, compression, "{name}");
        let batch = wire::decode(&bytes, &WireLimits::default()).unwrap();
        // PartialEq on f64 treats -0.0 == 0.0; compare bits for exactness.
        assert_eq!(batch, expected, "{name}");
        for (a, b) in batch.series.iter().zip(&expected.series) {
            for (x, y) in a.samples.iter().zip(&b.samples) {
                assert_eq!(x.value.to_bits(), y.value.to_bits(), "{name}");
            }
        }
        batch.validate(&Default::default()).unwrap();
    }
    // The uncompressed encoding is deterministic: today's encoder writes the same bytes.
    let none = std::fs::read(golden_path("batch-v1-none.bin")).unwrap();
    assert_eq!(wire::encode(&expected, Compression::None).unwrap(), none);
}
