//! The pull model. A target's path: [`discovery`] (static lists, files, DNS, etcd) yields
//! target groups -> [`config`]'s jobs and [`relabel`] turn them into targets -> [`pool`] decides
//! which collector of the pool scrapes each one (rendezvous hashing over the live members) ->
//! the scrape loop of each owned target pulls, parses and labels its samples -> the route,
//! like pushed batches (store, sinks, fast path).

pub mod config;
pub mod discovery;
mod md5;
pub mod pool;
pub mod relabel;
pub mod target;

use std::collections::BTreeMap;

/// Label names and values, sorted by name.
pub type LabelMap = BTreeMap<String, String>;

/// Targets as one discovery source yields them (Prometheus's target group): each target is at
/// least `__address__`, plus `__meta_*` labels; `labels` apply to all of them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TargetGroup {
    /// Identifies the group within its provider (file path, DNS name, etcd prefix).
    pub source: String,
    pub targets: Vec<LabelMap>,
    pub labels: LabelMap,
}
