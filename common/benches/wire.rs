//! Encode and decode of a 10,000-sample batch (host-metric series shape: 5 labels each), per
//! compression, side by side with the same batch as a Prometheus remote-write 1.0 request
//! (protobuf + snappy, the peer format). Prints bytes per sample for each, then criterion's
//! samples/s.
//!
//! `cargo bench -p sonde-common --bench wire`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sonde_common::model::{MetricKind, Sample, Series};
use sonde_common::wire::{self, Batch, BatchBuilder, BatchHeader, Compression, WireLimits};
use std::hint::black_box;

const SAMPLES: usize = 10_000;

/// Host-metric-shaped series: per-core CPU modes, per-device disk and network counters.
fn batch() -> Batch {
    let mut b = BatchBuilder::new(BatchHeader {
        agent_id: "bench-host".into(),
        sequence: 1,
        sent_at_ms: 1_764_000_000_000,
    });
    let modes = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    let mut value = 12_345.678_f64;
    for i in 0..SAMPLES {
        let series = Series::new(
            format!("node_metric_{}_total", i % 40),
            [
                ("host", "bench-host-01.example.internal".to_string()),
                ("cpu", (i / 8 % 64).to_string()),
                ("mode", modes[i % 8].to_string()),
                ("device", format!("dev{}", i % 16)),
                ("job", "node".to_string()),
            ],
        );
        value += (i % 97) as f64 * 0.25;
        b.push(
            &series,
            MetricKind::Counter,
            Some(1_763_990_000_000),
            vec![Sample::new(1_764_000_000_000 + (i % 10) as i64, value)],
        );
    }
    b.build()
}

use sonde_common::remote_write as prompb;

fn to_remote_write(batch: &Batch) -> prompb::WriteRequest {
    prompb::WriteRequest {
        timeseries: batch
            .iter()
            .map(|v| prompb::TimeSeries {
                labels: std::iter::once(("__name__", v.name()))
                    .chain(v.labels())
                    .map(|(n, v)| prompb::Label {
                        name: n.into(),
                        value: v.into(),
                    })
                    .collect(),
                samples: v
                    .samples()
                    .iter()
                    .map(|s| prompb::Sample {
                        value: s.value,
                        timestamp: s.timestamp_ms,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn bench_remote_write(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    batch: &Batch,
) {
    let encode = |b: &Batch| prompb::encode(&to_remote_write(b));
    let bytes = encode(batch);
    eprintln!(
        "remote write (protobuf+snappy): {} bytes, {:.2} bytes/sample",
        bytes.len(),
        bytes.len() as f64 / SAMPLES as f64
    );
    group.bench_function("encode/remote_write_snappy", |b| {
        b.iter(|| encode(black_box(batch)))
    });
    group.bench_function("decode/remote_write_snappy", |b| {
        b.iter(|| prompb::decode(black_box(&bytes), 64 << 20).unwrap())
    });
}

fn bench(c: &mut Criterion) {
    let batch = batch();
    assert_eq!(batch.sample_count(), SAMPLES);
    let limits = WireLimits::default();
    let mut group = c.benchmark_group("wire_10k_samples");
    group.throughput(Throughput::Elements(SAMPLES as u64));
    for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let name = compression.http_encoding();
        let bytes = wire::encode(&batch, compression).unwrap();
        eprintln!(
            "wire {name}: {} bytes, {:.2} bytes/sample",
            bytes.len(),
            bytes.len() as f64 / SAMPLES as f64
        );
        group.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| wire::encode(black_box(&batch), compression).unwrap())
        });
        group.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| wire::decode(black_box(&bytes), &limits).unwrap())
        });
    }
    bench_remote_write(&mut group, &batch);
    group.bench_function("validate", |b| {
        b.iter(|| black_box(&batch).validate(&Default::default()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
