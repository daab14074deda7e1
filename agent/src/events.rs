//! The agent's self-metrics: one method per thing that happens, which counts it and logs it in
//! one place. Served at `GET /metrics` on the agent's HTTP address with the `sonde_agent_` prefix.

use sonde_common::telemetry::{
    Counter, Gauge, Histogram, LATENCY_BUCKETS, LabeledCounter, TextEncoder,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::batch::EncodedBatch;

#[derive(Debug)]
pub struct Events {
    pub collections: Counter,
    pub collect_errors: LabeledCounter,
    pub collect_duration: Histogram,
    pub batches_sent: Counter,
    pub samples_sent: Counter,
    pub bytes_sent: Counter,
    pub push_retries: LabeledCounter,
    pub push_duration: Histogram,
    pub dropped_samples: LabeledCounter,
    pub buffer_batches: Gauge,
    pub buffer_bytes: Gauge,
    pub spool_batches: Gauge,
    pub spool_bytes: Gauge,
    pub samples_collected: LabeledCounter,
    pub statsd_packets: Counter,
    pub statsd_lines: Counter,
    pub statsd_bad_lines: LabeledCounter,
    pub statsd_kernel_drops: Gauge,
    pub statsd_series: Gauge,
    pub scrape_errors: LabeledCounter,
    last_statsd_log: AtomicU64,
    started: Instant,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            collections: Counter::default(),
            collect_errors: LabeledCounter::new("area"),
            collect_duration: Histogram::new(LATENCY_BUCKETS),
            batches_sent: Counter::default(),
            samples_sent: Counter::default(),
            bytes_sent: Counter::default(),
            push_retries: LabeledCounter::new("reason"),
            push_duration: Histogram::new(LATENCY_BUCKETS),
            dropped_samples: LabeledCounter::new("reason"),
            buffer_batches: Gauge::default(),
            buffer_bytes: Gauge::default(),
            spool_batches: Gauge::default(),
            spool_bytes: Gauge::default(),
            samples_collected: LabeledCounter::new("source"),
            statsd_packets: Counter::default(),
            statsd_lines: Counter::default(),
            statsd_bad_lines: LabeledCounter::new("reason"),
            statsd_kernel_drops: Gauge::default(),
            statsd_series: Gauge::default(),
            scrape_errors: LabeledCounter::new("reason"),
            last_statsd_log: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

impl Events {
    pub fn collected(&self, took: Duration, errors: &[(&'static str, String)]) {
        self.collections.inc();
        self.collect_duration.observe(took.as_secs_f64());
        for (area, _) in errors {
            self.collect_errors.add(area, 1);
        }
    }

    /// A StatsD line (or packet) refused: counted by reason, logged at most every 10 s.
    pub fn statsd_bad_line(&self, reason: &'static str, line: &str) {
        self.statsd_bad_lines.add(reason, 1);
        let now = self.started.elapsed().as_secs() + 1;
        let last = self.last_statsd_log.load(Ordering::Relaxed);
        if now >= last + 10
            && self
                .last_statsd_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let excerpt: String = line.chars().take(120).collect();
            if reason == "cardinality_limit" {
                tracing::warn!(
                    reason,
                    "StatsD series limit reached: refusing new series (first refused: {excerpt:?}); raise --statsd-max-series or fix the metric's tags"
                );
            } else {
                tracing::warn!(
                    reason,
                    "skipping bad StatsD line {excerpt:?} (counted in sonde_agent_statsd_bad_lines_total)"
                );
            }
        }
    }

    pub fn collected_samples(&self, source: &'static str, n: usize) {
        self.samples_collected.add(source, n as u64);
    }

    pub fn buffered(&self, usage: (usize, usize)) {
        self.buffer_batches.set(usage.0 as f64);
        self.buffer_bytes.set(usage.1 as f64);
    }

    pub fn delivered(&self, batch: &EncodedBatch, took: Duration) {
        self.batches_sent.inc();
        self.samples_sent.add(batch.samples as u64);
        self.bytes_sent.add(batch.bytes.len() as u64);
        self.push_duration.observe(took.as_secs_f64());
    }

    pub fn retrying(&self, reason: &'static str, url: &hyper::Uri, cause: &str, delay: Duration) {
        self.push_retries.add(reason, 1);
        tracing::warn!(%url, retry_in = ?delay, "cannot push batch to {url}: {cause}");
    }

    /// Samples that will never be delivered, with the reason; always logged.
    pub fn dropped(&self, reason: &'static str, batches: &[EncodedBatch], cause: &str) {
        let samples: usize = batches.iter().map(|b| b.samples).sum();
        if samples == 0 && batches.is_empty() {
            return;
        }
        self.dropped_samples.add(reason, samples as u64);
        tracing::error!(
            reason,
            batches = batches.len(),
            samples,
            "dropping samples: {cause}"
        );
    }

    /// Samples dropped outside any encoded batch (encode errors, spool), with the reason.
    pub fn dropped_samples_only(&self, reason: &'static str, samples: usize, cause: &str) {
        self.dropped_samples.add(reason, samples as u64);
        tracing::error!(reason, samples, "dropping samples: {cause}");
    }

    pub fn render(&self) -> String {
        let mut e = TextEncoder::new();
        e.counter(
            "sonde_agent_collections_total",
            "Host metric collections run.",
            &self.collections,
        );
        e.labeled_counter(
            "sonde_agent_collect_errors_total",
            "Host metric areas that failed to read, by area.",
            &self.collect_errors,
        );
        e.histogram(
            "sonde_agent_collect_duration_seconds",
            "Time one host metric collection took.",
            &self.collect_duration,
        );
        e.counter(
            "sonde_agent_batches_sent_total",
            "Batches acknowledged by a collector.",
            &self.batches_sent,
        );
        e.counter(
            "sonde_agent_samples_sent_total",
            "Samples in acknowledged batches.",
            &self.samples_sent,
        );
        e.counter(
            "sonde_agent_sent_bytes_total",
            "Bytes of acknowledged batches.",
            &self.bytes_sent,
        );
        e.labeled_counter(
            "sonde_agent_push_retries_total",
            "Failed push attempts that will be retried, by reason.",
            &self.push_retries,
        );
        e.histogram(
            "sonde_agent_push_duration_seconds",
            "Duration of successful push requests.",
            &self.push_duration,
        );
        e.labeled_counter(
            "sonde_agent_dropped_samples_total",
            "Samples that will never be delivered, by reason.",
            &self.dropped_samples,
        );
        e.gauge(
            "sonde_agent_buffer_batches",
            "Batches waiting for delivery.",
            self.buffer_batches.get(),
        );
        e.gauge(
            "sonde_agent_buffer_bytes",
            "Bytes of batches waiting for delivery.",
            self.buffer_bytes.get(),
        );
        e.gauge(
            "sonde_agent_spool_batches",
            "Batches waiting in the disk spool.",
            self.spool_batches.get(),
        );
        e.gauge(
            "sonde_agent_spool_bytes",
            "Bytes of batches waiting in the disk spool.",
            self.spool_bytes.get(),
        );
        e.labeled_counter(
            "sonde_agent_samples_collected_total",
            "Samples collected, by source (host, statsd, scrape, push, self).",
            &self.samples_collected,
        );
        e.counter(
            "sonde_agent_statsd_packets_total",
            "StatsD packets received.",
            &self.statsd_packets,
        );
        e.counter(
            "sonde_agent_statsd_lines_total",
            "StatsD lines received.",
            &self.statsd_lines,
        );
        e.labeled_counter(
            "sonde_agent_statsd_bad_lines_total",
            "StatsD lines refused, by reason.",
            &self.statsd_bad_lines,
        );
        e.gauge("sonde_agent_statsd_kernel_drops", "Packets the kernel dropped for the StatsD UDP socket (receive buffer full), from /proc/net/udp.", self.statsd_kernel_drops.get());
        e.gauge(
            "sonde_agent_statsd_series",
            "StatsD series being aggregated.",
            self.statsd_series.get(),
        );
        e.labeled_counter(
            "sonde_agent_scrape_errors_total",
            "Failed scrapes of local endpoints (and refused pushes of Prometheus text: reason push_parse), by reason.",
            &self.scrape_errors,
        );
        e.process();
        e.finish()
    }
}
