//! The embedded single-node time-series store, shaped like Prometheus's TSDB: a write-ahead log
//! ([`wal`]) in front of an in-memory head ([`head`]) of compressed chunks (the open one a
//! varint stream of short decimals, [`open_chunk`]; full ones bit-packed, [`packed`], or
//! Gorilla-compressed, [`chunk`], whichever is smaller), found through an
//! inverted index ([`postings`]) by label [`matcher`]s. The
//! maintenance thread ([`maintain`]) cuts the head into immutable on-disk [`block`]s,
//! replaces the WAL segments they cover by a [`checkpoint`], compacts small blocks into larger
//! ones and deletes blocks past the retention. Queries merge blocks and head.
//!
//! # Invariants
//! - **Identity**: a series is its metric name plus its sorted, unique labels ([`Series`]).
//!   Within a series timestamps strictly increase; chunks never overlap.
//! - **Durable before visible**: a sample reaches the head only after the WAL records holding
//!   it are fsynced, so a query never returns a sample a crash could take back, and `append`
//!   returns only after its samples are both durable and visible. (A new series may enter the
//!   head, empty, before its first sample is durable; every query only reports series with
//!   samples in range, so it is not seen.)
//! - **One order**: the head is changed only by the commit thread, in WAL order, with the same
//!   function replay uses ([`commit::apply_record`]); so the head rebuilt at open is the head
//!   that was served, including which of two conflicting values came first.
//! - **Idempotency**: a sample whose (series, timestamp) is stored with the same value bits is
//!   a duplicate and changes nothing; with other bits it is a conflict and the first value
//!   stays; an older timestamp not stored is kept if it is within the out-of-order window of
//!   the series' newest sample (and newer than the last block cut), else it is out of order
//!   and dropped. `append` checks each sample against the head before logging it (a duplicate
//!   or conflict stays one once stored), so a retried batch costs no WAL space; the commit
//!   thread decides again, in WAL order, which is what replay repeats.
//!
//! # On disk
//! ```text
//! <dir>/LOCK                     held (flock) while a Store has the directory open
//! <dir>/wal/00000001             WAL segments, cut at `wal_segment_bytes`; format in [`wal`]
//! <dir>/wal/checkpoint.00000007  what replay still needs of segments up to 7 ([`checkpoint`])
//! <dir>/blocks/<min>-<max>-<n>/  immutable blocks ([`block`])
//! ```
//! At open the blocks are opened (unfinished ones deleted, damaged ones skipped), then the
//! newest checkpoint and the segments after it are replayed, skipping samples older than the
//! newest block's end (they are in it). A damaged record in the last segment is taken for a
//! write torn by a crash: the segment is truncated there (with a warning) and the store opens
//! with everything before it. Damage in an older segment ends replay of that segment at that
//! point (warned, counted in [`ReplayReport`]) and replay continues with the next one. Writing
//! resumes at the end of the last segment.
//!
//! # Threads and locks
//! - The head sits in a `RwLock`. Queries take the read lock. `append` takes the read lock to
//!   resolve series and filter samples, and the write lock only to create series it did not
//!   find. The commit thread takes the write lock once per group to apply it. No lock is held
//!   across an `.await` or across disk I/O.
//! - The commit thread ([`commit`]) owns the segment files and the directory lock; callers
//!   reach it through a bounded channel and wait on a oneshot, so concurrent appends share one
//!   write and one fsync.
//! - The maintenance thread ([`maintain`]) takes the head's write lock only briefly (to move
//!   the cut, then to free what a written block holds) and its read lock per batch of series
//!   while copying them; blocks sit in their own `RwLock<Vec<Arc<Block>>>`, so a query keeps
//!   reading a block retention or compaction has just removed.

mod block;
mod checkpoint;
mod chunk;
pub mod codec;
mod commit;
mod decimal;
mod head;
mod maintain;
mod matcher;
mod open_chunk;
mod packed;
mod postings;
mod wal;

pub use maintain::MaintenanceReport;
pub use matcher::{MatchOp, Matcher};

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use block::Block;

use sonde_common::model::{Sample, Series};
use sonde_common::wire::{Batch, SeriesView};
use tokio::sync::{mpsc, oneshot};

use commit::{Applied, CommitRequest};
use head::{Head, Slot, Verdict};
use wal::{RecordWriter, SegmentEnd};

/// Requests waiting for the commit thread; `append` waits (asynchronously) when it is full.
const COMMIT_QUEUE: usize = 1024;

/// The default commit delay of the WAL and of the remote-write queues.
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_millis(3);

/// Where and how the store keeps its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Data directory; created if missing.
    pub dir: PathBuf,
    /// A WAL segment is cut before it would grow past this many bytes (default 16 MiB).
    pub wal_segment_bytes: u64,
    /// Time range of a block cut from the head (default 2 h); the head is cut once it spans
    /// one and a half of these. Compaction merges blocks into ranges of 3x, 9x, ... this.
    pub block_range: Duration,
    /// Blocks wholly older than this are deleted (default 15 days; zero keeps everything).
    pub retention: Duration,
    /// When blocks and WAL together pass this many bytes, the oldest blocks are deleted
    /// (0: no size limit).
    pub retention_bytes: u64,
    /// How often the maintenance thread cuts, compacts and applies retention (default 1 min).
    pub maintenance_interval: Duration,
    /// A sample up to this much older than its series' newest one is still stored (default
    /// 5 min); older ones are counted as out of order and dropped. Replay applies the same
    /// rule in the same order, so it decides the same.
    pub out_of_order_window: Duration,
    /// When WAL writes are fsynced (default `Always`: an acknowledged append survives a power
    /// loss; `Interval(d)`: it survives a crash of the process, and the machine's within `d`).
    pub wal_fsync: crate::queue::FsyncPolicy,
    /// How long the WAL's commit thread waits after an append for others to share its write
    /// and fsync (default 3 ms; zero commits at once). Adds up to that to every append's
    /// latency; under load it divides the fsyncs, and the CPU they cost, by the appends that
    /// arrive within it.
    pub commit_delay: Duration,
}

impl StoreConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            wal_segment_bytes: 16 << 20,
            block_range: Duration::from_secs(2 * 3600),
            retention: Duration::from_secs(15 * 24 * 3600),
            retention_bytes: 0,
            maintenance_interval: Duration::from_secs(60),
            out_of_order_window: Duration::from_secs(300),
            wal_fsync: crate::queue::FsyncPolicy::Always,
            commit_delay: DEFAULT_COMMIT_DELAY,
        }
    }
}

/// What an `append` did with each sample of the batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AppendStats {
    /// Stored.
    pub appended: u64,
    /// Already stored with the same value: nothing to do (a retried batch).
    pub duplicates: u64,
    /// Older than the series' newest sample and not stored: dropped.
    pub out_of_order: u64,
    /// Same timestamp as a stored sample, other value: dropped, the first value stays.
    pub conflicts: u64,
}

impl AppendStats {
    fn add(&mut self, other: AppendStats) {
        self.appended += other.appended;
        self.duplicates += other.duplicates;
        self.out_of_order += other.out_of_order;
        self.conflicts += other.conflicts;
    }
}

/// Gauges for self-metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    pub series: u64,
    pub samples_in_head: u64,
    pub wal_bytes: u64,
    /// Groups of appends the WAL commit thread wrote (and, under `--wal-fsync always`,
    /// fsynced): appends per group is what group commit saves.
    pub wal_commits: u64,
    /// Bytes of compressed sample data in the head's chunks.
    pub head_chunk_bytes: u64,
    /// Bytes of the series identities (names and labels) the head holds.
    pub head_label_bytes: u64,
    pub blocks: u64,
    pub block_bytes: u64,
    pub block_samples: u64,
    pub block_series: u64,
    pub blocks_cut: u64,
    pub compactions: u64,
    pub blocks_deleted_by_retention: u64,
    pub checkpoints: u64,
    pub maintenance_errors: u64,
    /// Chunks queries found damaged in blocks (skipped).
    pub corrupt_chunks: u64,
}

/// What replaying the WAL at open found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub segments: u64,
    pub records: u64,
    pub series: u64,
    pub samples: u64,
    /// Older segments whose replay stopped early at a damaged record.
    pub damaged_segments: u64,
    /// Bytes cut from the end of the last segment (a torn write).
    pub truncated_bytes: u64,
    /// Records that passed their checksum but could not be decoded (or had an unknown type).
    pub undecodable_records: u64,
    /// Samples whose series' SERIES record was lost to damage.
    pub orphan_samples: u64,
    /// Blocks opened.
    pub blocks: u64,
    /// Blocks that could not be opened (left on disk, skipped).
    pub damaged_blocks: u64,
}

/// A series and its samples in the queried range, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSamples {
    pub series: Series,
    pub samples: Vec<Sample>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {op} {}: {cause}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("store directory {} is in use by another store (its LOCK file is held)", path.display())]
    Locked { path: PathBuf },
    #[error("store is closed")]
    Closed,
    #[error("corrupt WAL data in {}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "WAL writer stopped after an unrecoverable write error ({0}); restart to recover from the WAL"
    )]
    WalUnavailable(String),
    #[error("WAL record of {0} bytes is over the 4 GiB format limit")]
    RecordTooLarge(usize),
    #[error("the head holds the most series it can ({})", Slot::MAX)]
    TooManySeries,
}

impl StoreError {
    fn io(op: &'static str, path: &Path, cause: io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.to_path_buf(),
            cause,
        }
    }

    /// A copy for each caller of a failed group commit (`io::Error` is not `Clone`).
    fn replicate(&self) -> Self {
        match self {
            StoreError::Io { op, path, cause } => StoreError::Io {
                op,
                path: path.clone(),
                cause: io::Error::new(cause.kind(), cause.to_string()),
            },
            StoreError::Locked { path } => StoreError::Locked { path: path.clone() },
            StoreError::Closed => StoreError::Closed,
            StoreError::Corrupt { path, reason } => StoreError::Corrupt {
                path: path.clone(),
                reason: reason.clone(),
            },
            StoreError::WalUnavailable(r) => StoreError::WalUnavailable(r.clone()),
            StoreError::RecordTooLarge(n) => StoreError::RecordTooLarge(*n),
            StoreError::TooManySeries => StoreError::TooManySeries,
        }
    }
}

/// The store. Cheap to clone; every clone is the same store.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Samples older than this when they arrive are *late*: they change answers about time that a
/// results cache takes as settled ([`Store::settled_epoch`]). Agents deliver within seconds;
/// late samples come from backfills and from senders catching up after an outage.
pub const SETTLED_AFTER_MS: i64 = 5 * 60_000;

#[derive(Debug)]
struct Inner {
    cfg: StoreConfig,
    head: Arc<RwLock<Head>>,
    /// On-disk blocks, oldest first (by time range).
    blocks: RwLock<Vec<Arc<Block>>>,
    /// Index of the WAL segment being written.
    wal_segment: Arc<AtomicU32>,
    /// Serialises maintenance runs (the thread's and explicit [`Store::maintain`] calls).
    maintaining: Mutex<()>,
    /// Stops the maintenance thread (dropping the sender) and joins it.
    maintenance: Mutex<Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>>,
    counters: maintain::Counters,
    /// Taken by `close`, after which appends fail with [`StoreError::Closed`].
    tx: Mutex<Option<mpsc::Sender<CommitRequest>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    wal_bytes: Arc<AtomicU64>,
    wal_commits: Arc<AtomicU64>,
    replay: ReplayReport,
    /// Each sender's last batch and its series' slots (see [`crate::shapes`]).
    shapes: crate::shapes::Shapes<Vec<Slot>>,
    /// See [`Store::settled_epoch`].
    settled_epoch: AtomicU64,
}

/// What `append` does before handing records to the commit thread.
struct Prepared {
    stats: AppendStats,
    records: Option<Vec<u8>>,
}

impl Store {
    /// Opens or creates the store in `cfg.dir`, replaying the WAL. Blocking (call before the
    /// runtime serves, or from `spawn_blocking`).
    pub fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        if !cfg.dir.is_dir() {
            std::fs::create_dir_all(&cfg.dir)
                .map_err(|e| StoreError::io("create store directory", &cfg.dir, e))?;
            // The new directory's own entry must be durable too, or a crash can lose it
            // with everything acknowledged inside.
            let parent = cfg
                .dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            wal::sync_dir(parent)?;
        }
        let dir_lock = lock_dir(&cfg.dir)?;
        let wal_dir = cfg.dir.join("wal");
        if !wal_dir.exists() {
            std::fs::create_dir_all(&wal_dir)
                .map_err(|e| StoreError::io("create WAL directory", &wal_dir, e))?;
            wal::sync_dir(&cfg.dir)?;
        }
        let blocks_dir = cfg.dir.join("blocks");
        if !blocks_dir.exists() {
            std::fs::create_dir_all(&blocks_dir)
                .map_err(|e| StoreError::io("create blocks directory", &blocks_dir, e))?;
            wal::sync_dir(&cfg.dir)?;
        }
        let (blocks, damaged_blocks) = block::open_all(&blocks_dir)?;
        let mut head = Head::new();
        head.set_out_of_order_window(
            i64::try_from(cfg.out_of_order_window.as_millis()).unwrap_or(i64::MAX),
        );
        // Samples up to the newest block's end are in blocks: replay skips them.
        if let Some(end) = blocks.iter().map(|b| b.meta.max_t).max() {
            head.truncate_below(end.saturating_add(1));
        }
        let (mut replay, next_segment, wal_bytes) = replay(&wal_dir, &mut head)?;
        replay.blocks = blocks.len() as u64;
        replay.damaged_blocks = damaged_blocks;
        let wal_bytes = Arc::new(AtomicU64::new(wal_bytes));
        let wal_segment = Arc::new(AtomicU32::new(next_segment));
        let writer = wal::SegmentWriter::open(
            &wal_dir,
            next_segment,
            cfg.wal_segment_bytes,
            wal_bytes.clone(),
            wal_segment.clone(),
        )?
        .with_fsync(cfg.wal_fsync)?;
        let head = Arc::new(RwLock::new(head));
        let (tx, rx) = mpsc::channel(COMMIT_QUEUE);
        let wal_commits = Arc::new(AtomicU64::new(0));
        let thread = commit::spawn(
            writer,
            head.clone(),
            rx,
            dir_lock,
            cfg.commit_delay,
            wal_commits.clone(),
        )
        .map_err(|e| StoreError::io("start the WAL writer thread for", &cfg.dir, e))?;
        let store = Store {
            inner: Arc::new(Inner {
                cfg,
                head,
                blocks: RwLock::new(blocks.into_iter().map(Arc::new).collect()),
                wal_segment,
                maintaining: Mutex::new(()),
                maintenance: Mutex::new(None),
                counters: maintain::Counters::default(),
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(thread)),
                wal_bytes,
                wal_commits,
                replay,
                shapes: crate::shapes::Shapes::default(),
                settled_epoch: AtomicU64::new(0),
            }),
        };
        maintain::start(&store)?;
        Ok(store)
    }

    /// Appends every sample of a validated batch (see `Batch::validate`). Returns once the
    /// samples are fsynced in the WAL (group commit: concurrent callers share one fsync) and
    /// visible to queries. Dropping the future after the records were queued does not undo
    /// them: they are still made durable and applied.
    pub async fn append(&self, batch: &Batch) -> Result<AppendStats, StoreError> {
        self.append_tenant("", batch).await
    }

    /// [`Store::append`] into `tenant`'s namespace ("" is the default tenant).
    pub async fn append_tenant(
        &self,
        tenant: &str,
        batch: &Batch,
    ) -> Result<AppendStats, StoreError> {
        let tx = self
            .inner
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Closed)?;
        let prepared = self.prepare(tenant, batch)?;
        let Some(records) = prepared.records else {
            return Ok(prepared.stats);
        };
        let oldest = batch
            .iter()
            .flat_map(|v| v.samples())
            .map(|s| s.timestamp_ms)
            .min();
        let (reply, answer) = oneshot::channel();
        tx.send(CommitRequest { records, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        drop(tx);
        let committed = answer.await.map_err(|_| StoreError::Closed)??;
        // Once the samples are visible: a cached answer computed before cannot be kept.
        if oldest
            .is_some_and(|t| t < sonde_common::model::now_ms().saturating_sub(SETTLED_AFTER_MS))
        {
            self.unsettle();
        }
        let mut stats = prepared.stats;
        stats.add(committed);
        Ok(stats)
    }

    /// Changes whenever data more than [`SETTLED_AFTER_MS`] old may have changed: after a
    /// late sample (that old when it arrived) became visible, or after blocks were deleted. A
    /// cache of answers about settled time stays valid while this stays the same; it must
    /// read it before computing what it caches.
    pub fn settled_epoch(&self) -> u64 {
        self.inner.settled_epoch.load(Ordering::Acquire)
    }

    fn unsettle(&self) {
        self.inner.settled_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Resolves (or creates) each series and encodes the samples that are new to the head as
    /// WAL records; counts the others.
    fn prepare(&self, tenant: &str, batch: &Batch) -> Result<Prepared, StoreError> {
        let mut stats = AppendStats::default();
        let mut series_out = RecordWriter::new(wal::TYPE_SERIES);
        let mut samples_out = RecordWriter::new(wal::TYPE_SAMPLES);
        let sender = batch.header.agent_id.as_str();
        // The same series as the sender's last batch, in the same order: their slots are known.
        // Remote write has no sender id, and its requests carry series in any order.
        let remember = !sender.is_empty();
        let known = remember
            .then(|| self.inner.shapes.take(tenant, sender))
            .flatten()
            .filter(|shape| shape.matches(batch));
        // The slots of a batch whose shape is new, to remember it.
        let record = remember && known.is_none();
        let mut slots: Vec<Slot> = Vec::with_capacity(if record { batch.series.len() } else { 0 });
        let mut missing: Vec<(usize, u64)> = Vec::new();
        {
            let head = self.read();
            for (i, view) in batch.iter().enumerate() {
                let slot = match &known {
                    Some(shape) => Some(shape.work[i]),
                    None => {
                        let hash =
                            head.identity_hash(view.name(), with_tenant(view.labels(), tenant));
                        let slot =
                            head.lookup(hash, view.name(), || with_tenant(view.labels(), tenant));
                        if record {
                            slots.push(slot.unwrap_or(Slot::MAX));
                        }
                        if slot.is_none() {
                            missing.push((i, hash));
                        }
                        slot
                    }
                };
                if let Some(slot) = slot {
                    encode_samples(
                        &head,
                        slot,
                        &view,
                        tenant,
                        &mut stats,
                        &mut series_out,
                        &mut samples_out,
                    )?;
                }
            }
        }
        if !missing.is_empty() {
            let mut head = self.write();
            let mut missing = missing.into_iter().peekable();
            for (i, view) in batch.iter().enumerate() {
                let Some(&(next, hash)) = missing.peek() else {
                    break;
                };
                if i != next {
                    continue;
                }
                missing.next();
                let slot = head
                    .get_or_create(hash, view.name(), || with_tenant(view.labels(), tenant))
                    .map_err(|_| StoreError::TooManySeries)?;
                if let Some(remembered) = slots.get_mut(i) {
                    *remembered = slot;
                }
                encode_samples(
                    &head,
                    slot,
                    &view,
                    tenant,
                    &mut stats,
                    &mut series_out,
                    &mut samples_out,
                )?;
            }
        }
        if remember {
            let shape = known.unwrap_or_else(|| crate::shapes::Shape::of(batch, slots));
            self.inner.shapes.put(tenant, sender, shape);
        }
        let records = match (series_out.is_empty(), samples_out.is_empty()) {
            (_, true) => None,
            (true, false) => Some(samples_out.finish()?),
            (false, false) => {
                let mut records = series_out.finish()?;
                records.extend_from_slice(&samples_out.finish()?);
                Some(records)
            }
        };
        Ok(Prepared { stats, records })
    }

    /// Series matching all matchers with their samples in `[start_ms, end_ms]` (inclusive),
    /// sorted by series (metric name, then labels). Series without samples in range are left
    /// out.
    pub fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<SeriesSamples> {
        self.select_tenant("", matchers, start_ms, end_ms)
    }

    /// [`Store::select`] within `tenant`'s namespace.
    pub fn select_tenant(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<SeriesSamples> {
        let mut out = Vec::new();
        let Ok(()) = self.select_each_tenant::<std::convert::Infallible>(
            tenant,
            matchers,
            start_ms,
            end_ms,
            |s| {
                out.push(s);
                Ok(())
            },
        );
        out
    }

    /// Calls `f` with each series [`Store::select_tenant`] returns, in its order, one at a
    /// time: the samples of a series in blocks are read when its turn comes, so a caller done
    /// with each series before the next holds one series' samples at a time (besides what the
    /// head holds of the range, copied first). Stops at `f`'s first error.
    pub fn select_each_tenant<E>(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        mut f: impl FnMut(SeriesSamples) -> Result<(), E>,
    ) -> Result<(), E> {
        let matchers = scoped(tenant, matchers);
        let blocks = self.blocks_in(start_ms, end_ms);
        let head = self.read().select(&matchers, start_ms, end_ms);
        let mut emit = |series, samples| {
            f(SeriesSamples {
                series: without_tenant(series),
                samples,
            })
        };
        if blocks.is_empty() {
            return head
                .into_iter()
                .try_for_each(|(series, samples)| emit(series, samples));
        }
        join_pieces(&blocks, head, &matchers, (start_ms, end_ms), emit)
    }

    /// The blocks overlapping `[start_ms, end_ms]`, oldest first.
    fn blocks_in(&self, start_ms: i64, end_ms: i64) -> Vec<Arc<Block>> {
        self.inner
            .blocks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|b| b.overlaps(start_ms, end_ms))
            .cloned()
            .collect()
    }

    /// Series (with the tenant label) matching `matchers` in the blocks over the range.
    fn block_series(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<Series> {
        let mut out: Vec<Series> = Vec::new();
        for b in self.blocks_in(start_ms, end_ms) {
            out.extend(b.series(matchers, start_ms, end_ms).into_iter().cloned());
        }
        out
    }

    /// Series matching all matchers that have at least one sample in `[start_ms, end_ms]`,
    /// sorted.
    pub fn series(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<Series> {
        self.series_tenant("", matchers, start_ms, end_ms)
    }

    /// [`Store::series`] within `tenant`'s namespace.
    pub fn series_tenant(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<Series> {
        let matchers = scoped(tenant, matchers);
        let mut out = self.block_series(&matchers, start_ms, end_ms);
        out.extend(self.read().series(&matchers, start_ms, end_ms));
        out.sort_unstable();
        out.dedup();
        out.into_iter().map(without_tenant).collect()
    }

    /// How many series [`Store::series_tenant`] would return, without copying them.
    pub fn count_series_tenant(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> usize {
        let matchers = scoped(tenant, matchers);
        let blocks = self.blocks_in(start_ms, end_ms);
        let head = self.read();
        let live = head.live_series(&matchers, start_ms, end_ms);
        if blocks.is_empty() {
            // The head holds each series once.
            return live.count();
        }
        let mut all: Vec<&Series> = blocks
            .iter()
            .flat_map(|b| b.series(&matchers, start_ms, end_ms))
            .chain(live)
            .collect();
        all.sort_unstable();
        all.dedup();
        all.len()
    }

    /// Sorted unique label names (including `__name__`) of the series matching (all series if
    /// `matchers` is empty) with samples in `[start_ms, end_ms]`.
    pub fn label_names(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<String> {
        self.label_names_tenant("", matchers, start_ms, end_ms)
    }

    /// [`Store::label_names`] within `tenant`'s namespace.
    pub fn label_names_tenant(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<String> {
        let matchers = scoped(tenant, matchers);
        let mut names = self.read().label_names(&matchers, start_ms, end_ms);
        let from_blocks = self.block_series(&matchers, start_ms, end_ms);
        if !from_blocks.is_empty() {
            names.push(head::METRIC_NAME_LABEL.to_owned());
            names.extend(
                from_blocks
                    .into_iter()
                    .flat_map(|s| s.labels.into_iter().map(|l| l.name)),
            );
            names.sort_unstable();
            names.dedup();
        }
        names.retain(|n| n != TENANT_LABEL);
        names
    }

    /// Sorted unique values of label `name` (`__name__` gives metric names) over the matching
    /// series with samples in `[start_ms, end_ms]`.
    pub fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<String> {
        self.label_values_tenant("", name, matchers, start_ms, end_ms)
    }

    /// [`Store::label_values`] within `tenant`'s namespace.
    pub fn label_values_tenant(
        &self,
        tenant: &str,
        name: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<String> {
        if name == TENANT_LABEL {
            return Vec::new();
        }
        let matchers = scoped(tenant, matchers);
        let mut values = self.read().label_values(name, &matchers, start_ms, end_ms);
        let from_blocks = self.block_series(&matchers, start_ms, end_ms);
        if !from_blocks.is_empty() {
            values.extend(from_blocks.into_iter().filter_map(|s| {
                if name == head::METRIC_NAME_LABEL {
                    Some(s.name)
                } else {
                    s.labels
                        .into_iter()
                        .find(|l| l.name == name)
                        .map(|l| l.value)
                }
            }));
            values.sort_unstable();
            values.dedup();
        }
        values
    }

    /// Counts for self-metrics.
    pub fn stats(&self) -> StoreStats {
        let mut stats = {
            let head = self.read();
            StoreStats {
                series: head.series_count(),
                samples_in_head: head.sample_count(),
                head_chunk_bytes: head.chunk_bytes(),
                head_label_bytes: head.label_bytes(),
                ..StoreStats::default()
            }
        };
        stats.wal_bytes = self.inner.wal_bytes.load(Ordering::Relaxed);
        stats.wal_commits = self.inner.wal_commits.load(Ordering::Relaxed);
        for b in self
            .inner
            .blocks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            stats.blocks += 1;
            stats.block_bytes += b.bytes;
            stats.block_samples += b.meta.samples;
            stats.block_series += b.meta.series;
            stats.corrupt_chunks += b.corrupt_chunks();
        }
        self.inner.counters.fill(&mut stats);
        stats
    }

    /// How full the commit queue is, from 0 (idle) to 1 (appends wait): the signal an
    /// autoscaler reads as `sonde_collector_queue_fill_ratio`.
    pub fn queue_fill(&self) -> f64 {
        let tx = self.inner.tx.lock().unwrap_or_else(PoisonError::into_inner);
        match tx.as_ref() {
            Some(tx) => 1.0 - tx.capacity() as f64 / tx.max_capacity() as f64,
            None => 0.0,
        }
    }

    /// What the WAL replay at open found (damage included).
    pub fn replay_report(&self) -> ReplayReport {
        self.inner.replay.clone()
    }

    /// Stops the WAL writer thread after every append already queued is fsynced and applied,
    /// and releases the directory lock; later appends fail with [`StoreError::Closed`], and
    /// queries keep answering from memory. Blocks: call from a blocking context. Idempotent.
    pub fn close(&self) {
        maintain::stop(self);
        drop(
            self.inner
                .tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let thread = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the WAL writer thread panicked");
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Head> {
        self.inner
            .head
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Head> {
        self.inner
            .head
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Calls `f` with each series matching `matchers` in `blocks` (oldest first) or `head` (what the
/// head holds of the range), sorted, with its samples from all of them in time order: every
/// block's samples of a series are decoded straight into one vector sized for them all, and
/// the head's appended. Stops at `f`'s first error.
fn join_pieces<E>(
    blocks: &[Arc<Block>],
    head: Vec<(Series, Vec<Sample>)>,
    matchers: &[Matcher],
    (start_ms, end_ms): (i64, i64),
    mut f: impl FnMut(Series, Vec<Sample>) -> Result<(), E>,
) -> Result<(), E> {
    /// Where a piece of a series is: a block's slot, or an entry of the head's selection.
    #[derive(Clone, Copy)]
    enum Piece {
        Block(usize, Slot),
        Head(usize),
    }
    let (head_series, mut head_samples): (Vec<Series>, Vec<Vec<Sample>>) = head.into_iter().unzip();
    let mut pieces: Vec<(&Series, Piece)> = Vec::new();
    for (b, block) in blocks.iter().enumerate() {
        pieces.extend(
            block
                .select_slots(matchers, start_ms, end_ms)
                .into_iter()
                .map(|(slot, series)| (series, Piece::Block(b, slot))),
        );
    }
    pieces.extend(
        head_series
            .iter()
            .enumerate()
            .map(|(i, series)| (series, Piece::Head(i))),
    );
    // Stable: a series' pieces stay oldest first (blocks in order, then the head).
    pieces.sort_by(|a, b| a.0.cmp(b.0));
    let mut buf = Vec::new();
    let mut ends = Vec::new();
    for group in pieces.chunk_by(|a, b| a.0 == b.0) {
        let capacity = group
            .iter()
            .map(|&(_, piece)| match piece {
                Piece::Block(b, slot) => blocks[b].capacity_for(slot, start_ms, end_ms),
                Piece::Head(i) => head_samples[i].len(),
            })
            .sum();
        let mut samples: Vec<Sample> = Vec::with_capacity(capacity);
        ends.clear();
        for &(_, piece) in group {
            match piece {
                Piece::Block(b, slot) => {
                    blocks[b].read_samples(slot, start_ms, end_ms, &mut buf, &mut samples);
                }
                Piece::Head(i) => samples.append(&mut head_samples[i]),
            }
            ends.push(samples.len());
        }
        // Each piece is in order; only where two meet can they be out of order or share a
        // sample (a chunk straddling a cut shows a sample in a block and the head).
        let in_order = ends.iter().all(|&at| {
            at == 0
                || at == samples.len()
                || samples[at - 1].timestamp_ms < samples[at].timestamp_ms
        });
        if !in_order {
            if !samples.is_sorted_by_key(|s| s.timestamp_ms) {
                samples.sort_by_key(|s| s.timestamp_ms);
            }
            samples.dedup_by_key(|s| s.timestamp_ms);
        }
        if !samples.is_empty() {
            f(group[0].0.clone(), samples)?;
        }
    }
    Ok(())
}

/// Encodes the samples of `view` that the head does not hold yet (plus the series' SERIES
/// record, until one is durable), counting the rest.
fn encode_samples(
    head: &Head,
    slot: Slot,
    view: &SeriesView<'_>,
    tenant: &str,
    stats: &mut AppendStats,
    series_out: &mut RecordWriter,
    samples_out: &mut RecordWriter,
) -> Result<(), StoreError> {
    let Some(s) = head.get(slot) else {
        return Ok(());
    };
    let mut logged = s.logged;
    for sample in view.samples() {
        match head.classify(s, sample.timestamp_ms, sample.value.to_bits()) {
            Verdict::Append => {
                if !logged {
                    // Until a SERIES record is durable, every request carrying samples of
                    // the series carries one: requests may reach the WAL in any order.
                    series_out.series(
                        s.wal_ref,
                        view.name(),
                        with_tenant(view.labels(), tenant),
                    )?;
                    logged = true;
                }
                samples_out.sample(s.wal_ref, sample.timestamp_ms, sample.value)?;
            }
            Verdict::Duplicate => stats.duplicates += 1,
            Verdict::Conflict => stats.conflicts += 1,
            Verdict::OutOfOrder => stats.out_of_order += 1,
        }
    }
    Ok(())
}

/// The internal label holding a series' tenant. Clients cannot send it (names starting with
/// `__` are reserved), queries never show it, and the default tenant ("") has none, so a
/// single-node store without tenants is laid out exactly as before.
pub const TENANT_LABEL: &str = "__tenant__";

/// A batch series' labels with the tenant label merged in at its sorted place (no allocation:
/// this runs for every series of every append).
fn with_tenant<'a, I>(labels: I, tenant: &'a str) -> WithTenant<'a, I>
where
    I: ExactSizeIterator<Item = (&'a str, &'a str)>,
{
    WithTenant {
        inner: labels,
        extra: (!tenant.is_empty()).then_some((TENANT_LABEL, tenant)),
        pending: None,
    }
}

struct WithTenant<'a, I> {
    inner: I,
    extra: Option<(&'a str, &'a str)>,
    pending: Option<(&'a str, &'a str)>,
}

impl<'a, I: ExactSizeIterator<Item = (&'a str, &'a str)>> Iterator for WithTenant<'a, I> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(p) = self.pending.take() {
            return Some(p);
        }
        match self.inner.next() {
            Some(item) => match self.extra {
                Some(e) if e.0 < item.0 => {
                    self.extra = None;
                    self.pending = Some(item);
                    Some(e)
                }
                _ => Some(item),
            },
            None => self.extra.take(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.inner.len()
            + usize::from(self.extra.is_some())
            + usize::from(self.pending.is_some());
        (n, Some(n))
    }
}

impl<'a, I: ExactSizeIterator<Item = (&'a str, &'a str)>> ExactSizeIterator for WithTenant<'a, I> {}

/// The matchers plus the one that confines them to `tenant`.
fn scoped(tenant: &str, matchers: &[Matcher]) -> Vec<Matcher> {
    let mut m = Vec::with_capacity(matchers.len() + 1);
    m.push(Matcher::equal(TENANT_LABEL, tenant));
    m.extend(matchers.iter().cloned());
    m
}

fn without_tenant(mut series: Series) -> Series {
    series.labels.retain(|l| l.name != TENANT_LABEL);
    series
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io("open lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(StoreError::io("lock", &path, e)),
    }
}

/// Applies every record of one WAL file (segment or checkpoint) to `head`, counting records
/// and the ones that cannot be decoded; returns how the file ended.
fn replay_file(
    path: &Path,
    head: &mut Head,
    report: &mut ReplayReport,
    applied: &mut Applied,
) -> Result<SegmentEnd, StoreError> {
    wal::read_segment(path, |payload| {
        report.records += 1;
        if let Err(e) = commit::apply_record(head, payload, applied) {
            tracing::warn!(
                "skipping a WAL record of {} that cannot be decoded: {e}",
                path.display()
            );
            report.undecodable_records += 1;
        }
    })
}

/// Replays the newest checkpoint and every segment after it into `head`, repairing a torn
/// tail. Returns the report, the index of the segment to write next and the bytes of the WAL.
fn replay(wal_dir: &Path, head: &mut Head) -> Result<(ReplayReport, u32, u64), StoreError> {
    let checkpoint = checkpoint::latest(wal_dir)?;
    let mut report = ReplayReport::default();
    let mut applied = Applied::default();
    let mut bytes = 0u64;
    if let Some(cp) = checkpoint {
        // Finish what a crash may have interrupted: the replaced segments' deletion.
        checkpoint::remove_replaced(wal_dir, cp)?;
        let path = checkpoint::path(wal_dir, cp);
        let end = replay_file(&path, head, &mut report, &mut applied)?;
        if let SegmentEnd::Damaged { offset, reason, .. } = end {
            tracing::warn!(
                "WAL checkpoint {} is damaged at offset {offset} ({reason}): continuing with the segments after it",
                path.display()
            );
            report.damaged_segments += 1;
        }
        bytes += std::fs::metadata(&path).map_or(0, |m| m.len());
    }
    let segments: Vec<u32> = wal::list_segments(wal_dir)?
        .into_iter()
        .filter(|&s| checkpoint.is_none_or(|cp| s > cp))
        .collect();
    for (pos, &index) in segments.iter().enumerate() {
        let path = wal::segment_path(wal_dir, index);
        if pos > 0 && segments.get(pos - 1).is_some_and(|&prev| prev + 1 != index) {
            tracing::warn!("WAL segment before {} is missing", path.display());
        }
        report.segments += 1;
        let end = replay_file(&path, head, &mut report, &mut applied)?;
        match end {
            SegmentEnd::Clean => {
                bytes += std::fs::metadata(&path)
                    .map_err(|e| StoreError::io("read WAL segment", &path, e))?
                    .len();
            }
            SegmentEnd::Damaged {
                offset,
                file_len,
                reason,
            } if pos + 1 == segments.len() => {
                tracing::warn!(
                    "WAL segment {} ends with a torn or corrupt record at offset {offset} ({reason}): \
                     truncating {} bytes, keeping everything before it",
                    path.display(),
                    file_len - offset
                );
                wal::truncate_segment(&path, offset)?;
                report.truncated_bytes += file_len - offset;
                bytes += offset;
            }
            SegmentEnd::Damaged {
                offset,
                file_len,
                reason,
            } => {
                tracing::warn!(
                    "WAL segment {} is damaged at offset {offset} ({reason}): skipping its last {} bytes \
                     and continuing with the next segment",
                    path.display(),
                    file_len - offset
                );
                report.damaged_segments += 1;
                bytes += file_len;
            }
        }
    }
    report.series = head.series_count();
    report.samples = head.sample_count();
    report.orphan_samples = applied.unknown_series;
    if report.segments > 0 {
        tracing::info!(
            segments = report.segments,
            series = report.series,
            samples = report.samples,
            "replayed the WAL"
        );
    }
    let next = segments
        .last()
        .copied()
        .or_else(|| checkpoint.map(|cp| cp.saturating_add(1)))
        .unwrap_or(1);
    Ok((report, next, bytes))
}

#[cfg(test)]
mod tests;
