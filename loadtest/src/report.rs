//! Report: the run's figures as text (for people), JSON (for scripts and CI: it names
//! `accepted` and `lost` plainly) and SVG plots of throughput and latency over time.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::audit::AuditReport;
use crate::drive::{DriveResult, Mode, Protocol, Second};

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// CPU and memory of one server process over the run, read from /proc.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessUsage {
    pub name: String,
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub name: String,
    pub target: String,
    pub protocol: Protocol,
    pub mode: Mode,
    pub hosts: usize,
    pub series_per_host: usize,
    pub interval_s: f64,
    pub duration_s: f64,
    pub requests: u64,
    pub offered: u64,
    pub accepted: u64,
    pub lost: u64,
    pub failed: u64,
    pub failed_requests: u64,
    pub offered_per_s: f64,
    pub accepted_per_s: f64,
    pub retries: u64,
    pub late_starts: u64,
    pub latency: Latency,
    pub statuses: BTreeMap<String, u64>,
    pub audit: Option<AuditReport>,
    pub servers: Vec<ProcessUsage>,
    /// Server CPU time per accepted sample, in microseconds (all server processes together).
    pub server_cpu_us_per_sample: Option<f64>,
    pub timeline: Vec<Second>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        target: &str,
        protocol: Protocol,
        mode: Mode,
        hosts: usize,
        series_per_host: usize,
        interval_s: f64,
        r: &DriveResult,
        audit: Option<AuditReport>,
        servers: Vec<ProcessUsage>,
    ) -> Report {
        let secs = r.elapsed.as_secs_f64().max(1e-9);
        let q = |p: f64| {
            if r.latency.is_empty() {
                0.0
            } else {
                r.latency.value_at_quantile(p) as f64 / 1000.0
            }
        };
        let cpu: f64 = servers.iter().map(|s| s.cpu_seconds).sum();
        Report {
            name: name.to_owned(),
            target: target.to_owned(),
            protocol,
            mode,
            hosts,
            series_per_host,
            interval_s,
            duration_s: secs,
            requests: r.requests,
            offered: r.offered_samples,
            accepted: r.accepted_samples,
            lost: audit
                .as_ref()
                .map(|a| a.lost_samples + a.wrong_values)
                .unwrap_or(0),
            failed: r.failed_samples,
            failed_requests: r.failed_requests,
            offered_per_s: r.offered_samples as f64 / secs,
            accepted_per_s: r.accepted_samples as f64 / secs,
            retries: r.retries,
            late_starts: r.late_starts,
            latency: Latency {
                p50_ms: q(0.5),
                p90_ms: q(0.9),
                p99_ms: q(0.99),
                p999_ms: q(0.999),
                max_ms: r.latency.max() as f64 / 1000.0,
            },
            statuses: r.statuses.clone(),
            audit,
            server_cpu_us_per_sample: (!servers.is_empty() && r.accepted_samples > 0)
                .then(|| cpu * 1e6 / r.accepted_samples as f64),
            servers,
            timeline: r.timeline.clone(),
        }
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "== {} -> {} ({:?}, {:?})",
            self.name, self.target, self.protocol, self.mode
        );
        let _ = writeln!(
            s,
            "hosts {} x {} series, interval {}s, ran {:.1}s, {} requests",
            self.hosts, self.series_per_host, self.interval_s, self.duration_s, self.requests
        );
        let _ = writeln!(
            s,
            "offered  {:>12} samples ({:.0}/s)",
            self.offered, self.offered_per_s
        );
        let _ = writeln!(
            s,
            "accepted {:>12} samples ({:.0}/s)",
            self.accepted, self.accepted_per_s
        );
        let _ = writeln!(
            s,
            "failed   {:>12} samples (given up after retries)",
            self.failed
        );
        let _ = writeln!(
            s,
            "retries {}, late starts (open-loop backlog) {}",
            self.retries, self.late_starts
        );
        let l = &self.latency;
        let _ = writeln!(
            s,
            "latency ms: p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
            l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        );
        let _ = writeln!(
            s,
            "responses: {}",
            self.statuses
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        match &self.audit {
            Some(a) => {
                let _ = writeln!(
                    s,
                    "audit: {} acknowledged samples checked, {} lost, {} wrong values, {} returned twice, {} query errors",
                    a.checked_samples,
                    a.lost_samples,
                    a.wrong_values,
                    a.duplicate_samples,
                    a.query_errors
                );
                for e in &a.examples {
                    let _ = writeln!(s, "  missing: {e}");
                }
            }
            None => {
                let _ = writeln!(s, "audit: not run");
            }
        }
        for p in &self.servers {
            let _ = writeln!(
                s,
                "server {}: {:.2} CPU s, peak RSS {:.1} MiB",
                p.name,
                p.cpu_seconds,
                p.peak_rss_bytes as f64 / 1048576.0
            );
        }
        if let Some(us) = self.server_cpu_us_per_sample {
            let _ = writeln!(s, "server CPU per accepted sample: {us:.3} µs");
        }
        s
    }
}

/// A named, coloured series of (x, y) points.
pub type Line<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A line chart: one or more series of (x, y), with axes and a legend.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, lines: &[Line<'_>]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 360.0, 70.0, 20.0, 40.0, 50.0);
    let max_x = lines
        .iter()
        .flat_map(|l| l.2.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let max_y = lines
        .iter()
        .flat_map(|l| l.2.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let sx = |x: f64| left + x / max_x * (w - left - right);
    let sy = |y: f64| h - bottom - y / max_y * (h - top - bottom);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        w / 2.0,
        escape(title)
    );
    let _ = write!(
        svg,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"#,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for i in 0..=4 {
        let y = max_y * i as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{left}" y1="{0}" x2="{1}" y2="{0}" stroke="#ddd"/><text x="{2}" y="{3}" text-anchor="end">{4}</text>"##,
            sy(y),
            w - right,
            left - 6.0,
            sy(y) + 4.0,
            si(y)
        );
        let x = max_x * i as f64 / 4.0;
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            sx(x),
            h - bottom + 16.0,
            si(x)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (left + w - right) / 2.0,
        h - 12.0,
        escape(x_label)
    );
    let _ = write!(
        svg,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        h / 2.0,
        h / 2.0,
        escape(y_label)
    );
    for (i, (name, color, points)) in lines.iter().enumerate() {
        let pts: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        for (x, y) in points.iter().filter(|_| points.len() <= 12) {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                sx(*x),
                sy(*y)
            );
        }
        let ly = top + 14.0 * i as f64;
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            w - right - 170.0,
            ly,
            w - right - 152.0,
            ly + 5.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// 1234567 -> "1.23M".
fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.3}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.3}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Writes `<stem>.txt`, `<stem>.json`, `<stem>-throughput.svg` and `<stem>-latency.svg` in `dir`.
pub fn write_all(report: &Report, dir: &Path, stem: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(format!("{stem}.txt")), report.text())?;
    std::fs::write(
        dir.join(format!("{stem}.json")),
        serde_json::to_string_pretty(report).unwrap_or_default(),
    )?;
    let t = &report.timeline;
    let pts = |f: &dyn Fn(&Second) -> f64| {
        t.iter()
            .map(|s| (s.second as f64, f(s)))
            .collect::<Vec<_>>()
    };
    std::fs::write(
        dir.join(format!("{stem}-throughput.svg")),
        line_chart(
            &format!("{}: samples/s", report.name),
            "seconds",
            "samples/s",
            &[
                ("offered", "#888", pts(&|s| s.offered_samples as f64)),
                ("accepted", "#1f77b4", pts(&|s| s.accepted_samples as f64)),
            ],
        ),
    )?;
    std::fs::write(
        dir.join(format!("{stem}-latency.svg")),
        line_chart(
            &format!("{}: push latency", report.name),
            "seconds",
            "ms",
            &[
                ("p50", "#2ca02c", pts(&|s| s.p50_ms)),
                ("p99", "#d62728", pts(&|s| s.p99_ms)),
            ],
        ),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_is_well_formed_svg() {
        let svg = line_chart(
            "t <1>",
            "x",
            "y",
            &[("a", "#000", vec![(0.0, 1.0), (1.0, 2.5e6)])],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert!(svg.contains("<polyline"));
        assert_eq!(si(2_500_000.0), "2.500M");
        assert_eq!(si(0.5), "0.50");
    }
}
