//! `file_sd_configs`: target groups in JSON or YAML files, Prometheus's file_sd format
//! (`[{"targets": ["host:port"], "labels": {...}}]`). Files are polled every second (their
//! modification time and size) and re-read every `refresh_interval` regardless. A file that
//! cannot be read or parsed keeps its previous groups, and the error is logged once per
//! change. The last path component may hold `*` wildcards, as Prometheus's globs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;
use sonde_common::model::is_valid_label_name;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::scrape::config::FileSdConfig;
use crate::scrape::{LabelMap, TargetGroup};

/// Bytes read from one file at most: a target list, not a data file.
const MAX_FILE_BYTES: u64 = 16 << 20;
const POLL: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    labels: LabelMap,
}

/// Parses one file's text; `.json` files as JSON, anything else as YAML.
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<TargetGroup>, String> {
    let raw: Vec<RawGroup> = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(text).map_err(|e| e.to_string())?
    } else if text.trim().is_empty() {
        Vec::new()
    } else {
        serde_saphyr::from_str(text).map_err(|e| {
            let msg = e.to_string();
            msg.lines().next().unwrap_or("invalid YAML").to_owned()
        })?
    };
    let name = path.display().to_string();
    let mut out = Vec::with_capacity(raw.len());
    for (i, g) in raw.into_iter().enumerate() {
        for label in g.labels.keys() {
            if !is_valid_label_name(label) {
                return Err(format!("group {i}: invalid label name {label:?}"));
            }
        }
        let mut labels = g.labels;
        labels.insert("__meta_filepath".into(), name.clone());
        out.push(TargetGroup {
            source: format!("{name}:{i}"),
            targets: g
                .targets
                .into_iter()
                .map(|t| LabelMap::from([("__address__".to_owned(), t)]))
                .collect(),
            labels,
        });
    }
    Ok(out)
}

/// The files `pattern` names now: itself, or the matches of a `*` in its last component.
fn expand(pattern: &Path) -> Vec<PathBuf> {
    let Some(name) = pattern.file_name().and_then(|n| n.to_str()) else {
        return vec![pattern.to_owned()];
    };
    if !name.contains('*') {
        return vec![pattern.to_owned()];
    }
    let dir = pattern.parent().unwrap_or(Path::new("."));
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_str().is_some_and(|n| wildcard(name, n)))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// `*` matches any run of characters; everything else matches itself.
fn wildcard(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = match parts.split_first() {
        Some(p) => p,
        None => return name.is_empty(),
    };
    let Some(mut remaining) = name.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return remaining.is_empty();
    };
    for part in middle {
        match remaining.find(part) {
            Some(i) => remaining = &remaining[i + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// What a file looked like when last read.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The state of one provider: each file's stamp and last good groups.
#[derive(Default)]
pub struct Files {
    known: BTreeMap<PathBuf, (Stamp, Vec<TargetGroup>)>,
}

impl Files {
    /// Re-reads files that changed (all of them if `force`); true if the groups changed.
    pub fn refresh(&mut self, job: &str, patterns: &[PathBuf], force: bool) -> bool {
        let paths: Vec<PathBuf> = patterns.iter().flat_map(|p| expand(p)).collect();
        let mut changed = false;
        let before = self.known.len();
        self.known.retain(|p, _| paths.contains(p));
        changed |= before != self.known.len();
        for path in paths {
            let now = stamp(&path);
            let seen = self.known.get(&path).map(|(s, _)| *s);
            if !force && seen == Some(now) {
                continue;
            }
            let result = read(&path);
            let entry = self.known.entry(path.clone()).or_default();
            entry.0 = now;
            match result {
                Ok(groups) => {
                    if entry.1 != groups {
                        entry.1 = groups;
                        changed = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(job, file = %path.display(), error = %e,
                        "scrape: cannot read a file_sd file; keeping its previous targets");
                }
            }
        }
        changed
    }

    pub fn groups(&self) -> Vec<TargetGroup> {
        self.known.values().flat_map(|(_, g)| g.clone()).collect()
    }
}

fn read(path: &Path) -> Result<Vec<TargetGroup>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "file is {} bytes, more than the limit of {MAX_FILE_BYTES}",
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    parse_file(path, &text)
}

/// The provider task.
pub async fn run(
    job: String,
    cfg: FileSdConfig,
    tx: watch::Sender<Vec<TargetGroup>>,
    cancel: CancellationToken,
) {
    let mut files = Files::default();
    let mut last_full = Instant::now();
    files.refresh(&job, &cfg.files, true);
    tx.send_replace(files.groups());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let force = last_full.elapsed() >= cfg.refresh_interval;
        if force {
            last_full = Instant::now();
        }
        // File reads are small and bounded; blocking here costs a poll tick at most.
        if files.refresh(&job, &cfg.files, force) {
            tx.send_replace(files.groups());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(groups: &[TargetGroup]) -> Vec<String> {
        groups
            .iter()
            .flat_map(|g| g.targets.iter().map(|t| t["__address__"].clone()))
            .collect()
    }

    #[test]
    fn json_and_yaml() {
        let g = parse_file(
            Path::new("/x/t.json"),
            r#"[{"targets": ["a:1", "b:2"], "labels": {"env": "prod"}}]"#,
        )
        .unwrap();
        assert_eq!(addresses(&g), ["a:1", "b:2"]);
        assert_eq!(g[0].labels["env"], "prod");
        assert_eq!(g[0].labels["__meta_filepath"], "/x/t.json");
        let g = parse_file(
            Path::new("/x/t.yml"),
            "- targets: [c:3]\n  labels: {team: a}\n- targets: [d:4]\n",
        )
        .unwrap();
        assert_eq!(addresses(&g), ["c:3", "d:4"]);
        assert!(parse_file(Path::new("t.json"), "{").is_err());
        assert!(parse_file(Path::new("t.yml"), "- targets: [a]\n  bogus: 1\n").is_err());
        assert!(parse_file(Path::new("t.yml"), "- labels: {'1x': a}\n").is_err());
    }

    #[test]
    fn add_change_and_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let patterns = vec![dir.path().join("*.json")];
        let mut files = Files::default();
        assert!(!files.refresh("j", &patterns, true));
        assert!(files.groups().is_empty());

        std::fs::write(&path, r#"[{"targets": ["a:1"]}]"#).unwrap();
        assert!(files.refresh("j", &patterns, false));
        assert_eq!(addresses(&files.groups()), ["a:1"]);

        std::fs::write(&path, r#"[{"targets": ["a:1", "b:22"]}]"#).unwrap();
        assert!(files.refresh("j", &patterns, false));
        assert_eq!(addresses(&files.groups()), ["a:1", "b:22"]);

        // Broken: the previous targets stay.
        std::fs::write(&path, r#"[{"targets": ["#).unwrap();
        assert!(!files.refresh("j", &patterns, false));
        assert_eq!(addresses(&files.groups()), ["a:1", "b:22"]);

        // Removed: its targets go.
        std::fs::remove_file(&path).unwrap();
        assert!(files.refresh("j", &patterns, false));
        assert!(files.groups().is_empty());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("*.json", "a.json"));
        assert!(!wildcard("*.json", "a.yml"));
        assert!(wildcard("t-*-x*.yml", "t-1-x2.yml"));
        assert!(wildcard("plain", "plain"));
        assert!(!wildcard("a*b", "a"));
    }

    #[tokio::test]
    async fn the_task_publishes_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.yml");
        std::fs::write(&path, "- targets: [a:1]\n").unwrap();
        let (tx, mut rx) = watch::channel(Vec::new());
        let cancel = CancellationToken::new();
        let cfg = FileSdConfig {
            files: vec![path.clone()],
            refresh_interval: Duration::from_secs(300),
        };
        let task = tokio::spawn(run("j".into(), cfg, tx, cancel.clone()));
        rx.changed().await.unwrap();
        assert_eq!(addresses(&rx.borrow_and_update()), ["a:1"]);
        std::fs::write(&path, "- targets: [a:1, b:2]\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(addresses(&rx.borrow()), ["a:1", "b:2"]);
        cancel.cancel();
        task.await.unwrap();
    }
}
