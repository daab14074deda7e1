//! The scrape engine's self-metrics: one place that counts what happens.

use std::sync::atomic::{AtomicI64, Ordering};

use sonde_common::telemetry::{Counter, LabeledCounter, TextEncoder};

#[derive(Debug)]
pub struct Stats {
    pub scrapes: Counter,
    pub scrapes_failed: LabeledCounter,
    pub samples: Counter,
    pub stale_markers: Counter,
    pub write_failures: Counter,
    pub reloads: Counter,
    pub targets_running: AtomicI64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            scrapes: Counter::default(),
            scrapes_failed: LabeledCounter::new("reason"),
            samples: Counter::default(),
            stale_markers: Counter::default(),
            write_failures: Counter::default(),
            reloads: Counter::default(),
            targets_running: AtomicI64::new(0),
        }
    }
}

impl Stats {
    /// `known` and `dropped`: targets discovered in all jobs, and those relabeling dropped.
    pub fn render(&self, e: &mut TextEncoder, known: usize, dropped: usize) {
        e.gauge(
            "sonde_collector_scrape_targets_scraped",
            "Targets this collector scrapes now (owned, or handing over).",
            self.targets_running.load(Ordering::Relaxed).max(0) as f64,
        );
        e.gauge(
            "sonde_collector_scrape_targets_known",
            "Targets of all jobs after relabeling, whoever scrapes them.",
            known as f64,
        );
        e.gauge(
            "sonde_collector_scrape_targets_dropped",
            "Discovered targets that relabeling dropped.",
            dropped as f64,
        );
        e.counter(
            "sonde_collector_scrapes_total",
            "Scrapes attempted.",
            &self.scrapes,
        );
        e.labeled_counter(
            "sonde_collector_scrapes_failed_total",
            "Scrapes that failed, by reason (timeout, status, sample_limit, parse reasons, ...).",
            &self.scrapes_failed,
        );
        e.counter(
            "sonde_collector_scrape_samples_total",
            "Samples scraped and kept after metric relabeling.",
            &self.samples,
        );
        e.counter(
            "sonde_collector_scrape_stale_markers_total",
            "Staleness markers written for targets that went away.",
            &self.stale_markers,
        );
        e.counter(
            "sonde_collector_scrape_write_failures_total",
            "Batches of scraped samples the route refused.",
            &self.write_failures,
        );
        e.counter(
            "sonde_collector_scrape_reloads_total",
            "Scrape configurations applied after the first.",
            &self.reloads,
        );
    }
}
