//! The pull model. A target's path: [`discovery`] (static lists, files, DNS, etcd) yields
//! target groups -> [`config`]'s jobs and [`relabel`] turn them into targets -> [`pool`] decides
//! which collector of the pool scrapes each one (rendezvous hashing over the live members) ->
//! the scrape loop of each owned target pulls, parses and labels its samples -> the route,
//! like pushed batches (store, sinks, fast path).

pub mod append;
pub mod config;
pub mod discovery;
mod events;
pub mod fetch;
mod job;
mod md5;
mod owners_standin;
pub mod pool;
pub mod relabel;
mod service;
pub mod target;
pub mod target_loop;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use sonde_common::wire::Batch;

pub use config::{ConfigError, ScrapeConfigFile, check_file, load};
pub use service::{ScrapeManager, ScrapeManagerOptions};

/// Where scraped batches go; the server implements it with the route, like pushed batches.
pub trait ScrapeSink: Send + Sync {
    fn write<'a>(
        &'a self,
        tenant: &'a str,
        batch: Batch,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

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
