//! A durable, bounded, on-disk FIFO of opaque byte records: one per sink, so a storage that is
//! slow or down never holds up ingest (the collector acknowledges a batch once it is durable
//! here) and nothing accepted is lost across a restart. Shaped like vmagent's persistent queue.
//!
//! # Invariants
//! - **Durable before acknowledged**: [`DiskQueue::push`] returns once its records are written
//!   (and, with [`FsyncPolicy::Always`], fsynced; concurrent pushes share one fsync). A failed
//!   write (a full disk) fails the push and is cut back off the segment, so bytes nobody was
//!   told are stored never come back.
//! - **At least once, in order**: readers get records in push order ([`DiskQueue::next`]); a
//!   record leaves the queue only when [`DiskQueue::ack`] says the remote side has it. The
//!   reader position persisted on disk is that of the oldest record handed out and not acked,
//!   so a crash redelivers what was in flight (and what was acked since the position was last
//!   written), never skips anything. Sinks are idempotent because samples are.
//! - **Bounded**: the bytes of unacked records (and damage among them), plus pushes on their
//!   way to disk, never exceed `max_bytes`; a push that would is refused with
//!   [`QueueError::Full`] and the caller answers 429/503. Acked segments are deleted, so disk
//!   use is at most `max_bytes` plus one segment plus the acked part of the oldest one.
//! - **Opens anything**: whatever state the directory is in (torn tail, flipped bytes, zero
//!   length or garbage segments, foreign files, a missing or garbage position file),
//!   [`DiskQueue::open`] opens it. Damaged bytes are found by checksum, counted in the
//!   [`OpenReport`] and skipped by scanning for the next record's magic, so one bad record
//!   costs only itself.
//!
//! # On disk
//! ```text
//! <dir>/LOCK                    held (flock) while a DiskQueue has the directory open
//! <dir>/NNNNNNNNNNNNNNNN.seg    segments: 16-digit decimal index, records back to back
//! <dir>/reader.pos              where reading resumes (written to reader.pos.tmp, fsynced,
//!                               renamed, directory fsynced)
//!
//! record     [magic "SNQ\x01"][u32 LE payload length][u32 LE CRC-32][payload]
//!            CRC-32 (IEEE) covers the four length bytes and the payload; payloads are at
//!            most MAX_RECORD_BYTES (64 MiB)
//! reader.pos [magic "SNQP"][u8 version 1][3 zero bytes][u64 LE segment][u64 LE offset]
//!            [u32 LE CRC-32 of the first 24 bytes]   (28 bytes)
//! ```
//! Every record before the reader position is acked. Other files are ignored (and reported).
//! A segment is cut before a push would take it past `segment_bytes` (a push larger than that
//! gets a segment of its own); each open writes into a fresh segment, created on the first
//! push, so a damaged tail is never appended to.
//!
//! At open: segments wholly before the position are deleted (they were acked); the rest are
//! scanned from the position on to count what is pending. Damage at the very end of the last
//! segment is a write torn by a crash: it is truncated (reported as `truncated_bytes`). Damage
//! anywhere else is reported and left in place; readers step over it. A missing or unreadable
//! position restarts reading at the oldest segment: everything is delivered again rather than
//! anything lost.
//!
//! Offsets are also mapped to one "logical" byte count across segments (each segment starts
//! where the previous one ended), so pending bytes are a subtraction.
//!
//! # Threads and locks
//! - The writer thread ([`writer`]) owns the segment being written, the position file and
//!   segment deletion, and holds the directory lock. Pushes reach it through a channel and wait
//!   on a oneshot; after a push it waits `commit_delay`, then writes every push queued by then
//!   as one group, fsyncs once per group (`Always`) or on a timer (`Interval`), and persists the
//!   reader position at most every `position_sync` (and at once when a segment becomes fully
//!   acked, and at close).
//! - Hand-over: when a group is published and the reader has read everything before it (and
//!   holds fewer than 1,024 records), the writer puts the group's records, with the companions
//!   their pushers attached ([`DiskQueue::push_with`]), straight into the read-ahead buffer and
//!   moves the file reader past them, so a reader that keeps up never reads back from disk.
//! - `state` (a `std::sync::Mutex`) holds the positions, counters and the records read ahead;
//!   it is taken briefly, never across I/O or an `.await`.
//! - `reader` (another mutex) holds the open segment being read; it is taken only inside
//!   `spawn_blocking`, where file reads happen, and `state` is taken inside it, never the
//!   other way round.

mod format;
mod open;
mod reader;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

pub use format::{DamagedRegion, MAX_RECORD_BYTES, Position};
pub use verify::{SegmentReport, VerifyReport, verify};

use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, oneshot};

use reader::FileReader;
use writer::{Msg, PushRequest};

/// Push bytes on their way to the writer thread at once; more pushes wait (asynchronously).
const MAX_IN_FLIGHT_PUSH_BYTES: u64 = 64 << 20;
/// How long a reader waits before reading again after a read error.
const READ_RETRY: Duration = Duration::from_secs(1);

/// When pushes count as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every push is fsynced before it returns (group commit: concurrent pushes share one).
    Always,
    /// Pushes return once written; the writer fsyncs at most this long after a write. A crash
    /// of the machine (not just the process) can lose that window.
    Interval(Duration),
    /// Never fsync; the kernel writes back when it likes (tests, throwaway data).
    Never,
}

/// Where and how one queue keeps its records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// The queue's own directory; created if missing.
    pub dir: PathBuf,
    /// Most bytes of unacked records (framing included) the queue holds.
    pub max_bytes: u64,
    /// A segment file is cut before a push would take it past this size (default 32 MiB).
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    /// The reader position is written at most this often (default 1 s), plus when a segment
    /// becomes fully acked and at close. A crash redelivers what was acked since.
    pub position_sync: Duration,
    /// How long the writer waits after a push for others to share its write and fsync
    /// (default 3 ms; zero writes at once).
    pub commit_delay: Duration,
}

impl QueueConfig {
    /// Defaults: 1 GiB, 32 MiB segments, fsync every push, position written every second.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: 1 << 30,
            segment_bytes: 32 << 20,
            fsync: FsyncPolicy::Always,
            position_sync: Duration::from_secs(1),
            commit_delay: crate::store::DEFAULT_COMMIT_DELAY,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot {op} {}: {cause}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("queue directory {} is in use by another queue (its LOCK file is held)", path.display())]
    Locked { path: PathBuf },
    #[error("queue is full: {pending} bytes pending + {bytes} more would exceed {max}")]
    Full { pending: u64, bytes: u64, max: u64 },
    #[error(
        "push of {bytes} bytes can never fit (queue limit {max}, record limit {MAX_RECORD_BYTES})"
    )]
    TooLarge { bytes: u64, max: u64 },
    #[error("queue is closed")]
    Closed,
    #[error("queue writer stopped after an unrecoverable write error ({0}); restart to recover")]
    Unavailable(String),
}

impl QueueError {
    fn io(op: &'static str, path: &Path, cause: io::Error) -> Self {
        QueueError::Io {
            op,
            path: path.to_path_buf(),
            cause,
        }
    }

    /// True for the refusals a caller answers with 429/503 and a Retry-After: the queue is
    /// full now but may not be later.
    pub fn is_full(&self) -> bool {
        matches!(self, QueueError::Full { .. })
    }

    /// A copy for each push of a failed group (`io::Error` is not `Clone`).
    pub(crate) fn replicate(&self) -> Self {
        match self {
            QueueError::Io { op, path, cause } => QueueError::Io {
                op,
                path: path.clone(),
                cause: io::Error::new(cause.kind(), cause.to_string()),
            },
            QueueError::Locked { path } => QueueError::Locked { path: path.clone() },
            QueueError::Full {
                pending,
                bytes,
                max,
            } => QueueError::Full {
                pending: *pending,
                bytes: *bytes,
                max: *max,
            },
            QueueError::TooLarge { bytes, max } => QueueError::TooLarge {
                bytes: *bytes,
                max: *max,
            },
            QueueError::Closed => QueueError::Closed,
            QueueError::Unavailable(r) => QueueError::Unavailable(r.clone()),
        }
    }
}

/// What the reader-position file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PositionStatus {
    Loaded(Position),
    /// No position file: reading starts at the oldest segment.
    #[default]
    Missing,
    /// A position file that cannot be used (the reason); reading starts at the oldest segment.
    Unreadable(String),
}

/// What opening the queue found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Segment files kept.
    pub segments: u64,
    /// Records waiting to be delivered.
    pub records: u64,
    /// Bytes waiting (from the reader position to the end, damage included).
    pub bytes: u64,
    /// Damaged runs found among the pending bytes (readers skip them).
    pub damaged_regions: u64,
    pub damaged_bytes: u64,
    /// A torn write cut from the end of the last segment.
    pub truncated_bytes: u64,
    /// Segments wholly before the reader position, deleted.
    pub removed_segments: u64,
    /// Segment files that could not be read at all (left in place, not delivered).
    pub unreadable_segments: u64,
    pub position: PositionStatus,
    /// Names of files that are not the queue's, ignored.
    pub foreign_files: Vec<String>,
}

/// Gauges and counters for self-metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    /// Bytes of records not yet acked (damage among them included).
    pub bytes: u64,
    pub max_bytes: u64,
    /// Records not yet acked.
    pub records: u64,
    /// Records handed to a reader and not acked yet.
    pub in_flight: u64,
    /// Segment files on disk.
    pub segments: u64,
    /// Bytes of segment files on disk.
    pub disk_bytes: u64,
    /// Since open.
    pub pushed_records: u64,
    pub acked_records: u64,
    pub fsyncs: u64,
    /// Damaged bytes readers stepped over since open.
    pub damaged_bytes_skipped: u64,
    /// Read errors (the rest of that segment is skipped).
    pub read_errors: u64,
}

/// Identifies a delivered record, for [`DiskQueue::ack`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId {
    pos: Position,
    framed: u64,
    logical: u64,
}

impl RecordId {
    /// Where the record starts on disk.
    pub fn position(&self) -> Position {
        self.pos
    }

    fn start(&self) -> Cursor {
        Cursor {
            pos: self.pos,
            logical: self.logical,
        }
    }
}

/// One record as pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub id: RecordId,
    pub data: Bytes,
    /// What the pusher attached to the record for a reader that takes it straight from
    /// memory ([`DiskQueue::push_with`]); never written, so `None` once read from disk.
    pub companion: Option<Bytes>,
}

/// A position with its logical offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cursor {
    pos: Position,
    logical: u64,
}

#[derive(Debug, Default)]
struct State {
    closed: bool,
    /// Why the writer stopped for good (pushes then fail).
    broken: Option<String>,
    /// Segment files on disk and the logical offset of their first byte.
    segments: BTreeMap<u64, u64>,
    /// End of the data readers may see: the segment being written and its written length.
    write: Cursor,
    /// Logical offset of the first byte of the segment being written.
    write_base: u64,
    /// Bytes of pushes accepted but not yet written.
    reserved: u64,
    /// Records not yet acked.
    records: u64,
    /// Records read from disk, not yet handed out.
    ahead: VecDeque<Record>,
    /// Where the file reader stopped.
    read_to: Cursor,
    /// Handed out, not yet acked.
    in_flight: BTreeMap<Position, RecordId>,
    pushed: u64,
    acked: u64,
    fsyncs: u64,
    damaged_bytes_skipped: u64,
    read_errors: u64,
}

impl State {
    /// Everything before this is acked: the oldest record handed out and not acked, else the
    /// oldest not handed out.
    fn acked_cursor(&self) -> Cursor {
        match self.in_flight.first_key_value() {
            Some((_, id)) => id.start(),
            None => self.ahead.front().map_or(self.read_to, |r| r.id.start()),
        }
    }

    fn pending_bytes(&self) -> u64 {
        self.write
            .logical
            .saturating_sub(self.acked_cursor().logical)
    }

    /// Length of a segment that is not the one being written.
    fn finished_len(&self, index: u64) -> u64 {
        let Some(&base) = self.segments.get(&index) else {
            return 0;
        };
        let next = self
            .segments
            .range(index + 1..)
            .next()
            .map_or(self.write_base, |(_, &b)| b);
        next.saturating_sub(base)
    }
}

/// What the writer, the reader and every handle share.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    reader: Mutex<FileReader>,
    /// Signalled when data becomes readable and at close.
    readable: Notify,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The queue. Cheap to clone; every clone is the same queue.
#[derive(Clone, Debug)]
pub struct DiskQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    /// Taken by `close`.
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    push_permits: Semaphore,
}

impl DiskQueue {
    /// Opens or creates the queue in `cfg.dir`, whatever state it is in (see the module
    /// docs). Fails only on I/O errors that leave nothing to open (the directory cannot be
    /// created, listed or locked) or when another queue holds it. Blocking.
    pub fn open(cfg: QueueConfig) -> Result<(DiskQueue, OpenReport), QueueError> {
        open::open(cfg)
    }

    /// Appends `records`, in order, as one unit: all are stored or none. Returns once they are
    /// durable per the fsync policy. Dropping the future after the records were handed to the
    /// writer does not undo them.
    pub async fn push(&self, records: &[Bytes]) -> Result<(), QueueError> {
        let records: Vec<(Bytes, Option<Bytes>)> =
            records.iter().map(|r| (r.clone(), None)).collect();
        self.push_with(&records).await
    }

    /// [`DiskQueue::push`] of records that each may carry a companion: bytes in another form
    /// (say, decoded) that a reader gets along with the record if the record reaches it from
    /// memory, when the reader had caught up. Only the records are stored.
    pub async fn push_with(&self, records: &[(Bytes, Option<Bytes>)]) -> Result<(), QueueError> {
        if records.is_empty() {
            return Ok(());
        }
        let shared = &self.inner.shared;
        let mut bytes = 0u64;
        for (r, _) in records {
            if r.len() > MAX_RECORD_BYTES {
                return Err(QueueError::TooLarge {
                    bytes: r.len() as u64,
                    max: shared.max_bytes,
                });
            }
            bytes += format::framed_len(r.len());
        }
        if bytes > shared.max_bytes {
            return Err(QueueError::TooLarge {
                bytes,
                max: shared.max_bytes,
            });
        }
        let permits = bytes.clamp(1, MAX_IN_FLIGHT_PUSH_BYTES) as u32;
        let _permit = self
            .inner
            .push_permits
            .acquire_many(permits)
            .await
            .map_err(|_| QueueError::Closed)?;
        {
            let mut st = shared.state();
            if st.closed {
                return Err(QueueError::Closed);
            }
            if let Some(reason) = &st.broken {
                return Err(QueueError::Unavailable(reason.clone()));
            }
            let pending = st.pending_bytes() + st.reserved;
            if pending + bytes > shared.max_bytes {
                return Err(QueueError::Full {
                    pending,
                    bytes,
                    max: shared.max_bytes,
                });
            }
            st.reserved += bytes;
        }
        let mut frames = Vec::with_capacity(bytes as usize);
        for (r, _) in records {
            format::encode_record(&mut frames, r);
        }
        let (reply, answer) = oneshot::channel();
        let request = PushRequest {
            frames,
            payloads: records.to_vec(),
            records: records.len() as u64,
            reply,
        };
        let sent = match self.sender() {
            Some(tx) => tx.send(Msg::Push(request)).is_ok(),
            None => false,
        };
        if !sent {
            shared.state().reserved -= bytes;
            return Err(QueueError::Closed);
        }
        answer.await.map_err(|_| QueueError::Closed)?
    }

    /// The next record not handed out yet, oldest first, waiting for one to be pushed; `None`
    /// once the queue is closed. The record stays in the queue until [`DiskQueue::ack`]ed.
    /// Meant for one reader task (several get disjoint records, but order is then theirs).
    pub async fn next(&self) -> Option<Record> {
        self.next_inner(true).await
    }

    /// Like [`DiskQueue::next`], but `None` at once when every record written so far has been
    /// handed out.
    pub async fn try_next(&self) -> Option<Record> {
        self.next_inner(false).await
    }

    async fn next_inner(&self, wait: bool) -> Option<Record> {
        let shared = &self.inner.shared;
        loop {
            let notified = shared.readable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (readable, before) = {
                let mut st = shared.state();
                if st.closed {
                    return None;
                }
                if let Some(record) = st.ahead.pop_front() {
                    st.in_flight.insert(record.id.pos, record.id);
                    return Some(record);
                }
                let readable = st.read_to.logical < st.write.logical
                    || st.read_to.pos.segment < st.write.pos.segment;
                (readable, st.read_to)
            };
            if readable {
                let reading = shared.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || reader::fill(&reading)).await {
                    tracing::error!("queue reader task failed: {e}");
                    return None;
                }
                // Compared with the state rather than what this fill did: a fill started by a
                // cancelled call may have read ahead first.
                let moved = {
                    let st = shared.state();
                    !st.ahead.is_empty() || st.read_to != before
                };
                if moved {
                    continue;
                }
                // Stuck on a read error in the segment being written: try again later.
                if !wait {
                    return None;
                }
                let _ = tokio::time::timeout(READ_RETRY, notified).await;
                continue;
            }
            if !wait {
                return None;
            }
            notified.await;
        }
    }

    /// Removes a delivered record from the queue: the remote side has it (or refused it for
    /// good). Acks may come in any order; the persisted position moves past a record once it
    /// and everything before it are acked. Unknown or repeated ids are ignored.
    pub fn ack(&self, id: RecordId) {
        let crossed = {
            let mut st = self.inner.shared.state();
            let before = st.acked_cursor().pos.segment;
            if st.in_flight.remove(&id.pos).is_none() {
                return;
            }
            st.records = st.records.saturating_sub(1);
            st.acked += 1;
            st.acked_cursor().pos.segment > before
        };
        if crossed && let Some(tx) = self.sender() {
            // A segment is now fully acked: let the writer persist and delete it soon.
            let _ = tx.send(Msg::Acked);
        }
    }

    /// Pending bytes over `max_bytes`, from 0 to 1.
    pub fn fill_ratio(&self) -> f64 {
        let st = self.inner.shared.state();
        (st.pending_bytes() + st.reserved) as f64 / self.inner.shared.max_bytes as f64
    }

    pub fn stats(&self) -> QueueStats {
        let st = self.inner.shared.state();
        let first_base = st
            .segments
            .first_key_value()
            .map_or(st.write_base, |(_, &b)| b);
        QueueStats {
            bytes: st.pending_bytes(),
            max_bytes: self.inner.shared.max_bytes,
            records: st.records,
            in_flight: st.in_flight.len() as u64,
            segments: st.segments.len() as u64,
            disk_bytes: st.write.logical.saturating_sub(first_base),
            pushed_records: st.pushed,
            acked_records: st.acked,
            fsyncs: st.fsyncs,
            damaged_bytes_skipped: st.damaged_bytes_skipped,
            read_errors: st.read_errors,
        }
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// Stops the queue: later pushes fail with [`QueueError::Closed`], waiting readers get
    /// `None`; pushes already handed to the writer are written and fsynced, the reader
    /// position is persisted, and the directory lock is released. Blocks until then: call
    /// from a blocking context. Idempotent.
    pub fn close(&self) {
        self.inner.shared.state().closed = true;
        self.inner.shared.readable.notify_waiters();
        self.inner.push_permits.close();
        drop(
            self.inner
                .tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the queue writer thread panicked");
        }
    }

    fn sender(&self) -> Option<mpsc::Sender<Msg>> {
        self.inner
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
