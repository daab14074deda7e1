//! Validated configuration, derived from [`crate::cli::Cli`]; each stage gets its own part.

use crate::aggregate::AggregateConfig;
use crate::cli::Cli;
use crate::sources::host::HostConfig;
use crate::sources::scrape::ScrapeConfig;
use crate::sources::statsd::listener::StatsdConfig;
use sonde_common::duration::parse_duration;
use sonde_common::wire::Compression;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("--{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        reason: reason.into(),
    }
}

/// What the push stage needs.
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// Full push URLs (`.../api/v1/push`), in failover order.
    pub urls: Vec<hyper::Uri>,
    pub timeout: Duration,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub compression: Compression,
    /// Bearer token for the collectors.
    pub token: Option<String>,
    pub tls: crate::tls::TlsConfig,
}

/// What the StatsD source needs.
#[derive(Clone, Debug)]
pub struct StatsdSettings {
    pub listener: StatsdConfig,
    pub aggregate: AggregateConfig,
}

#[derive(Clone, Debug)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// What the etcd registration needs (`--register`).
#[derive(Clone, Debug)]
pub struct RegisterConfig {
    pub endpoints: Vec<hyper::Uri>,
    /// `<prefix><address>`
    pub key: String,
    /// host:port collectors scrape.
    pub address: String,
    pub ttl: Duration,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub interval: Duration,
    pub host: HostConfig,
    pub buffer_bytes: usize,
    pub push: PushConfig,
    pub shutdown_timeout: Duration,
    pub http_listen: Option<SocketAddr>,
    pub batch_max_samples: usize,
    pub flush_jitter: Duration,
    pub spool: Option<SpoolConfig>,
    /// `None` when no StatsD socket is configured.
    pub statsd: Option<StatsdSettings>,
    pub scrapes: Vec<ScrapeConfig>,
    /// `None` unless `--register` is given.
    pub register: Option<RegisterConfig>,
}

fn duration(flag: &'static str, value: &str) -> Result<Duration, ConfigError> {
    parse_duration(value).map_err(|reason| invalid(flag, reason))
}

/// `http://host:port` (optionally with a path prefix) to the push endpoint's URI.
fn push_url(base: &str) -> Result<hyper::Uri, ConfigError> {
    let base = base.trim();
    let uri: hyper::Uri = base
        .parse()
        .map_err(|e| invalid("collector", format!("'{base}' is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(invalid(
                "collector",
                format!("'{base}': scheme '{other}' is not supported yet, use http:// or https://"),
            ));
        }
        None => {
            return Err(invalid(
                "collector",
                format!("'{base}' has no scheme: write http://{base}"),
            ));
        }
    }
    if uri.authority().is_none() {
        return Err(invalid("collector", format!("'{base}' has no host")));
    }
    let path = uri.path().trim_end_matches('/');
    let full = if path.ends_with("/api/v1/push") {
        base.to_owned()
    } else {
        format!(
            "{}://{}{}/api/v1/push",
            uri.scheme_str().unwrap_or("http"),
            uri.authority().map(|a| a.as_str()).unwrap_or(""),
            path
        )
    };
    full.parse()
        .map_err(|e| invalid("collector", format!("'{base}': {e}")))
}

impl TryFrom<Cli> for Config {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, Self::Error> {
        let interval = duration("interval", &cli.interval)?;
        if interval < Duration::from_millis(100) {
            return Err(invalid("interval", "must be at least 100ms"));
        }
        if cli.collectors.is_empty() {
            return Err(invalid("collector", "at least one collector URL is needed"));
        }
        let urls = cli
            .collectors
            .iter()
            .map(|c| push_url(c))
            .collect::<Result<Vec<_>, _>>()?;
        if cli.buffer_bytes < 64 << 10 {
            return Err(invalid("buffer-bytes", "must be at least 65536"));
        }
        let statsd_udp = match cli.statsd_listen.trim() {
            "" => None,
            addr => Some(
                addr.parse()
                    .map_err(|e| invalid("statsd-listen", format!("'{addr}': {e}")))?,
            ),
        };
        if cli.statsd_buckets.iter().any(|b| !b.is_finite()) {
            return Err(invalid(
                "statsd-buckets",
                "bounds must be finite numbers (+Inf is implicit)",
            ));
        }
        let statsd_idle = duration("statsd-idle-timeout", &cli.statsd_idle_timeout)?;
        let statsd =
            (statsd_udp.is_some() || cli.statsd_socket.is_some()).then(|| StatsdSettings {
                listener: StatsdConfig {
                    udp: statsd_udp,
                    unix: cli.statsd_socket.clone(),
                    recv_buffer: cli.statsd_recv_buffer,
                    threads: cli.statsd_threads.clamp(1, 16),
                },
                aggregate: AggregateConfig {
                    hostname: String::new(),
                    max_series: cli.statsd_max_series,
                    idle_timeout: statsd_idle,
                    buckets: cli.statsd_buckets.clone(),
                },
            });
        let scrape_interval = match &cli.scrape_interval {
            Some(v) => duration("scrape-interval", v)?,
            None => interval,
        };
        let scrape_timeout = duration("scrape-timeout", &cli.scrape_timeout)?;
        let scrapes = cli
            .scrapes
            .iter()
            .filter(|u| !u.trim().is_empty())
            .map(|u| {
                let url: hyper::Uri = u
                    .trim()
                    .parse()
                    .map_err(|e| invalid("scrape", format!("'{u}' is not a URL: {e}")))?;
                if url.scheme_str() != Some("http") || url.authority().is_none() {
                    return Err(invalid(
                        "scrape",
                        format!("'{u}': only http://host:port/path URLs are supported"),
                    ));
                }
                Ok(ScrapeConfig {
                    url,
                    interval: scrape_interval,
                    timeout: scrape_timeout,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut disabled: std::collections::BTreeSet<String> =
            crate::sources::host::DEFAULT_DISABLED
                .iter()
                .map(|a| a.to_string())
                .collect();
        for (flag, names, disable) in [
            ("enable-collector", &cli.enable_collectors, false),
            ("disable-collector", &cli.disable_collectors, true),
        ] {
            for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
                if !crate::sources::host::AREAS.contains(&name) {
                    return Err(invalid(
                        flag,
                        format!(
                            "unknown collector '{name}': one of {}",
                            crate::sources::host::AREAS.join(", ")
                        ),
                    ));
                }
                if disable {
                    disabled.insert(name.to_owned());
                } else {
                    disabled.remove(name);
                }
            }
        }
        let host = HostConfig {
            proc_path: cli.proc_path.clone(),
            sys_path: cli.sys_path.clone(),
            hostname: cli.hostname.clone().filter(|h| !h.trim().is_empty()),
            disabled,
        };
        let token = match &cli.token_file {
            Some(path) => {
                let t = std::fs::read_to_string(path).map_err(|e| {
                    invalid("token-file", format!("cannot read {}: {e}", path.display()))
                })?;
                let t = t.trim().to_owned();
                if t.is_empty() || t.contains(char::is_whitespace) {
                    return Err(invalid(
                        "token-file",
                        format!("{} must hold one token and nothing else", path.display()),
                    ));
                }
                Some(t)
            }
            None => None,
        };
        let http_listen = match cli.http_listen.trim() {
            "" => None,
            addr => Some(
                addr.parse()
                    .map_err(|e| invalid("http-listen", format!("'{addr}': {e}")))?,
            ),
        };
        let register = register(&cli, http_listen)?;
        Ok(Config {
            interval,
            host,
            buffer_bytes: cli.buffer_bytes,
            push: PushConfig {
                urls,
                timeout: duration("push-timeout", &cli.push_timeout)?,
                backoff: duration("push-backoff", &cli.push_backoff)?,
                max_backoff: duration("push-max-backoff", &cli.push_max_backoff)?,
                compression: cli
                    .compression
                    .parse()
                    .map_err(|e: String| invalid("compression", e))?,
                token,
                tls: crate::tls::TlsConfig {
                    ca: cli.ca.clone(),
                    cert: cli.tls_cert.clone(),
                    key: cli.tls_key.clone(),
                },
            },
            shutdown_timeout: duration("shutdown-timeout", &cli.shutdown_timeout)?,
            http_listen,
            batch_max_samples: cli.batch_max_samples.max(1),
            flush_jitter: duration("flush-jitter", &cli.flush_jitter)?,
            spool: cli.spool_dir.map(|dir| SpoolConfig {
                dir,
                max_bytes: cli.spool_bytes,
            }),
            statsd,
            scrapes,
            register,
        })
    }
}

/// `--register*` into a [`RegisterConfig`]; `None` without `--register`.
fn register(
    cli: &Cli,
    http_listen: Option<SocketAddr>,
) -> Result<Option<RegisterConfig>, ConfigError> {
    let endpoints = cli
        .register
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .map(|e| {
            let uri: hyper::Uri = e
                .parse()
                .map_err(|err| invalid("register", format!("'{e}' is not a URL: {err}")))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                return Err(invalid(
                    "register",
                    format!("'{e}': only http://host:port etcd endpoints are supported"),
                ));
            }
            Ok(uri)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.is_empty() {
        return Ok(None);
    }
    let address = match cli.register_address.as_deref().map(str::trim) {
        Some(a) if !a.is_empty() => a.to_owned(),
        _ => {
            let addr = http_listen.ok_or_else(|| {
                invalid(
                    "register",
                    "needs --http-listen (the /metrics endpoint collectors scrape)",
                )
            })?;
            if addr.ip().is_unspecified() {
                return Err(invalid(
                    "register-address",
                    format!(
                        "--http-listen {addr} is a wildcard address: give the address collectors reach this agent at"
                    ),
                ));
            }
            addr.to_string()
        }
    };
    let valid_address = address.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains(|c: char| c.is_whitespace() || c == '/')
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if !valid_address {
        return Err(invalid(
            "register-address",
            format!("'{address}' is not host:port"),
        ));
    }
    let prefix = cli.register_prefix.trim();
    if prefix.is_empty() {
        return Err(invalid("register-prefix", "must not be empty"));
    }
    let ttl = duration("register-ttl", &cli.register_ttl)?;
    if ttl < Duration::from_secs(2) {
        return Err(invalid(
            "register-ttl",
            "must be at least 2s (etcd's shortest lease)",
        ));
    }
    Ok(Some(RegisterConfig {
        endpoints,
        key: format!("{prefix}{address}"),
        address,
        ttl,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut full = vec!["sonde-agent"];
        full.extend_from_slice(args);
        Config::try_from(Cli::try_parse_from(full).unwrap())
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(
            c.push.urls[0].to_string(),
            "http://127.0.0.1:9470/api/v1/push"
        );
        assert_eq!(c.buffer_bytes, 64 << 20);
        assert_eq!(c.push.compression, Compression::Zstd);
        let statsd = c.statsd.unwrap();
        assert_eq!(statsd.listener.udp.unwrap().to_string(), "127.0.0.1:8125");
        assert_eq!(statsd.aggregate.idle_timeout, Duration::from_secs(300));
        assert_eq!(statsd.aggregate.buckets.len(), 11);
        assert!(c.spool.is_none() && c.scrapes.is_empty());
    }

    #[test]
    fn collectors_switch_on_and_off() {
        let c = parse(&[]).unwrap();
        assert!(
            c.host.disabled.contains("tcpstat"),
            "tcpstat is off by default"
        );
        let c = parse(&[
            "--disable-collector",
            "disk,hwmon",
            "--enable-collector",
            "tcpstat",
        ])
        .unwrap();
        assert_eq!(
            c.host
                .disabled
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["disk", "hwmon"]
        );
        let err = parse(&["--disable-collector", "gpu"])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--disable-collector: unknown collector 'gpu'"),
            "{err}"
        );
    }

    #[test]
    fn statsd_and_scrape_flags() {
        let c = parse(&[
            "--statsd-listen",
            "",
            "--scrape",
            "http://127.0.0.1:9100/metrics",
            "--scrape-timeout",
            "2s",
        ])
        .unwrap();
        assert!(c.statsd.is_none());
        assert_eq!(c.scrapes[0].timeout, Duration::from_secs(2));
        assert_eq!(c.scrapes[0].interval, c.interval);
        assert!(parse(&["--scrape", "https://x/metrics"]).is_err());
        assert!(
            parse(&["--statsd-listen", "nonsense"])
                .unwrap_err()
                .to_string()
                .starts_with("--statsd-listen")
        );
    }

    #[test]
    fn register_flags() {
        assert!(parse(&[]).unwrap().register.is_none());
        let c = parse(&[
            "--register",
            "http://127.0.0.1:2379",
            "--http-listen",
            "127.0.0.1:9999",
        ])
        .unwrap();
        let r = c.register.unwrap();
        assert_eq!(r.key, "/sonde/targets/127.0.0.1:9999");
        assert_eq!(r.address, "127.0.0.1:9999");
        assert_eq!(r.ttl, Duration::from_secs(10));
        let r = parse(&[
            "--register",
            "http://a:2379,http://b:2379",
            "--register-prefix",
            "/x/",
            "--register-address",
            "node-1.example:9471",
            "--register-ttl",
            "5s",
        ])
        .unwrap()
        .register
        .unwrap();
        assert_eq!(r.endpoints.len(), 2);
        assert_eq!(
            (r.key.as_str(), r.ttl),
            ("/x/node-1.example:9471", Duration::from_secs(5))
        );
        for (args, flag) in [
            (
                &["--register", "http://e:2379", "--http-listen", ""][..],
                "--register:",
            ),
            (
                &[
                    "--register",
                    "http://e:2379",
                    "--http-listen",
                    "0.0.0.0:9471",
                ],
                "--register-address:",
            ),
            (&["--register", "e:2379"], "--register:"),
            (
                &["--register", "http://e:2379", "--register-ttl", "1s"],
                "--register-ttl:",
            ),
            (
                &[
                    "--register",
                    "http://e:2379",
                    "--register-address",
                    "no-port",
                ],
                "--register-address:",
            ),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.starts_with(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn collectors_fail_over_in_order() {
        let c = parse(&[
            "--collector",
            "http://a:1",
            "--collector",
            "http://b:2/prefix/",
            "--collector",
            "http://c:3/api/v1/push",
        ])
        .unwrap();
        let urls: Vec<String> = c.push.urls.iter().map(|u| u.to_string()).collect();
        assert_eq!(
            urls,
            [
                "http://a:1/api/v1/push",
                "http://b:2/prefix/api/v1/push",
                "http://c:3/api/v1/push"
            ]
        );
    }

    #[test]
    fn bad_flags_are_named() {
        assert_eq!(
            parse(&["--interval", "10"])
                .unwrap_err()
                .to_string()
                .split(':')
                .next(),
            Some("--interval")
        );
        assert!(
            parse(&["--collector", "127.0.0.1:9470"])
                .unwrap_err()
                .to_string()
                .contains("no scheme")
        );
        assert!(
            parse(&["--collector", "ftp://x"])
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert!(parse(&["--collector", "https://x"]).is_ok());
        assert!(
            parse(&["--compression", "gzip"])
                .unwrap_err()
                .to_string()
                .starts_with("--compression")
        );
    }
}
