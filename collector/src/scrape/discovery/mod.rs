//! Service discovery: providers that yield [`super::TargetGroup`]s and update them as
//! endpoints come and go.
//!
//! Each provider runs as one task until its cancellation token fires and publishes the whole
//! current list of its groups on a `watch` channel: a reader only ever needs the latest list,
//! and a slow reader cannot make a provider queue stale updates.

pub mod dns;
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
    pub fn spawn(
        self,
        job: &str,
        tracker: &TaskTracker,
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
                // etcd discovery (discovery/etcd.rs) is wired in here once it lands; until
                // then such a job has no targets from etcd, and says so.
                tracing::warn!(
                    job,
                    prefix = cfg.prefix,
                    "scrape: etcd_sd_configs is not available in this build; no targets from it"
                );
                drop(tx);
            }
        }
        rx
    }
}
