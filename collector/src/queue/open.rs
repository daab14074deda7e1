//! Opening a queue directory: listing it, reading the position file, deleting acked
//! segments, scanning what is pending (counting records and damage, cutting a torn tail) and
//! building the initial state; plus the file-system helpers the writer and `verify` share.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use tokio::sync::{Notify, Semaphore};

use super::format::{self, Item, LOCK_FILE, POSITION_FILE, POSITION_TMP, Position, Scanner};
use super::reader::FileReader;
use super::writer::Writer;
use super::{
    Cursor, DiskQueue, Inner, MAX_IN_FLIGHT_PUSH_BYTES, OpenReport, PositionStatus, QueueConfig,
    QueueError, Shared, State,
};

pub(super) fn open(cfg: QueueConfig) -> Result<(DiskQueue, OpenReport), QueueError> {
    let cfg = QueueConfig {
        max_bytes: cfg.max_bytes.max(1),
        segment_bytes: cfg.segment_bytes.max(1),
        ..cfg
    };
    let dir = cfg.dir.clone();
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir)
            .map_err(|e| QueueError::io("create queue directory", &dir, e))?;
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        sync_dir(parent)?;
    }
    let lock = lock_dir(&dir)?;
    let listing = list_dir(&dir)?;
    if listing.has_tmp_position {
        let tmp = dir.join(POSITION_TMP);
        if let Err(e) = std::fs::remove_file(&tmp) {
            tracing::warn!("cannot remove {}: {e}", tmp.display());
        }
    }
    let position = read_position(&dir);
    let mut report = OpenReport {
        position: position.clone(),
        foreign_files: listing.foreign.clone(),
        ..OpenReport::default()
    };
    if !listing.foreign.is_empty() {
        tracing::info!(
            "queue {}: ignoring files that are not the queue's: {}",
            dir.display(),
            listing.foreign.join(", ")
        );
    }
    match &position {
        PositionStatus::Unreadable(reason) => tracing::warn!(
            "queue {}: reader position file is unusable ({reason}); delivering every \
             record again from the oldest segment",
            dir.display()
        ),
        PositionStatus::Missing if !listing.segments.is_empty() => tracing::warn!(
            "queue {}: no reader position file; delivering every record from the oldest \
             segment",
            dir.display()
        ),
        _ => {}
    }
    let loaded = match position {
        PositionStatus::Loaded(p) => Some(p),
        _ => None,
    };
    let newest = listing.newest_index;
    let write_index = newest
        .max(loaded.map_or(0, |p| p.segment))
        .saturating_add(1)
        .min(format::MAX_SEGMENT_INDEX);
    let start_segment = loaded.map_or(0, |p| p.segment);

    let mut kept = Vec::new();
    for (index, len) in listing.segments {
        if index < start_segment {
            let path = dir.join(format::segment_name(index));
            match std::fs::remove_file(&path) {
                Ok(()) => report.removed_segments += 1,
                Err(e) => tracing::warn!("cannot remove acked segment {}: {e}", path.display()),
            }
        } else {
            kept.push((index, len));
        }
    }
    if report.removed_segments > 0
        && let Err(e) = sync_dir(&dir)
    {
        tracing::warn!("{e}");
    }
    let start = match (loaded, kept.first()) {
        (Some(p), Some(&(first, len))) if p.segment == first => Position {
            segment: first,
            offset: p.offset.min(len),
        },
        (_, Some(&(first, _))) => Position {
            segment: first,
            offset: 0,
        },
        (_, None) => Position {
            segment: write_index,
            offset: 0,
        },
    };

    let last = kept.len().saturating_sub(1);
    let mut scanned = Vec::with_capacity(kept.len());
    for (i, (index, len)) in kept.into_iter().enumerate() {
        let from = if index == start.segment {
            start.offset
        } else {
            0
        };
        match scan_at_open(&dir, index, from, len, i == last, &mut report) {
            Some(len) => scanned.push((index, len)),
            None => report.unreadable_segments += 1,
        }
    }

    let mut segments = BTreeMap::new();
    let mut base = 0u64;
    for &(index, len) in &scanned {
        segments.insert(index, base);
        base += len;
    }
    // The start segment may have been unreadable: then reading starts at the next one.
    let start = match scanned.first() {
        Some(&(first, _)) if first == start.segment => start,
        Some(&(first, _)) => Position {
            segment: first,
            offset: 0,
        },
        None => Position {
            segment: write_index,
            offset: 0,
        },
    };
    let start_cursor = Cursor {
        pos: start,
        logical: segments
            .get(&start.segment)
            .map_or(base, |b| b + start.offset),
    };
    report.segments = scanned.len() as u64;
    report.bytes = base - start_cursor.logical;
    if report.records > 0 || report.damaged_regions > 0 || report.truncated_bytes > 0 {
        tracing::info!(
            records = report.records,
            bytes = report.bytes,
            damaged_regions = report.damaged_regions,
            truncated_bytes = report.truncated_bytes,
            "queue {}: opened with records pending",
            dir.display()
        );
    }

    let state = State {
        segments,
        write: Cursor {
            pos: Position {
                segment: write_index,
                offset: 0,
            },
            logical: base,
        },
        write_base: base,
        records: report.records,
        read_to: start_cursor,
        ..State::default()
    };
    let shared = Arc::new(Shared {
        dir: dir.clone(),
        max_bytes: cfg.max_bytes,
        state: Mutex::new(state),
        reader: Mutex::new(FileReader::new(start_cursor)),
        readable: Notify::new(),
    });
    let (tx, rx) = mpsc::channel();
    let persisted = loaded.filter(|&p| p == start);
    let writer = Writer::new(&cfg, shared.clone(), write_index, base, persisted, lock);
    let thread = std::thread::Builder::new()
        .name("sonde-queue".to_owned())
        .spawn(move || writer.run(rx))
        .map_err(|e| QueueError::io("start the writer thread for queue", &dir, e))?;
    let queue = DiskQueue {
        inner: Arc::new(Inner {
            shared,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            push_permits: Semaphore::new(MAX_IN_FLIGHT_PUSH_BYTES as usize),
        }),
    };
    Ok((queue, report))
}

/// Scans one segment at open from `from` to `len`, counting records and damage; cuts a torn
/// tail off the last segment. Returns the segment's length afterwards, or `None` if it cannot
/// be read at all.
fn scan_at_open(
    dir: &Path,
    index: u64,
    from: u64,
    len: u64,
    is_last: bool,
    report: &mut OpenReport,
) -> Option<u64> {
    let path = dir.join(format::segment_name(index));
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(
                "cannot open queue segment {}: {e}; skipping it",
                path.display()
            );
            return None;
        }
    };
    let mut scanner = Scanner::new(file, from, len);
    let mut regions = Vec::new();
    let mut records = 0u64;
    let mut tail: Option<format::DamagedRegion> = None;
    loop {
        match scanner.next(false) {
            Ok(Some(Item::Record { .. })) => {
                records += 1;
                if let Some(r) = tail.take() {
                    regions.push(r);
                }
            }
            Ok(Some(Item::Damaged(r))) => {
                if let Some(prev) = tail.replace(r) {
                    regions.push(prev);
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::error!(
                    "cannot read queue segment {} at offset {}: {e}; its records from there on \
                     will be skipped",
                    path.display(),
                    scanner.offset()
                );
                break;
            }
        }
    }
    let mut len = len;
    if let Some(r) = tail {
        if is_last && r.offset + r.len == len {
            match truncate(&path, r.offset) {
                Ok(()) => {
                    tracing::warn!(
                        "queue segment {} ends with a torn or damaged record at offset {} ({}): \
                         cut {} bytes, keeping everything before it",
                        path.display(),
                        r.offset,
                        r.reason,
                        r.len
                    );
                    report.truncated_bytes += r.len;
                    len = r.offset;
                }
                Err(e) => {
                    tracing::warn!("cannot truncate {}: {e}", path.display());
                    regions.push(r);
                }
            }
        } else {
            regions.push(r);
        }
    }
    for r in &regions {
        tracing::warn!(
            "queue segment {} is damaged at offset {} ({}): skipping {} bytes to the next \
             valid record",
            path.display(),
            r.offset,
            r.reason,
            r.len
        );
        report.damaged_regions += 1;
        report.damaged_bytes += r.len;
    }
    report.records += records;
    Some(len)
}

fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()
}

/// The directory's entries, sorted out.
#[derive(Debug, Default)]
pub(super) struct Listing {
    /// (index, length), ascending.
    pub(super) segments: Vec<(u64, u64)>,
    pub(super) has_tmp_position: bool,
    pub(super) foreign: Vec<String>,
    /// The highest index of anything named like a segment (a new segment must not collide).
    pub(super) newest_index: u64,
}

pub(super) fn list_dir(dir: &Path) -> Result<Listing, QueueError> {
    let io_err = |e| QueueError::io("list queue directory", dir, e);
    let mut out = Listing::default();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let name = entry.file_name();
        let name = name.to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        let index = format::parse_segment_name(&name);
        out.newest_index = out.newest_index.max(index.unwrap_or(0));
        match (name.as_str(), index) {
            (_, Some(index)) if is_file => match entry.metadata() {
                Ok(m) => out.segments.push((index, m.len())),
                Err(e) => {
                    tracing::warn!("cannot stat queue segment {name}: {e}");
                    out.foreign.push(name);
                }
            },
            (LOCK_FILE, _) => {}
            (POSITION_FILE, _) => {}
            (POSITION_TMP, _) if is_file => out.has_tmp_position = true,
            _ => out.foreign.push(name),
        }
    }
    out.segments.sort_unstable();
    out.foreign.sort();
    Ok(out)
}

pub(super) fn read_position(dir: &Path) -> PositionStatus {
    let path = dir.join(POSITION_FILE);
    let mut bytes = Vec::new();
    let read = File::open(&path).and_then(|f| {
        // A position file is 28 bytes; read one more to notice a longer one.
        io::Read::read_to_end(
            &mut io::Read::take(f, format::POSITION_LEN as u64 + 1),
            &mut bytes,
        )
    });
    match read {
        Err(e) if e.kind() == io::ErrorKind::NotFound => PositionStatus::Missing,
        Err(e) => PositionStatus::Unreadable(e.to_string()),
        Ok(_) => match format::decode_position(&bytes) {
            Ok(p) => PositionStatus::Loaded(p),
            Err(reason) => PositionStatus::Unreadable(reason.to_owned()),
        },
    }
}

fn lock_dir(dir: &Path) -> Result<File, QueueError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| QueueError::io("open lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(QueueError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(QueueError::io("lock", &path, e)),
    }
}

/// Fsyncs a directory, making a file created, renamed or removed in it durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| QueueError::io("sync directory", dir, e))
}
