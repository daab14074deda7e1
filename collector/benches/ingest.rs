//! The collector's ingest hot path for one 10,000-sample batch: decode (envelope, zstd,
//! postcard) + validate (names, labels, limits, time window; or, for a sender's batch of a
//! shape seen before, limits and time window only), and the whole path including the
//! embedded store's append (WAL group commit with fsync, then the head).
//!
//! `cargo bench -p sonde-collector --bench ingest`

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sonde_collector::config::IngestConfig;
use sonde_collector::ingest::{decode::decode_batch, validate::validate};
use sonde_collector::store::{Store, StoreConfig};
use sonde_common::model::{Limits, MetricKind, Sample, Series, now_ms};
use sonde_common::wire::{self, BatchBuilder, BatchHeader, Compression, WireLimits};
use std::cell::Cell;
use std::hint::black_box;
use std::time::Duration;

const SERIES: usize = 10_000;

fn encoded(ts: i64) -> Vec<u8> {
    let modes = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    let mut b = BatchBuilder::new(BatchHeader {
        agent_id: "bench".into(),
        sequence: ts as u64,
        sent_at_ms: ts,
    });
    for i in 0..SERIES {
        let s = Series::new(
            format!("node_metric_{}_total", i % 40),
            [
                ("host", format!("host-{}", i / 200)),
                ("cpu", (i / 8 % 25).to_string()),
                ("mode", modes[i % 8].to_string()),
                ("job", "node".to_string()),
            ],
        );
        b.push(
            &s,
            MetricKind::Counter,
            None,
            vec![Sample::new(ts, (i * 3) as f64 + ts as f64)],
        );
    }
    wire::encode(&b.build(), Compression::Zstd).unwrap()
}

fn bench(c: &mut Criterion) {
    let cfg = IngestConfig {
        wire: WireLimits::default(),
        limits: Limits::default(),
        max_sample_age: Duration::from_secs(86_400),
        max_sample_future: Duration::from_secs(600),
        tenant_samples_per_second: 0.0,
        dedup_batches: 1,
    };
    let now = now_ms();
    let body = encoded(now);
    let mut group = c.benchmark_group("ingest_10k_samples");
    group.throughput(Throughput::Elements(SERIES as u64));
    group.bench_function("decode+validate", |b| {
        b.iter(|| {
            let batch = decode_batch(black_box(&body), Compression::Zstd, &cfg.wire).unwrap();
            validate(&batch, &cfg, now, false).unwrap();
            batch
        })
    });
    // A sender's next batch of the same series: names and labels were checked with its first.
    group.bench_function("decode+validate (known shape)", |b| {
        b.iter(|| {
            let batch = decode_batch(black_box(&body), Compression::Zstd, &cfg.wire).unwrap();
            validate(&batch, &cfg, now, true).unwrap();
            batch
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::new(dir.path())).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Every iteration appends the next second of the same 10,000 series, as a fleet does.
    let next_ts = Cell::new(now - 20 * 3_600_000);
    group.bench_function("decode+validate+store", |b| {
        b.iter_batched(
            || {
                next_ts.set(next_ts.get() + 1_000);
                encoded(next_ts.get())
            },
            |body| {
                let batch = decode_batch(&body, Compression::Zstd, &cfg.wire).unwrap();
                validate(&batch, &cfg, now_ms(), false).unwrap();
                let stats = rt.block_on(store.append(&batch)).unwrap();
                assert_eq!(stats.appended, SERIES as u64);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    store.close();
}

criterion_group!(benches, bench);
criterion_main!(benches);
