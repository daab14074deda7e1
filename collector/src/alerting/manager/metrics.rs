//! The manager's self-metrics: one counter per thing that happens, rendered with the
//! collector's `sonde_collector_` prefix.

use sonde_common::telemetry::{LabeledCounter, TextEncoder};

pub struct Stats {
    /// Alerts received, by `state` (firing, resolved).
    pub alerts_received: LabeledCounter,
    /// Notifications delivered, by `receiver`.
    pub sent: LabeledCounter,
    /// Notifications given up on (a permanent refusal), by `receiver`.
    pub failed: LabeledCounter,
    /// Failed attempts that will be retried, by `receiver`.
    pub retried: LabeledCounter,
    /// Alerts left out of a notification, by `reason` (silence, inhibition).
    pub muted: LabeledCounter,
    /// Flushes skipped because the receiver already had the same alerts, by `receiver`.
    pub deduplicated: LabeledCounter,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            alerts_received: LabeledCounter::new("state"),
            sent: LabeledCounter::new("receiver"),
            failed: LabeledCounter::new("receiver"),
            retried: LabeledCounter::new("receiver"),
            muted: LabeledCounter::new("reason"),
            deduplicated: LabeledCounter::new("receiver"),
        }
    }
}

/// Point-in-time figures taken under the manager's locks.
pub struct Gauges {
    pub alerts_firing: usize,
    pub silences_active: usize,
    pub outbox: usize,
    pub history: usize,
}

pub fn render(enc: &mut TextEncoder, s: &Stats, g: &Gauges) {
    const P: &str = "sonde_collector_alertmanager_";
    enc.labeled_counter(
        &format!("{P}alerts_received_total"),
        "Alerts received by the alert manager, by state.",
        &s.alerts_received,
    );
    enc.labeled_counter(
        &format!("{P}notifications_sent_total"),
        "Notifications delivered, by receiver.",
        &s.sent,
    );
    enc.labeled_counter(
        &format!("{P}notifications_failed_total"),
        "Notifications refused permanently (4xx other than 429), by receiver.",
        &s.failed,
    );
    enc.labeled_counter(
        &format!("{P}notification_retries_total"),
        "Failed notification attempts that are retried, by receiver.",
        &s.retried,
    );
    enc.labeled_counter(
        &format!("{P}notifications_deduplicated_total"),
        "Group flushes skipped because the receiver was already notified, by receiver.",
        &s.deduplicated,
    );
    enc.labeled_counter(
        &format!("{P}alerts_muted_total"),
        "Alerts left out of notifications, by reason (silence, inhibition).",
        &s.muted,
    );
    enc.gauge(
        &format!("{P}alerts_firing"),
        "Firing alerts held, all tenants.",
        g.alerts_firing as f64,
    );
    enc.gauge(
        &format!("{P}silences_active"),
        "Active silences, all tenants.",
        g.silences_active as f64,
    );
    enc.gauge(
        &format!("{P}outbox_notifications"),
        "Notifications waiting in the outbox for delivery.",
        g.outbox as f64,
    );
    enc.gauge(
        &format!("{P}history_entries"),
        "Entries held in the alert history, all tenants.",
        g.history as f64,
    );
}
