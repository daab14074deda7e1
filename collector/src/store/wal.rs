//! The write-ahead log: checksummed records in numbered segment files under `<dir>/wal/`.
//!
//! # Format
//! Segments are named by an eight-digit decimal index (`00000001`, `00000002`, ...) and hold
//! records back to back, with no segment header:
//! ```text
//! record   [u32 LE payload length][u32 LE CRC-32 (IEEE) of the payload][payload]
//! payload  [u8 type][entries until the end of the payload]
//! type 1   SERIES:  entry = uvarint ref, string name, uvarint label count, (string, string)*
//! type 2   SAMPLES (written before type 3 existed, still read):
//!                   entry = zigzag varint ref delta, zigzag varint timestamp delta,
//!                   8 bytes LE f64 bits
//! type 3   SAMPLES: entry = zigzag varint ref delta, zigzag varint timestamp delta, value
//! type 4   CHUNKS:  entry = uvarint ref, uvarint byte length, a block chunk of the series'
//!                   samples (any form [`super::decimal::iter`] reads); checkpoints write them
//! string   uvarint byte length, UTF-8 bytes
//! value    uvarint u, then:
//!            u even         the integer whose zigzag encoding is u >> 1
//!            u = 2k + 1     k = 0: 8 bytes LE f64 bits; 1 <= k <= 6: a zigzag varint m, the
//!                           value m / 10^k (chosen only when that gives back the same bits)
//! ```
//! A series' `ref` is its id in the log, assigned once and never reused. The deltas of a
//! SAMPLES record are taken against the previous entry of the same record (the first one
//! against 0), so a batch of many series at one timestamp costs a byte or two a sample plus
//! its value: an integer or a short decimal (most of what hosts report) takes its varint, a
//! few bytes, anything else 9 bytes. Record types are extensible: replay skips a type it
//! does not know, with a warning.
//!
//! # Writing
//! [`SegmentWriter`] appends whole groups of records and fsyncs them (`fdatasync`) under the
//! default [`FsyncPolicy::Always`]; under `Interval(d)` a group is written (so it survives a
//! crash of the process, not of the machine) and a sync thread fsyncs the segment at most `d`
//! after a write, and a segment is fsynced before the next one is started. A new
//! segment is created (and the directory fsynced) before a group member's records would take
//! the current one past the size limit, so a segment only exceeds the limit when one request's
//! records alone are larger. If a write or fsync fails, the segment is truncated back to its
//! last durable length, so bytes nobody was told are stored never come back at replay; if even
//! that fails the writer refuses all further writes until a restart.
//!
//! # Reading
//! [`read_segment`] streams a segment's records and stops at the first one that is torn
//! (shorter than its header says), has a length that runs past the end of the file, or fails
//! its checksum, reporting the offset. What the caller does with that differs for the last
//! segment (a crash mid-write: truncate) and older ones (damage: skip the rest, count it).

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use super::StoreError;
use crate::queue::FsyncPolicy;

pub(crate) const HEADER_LEN: usize = 8;
pub(crate) const TYPE_SERIES: u8 = 1;
pub(crate) const TYPE_SAMPLES_F64: u8 = 2;
pub(crate) const TYPE_SAMPLES: u8 = 3;
pub(crate) const TYPE_CHUNKS: u8 = 4;
/// Largest decimal exponent of a SAMPLES value.
const MAX_VALUE_EXPONENT: u64 = 6;
/// Segment names have eight digits.
const MAX_SEGMENT_INDEX: u32 = 99_999_999;
/// Records are cut at about this payload size, bounding what replay holds in memory at once.
const TARGET_RECORD_BYTES: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Encoding

/// Builds framed records of one type into a byte buffer, cutting a new record whenever the
/// current one passes [`TARGET_RECORD_BYTES`].
#[derive(Debug)]
pub(crate) struct RecordWriter {
    ty: u8,
    buf: Vec<u8>,
    /// Offset of the open record's header in `buf`.
    open: Option<usize>,
    prev_ref: u64,
    prev_t: i64,
}

impl RecordWriter {
    pub(crate) fn new(ty: u8) -> Self {
        Self {
            ty,
            buf: Vec::new(),
            open: None,
            prev_ref: 0,
            prev_t: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn begin_entry(&mut self) -> Result<(), StoreError> {
        match self.open {
            Some(start) if self.buf.len() - start < TARGET_RECORD_BYTES => return Ok(()),
            Some(_) => self.seal()?,
            None => {}
        }
        self.open = Some(self.buf.len());
        self.buf.extend_from_slice(&[0; HEADER_LEN]);
        self.buf.push(self.ty);
        self.prev_ref = 0;
        self.prev_t = 0;
        Ok(())
    }

    /// Adds a SERIES entry.
    pub(crate) fn series<'a>(
        &mut self,
        sref: u64,
        name: &str,
        labels: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), StoreError> {
        self.begin_entry()?;
        put_uvarint(&mut self.buf, sref);
        put_str(&mut self.buf, name);
        put_uvarint(&mut self.buf, labels.len() as u64);
        for (n, v) in labels {
            put_str(&mut self.buf, n);
            put_str(&mut self.buf, v);
        }
        Ok(())
    }

    /// Adds a SAMPLES entry (of the writer's SAMPLES type).
    pub(crate) fn sample(&mut self, sref: u64, t: i64, v: f64) -> Result<(), StoreError> {
        self.begin_entry()?;
        put_varint(&mut self.buf, sref.wrapping_sub(self.prev_ref) as i64);
        put_varint(&mut self.buf, t.wrapping_sub(self.prev_t));
        if self.ty == TYPE_SAMPLES_F64 {
            self.buf.extend_from_slice(&v.to_bits().to_le_bytes());
        } else {
            put_value(&mut self.buf, v);
        }
        self.prev_ref = sref;
        self.prev_t = t;
        Ok(())
    }

    /// Adds a CHUNKS entry: one block chunk of series `sref`.
    pub(crate) fn chunk(&mut self, sref: u64, chunk: &[u8]) -> Result<(), StoreError> {
        self.begin_entry()?;
        put_uvarint(&mut self.buf, sref);
        put_uvarint(&mut self.buf, chunk.len() as u64);
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// Writes the open record's length and checksum.
    fn seal(&mut self) -> Result<(), StoreError> {
        let Some(start) = self.open.take() else {
            return Ok(());
        };
        let payload = self.buf.get(start + HEADER_LEN..).unwrap_or_default();
        let len =
            u32::try_from(payload.len()).map_err(|_| StoreError::RecordTooLarge(payload.len()))?;
        let crc = crc32fast::hash(payload);
        if let Some(header) = self.buf.get_mut(start..start + HEADER_LEN) {
            header[..4].copy_from_slice(&len.to_le_bytes());
            header[4..].copy_from_slice(&crc.to_le_bytes());
        }
        Ok(())
    }

    /// The framed records.
    pub(crate) fn finish(mut self) -> Result<Vec<u8>, StoreError> {
        self.seal()?;
        Ok(self.buf)
    }
}

fn put_uvarint(buf: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        buf.push(x as u8 | 0x80);
        x >>= 7;
    }
    buf.push(x as u8);
}

fn put_varint(buf: &mut Vec<u8>, x: i64) {
    put_uvarint(buf, zigzag(x));
}

/// Integers below this magnitude are exact as `f64`.
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// `v x 10^k` as an integer, if dividing it by `10^k` gives back `v` bit for bit.
fn scaled_integer(v: f64, k: u64) -> Option<i64> {
    let scale = POW10[k as usize];
    let m = (v * scale).round();
    if !m.is_finite() || m.abs() >= MAX_EXACT_INT {
        return None;
    }
    let m = m as i64;
    ((m as f64 / scale).to_bits() == v.to_bits()).then_some(m)
}

const POW10: [f64; MAX_VALUE_EXPONENT as usize + 1] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6];

fn put_value(buf: &mut Vec<u8>, v: f64) {
    if let Some(m) = scaled_integer(v, 0) {
        put_uvarint(buf, zigzag(m) << 1);
        return;
    }
    for k in 1..=MAX_VALUE_EXPONENT {
        if let Some(m) = scaled_integer(v, k) {
            put_uvarint(buf, (k << 1) | 1);
            put_varint(buf, m);
            return;
        }
    }
    put_uvarint(buf, 1);
    buf.extend_from_slice(&v.to_bits().to_le_bytes());
}

fn zigzag(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_uvarint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Why a payload that passed its checksum could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("empty record")]
    Empty,
    #[error("unknown record type {0}")]
    UnknownType(u8),
    #[error("record ends inside an entry")]
    Truncated,
    #[error("varint overflows 64 bits")]
    VarintOverflow,
    #[error("string is not UTF-8")]
    NotUtf8,
    #[error("sample value tag {0} is not defined")]
    ValueTag(u64),
}

/// A decoded record, borrowing the payload.
#[derive(Debug)]
pub(crate) enum Record<'a> {
    Series(SeriesEntries<'a>),
    Samples(SampleEntries<'a>),
    Chunks(ChunkEntries<'a>),
}

pub(crate) fn decode(payload: &[u8]) -> Result<Record<'_>, DecodeError> {
    let (&ty, rest) = payload.split_first().ok_or(DecodeError::Empty)?;
    match ty {
        TYPE_SERIES => Ok(Record::Series(SeriesEntries { c: Cursor(rest) })),
        TYPE_SAMPLES_F64 | TYPE_SAMPLES => Ok(Record::Samples(SampleEntries {
            c: Cursor(rest),
            prev_ref: 0,
            prev_t: 0,
            compact: ty == TYPE_SAMPLES,
        })),
        TYPE_CHUNKS => Ok(Record::Chunks(ChunkEntries { c: Cursor(rest) })),
        other => Err(DecodeError::UnknownType(other)),
    }
}

/// One entry of a SERIES record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SeriesEntry<'a> {
    pub(crate) sref: u64,
    pub(crate) name: &'a str,
    pub(crate) labels: Vec<(&'a str, &'a str)>,
}

#[derive(Debug)]
pub(crate) struct SeriesEntries<'a> {
    c: Cursor<'a>,
}

impl<'a> Iterator for SeriesEntries<'a> {
    type Item = Result<SeriesEntry<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.c.0.is_empty() {
            return None;
        }
        let entry = (|| {
            let sref = self.c.uvarint()?;
            let name = self.c.str()?;
            let n = self.c.uvarint()?;
            // Each label takes at least two bytes, so the remaining bytes bound the count.
            let cap = (n as usize).min(self.c.0.len() / 2);
            let mut labels = Vec::with_capacity(cap);
            for _ in 0..n {
                labels.push((self.c.str()?, self.c.str()?));
            }
            Ok(SeriesEntry { sref, name, labels })
        })();
        if entry.is_err() {
            self.c.0 = &[];
        }
        Some(entry)
    }
}

/// One entry of a SAMPLES record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SampleEntry {
    pub(crate) sref: u64,
    pub(crate) t: i64,
    pub(crate) v: f64,
}

#[derive(Debug)]
pub(crate) struct SampleEntries<'a> {
    c: Cursor<'a>,
    prev_ref: u64,
    prev_t: i64,
    /// Values in the SAMPLES form (type 3) rather than as raw bits (type 2).
    compact: bool,
}

impl Iterator for SampleEntries<'_> {
    type Item = Result<SampleEntry, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.c.0.is_empty() {
            return None;
        }
        let entry = (|| {
            let sref = self.prev_ref.wrapping_add(self.c.varint()? as u64);
            let t = self.prev_t.wrapping_add(self.c.varint()?);
            let v = if self.compact {
                self.c.value()?
            } else {
                f64::from_bits(u64::from_le_bytes(self.c.array()?))
            };
            Ok(SampleEntry { sref, t, v })
        })();
        match entry {
            Ok(e) => {
                self.prev_ref = e.sref;
                self.prev_t = e.t;
            }
            Err(_) => self.c.0 = &[],
        }
        Some(entry)
    }
}

/// One entry of a CHUNKS record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ChunkEntry<'a> {
    pub(crate) sref: u64,
    pub(crate) chunk: &'a [u8],
}

#[derive(Debug)]
pub(crate) struct ChunkEntries<'a> {
    c: Cursor<'a>,
}

impl<'a> Iterator for ChunkEntries<'a> {
    type Item = Result<ChunkEntry<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.c.0.is_empty() {
            return None;
        }
        let entry = (|| {
            let sref = self.c.uvarint()?;
            let len = self.c.uvarint()?;
            Ok(ChunkEntry {
                sref,
                chunk: self.c.bytes(len)?,
            })
        })();
        if entry.is_err() {
            self.c.0 = &[];
        }
        Some(entry)
    }
}

#[derive(Debug)]
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn uvarint(&mut self) -> Result<u64, DecodeError> {
        let mut x = 0u64;
        for (i, &b) in self.0.iter().enumerate().take(10) {
            if i == 9 && b > 1 {
                return Err(DecodeError::VarintOverflow);
            }
            x |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                self.0 = &self.0[i + 1..];
                return Ok(x);
            }
        }
        Err(if self.0.len() >= 10 {
            DecodeError::VarintOverflow
        } else {
            DecodeError::Truncated
        })
    }

    fn varint(&mut self) -> Result<i64, DecodeError> {
        let u = self.uvarint()?;
        Ok((u >> 1) as i64 ^ -((u & 1) as i64))
    }

    fn value(&mut self) -> Result<f64, DecodeError> {
        let u = self.uvarint()?;
        if u & 1 == 0 {
            let m = ((u >> 1) >> 1) as i64 ^ -(((u >> 1) & 1) as i64);
            return Ok(m as f64);
        }
        match u >> 1 {
            0 => Ok(f64::from_bits(u64::from_le_bytes(self.array()?))),
            k @ 1..=MAX_VALUE_EXPONENT => Ok(self.varint()? as f64 / POW10[k as usize]),
            _ => Err(DecodeError::ValueTag(u)),
        }
    }

    fn bytes(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(n).map_err(|_| DecodeError::Truncated)?;
        if n > self.0.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.uvarint()?;
        std::str::from_utf8(self.bytes(n)?).map_err(|_| DecodeError::NotUtf8)
    }

    fn array(&mut self) -> Result<[u8; 8], DecodeError> {
        let b = self.bytes(8)?;
        let mut out = [0; 8];
        out.copy_from_slice(b);
        Ok(out)
    }
}

/// Iterates over the payloads of framed records in a buffer this process built (the group
/// commit applies a request's own bytes this way). Stops at the first malformed frame.
pub(crate) fn frames(mut buf: &[u8]) -> impl Iterator<Item = Result<&[u8], &'static str>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let parsed = parse_frame(buf);
        buf = match parsed {
            Ok((_, rest)) => rest,
            Err(_) => &[],
        };
        Some(parsed.map(|(payload, _)| payload))
    })
}

fn parse_frame(buf: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let (header, rest) = buf
        .split_at_checked(HEADER_LEN)
        .ok_or("torn record header")?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let (payload, rest) = rest
        .split_at_checked(len)
        .ok_or("record runs past the end")?;
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch");
    }
    Ok((payload, rest))
}

// ---------------------------------------------------------------------------------------------
// Segment files

pub(crate) fn segment_path(dir: &Path, index: u32) -> PathBuf {
    dir.join(format!("{index:08}"))
}

/// Segment indices in `dir`, ascending. Files not named like a segment are ignored.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<u32>, StoreError> {
    let io_err = |source| StoreError::io("list WAL directory", dir, source);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() == 8
            && name.bytes().all(|b| b.is_ascii_digit())
            && let Ok(i) = name.parse::<u32>()
        {
            out.push(i);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Fsyncs a directory, making a file created or renamed in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("sync directory", dir, e))
}

/// How reading a segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SegmentEnd {
    Clean,
    /// The record at `offset` is torn or corrupt; nothing at or after it was read.
    Damaged {
        offset: u64,
        file_len: u64,
        reason: &'static str,
    },
}

/// Streams the record payloads of segment `path` to `on_record`, verifying each checksum.
/// I/O errors are errors; damaged bytes are reported in the result, never panicked on.
pub(crate) fn read_segment(
    path: &Path,
    mut on_record: impl FnMut(&[u8]),
) -> Result<SegmentEnd, StoreError> {
    let io_err = |e| StoreError::io("read WAL segment", path, e);
    let file = File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut payload = Vec::new();
    let mut offset = 0u64;
    let damaged = |offset, reason| {
        Ok(SegmentEnd::Damaged {
            offset,
            file_len,
            reason,
        })
    };
    while offset < file_len {
        let remaining = file_len - offset;
        if remaining < HEADER_LEN as u64 {
            return damaged(offset, "torn record header");
        }
        let mut header = [0u8; HEADER_LEN];
        r.read_exact(&mut header).map_err(io_err)?;
        let len = u64::from(u32::from_le_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 {
            // Zero-filled space (a crash after the file grew but before data reached it).
            return damaged(offset, "zero-length record");
        }
        if len > remaining - HEADER_LEN as u64 {
            return damaged(offset, "record runs past the end of the segment");
        }
        // `len` is bounded by the file's size, so this allocation is too.
        payload.resize(len as usize, 0);
        r.read_exact(&mut payload).map_err(io_err)?;
        if crc32fast::hash(&payload) != crc {
            return damaged(offset, "checksum mismatch");
        }
        on_record(&payload);
        offset += HEADER_LEN as u64 + len;
    }
    Ok(SegmentEnd::Clean)
}

/// Cuts a damaged last segment back to its last good record and makes that durable.
pub(crate) fn truncate_segment(path: &Path, len: u64) -> Result<(), StoreError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| {
            f.set_len(len)?;
            f.sync_all()
        })
        .map_err(|e| StoreError::io("truncate WAL segment", path, e))
}

/// What became of one group of requests handed to [`SegmentWriter::write_group`].
#[derive(Debug)]
pub(crate) struct GroupOutcome {
    /// How many requests, from the first, are durable.
    pub(crate) durable: usize,
    /// Why the rest are not.
    pub(crate) error: Option<StoreError>,
}

/// Appends to the last segment, owned by the commit thread.
#[derive(Debug)]
pub(crate) struct SegmentWriter {
    dir: PathBuf,
    index: u32,
    file: File,
    /// Durable length of the current segment.
    len: u64,
    segment_bytes: u64,
    /// Bytes of all segments, shared with [`super::Store::stats`].
    total: Arc<AtomicU64>,
    /// Index of the segment being written, shared with the checkpointing thread: every
    /// segment before it is complete.
    current: Arc<AtomicU32>,
    buf: Vec<u8>,
    /// Set when a failed write could not be undone: no more writes until a restart.
    broken: Option<String>,
    fsync: FsyncPolicy,
    /// Written since the last fsync (policies other than `Always`).
    dirty: Arc<AtomicBool>,
    /// The timed fsyncs of `Interval`.
    syncer: Option<Syncer>,
}

/// The thread that fsyncs the segment being written on the `Interval` policy's timer.
#[derive(Debug)]
struct Syncer {
    /// A handle on the segment being written (replaced at each cut).
    file: Arc<Mutex<File>>,
    /// Dropped to stop the thread.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    fn start(
        file: &File,
        every: Duration,
        dirty: Arc<AtomicBool>,
        dir: PathBuf,
    ) -> io::Result<Self> {
        let file = Arc::new(Mutex::new(file.try_clone()?));
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = file.clone();
        let thread = std::thread::Builder::new()
            .name("sonde-store-wal-sync".to_owned())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    // The handle is locked before the flag is taken: a cut that finds the
                    // flag already taken then waits here, so the segment it leaves is the one
                    // fsynced (the handle moves to the next segment only under this lock).
                    let f = handle.lock().unwrap_or_else(PoisonError::into_inner);
                    if !dirty.swap(false, Ordering::AcqRel) {
                        continue;
                    }
                    if let Err(e) = f.sync_data() {
                        dirty.store(true, Ordering::Release);
                        tracing::error!(
                            "cannot fsync the WAL segment being written in {}: {e}; samples written since the last fsync would not survive a crash of the machine",
                            dir.display()
                        );
                    }
                }
            })?;
        Ok(Self {
            file,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SegmentWriter {
    fn drop(&mut self) {
        // What was written is fsynced before the store lets go of it.
        self.syncer.take();
        if self.fsync != FsyncPolicy::Never
            && self.dirty.swap(false, Ordering::AcqRel)
            && let Err(e) = self.file.sync_data()
        {
            tracing::error!("cannot fsync WAL segment {}: {e}", self.path().display());
        }
    }
}

impl SegmentWriter {
    /// Sets when writes are fsynced (see the module docs); the default is `Always`.
    pub(crate) fn with_fsync(mut self, fsync: FsyncPolicy) -> Result<Self, StoreError> {
        self.syncer.take();
        if let FsyncPolicy::Interval(every) = fsync {
            let syncer = Syncer::start(&self.file, every, self.dirty.clone(), self.dir.clone())
                .map_err(|e| StoreError::io("start the WAL sync thread", &self.path(), e))?;
            self.syncer = Some(syncer);
        }
        self.fsync = fsync;
        Ok(self)
    }

    /// Continues segment `index` (creating it if missing) in `dir`. `total` holds the bytes
    /// of all segments already there.
    pub(crate) fn open(
        dir: &Path,
        index: u32,
        segment_bytes: u64,
        total: Arc<AtomicU64>,
        current: Arc<AtomicU32>,
    ) -> Result<Self, StoreError> {
        let path = segment_path(dir, index);
        let existed = path.exists();
        let file = open_append(&path)?;
        let len = file
            .metadata()
            .map_err(|e| StoreError::io("read WAL segment", &path, e))?
            .len();
        if !existed {
            sync_dir(dir)?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            file,
            len,
            segment_bytes: segment_bytes.max(1),
            total,
            current: {
                current.store(index, Ordering::Release);
                current
            },
            buf: Vec::new(),
            broken: None,
            fsync: FsyncPolicy::Always,
            dirty: Arc::new(AtomicBool::new(false)),
            syncer: None,
        })
    }

    pub(crate) fn path(&self) -> PathBuf {
        segment_path(&self.dir, self.index)
    }

    /// Writes and fsyncs each request's records, in order, cutting segments between requests.
    pub(crate) fn write_group<'a>(
        &mut self,
        requests: impl IntoIterator<Item = &'a [u8]>,
    ) -> GroupOutcome {
        if let Some(reason) = &self.broken {
            return GroupOutcome {
                durable: 0,
                error: Some(StoreError::WalUnavailable(reason.clone())),
            };
        }
        self.buf.clear();
        let mut durable = 0;
        let mut count = 0;
        for records in requests {
            let pending = self.len + self.buf.len() as u64;
            if pending > 0 && pending + records.len() as u64 > self.segment_bytes {
                if let Err(error) = self.flush() {
                    return GroupOutcome {
                        durable,
                        error: Some(error),
                    };
                }
                durable = count;
                if let Err(error) = self.cut() {
                    return GroupOutcome {
                        durable,
                        error: Some(error),
                    };
                }
            }
            self.buf.extend_from_slice(records);
            count += 1;
        }
        match self.flush() {
            Ok(()) => GroupOutcome {
                durable: count,
                error: None,
            },
            Err(error) => GroupOutcome {
                durable,
                error: Some(error),
            },
        }
    }

    /// Writes `self.buf` (and fsyncs it under `Always`); on failure, truncates the segment
    /// back to its durable length.
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let always = self.fsync == FsyncPolicy::Always;
        let result = io::Write::write_all(&mut self.file, &self.buf)
            .map_err(|e| StoreError::io("write WAL segment", &self.path(), e))
            .and_then(|()| {
                if always {
                    self.file
                        .sync_data()
                        .map_err(|e| StoreError::io("fsync WAL segment", &self.path(), e))
                } else {
                    Ok(())
                }
            });
        match result {
            Ok(()) => {
                if !always {
                    self.dirty.store(true, Ordering::Release);
                }
                self.len += self.buf.len() as u64;
                self.total
                    .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
                self.buf.clear();
                Ok(())
            }
            Err(e) => {
                self.buf.clear();
                // The file is opened for appending, so the next write lands at the new end.
                if let Err(undo) = self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_all())
                {
                    let reason = format!(
                        "{e}; then cannot truncate {} back to {} bytes: {undo}",
                        self.path().display(),
                        self.len
                    );
                    tracing::error!("WAL writer stopped: {reason}");
                    self.broken = Some(reason);
                }
                Err(e)
            }
        }
    }

    /// Starts the next segment, fsyncing the current one first if it has unsynced writes.
    fn cut(&mut self) -> Result<(), StoreError> {
        // Under the sync thread's lock, so its fsync of this segment (if it took the flag
        // first) has finished, and it cannot take the flag while this one syncs.
        let guard = self
            .syncer
            .as_ref()
            .map(|s| s.file.lock().unwrap_or_else(PoisonError::into_inner));
        if self.fsync != FsyncPolicy::Never
            && self.dirty.swap(false, Ordering::AcqRel)
            && let Err(e) = self.file.sync_data()
        {
            self.dirty.store(true, Ordering::Release);
            return Err(StoreError::io("fsync WAL segment", &self.path(), e));
        }
        drop(guard);
        let next = self
            .index
            .checked_add(1)
            .filter(|&i| i <= MAX_SEGMENT_INDEX)
            .ok_or_else(|| {
                StoreError::WalUnavailable("WAL segment numbers are exhausted".to_owned())
            })?;
        let path = segment_path(&self.dir, next);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io("create WAL segment", &path, e))?;
        sync_dir(&self.dir)?;
        if let Some(syncer) = &self.syncer {
            let handle = file
                .try_clone()
                .map_err(|e| StoreError::io("open WAL segment", &path, e))?;
            *syncer.file.lock().unwrap_or_else(PoisonError::into_inner) = handle;
        }
        self.file = file;
        self.index = next;
        self.current.store(next, Ordering::Release);
        self.len = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| StoreError::io("open WAL segment", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_example() -> Vec<u8> {
        let mut series = RecordWriter::new(TYPE_SERIES);
        series
            .series(7, "up", [("job", "api"), ("zone", "é")].into_iter())
            .unwrap();
        series.series(8, "down", std::iter::empty()).unwrap();
        let mut samples = RecordWriter::new(TYPE_SAMPLES);
        samples.sample(7, 1_700_000_000_000, 1.5).unwrap();
        samples.sample(8, 1_700_000_000_000, f64::NAN).unwrap();
        samples.sample(7, 1_699_000_000_000, -0.0).unwrap();
        let mut out = series.finish().unwrap();
        out.extend(samples.finish().unwrap());
        out
    }

    #[test]
    fn records_round_trip() {
        let bytes = encode_example();
        let payloads: Vec<_> = frames(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(payloads.len(), 2);
        let Record::Series(series) = decode(payloads[0]).unwrap() else {
            panic!("series record expected")
        };
        let series: Vec<_> = series.collect::<Result<_, _>>().unwrap();
        assert_eq!(
            series,
            [
                SeriesEntry {
                    sref: 7,
                    name: "up",
                    labels: vec![("job", "api"), ("zone", "é")]
                },
                SeriesEntry {
                    sref: 8,
                    name: "down",
                    labels: vec![]
                }
            ]
        );
        let Record::Samples(samples) = decode(payloads[1]).unwrap() else {
            panic!("samples record expected")
        };
        let samples: Vec<_> = samples.collect::<Result<_, _>>().unwrap();
        assert_eq!(samples.len(), 3);
        assert_eq!(
            (samples[0].sref, samples[0].t, samples[0].v),
            (7, 1_700_000_000_000, 1.5)
        );
        assert_eq!(samples[1].sref, 8);
        assert!(samples[1].v.is_nan());
        assert_eq!(samples[2].t, 1_699_000_000_000);
        assert_eq!(samples[2].v.to_bits(), (-0.0f64).to_bits());
    }

    #[test]
    fn sample_values_round_trip_bit_for_bit_and_short_ones_are_short() {
        let values = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            4_294_967_296.0,
            -9_007_199_254_740_991.0,
            9_007_199_254_740_992.0,
            1e300,
            0.25,
            12_345.67,
            -0.000_001,
            0.123_456_7,
            1.0 / 3.0,
            f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0002),
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
        ];
        for ty in [TYPE_SAMPLES, TYPE_SAMPLES_F64] {
            let mut w = RecordWriter::new(ty);
            for (i, &v) in values.iter().enumerate() {
                w.sample(i as u64, 1_700_000_000_000, v).unwrap();
            }
            let bytes = w.finish().unwrap();
            let payloads: Vec<_> = frames(&bytes).collect::<Result<_, _>>().unwrap();
            let Ok(Record::Samples(entries)) = decode(payloads[0]) else {
                panic!("samples record expected")
            };
            let got: Vec<u64> = entries.map(|e| e.unwrap().v.to_bits()).collect();
            let want: Vec<u64> = values.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "type {ty}");
        }
        // A host's batch: one timestamp, integer counters and gauges of up to 2^32.
        let mut w = RecordWriter::new(TYPE_SAMPLES);
        for i in 0..1000u64 {
            w.sample(i, 1_700_000_000_000, (i * 4_000_037 % 4_294_967_296) as f64)
                .unwrap();
        }
        let bytes = w.finish().unwrap();
        assert!(bytes.len() < 1000 * 7, "{} bytes", bytes.len());
    }

    #[test]
    fn chunk_records_round_trip() {
        let mut w = RecordWriter::new(TYPE_CHUNKS);
        w.chunk(3, b"abc").unwrap();
        w.chunk(u64::MAX, b"").unwrap();
        let bytes = w.finish().unwrap();
        let payloads: Vec<_> = frames(&bytes).collect::<Result<_, _>>().unwrap();
        let Ok(Record::Chunks(entries)) = decode(payloads[0]) else {
            panic!("chunks record expected")
        };
        let got: Vec<_> = entries.collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got,
            [
                ChunkEntry {
                    sref: 3,
                    chunk: b"abc"
                },
                ChunkEntry {
                    sref: u64::MAX,
                    chunk: b""
                }
            ]
        );
        // A length past the record's end ends the iteration with an error.
        let mut entries = ChunkEntries {
            c: Cursor(&[3, 9, b'a']),
        };
        assert_eq!(entries.next(), Some(Err(DecodeError::Truncated)));
        assert_eq!(entries.next(), None);
    }

    #[test]
    fn large_inputs_are_split_into_several_records() {
        let mut w = RecordWriter::new(TYPE_SAMPLES);
        for i in 0..500_000u64 {
            w.sample(i, i as i64, i as f64).unwrap();
        }
        let bytes = w.finish().unwrap();
        let payloads: Vec<_> = frames(&bytes).collect::<Result<_, _>>().unwrap();
        assert!(payloads.len() > 1);
        let mut n = 0u64;
        for p in payloads {
            assert!(p.len() <= TARGET_RECORD_BYTES + 32);
            let Ok(Record::Samples(entries)) = decode(p) else {
                panic!()
            };
            for e in entries {
                let e = e.unwrap();
                assert_eq!((e.sref, e.t), (n, n as i64));
                n += 1;
            }
        }
        assert_eq!(n, 500_000);
    }

    #[test]
    fn segment_reader_reports_torn_and_corrupt_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        let good = encode_example();
        let mut bytes = good.clone();
        bytes.extend_from_slice(b"\x40\x00\x00\x00garbage");
        std::fs::write(&path, &bytes).unwrap();
        let mut n = 0;
        let end = read_segment(&path, |_| n += 1).unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            end,
            SegmentEnd::Damaged {
                offset: good.len() as u64,
                file_len: bytes.len() as u64,
                reason: "record runs past the end of the segment"
            }
        );

        // A flipped byte inside the second record's payload fails its checksum.
        let mut bytes = good.clone();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let mut n = 0;
        let end = read_segment(&path, |_| n += 1).unwrap();
        assert_eq!(n, 1);
        assert!(matches!(
            end,
            SegmentEnd::Damaged {
                reason: "checksum mismatch",
                ..
            }
        ));

        truncate_segment(&path, 0).unwrap();
        assert_eq!(read_segment(&path, |_| {}).unwrap(), SegmentEnd::Clean);
    }

    #[test]
    fn interval_policy_writes_at_once_and_fsyncs_on_its_timer_and_at_a_cut() {
        let dir = tempfile::tempdir().unwrap();
        let total = Arc::new(AtomicU64::new(0));
        let w = SegmentWriter::open(dir.path(), 1, 1 << 20, total.clone(), Arc::default()).unwrap();
        let mut w = w
            .with_fsync(FsyncPolicy::Interval(Duration::from_millis(20)))
            .unwrap();
        let req = encode_example();
        let out = w.write_group([req.as_slice()]);
        assert_eq!(out.durable, 1);
        // Written before write_group returned (readable by anyone), fsync still owed.
        assert_eq!(std::fs::metadata(w.path()).unwrap().len(), req.len() as u64);
        assert!(w.dirty.load(Ordering::Acquire));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while w.dirty.load(Ordering::Acquire) {
            assert!(
                std::time::Instant::now() < deadline,
                "the sync thread never fsynced"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // A cut fsyncs the segment it leaves, and the sync thread follows to the new one.
        w.write_group([req.as_slice()]);
        w.cut().unwrap();
        assert!(!w.dirty.load(Ordering::Acquire));
        w.write_group([req.as_slice()]);
        assert_eq!(list_segments(dir.path()).unwrap(), [1, 2]);
        drop(w);
        let mut n = 0;
        for index in [1, 2] {
            read_segment(&segment_path(dir.path(), index), |_| n += 1).unwrap();
        }
        assert!(n >= 3, "{n} records read back");
    }

    #[test]
    fn writer_cuts_segments_between_requests() {
        let dir = tempfile::tempdir().unwrap();
        let total = Arc::new(AtomicU64::new(0));
        let mut w = SegmentWriter::open(dir.path(), 1, 100, total.clone(), Arc::default()).unwrap();
        let req = encode_example();
        assert!(req.len() < 100);
        let out = w.write_group([req.as_slice(), req.as_slice(), req.as_slice()]);
        assert_eq!(out.durable, 3);
        assert!(out.error.is_none());
        assert_eq!(list_segments(dir.path()).unwrap(), [1, 2, 3]);
        assert_eq!(total.load(Ordering::Relaxed), 3 * req.len() as u64);
        let mut n = 0;
        for i in [1, 2, 3] {
            let end = read_segment(&segment_path(dir.path(), i), |_| n += 1).unwrap();
            assert_eq!(end, SegmentEnd::Clean);
        }
        assert_eq!(n, 6);
    }

    #[test]
    fn listing_ignores_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["00000002", "00000010", "00000001.tmp", "checkpoint", "1"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(list_segments(dir.path()).unwrap(), [2, 10]);
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for frame in frames(&bytes) {
                let _ = frame;
            }
            if let Ok(record) = decode(&bytes) {
                match record {
                    Record::Series(entries) => entries.for_each(drop),
                    Record::Samples(entries) => entries.for_each(drop),
                    Record::Chunks(entries) => entries.for_each(drop),
                }
            }
        }
    }
}
