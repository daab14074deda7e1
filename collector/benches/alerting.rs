//! The alerting fast path's cost on the ingest path: `FastPath::offer` runs for every accepted
//! batch. One batch of 10,000 series (100 metric names x 100 hosts), against 20 threshold rules
//! on 10 of those names: when nothing violates (the common case: a lookup per series, matchers
//! and a comparison for the 1,000 selected samples), and when the 100 samples of one metric
//! violate (alerts already firing: labels and annotations computed for each).
//!
//! `cargo bench -p sonde-collector --bench alerting`

use criterion::{Criterion, criterion_group, criterion_main};
use sonde_collector::alerting::evaluate::{Embedded, Evaluator, EvaluatorOptions, RecordSink};
use sonde_collector::alerting::fastpath::FastPath;
use sonde_collector::alerting::rules::{RuleSet, RuleStore, parse_rules};
use sonde_collector::alerting::{Alert, AlertSink};
use sonde_collector::store::{Store, StoreConfig};
use sonde_common::model::{MetricKind, Sample, Series, now_ms};
use sonde_common::wire::{Batch, BatchBuilder, BatchHeader};
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

struct Discard;

impl AlertSink for Discard {
    fn send(&self, _: &str, _: Vec<Alert>) {}
}

impl RecordSink for Discard {
    fn record<'a>(
        &'a self,
        _: &'a str,
        _: Batch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async { Ok(()) })
    }
}

fn batch(violating: bool) -> Batch {
    let now = now_ms();
    let mut b = BatchBuilder::new(BatchHeader {
        agent_id: "bench".into(),
        sequence: 1,
        sent_at_ms: now,
    });
    for m in 0..100 {
        for h in 0..100 {
            let v = if violating && m == 0 { 99.0 } else { 50.0 };
            b.push(
                &Series::new(
                    format!("metric_{m:03}"),
                    [("host", format!("host-{h:03}")), ("job", "node".into())],
                ),
                MetricKind::Gauge,
                None,
                vec![Sample::new(now, v)],
            );
        }
    }
    b.build()
}

fn fast_path(dir: &Path) -> FastPath {
    let mut rules = String::from("groups:\n  - name: thresholds\n    rules:\n");
    for r in 0..20 {
        let _ = writeln!(
            rules,
            "      - alert: Rule{r}\n        expr: metric_{:03}{{job=\"node\"}} > 90\n        labels: {{severity: page}}\n        annotations: {{summary: \"{{{{ $labels.host }}}} at {{{{ $value }}}}\"}}",
            r % 10
        );
    }
    let groups = parse_rules(Path::new("bench.yml"), "", &rules).unwrap();
    let set = RuleSet {
        groups: groups.into_iter().map(Arc::new).collect(),
    };
    let store = Store::open(StoreConfig::new(dir.join("store"))).unwrap();
    let ev = Evaluator::new(
        RuleStore::from_set(set),
        Arc::new(Embedded::new(store)),
        Arc::new(Discard),
        Arc::new(Discard),
        EvaluatorOptions::new(dir.join("state")),
    );
    FastPath::new(&ev)
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let fp = fast_path(dir.path());
    let quiet = batch(false);
    let hot = batch(true);
    // Fire the alerts once, as they are in steady state.
    fp.offer("", &hot);
    let mut g = c.benchmark_group("fast path offer, 10,000 series, 20 threshold rules");
    g.throughput(criterion::Throughput::Elements(10_000));
    g.bench_function("nothing violates", |b| {
        b.iter(|| fp.offer("", black_box(&quiet)))
    });
    g.bench_function("100 samples violate (firing)", |b| {
        b.iter(|| fp.offer("", black_box(&hot)))
    });
    g.bench_function("another tenant (no rules)", |b| {
        b.iter(|| fp.offer("other", black_box(&quiet)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
