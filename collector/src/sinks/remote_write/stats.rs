//! The sink's self-metrics: counters (atomics) the sender and `enqueue` update, rendered as
//! `sonde_collector_remote_write_*`, and the one rate limiter for its log lines.

use sonde_common::telemetry::{Counter, Histogram, LATENCY_BUCKETS, LabeledCounter, TextEncoder};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::queue::{QueueError, QueueStats};

/// Log at most one line per this interval for repeated failures.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct SinkStats {
    /// Batches and samples stored in the queue.
    pub batches_enqueued: Counter,
    pub samples_enqueued: Counter,
    /// Batches and samples the direct path delivered before their pushes were answered.
    pub batches_forwarded: Counter,
    pub samples_forwarded: Counter,
    /// Times the direct path fell back to the disk queue.
    pub spills: Counter,
    /// Batches `enqueue` refused, by reason (`full`, `too_large`, `closed`, `error`).
    pub enqueue_refused: LabeledCounter,
    /// Samples the remote storage acknowledged.
    pub samples_sent: Counter,
    /// Request bytes (snappy-compressed) the remote storage acknowledged.
    pub bytes_sent: Counter,
    /// Requests by outcome: `2xx`, `3xx`, `4xx`, `429`, `5xx`, `network`, `timeout`.
    pub requests: LabeledCounter,
    /// Attempts that failed in a retryable way and were tried again.
    pub retries: Counter,
    /// Samples given up on, by reason: `rejected` (a 4xx other than 429).
    pub samples_dropped: LabeledCounter,
    /// Queue records this build cannot decode, dropped (their sample count is unknown).
    pub undecodable_records: Counter,
    /// Duration of successful requests.
    pub send_duration: Histogram,
    last_send_micros: AtomicU64,
    started: Instant,
    last_log_ms: AtomicU64,
}

impl Default for SinkStats {
    fn default() -> Self {
        Self {
            batches_enqueued: Counter::default(),
            samples_enqueued: Counter::default(),
            batches_forwarded: Counter::default(),
            samples_forwarded: Counter::default(),
            spills: Counter::default(),
            enqueue_refused: LabeledCounter::new("reason"),
            samples_sent: Counter::default(),
            bytes_sent: Counter::default(),
            requests: LabeledCounter::new("status"),
            retries: Counter::default(),
            samples_dropped: LabeledCounter::new("reason"),
            undecodable_records: Counter::default(),
            send_duration: Histogram::new(LATENCY_BUCKETS),
            last_send_micros: AtomicU64::new(0),
            started: Instant::now(),
            last_log_ms: AtomicU64::new(0),
        }
    }
}

impl SinkStats {
    /// How long the last successful request took.
    pub fn last_send_latency(&self) -> Duration {
        Duration::from_micros(self.last_send_micros.load(Ordering::Relaxed))
    }

    pub(crate) fn sent(&self, samples: usize, bytes: usize, took: Duration) {
        self.samples_sent.add(samples as u64);
        self.bytes_sent.add(bytes as u64);
        self.send_duration.observe(took.as_secs_f64());
        self.last_send_micros
            .store(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts `batches` batches of `samples` samples pushed to the queue as one unit, stored
    /// or refused per `result`.
    pub(crate) fn queued(&self, result: &Result<(), QueueError>, batches: usize, samples: usize) {
        match result {
            Ok(()) => {
                self.batches_enqueued.add(batches as u64);
                self.samples_enqueued.add(samples as u64);
            }
            Err(e) => {
                let reason = match e {
                    QueueError::Full { .. } => "full",
                    QueueError::TooLarge { .. } => "too_large",
                    QueueError::Closed => "closed",
                    _ => "error",
                };
                self.enqueue_refused.add(reason, batches as u64);
            }
        }
    }

    /// True at most once per [`LOG_EVERY`].
    pub(crate) fn should_log(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_log_ms.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64)
            && self
                .last_log_ms
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Renders the metrics of every sink, with their queues' gauges, into `e`: one family per
    /// metric, one sample per sink told apart by its `url` label.
    pub fn render_all(e: &mut TextEncoder, sinks: &[(&str, &SinkStats, &QueueStats)]) {
        type Samples = fn(&mut TextEncoder, &str, &SinkStats, &QueueStats);
        let families: [(&str, &str, &str, Samples); 17] = [
            (
                "batches_enqueued_total",
                "Batches stored in the remote-write queue.",
                "counter",
                |e, n, s, _| e.counter_samples(n, &s.batches_enqueued),
            ),
            (
                "samples_enqueued_total",
                "Samples stored in the remote-write queue.",
                "counter",
                |e, n, s, _| e.counter_samples(n, &s.samples_enqueued),
            ),
            (
                "batches_forwarded_total",
                "Batches delivered by the direct path before their pushes were answered.",
                "counter",
                |e, n, s, _| e.counter_samples(n, &s.batches_forwarded),
            ),
            (
                "samples_forwarded_total",
                "Samples delivered by the direct path before their pushes were answered.",
                "counter",
                |e, n, s, _| e.counter_samples(n, &s.samples_forwarded),
            ),
            (
                "spills_total",
                "Times the direct path fell back to the disk queue (the storage failed or was slow).",
                "counter",
                |e, n, s, _| e.counter_samples(n, &s.spills),
            ),
            (
                "enqueue_refused_total",
                "Batches the remote-write queue refused, by reason.",
                "counter",
                |e, n, s, _| e.labeled_counter_samples(n, &s.enqueue_refused),
            ),
            (
                "samples_sent_total",
                "Samples acknowledged by the remote storage.",
                "counter",
                |e, n, s, _| e.counter_samples(n, &s.samples_sent),
            ),
            (
                "sent_bytes_total",
                "Request bytes (snappy) acknowledged by the remote storage.",
                "counter",
                |e, n, s, _| e.counter_samples(n, &s.bytes_sent),
            ),
            (
                "requests_total",
                "Remote-write requests by outcome (status class, 429, network, timeout).",
                "counter",
                |e, n, s, _| e.labeled_counter_samples(n, &s.requests),
            ),
            (
                "retries_total",
                "Remote-write attempts retried after a 5xx, 429 or network error.",
                "counter",
                |e, n, s, _| e.counter_samples(n, &s.retries),
            ),
            (
                "samples_dropped_total",
                "Samples given up on, by reason.",
                "counter",
                |e, n, s, _| e.labeled_counter_samples(n, &s.samples_dropped),
            ),
            (
                "undecodable_records_total",
                "Queue records that could not be decoded, dropped.",
                "counter",
                |e, n, s, _| e.counter_samples(n, &s.undecodable_records),
            ),
            (
                "send_duration_seconds",
                "Duration of successful remote-write requests.",
                "histogram",
                |e, n, s, _| e.histogram_samples(n, &s.send_duration),
            ),
            (
                "last_send_duration_seconds",
                "Duration of the last successful remote-write request.",
                "gauge",
                |e, n, s, _| e.gauge_sample(n, s.last_send_latency().as_secs_f64()),
            ),
            (
                "queue_fill_ratio",
                "Pending bytes of the remote-write queue over its limit.",
                "gauge",
                |e, n, _, q| e.gauge_sample(n, q.bytes as f64 / q.max_bytes.max(1) as f64),
            ),
            (
                "queue_bytes",
                "Bytes waiting in the remote-write queue.",
                "gauge",
                |e, n, _, q| e.gauge_sample(n, q.bytes as f64),
            ),
            (
                "queue_records",
                "Batches waiting in the remote-write queue.",
                "gauge",
                |e, n, _, q| e.gauge_sample(n, q.records as f64),
            ),
        ];
        if sinks.is_empty() {
            return;
        }
        for (suffix, help, kind, samples) in families {
            let name = format!("sonde_collector_remote_write_{suffix}");
            e.family(&name, help, kind);
            for &(url, stats, queue) in sinks {
                e.const_label(Some(("url", url)));
                samples(e, &name, stats, queue);
            }
            e.const_label(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_queue_gauges() {
        let s = SinkStats::default();
        s.sent(100, 2000, Duration::from_millis(12));
        s.requests.add("2xx", 1);
        s.requests.add("5xx", 2);
        s.retries.add(2);
        s.samples_dropped.add("rejected", 7);
        assert_eq!(s.last_send_latency(), Duration::from_millis(12));
        let queue = QueueStats {
            bytes: 250,
            max_bytes: 1000,
            records: 3,
            ..QueueStats::default()
        };
        let other = SinkStats::default();
        other.retries.add(9);
        let empty = QueueStats::default();
        let mut e = TextEncoder::new();
        SinkStats::render_all(
            &mut e,
            &[
                ("http://vm:8428/api/v1/write", &s, &queue),
                ("http://mimir/push", &other, &empty),
            ],
        );
        let text = e.finish();
        let a = "url=\"http://vm:8428/api/v1/write\"";
        for want in [
            format!("sonde_collector_remote_write_samples_sent_total{{{a}}} 100\n"),
            format!("sonde_collector_remote_write_sent_bytes_total{{{a}}} 2000\n"),
            format!("sonde_collector_remote_write_requests_total{{{a},status=\"5xx\"}} 2\n"),
            format!("sonde_collector_remote_write_retries_total{{{a}}} 2\n"),
            "sonde_collector_remote_write_retries_total{url=\"http://mimir/push\"} 9\n".to_owned(),
            format!(
                "sonde_collector_remote_write_samples_dropped_total{{{a},reason=\"rejected\"}} 7\n"
            ),
            format!("sonde_collector_remote_write_last_send_duration_seconds{{{a}}} 0.012\n"),
            format!("sonde_collector_remote_write_queue_fill_ratio{{{a}}} 0.25\n"),
            format!("sonde_collector_remote_write_queue_records{{{a}}} 3\n"),
        ] {
            assert!(text.contains(&want), "missing {want:?} in\n{text}");
        }
        // One header per family, whatever the number of sinks.
        assert_eq!(
            text.matches("# TYPE sonde_collector_remote_write_retries_total counter")
                .count(),
            1
        );
        assert!(s.should_log());
        assert!(!s.should_log(), "rate-limited");
    }
}
