//! WAL checkpoints: once the head's old samples are in a block, the segments that hold them
//! are replaced by one checkpoint file with what replay still needs from them: every SERIES
//! entry (samples in newer segments refer to them) and the samples not yet in a block, the
//! latter gathered per series into CHUNKS records (block chunks, a byte or two a sample
//! instead of the SAMPLES records' several), after the SERIES records.
//!
//! ```text
//! <dir>/wal/checkpoint.00000012   replaces segments up to 00000012 (same record format)
//! ```
//! Replay applies a series' samples in the order the segments held them, so a checkpoint
//! changes nothing about which of two conflicting values came first.
//! Written as `checkpoint.N.tmp`, fsynced, renamed, the directory fsynced; only then are the
//! segments up to N and older checkpoints deleted. Replay reads the newest checkpoint, then the
//! segments after it; opening the store finishes a deletion a crash interrupted.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::StoreError;
use super::block::SAMPLES_PER_BLOCK_CHUNK;
use super::chunk::Chunk;
use super::wal::{self, Record, RecordWriter, SegmentEnd};

const PREFIX: &str = "checkpoint.";
const TMP_SUFFIX: &str = ".tmp";

pub(crate) fn path(dir: &Path, index: u32) -> PathBuf {
    dir.join(format!("{PREFIX}{index:08}"))
}

/// Indices of the complete checkpoints in `dir`, ascending.
fn list(dir: &Path) -> Result<Vec<u32>, StoreError> {
    let io_err = |e| StoreError::io("list WAL directory", dir, e);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let name = entry.file_name();
        if let Some(i) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .filter(|n| n.len() == 8 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok())
        {
            out.push(i);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The newest complete checkpoint.
pub(crate) fn latest(dir: &Path) -> Result<Option<u32>, StoreError> {
    Ok(list(dir)?.last().copied())
}

fn remove(path: &Path) -> Result<u64, StoreError> {
    let len = std::fs::metadata(path).map_or(0, |m| m.len());
    match std::fs::remove_file(path) {
        Ok(()) => Ok(len),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(StoreError::io("remove", path, e)),
    }
}

/// Deletes what checkpoint `index` replaced: segments up to it, older checkpoints and
/// unfinished ones. Returns the bytes freed.
pub(crate) fn remove_replaced(dir: &Path, index: u32) -> Result<u64, StoreError> {
    let mut freed = 0;
    for seg in wal::list_segments(dir)?.into_iter().filter(|&s| s <= index) {
        freed += remove(&wal::segment_path(dir, seg))?;
    }
    for old in list(dir)?.into_iter().filter(|&c| c < index) {
        freed += remove(&path(dir, old))?;
    }
    let io_err = |e| StoreError::io("list WAL directory", dir, e);
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(TMP_SUFFIX))
        {
            freed += remove(&entry.path())?;
        }
    }
    wal::sync_dir(dir)?;
    Ok(freed)
}

/// What a checkpoint did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) index: u32,
    pub(crate) bytes_removed: u64,
    pub(crate) bytes_written: u64,
    pub(crate) samples_kept: u64,
    pub(crate) samples_dropped: u64,
}

/// Replaces the segments up to `upto` (and the previous checkpoint) by a checkpoint keeping
/// every SERIES entry and the samples at or after `keep_from`. `None` if there is nothing to
/// replace.
pub(crate) fn write(dir: &Path, upto: u32, keep_from: i64) -> Result<Option<Outcome>, StoreError> {
    let previous = latest(dir)?;
    let segments: Vec<u32> = wal::list_segments(dir)?
        .into_iter()
        .filter(|&s| s <= upto && previous.is_none_or(|p| s > p))
        .collect();
    let Some(&last) = segments.last() else {
        return Ok(None);
    };
    let mut inputs: Vec<PathBuf> = previous.map(|p| path(dir, p)).into_iter().collect();
    inputs.extend(segments.iter().map(|&s| wal::segment_path(dir, s)));

    let final_path = path(dir, last);
    let tmp = dir.join(format!("{PREFIX}{last:08}{TMP_SUFFIX}"));
    let file = File::create(&tmp).map_err(|e| StoreError::io("create WAL checkpoint", &tmp, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut outcome = Outcome {
        index: last,
        ..Outcome::default()
    };
    let mut failure: Option<StoreError> = None;
    let mut samples = Kept::default();
    for input in &inputs {
        let end = wal::read_segment(input, |payload| {
            if failure.is_some() {
                return;
            }
            let kept = match filter_record(payload, keep_from, &mut samples, &mut outcome) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(
                        "checkpoint: skipping a record of {} that cannot be decoded: {e}",
                        input.display()
                    );
                    return;
                }
            };
            if let Err(e) = out.write_all(&kept) {
                failure = Some(StoreError::io("write WAL checkpoint", &tmp, e));
            }
            outcome.bytes_written += kept.len() as u64;
        })?;
        if let SegmentEnd::Damaged { offset, reason, .. } = end {
            tracing::warn!(
                "checkpoint: {} is damaged at offset {offset} ({reason}); what follows it was already lost to replay",
                input.display()
            );
        }
    }
    if failure.is_none() {
        match samples.records() {
            Ok(bytes) => {
                if let Err(e) = out.write_all(&bytes) {
                    failure = Some(StoreError::io("write WAL checkpoint", &tmp, e));
                }
                outcome.bytes_written += bytes.len() as u64;
            }
            Err(e) => failure = Some(e),
        }
    }
    if let Some(e) = failure {
        drop(out);
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let file = out
        .into_inner()
        .map_err(|e| StoreError::io("write WAL checkpoint", &tmp, e.into_error()))?;
    file.sync_all()
        .map_err(|e| StoreError::io("sync WAL checkpoint", &tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, &final_path)
        .map_err(|e| StoreError::io("rename WAL checkpoint into place", &final_path, e))?;
    wal::sync_dir(dir)?;
    outcome.bytes_removed = remove_replaced(dir, last)?;
    Ok(Some(outcome))
}

/// The samples a checkpoint keeps, per series ref, in chunks of up to a block chunk's size,
/// in the order they came.
#[derive(Default)]
struct Kept {
    chunks: BTreeMap<u64, Vec<Chunk>>,
}

impl Kept {
    fn add(&mut self, sref: u64, t: i64, v: f64) {
        let chunks = self.chunks.entry(sref).or_default();
        match chunks.last_mut() {
            Some(c) if usize::from(c.len()) < SAMPLES_PER_BLOCK_CHUNK => {
                c.append(t, v);
            }
            _ => {
                let mut c = Chunk::new();
                c.append(t, v);
                chunks.push(c);
            }
        }
    }

    /// CHUNKS records of everything kept, each chunk packed when that is smaller.
    fn records(self) -> Result<Vec<u8>, StoreError> {
        let mut w = RecordWriter::new(wal::TYPE_CHUNKS);
        for (sref, chunks) in self.chunks {
            for c in chunks {
                w.chunk(sref, &c.seal().bytes)?;
            }
        }
        if w.is_empty() {
            return Ok(Vec::new());
        }
        w.finish()
    }
}

/// The part of one record a checkpoint keeps: SERIES records framed, samples into `kept`.
fn filter_record(
    payload: &[u8],
    keep_from: i64,
    kept: &mut Kept,
    outcome: &mut Outcome,
) -> Result<Option<Vec<u8>>, String> {
    let mut keep = |sref: u64, t: i64, v: f64| {
        if t >= keep_from {
            kept.add(sref, t, v);
            outcome.samples_kept += 1;
        } else {
            outcome.samples_dropped += 1;
        }
    };
    match wal::decode(payload).map_err(|e| e.to_string())? {
        Record::Series(entries) => {
            let mut w = RecordWriter::new(wal::TYPE_SERIES);
            for e in entries {
                let e = e.map_err(|e| e.to_string())?;
                w.series(e.sref, e.name, e.labels.iter().copied())
                    .map_err(|e| e.to_string())?;
            }
            finish(w)
        }
        Record::Samples(entries) => {
            for e in entries {
                let e = e.map_err(|e| e.to_string())?;
                keep(e.sref, e.t, e.v);
            }
            Ok(None)
        }
        Record::Chunks(entries) => {
            for e in entries {
                let e = e.map_err(|e| e.to_string())?;
                for s in super::decimal::iter(e.chunk) {
                    keep(e.sref, s.timestamp_ms, s.value);
                }
            }
            Ok(None)
        }
    }
}

fn finish(w: RecordWriter) -> Result<Option<Vec<u8>>, String> {
    if w.is_empty() {
        return Ok(None);
    }
    w.finish().map(Some).map_err(|e| e.to_string())
}
