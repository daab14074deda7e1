//! Raw command-line flags, each with a `SONDE_*` environment fallback. [`crate::config`] turns
//! them into validated configuration; nothing else reads flags.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Sonde collector: accepts metric batches from agents, stores them durably in the embedded
/// store, and serves the Prometheus query API.
#[derive(Debug, Parser)]
#[command(name = "sonde-collector", version, about)]
pub struct Cli {
    /// A maintenance command instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to serve HTTP on (push, query API, health, self-metrics). Without a token file
    /// only loopback addresses are allowed, unless --insecure-no-auth.
    #[arg(long, env = "SONDE_LISTEN", default_value = "127.0.0.1:9470")]
    pub listen: SocketAddr,

    /// Directory of the embedded store (write-ahead log and data). Created if missing.
    #[arg(long, env = "SONDE_DATA_DIR", default_value = "./sonde-data")]
    pub data_dir: PathBuf,

    /// How long the embedded store keeps samples: blocks wholly older are deleted (e.g. 15d;
    /// 0 keeps everything).
    #[arg(long, env = "SONDE_RETENTION", default_value = "15d")]
    pub retention: String,

    /// Most bytes the embedded store's blocks and WAL may take; past it the oldest blocks are
    /// deleted (0: no size limit).
    #[arg(long, env = "SONDE_RETENTION_SIZE", default_value_t = 0)]
    pub retention_size: u64,

    /// Time range of a block cut from the embedded store's in-memory head (compaction merges
    /// blocks into 3x, 9x, ... this, up to a tenth of the retention).
    #[arg(long, env = "SONDE_BLOCK_RANGE", default_value = "2h")]
    pub block_range: String,

    /// How much older than its series' newest sample a sample may be and still be stored in
    /// the embedded store (0: strictly in order); older ones are counted and dropped.
    #[arg(long, env = "SONDE_OUT_OF_ORDER_WINDOW", default_value = "5m")]
    pub out_of_order_window: String,

    /// How often the embedded store cuts its head into blocks, checkpoints the WAL, compacts
    /// and applies retention.
    #[arg(long, env = "SONDE_MAINTENANCE_INTERVAL", default_value = "1m")]
    pub maintenance_interval: String,

    /// Prometheus remote-write URL to forward every accepted batch to (repeatable: each gets its
    /// own disk queue under --data-dir/queues). With any, the embedded store is no longer
    /// written: VictoriaMetrics, Mimir, Thanos Receive or Prometheus hold the data.
    #[arg(
        long = "remote-write",
        env = "SONDE_REMOTE_WRITE",
        value_delimiter = ','
    )]
    pub remote_write: Vec<String>,

    /// Most bytes each remote-write disk queue holds; when full, pushes get 429.
    #[arg(long, env = "SONDE_QUEUE_MAX_BYTES", default_value_t = 1 << 30)]
    pub queue_max_bytes: u64,

    /// When remote-write disk queues fsync: `always` (a 200 means fsynced: survives a power
    /// loss), or a duration such as `1s` (a 200 means written: survives a crash of the
    /// collector, and a power loss loses at most that window), or `never`.
    #[arg(long, env = "SONDE_QUEUE_FSYNC", default_value = "always")]
    pub queue_fsync: String,

    /// When the embedded store's write-ahead log fsyncs: `always` (a 200 means fsynced:
    /// survives a power loss), or a duration such as `1s` (a 200 means written: survives a
    /// crash of the collector, like Prometheus's WAL; a power loss loses at most that window),
    /// or `never`.
    #[arg(long, env = "SONDE_WAL_FSYNC", default_value = "always")]
    pub wal_fsync: String,

    /// How long the store's write-ahead log and the remote-write queues wait after a push
    /// for others to share its write and fsync (group commit). Adds up to that to each push's
    /// latency; under load it divides the fsyncs, and their CPU, by the pushes within it. 0
    /// writes at once.
    #[arg(long, env = "SONDE_COMMIT_DELAY", default_value = "3ms")]
    pub commit_delay: String,

    /// How long each remote-write sender waits for more batches to fill its requests
    /// (vmagent's -remoteWrite.flushInterval): the most a sample waits in the queue while the
    /// storage keeps up. Larger requests cost less CPU per sample on both sides.
    #[arg(long, env = "SONDE_REMOTE_WRITE_FLUSH_INTERVAL", default_value = "1s")]
    pub remote_write_flush_interval: String,

    /// The direct path: while a remote storage keeps up, each batch is forwarded before its
    /// push is answered, without touching the disk queue; batches arriving within this long
    /// of each other share one request. When the storage fails or is slow, batches go through
    /// the disk queue until it has drained. `off` queues every batch.
    #[arg(long, env = "SONDE_REMOTE_WRITE_DIRECT", default_value = "20ms")]
    pub remote_write_direct: String,

    /// How long a direct-path request may take before its batches fall back to the disk queue.
    #[arg(long, env = "SONDE_REMOTE_WRITE_DIRECT_TIMEOUT", default_value = "2s")]
    pub remote_write_direct_timeout: String,

    /// Bearer tokens, one per line: `TOKEN TENANT SCOPES` (scopes: write, read, admin,
    /// comma-separated). Every endpoint but /healthz and /readyz then needs a token with the
    /// right scope, and each tenant sees only its own data. Re-read on change and on SIGHUP.
    #[arg(long, env = "SONDE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "SONDE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "SONDE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "SONDE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Allow listening on a non-loopback address without authentication. Anyone who can reach
    /// the address can then write and read every series.
    #[arg(long, env = "SONDE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Largest request body accepted, in bytes; larger pushes get 413.
    #[arg(long, env = "SONDE_MAX_BODY_BYTES", default_value_t = 16 << 20)]
    pub max_body_bytes: usize,

    /// Largest decoded (decompressed) batch accepted, in bytes; larger ones get 413.
    #[arg(long, env = "SONDE_MAX_DECODED_BYTES", default_value_t = 64 << 20)]
    pub max_decoded_bytes: usize,

    /// Most series one batch may carry.
    #[arg(long, env = "SONDE_MAX_SERIES_PER_BATCH", default_value_t = 100_000)]
    pub max_series_per_batch: usize,

    /// Most samples one batch may carry, over all its series.
    #[arg(long, env = "SONDE_MAX_SAMPLES_PER_BATCH", default_value_t = 1_000_000)]
    pub max_samples_per_batch: usize,

    /// Most labels per series (the metric name not counted).
    #[arg(long, env = "SONDE_MAX_LABELS_PER_SERIES", default_value_t = 32)]
    pub max_labels_per_series: usize,

    /// Longest metric or label name, in bytes.
    #[arg(long, env = "SONDE_MAX_NAME_LENGTH", default_value_t = 256)]
    pub max_name_length: usize,

    /// Longest label value, in bytes.
    #[arg(long, env = "SONDE_MAX_LABEL_VALUE_LENGTH", default_value_t = 2048)]
    pub max_label_value_length: usize,

    /// Oldest sample accepted, relative to now (e.g. 24h); a batch holding an older one is
    /// refused with 400 naming the series.
    #[arg(long, env = "SONDE_MAX_SAMPLE_AGE", default_value = "24h")]
    pub max_sample_age: String,

    /// How far in the future a sample's timestamp may be (clock skew allowance).
    #[arg(long, env = "SONDE_MAX_SAMPLE_FUTURE", default_value = "10m")]
    pub max_sample_future: String,

    /// Samples per second each tenant may push, bursts up to twice that; beyond it pushes get
    /// 429 with Retry-After. 0 means unlimited.
    #[arg(long, env = "SONDE_TENANT_SAMPLES_PER_SECOND", default_value_t = 0.0)]
    pub tenant_samples_per_second: f64,

    /// How many recently accepted native batches (agent id + sequence number) are remembered,
    /// so a retried batch is acknowledged again without being stored twice.
    #[arg(long, env = "SONDE_DEDUP_BATCHES", default_value_t = 100_000)]
    pub dedup_batches: usize,

    /// On SIGTERM, how long to let in-flight requests finish before exiting.
    #[arg(long, env = "SONDE_DRAIN_TIMEOUT", default_value = "25s")]
    pub drain_timeout: String,

    /// How far back an instant query looks for a series' latest sample.
    #[arg(long, env = "SONDE_QUERY_LOOKBACK", default_value = "5m")]
    pub query_lookback: String,

    /// Most series one query's selectors may select together; beyond it the query fails with
    /// 422 instead of loading them.
    #[arg(long, env = "SONDE_QUERY_MAX_SERIES", default_value_t = 100_000)]
    pub query_max_series: usize,

    /// Most samples one query may load plus points it may produce (Prometheus's
    /// --query.max-samples); beyond it the query fails with 422.
    #[arg(long, env = "SONDE_QUERY_MAX_SAMPLES", default_value_t = 50_000_000)]
    pub query_max_samples: usize,

    /// Longest a query may run before it is abandoned with 503 (Prometheus's --query.timeout).
    #[arg(long, env = "SONDE_QUERY_TIMEOUT", default_value = "2m")]
    pub query_timeout: String,

    /// Most points the range query results cache holds (about 16 bytes each); 0 turns it off.
    /// A repeated range query takes the steps in settled time (older than 5 minutes) from it
    /// and evaluates only the rest; a query with nocache=1 bypasses it.
    #[arg(long, env = "SONDE_QUERY_CACHE_POINTS", default_value_t = 2_000_000)]
    pub query_cache_points: usize,

    /// Directory of Prometheus rule files (*.yml, *.yaml) to evaluate: alerting and recording
    /// rules, reloaded when a file changes and on SIGHUP. Without it no rules run.
    #[arg(long, env = "SONDE_RULES_DIR")]
    pub rules_dir: Option<PathBuf>,

    /// Alert manager configuration in Alertmanager's format (route, receivers, inhibit_rules).
    /// Without it alerts are kept and listed but nobody is notified.
    #[arg(long, env = "SONDE_ALERT_CONFIG")]
    pub alert_config: Option<PathBuf>,

    /// Prometheus query API the rules are evaluated against (VictoriaMetrics, Prometheus, Mimir:
    /// the URL before /api/v1/query). Without it, the embedded store in this process.
    #[arg(long, env = "SONDE_QUERY_URL")]
    pub query_url: Option<String>,

    /// Bearer token sent to --query-url (and to --alerting).
    #[arg(long, env = "SONDE_QUERY_TOKEN", hide_env_values = true)]
    pub query_token: Option<String>,

    /// How far behind the wall clock rules are evaluated, to absorb ingestion lag (vmalert's
    /// -rule.evalDelay). The embedded store shows a sample as soon as it is acknowledged.
    #[arg(long, env = "SONDE_EVALUATION_DELAY", default_value = "0s")]
    pub evaluation_delay: String,

    /// Evaluation interval of rule groups that do not set their own.
    #[arg(long, env = "SONDE_EVALUATION_INTERVAL", default_value = "1m")]
    pub evaluation_interval: String,

    /// URL of a separate alerting instance (another sonde-collector with --rules-dir) to forward
    /// samples to that its threshold rules want (the fast path).
    #[arg(long, env = "SONDE_ALERTING")]
    pub alerting: Option<String>,

    /// URL this instance is reached at, for links in notifications (generatorURL).
    #[arg(long, env = "SONDE_EXTERNAL_URL")]
    pub external_url: Option<String>,

    /// Prometheus `scrape_configs` file (the supported subset) of targets this collector pulls
    /// from; scraped samples take the same route as pushed ones. Reloaded when it changes.
    #[arg(long, env = "SONDE_SCRAPE_CONFIG")]
    pub scrape_config: Option<PathBuf>,

    /// How many collectors of the pool scrape each target (1: exactly one; 2: two, for
    /// redundancy, de-duplicated downstream).
    #[arg(long, env = "SONDE_SCRAPE_REPLICAS", default_value_t = 1)]
    pub scrape_replicas: usize,

    /// etcd endpoints (http://host:2379, repeatable): the collector pool registers and finds
    /// its members there, and `etcd_sd_configs` default to them.
    #[arg(long = "etcd", env = "SONDE_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,

    /// The collector pool as a static list of member URLs, this one included (instead of
    /// etcd), e.g. the pods of a Kubernetes headless Service.
    #[arg(long = "pool-peer", env = "SONDE_POOL_PEERS", value_delimiter = ',')]
    pub pool_peers: Vec<String>,

    /// The collector pool as a DNS name with a port (host:port), e.g. a Kubernetes headless
    /// Service: every address it resolves to is a member, re-resolved every 5 s (instead of
    /// etcd or --pool-peer).
    #[arg(long, env = "SONDE_POOL_DNS")]
    pub pool_dns: Option<String>,

    /// How long a collector that stops renewing its etcd lease (a crash) stays a pool member:
    /// its targets move to the others after at most this long.
    #[arg(long, env = "SONDE_POOL_TTL", default_value = "5s")]
    pub pool_ttl: String,

    /// This collector's URL as the other members of the pool know it (default:
    /// http://<--listen>).
    #[arg(long, env = "SONDE_ADVERTISE_URL")]
    pub advertise_url: Option<String>,

    /// Log filter (tracing-subscriber EnvFilter syntax), e.g. info or sonde_collector=debug.
    #[arg(long, env = "SONDE_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check Prometheus rule files offline (like promtool check rules); exits 1 on any error.
    CheckRules {
        /// Rule files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Evaluate rule files over a past time range against a Prometheus query API and print
    /// the ALERTS series each evaluation step produced (like vmalert's replay mode).
    ReplayRules {
        /// Query API to evaluate against (a Sonde collector, VictoriaMetrics, Prometheus).
        #[arg(long)]
        query_url: String,
        /// Bearer token for --query-url.
        #[arg(long, env = "SONDE_QUERY_TOKEN", hide_env_values = true)]
        query_token: Option<String>,
        /// Start of the range: RFC 3339 or Unix seconds.
        #[arg(long)]
        from: String,
        /// End of the range (inclusive): RFC 3339 or Unix seconds.
        #[arg(long)]
        to: String,
        /// Interval of groups that do not set their own.
        #[arg(long, default_value = "1m")]
        evaluation_interval: String,
        /// Tenant the rules belong to (sent as X-Scope-OrgID).
        #[arg(long, default_value = "")]
        tenant: String,
        /// Rule files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Check a scrape configuration file (Prometheus's scrape_configs, the supported subset)
    /// offline; exits 1 on any error.
    CheckScrapeConfig {
        /// The scrape configuration file.
        file: PathBuf,
    },
    /// Check an alert manager configuration file offline; exits 1 on any error.
    CheckAlertConfig {
        /// The Alertmanager-format file.
        file: PathBuf,
    },
    /// Disk queue maintenance.
    Queue {
        #[command(subcommand)]
        action: QueueCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Report what a remote-write disk queue holds (segments, records, pending, damage),
    /// read-only; exits 1 if it found damage.
    Verify {
        /// The queue directory, e.g. ./sonde-data/queues/remote-write-0
        dir: PathBuf,
    },
}
