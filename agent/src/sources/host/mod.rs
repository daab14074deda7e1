//! The host source: the figures of the machine the agent runs on, named as node_exporter names
//! them so dashboards and side-by-side comparisons work, plus a few of Sonde's own (`host_*`)
//! where node_exporter has no equivalent. Every series carries `host="<host name>"`.
//!
//! One file per area turns text (or sysinfo's figures) into [`Reading`]s and is unit-tested on
//! fixtures; this file owns the I/O of `proc_path` (with [`read`]): it reads each file once per
//! collection into a reused buffer, keeps the sysinfo objects between collections, skips
//! disabled areas without reading anything for them, and isolates failures so a broken area
//! does not hide the others. The sysfs areas ([`hwmon`], [`thermal`]) walk their own directories.
//!
//! The areas ([`AREAS`]), each switched off by naming it in [`HostConfig::disabled`]:
//!
//! | area | from | series |
//! | --- | --- | --- |
//! | cpu | `/proc/stat` | `node_cpu_seconds_total`, `node_cpu_total_seconds_total` |
//! | stat | `/proc/stat` (same read) | context switches, interrupts, forks, procs, boot time |
//! | memory | `/proc/meminfo` | `node_memory_*_bytes`, `host_memory_used_bytes` |
//! | load | `/proc/loadavg` | `node_load1/5/15` |
//! | processes | `/proc` listing, `/proc/loadavg` (same read) | `host_processes`, `host_threads` |
//! | pressure | `/proc/pressure/*` (optional) | `node_pressure_*_seconds_total` |
//! | disk | `/proc/diskstats` | `node_disk_*` |
//! | fs | sysinfo + `statvfs` | `node_filesystem_*` |
//! | net | `/proc/net/dev` | `node_network_*_total` |
//! | sockstat | `/proc/net/sockstat`, `sockstat6` (optional) | `node_sockstat_*` |
//! | tcpstat (default off) | `/proc/net/tcp`, `tcp6` (optional) | `node_tcp_connection_states` |
//! | netstat | `/proc/net/snmp`, `netstat`, `snmp6` (optional) | `node_netstat_*` |
//! | filefd | `/proc/sys/fs/file-nr` | `node_filefd_allocated`, `node_filefd_maximum` |
//! | time | the system clock | `node_time_seconds` |
//! | hwmon | `/sys/class/hwmon` (optional) | `node_hwmon_temp_celsius`, ... |
//! | thermal | `/sys/class/thermal` (optional) | `node_thermal_zone_temp` |
//!
//! tcpstat is off by default ([`DEFAULT_DISABLED`]), as in node_exporter: listing sockets makes
//! the kernel walk its whole TCP hash table once per file, whatever the number of connections
//! (262,144 buckets on a 24 GiB machine: about 1 ms per file, 2 ms per collection, twice the
//! agent's budget for everything else; up to 4x that on large machines).
//!
//! A file marked optional may be absent (no IPv6, no PSI, no sensors) without an error; any
//! other missing or malformed file fails its area for that collection.
//!
//! Why parse `/proc` here rather than ask sysinfo: sysinfo has no cumulative CPU seconds per
//! mode (only usage percentages between refreshes), does not expose Buffers/Cached and estimates
//! MemAvailable on old kernels, turns unparsable load or unreadable network counters into zeros,
//! has no network drop counters, and has none of the kernel, disk, socket or protocol counters.
//! Reading the files ourselves gives exact figures, real errors, one consistent snapshot per
//! file, and honours `proc_path`. sysinfo still gives the host name and the filesystem list
//! ([`fs`] says what that leaves out); no process list is ever refreshed.
//!
//! [`HostSource::collect`] blocks on file reads and `statvfs` calls: run it off the async
//! runtime's worker threads.

mod cpu;
mod disk;
mod filefd;
mod fs;
mod hwmon;
mod load;
mod memory;
mod net;
mod netstat;
mod pressure;
mod processes;
mod read;
mod sockstat;
mod stat;
mod tcpstat;
mod thermal;
mod time;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use sonde_common::model::{MetricKind, Series};
use sysinfo::{DiskRefreshKind, Disks};
use thiserror::Error;

use super::Reading;
use read::{LineError, for_each_line, is_absent, read, read_into};

/// Every area's name, in collection order: what [`HostConfig::disabled`] may hold.
pub const AREAS: &[&str] = &[
    "cpu",
    "stat",
    "memory",
    "load",
    "processes",
    "pressure",
    "disk",
    "fs",
    "net",
    "sockstat",
    "tcpstat",
    "netstat",
    "filefd",
    "time",
    "hwmon",
    "thermal",
];

/// The areas [`HostConfig::default`] disables: too dear to collect on every host (see above).
pub const DEFAULT_DISABLED: &[&str] = &["tcpstat"];

/// What the host source needs from configuration.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Where procfs is mounted (`/proc`).
    pub proc_path: PathBuf,
    /// Where sysfs is mounted (`/sys`); read by the hwmon and thermal areas.
    pub sys_path: PathBuf,
    /// The `host` label's value; `None` asks the system.
    pub hostname: Option<String>,
    /// Areas not to collect (names from [`AREAS`]); nothing is read for them. The default is
    /// [`DEFAULT_DISABLED`]; an empty set collects every area.
    pub disabled: BTreeSet<String>,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            proc_path: PathBuf::from("/proc"),
            sys_path: PathBuf::from("/sys"),
            hostname: None,
            disabled: DEFAULT_DISABLED.iter().map(|a| a.to_string()).collect(),
        }
    }
}

impl HostConfig {
    /// Checks that every disabled area is one of [`AREAS`].
    pub fn validate(&self) -> Result<(), HostError> {
        match self.disabled.iter().find(|a| !AREAS.contains(&a.as_str())) {
            Some(name) => Err(HostError::UnknownArea { name: name.clone() }),
            None => Ok(()),
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
    #[error("unknown host metrics area '{name}': the areas are {}", AREAS.join(", "))]
    UnknownArea { name: String },
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
            Err(err) => self.fail(area, &err),
        }
    }

    fn fail(&mut self, area: &'static str, err: &HostError) {
        tracing::warn!(area, error = %err, "cannot collect host metrics; skipping the area");
        self.errors.push((area, err.to_string()));
    }
}

/// The enabled areas, one bit per entry of [`AREAS`].
#[derive(Clone, Copy, Debug)]
struct Enabled(u32);

impl Enabled {
    fn new(disabled: &BTreeSet<String>) -> Enabled {
        let bits = AREAS.iter().enumerate().fold(0, |bits, (i, area)| {
            if disabled.contains(*area) {
                bits
            } else {
                bits | 1 << i
            }
        });
        Enabled(bits)
    }

    fn has(self, area: &str) -> bool {
        let index = AREAS.iter().position(|a| *a == area);
        debug_assert!(index.is_some(), "{area} is not in AREAS");
        index.is_some_and(|i| self.0 & 1 << i != 0)
    }
}

/// Whether a file of a multi-file area must exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    Required,
    /// Absent (or refused with EOPNOTSUPP, as PSI is with `psi=0`) means "not on this kernel".
    Optional,
}

/// Parses one file's text for the given host.
type FileParser<'a> = &'a dyn Fn(&str, &str) -> Result<Vec<Reading>, ParseError>;

/// A [`FileParser`] that captures nothing.
type FileParserFn = fn(&str, &str) -> Result<Vec<Reading>, ParseError>;

/// The host source: one per agent, kept across collections (it holds sysinfo's disk list and
/// the read buffers).
pub struct HostSource {
    proc_path: PathBuf,
    sys_path: PathBuf,
    hostname: String,
    enabled: Enabled,
    /// `None` when the fs area is disabled.
    disks: Option<Disks>,
    page_size: u64,
    /// Every file read whole goes through this buffer, so its allocation is reused.
    text: String,
    /// The window of the files streamed line by line.
    chunk: Vec<u8>,
}

impl HostSource {
    /// Checks the configuration and that `proc_path` is readable, and settles the host name.
    pub fn new(cfg: HostConfig) -> Result<HostSource, HostError> {
        cfg.validate()?;
        let enabled = Enabled::new(&cfg.disabled);
        if enabled.has("cpu") || enabled.has("stat") {
            read(&cfg.proc_path.join("stat"))?;
        }
        let hostname = match cfg.hostname {
            Some(name) => name,
            None => sysinfo::System::host_name().map_err(HostError::Hostname)?,
        };
        if hostname.is_empty() {
            return Err(HostError::EmptyHostname);
        }
        let disks = if enabled.has("fs") {
            Some(Disks::new().map_err(HostError::Disks)?)
        } else {
            None
        };
        Ok(HostSource {
            proc_path: cfg.proc_path,
            sys_path: cfg.sys_path,
            hostname,
            enabled,
            disks,
            page_size: rustix::param::page_size() as u64,
            text: String::new(),
            chunk: Vec::new(),
        })
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Reads every enabled area once and appends its readings to `out`. An area that fails is
    /// logged with tracing::warn!, counted in `errors`, and skipped; the others still report.
    pub fn collect(&mut self, out: &mut Vec<Reading>) -> CollectStats {
        let mut stats = CollectStats::default();
        let enabled = self.enabled;
        let on = |area| enabled.has(area);
        let (cpu, stat) = (on("cpu"), on("stat"));
        if cpu || stat {
            let path = self.proc_path.join("stat");
            match read_into(&mut self.text, &path) {
                Ok(()) => {
                    let (text, host) = (self.text.as_str(), self.hostname.as_str());
                    if cpu {
                        stats.record("cpu", parsed(&path, cpu::parse(text, host)), out);
                    }
                    if stat {
                        stats.record("stat", parsed(&path, stat::parse(text, host)), out);
                    }
                }
                Err(err) => [("cpu", cpu), ("stat", stat)]
                    .into_iter()
                    .filter(|(_, on)| *on)
                    .for_each(|(area, _)| stats.fail(area, &err)),
            }
        }
        if on("memory") {
            let result = self.read_files(&[("meminfo", Need::Required, &memory::parse)]);
            stats.record("memory", result, out);
        }
        let (load, processes) = (on("load"), on("processes"));
        if load || processes {
            let path = self.proc_path.join("loadavg");
            match read_into(&mut self.text, &path) {
                Ok(()) => {
                    let (text, host) = (self.text.as_str(), self.hostname.as_str());
                    if load {
                        stats.record("load", parsed(&path, load::parse(text, host)), out);
                    }
                    if processes {
                        let result = processes::threads(text)
                            .map_err(|cause| HostError::Parse { path, cause })
                            .and_then(|threads| {
                                let count = processes::count(&self.proc_path).map_err(|cause| {
                                    let path = self.proc_path.clone();
                                    HostError::Read { path, cause }
                                })?;
                                Ok(processes::readings(count, threads, host))
                            });
                        stats.record("processes", result, out);
                    }
                }
                Err(err) => [("load", load), ("processes", processes)]
                    .into_iter()
                    .filter(|(_, on)| *on)
                    .for_each(|(area, _)| stats.fail(area, &err)),
            }
        }
        if on("pressure") {
            let files = pressure::FILES.each_ref().map(|(file, parse)| {
                let parse: FileParser<'_> = parse;
                (*file, Need::Optional, parse)
            });
            let result = self.read_files(&files);
            stats.record("pressure", result, out);
        }
        if on("disk") {
            let result = self.read_files(&[("diskstats", Need::Required, &disk::parse)]);
            stats.record("disk", result, out);
        }
        if on("fs") {
            let result = Ok(self.filesystems());
            stats.record("fs", result, out);
        }
        if on("net") {
            let result = self.read_files(&[("net/dev", Need::Required, &net::parse)]);
            stats.record("net", result, out);
        }
        if on("sockstat") {
            let page_size = self.page_size;
            let parse = |t: &str, h: &str| sockstat::parse(t, page_size, h);
            let result = self.read_files(&[
                ("net/sockstat", Need::Required, &parse),
                ("net/sockstat6", Need::Optional, &parse),
            ]);
            stats.record("sockstat", result, out);
        }
        if on("tcpstat") {
            let result = self.tcp_states();
            stats.record("tcpstat", result, out);
        }
        if on("netstat") {
            let result = self.read_files(&[
                ("net/snmp", Need::Required, &netstat::parse),
                ("net/netstat", Need::Required, &netstat::parse),
                ("net/snmp6", Need::Optional, &netstat::parse_snmp6),
            ]);
            stats.record("netstat", result, out);
        }
        if on("filefd") {
            let result = self.read_files(&[("sys/fs/file-nr", Need::Required, &filefd::parse)]);
            stats.record("filefd", result, out);
        }
        if on("time") {
            let now = std::time::SystemTime::now();
            stats.record("time", Ok(time::readings(now, &self.hostname)), out);
        }
        if on("hwmon") {
            let result = hwmon::collect(&self.sys_path, &self.hostname);
            stats.record("hwmon", result, out);
        }
        if on("thermal") {
            let result = thermal::collect(&self.sys_path, &self.hostname);
            stats.record("thermal", result, out);
        }
        stats
    }

    /// Reads and parses the files of one area in turn, each through the reused buffer. The
    /// area fails on the first error, so it reports all of its files or none.
    fn read_files(
        &mut self,
        files: &[(&str, Need, FileParser<'_>)],
    ) -> Result<Vec<Reading>, HostError> {
        let mut readings = Vec::new();
        for (file, need, parse) in files {
            let path = self.proc_path.join(file);
            match read_into(&mut self.text, &path) {
                Ok(()) => {}
                Err(err) if *need == Need::Optional && is_absent(&err) => continue,
                Err(err) => return Err(err),
            }
            let parsed = parse(&self.text, &self.hostname);
            readings.extend(parsed.map_err(|cause| HostError::Parse { path, cause })?);
        }
        Ok(readings)
    }

    /// `/proc/net/tcp` and `tcp6`, streamed through a fixed window: on a busy server they run
    /// to megabytes, which must not become the agent's resident size.
    fn tcp_states(&mut self) -> Result<Vec<Reading>, HostError> {
        let mut states = tcpstat::TcpStates::default();
        for (file, need) in [("net/tcp", Need::Required), ("net/tcp6", Need::Optional)] {
            let path = self.proc_path.join(file);
            let mut f = match File::open(&path) {
                Ok(f) => f,
                Err(cause) => {
                    let err = HostError::Read { path, cause };
                    if need == Need::Optional && is_absent(&err) {
                        continue;
                    }
                    return Err(err);
                }
            };
            let result = for_each_line(&mut f, &mut self.chunk, |line, number| {
                states.add_line(line, number)
            });
            match result {
                Ok(()) => {}
                Err(LineError::Read(cause)) => return Err(HostError::Read { path, cause }),
                Err(LineError::Parse(cause)) => return Err(HostError::Parse { path, cause }),
            }
        }
        Ok(states.readings(&self.hostname))
    }

    fn filesystems(&mut self) -> Vec<Reading> {
        let Some(disks) = self.disks.as_mut() else {
            return Vec::new();
        };
        // Storage only: sizes via statvfs, no I/O counters (/proc/diskstats) or disk kinds (/sys).
        disks.refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        let mounts = disks.iter().map(|d| fs::Mount {
            device: d.name().to_string_lossy(),
            fstype: d.file_system().to_string_lossy(),
            mountpoint: d.mount_point().to_string_lossy(),
            size: d.total_space(),
            avail: d.available_space(),
            // What sysinfo does not give; ask statvfs ourselves (rustix: no unsafe).
            vfs: rustix::fs::statvfs(d.mount_point())
                .ok()
                .map(|st| fs::Vfs::from_statvfs(&st)),
        });
        fs::readings(mounts, &self.hostname)
    }
}

fn parsed(
    path: &Path,
    result: Result<Vec<Reading>, ParseError>,
) -> Result<Vec<Reading>, HostError> {
    result.map_err(|cause| HostError::Parse {
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
