//! Maintenance: the background thread that keeps the head small and the disk bounded. Each
//! run, in order:
//! 1. **Cut**: while the head spans at least one and a half block ranges, its oldest aligned
//!    range `[lo, hi)` becomes a block. Appends below `hi` are refused first (so what is
//!    copied cannot change), the block is written and made queryable, and only then does the
//!    head stop serving and free what is below `hi`. A query in between may see a sample in
//!    both places; the store's merge drops the repeat.
//! 2. **Checkpoint** the WAL segments before the one being written (see [`super::checkpoint`])
//!    after a cut, and whenever the completed segments since the last checkpoint outgrow it:
//!    a checkpoint keeps the head's samples as chunks, several times smaller than the
//!    segments' records, so the WAL stays a fraction of what the head has seen since its
//!    last cut.
//! 3. **Compact**: blocks that together fill an aligned window of 3x, 9x, ... the block range
//!    (up to a tenth of the retention) and that no later cut can add to are merged into one.
//!    One merge per run, so a run stays short.
//! 4. **Retention**: blocks wholly older than the retention are deleted, then the oldest ones
//!    while blocks and WAL pass the size limit.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, Weak};

use sonde_common::model::{Sample, Series};

use super::block::{Block, BlockWriter};
use super::head::Slot;
use super::{Inner, Store, StoreError, StoreStats, checkpoint};

/// Series copied from the head per read-lock hold while cutting a block.
const CUT_BATCH: Slot = 2048;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    blocks_cut: AtomicU64,
    compactions: AtomicU64,
    deleted_by_retention: AtomicU64,
    checkpoints: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    pub(crate) fn fill(&self, stats: &mut StoreStats) {
        stats.blocks_cut = self.blocks_cut.load(Ordering::Relaxed);
        stats.compactions = self.compactions.load(Ordering::Relaxed);
        stats.blocks_deleted_by_retention = self.deleted_by_retention.load(Ordering::Relaxed);
        stats.checkpoints = self.checkpoints.load(Ordering::Relaxed);
        stats.maintenance_errors = self.errors.load(Ordering::Relaxed);
    }
}

/// What one maintenance run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub blocks_cut: u64,
    pub checkpointed_segments_up_to: Option<u32>,
    pub compacted: u64,
    pub deleted: u64,
}

/// Starts the maintenance thread (unless the interval is zero: then only explicit
/// [`Store::maintain`] calls run it).
pub(crate) fn start(store: &Store) -> Result<(), StoreError> {
    let interval = store.inner.cfg.maintenance_interval;
    if interval.is_zero() {
        return Ok(());
    }
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let weak: Weak<Inner> = Arc::downgrade(&store.inner);
    let thread = std::thread::Builder::new()
        .name("sonde-store-maintain".to_owned())
        .spawn(move || {
            loop {
                match stop_rx.recv_timeout(interval) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                let store = Store { inner };
                if let Err(e) = store.maintain() {
                    tracing::error!("storage maintenance failed (retried next run): {e}");
                }
            }
        })
        .map_err(|e| StoreError::io("start the maintenance thread for", &store.inner.cfg.dir, e))?;
    *store
        .inner
        .maintenance
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some((stop_tx, thread));
    Ok(())
}

/// Stops the maintenance thread, waiting for a run in progress to finish.
pub(crate) fn stop(store: &Store) {
    let taken = store
        .inner
        .maintenance
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some((stop_tx, thread)) = taken {
        drop(stop_tx);
        if thread.join().is_err() {
            tracing::error!("the storage maintenance thread panicked");
        }
    }
}

fn align_down(t: i64, range: i64) -> i64 {
    t.div_euclid(range) * range
}

impl Store {
    /// Runs maintenance once: cut, checkpoint, compact, retention. The maintenance thread
    /// calls this every `maintenance_interval`; tests and tools may call it directly.
    pub fn maintain(&self) -> Result<MaintenanceReport, StoreError> {
        let _running = self
            .inner
            .maintaining
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result = self.maintain_locked();
        if result.is_err() {
            self.inner.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn maintain_locked(&self) -> Result<MaintenanceReport, StoreError> {
        let mut report = MaintenanceReport::default();
        let range = self.block_range_ms();
        loop {
            // Bound first: a guard in the `while let` condition would live through the body.
            let span = self.read().time_range();
            let Some((min, max)) = span else { break };
            let lo = align_down(min, range);
            if max < lo.saturating_add(range / 2 * 3) {
                break;
            }
            self.cut(lo, lo + range)?;
            report.blocks_cut += 1;
        }
        if report.blocks_cut > 0 || self.checkpoint_due()? {
            report.checkpointed_segments_up_to = self.checkpoint()?;
        }
        if self.compact_once()? {
            report.compacted += 1;
        }
        report.deleted = self.apply_retention()?;
        Ok(report)
    }

    fn block_range_ms(&self) -> i64 {
        i64::try_from(self.inner.cfg.block_range.as_millis())
            .unwrap_or(i64::MAX)
            .max(1)
    }

    fn blocks_dir(&self) -> std::path::PathBuf {
        self.inner.cfg.dir.join("blocks")
    }

    /// Cuts the head's samples in `[lo, hi)` into a block.
    fn cut(&self, lo: i64, hi: i64) -> Result<(), StoreError> {
        self.write().cut_below(hi);
        let mut w = BlockWriter::create(&self.blocks_dir(), lo, hi - 1, 0, Vec::new())?;
        let count = Slot::try_from(self.read().series_count()).unwrap_or(Slot::MAX);
        let mut from: Slot = 0;
        while from < count {
            let to = from.saturating_add(CUT_BATCH).min(count);
            let part = self.read().series_samples(from..to, lo, hi - 1);
            for (series, samples) in part {
                if let Err(e) = w.add(&series, samples) {
                    w.abandon();
                    return Err(e);
                }
            }
            from = to;
        }
        if w.is_empty() {
            w.abandon();
        } else {
            let block = w.finish()?;
            tracing::info!(
                block = %block.name,
                series = block.meta.series,
                samples = block.meta.samples,
                bytes = block.bytes,
                "cut the head into a block"
            );
            self.add_block(block, &[]);
            self.inner
                .counters
                .blocks_cut
                .fetch_add(1, Ordering::Relaxed);
        }
        self.write().truncate_below(hi);
        Ok(())
    }

    /// Makes `block` queryable and drops the blocks it replaces from the list.
    fn add_block(&self, block: Block, replaced: &[String]) {
        let mut blocks = self
            .inner
            .blocks
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        blocks.retain(|b| !replaced.contains(&b.name));
        blocks.push(Arc::new(block));
        blocks.sort_by_key(|b| (b.meta.min_t, b.meta.max_t));
    }

    /// Whether the completed segments after the latest checkpoint hold more bytes than it.
    fn checkpoint_due(&self) -> Result<bool, StoreError> {
        let current = self.inner.wal_segment.load(Ordering::Acquire);
        let wal_dir = self.inner.cfg.dir.join("wal");
        let latest = checkpoint::latest(&wal_dir)?;
        let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let completed: Vec<u32> = super::wal::list_segments(&wal_dir)?
            .into_iter()
            .filter(|&s| s < current && latest.is_none_or(|c| s > c))
            .collect();
        let since: u64 = completed
            .iter()
            .map(|&s| size(&super::wal::segment_path(&wal_dir, s)))
            .sum();
        let checkpointed = latest.map_or(0, |c| size(&checkpoint::path(&wal_dir, c)));
        Ok(!completed.is_empty() && since >= checkpointed)
    }

    /// Checkpoints the WAL segments before the one being written.
    fn checkpoint(&self) -> Result<Option<u32>, StoreError> {
        let current = self.inner.wal_segment.load(Ordering::Acquire);
        let Some(upto) = current.checked_sub(1) else {
            return Ok(None);
        };
        let keep_from = self.read().min_valid_t();
        let wal_dir = self.inner.cfg.dir.join("wal");
        let Some(outcome) = checkpoint::write(&wal_dir, upto, keep_from)? else {
            return Ok(None);
        };
        let wal_bytes = &self.inner.wal_bytes;
        let _ = wal_bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            Some(
                b.saturating_sub(outcome.bytes_removed)
                    .saturating_add(outcome.bytes_written),
            )
        });
        self.inner
            .counters
            .checkpoints
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            up_to_segment = outcome.index,
            samples_kept = outcome.samples_kept,
            samples_in_blocks = outcome.samples_dropped,
            bytes_freed = outcome.bytes_removed.saturating_sub(outcome.bytes_written),
            "checkpointed the WAL"
        );
        Ok(Some(outcome.index))
    }

    /// The largest compaction window: a tenth of the retention (at least 3 block ranges).
    fn max_compaction_range(&self) -> i64 {
        let range = self.block_range_ms();
        let retention = i64::try_from(self.inner.cfg.retention.as_millis()).unwrap_or(i64::MAX);
        if retention == 0 {
            return range.saturating_mul(27);
        }
        (retention / 10).max(range.saturating_mul(3))
    }

    /// Merges one group of blocks that fill a closed window; whether it did.
    fn compact_once(&self) -> Result<bool, StoreError> {
        let range = self.block_range_ms();
        let max = self.max_compaction_range();
        let head_floor = self.read().min_valid_t();
        let blocks: Vec<Arc<Block>> = self
            .inner
            .blocks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut window = range.saturating_mul(3);
        while window <= max {
            let mut group: Vec<Arc<Block>> = Vec::new();
            let mut group_start = i64::MIN;
            for b in &blocks {
                let start = align_down(b.meta.min_t, window);
                let fits = b.meta.max_t < start.saturating_add(window);
                if !fits {
                    continue;
                }
                if start != group_start {
                    if group.len() >= 2 && group_start.saturating_add(window) <= head_floor {
                        self.merge(&group)?;
                        return Ok(true);
                    }
                    group.clear();
                    group_start = start;
                }
                group.push(b.clone());
            }
            if group.len() >= 2 && group_start.saturating_add(window) <= head_floor {
                self.merge(&group)?;
                return Ok(true);
            }
            window = window.saturating_mul(3);
        }
        Ok(false)
    }

    /// Writes one block holding everything in `group` and replaces the group with it.
    fn merge(&self, group: &[Arc<Block>]) -> Result<(), StoreError> {
        let min_t = group.iter().map(|b| b.meta.min_t).min().unwrap_or(0);
        let max_t = group.iter().map(|b| b.meta.max_t).max().unwrap_or(0);
        let level = group.iter().map(|b| b.meta.level).max().unwrap_or(0) + 1;
        let sources: Vec<String> = group.iter().map(|b| b.name.clone()).collect();
        let mut w = BlockWriter::create(&self.blocks_dir(), min_t, max_t, level, sources.clone())?;
        let series: BTreeSet<&Series> = group
            .iter()
            .flat_map(|b| b.series(&[], i64::MIN, i64::MAX))
            .collect();
        for s in series {
            let mut samples: Vec<Sample> = Vec::new();
            for b in group {
                if let Some(id) = b.find(s) {
                    samples.extend(b.samples_of(id));
                }
            }
            if !samples.is_sorted_by_key(|x| x.timestamp_ms) {
                samples.sort_by_key(|x| x.timestamp_ms);
            }
            samples.dedup_by_key(|x| x.timestamp_ms);
            if let Err(e) = w.add(s, samples) {
                w.abandon();
                return Err(e);
            }
        }
        let block = w.finish()?;
        tracing::info!(
            block = %block.name,
            level = block.meta.level,
            sources = group.len(),
            series = block.meta.series,
            samples = block.meta.samples,
            "compacted blocks"
        );
        self.add_block(block, &sources);
        for b in group {
            remove_block(b)?;
        }
        self.inner
            .counters
            .compactions
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes blocks past the retention (age, then size); returns how many.
    fn apply_retention(&self) -> Result<u64, StoreError> {
        let retention = i64::try_from(self.inner.cfg.retention.as_millis()).unwrap_or(i64::MAX);
        let limit = self.inner.cfg.retention_bytes;
        let cutoff = sonde_common::model::now_ms().saturating_sub(retention);
        let doomed: Vec<Arc<Block>> = {
            let mut blocks = self
                .inner
                .blocks
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let mut doomed = Vec::new();
            if retention > 0 {
                let (old, keep): (Vec<_>, Vec<_>) =
                    blocks.drain(..).partition(|b| b.meta.max_t < cutoff);
                *blocks = keep;
                doomed.extend(old);
            }
            if limit > 0 {
                let wal = self.inner.wal_bytes.load(Ordering::Relaxed);
                let mut total: u64 = blocks.iter().map(|b| b.bytes).sum::<u64>() + wal;
                while total > limit && !blocks.is_empty() {
                    let b = blocks.remove(0);
                    total = total.saturating_sub(b.bytes);
                    doomed.push(b);
                }
            }
            doomed
        };
        if !doomed.is_empty() {
            self.unsettle();
        }
        for b in &doomed {
            tracing::info!(
                block = %b.name,
                max_t = b.meta.max_t,
                bytes = b.bytes,
                "deleting a block past the retention"
            );
            remove_block(b)?;
        }
        let n = doomed.len() as u64;
        self.inner
            .counters
            .deleted_by_retention
            .fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }
}

fn remove_block(b: &Block) -> Result<(), StoreError> {
    // Queries holding the block keep reading through its open chunks file.
    match std::fs::remove_dir_all(b.dir()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove block", b.dir(), e)),
    }?;
    if let Some(parent) = b.dir().parent() {
        super::wal::sync_dir(parent)?;
    }
    Ok(())
}
