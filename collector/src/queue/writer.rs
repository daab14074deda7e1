//! The writer thread: owns the segment being written, the reader-position file and segment
//! deletion, and holds the directory lock until it exits.
//!
//! It takes every push already queued (up to [`MAX_GROUP_BYTES`]) as one group, writes them
//! in order, fsyncs once (`Always`), publishes the new end to readers and answers each pusher.
//! A segment is cut between pushes. If a write or fsync fails, the segment is truncated back
//! to its last good length and the pushes of that write fail; if even the truncation fails,
//! the writer refuses every later push until a restart. Between groups, and at least every
//! `position_sync`, it fsyncs on the `Interval` policy's timer, persists the reader position
//! and deletes segments wholly before it. It exits once every sender is gone, after writing
//! what was queued, fsyncing and persisting the position.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

use super::format::{self, MAX_SEGMENT_INDEX, POSITION_FILE, POSITION_TMP, Position};
use super::open::sync_dir;
use super::{Cursor, FsyncPolicy, QueueConfig, QueueError, Record, RecordId, Shared};
use bytes::Bytes;

/// A group stops growing past this many bytes.
const MAX_GROUP_BYTES: usize = 16 << 20;
/// The writer wakes at least this often, and at most this often when idle.
const MIN_TICK: Duration = Duration::from_millis(10);

pub(crate) enum Msg {
    Push(PushRequest),
    /// A segment became fully acked: persist the position and delete it now.
    Acked,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Push(r) => write!(f, "Push({} records, {} bytes)", r.records, r.frames.len()),
            Msg::Acked => f.write_str("Acked"),
        }
    }
}

/// Records held in memory for the readers (`State::ahead`) past which new ones are left for
/// the readers to read back from disk: a bound on the memory a slow reader ties up.
pub(crate) const MAX_HANDED_AHEAD: usize = 1024;

/// One push: its framed records and where to send the outcome.
pub(crate) struct PushRequest {
    pub(crate) frames: Vec<u8>,
    /// The records' payloads, in order (`frames` holds them framed), handed to a reader that
    /// has caught up without reading them back from disk.
    pub(crate) payloads: Vec<(Bytes, Option<Bytes>)>,
    pub(crate) records: u64,
    pub(crate) reply: oneshot::Sender<Result<(), QueueError>>,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    dir: PathBuf,
    fsync: FsyncPolicy,
    segment_bytes: u64,
    position_sync: Duration,
    commit_delay: Duration,
    /// The segment being written (its file is created by the first write).
    index: u64,
    file: Option<File>,
    /// Bytes written to it.
    len: u64,
    /// Its logical base.
    base: u64,
    /// Written but not fsynced.
    unsynced: bool,
    last_sync: Instant,
    /// What the position file holds, if known.
    persisted: Option<Position>,
    last_persist: Instant,
    broken: Option<String>,
    buf: Vec<u8>,
    _lock: File,
}

impl Writer {
    pub(crate) fn new(
        cfg: &QueueConfig,
        shared: Arc<Shared>,
        index: u64,
        base: u64,
        persisted: Option<Position>,
        lock: File,
    ) -> Self {
        Self {
            shared,
            dir: cfg.dir.clone(),
            fsync: cfg.fsync,
            segment_bytes: cfg.segment_bytes,
            position_sync: cfg.position_sync,
            commit_delay: cfg.commit_delay,
            index,
            file: None,
            len: 0,
            base,
            unsynced: false,
            last_sync: Instant::now(),
            persisted,
            last_persist: Instant::now(),
            broken: None,
            buf: Vec::new(),
            _lock: lock,
        }
    }

    pub(crate) fn run(mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            let first = match rx.recv_timeout(self.tick()) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if matches!(first, Some(Msg::Push(_))) && !self.commit_delay.is_zero() {
                // Let the pushes arriving meanwhile share this group's write and fsync.
                std::thread::sleep(self.commit_delay);
            }
            let mut nudged = false;
            let mut group = Vec::new();
            let mut bytes = 0usize;
            let mut next = first;
            while let Some(msg) = next {
                match msg {
                    Msg::Push(r) => {
                        bytes += r.frames.len();
                        group.push(r);
                    }
                    Msg::Acked => nudged = true,
                }
                next = if bytes < MAX_GROUP_BYTES {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !group.is_empty() {
                self.commit(group);
            }
            self.housekeeping(nudged);
        }
        self.finish();
    }

    fn tick(&self) -> Duration {
        let mut tick = self.position_sync;
        if let FsyncPolicy::Interval(d) = self.fsync
            && self.unsynced
        {
            tick = tick.min(d.saturating_sub(self.last_sync.elapsed()));
        }
        tick.max(MIN_TICK)
    }

    fn path(&self) -> PathBuf {
        self.dir.join(format::segment_name(self.index))
    }

    /// Writes a group, cutting segments between pushes, and answers every pusher.
    fn commit(&mut self, group: Vec<PushRequest>) {
        let mut pending: Vec<PushRequest> = Vec::new();
        let mut error = self.broken.clone().map(QueueError::Unavailable);
        for req in group {
            if error.is_some() {
                pending.push(req);
                continue;
            }
            let buffered = self.len + self.buf.len() as u64;
            if buffered > 0 && buffered + req.frames.len() as u64 > self.segment_bytes {
                if let Err(e) = self.flush() {
                    error = Some(e);
                    pending.push(req);
                    continue;
                }
                self.publish(std::mem::take(&mut pending));
                if let Err(e) = self.cut() {
                    error = Some(e);
                    pending.push(req);
                    continue;
                }
            }
            self.buf.extend_from_slice(&req.frames);
            pending.push(req);
        }
        if error.is_none() {
            match self.flush() {
                Ok(()) => return self.publish(pending),
                Err(e) => error = Some(e),
            }
        }
        self.buf.clear();
        if let Some(error) = error {
            self.fail(pending, &error);
        }
    }

    /// Writes `self.buf` to the segment (fsyncing it under `Always`); on failure cuts the
    /// segment back to its previous length.
    fn flush(&mut self) -> Result<(), QueueError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self.path();
        if self.file.is_none() {
            let created = OpenOptions::new()
                .append(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| QueueError::io("create queue segment", &path, e));
            let created = created.and_then(|f| {
                if self.fsync != FsyncPolicy::Never
                    && let Err(e) = sync_dir(&self.dir)
                {
                    let _ = std::fs::remove_file(&path);
                    return Err(e);
                }
                Ok(f)
            });
            match created {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    self.buf.clear();
                    return Err(e);
                }
            }
        }
        let Some(file) = self.file.as_mut() else {
            self.buf.clear();
            return Err(QueueError::Closed);
        };
        let always = self.fsync == FsyncPolicy::Always;
        let result = file
            .write_all(&self.buf)
            .map_err(|e| QueueError::io("write queue segment", &path, e))
            .and_then(|()| {
                if always {
                    file.sync_data()
                        .map_err(|e| QueueError::io("fsync queue segment", &path, e))
                } else {
                    Ok(())
                }
            });
        match result {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                self.buf.clear();
                if always {
                    self.shared.state().fsyncs += 1;
                    self.last_sync = Instant::now();
                } else {
                    self.unsynced = true;
                }
                Ok(())
            }
            Err(e) => {
                self.buf.clear();
                // The file is opened for appending, so the next write lands at the new end.
                if let Err(undo) = file.set_len(self.len).and_then(|()| file.sync_all()) {
                    let reason = format!(
                        "{e}; then cannot truncate {} back to {} bytes: {undo}",
                        path.display(),
                        self.len
                    );
                    tracing::error!("queue writer stopped: {reason}");
                    self.broken = Some(reason);
                }
                Err(e)
            }
        }
    }

    /// Makes what was just written visible to readers and answers its pushers.
    fn publish(&mut self, done: Vec<PushRequest>) {
        if done.is_empty() {
            return;
        }
        let records: u64 = done.iter().map(|r| r.records).sum();
        let bytes: u64 = done.iter().map(|r| r.frames.len() as u64).sum();
        {
            // Lock order: `reader`, then `state`. A fill in progress has the reader: it reads
            // these records from disk, as it would without the hand-over.
            let mut reader = self.shared.reader.try_lock().ok();
            let mut st = self.shared.state();
            let start = Cursor {
                pos: Position {
                    segment: self.index,
                    offset: self.len - bytes,
                },
                logical: self.base + self.len - bytes,
            };
            if let Some(reader) = reader.as_mut()
                && st.ahead.len() < MAX_HANDED_AHEAD
                && st.read_to == start
                && reader.cursor() == start
            {
                // The reader has read everything before these records (it holds them or
                // handed them out) and is not too far behind: hand them over as written
                // instead of reading them back.
                let mut at = start;
                for (payload, companion) in done.iter().flat_map(|r| r.payloads.iter()) {
                    let framed = format::framed_len(payload.len());
                    st.ahead.push_back(Record {
                        id: RecordId {
                            pos: at.pos,
                            framed,
                            logical: at.logical,
                        },
                        data: payload.clone(),
                        companion: companion.clone(),
                    });
                    at.pos.offset += framed;
                    at.logical += framed;
                }
                reader.skip_to(at);
                st.read_to = at;
            }
            st.segments.entry(self.index).or_insert(self.base);
            st.write = Cursor {
                pos: Position {
                    segment: self.index,
                    offset: self.len,
                },
                logical: self.base + self.len,
            };
            st.records += records;
            st.pushed += records;
            st.reserved = st.reserved.saturating_sub(bytes);
        }
        self.shared.readable.notify_waiters();
        for r in done {
            // The pusher may have gone away (a cancelled request): its records are stored.
            let _ = r.reply.send(Ok(()));
        }
    }

    fn fail(&mut self, failed: Vec<PushRequest>, error: &QueueError) {
        tracing::error!(
            "cannot store {} push(es) in the queue: {error}",
            failed.len()
        );
        let bytes: u64 = failed.iter().map(|r| r.frames.len() as u64).sum();
        {
            let mut st = self.shared.state();
            st.reserved = st.reserved.saturating_sub(bytes);
            if st.broken.is_none() {
                st.broken = self.broken.clone();
            }
        }
        for r in failed {
            let _ = r.reply.send(Err(error.replicate()));
        }
    }

    /// Finishes the current segment (fsynced unless `Never`) and starts the next.
    fn cut(&mut self) -> Result<(), QueueError> {
        if self.unsynced && self.fsync != FsyncPolicy::Never {
            self.sync()?;
        }
        let next = self
            .index
            .checked_add(1)
            .filter(|&i| i <= MAX_SEGMENT_INDEX)
            .ok_or_else(|| QueueError::Unavailable("segment numbers are exhausted".to_owned()))?;
        self.base += self.len;
        self.index = next;
        self.len = 0;
        self.file = None;
        self.unsynced = false;
        {
            let mut st = self.shared.state();
            st.write = Cursor {
                pos: Position {
                    segment: next,
                    offset: 0,
                },
                logical: self.base,
            };
            st.write_base = self.base;
        }
        self.shared.readable.notify_waiters();
        Ok(())
    }

    fn sync(&mut self) -> Result<(), QueueError> {
        self.last_sync = Instant::now();
        let Some(file) = &self.file else {
            self.unsynced = false;
            return Ok(());
        };
        match file.sync_data() {
            Ok(()) => {
                self.unsynced = false;
                self.shared.state().fsyncs += 1;
                Ok(())
            }
            Err(e) => Err(QueueError::io("fsync queue segment", &self.path(), e)),
        }
    }

    /// The timed work: `Interval` fsyncs, position persistence, segment deletion.
    fn housekeeping(&mut self, nudged: bool) {
        if let FsyncPolicy::Interval(d) = self.fsync
            && self.unsynced
            && self.last_sync.elapsed() >= d
            && let Err(e) = self.sync()
        {
            tracing::error!("{e}: records written since the last fsync may be lost in a crash");
        }
        let acked = self.shared.state().acked_cursor().pos;
        if self.persisted != Some(acked)
            && (nudged || self.last_persist.elapsed() >= self.position_sync)
        {
            self.persist(acked);
        }
    }

    /// Writes the reader position (temporary file, fsync, rename, directory fsync), then
    /// deletes the segments wholly before it: they are acked whether or not the write worked.
    fn persist(&mut self, pos: Position) {
        self.last_persist = Instant::now();
        let tmp = self.dir.join(POSITION_TMP);
        let path = self.dir.join(POSITION_FILE);
        let written = File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(&format::encode_position(pos))?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        match written.map_err(|e| QueueError::io("write reader position", &path, e)) {
            Ok(()) => match sync_dir(&self.dir) {
                Ok(()) => self.persisted = Some(pos),
                Err(e) => tracing::warn!("{e}"),
            },
            Err(e) => tracing::warn!(
                "{e}; records acked since the last write may be delivered again after a restart"
            ),
        }
        self.delete_before(pos.segment);
    }

    fn delete_before(&mut self, segment: u64) {
        let doomed: Vec<u64> = {
            let st = self.shared.state();
            st.segments.range(..segment).map(|(&i, _)| i).collect()
        };
        if doomed.is_empty() {
            return;
        }
        let mut removed = Vec::new();
        for index in doomed {
            let path = self.dir.join(format::segment_name(index));
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(index),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => removed.push(index),
                Err(e) => {
                    tracing::warn!("cannot delete acked queue segment {}: {e}", path.display())
                }
            }
        }
        {
            let mut st = self.shared.state();
            for index in &removed {
                st.segments.remove(index);
            }
        }
        if let Err(e) = sync_dir(&self.dir) {
            tracing::warn!("{e}");
        }
    }

    fn finish(&mut self) {
        if self.unsynced
            && let Err(e) = self.sync()
        {
            tracing::error!("{e}");
        }
        let acked = self.shared.state().acked_cursor().pos;
        if self.persisted != Some(acked) {
            self.persist(acked);
        }
    }
}
