//! Generate: simulated hosts and the batches they push. Deterministic, so the loss audit can
//! recompute exactly which series, timestamps and values every acknowledged request carried.
//!
//! Each host has the agent's host-metric shape plus an application: per-core CPU modes, memory,
//! load, per-disk and per-interface counters, per-filesystem gauges, HTTP request counters and a
//! latency histogram. A configurable share of series churns: those carry a `generation` label
//! that changes every `churn_every` ticks, so new series keep appearing as on a real fleet.
//! Values are integers below 2^40 so every storage keeps them exactly.

use sonde_common::model::{MetricKind, Series};

const MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];
const MEMORY: [&str; 7] = [
    "MemTotal",
    "MemFree",
    "MemAvailable",
    "Buffers",
    "Cached",
    "SwapTotal",
    "SwapFree",
];
const DISK: [&str; 6] = [
    "node_disk_read_bytes_total",
    "node_disk_written_bytes_total",
    "node_disk_reads_completed_total",
    "node_disk_writes_completed_total",
    "node_disk_read_time_seconds_total",
    "node_disk_write_time_seconds_total",
];
const NET: [&str; 8] = [
    "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total",
    "node_network_receive_packets_total",
    "node_network_transmit_packets_total",
    "node_network_receive_errs_total",
    "node_network_transmit_errs_total",
    "node_network_receive_drop_total",
    "node_network_transmit_drop_total",
];
const HANDLERS: [&str; 4] = ["/api/orders", "/api/users", "/healthz", "/static"];
const METHODS: [&str; 3] = ["GET", "POST", "PUT"];
const STATUSES: [&str; 3] = ["200", "404", "500"];
const BUCKETS: [&str; 11] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf",
];

/// The shape of every simulated host.
#[derive(Clone, Debug)]
pub struct HostShape {
    pub cpus: usize,
    pub disks: usize,
    pub interfaces: usize,
    pub filesystems: usize,
    /// Share (0..=1) of series that churn.
    pub churn: f64,
    /// Ticks between generations of churning series.
    pub churn_every: u64,
}

impl Default for HostShape {
    fn default() -> Self {
        Self {
            cpus: 4,
            disks: 2,
            interfaces: 2,
            filesystems: 2,
            churn: 0.0,
            churn_every: 60,
        }
    }
}

/// One series template of a host: identity without the churn label, and whether it churns.
#[derive(Clone, Debug)]
pub struct Template {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub kind: MetricKind,
    pub churns: bool,
}

/// A simulated host: its name and series templates.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub templates: Vec<Template>,
    churn_every: u64,
}

fn t(name: &str, labels: &[(&str, String)], kind: MetricKind) -> Template {
    Template {
        name: name.to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        kind,
        churns: false,
    }
}

impl Host {
    pub fn new(name: String, shape: &HostShape) -> Host {
        use MetricKind::{Counter, Gauge, Histogram};
        let mut v = Vec::new();
        for cpu in 0..shape.cpus {
            for mode in MODES {
                v.push(t(
                    "node_cpu_seconds_total",
                    &[("cpu", cpu.to_string()), ("mode", mode.into())],
                    Counter,
                ));
            }
        }
        for m in MEMORY {
            v.push(t(&format!("node_memory_{m}_bytes"), &[], Gauge));
        }
        for l in ["node_load1", "node_load5", "node_load15"] {
            v.push(t(l, &[], Gauge));
        }
        for d in 0..shape.disks {
            for m in DISK {
                v.push(t(
                    m,
                    &[("device", format!("sd{}", (b'a' + d as u8) as char))],
                    Counter,
                ));
            }
        }
        for i in 0..shape.interfaces {
            for m in NET {
                v.push(t(m, &[("device", format!("eth{i}"))], Counter));
            }
        }
        for f in 0..shape.filesystems {
            let labels = [
                ("device", format!("/dev/vd{}", (b'a' + f as u8) as char)),
                ("fstype", "ext4".into()),
                (
                    "mountpoint",
                    if f == 0 {
                        "/".into()
                    } else {
                        format!("/data{f}")
                    },
                ),
            ];
            for m in [
                "node_filesystem_size_bytes",
                "node_filesystem_free_bytes",
                "node_filesystem_avail_bytes",
            ] {
                v.push(t(m, &labels, Gauge));
            }
        }
        for h in HANDLERS {
            for m in METHODS {
                for s in STATUSES {
                    v.push(t(
                        "http_requests_total",
                        &[
                            ("handler", h.into()),
                            ("method", m.into()),
                            ("status", s.into()),
                        ],
                        Counter,
                    ));
                }
            }
            for le in BUCKETS {
                v.push(t(
                    "http_request_duration_seconds_bucket",
                    &[("handler", h.into()), ("le", le.into())],
                    Histogram,
                ));
            }
            v.push(t(
                "http_request_duration_seconds_sum",
                &[("handler", h.into())],
                Histogram,
            ));
            v.push(t(
                "http_request_duration_seconds_count",
                &[("handler", h.into())],
                Histogram,
            ));
        }
        // The application's series churn (think pods being replaced): the last share of them.
        let churning = ((v.len() as f64) * shape.churn.clamp(0.0, 1.0)).round() as usize;
        let len = v.len();
        for tpl in &mut v[len - churning..] {
            tpl.churns = true;
        }
        Host {
            name,
            templates: v,
            churn_every: shape.churn_every.max(1),
        }
    }

    pub fn series_count(&self) -> usize {
        self.templates.len()
    }

    /// The identity of template `i` at `tick`, with the `host` label (and `generation` for
    /// churning series).
    pub fn series(&self, i: usize, tick: u64) -> Series {
        let tpl = &self.templates[i];
        let mut labels: Vec<(String, String)> = tpl.labels.clone();
        labels.push(("host".into(), self.name.clone()));
        if tpl.churns {
            labels.push(("generation".into(), (tick / self.churn_every).to_string()));
        }
        Series::new(tpl.name.clone(), labels)
    }

    /// The value of template `i` at `tick`: counters grow, gauges wander; always an integer.
    pub fn value(&self, i: usize, tick: u64) -> f64 {
        let seed = (i as u64).wrapping_mul(2_654_435_761) % 1000 + 1;
        match self.templates[i].kind {
            MetricKind::Counter | MetricKind::Histogram => (seed * (tick + 1)) as f64,
            _ => ((seed * 7919 + tick * 13) % 1_000_000) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_shape_and_churn() {
        let shape = HostShape {
            churn: 0.1,
            churn_every: 10,
            ..HostShape::default()
        };
        let h = Host::new("h1".into(), &shape);
        assert_eq!(h.series_count(), 32 + 7 + 3 + 12 + 16 + 6 + 36 + 52);
        let churning = h.templates.iter().filter(|t| t.churns).count();
        assert_eq!(churning, 16);
        let last = h.series_count() - 1;
        assert_ne!(
            h.series(last, 0),
            h.series(last, 10),
            "a churning series changes identity"
        );
        assert_eq!(h.series(0, 0), h.series(0, 10), "a stable series keeps it");
        let limits = sonde_common::model::Limits::default();
        for i in 0..h.series_count() {
            h.series(i, 0).validate(&limits).unwrap();
        }
        assert!(h.value(0, 2) > h.value(0, 1), "counters grow");
        assert_eq!(h.value(5, 3).fract(), 0.0);
    }
}
