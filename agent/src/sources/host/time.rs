//! The host's clock: `node_time_seconds`, the Unix time at collection as fractional seconds (a
//! gauge), as node_exporter's `time` collector names it. Compared with the collection timestamp
//! the collector stores, it shows a host clock that is off. node_exporter's time zone and
//! clocksource series are not produced. A clock before 1970 reads as a negative number.

use std::time::{SystemTime, UNIX_EPOCH};

use sonde_common::model::MetricKind;

use super::reading;
use crate::sources::Reading;

pub fn readings(now: SystemTime, host: &str) -> Vec<Reading> {
    let seconds = match now.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    };
    vec![reading(
        "node_time_seconds",
        MetricKind::Gauge,
        seconds,
        host,
        &[],
    )]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn reports_unix_seconds_with_the_fraction() {
        let now = UNIX_EPOCH + Duration::from_millis(1_718_000_000_250);
        let out = readings(now, "h");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].series.name, "node_time_seconds");
        assert_eq!(out[0].value, 1_718_000_000.25);
        assert_eq!(out[0].kind, MetricKind::Gauge);
        assert_eq!(out[0].series.label("host"), Some("h"));
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(readings(before, "h")[0].value, -5.0);
    }
}
