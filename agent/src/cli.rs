//! Raw command-line flags, each with a `SONDE_*` environment fallback. [`crate::config`] turns
//! them into validated configuration; nothing else reads flags.

use clap::Parser;
use std::path::PathBuf;

/// Sonde agent: gathers this host's metrics and pushes them to Sonde collectors.
#[derive(Debug, Parser)]
#[command(name = "sonde-agent", version, about)]
pub struct Cli {
    /// Collector base URL to push to (POST <URL>/api/v1/push). Repeat the flag (or separate
    /// with commas in SONDE_COLLECTOR) to fail over between collectors in order.
    #[arg(
        long = "collector",
        env = "SONDE_COLLECTOR",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:9470"
    )]
    pub collectors: Vec<String>,

    /// How often host metrics are collected and a batch is pushed (e.g. 10s, 1s).
    #[arg(long, env = "SONDE_INTERVAL", default_value = "10s")]
    pub interval: String,

    /// The `host` label and agent id; detected from the system when not given.
    #[arg(long, env = "SONDE_HOSTNAME")]
    pub hostname: Option<String>,

    /// Where procfs is mounted (for an agent in a container: the host's /proc mounted here).
    #[arg(long, env = "SONDE_PROC_PATH", default_value = "/proc")]
    pub proc_path: PathBuf,

    /// Most bytes of encoded batches kept in memory while collectors are unreachable; beyond it
    /// the oldest batch is dropped and counted (sonde_agent_dropped_samples_total{reason="buffer_full"}).
    #[arg(long, env = "SONDE_BUFFER_BYTES", default_value_t = 64 << 20)]
    pub buffer_bytes: usize,

    /// Timeout of one push request.
    #[arg(long, env = "SONDE_PUSH_TIMEOUT", default_value = "10s")]
    pub push_timeout: String,

    /// First retry delay after a failed push; doubles per failure up to --push-max-backoff,
    /// with full jitter, and never shorter than the collector's Retry-After.
    #[arg(long, env = "SONDE_PUSH_BACKOFF", default_value = "500ms")]
    pub push_backoff: String,

    /// Longest delay between push retries.
    #[arg(long, env = "SONDE_PUSH_MAX_BACKOFF", default_value = "30s")]
    pub push_max_backoff: String,

    /// Payload compression: zstd, lz4 or none.
    #[arg(long, env = "SONDE_COMPRESSION", default_value = "zstd")]
    pub compression: String,

    /// On SIGTERM, how long to keep trying to deliver buffered batches before exiting.
    #[arg(long, env = "SONDE_SHUTDOWN_TIMEOUT", default_value = "5s")]
    pub shutdown_timeout: String,

    /// Address of the agent's own HTTP endpoint (GET /metrics: self-metrics; /healthz).
    /// Empty disables it.
    #[arg(long, env = "SONDE_HTTP_LISTEN", default_value = "127.0.0.1:9471")]
    pub http_listen: String,

    /// Log filter (tracing-subscriber EnvFilter syntax), e.g. info or sonde_agent=debug.
    #[arg(long, env = "SONDE_LOG", default_value = "info")]
    pub log: String,
}
