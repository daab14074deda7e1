//! Blocks: immutable, compressed slices of time on disk. The head is cut into a block once it
//! spans one and a half block ranges; small blocks are compacted into larger ones; retention
//! deletes whole blocks.
//!
//! # On disk
//! ```text
//! <dir>/blocks/<min_t>-<max_t>-<nonce>/
//!     chunks      chunks of up to 480 samples, packed (see [`super::packed`]) or, when a
//!                 value is no short decimal or that is smaller, Gorilla (the head's format,
//!                 see [`super::chunk`]), back to back, each series' chunks together
//!     index       postcard: every series (name, labels) with its chunk references
//!                 (time range, offset, length, CRC-32 of the chunk), then a CRC-32 of it all
//!     meta.json   time range, counts, compaction level, the blocks it replaced
//! ```
//! A block is written under `<name>.tmp`, fsynced file by file, then renamed into place and
//! the directory fsynced: a block either exists whole or not at all. A compacted block names
//! the blocks it replaced (`sources`); if a crash left those behind, opening the store deletes
//! them. At open the index is read into memory (series and postings, for selection); chunks
//! are read from the file when a query needs them, each checked against its CRC.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sonde_common::model::{Label, Sample, Series};

use super::StoreError;
use super::chunk::Chunk;
use super::matcher::Matcher;
use super::postings::{Postings, Slot};

const CHUNKS_FILE: &str = "chunks";
const INDEX_FILE: &str = "index";
const META_FILE: &str = "meta.json";
/// Samples per block chunk. Larger than the head's chunks: a block is read far more often in
/// whole chunks than sample by sample, and a chunk's header and index entry (about 40 bytes
/// together) then cost a tenth of a byte per sample. Below 0xfe00, so that a Gorilla chunk's
/// first byte (its count's high byte) never looks like a packed or decimal chunk's marker.
pub(crate) const SAMPLES_PER_BLOCK_CHUNK: usize = 480;
/// Suffix of a block directory still being written.
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// What `meta.json` says of a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlockMeta {
    /// Oldest and newest sample timestamp the block may hold (inclusive).
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
    pub(crate) series: u64,
    pub(crate) samples: u64,
    /// 0 for a block cut from the head, then one more per compaction.
    pub(crate) level: u32,
    /// Names of the blocks this one replaced (compaction).
    #[serde(default)]
    pub(crate) sources: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ChunkRef {
    min_t: i64,
    max_t: i64,
    offset: u64,
    len: u32,
    crc: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct IndexEntry {
    name: String,
    labels: Vec<(String, String)>,
    chunks: Vec<ChunkRef>,
}

/// An open block: its index in memory, its chunks on disk.
#[derive(Debug)]
pub(crate) struct Block {
    pub(crate) name: String,
    dir: PathBuf,
    pub(crate) meta: BlockMeta,
    /// Bytes of the block's files.
    pub(crate) bytes: u64,
    series: Vec<(Series, Vec<ChunkRef>)>,
    postings: Postings,
    chunks: File,
    /// Chunks found damaged by queries (skipped, counted).
    corrupt_chunks: AtomicU64,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |e| StoreError::io(op, path, e)
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Block {
    /// Opens the block in `dir`, reading its meta and index.
    pub(crate) fn open(dir: &Path) -> Result<Block, StoreError> {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let meta_path = dir.join(META_FILE);
        let meta: BlockMeta = serde_json::from_slice(
            &std::fs::read(&meta_path).map_err(io("read block meta", &meta_path))?,
        )
        .map_err(|e| corrupt(&meta_path, e.to_string()))?;
        let index_path = dir.join(INDEX_FILE);
        let raw = std::fs::read(&index_path).map_err(io("read block index", &index_path))?;
        let Some((body, crc)) = raw.split_last_chunk::<4>() else {
            return Err(corrupt(&index_path, "shorter than its checksum"));
        };
        if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return Err(corrupt(&index_path, "checksum mismatch"));
        }
        let entries: Vec<IndexEntry> =
            postcard::from_bytes(body).map_err(|e| corrupt(&index_path, e.to_string()))?;
        let chunks_path = dir.join(CHUNKS_FILE);
        let chunks = File::open(&chunks_path).map_err(io("open block chunks", &chunks_path))?;
        let chunks_len = chunks
            .metadata()
            .map_err(io("read block chunks", &chunks_path))?
            .len();
        let mut postings = Postings::default();
        let mut series = Vec::with_capacity(entries.len());
        for (id, e) in entries.into_iter().enumerate() {
            let id = Slot::try_from(id).map_err(|_| corrupt(&index_path, "too many series"))?;
            if let Some(bad) = e
                .chunks
                .iter()
                .find(|c| c.offset.saturating_add(u64::from(c.len)) > chunks_len)
            {
                return Err(corrupt(
                    &index_path,
                    format!(
                        "chunk at {} of {} bytes lies past the end of the chunks file ({chunks_len} bytes)",
                        bad.offset, bad.len
                    ),
                ));
            }
            postings.add(id, super::head::METRIC_NAME_LABEL, &e.name);
            for (n, v) in &e.labels {
                postings.add(id, n, v);
            }
            let s = Series {
                name: e.name,
                labels: e
                    .labels
                    .into_iter()
                    .map(|(name, value)| Label { name, value })
                    .collect(),
            };
            series.push((s, e.chunks));
        }
        let bytes = [&meta_path, &index_path]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum::<u64>()
            + chunks_len;
        Ok(Block {
            name,
            dir: dir.to_path_buf(),
            meta,
            bytes,
            series,
            postings,
            chunks,
            corrupt_chunks: AtomicU64::new(0),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn overlaps(&self, start: i64, end: i64) -> bool {
        start <= self.meta.max_t && end >= self.meta.min_t
    }

    pub(crate) fn corrupt_chunks(&self) -> u64 {
        self.corrupt_chunks.load(Ordering::Relaxed)
    }

    fn matching(&self, matchers: &[Matcher]) -> Vec<Slot> {
        self.postings.matching(matchers, self.series.len() as Slot)
    }

    /// Appends to `out` every sample of series `id` in `[start, end]`, oldest first.
    ///
    /// A series' chunks lie back to back in the chunks file, so the chunks overlapping the
    /// range are read with one `pread` into `buf` (reused between calls), then each is checked
    /// against its CRC and decoded from there. A chunk that fails its checksum is skipped,
    /// logged and counted; if the joint read fails, its chunks are read one by one so that
    /// only the unreadable ones are skipped.
    pub(crate) fn read_samples(
        &self,
        id: Slot,
        start: i64,
        end: i64,
        buf: &mut Vec<u8>,
        out: &mut Vec<Sample>,
    ) {
        let wanted = self.chunks_in(id, start, end);
        let mut from = 0;
        for i in 1..=wanted.len() {
            let joined = wanted.get(i).is_some_and(|c| {
                let p = &wanted[i - 1];
                p.offset.checked_add(u64::from(p.len)) == Some(c.offset)
            });
            if !joined {
                self.read_run(&wanted[from..i], start, end, buf, out);
                from = i;
            }
        }
    }

    /// The chunks of series `id` overlapping `[start, end]` (a series' chunks are in time order
    /// and never overlap: [`BlockWriter::add`] writes them so).
    fn chunks_in(&self, id: Slot, start: i64, end: i64) -> &[ChunkRef] {
        let Some((_, chunks)) = self.series.get(id as usize) else {
            return &[];
        };
        let rest = &chunks[chunks.partition_point(|c| c.max_t < start)..];
        &rest[..rest.partition_point(|c| c.min_t <= end)]
    }

    /// Room for the samples of series `id` in `[start, end]`, every overlapping chunk taken as
    /// full: what to reserve before [`Block::read_samples`].
    pub(crate) fn capacity_for(&self, id: Slot, start: i64, end: i64) -> usize {
        self.chunks_in(id, start, end).len() * SAMPLES_PER_BLOCK_CHUNK
    }

    /// The series matching `matchers` with a chunk overlapping `[start, end]`, with their index.
    pub(crate) fn select_slots(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Vec<(Slot, &Series)> {
        if !self.overlaps(start, end) {
            return Vec::new();
        }
        self.matching(matchers)
            .into_iter()
            .filter_map(|id| Some((id, &self.series.get(id as usize)?.0)))
            .filter(|&(id, _)| !self.chunks_in(id, start, end).is_empty())
            .collect()
    }

    /// Reads the chunks of `run` (back to back in the file) with one `pread` and decodes them.
    fn read_run(
        &self,
        run: &[ChunkRef],
        start: i64,
        end: i64,
        buf: &mut Vec<u8>,
        out: &mut Vec<Sample>,
    ) {
        let (Some(head), Some(tail)) = (run.first(), run.last()) else {
            return;
        };
        let len = (tail.offset + u64::from(tail.len) - head.offset) as usize;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        if let Err(e) = self.chunks.read_exact_at(&mut buf[..len], head.offset) {
            if run.len() == 1 {
                self.damaged(head, &e.to_string());
                return;
            }
            for c in run {
                self.read_run(std::slice::from_ref(c), start, end, buf, out);
            }
            return;
        }
        for c in run {
            let at = (c.offset - head.offset) as usize;
            let bytes = &buf[at..at + c.len as usize];
            if crc32fast::hash(bytes) != c.crc {
                self.damaged(c, "checksum mismatch");
                continue;
            }
            super::decimal::decode_range_into(bytes, start, end, out);
        }
    }

    fn damaged(&self, c: &ChunkRef, problem: &str) {
        self.corrupt_chunks.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            "skipping a damaged chunk at offset {} of {}: {problem}",
            c.offset,
            self.dir.join(CHUNKS_FILE).display()
        );
    }

    /// Every sample of series `id` in `[start, end]`, oldest first.
    fn samples(&self, id: Slot, start: i64, end: i64) -> Vec<Sample> {
        let mut out = Vec::with_capacity(self.capacity_for(id, start, end));
        self.read_samples(id, start, end, &mut Vec::new(), &mut out);
        out
    }

    /// Series matching `matchers` with samples in `[start, end]`, and those samples.
    #[cfg(test)]
    pub(crate) fn select(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Vec<(Series, Vec<Sample>)> {
        if !self.overlaps(start, end) {
            return Vec::new();
        }
        let mut buf = Vec::new();
        self.matching(matchers)
            .into_iter()
            .filter_map(|id| {
                let mut samples = Vec::new();
                self.read_samples(id, start, end, &mut buf, &mut samples);
                let (series, _) = self.series.get(id as usize)?;
                (!samples.is_empty()).then(|| (series.clone(), samples))
            })
            .collect()
    }

    /// Series matching `matchers` with a chunk overlapping `[start, end]`.
    pub(crate) fn series(&self, matchers: &[Matcher], start: i64, end: i64) -> Vec<&Series> {
        if !self.overlaps(start, end) {
            return Vec::new();
        }
        self.matching(matchers)
            .into_iter()
            .filter_map(|id| self.series.get(id as usize))
            .filter(|(_, chunks)| chunks.iter().any(|c| c.max_t >= start && c.min_t <= end))
            .map(|(s, _)| s)
            .collect()
    }

    /// Index of series `s` in this block, if it has it.
    pub(crate) fn find(&self, s: &Series) -> Option<Slot> {
        let mut m = Vec::with_capacity(s.labels.len() + 1);
        m.push(Matcher::equal(
            super::head::METRIC_NAME_LABEL,
            s.name.as_str(),
        ));
        m.extend(
            s.labels
                .iter()
                .map(|l| Matcher::equal(l.name.as_str(), l.value.as_str())),
        );
        self.matching(&m)
            .into_iter()
            .find(|&id| self.series.get(id as usize).is_some_and(|(x, _)| x == s))
    }

    /// All samples of series `id`.
    pub(crate) fn samples_of(&self, id: Slot) -> Vec<Sample> {
        self.samples(id, i64::MIN, i64::MAX)
    }
}

/// Writes a new block; [`BlockWriter::finish`] makes it appear atomically.
pub(crate) struct BlockWriter {
    blocks_dir: PathBuf,
    name: String,
    tmp: PathBuf,
    chunks: BufWriter<File>,
    offset: u64,
    entries: Vec<IndexEntry>,
    meta: BlockMeta,
}

impl BlockWriter {
    /// Starts a block meant to hold samples in `[min_t, max_t]`.
    pub(crate) fn create(
        blocks_dir: &Path,
        min_t: i64,
        max_t: i64,
        level: u32,
        sources: Vec<String>,
    ) -> Result<BlockWriter, StoreError> {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("{min_t}-{max_t}-{nonce}");
        let tmp = blocks_dir.join(format!("{name}{TMP_SUFFIX}"));
        std::fs::create_dir_all(&tmp).map_err(io("create block directory", &tmp))?;
        let chunks_path = tmp.join(CHUNKS_FILE);
        let chunks = File::create(&chunks_path).map_err(io("create block chunks", &chunks_path))?;
        Ok(BlockWriter {
            blocks_dir: blocks_dir.to_path_buf(),
            name,
            tmp,
            chunks: BufWriter::with_capacity(1 << 20, chunks),
            offset: 0,
            entries: Vec::new(),
            meta: BlockMeta {
                min_t,
                max_t,
                series: 0,
                samples: 0,
                level,
                sources,
            },
        })
    }

    /// Adds one series with its samples (oldest first, unique timestamps). A series without
    /// samples is left out.
    pub(crate) fn add(
        &mut self,
        series: &Series,
        samples: impl IntoIterator<Item = Sample>,
    ) -> Result<(), StoreError> {
        let mut refs = Vec::new();
        let mut group: Vec<Sample> = Vec::with_capacity(SAMPLES_PER_BLOCK_CHUNK);
        for s in samples {
            if group.len() >= SAMPLES_PER_BLOCK_CHUNK {
                refs.push(self.write_chunk(&group)?);
                group.clear();
            }
            group.push(s);
            self.meta.samples += 1;
        }
        if !group.is_empty() {
            refs.push(self.write_chunk(&group)?);
        }
        if refs.is_empty() {
            return Ok(());
        }
        self.meta.series += 1;
        self.entries.push(IndexEntry {
            name: series.name.clone(),
            labels: series
                .labels
                .iter()
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect(),
            chunks: refs,
        });
        Ok(())
    }

    /// Writes one chunk of `samples` (oldest first), packed when that is smaller than Gorilla.
    fn write_chunk(&mut self, samples: &[Sample]) -> Result<ChunkRef, StoreError> {
        let chunk = Chunk::of(samples.iter().copied());
        let packed = chunk.packed_if_smaller(samples);
        let bytes = packed.as_deref().unwrap_or(chunk.bytes());
        let len =
            u32::try_from(bytes.len()).map_err(|_| StoreError::RecordTooLarge(bytes.len()))?;
        self.chunks
            .write_all(bytes)
            .map_err(io("write block chunks", &self.tmp))?;
        let r = ChunkRef {
            min_t: chunk.min_t(),
            max_t: chunk.max_t(),
            offset: self.offset,
            len,
            crc: crc32fast::hash(bytes),
        };
        self.offset += u64::from(len);
        Ok(r)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the index and meta, fsyncs everything and renames the block into place.
    pub(crate) fn finish(self) -> Result<Block, StoreError> {
        let BlockWriter {
            blocks_dir,
            name,
            tmp,
            chunks,
            entries,
            meta,
            ..
        } = self;
        let chunks = chunks
            .into_inner()
            .map_err(|e| StoreError::io("write block chunks", &tmp, e.into_error()))?;
        chunks.sync_all().map_err(io("sync block chunks", &tmp))?;
        let mut index = postcard::to_stdvec(&entries)
            .map_err(|e| corrupt(&tmp, format!("cannot encode the index: {e}")))?;
        let crc = crc32fast::hash(&index);
        index.extend_from_slice(&crc.to_le_bytes());
        write_synced(&tmp.join(INDEX_FILE), &index)?;
        let meta_json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| corrupt(&tmp, format!("cannot encode meta: {e}")))?;
        write_synced(&tmp.join(META_FILE), &meta_json)?;
        super::wal::sync_dir(&tmp)?;
        let dir = blocks_dir.join(&name);
        std::fs::rename(&tmp, &dir).map_err(io("rename block into place", &dir))?;
        super::wal::sync_dir(&blocks_dir)?;
        Block::open(&dir)
    }

    /// Removes the unfinished block.
    pub(crate) fn abandon(self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = File::create(path).map_err(io("create", path))?;
    f.write_all(bytes).map_err(io("write", path))?;
    f.sync_all().map_err(io("sync", path))
}

/// Opens every block in `blocks_dir`, oldest first. Unfinished (`.tmp`) blocks are deleted;
/// blocks a finished compaction replaced are deleted; a block that cannot be opened is left
/// on disk, logged and skipped, so the store always starts.
pub(crate) fn open_all(blocks_dir: &Path) -> Result<(Vec<Block>, u64), StoreError> {
    let mut blocks = Vec::new();
    let mut damaged = 0;
    let entries = std::fs::read_dir(blocks_dir).map_err(io("list blocks", blocks_dir))?;
    for entry in entries {
        let entry = entry.map_err(io("list blocks", blocks_dir))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !path.is_dir() {
            continue;
        }
        if name.ends_with(TMP_SUFFIX) {
            tracing::info!("removing unfinished block {}", path.display());
            std::fs::remove_dir_all(&path).map_err(io("remove unfinished block", &path))?;
            continue;
        }
        match Block::open(&path) {
            Ok(b) => blocks.push(b),
            Err(e) => {
                damaged += 1;
                tracing::error!("skipping block {}: {e}", path.display());
            }
        }
    }
    let replaced: std::collections::HashSet<String> = blocks
        .iter()
        .flat_map(|b| b.meta.sources.iter().cloned())
        .collect();
    let (gone, kept): (Vec<Block>, Vec<Block>) =
        blocks.into_iter().partition(|b| replaced.contains(&b.name));
    for b in gone {
        tracing::info!(
            "removing block {} (compacted into a newer one)",
            b.dir.display()
        );
        std::fs::remove_dir_all(&b.dir).map_err(io("remove compacted block", &b.dir))?;
    }
    let mut blocks = kept;
    blocks.sort_by_key(|b| (b.meta.min_t, b.meta.max_t));
    if !blocks.is_empty() {
        super::wal::sync_dir(blocks_dir)?;
    }
    Ok((blocks, damaged))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(ts: impl IntoIterator<Item = i64>) -> Vec<Sample> {
        ts.into_iter()
            .map(|t| Sample {
                timestamp_ms: t,
                value: t as f64 / 10.0,
            })
            .collect()
    }

    #[test]
    fn written_blocks_read_back_and_select() {
        let dir = tempfile::tempdir().unwrap();
        let up_api = Series::new("up", [("job", "api")]);
        let up_db = Series::new("up", [("job", "db")]);
        let mut w = BlockWriter::create(dir.path(), 0, 999_999, 0, vec![]).unwrap();
        w.add(&up_api, samples((0..500).map(|i| i * 1000))).unwrap();
        w.add(&up_db, samples([5, 6, 7])).unwrap();
        w.add(&Series::new("empty", [("a", "b")]), vec![]).unwrap();
        let b = w.finish().unwrap();
        assert_eq!((b.meta.series, b.meta.samples), (2, 503));
        assert!(b.bytes > 0);
        let reopened = Block::open(b.dir()).unwrap();
        let got = reopened.select(&[Matcher::equal("job", "api")], 10_000, 20_000);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, up_api);
        assert_eq!(got[0].1, samples((10..=20).map(|i| i * 1000)));
        let all = reopened.select(&[Matcher::equal("__name__", "up")], 0, 999_999);
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].1, samples([5, 6, 7]));
        assert!(reopened.select(&[], 1_000_000, 2_000_000).is_empty());
        assert_eq!(reopened.series(&[], 0, 4).len(), 1);
        assert_eq!(reopened.find(&up_db), Some(1));
        assert_eq!(reopened.find(&Series::new("up", [("job", "x")])), None);
        let (blocks, damaged) = open_all(dir.path()).unwrap();
        assert_eq!((blocks.len(), damaged), (1, 0));
    }

    #[test]
    fn reads_of_any_range_are_the_samples_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlockWriter::create(dir.path(), 0, 10_000_000, 0, vec![]).unwrap();
        // Several series written one after another, with gaps and irregular intervals, so
        // their chunks are runs in the file and ranges cut chunks anywhere.
        let mut all = Vec::new();
        for k in 0..5i64 {
            let ts: Vec<i64> = (0..(100 + 173 * k))
                .map(|i| i * 1000 + (i % 7) * 13 + if i > 150 { 500_000 } else { 0 })
                .collect();
            let s = Series::new("m", [("k", k.to_string())]);
            w.add(&s, samples(ts.iter().copied())).unwrap();
            all.push(samples(ts));
        }
        let b = w.finish().unwrap();
        let mut buf = Vec::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..500 {
            let start = rng.i64(-10_000..1_200_000);
            let end = start + rng.i64(-1000..800_000);
            for (id, want) in all.iter().enumerate() {
                let want: Vec<Sample> = want
                    .iter()
                    .copied()
                    .filter(|s| s.timestamp_ms >= start && s.timestamp_ms <= end)
                    .collect();
                let mut got = vec![Sample::new(-1, 0.0)];
                b.read_samples(id as Slot, start, end, &mut buf, &mut got);
                assert_eq!(got[0], Sample::new(-1, 0.0), "appends");
                assert_eq!(got[1..], want[..], "{id} [{start}, {end}]");
                assert!(b.capacity_for(id as Slot, start, end) >= want.len());
                let listed = b
                    .select_slots(&[], start, end)
                    .iter()
                    .any(|&(s, _)| s as usize == id);
                assert_eq!(listed, b.capacity_for(id as Slot, start, end) > 0);
                if !want.is_empty() {
                    assert!(listed);
                }
            }
        }
        assert_eq!(b.corrupt_chunks(), 0);
    }

    #[test]
    fn damage_is_detected_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let s = Series::new("up", [("job", "api")]);
        let mut w = BlockWriter::create(dir.path(), 0, 10_000, 0, vec![]).unwrap();
        let total = 2 * SAMPLES_PER_BLOCK_CHUNK + 60;
        w.add(&s, samples(0..total as i64)).unwrap();
        let b = w.finish().unwrap();
        let path = b.dir().to_path_buf();
        drop(b);
        // A flipped byte in the chunks: that chunk is skipped and counted, the others read.
        let chunks = path.join(CHUNKS_FILE);
        let mut bytes = std::fs::read(&chunks).unwrap();
        bytes[5] ^= 0xff;
        std::fs::write(&chunks, &bytes).unwrap();
        let b = Block::open(&path).unwrap();
        let got = b.select(&[], 0, 10_000);
        assert_eq!(got[0].1.len(), total - SAMPLES_PER_BLOCK_CHUNK);
        assert_eq!(b.corrupt_chunks(), 1);
        // A flipped byte in the index: the block does not open, and open_all skips it.
        let index = path.join(INDEX_FILE);
        let mut bytes = std::fs::read(&index).unwrap();
        bytes[3] ^= 0xff;
        std::fs::write(&index, &bytes).unwrap();
        assert!(matches!(
            Block::open(&path),
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::create_dir(dir.path().join("x.tmp")).unwrap();
        let (blocks, damaged) = open_all(dir.path()).unwrap();
        assert_eq!((blocks.len(), damaged), (0, 1));
        assert!(!dir.path().join("x.tmp").exists());
    }

    #[test]
    fn replaced_sources_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = Series::new("up", std::iter::empty::<(&str, &str)>());
        let mut a = BlockWriter::create(dir.path(), 0, 9, 0, vec![]).unwrap();
        a.add(&s, samples([1, 2])).unwrap();
        let a = a.finish().unwrap();
        let mut c = BlockWriter::create(dir.path(), 0, 19, 1, vec![a.name.clone()]).unwrap();
        c.add(&s, samples([1, 2, 15])).unwrap();
        let c = c.finish().unwrap();
        let (blocks, _) = open_all(dir.path()).unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].name, c.name);
        assert!(!a.dir().exists());
    }
}
