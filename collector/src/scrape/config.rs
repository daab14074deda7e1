//! The `scrape_configs` file: Prometheus's format, the subset Sonde scrapes with. Raw YAML
//! structs (strict: unknown fields are refused) are checked and turned into [`ScrapeJob`]s
//! before anything runs, so a bad file never replaces a good one.
//!
//! `global.external_labels` is refused rather than ignored: Prometheus attaches those labels
//! when data leaves it, and silently dropping them would store series without labels the
//! operator expects. Put such labels in `static_configs` labels or `relabel_configs`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;
use sonde_common::duration::parse_duration;
use sonde_common::model::is_valid_label_name;
use thiserror::Error;

use super::relabel::{RawRelabelConfig, RelabelConfig};
use super::{LabelMap, TargetGroup};

/// The discovery kinds this build supports, named in refusals of the others.
const SUPPORTED_SD: &str = "static_configs, file_sd_configs, dns_sd_configs, etcd_sd_configs";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read scrape config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}{}: {reason}", at(*line, *column))]
    Invalid {
        path: String,
        line: Option<u64>,
        column: Option<u64>,
        reason: String,
    },
}

fn at(line: Option<u64>, column: Option<u64>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

/// A checked scrape config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeConfigFile {
    pub global: GlobalConfig,
    pub jobs: Vec<ScrapeJob>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GlobalConfig {
    pub scrape_interval: Duration,
    pub scrape_timeout: Duration,
}

/// One `scrape_configs` entry, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeJob {
    pub job_name: String,
    pub scrape_interval: Duration,
    pub scrape_timeout: Duration,
    pub metrics_path: String,
    /// Always `http`: https is refused at load.
    pub scheme: String,
    pub params: BTreeMap<String, Vec<String>>,
    pub honor_labels: bool,
    pub honor_timestamps: bool,
    pub static_configs: Vec<TargetGroup>,
    pub file_sd_configs: Vec<FileSdConfig>,
    pub dns_sd_configs: Vec<DnsSdConfig>,
    pub etcd_sd_configs: Vec<EtcdSdConfig>,
    pub relabel_configs: Vec<RelabelConfig>,
    pub metric_relabel_configs: Vec<RelabelConfig>,
    /// Samples one scrape may hold after metric relabeling; 0: no limit.
    pub sample_limit: usize,
    /// Bytes of one (uncompressed) body; 0: no limit.
    pub body_size_limit: u64,
    /// Labels per sample; 0: no limit.
    pub label_limit: usize,
    pub label_name_length_limit: usize,
    pub label_value_length_limit: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileSdConfig {
    pub files: Vec<PathBuf>,
    pub refresh_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsRecordType {
    A,
    Aaaa,
    Srv,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsSdConfig {
    pub names: Vec<String>,
    pub record_type: DnsRecordType,
    /// Port for A/AAAA records (SRV records carry theirs).
    pub port: u16,
    pub refresh_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtcdSdConfig {
    /// Empty: the collector's `--etcd` endpoints.
    pub endpoints: Vec<String>,
    pub prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    global: Option<Spanned<RawGlobal>>,
    #[serde(default)]
    scrape_configs: Vec<Spanned<RawJob>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    #[serde(default)]
    scrape_interval: Option<String>,
    #[serde(default)]
    scrape_timeout: Option<String>,
    #[serde(default)]
    external_labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    job_name: String,
    #[serde(default)]
    scrape_interval: Option<String>,
    #[serde(default)]
    scrape_timeout: Option<String>,
    #[serde(default)]
    metrics_path: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    honor_labels: bool,
    #[serde(default)]
    honor_timestamps: Option<bool>,
    #[serde(default)]
    static_configs: Vec<RawGroup>,
    #[serde(default)]
    file_sd_configs: Vec<RawFileSd>,
    #[serde(default)]
    dns_sd_configs: Vec<RawDnsSd>,
    #[serde(default)]
    etcd_sd_configs: Vec<RawEtcdSd>,
    #[serde(default)]
    relabel_configs: Vec<Spanned<RawRelabelConfig>>,
    #[serde(default)]
    metric_relabel_configs: Vec<Spanned<RawRelabelConfig>>,
    #[serde(default)]
    sample_limit: usize,
    #[serde(default)]
    body_size_limit: Option<String>,
    #[serde(default)]
    label_limit: usize,
    #[serde(default)]
    label_name_length_limit: usize,
    #[serde(default)]
    label_value_length_limit: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    labels: LabelMap,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileSd {
    files: Vec<String>,
    #[serde(default)]
    refresh_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDnsSd {
    names: Vec<String>,
    #[serde(default, rename = "type")]
    record_type: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    refresh_interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcdSd {
    #[serde(default)]
    endpoints: Vec<String>,
    prefix: String,
}

/// Reads and checks a scrape config file.
pub fn load(path: &Path) -> Result<ScrapeConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&path.display().to_string(), &text, path.parent())
}

/// Checks a file and says in one line what it holds.
pub fn check_file(path: &Path) -> Result<String, ConfigError> {
    let file = load(path)?;
    let groups: usize = file.jobs.iter().map(|j| j.static_configs.len()).sum();
    let sd: usize = file
        .jobs
        .iter()
        .map(|j| j.file_sd_configs.len() + j.dns_sd_configs.len() + j.etcd_sd_configs.len())
        .sum();
    Ok(format!(
        "{}: {} scrape job(s), {} static target group(s), {} discovery config(s)",
        path.display(),
        file.jobs.len(),
        groups,
        sd
    ))
}

/// Parses a file's text. `name` names it in errors; relative `file_sd_configs` paths are
/// resolved against `base_dir`.
pub fn parse(
    name: &str,
    text: &str,
    base_dir: Option<&Path>,
) -> Result<ScrapeConfigFile, ConfigError> {
    let invalid = |line: Option<u64>, column: Option<u64>, reason: String| ConfigError::Invalid {
        path: name.to_owned(),
        line,
        column,
        reason,
    };
    let raw: RawFile = match serde_saphyr::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let loc = e.location();
            let msg = e.without_snippet().to_string();
            let msg = msg.lines().next().unwrap_or("invalid YAML").to_owned();
            return Err(invalid(
                loc.map(|l| l.line()),
                loc.map(|l| l.column()),
                explain_unknown_field(&msg),
            ));
        }
    };
    let mut global = GlobalConfig {
        scrape_interval: Duration::from_secs(60),
        scrape_timeout: Duration::from_secs(10),
    };
    if let Some(g) = raw.global {
        let line = Some(g.referenced.line());
        let gerr = |reason: String| invalid(line, None, format!("global: {reason}"));
        if g.value.external_labels.is_some() {
            return Err(gerr(
                "external_labels is not supported: add such labels with static_configs labels \
                 or relabel_configs"
                    .into(),
            ));
        }
        if let Some(s) = &g.value.scrape_interval {
            global.scrape_interval = positive("scrape_interval", s).map_err(gerr)?;
        }
        if let Some(s) = &g.value.scrape_timeout {
            global.scrape_timeout = positive("scrape_timeout", s).map_err(gerr)?;
        }
        if global.scrape_timeout > global.scrape_interval {
            // Prometheus lowers the default timeout to the interval; only an explicit one fails.
            if g.value.scrape_timeout.is_some() {
                return Err(gerr(
                    "scrape_timeout must not be greater than scrape_interval".into(),
                ));
            }
            global.scrape_timeout = global.scrape_interval;
        }
    }
    let mut names = HashSet::new();
    let mut jobs = Vec::with_capacity(raw.scrape_configs.len());
    for (i, job) in raw.scrape_configs.into_iter().enumerate() {
        let line = Some(job.referenced.line());
        let column = Some(job.referenced.column());
        let job_name = job.value.job_name.clone();
        let job = build_job(job.value, &global, base_dir).map_err(|(l, reason)| {
            invalid(
                l.or(line),
                if l.is_some() { None } else { column },
                format!("scrape_configs[{i}] (job {job_name:?}): {reason}"),
            )
        })?;
        if !names.insert(job.job_name.clone()) {
            return Err(invalid(
                line,
                column,
                format!("found multiple scrape configs with job name {job_name:?}"),
            ));
        }
        jobs.push(job);
    }
    Ok(ScrapeConfigFile { global, jobs })
}

/// Serde names an unknown field; say what it is when it is a discovery kind we lack.
fn explain_unknown_field(msg: &str) -> String {
    let Some(start) = msg.find("unknown field `") else {
        return msg.to_owned();
    };
    let rest = &msg[start + "unknown field `".len()..];
    let field = rest.split('`').next().unwrap_or("");
    if field.ends_with("_sd_configs") {
        format!("service discovery {field} is not supported (supported: {SUPPORTED_SD}); {msg}")
    } else {
        msg.to_owned()
    }
}

fn positive(what: &str, s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| format!("{what}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{what} must be greater than zero"));
    }
    Ok(d)
}

type JobError = (Option<u64>, String);

fn build_job(
    raw: RawJob,
    global: &GlobalConfig,
    base_dir: Option<&Path>,
) -> Result<ScrapeJob, JobError> {
    let plain = |reason: String| (None, reason);
    if raw.job_name.is_empty() {
        return Err(plain("job_name must not be empty".into()));
    }
    let scrape_interval = match &raw.scrape_interval {
        Some(s) => positive("scrape_interval", s).map_err(plain)?,
        None => global.scrape_interval,
    };
    let scrape_timeout = match &raw.scrape_timeout {
        Some(s) => positive("scrape_timeout", s).map_err(plain)?,
        None => global.scrape_timeout.min(scrape_interval),
    };
    if scrape_timeout > scrape_interval {
        return Err(plain(format!(
            "scrape_timeout ({scrape_timeout:?}) must not be greater than scrape_interval \
             ({scrape_interval:?})"
        )));
    }
    let scheme = raw.scheme.clone().unwrap_or_else(|| "http".into());
    match scheme.as_str() {
        "http" => {}
        "https" => {
            return Err(plain(
                "scheme https is not supported: Sonde scrapes over plain http only".into(),
            ));
        }
        other => return Err(plain(format!("unknown scheme {other:?} (only http)"))),
    }
    let metrics_path = raw
        .metrics_path
        .clone()
        .unwrap_or_else(|| "/metrics".into());
    if !metrics_path.starts_with('/') {
        return Err(plain(format!(
            "metrics_path {metrics_path:?} must start with '/'"
        )));
    }
    let mut static_configs = Vec::new();
    for (i, g) in raw.static_configs.into_iter().enumerate() {
        for name in g.labels.keys() {
            if !is_valid_label_name(name) {
                return Err(plain(format!(
                    "static_configs[{i}]: invalid label name {name:?}"
                )));
            }
        }
        static_configs.push(TargetGroup {
            source: i.to_string(),
            targets: g
                .targets
                .into_iter()
                .map(|t| LabelMap::from([("__address__".to_owned(), t)]))
                .collect(),
            labels: g.labels,
        });
    }
    let refresh = |s: &Option<String>, default: Duration| match s {
        Some(s) => positive("refresh_interval", s),
        None => Ok(default),
    };
    let mut file_sd_configs = Vec::new();
    for f in raw.file_sd_configs {
        if f.files.is_empty() {
            return Err(plain("file_sd_configs: files must not be empty".into()));
        }
        let files = f
            .files
            .iter()
            .map(|p| {
                let p = PathBuf::from(p);
                match base_dir {
                    Some(base) if p.is_relative() => base.join(p),
                    _ => p,
                }
            })
            .collect();
        file_sd_configs.push(FileSdConfig {
            files,
            refresh_interval: refresh(&f.refresh_interval, Duration::from_secs(300))
                .map_err(plain)?,
        });
    }
    let mut dns_sd_configs = Vec::new();
    for d in raw.dns_sd_configs {
        if d.names.is_empty() {
            return Err(plain("dns_sd_configs: names must not be empty".into()));
        }
        let record_type = match d.record_type.as_deref().map(str::to_ascii_uppercase) {
            None => DnsRecordType::Srv,
            Some(t) if t == "SRV" => DnsRecordType::Srv,
            Some(t) if t == "A" => DnsRecordType::A,
            Some(t) if t == "AAAA" => DnsRecordType::Aaaa,
            Some(t) => {
                return Err(plain(format!(
                    "dns_sd_configs: unsupported record type {t:?} (A, AAAA or SRV)"
                )));
            }
        };
        let port = match (record_type, d.port) {
            (DnsRecordType::Srv, _) => d.port.unwrap_or(0),
            (_, Some(p)) if p > 0 => p,
            _ => {
                return Err(plain(
                    "dns_sd_configs: a port is required for A and AAAA records".into(),
                ));
            }
        };
        dns_sd_configs.push(DnsSdConfig {
            names: d.names,
            record_type,
            port,
            refresh_interval: refresh(&d.refresh_interval, Duration::from_secs(30))
                .map_err(plain)?,
        });
    }
    let mut etcd_sd_configs = Vec::new();
    for e in raw.etcd_sd_configs {
        if e.prefix.is_empty() {
            return Err(plain("etcd_sd_configs: prefix must not be empty".into()));
        }
        for endpoint in &e.endpoints {
            let ok = endpoint.parse::<hyper::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                return Err(plain(format!(
                    "etcd_sd_configs: endpoint {endpoint:?} must be an http:// or https:// URL with a host"
                )));
            }
        }
        etcd_sd_configs.push(EtcdSdConfig {
            endpoints: e.endpoints,
            prefix: e.prefix,
        });
    }
    let relabel = |what: &str, list: Vec<Spanned<RawRelabelConfig>>| {
        list.into_iter()
            .enumerate()
            .map(|(i, r)| {
                let line = r.referenced.line();
                RelabelConfig::try_from(r.value)
                    .map_err(|e| (Some(line), format!("{what}[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let relabel_configs = relabel("relabel_configs", raw.relabel_configs)?;
    let metric_relabel_configs = relabel("metric_relabel_configs", raw.metric_relabel_configs)?;
    let body_size_limit = match &raw.body_size_limit {
        Some(s) => parse_bytes(s).map_err(plain)?,
        None => 0,
    };
    Ok(ScrapeJob {
        job_name: raw.job_name,
        scrape_interval,
        scrape_timeout,
        metrics_path,
        scheme,
        params: raw.params,
        honor_labels: raw.honor_labels,
        honor_timestamps: raw.honor_timestamps.unwrap_or(true),
        static_configs,
        file_sd_configs,
        dns_sd_configs,
        etcd_sd_configs,
        relabel_configs,
        metric_relabel_configs,
        sample_limit: raw.sample_limit,
        body_size_limit,
        label_limit: raw.label_limit,
        label_name_length_limit: raw.label_name_length_limit,
        label_value_length_limit: raw.label_value_length_limit,
    })
}

/// A size as Prometheus writes `body_size_limit`: a number with B, KB, MB, GB, TB (powers of
/// 1024, as Prometheus's units.Base2Bytes) or KiB, MiB, GiB, TiB; `0` is no limit.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let bad = || format!("body_size_limit: invalid size {s:?} (e.g. 512KB, 10MB, 1GiB)");
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = s[..digits].parse().map_err(|_| bad())?;
    let mult: u64 = match s[digits..].trim() {
        "" | "B" => 1,
        "KB" | "KiB" => 1 << 10,
        "MB" | "MiB" => 1 << 20,
        "GB" | "GiB" => 1 << 30,
        "TB" | "TiB" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> ScrapeConfigFile {
        match parse("test.yml", text, None) {
            Ok(f) => f,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn err(text: &str) -> String {
        match parse("test.yml", text, None) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn good_file_with_defaults() {
        let f = ok(r#"
global:
  scrape_interval: 15s
scrape_configs:
  - job_name: node
    static_configs:
      - targets: ["a:9100", "b:9100"]
        labels: {env: prod}
    params:
      module: [if_mib]
    relabel_configs:
      - source_labels: [__address__]
        regex: "(.*):9100"
        target_label: host
    sample_limit: 100
    body_size_limit: 10MB
  - job_name: files
    scrape_interval: 5s
    metrics_path: /m
    file_sd_configs:
      - files: [targets.json]
        refresh_interval: 1m
    dns_sd_configs:
      - names: [_prom._tcp.example.org]
      - names: [db.example.org]
        type: A
        port: 9187
    etcd_sd_configs:
      - prefix: /sonde/targets/
"#);
        assert_eq!(f.global.scrape_interval, Duration::from_secs(15));
        assert_eq!(f.global.scrape_timeout, Duration::from_secs(10));
        let node = &f.jobs[0];
        assert_eq!(node.scrape_interval, Duration::from_secs(15));
        assert_eq!(node.metrics_path, "/metrics");
        assert_eq!(node.static_configs[0].targets.len(), 2);
        assert_eq!(node.static_configs[0].labels["env"], "prod");
        assert_eq!(node.params["module"], vec!["if_mib".to_owned()]);
        assert_eq!(node.sample_limit, 100);
        assert_eq!(node.body_size_limit, 10 << 20);
        let files = &f.jobs[1];
        assert_eq!(files.scrape_timeout, Duration::from_secs(5));
        assert_eq!(
            files.file_sd_configs[0].refresh_interval,
            Duration::from_secs(60)
        );
        assert_eq!(files.dns_sd_configs[0].record_type, DnsRecordType::Srv);
        assert_eq!(files.dns_sd_configs[1].port, 9187);
        assert_eq!(files.etcd_sd_configs[0].prefix, "/sonde/targets/");
    }

    #[test]
    fn empty_file_has_no_jobs() {
        assert!(ok("scrape_configs: []\n").jobs.is_empty());
    }

    #[test]
    fn refusals_say_why() {
        let cases: &[(&str, &str)] = &[
            (
                "scrape_configs:\n  - job_name: a\n    kubernetes_sd_configs: []\n",
                "kubernetes_sd_configs is not supported",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    consul_sd_configs: []\n",
                "consul_sd_configs is not supported",
            ),
            ("scrape_configs:\n  - job_name: a\n    bogus: 1\n", "bogus"),
            (
                "scrape_configs:\n  - job_name: a\n    scheme: https\n",
                "https is not supported",
            ),
            (
                "scrape_configs:\n  - job_name: a\n  - job_name: a\n",
                "multiple scrape configs with job name \"a\"",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    scrape_interval: 5s\n    scrape_timeout: 10s\n",
                "must not be greater than scrape_interval",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    scrape_interval: 5 parsecs\n",
                "invalid duration",
            ),
            (
                "global:\n  external_labels: {dc: x}\n",
                "external_labels is not supported",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - action: keepequal\n",
                "unsupported relabel action \"keepequal\"",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - regex: \"(\"\n",
                "invalid regex",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    dns_sd_configs:\n      - names: [x]\n        type: MX\n",
                "unsupported record type",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    body_size_limit: lots\n",
                "invalid size",
            ),
            (
                "scrape_configs:\n  - job_name: a\n    etcd_sd_configs: [{endpoints: ['etcd:2379'], prefix: /t}]\n",
                "must be an http:// or https:// URL",
            ),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.contains(want), "{text}: {got:?} lacks {want:?}");
            assert!(got.starts_with("test.yml"), "{got}");
        }
    }

    #[test]
    fn errors_carry_line_numbers() {
        let got =
            err("scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - action: nope\n");
        assert!(got.starts_with("test.yml:4"), "{got}");
        let got = err("scrape_configs:\n  - job_name: a\n    kubernetes_sd_configs: []\n");
        assert!(got.starts_with("test.yml:3"), "{got}");
    }

    #[test]
    fn check_file_summarises() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scrape.yml");
        std::fs::write(
            &path,
            "scrape_configs:\n  - job_name: a\n    static_configs: [{targets: [x:1]}]\n",
        )
        .unwrap();
        let line = check_file(&path).unwrap();
        assert!(line.contains("1 scrape job(s)"), "{line}");
        assert!(check_file(&dir.path().join("missing.yml")).is_err());
    }
}
