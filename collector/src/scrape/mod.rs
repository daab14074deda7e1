//! The pull model. A target's path: [`discovery`] (static lists, files, DNS, etcd) yields
//! target groups -> [`config`]'s jobs and [`relabel`] turn them into targets -> [`pool`] decides
//! which collector of the pool scrapes each one (rendezvous hashing over the live members) ->
//! the scrape loop of each owned target pulls, parses and labels its samples -> the route,
//! like pushed batches (store, sinks, fast path).
//!
//! Files: [`config`] (the file format, checked), [`relabel`] (+ `md5` for hashmod),
//! [`target`] (labels, URL, key), [`discovery`] (static, file, DNS), `job` (ownership and
//! hand-over per job), [`target_loop`] (one target's scrapes), [`fetch`] (the HTTP GET),
//! [`append`] (labels, limits, report series, staleness), `service` ([`ScrapeManager`]),
//! `events` (self-metrics).

pub mod append;
pub mod config;
pub mod discovery;
mod events;
pub mod fetch;
mod job;
mod md5;
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

/// Where scraped batches go: the route, like pushed batches. Batches handed over are
/// validated against the model's default limits.
pub trait ScrapeSink: Send + Sync {
    fn write<'a>(
        &'a self,
        tenant: &'a str,
        batch: &'a Batch,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// Scraped samples take the path of pushed ones: store, sinks, alerting fast path.
impl ScrapeSink for crate::route::Router {
    fn write<'a>(
        &'a self,
        tenant: &'a str,
        batch: &'a Batch,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            self.route(tenant, batch, None, None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use sonde_common::model::{MetricKind, Sample, Series};
    use sonde_common::wire::{BatchBuilder, BatchHeader};

    use super::ScrapeSink;
    use crate::route::{Router, SampleTap};

    #[derive(Default)]
    struct Seen(Mutex<Vec<(String, usize)>>);

    impl SampleTap for Seen {
        fn offer(&self, tenant: &str, batch: &super::Batch) {
            if let Ok(mut s) = self.0.lock() {
                s.push((tenant.to_owned(), batch.sample_count()));
            }
        }
    }

    #[tokio::test]
    async fn the_router_takes_scraped_batches() {
        let seen = Arc::new(Seen::default());
        let router = Router::new(None, Vec::new()).with_tap(seen.clone());
        let mut b = BatchBuilder::new(BatchHeader {
            agent_id: "scrape/j/1".into(),
            sequence: 1,
            sent_at_ms: 0,
        });
        b.push(
            &Series::new("up", [("job", "j")]),
            MetricKind::Gauge,
            None,
            vec![Sample::new(1, 1.0)],
        );
        router.write("team-a", &b.build()).await.unwrap();
        assert_eq!(*seen.0.lock().unwrap(), vec![("team-a".to_owned(), 1)]);
    }
}
