//! Spool: the disk extension of the push buffer (`--spool-dir`). When the in-memory buffer is
//! full, its oldest batches move here instead of being dropped, and at shutdown whatever is
//! still undelivered is written here, so a long collector outage or an agent restart loses
//! nothing that fits. Delivery takes from the spool first, since it holds the oldest batches.
//!
//! On disk: one file per batch, `<sequence, 20 digits>-<samples>.sndb`, holding the encoded
//! wire envelope (which carries its own length and CRC-32). Files are written to a temporary
//! name, fsynced and renamed, so a crash leaves either a whole batch or none. A file that fails
//! its checksum when read is deleted and counted as dropped. Bounded by bytes; when full, the
//! oldest spooled batches are deleted (and counted).

use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::batch::EncodedBatch;

#[derive(Debug)]
struct Entry {
    sequence: u64,
    samples: usize,
    bytes: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    entries: VecDeque<Entry>,
    bytes: u64,
    /// The front batch, read once and kept while it is being retried.
    front: Option<EncodedBatch>,
}

fn file_name(sequence: u64, samples: usize) -> String {
    format!("{sequence:020}-{samples}.sndb")
}

fn parse_name(name: &str) -> Option<(u64, usize)> {
    let stem = name.strip_suffix(".sndb")?;
    let (seq, samples) = stem.split_once('-')?;
    Some((seq.parse().ok()?, samples.parse().ok()?))
}

impl Spool {
    /// Opens (creating) the spool directory and lists the batches a previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let mut entries = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                // An interrupted write: never a whole batch.
                let _ = std::fs::remove_file(item.path());
                continue;
            }
            if let Some((sequence, samples)) = parse_name(&name) {
                entries.push(Entry {
                    sequence,
                    samples,
                    bytes: item.metadata()?.len(),
                });
            }
        }
        entries.sort_by_key(|e| e.sequence);
        let bytes = entries.iter().map(|e| e.bytes).sum();
        Ok(Spool {
            dir: dir.to_owned(),
            max_bytes,
            entries: entries.into(),
            bytes,
            front: None,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// (batches, bytes) held.
    pub fn usage(&self) -> (usize, u64) {
        (self.entries.len(), self.bytes)
    }

    fn path(&self, e: &Entry) -> PathBuf {
        self.dir.join(file_name(e.sequence, e.samples))
    }

    /// Writes a batch at the end of the spool. Returns (sequence, samples) of older batches
    /// deleted to make room (and the batch itself if it can never fit).
    pub fn push(&mut self, batch: &EncodedBatch) -> io::Result<Vec<(u64, usize)>> {
        let size = batch.bytes.len() as u64;
        if size > self.max_bytes {
            return Ok(vec![(batch.sequence, batch.samples)]);
        }
        let mut dropped = Vec::new();
        while self.bytes + size > self.max_bytes {
            match self.pop_front_entry() {
                Some(e) => dropped.push((e.sequence, e.samples)),
                None => break,
            }
        }
        let name = file_name(batch.sequence, batch.samples);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&batch.bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(&name))?;
        self.entries.push_back(Entry {
            sequence: batch.sequence,
            samples: batch.samples,
            bytes: size,
        });
        self.bytes += size;
        Ok(dropped)
    }

    fn pop_front_entry(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        let _ = std::fs::remove_file(self.path(&e));
        self.bytes -= e.bytes;
        if self
            .front
            .as_ref()
            .is_some_and(|f| f.sequence == e.sequence)
        {
            self.front = None;
        }
        Some(e)
    }

    /// The oldest spooled batch. A file that cannot be read or fails its checksum is deleted
    /// and reported in `corrupt` as (sequence, samples).
    pub fn front(&mut self, corrupt: &mut Vec<(u64, usize)>) -> Option<EncodedBatch> {
        loop {
            if let Some(f) = &self.front {
                return Some(f.clone());
            }
            let e = self.entries.front()?;
            let path = self.path(e);
            let ok = std::fs::read(&path)
                .ok()
                .filter(|b| sonde_common::wire::verify(b, &Default::default()).is_ok());
            match ok {
                Some(bytes) => {
                    self.front = Some(EncodedBatch {
                        sequence: e.sequence,
                        samples: e.samples,
                        bytes: Bytes::from(bytes),
                    });
                }
                None => {
                    tracing::warn!(path = %path.display(), "deleting an unreadable or corrupt spooled batch");
                    if let Some(e) = self.pop_front_entry() {
                        corrupt.push((e.sequence, e.samples));
                    }
                }
            }
        }
    }

    /// Deletes the front batch if it is `sequence`.
    pub fn remove_front(&mut self, sequence: u64) -> bool {
        if self.entries.front().is_some_and(|e| e.sequence == sequence) {
            self.pop_front_entry();
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::model::{MetricKind, Sample, Series};
    use sonde_common::wire::{self, BatchBuilder, BatchHeader, Compression};

    fn batch(sequence: u64) -> EncodedBatch {
        let mut b = BatchBuilder::new(BatchHeader {
            agent_id: "h".into(),
            sequence,
            sent_at_ms: 1,
        });
        b.push(
            &Series::new("m", [("host", "h")]),
            MetricKind::Gauge,
            None,
            vec![Sample::new(1, sequence as f64)],
        );
        EncodedBatch {
            sequence,
            samples: 1,
            bytes: Bytes::from(wire::encode(&b.build(), Compression::None).unwrap()),
        }
    }

    #[test]
    fn survives_reopen_in_order_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let size = batch(1).bytes.len() as u64;
        let mut s = Spool::open(dir.path(), size * 3).unwrap();
        for seq in [5, 6, 7] {
            assert!(s.push(&batch(seq)).unwrap().is_empty());
        }
        assert_eq!(
            s.push(&batch(8)).unwrap(),
            [(5, 1)],
            "oldest deleted when full"
        );
        drop(s);
        let mut s = Spool::open(dir.path(), size * 3).unwrap();
        assert_eq!(s.usage(), (3, size * 3));
        let mut corrupt = Vec::new();
        assert_eq!(s.front(&mut corrupt).unwrap().sequence, 6);
        assert!(s.remove_front(6));
        assert!(!s.remove_front(6));
        assert_eq!(s.front(&mut corrupt).unwrap().sequence, 7);
        assert!(corrupt.is_empty());
    }

    #[test]
    fn corrupt_files_and_leftover_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push(&batch(1)).unwrap();
        s.push(&batch(2)).unwrap();
        let path = dir.path().join(file_name(1, 1));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        std::fs::write(dir.path().join("x.sndb.tmp"), b"partial").unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(!dir.path().join("x.sndb.tmp").exists());
        let mut corrupt = Vec::new();
        assert_eq!(s.front(&mut corrupt).unwrap().sequence, 2);
        assert_eq!(corrupt, [(1, 1)]);
    }
}
