//! The query path over the embedded store's blocks: `sum by (host) (rate(...[5m]))` over 976
//! counters (61 hosts x 4 CPUs x 4 modes) for 1 h and 24 h ranges, after 24 h of samples at a
//! 10 s interval were appended, cut into 2 h blocks and compacted, as the storage scenario
//! measures it against VictoriaMetrics.
//!
//! `cargo bench -p sonde-collector --bench query`

use criterion::{Criterion, criterion_group, criterion_main};
use sonde_collector::query::eval::{QueryLimits, Reader, range_query};
use sonde_collector::store::{Store, StoreConfig};
use sonde_common::model::{MetricKind, Sample, Series, now_ms};
use sonde_common::wire::{BatchBuilder, BatchHeader};
use std::hint::black_box;
use std::time::Duration;

const HOURS: i64 = 24;
const STEP_MS: i64 = 10_000;
/// Ticks per append.
const TICKS_PER_BATCH: i64 = 30;

fn series() -> Vec<Series> {
    let mut out = Vec::new();
    for host in 0..61 {
        for cpu in 0..4 {
            for mode in ["user", "system", "idle", "iowait"] {
                out.push(Series::new(
                    "node_cpu_seconds_total",
                    [
                        ("host", format!("host-{host}")),
                        ("cpu", cpu.to_string()),
                        ("mode", mode.to_string()),
                    ],
                ));
            }
        }
    }
    out
}

/// A store holding `HOURS` of the counters, ending at `end`, maintained into blocks.
fn filled(dir: &std::path::Path, end: i64) -> Store {
    let store = Store::open(StoreConfig {
        retention: Duration::ZERO,
        maintenance_interval: Duration::ZERO,
        ..StoreConfig::new(dir)
    })
    .unwrap();
    let all = series();
    let start = end - HOURS * 3_600_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut t = start;
    let mut values = vec![0i64; all.len()];
    let mut sequence = 0;
    while t < end {
        sequence += 1;
        let mut b = BatchBuilder::new(BatchHeader {
            agent_id: "bench".into(),
            sequence,
            sent_at_ms: t,
        });
        let ticks: Vec<i64> = (0..TICKS_PER_BATCH)
            .map(|i| t + i * STEP_MS)
            .filter(|&x| x < end)
            .collect();
        for (i, s) in all.iter().enumerate() {
            let samples = ticks
                .iter()
                .map(|&x| {
                    // Irregular increments, as CPU seconds grow: in hundredths, as the
                    // kernel counts them (USER_HZ) and node_exporter reports them.
                    values[i] += (x / STEP_MS + i as i64) % 7 * 37;
                    Sample::new(x, values[i] as f64 / 100.0)
                })
                .collect();
            b.push(s, MetricKind::Counter, None, samples);
        }
        rt.block_on(store.append(&b.build())).unwrap();
        t += TICKS_PER_BATCH * STEP_MS;
        if sequence % 60 == 0 {
            store.maintain().unwrap();
        }
    }
    while store.maintain().unwrap() != Default::default() {}
    store
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let end = (now_ms() / 60_000) * 60_000;
    let store = filled(dir.path(), end);
    let stats = store.stats();
    eprintln!(
        "store: {} blocks, {} samples in blocks ({:.2} bytes each), {} in the head, {} WAL bytes",
        stats.blocks,
        stats.block_samples,
        stats.block_bytes as f64 / stats.block_samples.max(1) as f64,
        stats.samples_in_head,
        stats.wal_bytes
    );
    let reader = Reader {
        store: &store,
        tenant: "",
    };
    let query = "sum by (host) (rate(node_cpu_seconds_total[5m]))";
    let mut group = c.benchmark_group("query_976_series");
    group.sample_size(10);
    for (name, range_h, step_ms) in [("sum_rate_1h", 1, 60_000), ("sum_rate_24h", 24, 300_000)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let out = range_query(
                    &reader,
                    query,
                    end - range_h * 3_600_000,
                    end,
                    step_ms,
                    300_000,
                    QueryLimits::default(),
                )
                .unwrap();
                assert_eq!(out.len(), 61);
                black_box(out)
            })
        });
    }
    group.finish();
    store.close();
}

criterion_group!(benches, bench);
criterion_main!(benches);
