//! Self-metric primitives shared by the agent and the collector: counters, counters with a
//! `reason` (or other single) label, gauges and histograms, rendered in the Prometheus text
//! format. Each binary owns one registry struct of these (its `events` module), injected
//! where things happen; nothing here is global.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (stored as f64 bits).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Counters keyed by the value of one label (e.g. `reason`). Off the hot path: rejections.
#[derive(Debug)]
pub struct LabeledCounter {
    label: &'static str,
    values: Mutex<BTreeMap<String, u64>>,
}

impl LabeledCounter {
    pub fn new(label: &'static str) -> Self {
        Self {
            label,
            values: Mutex::new(BTreeMap::new()),
        }
    }
    pub fn add(&self, value: &str, n: u64) {
        let mut map = self.values.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(value) {
            Some(c) => *c += n,
            None => {
                map.insert(value.to_owned(), n);
            }
        }
    }
    pub fn get(&self, value: &str) -> u64 {
        let map = self.values.lock().unwrap_or_else(|e| e.into_inner());
        map.get(value).copied().unwrap_or(0)
    }
    pub fn total(&self) -> u64 {
        let map = self.values.lock().unwrap_or_else(|e| e.into_inner());
        map.values().sum()
    }
}

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in micro-units, so it can be atomic; rendered divided back.
    sum_micros: AtomicU64,
}

/// Latency buckets in seconds, 1 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((v.max(0.0) * 1e6) as u64, Ordering::Relaxed);
    }
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Writes metrics in the Prometheus text format (version 0.0.4).
///
/// Each method writes a whole family (`# HELP`, `# TYPE`, samples); the `*_samples` methods
/// write only samples, after a [`TextEncoder::family`] header, so one family can hold the
/// samples of several instances told apart by a constant label ([`TextEncoder::const_label`]).
#[derive(Default)]
pub struct TextEncoder {
    out: String,
    /// `name="value"` added to every sample line (empty: none).
    const_labels: String,
}

impl TextEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines (`kind`: counter, gauge, histogram).
    pub fn family(&mut self, name: &str, help: &str, kind: &str) {
        self.header(name, help, kind);
    }

    /// Adds `name="value"` to every sample line written from now on (`None` stops it).
    pub fn const_label(&mut self, label: Option<(&str, &str)>) {
        self.const_labels = label
            .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
            .unwrap_or_default();
    }

    /// One sample line; `labels` is `a="b",c="d"` or empty.
    fn line(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = match (self.const_labels.is_empty(), labels.is_empty()) {
            (true, true) => writeln!(self.out, "{name} {value}"),
            (true, false) => writeln!(self.out, "{name}{{{labels}}} {value}"),
            (false, true) => writeln!(self.out, "{name}{{{}}} {value}", self.const_labels),
            (false, false) => {
                writeln!(self.out, "{name}{{{},{labels}}} {value}", self.const_labels)
            }
        };
    }

    pub fn counter(&mut self, name: &str, help: &str, c: &Counter) {
        self.header(name, help, "counter");
        self.counter_samples(name, c);
    }

    pub fn counter_samples(&mut self, name: &str, c: &Counter) {
        self.line(name, "", c.get());
    }

    /// A counter kept elsewhere (e.g. an atomic owned by a library), given by its value.
    pub fn counter_value(&mut self, name: &str, help: &str, v: u64) {
        self.header(name, help, "counter");
        self.line(name, "", v);
    }

    pub fn labeled_counter(&mut self, name: &str, help: &str, c: &LabeledCounter) {
        self.header(name, help, "counter");
        self.labeled_counter_samples(name, c);
    }

    pub fn labeled_counter_samples(&mut self, name: &str, c: &LabeledCounter) {
        let lines: Vec<(String, u64)> = {
            let map = c.values.lock().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .map(|(value, n)| (format!("{}=\"{}\"", c.label, escape(value)), *n))
                .collect()
        };
        for (labels, n) in lines {
            self.line(name, &labels, n);
        }
    }

    pub fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.header(name, help, "gauge");
        self.gauge_sample(name, v);
    }

    pub fn gauge_sample(&mut self, name: &str, v: f64) {
        self.line(name, "", format_value(v));
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, help, "histogram");
        self.histogram_samples(name, h);
    }

    pub fn histogram_samples(&mut self, name: &str, h: &Histogram) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (bound, b) in h.bounds.iter().zip(&h.buckets) {
            cumulative += b.load(Ordering::Relaxed);
            self.line(&bucket, &format!("le=\"{bound}\""), cumulative);
        }
        let count = h.count.load(Ordering::Relaxed);
        self.line(&bucket, "le=\"+Inf\"", count);
        let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        self.line(&format!("{name}_sum"), "", sum);
        self.line(&format!("{name}_count"), "", count);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

impl TextEncoder {
    /// The standard process metrics (`process_cpu_seconds_total`,
    /// `process_resident_memory_bytes`, `process_open_fds`, `process_start_time_seconds`) of
    /// this process, from /proc/self: the CPU signal an autoscaler reads. Absent figures are
    /// left out.
    pub fn process(&mut self) {
        let ticks = 100.0; // USER_HZ on Linux
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..])
        {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(u), Some(s)) = (
                f.get(11).and_then(|v| v.parse::<f64>().ok()),
                f.get(12).and_then(|v| v.parse::<f64>().ok()),
            ) {
                self.header(
                    "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds.",
                    "counter",
                );
                let _ = writeln!(self.out, "process_cpu_seconds_total {}", (u + s) / ticks);
            }
            let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            });
            if let (Some(start), Some(boot)) = (f.get(19).and_then(|v| v.parse::<f64>().ok()), boot)
            {
                self.gauge(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    boot + start / ticks,
                );
            }
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status")
            && let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        {
            self.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                kb * 1024.0,
            );
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.gauge(
                "process_open_fds",
                "Number of open file descriptors.",
                fds.count() as f64,
            );
        }
    }
}

impl TextEncoder {
    /// One sample with its own labels, after a [`TextEncoder::family`] header (for families
    /// keyed by several labels, e.g. rule group and rule). Labels with empty values are left
    /// out, as the text format reads them the same.
    pub fn labeled_sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        let mut l = String::new();
        for (n, value) in labels.iter().filter(|(_, value)| !value.is_empty()) {
            if !l.is_empty() {
                l.push(',');
            }
            let _ = write!(l, "{n}=\"{}\"", escape(value));
        }
        self.line(name, &l, format_value(v));
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Formats a value as Prometheus does: shortest round-trip form, `NaN`, `+Inf`, `-Inf`.
pub fn format_value(v: f64) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

/// [`format_value`], appended to `out`.
pub fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        use std::fmt::Write;
        // Writing to a String cannot fail.
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_family_holds_several_instances_by_a_constant_label() {
        let (a, b) = (Counter::default(), Counter::default());
        a.add(3);
        b.add(5);
        let reasons = LabeledCounter::new("reason");
        reasons.add("full", 2);
        let h = Histogram::new(&[1.0]);
        h.observe(0.5);
        let mut e = TextEncoder::new();
        e.family("x_total", "X.", "counter");
        for (url, c) in [("http://a/\"q\"", &a), ("http://b", &b)] {
            e.const_label(Some(("url", url)));
            e.counter_samples("x_total", c);
        }
        e.family("r_total", "R.", "counter");
        e.labeled_counter_samples("r_total", &reasons);
        e.family("h", "H.", "histogram");
        e.histogram_samples("h", &h);
        e.const_label(None);
        e.gauge("g", "G.", 1.0);
        assert_eq!(
            e.finish(),
            "# HELP x_total X.\n# TYPE x_total counter\n\
             x_total{url=\"http://a/\\\"q\\\"\"} 3\nx_total{url=\"http://b\"} 5\n\
             # HELP r_total R.\n# TYPE r_total counter\n\
             r_total{url=\"http://b\",reason=\"full\"} 2\n\
             # HELP h H.\n# TYPE h histogram\n\
             h_bucket{url=\"http://b\",le=\"1\"} 1\nh_bucket{url=\"http://b\",le=\"+Inf\"} 1\n\
             h_sum{url=\"http://b\"} 0.5\nh_count{url=\"http://b\"} 1\n\
             # HELP g G.\n# TYPE g gauge\ng 1\n"
        );
    }

    #[test]
    fn renders_text_format() {
        let c = Counter::default();
        c.add(3);
        let r = LabeledCounter::new("reason");
        r.add("too_large", 2);
        r.add("malformed", 1);
        r.add("too_large", 1);
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut e = TextEncoder::new();
        e.counter("x_total", "Things.", &c);
        e.labeled_counter("y_total", "Rejections.", &r);
        e.gauge("z", "A gauge.", f64::INFINITY);
        e.histogram("lat_seconds", "Latency.", &h);
        let text = e.finish();
        assert!(
            text.contains("# TYPE x_total counter\nx_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("y_total{reason=\"malformed\"} 1\ny_total{reason=\"too_large\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("z +Inf\n"), "{text}");
        assert!(text.contains("lat_seconds_bucket{le=\"0.1\"} 1\nlat_seconds_bucket{le=\"1\"} 2\nlat_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(
            text.contains("lat_seconds_sum 5.55\nlat_seconds_count 3\n"),
            "{text}"
        );
        assert_eq!(r.total(), 4);
    }

    #[test]
    fn process_metrics_of_this_process() {
        let mut e = TextEncoder::new();
        e.process();
        let text = e.finish();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}
