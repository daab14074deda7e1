//! Validated configuration, derived from [`crate::cli::Cli`]; each stage gets its own part.

use crate::cli::Cli;
use crate::sources::host::HostConfig;
use sonde_common::duration::parse_duration;
use sonde_common::wire::Compression;
use std::net::SocketAddr;
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
}

#[derive(Clone, Debug)]
pub struct Config {
    pub interval: Duration,
    pub host: HostConfig,
    pub buffer_bytes: usize,
    pub push: PushConfig,
    pub shutdown_timeout: Duration,
    pub http_listen: Option<SocketAddr>,
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
        Some("http") => {}
        Some(other) => {
            return Err(invalid(
                "collector",
                format!("'{base}': scheme '{other}' is not supported yet, use http://"),
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
        let http_listen = match cli.http_listen.trim() {
            "" => None,
            addr => Some(
                addr.parse()
                    .map_err(|e| invalid("http-listen", format!("'{addr}': {e}")))?,
            ),
        };
        Ok(Config {
            interval,
            host: HostConfig {
                proc_path: cli.proc_path,
                hostname: cli.hostname.filter(|h| !h.trim().is_empty()),
            },
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
            },
            shutdown_timeout: duration("shutdown-timeout", &cli.shutdown_timeout)?,
            http_listen,
        })
    }
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
            parse(&["--collector", "https://x"])
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert!(
            parse(&["--compression", "gzip"])
                .unwrap_err()
                .to_string()
                .starts_with("--compression")
        );
    }
}
