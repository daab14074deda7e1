//! Service discovery: providers that yield [`super::TargetGroup`]s and update them as
//! endpoints come and go.
//!
//! Each provider runs as one task until its cancellation token fires and publishes the whole
//! current list of its groups on a `watch` channel: a reader only ever needs the latest list,
//! and a slow reader cannot make a provider queue stale updates.

pub mod dns;
pub mod etcd;
pub mod file;
#[path = "static.rs"]
pub mod static_targets;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::TargetGroup;
use super::config::{DnsSdConfig, EtcdSdConfig, FileSdConfig, ScrapeJob};

/// One source of target groups of a job.
#[derive(Debug, Clone)]
pub enum Provider {
    Static(Vec<TargetGroup>),
    File(FileSdConfig),
    Dns(DnsSdConfig),
    Etcd(EtcdSdConfig),
}

impl Provider {
    /// The providers a job's config asks for.
    pub fn for_job(job: &ScrapeJob) -> Vec<Provider> {
        let mut out = Vec::new();
        if !job.static_configs.is_empty() {
            out.push(Provider::Static(job.static_configs.clone()));
        }
        out.extend(job.file_sd_configs.iter().cloned().map(Provider::File));
        out.extend(job.dns_sd_configs.iter().cloned().map(Provider::Dns));
        out.extend(job.etcd_sd_configs.iter().cloned().map(Provider::Etcd));
        out
    }

    /// Starts the provider's task; the receiver sees its groups, updated as they change.
    /// `default_etcd`: the collector's `--etcd` endpoints, for `etcd_sd_configs` without their
    /// own.
    pub fn spawn(
        self,
        job: &str,
        tracker: &TaskTracker,
        default_etcd: &[hyper::Uri],
        cancel: CancellationToken,
    ) -> watch::Receiver<Vec<TargetGroup>> {
        let (tx, rx) = watch::channel(Vec::new());
        let job = job.to_owned();
        match self {
            Provider::Static(groups) => static_targets::run(groups, tx),
            Provider::File(cfg) => {
                tracker.spawn(file::run(job, cfg, tx, cancel));
            }
            Provider::Dns(cfg) => {
                tracker.spawn(dns::run(job, cfg, None, tx, cancel));
            }
            Provider::Etcd(cfg) => {
                let mut endpoints: Vec<hyper::Uri> = Vec::new();
                for e in &cfg.endpoints {
                    match e.parse() {
                        Ok(u) => endpoints.push(u),
                        Err(err) => {
                            tracing::warn!(job, endpoint = e, error = %err, "scrape: ignoring an etcd endpoint that is not a URL")
                        }
                    }
                }
                if endpoints.is_empty() {
                    endpoints = default_etcd.to_vec();
                }
                if endpoints.is_empty() {
                    tracing::error!(
                        job,
                        prefix = cfg.prefix,
                        "scrape: etcd_sd_configs without endpoints and no --etcd: no targets from it"
                    );
                    drop(tx);
                } else {
                    drop(tx);
                    return etcd::spawn(
                        sonde_common::etcd::EtcdClient::new(endpoints),
                        cfg.prefix,
                        cancel,
                    );
                }
            }
        }
        rx
    }
}
