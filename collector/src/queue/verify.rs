//! `verify`: a read-only report of what a queue directory holds, for
//! `sonde-collector queue verify DIR`. It never writes, truncates or deletes anything.

use std::fmt;
use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use super::format::{DamagedRegion, Item, LOCK_FILE, Position, Scanner, segment_name};
use super::open::{list_dir, read_position};
use super::{PositionStatus, QueueError};

/// What one segment holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentReport {
    pub index: u64,
    pub path: PathBuf,
    pub bytes: u64,
    pub records: u64,
    /// Records at or after the reader position.
    pub pending_records: u64,
    /// Bytes at or after the reader position.
    pub pending_bytes: u64,
    /// Damaged runs readers step over.
    pub damaged: Vec<DamagedRegion>,
    /// Damage reaching the end of the newest segment: a torn write, cut at the next open.
    pub torn_tail: Option<DamagedRegion>,
    /// Why (part of) the segment could not be read.
    pub unreadable: Option<String>,
}

/// What a queue directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub dir: PathBuf,
    /// Whether a running queue holds the directory lock (`None`: cannot tell).
    pub in_use: Option<bool>,
    pub position: PositionStatus,
    pub segments: Vec<SegmentReport>,
    /// Files that are not the queue's.
    pub foreign_files: Vec<String>,
}

impl VerifyReport {
    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
    pub fn pending_records(&self) -> u64 {
        self.segments.iter().map(|s| s.pending_records).sum()
    }
    pub fn pending_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.pending_bytes).sum()
    }
    pub fn damaged_regions(&self) -> u64 {
        self.segments.iter().map(|s| s.damaged.len() as u64).sum()
    }
    pub fn damaged_bytes(&self) -> u64 {
        self.segments
            .iter()
            .flat_map(|s| &s.damaged)
            .map(|d| d.len)
            .sum()
    }

    /// No damage, torn tail, unreadable segment or unusable position file.
    pub fn is_clean(&self) -> bool {
        !matches!(self.position, PositionStatus::Unreadable(_))
            && self
                .segments
                .iter()
                .all(|s| s.damaged.is_empty() && s.torn_tail.is_none() && s.unreadable.is_none())
    }
}

/// Reads every segment of the queue in `dir` and reports records, pending records, damage
/// (with offsets), the reader position and foreign files. Fails only if `dir` cannot be
/// listed. Safe to run next to a running queue (its figures are then a snapshot).
pub fn verify(dir: &Path) -> Result<VerifyReport, QueueError> {
    let meta =
        std::fs::metadata(dir).map_err(|e| QueueError::io("open queue directory", dir, e))?;
    if !meta.is_dir() {
        return Err(QueueError::io(
            "open queue directory",
            dir,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let listing = list_dir(dir)?;
    let position = read_position(dir);
    let start = match &position {
        PositionStatus::Loaded(p) => *p,
        _ => Position::default(),
    };
    let count = listing.segments.len();
    let segments = listing
        .segments
        .iter()
        .enumerate()
        .map(|(i, &(index, len))| verify_segment(dir, index, len, start, i + 1 == count))
        .collect();
    Ok(VerifyReport {
        dir: dir.to_path_buf(),
        in_use: lock_state(dir),
        position,
        segments,
        foreign_files: listing.foreign,
    })
}

fn verify_segment(
    dir: &Path,
    index: u64,
    len: u64,
    start: Position,
    is_last: bool,
) -> SegmentReport {
    let path = dir.join(segment_name(index));
    let pending_from = match index.cmp(&start.segment) {
        std::cmp::Ordering::Less => len,
        std::cmp::Ordering::Equal => start.offset.min(len),
        std::cmp::Ordering::Greater => 0,
    };
    let mut report = SegmentReport {
        index,
        path: path.clone(),
        bytes: len,
        records: 0,
        pending_records: 0,
        pending_bytes: len - pending_from,
        damaged: Vec::new(),
        torn_tail: None,
        unreadable: None,
    };
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            report.unreadable = Some(e.to_string());
            return report;
        }
    };
    let mut scanner = Scanner::new(file, 0, len);
    let mut ends_damaged = false;
    loop {
        match scanner.next(false) {
            Ok(Some(Item::Record { offset, .. })) => {
                report.records += 1;
                if offset >= pending_from {
                    report.pending_records += 1;
                }
                ends_damaged = false;
            }
            Ok(Some(Item::Damaged(r))) => {
                ends_damaged = r.offset + r.len == len;
                report.damaged.push(r);
            }
            Ok(None) => break,
            Err(e) => {
                report.unreadable = Some(format!("read error at offset {}: {e}", scanner.offset()));
                ends_damaged = false;
                break;
            }
        }
    }
    if is_last && ends_damaged {
        report.torn_tail = report.damaged.pop();
    }
    report
}

/// Whether another process holds the queue's lock. Takes a shared lock for an instant, so a
/// queue opening at that very moment would see the directory as in use.
fn lock_state(dir: &Path) -> Option<bool> {
    let file = match File::open(dir.join(LOCK_FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(false),
        Err(_) => return None,
    };
    match file.try_lock_shared() {
        Ok(()) => Some(false),
        Err(TryLockError::WouldBlock) => Some(true),
        Err(TryLockError::Error(_)) => None,
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "queue {}", self.dir.display())?;
        let state = match self.in_use {
            Some(true) => "in use by a running queue (figures may change while read)",
            Some(false) => "not in use",
            None => "unknown (cannot read the lock file)",
        };
        writeln!(f, "  state:     {state}")?;
        match &self.position {
            PositionStatus::Loaded(p) => {
                writeln!(f, "  position:  {p} (everything before it is acked)")?
            }
            PositionStatus::Missing => writeln!(
                f,
                "  position:  none (every record is pending; delivery starts at the oldest segment)"
            )?,
            PositionStatus::Unreadable(reason) => writeln!(
                f,
                "  position:  UNREADABLE ({reason}); every record is pending and will be \
                 delivered again"
            )?,
        }
        writeln!(
            f,
            "  segments:  {} ({} bytes)",
            self.segments.len(),
            self.bytes()
        )?;
        writeln!(
            f,
            "  records:   {} ({} pending, {} bytes pending)",
            self.records(),
            self.pending_records(),
            self.pending_bytes()
        )?;
        match self.damaged_regions() {
            0 => writeln!(f, "  damage:    none")?,
            n => writeln!(
                f,
                "  damage:    {n} damaged region(s), {} bytes (skipped by readers)",
                self.damaged_bytes()
            )?,
        }
        for s in &self.segments {
            writeln!(
                f,
                "  {}: {} bytes, {} records, {} pending",
                segment_name(s.index),
                s.bytes,
                s.records,
                s.pending_records
            )?;
            for d in &s.damaged {
                writeln!(
                    f,
                    "      damaged at offset {}: {} bytes ({})",
                    d.offset, d.len, d.reason
                )?;
            }
            if let Some(d) = &s.torn_tail {
                writeln!(
                    f,
                    "      torn tail at offset {}: {} bytes ({}; cut at the next open)",
                    d.offset, d.len, d.reason
                )?;
            }
            if let Some(reason) = &s.unreadable {
                writeln!(f, "      UNREADABLE: {reason}")?;
            }
        }
        if !self.foreign_files.is_empty() {
            writeln!(
                f,
                "  ignored:   {} (not the queue's files)",
                self.foreign_files.join(", ")
            )?;
        }
        write!(
            f,
            "  result:    {}",
            if self.is_clean() { "OK" } else { "DAMAGED" }
        )
    }
}
