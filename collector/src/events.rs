//! The collector's self-metrics: one method per thing that happens, which counts it and logs it
//! in one place. Rendered at `GET /metrics` with the `sonde_collector_` prefix.

use sonde_common::telemetry::{Counter, Histogram, LATENCY_BUCKETS, LabeledCounter, TextEncoder};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::store::{AppendStats, ReplayReport, StoreStats};

/// Log at most one line per reason per this interval, so hostile traffic cannot flood logs.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Events {
    started: Instant,
    pub batches_received: Counter,
    pub samples_received: Counter,
    pub bytes_received: Counter,
    pub batches_rejected: LabeledCounter,
    pub samples_rejected: LabeledCounter,
    pub samples_dropped: LabeledCounter,
    pub push_duration: Histogram,
    pub queries: LabeledCounter,
    pub requests_denied: LabeledCounter,
    pub duplicate_batches: Counter,
    pub token_reloads: LabeledCounter,
    last_log_ms: AtomicU64,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            batches_received: Counter::default(),
            samples_received: Counter::default(),
            bytes_received: Counter::default(),
            batches_rejected: LabeledCounter::new("reason"),
            samples_rejected: LabeledCounter::new("reason"),
            samples_dropped: LabeledCounter::new("reason"),
            push_duration: Histogram::new(LATENCY_BUCKETS),
            queries: LabeledCounter::new("endpoint"),
            requests_denied: LabeledCounter::new("reason"),
            duplicate_batches: Counter::default(),
            token_reloads: LabeledCounter::new("result"),
            last_log_ms: AtomicU64::new(0),
        }
    }
}

impl Events {
    /// True at most once per [`LOG_EVERY`] (shared by all rate-limited log lines).
    fn should_log(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_log_ms.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64)
            && self
                .last_log_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    pub fn batch_accepted(
        &self,
        bytes: usize,
        stats: &AppendStats,
        samples: usize,
        took: Duration,
    ) {
        self.batches_received.inc();
        self.samples_received.add(samples as u64);
        self.bytes_received.add(bytes as u64);
        self.push_duration.observe(took.as_secs_f64());
        if stats.duplicates > 0 {
            self.samples_dropped.add("duplicate", stats.duplicates);
        }
        if stats.out_of_order > 0 || stats.conflicts > 0 {
            self.samples_dropped.add("out_of_order", stats.out_of_order);
            self.samples_dropped
                .add("duplicate_timestamp_conflict", stats.conflicts);
            if self.should_log() {
                tracing::warn!(
                    out_of_order = stats.out_of_order,
                    conflicts = stats.conflicts,
                    "dropped samples older than their series' newest sample, or repeating a stored timestamp with another value"
                );
            }
        }
    }

    /// A whole batch was refused; `samples` is how many it carried (0 if undecodable).
    pub fn batch_rejected(
        &self,
        reason: &'static str,
        samples: usize,
        peer: &dyn std::fmt::Display,
        cause: &str,
    ) {
        self.batches_rejected.add(reason, 1);
        self.samples_rejected.add(reason, samples as u64);
        if self.should_log() {
            tracing::warn!(reason, samples, %peer, "rejected batch: {cause}");
        }
    }

    /// A retried native batch this collector had already accepted: acknowledged, not stored.
    pub fn duplicate_batch(&self, samples: usize) {
        self.duplicate_batches.inc();
        self.samples_dropped.add("duplicate_batch", samples as u64);
    }

    /// A request refused by access control.
    pub fn request_denied(&self, reason: &'static str, path: &str, peer: &str) {
        self.requests_denied.add(reason, 1);
        if self.should_log() {
            tracing::warn!(reason, path, peer, "refused request");
        }
    }

    pub fn query(&self, endpoint: &'static str) {
        self.queries.add(endpoint, 1);
    }

    pub fn render(&self, store: &StoreStats, replay: &ReplayReport, queue_fill: f64) -> String {
        let mut e = TextEncoder::new();
        e.counter(
            "sonde_collector_batches_received_total",
            "Batches accepted (acknowledged with 200).",
            &self.batches_received,
        );
        e.counter(
            "sonde_collector_samples_received_total",
            "Samples in accepted batches.",
            &self.samples_received,
        );
        e.counter(
            "sonde_collector_received_bytes_total",
            "Bytes of accepted request bodies, as sent.",
            &self.bytes_received,
        );
        e.labeled_counter(
            "sonde_collector_batches_rejected_total",
            "Batches refused, by reason.",
            &self.batches_rejected,
        );
        e.labeled_counter(
            "sonde_collector_samples_rejected_total",
            "Samples in refused batches, by reason.",
            &self.samples_rejected,
        );
        e.labeled_counter("sonde_collector_samples_dropped_total", "Samples of accepted batches not stored, by reason (duplicates of stored samples are harmless).", &self.samples_dropped);
        e.histogram(
            "sonde_collector_push_duration_seconds",
            "Time from request to acknowledgement of accepted pushes.",
            &self.push_duration,
        );
        e.labeled_counter(
            "sonde_collector_queries_total",
            "Query API requests, by endpoint.",
            &self.queries,
        );
        e.gauge(
            "sonde_collector_store_series",
            "Series in the embedded store's head.",
            store.series as f64,
        );
        e.gauge(
            "sonde_collector_store_head_samples",
            "Samples in the embedded store's head.",
            store.samples_in_head as f64,
        );
        e.gauge(
            "sonde_collector_store_wal_bytes",
            "Bytes in the embedded store's write-ahead log.",
            store.wal_bytes as f64,
        );
        let per = |num: u64, den: u64| {
            if den == 0 {
                0.0
            } else {
                num as f64 / den as f64
            }
        };
        for (name, help, value) in [
            (
                "sonde_collector_store_blocks",
                "Blocks on disk in the embedded store.",
                store.blocks as f64,
            ),
            (
                "sonde_collector_store_block_bytes",
                "Bytes of the embedded store's blocks on disk (chunks, index and meta).",
                store.block_bytes as f64,
            ),
            (
                "sonde_collector_store_block_samples",
                "Samples in the embedded store's blocks.",
                store.block_samples as f64,
            ),
            (
                "sonde_collector_store_bytes_per_sample",
                "Bytes on disk per sample in the embedded store's blocks, index included.",
                per(store.block_bytes, store.block_samples),
            ),
            (
                "sonde_collector_store_head_bytes_per_series",
                "Memory of the head per series: compressed samples plus names and labels (held twice: labels and lookup key), plus a fixed 160 bytes of structure per series (an estimate).",
                per(
                    store.head_chunk_bytes + 2 * store.head_label_bytes + 160 * store.series,
                    store.series,
                ),
            ),
        ] {
            e.gauge(name, help, value);
        }
        for (name, help, value) in [
            (
                "sonde_collector_store_blocks_cut_total",
                "Blocks cut from the head.",
                store.blocks_cut,
            ),
            (
                "sonde_collector_store_compactions_total",
                "Block compactions (several blocks merged into one).",
                store.compactions,
            ),
            (
                "sonde_collector_store_blocks_deleted_total",
                "Blocks deleted by retention (age or size).",
                store.blocks_deleted_by_retention,
            ),
            (
                "sonde_collector_store_wal_commits_total",
                "Groups of appends written to the WAL at once (each fsynced under --wal-fsync always).",
                store.wal_commits,
            ),
            (
                "sonde_collector_store_checkpoints_total",
                "WAL checkpoints (segments replaced by what replay still needs of them).",
                store.checkpoints,
            ),
            (
                "sonde_collector_store_maintenance_errors_total",
                "Failed storage maintenance runs (cut, checkpoint, compaction, retention); retried.",
                store.maintenance_errors,
            ),
            (
                "sonde_collector_store_corrupt_chunks_total",
                "Block chunks found damaged by queries (skipped).",
                store.corrupt_chunks,
            ),
        ] {
            e.counter_value(name, help, value);
        }
        e.counter(
            "sonde_collector_duplicate_batches_total",
            "Retried native batches acknowledged again without being stored twice.",
            &self.duplicate_batches,
        );
        e.labeled_counter(
            "sonde_collector_requests_denied_total",
            "Requests refused by access control, by reason.",
            &self.requests_denied,
        );
        e.labeled_counter(
            "sonde_collector_token_reloads_total",
            "Token file reloads, by result (ok, error).",
            &self.token_reloads,
        );
        for (name, help, value) in [
            (
                "sonde_collector_store_replayed_samples",
                "Samples recovered from the WAL at start.",
                replay.samples,
            ),
            (
                "sonde_collector_store_replay_damaged_segments",
                "WAL segments whose replay stopped at a damaged record at start.",
                replay.damaged_segments,
            ),
            (
                "sonde_collector_store_replay_truncated_bytes",
                "Bytes of a torn write cut from the WAL's tail at start (never acknowledged).",
                replay.truncated_bytes,
            ),
            (
                "sonde_collector_store_replay_lost_samples",
                "Samples in the WAL that could not be replayed at start (their series record was lost).",
                replay.orphan_samples,
            ),
            (
                "sonde_collector_store_replay_undecodable_records",
                "WAL records that passed their checksum but could not be decoded at start.",
                replay.undecodable_records,
            ),
        ] {
            e.gauge(name, help, value as f64);
        }
        e.gauge(
            "sonde_collector_queue_fill_ratio",
            "How full the ingest queue to storage is (0 idle, 1 full: pushes wait). The autoscaling signal.",
            queue_fill,
        );
        e.gauge(
            "sonde_collector_uptime_seconds",
            "Seconds since the collector started.",
            self.started.elapsed().as_secs_f64(),
        );
        e.process();
        e.finish()
    }
}
