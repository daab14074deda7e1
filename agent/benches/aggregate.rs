//! The StatsD hot path: parse a line and record it into the aggregator (an existing series:
//! the steady state), for counters, timers and tagged DogStatsD lines; and a whole packet of
//! 20 lines through the listener's packet handler (parse outside the lock, record inside).
//!
//! `cargo bench -p sonde-agent --bench aggregate`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sonde_agent::aggregate::{AggregateConfig, Aggregator, DEFAULT_BUCKETS};
use sonde_agent::events::Events;
use sonde_agent::sources::statsd::listener::handle_packet;
use sonde_agent::sources::statsd::parser::parse_line;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::Duration;

fn aggregator() -> Aggregator {
    Aggregator::new(AggregateConfig {
        hostname: "bench".into(),
        max_series: 1_000_000,
        idle_timeout: Duration::from_secs(300),
        buckets: DEFAULT_BUCKETS.to_vec(),
    })
}

fn bench(c: &mut Criterion) {
    // 1,000 distinct series per kind, visited round-robin.
    let counters: Vec<String> = (0..1000)
        .map(|i| format!("app.requests.{}:1|c", i))
        .collect();
    let timers: Vec<String> = (0..1000)
        .map(|i| format!("app.latency.{}:{}|ms", i % 50, i % 700))
        .collect();
    let tagged: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                "http.requests:1|c|@0.5|#route:/api/{},method:GET,status:{}",
                i % 100,
                200 + i % 5
            )
        })
        .collect();
    let mut group = c.benchmark_group("statsd_aggregate");
    group.throughput(Throughput::Elements(1));
    for (name, lines) in [
        ("counter", &counters),
        ("timer", &timers),
        ("dogstatsd_tagged_counter", &tagged),
    ] {
        let mut agg = aggregator();
        for l in lines.iter() {
            agg.record(&parse_line(l).unwrap(), 1).unwrap();
        }
        let mut i = 0usize;
        group.bench_function(format!("parse+record/{name}"), |b| {
            b.iter(|| {
                let line = &lines[i % lines.len()];
                i += 1;
                agg.record(&parse_line(black_box(line)).unwrap(), 2)
                    .unwrap();
            })
        });
    }
    let packet: String = counters
        .iter()
        .take(10)
        .chain(tagged.iter().take(10))
        .map(|l| format!("{l}\n"))
        .collect();
    let agg = Mutex::new(aggregator());
    let events = Events::default();
    group.throughput(Throughput::Elements(20));
    group.bench_function("packet_of_20_lines", |b| {
        b.iter(|| handle_packet(black_box(&packet), &agg, &events))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
