//! The agent's own metrics as points, so they travel in its pushes like any other source: the
//! text `/metrics` serves, parsed back with the shared exposition parser, plus the `host`
//! label. Counters carry the agent's start time.

use sonde_common::exposition::{self, Exposition, Format, ParseLimits};
use sonde_common::model::{Label, MetricKind, Series};

use crate::batch::Point;

/// Points of an exposition, with `host` added where a sample has none; cumulative kinds get
/// `start_ms`.
pub fn points(exp: &Exposition, host: &str, start_ms: Option<i64>) -> Vec<Point> {
    exp.samples()
        .map(|(family, sample)| {
            let mut series: Series = sample.series.clone();
            if series.label("host").is_none() {
                series = Series::new(
                    series.name,
                    series
                        .labels
                        .into_iter()
                        .map(|Label { name, value }| (name, value))
                        .chain([("host".to_owned(), host.to_owned())]),
                );
            }
            let kind = family.kind();
            let cumulative = matches!(
                kind,
                MetricKind::Counter | MetricKind::Histogram | MetricKind::Summary
            );
            Point {
                series,
                kind,
                start_ms: if cumulative { start_ms } else { None },
                value: sample.value,
            }
        })
        .collect()
}

/// The agent's self-metrics text as points.
pub fn from_text(
    text: &str,
    host: &str,
    now_ms: i64,
    start_ms: i64,
) -> Result<Vec<Point>, exposition::ParseError> {
    let exp = exposition::parse(
        text,
        Format::PrometheusText,
        now_ms,
        &ParseLimits::default(),
    )?;
    Ok(points(&exp, host, Some(start_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Events;

    #[test]
    fn self_metrics_become_valid_points_with_the_host_label() {
        let events = Events::default();
        events.statsd_bad_line("no_value", "x");
        let points = from_text(&events.render(), "h1", 10, 5).unwrap();
        assert!(points.len() > 20);
        let limits = sonde_common::model::Limits::default();
        for p in &points {
            p.series.validate(&limits).unwrap();
            assert_eq!(p.series.label("host"), Some("h1"));
        }
        let bad = points
            .iter()
            .find(|p| p.series.name == "sonde_agent_statsd_bad_lines_total")
            .unwrap();
        assert_eq!(
            (
                bad.value,
                bad.kind,
                bad.start_ms,
                bad.series.label("reason")
            ),
            (1.0, MetricKind::Counter, Some(5), Some("no_value"))
        );
        let gauge = points
            .iter()
            .find(|p| p.series.name == "sonde_agent_buffer_bytes")
            .unwrap();
        assert_eq!(gauge.start_ms, None);
    }
}
