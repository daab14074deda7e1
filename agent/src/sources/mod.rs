//! Sources: where the agent's readings come from. A source turns what it reads (the host's
//! `/proc` today; StatsD packets and scrapes later) into [`Reading`]s and knows nothing of
//! aggregation, batching or pushing, which happen downstream.

pub mod host;
pub mod scrape;
pub mod statsd;

use sonde_common::model::{MetricKind, Series};

/// One reading of one series, before aggregation.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub series: Series,
    pub kind: MetricKind,
    pub value: f64,
}
