//! Chunk encoding and decoding, packed against Gorilla (Prometheus's XOR chunk), on the values
//! hosts report: a CPU-seconds counter in hundredths, a byte counter growing by irregular
//! increments, and a memory gauge moving within 1% of its level, 480 samples at 10 s.
//!
//! `cargo bench -p sonde-collector --bench chunks`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sonde_collector::store::codec;
use sonde_common::model::Sample;
use std::hint::black_box;

const N: u64 = 480;

/// SplitMix64, for deterministic irregular values.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn series(kind: &str) -> Vec<Sample> {
    let mut acc = 0u64;
    (0..N)
        .map(|i| {
            let t = 1_700_000_000_000 + i as i64 * 10_000;
            let r = mix(i);
            let v = match kind {
                "cpu_seconds" => {
                    acc += r % 1_000;
                    acc as f64 / 100.0
                }
                "bytes_counter" => {
                    acc += r % 2_000_001;
                    acc as f64
                }
                _ => (8_000_000_000 + r % 80_000_000) as f64,
            };
            Sample::new(t, v)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("chunk_480_samples");
    group.throughput(Throughput::Elements(N));
    for kind in ["cpu_seconds", "bytes_counter", "memory_gauge"] {
        let samples = series(kind);
        let packed = codec::encode_packed(&samples).expect("short decimals");
        let gorilla = codec::encode_gorilla(&samples);
        eprintln!(
            "{kind}: packed {} bytes ({:.2} a sample), Gorilla {} bytes ({:.2} a sample)",
            packed.len(),
            packed.len() as f64 / N as f64,
            gorilla.len(),
            gorilla.len() as f64 / N as f64
        );
        let mut out = Vec::with_capacity(N as usize);
        group.bench_function(format!("{kind}/decode_packed"), |b| {
            b.iter(|| {
                out.clear();
                codec::decode(black_box(&packed), &mut out);
                black_box(out.len())
            })
        });
        group.bench_function(format!("{kind}/decode_gorilla"), |b| {
            b.iter(|| {
                out.clear();
                codec::decode(black_box(&gorilla), &mut out);
                black_box(out.len())
            })
        });
        group.bench_function(format!("{kind}/encode_packed"), |b| {
            b.iter(|| codec::encode_packed(black_box(&samples)))
        });
        group.bench_function(format!("{kind}/encode_gorilla"), |b| {
            b.iter(|| codec::encode_gorilla(black_box(&samples)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
