//! The sink's self-metrics: counters (atomics) the sender and `enqueue` update, rendered as
//! `sonde_collector_remote_write_*`, and the one rate limiter for its log lines.

use sonde_common::telemetry::{Counter, Histogram, LATENCY_BUCKETS, LabeledCounter, TextEncoder};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::queue::QueueStats;

/// Log at most one line per this interval for repeated failures.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct SinkStats {
    /// Batches and samples stored in the queue.
    pub batches_enqueued: Counter,
    pub samples_enqueued: Counter,
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

    /// Renders the sink's metrics, with the queue's gauges, into `e`.
    pub fn render(&self, e: &mut TextEncoder, queue: &QueueStats) {
        let p = "sonde_collector_remote_write";
        e.counter(
            &format!("{p}_batches_enqueued_total"),
            "Batches stored in the remote-write queue.",
            &self.batches_enqueued,
        );
        e.counter(
            &format!("{p}_samples_enqueued_total"),
            "Samples stored in the remote-write queue.",
            &self.samples_enqueued,
        );
        e.labeled_counter(
            &format!("{p}_enqueue_refused_total"),
            "Batches the remote-write queue refused, by reason.",
            &self.enqueue_refused,
        );
        e.counter(
            &format!("{p}_samples_sent_total"),
            "Samples acknowledged by the remote storage.",
            &self.samples_sent,
        );
        e.counter(
            &format!("{p}_sent_bytes_total"),
            "Request bytes (snappy) acknowledged by the remote storage.",
            &self.bytes_sent,
        );
        e.labeled_counter(
            &format!("{p}_requests_total"),
            "Remote-write requests by outcome (status class, 429, network, timeout).",
            &self.requests,
        );
        e.counter(
            &format!("{p}_retries_total"),
            "Remote-write attempts retried after a 5xx, 429 or network error.",
            &self.retries,
        );
        e.labeled_counter(
            &format!("{p}_samples_dropped_total"),
            "Samples given up on, by reason.",
            &self.samples_dropped,
        );
        e.counter(
            &format!("{p}_undecodable_records_total"),
            "Queue records that could not be decoded, dropped.",
            &self.undecodable_records,
        );
        e.histogram(
            &format!("{p}_send_duration_seconds"),
            "Duration of successful remote-write requests.",
            &self.send_duration,
        );
        e.gauge(
            &format!("{p}_last_send_duration_seconds"),
            "Duration of the last successful remote-write request.",
            self.last_send_latency().as_secs_f64(),
        );
        let fill = queue.bytes as f64 / queue.max_bytes.max(1) as f64;
        e.gauge(
            &format!("{p}_queue_fill_ratio"),
            "Pending bytes of the remote-write queue over its limit.",
            fill,
        );
        e.gauge(
            &format!("{p}_queue_bytes"),
            "Bytes waiting in the remote-write queue.",
            queue.bytes as f64,
        );
        e.gauge(
            &format!("{p}_queue_records"),
            "Batches waiting in the remote-write queue.",
            queue.records as f64,
        );
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
        let mut e = TextEncoder::new();
        s.render(&mut e, &queue);
        let text = e.finish();
        for want in [
            "sonde_collector_remote_write_samples_sent_total 100\n",
            "sonde_collector_remote_write_sent_bytes_total 2000\n",
            "sonde_collector_remote_write_requests_total{status=\"5xx\"} 2\n",
            "sonde_collector_remote_write_retries_total 2\n",
            "sonde_collector_remote_write_samples_dropped_total{reason=\"rejected\"} 7\n",
            "sonde_collector_remote_write_last_send_duration_seconds 0.012\n",
            "sonde_collector_remote_write_queue_fill_ratio 0.25\n",
            "sonde_collector_remote_write_queue_records 3\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(s.should_log());
        assert!(!s.should_log(), "rate-limited");
    }
}
