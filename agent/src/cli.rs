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

    /// CA certificate (PEM) that https:// collectors' certificates must chain to; without it,
    /// the system's trusted roots.
    #[arg(long, env = "SONDE_CA")]
    pub ca: Option<PathBuf>,

    /// Client certificate (PEM) for collectors that require one (mutual TLS); needs --tls-key
    /// and --ca.
    #[arg(long, env = "SONDE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "SONDE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// File holding the bearer token sent to the collectors (their --token-file gives it a
    /// tenant and the write scope). Read once at start.
    #[arg(long, env = "SONDE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// How often host metrics are collected and a batch is pushed (e.g. 10s, 1s).
    #[arg(long, env = "SONDE_INTERVAL", default_value = "10s")]
    pub interval: String,

    /// The `host` label and agent id; detected from the system when not given.
    #[arg(long, env = "SONDE_HOSTNAME")]
    pub hostname: Option<String>,

    /// Where procfs is mounted (for an agent in a container: the host's /proc mounted here).
    #[arg(long, env = "SONDE_PROC_PATH", default_value = "/proc")]
    pub proc_path: PathBuf,

    /// Where sysfs is mounted (temperatures: hwmon, thermal zones).
    #[arg(long, env = "SONDE_SYS_PATH", default_value = "/sys")]
    pub sys_path: PathBuf,

    /// Host metric areas not to collect (repeatable, or comma-separated): cpu, stat, memory,
    /// load, processes, pressure, disk, fs, net, sockstat, tcpstat, netstat, filefd, time,
    /// hwmon, thermal. tcpstat (connection counts by state, which reads every socket) is off
    /// unless --enable-collector tcpstat.
    #[arg(
        long = "disable-collector",
        env = "SONDE_DISABLE_COLLECTORS",
        value_delimiter = ','
    )]
    pub disable_collectors: Vec<String>,

    /// Host metric areas to collect that are off by default (repeatable): tcpstat.
    #[arg(
        long = "enable-collector",
        env = "SONDE_ENABLE_COLLECTORS",
        value_delimiter = ','
    )]
    pub enable_collectors: Vec<String>,

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

    /// Largest batch, in samples: a bigger flush is cut into several batches.
    #[arg(long, env = "SONDE_BATCH_MAX_SAMPLES", default_value_t = 10_000)]
    pub batch_max_samples: usize,

    /// The first flush waits a random delay up to this long (at most --interval), so hosts
    /// started together do not all push in the same millisecond.
    #[arg(long, env = "SONDE_FLUSH_JITTER", default_value = "5s")]
    pub flush_jitter: String,

    /// Directory of the disk spool: batches that overflow the memory buffer, and those still
    /// undelivered at shutdown, wait there (and survive a restart). Off when not given.
    #[arg(long, env = "SONDE_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Most bytes the spool holds; beyond it the oldest spooled batch is dropped and counted.
    #[arg(long, env = "SONDE_SPOOL_BYTES", default_value_t = 1 << 30)]
    pub spool_bytes: u64,

    /// StatsD/DogStatsD UDP address. Empty disables the UDP listener.
    #[arg(long, env = "SONDE_STATSD_LISTEN", default_value = "127.0.0.1:8125")]
    pub statsd_listen: String,

    /// Also receive StatsD on this Unix datagram socket (senders then see back-pressure
    /// instead of silent drops).
    #[arg(long, env = "SONDE_STATSD_SOCKET")]
    pub statsd_socket: Option<PathBuf>,

    /// Kernel receive buffer requested for the StatsD UDP socket, in bytes.
    #[arg(long, env = "SONDE_STATSD_RECV_BUFFER", default_value_t = 8 << 20)]
    pub statsd_recv_buffer: usize,

    /// Threads reading the StatsD UDP socket.
    #[arg(long, env = "SONDE_STATSD_THREADS", default_value_t = 2)]
    pub statsd_threads: usize,

    /// Most StatsD series aggregated at once; lines for new series beyond it are refused and
    /// counted (sonde_agent_statsd_bad_lines_total{reason="cardinality_limit"}).
    #[arg(long, env = "SONDE_STATSD_MAX_SERIES", default_value_t = 100_000)]
    pub statsd_max_series: usize,

    /// A StatsD series not updated for this long is no longer reported (and forgotten).
    #[arg(long, env = "SONDE_STATSD_IDLE_TIMEOUT", default_value = "5m")]
    pub statsd_idle_timeout: String,

    /// Histogram bucket upper bounds for StatsD timers (in seconds) and histograms,
    /// comma-separated.
    #[arg(
        long,
        env = "SONDE_STATSD_BUCKETS",
        value_delimiter = ',',
        default_value = "0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10"
    )]
    pub statsd_buckets: Vec<f64>,

    /// A local Prometheus/OpenMetrics endpoint to scrape (repeatable), e.g.
    /// http://127.0.0.1:9100/metrics.
    #[arg(long = "scrape", env = "SONDE_SCRAPE", value_delimiter = ',')]
    pub scrapes: Vec<String>,

    /// How often each --scrape target is scraped (default: --interval).
    #[arg(long, env = "SONDE_SCRAPE_INTERVAL")]
    pub scrape_interval: Option<String>,

    /// Timeout of one scrape.
    #[arg(long, env = "SONDE_SCRAPE_TIMEOUT", default_value = "5s")]
    pub scrape_timeout: String,

    /// etcd endpoint (http://host:port) to register this agent's /metrics endpoint with, so
    /// collectors using etcd discovery scrape it (repeatable, or comma-separated in
    /// SONDE_REGISTER; tried in order). Needs --http-listen. The key is removed when the agent
    /// stops, and expires --register-ttl after it dies.
    #[arg(long = "register", env = "SONDE_REGISTER", value_delimiter = ',')]
    pub register: Vec<String>,

    /// Key prefix of the registration: the key is <prefix><address>, the value
    /// {"address": "<address>", "labels": {"__meta_sonde_agent_host": "<host>"}}.
    #[arg(long, env = "SONDE_REGISTER_PREFIX", default_value = "/sonde/targets/")]
    pub register_prefix: String,

    /// host:port collectors should scrape (default: --http-listen, which must then not be a
    /// wildcard address such as 0.0.0.0).
    #[arg(long, env = "SONDE_REGISTER_ADDRESS")]
    pub register_address: Option<String>,

    /// Lease TTL of the registration: how long the key outlives an agent that died without
    /// deregistering (whole seconds, at least 2s; renewed every third of it).
    #[arg(long, env = "SONDE_REGISTER_TTL", default_value = "10s")]
    pub register_ttl: String,

    /// Log filter (tracing-subscriber EnvFilter syntax), e.g. info or sonde_agent=debug.
    #[arg(long, env = "SONDE_LOG", default_value = "info")]
    pub log: String,
}
