//! The host source: CPU, memory, load, network and filesystem figures of the machine the agent
//! runs on, named as node_exporter names them so dashboards and side-by-side comparisons work.
//! Every series carries `host="<host name>"`.
//!
//! One file per area turns text (or sysinfo's figures) into [`Reading`]s and is unit-tested on
//! fixtures; this file owns only the I/O: it reads the files under `proc_path`, keeps the sysinfo
//! objects between collections, and isolates failures so a broken area does not hide the others.
//!
//! Where figures come from, and why:
//! - `/proc/stat`, `/proc/meminfo`, `/proc/loadavg`, `/proc/net/dev`, parsed here: sysinfo has
//!   no cumulative CPU seconds per mode (only usage percentages between refreshes), does not
//!   expose Buffers/Cached and estimates MemAvailable on old kernels, turns unparsable load or
//!   unreadable network counters into zeros, and has no network drop counters. Reading the files
//!   ourselves gives exact figures, real errors, one consistent snapshot per area, and honours
//!   `proc_path`.
//! - sysinfo: the host name, and filesystems ([`fs`] says what that leaves out).
//!
//! [`HostSource::collect`] blocks on file reads and `statvfs` calls: run it off the async
//! runtime's worker threads.

mod cpu;
mod fs;
mod load;
mod memory;
mod net;

use std::path::{Path, PathBuf};

use sonde_common::model::{MetricKind, Series};
use sysinfo::{DiskRefreshKind, Disks};
use thiserror::Error;

use super::Reading;

/// What the host source needs from configuration.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Where procfs is mounted (`/proc`).
    pub proc_path: PathBuf,
    /// The `host` label's value; `None` asks the system.
    pub hostname: Option<String>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            proc_path: PathBuf::from("/proc"),
            hostname: None,
        }
    }
}

/// Why the host source could not start or could not read an area.
#[derive(Debug, Error)]
pub enum HostError {
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot parse {}: {cause}", path.display())]
    Parse { path: PathBuf, cause: ParseError },
    #[error("cannot detect the host name: {0}")]
    Hostname(sysinfo::Error),
    #[error("the host name is empty")]
    EmptyHostname,
    #[error("cannot list filesystems: {0}")]
    Disks(sysinfo::Error),
}

/// What is wrong with a `/proc` file's text. Lines and fields count from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("line {line}: field {field} is missing")]
    MissingField { line: usize, field: usize },
    #[error("line {line}: field {field} is not a valid number")]
    NotANumber { line: usize, field: usize },
    #[error("line {line}: {reason}")]
    Malformed { line: usize, reason: &'static str },
    #[error("no '{0}' line")]
    MissingLine(&'static str),
}

/// What one [`HostSource::collect`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CollectStats {
    /// Readings appended to the output.
    pub readings: usize,
    /// Areas that failed and were skipped, with the error.
    pub errors: Vec<(&'static str, String)>,
}

impl CollectStats {
    fn record(
        &mut self,
        area: &'static str,
        result: Result<Vec<Reading>, HostError>,
        out: &mut Vec<Reading>,
    ) {
        match result {
            Ok(readings) => {
                self.readings += readings.len();
                out.extend(readings);
            }
            Err(err) => {
                tracing::warn!(area, error = %err, "cannot collect host metrics; skipping the area");
                self.errors.push((area, err.to_string()));
            }
        }
    }
}

type Parser = fn(&str, &str) -> Result<Vec<Reading>, ParseError>;

/// Areas read from a file under `proc_path`: (area, file, parser).
const PROC_AREAS: [(&str, &str, Parser); 4] = [
    ("cpu", "stat", cpu::parse),
    ("memory", "meminfo", memory::parse),
    ("load", "loadavg", load::parse),
    ("net", "net/dev", net::parse),
];

/// The host source: one per agent, kept across collections (it holds sysinfo's disk list).
pub struct HostSource {
    proc_path: PathBuf,
    hostname: String,
    disks: Disks,
}

impl HostSource {
    /// Checks that `proc_path` is readable and settles the host name.
    pub fn new(cfg: HostConfig) -> Result<HostSource, HostError> {
        read(&cfg.proc_path.join("stat"))?;
        let hostname = match cfg.hostname {
            Some(name) => name,
            None => sysinfo::System::host_name().map_err(HostError::Hostname)?,
        };
        if hostname.is_empty() {
            return Err(HostError::EmptyHostname);
        }
        let disks = Disks::new().map_err(HostError::Disks)?;
        Ok(HostSource {
            proc_path: cfg.proc_path,
            hostname,
            disks,
        })
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Reads every area once and appends its readings to `out`. An area that fails is logged with
    /// tracing::warn!, counted in `errors`, and skipped; the others still report.
    pub fn collect(&mut self, out: &mut Vec<Reading>) -> CollectStats {
        let mut stats = CollectStats::default();
        for (area, file, parse) in PROC_AREAS {
            let result = self.read_and_parse(file, parse);
            stats.record(area, result, out);
        }
        let result = Ok(self.filesystems());
        stats.record("fs", result, out);
        stats
    }

    fn read_and_parse(&self, file: &str, parse: Parser) -> Result<Vec<Reading>, HostError> {
        let path = self.proc_path.join(file);
        let text = read(&path)?;
        parse(&text, &self.hostname).map_err(|cause| HostError::Parse { path, cause })
    }

    fn filesystems(&mut self) -> Vec<Reading> {
        // Storage only: sizes via statvfs, no I/O counters (/proc/diskstats) or disk kinds (/sys).
        self.disks
            .refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        let mounts = self.disks.iter().map(|d| fs::Mount {
            device: d.name().to_string_lossy(),
            fstype: d.file_system().to_string_lossy(),
            mountpoint: d.mount_point().to_string_lossy(),
            size: d.total_space(),
            avail: d.available_space(),
            // sysinfo has no free-including-reserved figure; ask statvfs (rustix: no unsafe).
            free: rustix::fs::statvfs(d.mount_point())
                .ok()
                .map(|st| st.f_bfree.saturating_mul(st.f_frsize)),
        });
        fs::readings(mounts, &self.hostname)
    }
}

fn read(path: &Path) -> Result<String, HostError> {
    std::fs::read_to_string(path).map_err(|cause| HostError::Read {
        path: path.to_owned(),
        cause,
    })
}

/// Builds a reading whose series carries `labels` plus the host label.
fn reading(
    name: &str,
    kind: MetricKind,
    value: f64,
    host: &str,
    labels: &[(&str, &str)],
) -> Reading {
    let labels = labels.iter().copied().chain([("host", host)]);
    Reading {
        series: Series::new(name, labels),
        kind,
        value,
    }
}

#[cfg(test)]
mod tests;
