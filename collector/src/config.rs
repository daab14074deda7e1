//! Validated configuration, derived from [`crate::cli::Cli`]; each stage gets its own part.

use crate::cli::Cli;
use sonde_common::duration::parse_duration;
use sonde_common::model::Limits;
use sonde_common::wire::WireLimits;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("--{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
    #[error(
        "refusing to listen on {0} without authentication: give --token-file, use a loopback address, or pass --insecure-no-auth to accept unauthenticated traffic from the network"
    )]
    UnauthenticatedNonLoopback(SocketAddr),
}

/// What the ingest stage checks.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    pub wire: WireLimits,
    pub limits: Limits,
    pub max_sample_age: Duration,
    pub max_sample_future: Duration,
    /// Samples per second each tenant may push (0: unlimited); bursts up to twice that.
    pub tenant_samples_per_second: f64,
    /// Recently accepted native batches remembered for duplicate suppression.
    pub dedup_batches: usize,
}

/// The embedded store's time-keeping.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub retention: Duration,
    pub retention_bytes: u64,
    pub block_range: Duration,
    pub out_of_order_window: Duration,
    pub maintenance_interval: Duration,
    pub wal_fsync: crate::queue::FsyncPolicy,
    /// Group-commit delay of the WAL and of the remote-write queues.
    pub commit_delay: Duration,
}

#[derive(Clone, Debug)]
pub struct QueryConfig {
    pub lookback: Duration,
    /// Most series one query's selectors may select together.
    pub max_series: usize,
    /// Most samples one query may load plus points it may produce.
    pub max_samples: usize,
    /// Longest one query may run.
    pub timeout: Duration,
    /// Most points the range query results cache holds (0: off).
    pub cache_points: usize,
}

/// The alerting loop: rules, where they are evaluated, and the alert manager.
#[derive(Clone, Debug)]
pub struct AlertingConfig {
    /// Rule files; `None`: no rules are evaluated.
    pub rules_dir: Option<PathBuf>,
    /// Alertmanager-format routing and receivers; `None`: alerts are listed, not notified.
    pub alert_config: Option<PathBuf>,
    /// Remote Prometheus query API; `None`: the embedded store in-process.
    pub query_url: Option<hyper::Uri>,
    pub query_token: Option<String>,
    pub evaluation_delay: Duration,
    pub evaluation_interval: Duration,
    /// A separate alerting instance to forward fast-path samples to.
    pub forward_to: Option<hyper::Uri>,
    pub external_url: String,
}

/// The pull model: scrape jobs and the collector pool that shares them out.
#[derive(Clone, Debug)]
pub struct ScrapeSettings {
    /// `scrape_configs` file; `None`: nothing is scraped.
    pub config_file: Option<PathBuf>,
    /// Collectors per target (>= 1).
    pub replicas: usize,
    /// etcd endpoints for pool membership and etcd discovery.
    pub etcd: Vec<hyper::Uri>,
    /// Static pool members (URLs), this collector included.
    pub peers: Vec<String>,
    /// This collector's URL as pool members know it.
    pub advertise_url: String,
    /// Lease TTL of this collector's pool membership in etcd.
    pub pool_ttl: Duration,
    /// The pool as a DNS name with a port.
    pub pool_dns: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub storage: StorageConfig,
    pub insecure_no_auth: bool,
    pub token_file: Option<PathBuf>,
    pub tls: Option<crate::tls::TlsConfig>,
    pub remote_write: Vec<hyper::Uri>,
    pub queue_max_bytes: u64,
    pub queue_fsync: crate::queue::FsyncPolicy,
    pub remote_write_flush_interval: Duration,
    /// `None`: every batch through the disk queue.
    pub remote_write_direct: Option<crate::sinks::remote_write::DirectConfig>,
    pub drain_timeout: Duration,
    pub ingest: IngestConfig,
    pub query: QueryConfig,
    pub alerting: AlertingConfig,
    pub scrape: ScrapeSettings,
}

fn fsync_policy(flag: &'static str, value: &str) -> Result<crate::queue::FsyncPolicy, ConfigError> {
    Ok(match value.trim() {
        "always" => crate::queue::FsyncPolicy::Always,
        "never" => crate::queue::FsyncPolicy::Never,
        other => match duration(flag, other)? {
            d if d.is_zero() => {
                return Err(ConfigError::Invalid {
                    flag,
                    reason: "use `always`, `never` or a positive duration".to_owned(),
                });
            }
            d => crate::queue::FsyncPolicy::Interval(d),
        },
    })
}

fn duration(flag: &'static str, value: &str) -> Result<Duration, ConfigError> {
    parse_duration(value).map_err(|reason| ConfigError::Invalid { flag, reason })
}

fn nonzero_duration(flag: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let d = duration(flag, value)?;
    if d.is_zero() {
        return Err(ConfigError::Invalid {
            flag,
            reason: "must be greater than zero".into(),
        });
    }
    Ok(d)
}

/// An http(s) URL with a host.
fn uri(flag: &'static str, value: &str) -> Result<hyper::Uri, ConfigError> {
    let u: hyper::Uri = value.parse().map_err(|e| ConfigError::Invalid {
        flag,
        reason: format!("{value:?} is not a URL: {e}"),
    })?;
    if !matches!(u.scheme_str(), Some("http" | "https")) || u.host().is_none() {
        return Err(ConfigError::Invalid {
            flag,
            reason: format!("{value:?} must be an http:// or https:// URL with a host"),
        });
    }
    Ok(u)
}

fn positive(flag: &'static str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(ConfigError::Invalid {
            flag,
            reason: "must be greater than zero".into(),
        });
    }
    Ok(value)
}

impl TryFrom<Cli> for Config {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, Self::Error> {
        if !cli.listen.ip().is_loopback() && !cli.insecure_no_auth && cli.token_file.is_none() {
            return Err(ConfigError::UnauthenticatedNonLoopback(cli.listen));
        }
        let ingest = IngestConfig {
            wire: WireLimits {
                max_encoded_bytes: positive("max-body-bytes", cli.max_body_bytes)?,
                max_decoded_bytes: positive("max-decoded-bytes", cli.max_decoded_bytes)?,
            },
            limits: Limits {
                max_labels_per_series: cli.max_labels_per_series,
                max_name_len: positive("max-name-length", cli.max_name_length)?,
                max_label_value_len: positive(
                    "max-label-value-length",
                    cli.max_label_value_length,
                )?,
                max_series_per_batch: positive("max-series-per-batch", cli.max_series_per_batch)?,
                max_samples_per_batch: positive(
                    "max-samples-per-batch",
                    cli.max_samples_per_batch,
                )?,
            },
            max_sample_age: duration("max-sample-age", &cli.max_sample_age)?,
            max_sample_future: duration("max-sample-future", &cli.max_sample_future)?,
            tenant_samples_per_second: cli.tenant_samples_per_second,
            dedup_batches: cli.dedup_batches,
        };
        Ok(Config {
            listen: cli.listen,
            data_dir: cli.data_dir,
            storage: StorageConfig {
                retention: duration("retention", &cli.retention)?,
                retention_bytes: cli.retention_size,
                out_of_order_window: duration("out-of-order-window", &cli.out_of_order_window)?,
                wal_fsync: fsync_policy("wal-fsync", &cli.wal_fsync)?,
                commit_delay: match duration("commit-delay", &cli.commit_delay)? {
                    d if d > Duration::from_secs(1) => {
                        return Err(ConfigError::Invalid {
                            flag: "commit-delay",
                            reason: "at most 1s: every push waits this long".to_owned(),
                        });
                    }
                    d => d,
                },
                maintenance_interval: match duration(
                    "maintenance-interval",
                    &cli.maintenance_interval,
                )? {
                    d if d.is_zero() => {
                        return Err(ConfigError::Invalid {
                            flag: "maintenance-interval",
                            reason: "must be greater than zero".into(),
                        });
                    }
                    d => d,
                },
                block_range: match duration("block-range", &cli.block_range)? {
                    d if d < Duration::from_secs(1) => {
                        return Err(ConfigError::Invalid {
                            flag: "block-range",
                            reason: "must be at least 1s".into(),
                        });
                    }
                    d => d,
                },
            },
            insecure_no_auth: cli.insecure_no_auth,
            token_file: cli.token_file,
            remote_write: cli
                .remote_write
                .iter()
                .filter(|u| !u.trim().is_empty())
                .map(|u| {
                    let uri: hyper::Uri = u.trim().parse().map_err(|e| ConfigError::Invalid {
                        flag: "remote-write",
                        reason: format!("'{u}' is not a URL: {e}"),
                    })?;
                    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                        return Err(ConfigError::Invalid {
                            flag: "remote-write",
                            reason: format!("'{u}': only http://host:port/path URLs are supported"),
                        });
                    }
                    Ok(uri)
                })
                .collect::<Result<Vec<_>, _>>()?,
            queue_max_bytes: cli.queue_max_bytes,
            queue_fsync: fsync_policy("queue-fsync", &cli.queue_fsync)?,
            remote_write_flush_interval: duration(
                "remote-write-flush-interval",
                &cli.remote_write_flush_interval,
            )?,
            remote_write_direct: match cli.remote_write_direct.as_str() {
                "off" => None,
                wait => Some(crate::sinks::remote_write::DirectConfig {
                    wait: duration("remote-write-direct", wait)?,
                    timeout: nonzero_duration(
                        "remote-write-direct-timeout",
                        &cli.remote_write_direct_timeout,
                    )?,
                }),
            },
            tls: match (cli.tls_cert, cli.tls_key) {
                (Some(cert), Some(key)) => Some(crate::tls::TlsConfig {
                    cert,
                    key,
                    client_ca: cli.tls_client_ca,
                }),
                _ => None,
            },
            drain_timeout: duration("drain-timeout", &cli.drain_timeout)?,
            ingest,
            query: QueryConfig {
                lookback: duration("query-lookback", &cli.query_lookback)?,
                max_series: positive("query-max-series", cli.query_max_series)?,
                max_samples: positive("query-max-samples", cli.query_max_samples)?,
                timeout: duration("query-timeout", &cli.query_timeout)?,
                cache_points: cli.query_cache_points,
            },
            scrape: ScrapeSettings {
                config_file: cli.scrape_config.clone(),
                replicas: positive("scrape-replicas", cli.scrape_replicas)?,
                etcd: cli
                    .etcd
                    .iter()
                    .filter(|u| !u.is_empty())
                    .map(|u| uri("etcd", u))
                    .collect::<Result<_, _>>()?,
                peers: cli
                    .pool_peers
                    .iter()
                    .filter(|p| !p.is_empty())
                    .cloned()
                    .collect(),
                pool_ttl: nonzero_duration("pool-ttl", &cli.pool_ttl)?,
                pool_dns: cli.pool_dns.clone().filter(|d| !d.is_empty()),
                advertise_url: cli
                    .advertise_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{}", cli.listen)),
            },
            alerting: AlertingConfig {
                external_url: cli
                    .external_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{}", cli.listen)),
                rules_dir: cli.rules_dir,
                alert_config: cli.alert_config,
                query_url: cli
                    .query_url
                    .as_deref()
                    .map(|u| uri("query-url", u))
                    .transpose()?,
                query_token: cli.query_token,
                evaluation_delay: duration("evaluation-delay", &cli.evaluation_delay)?,
                evaluation_interval: nonzero_duration(
                    "evaluation-interval",
                    &cli.evaluation_interval,
                )?,
                forward_to: cli
                    .alerting
                    .as_deref()
                    .map(|u| uri("alerting", u))
                    .transpose()?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut full = vec!["sonde-collector"];
        full.extend_from_slice(args);
        Config::try_from(Cli::try_parse_from(full).unwrap())
    }

    #[test]
    fn storage_flags() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.storage.retention, Duration::from_secs(15 * 86400));
        assert_eq!(c.storage.block_range, Duration::from_secs(7200));
        assert_eq!(c.storage.retention_bytes, 0);
        assert_eq!(c.storage.out_of_order_window, Duration::from_secs(300));
        let c = parse(&[
            "--retention",
            "0",
            "--retention-size",
            "1000",
            "--block-range",
            "10m",
        ])
        .unwrap();
        assert_eq!(c.storage.retention, Duration::ZERO);
        assert_eq!(c.storage.retention_bytes, 1000);
        assert_eq!(c.storage.block_range, Duration::from_secs(600));
        assert!(parse(&["--block-range", "10ms"]).is_err());
        assert!(parse(&["--retention", "forever"]).is_err());
    }

    #[test]
    fn defaults_are_valid_and_loopback() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9470");
        assert_eq!(c.ingest.max_sample_future, Duration::from_secs(600));
        assert_eq!(c.drain_timeout, Duration::from_secs(25));
    }

    #[test]
    fn non_loopback_needs_explicit_opt_in() {
        let err = parse(&["--listen", "0.0.0.0:9470"]).unwrap_err();
        assert!(err.to_string().contains("--insecure-no-auth"), "{err}");
        assert!(parse(&["--listen", "0.0.0.0:9470", "--insecure-no-auth"]).is_ok());
    }

    #[test]
    fn wal_fsync_policies() {
        use crate::queue::FsyncPolicy;
        assert_eq!(parse(&[]).unwrap().storage.wal_fsync, FsyncPolicy::Always);
        assert_eq!(
            parse(&["--wal-fsync", "500ms"]).unwrap().storage.wal_fsync,
            FsyncPolicy::Interval(Duration::from_millis(500))
        );
        assert_eq!(
            parse(&["--wal-fsync", "never"]).unwrap().storage.wal_fsync,
            FsyncPolicy::Never
        );
        assert_eq!(
            parse(&[]).unwrap().storage.commit_delay,
            Duration::from_millis(3)
        );
        assert_eq!(
            parse(&["--commit-delay", "0s"])
                .unwrap()
                .storage
                .commit_delay,
            Duration::ZERO
        );
        assert!(parse(&["--commit-delay", "5s"]).is_err());
        let err = parse(&["--wal-fsync", "0s"]).unwrap_err().to_string();
        assert!(err.contains("wal-fsync"), "{err}");
        assert!(parse(&["--wal-fsync", "sometimes"]).is_err());
    }

    #[test]
    fn queue_fsync_policies() {
        use crate::queue::FsyncPolicy;
        assert!(matches!(
            parse(&[]).unwrap().queue_fsync,
            FsyncPolicy::Always
        ));
        assert!(
            matches!(parse(&["--queue-fsync", "1s"]).unwrap().queue_fsync, FsyncPolicy::Interval(d) if d == Duration::from_secs(1))
        );
        assert!(matches!(
            parse(&["--queue-fsync", "never"]).unwrap().queue_fsync,
            FsyncPolicy::Never
        ));
        assert!(
            parse(&["--queue-fsync", "sometimes"])
                .unwrap_err()
                .to_string()
                .starts_with("--queue-fsync")
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = parse(&["--max-sample-age", "soon"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--max-sample-age: invalid duration"),
            "{err}"
        );
        let err = parse(&["--max-body-bytes", "0"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--max-body-bytes: must be greater than zero"
        );
    }
}
