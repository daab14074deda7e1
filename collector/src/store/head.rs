//! The head: every series in memory, its samples in compressed chunks (the open one in
//! [`super::open_chunk`]'s form, full ones packed or Gorilla), and the inverted index
//! that finds series by label.
//!
//! - Series live in a `Vec` and are named internally by their position, a [`Slot`]; the WAL
//!   names them by a `ref` that survives restarts. `refs` maps one to the other (several refs
//!   can name one slot only after a damaged WAL lost a SERIES record and the series was logged
//!   again under a new ref).
//! - Appends find a series by a hash of its identity (name + labels), computed from borrowed
//!   strings, so the hit path allocates nothing; hash collisions are kept in a side table.
//! - Postings: (label name, value) -> sorted slots, with the metric name under `__name__`.
//!   Slots are handed out in increasing order, so appending to a postings list keeps it sorted.
//! - Each series keeps its newest sample unpacked, so the common append (a newer timestamp) and
//!   the common retry (the newest timestamp again) decode nothing.
//!
//! The head has no locking of its own: the store wraps it in a `RwLock`.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

use sonde_common::model::{Label, Sample, Series};

use super::chunk::{SAMPLES_PER_CHUNK, SealedChunk};
use super::matcher::Matcher;
use super::open_chunk::OpenChunk;
use super::postings::Postings;
pub(crate) use super::postings::Slot;

/// The label name the metric name is indexed under.
pub(crate) const METRIC_NAME_LABEL: &str = "__name__";

/// What appending a sample to a series would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Append,
    /// The series already holds this timestamp with the same value (bitwise).
    Duplicate,
    /// The series already holds this timestamp with another value; the first one stays.
    Conflict,
    /// Older than the series' newest sample and not already stored.
    OutOfOrder,
}

/// One series and its samples.
#[derive(Debug)]
pub(crate) struct MemSeries {
    pub(crate) series: Series,
    /// The identity as one contiguous string (see [`identity_key`]): what appends compare
    /// against, in one or two cache lines instead of one per label string.
    key: Box<[u8]>,
    /// Its id in the WAL.
    pub(crate) wal_ref: u64,
    /// Whether a SERIES record for it is durable in the WAL.
    pub(crate) logged: bool,
    sealed: Vec<SealedChunk>,
    open: OpenChunk,
    /// Newest sample: timestamp and value bits.
    last: Option<(i64, u64)>,
    /// Samples that arrived out of order within the window (older than `last` when they
    /// came), as (timestamp, value bits), sorted; merged with the chunks by every read.
    ooo: Vec<(i64, u64)>,
    /// Samples in the oldest chunk that are older than the last cut: in a block, not counted
    /// as the head's.
    hidden: u64,
}

impl MemSeries {
    fn new(series: Series, wal_ref: u64, logged: bool) -> Self {
        let mut key = Vec::new();
        identity_key(
            &mut key,
            &series.name,
            series
                .labels
                .iter()
                .map(|l| (l.name.as_str(), l.value.as_str())),
        );
        Self {
            key: key.into_boxed_slice(),
            series,
            wal_ref,
            logged,
            sealed: Vec::new(),
            open: OpenChunk::new(),
            last: None,
            ooo: Vec::new(),
            hidden: 0,
        }
    }

    /// Whether this series is `name` + `labels`: compares against [`MemSeries::key`] piece by
    /// piece, without building the candidate's key.
    fn is<'a>(
        &self,
        name: &str,
        labels: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    ) -> bool {
        let mut rest: &[u8] = &self.key;
        let mut eat = |part: &str| match rest
            .strip_prefix(part.as_bytes())
            .and_then(|r| r.split_first())
        {
            Some((&KEY_SEPARATOR, tail)) => {
                rest = tail;
                true
            }
            _ => false,
        };
        eat(name) && labels.into_iter().all(|(n, v)| eat(n) && eat(v)) && rest.is_empty()
    }

    /// What appending (`t`, `bits`) would do, accepting samples up to `window` ms older than
    /// the newest one.
    fn classify(&self, t: i64, bits: u64, window: i64) -> Verdict {
        let Some((last_t, last_bits)) = self.last else {
            return Verdict::Append;
        };
        if t > last_t {
            return Verdict::Append;
        }
        let stored = if t == last_t {
            Some(last_bits)
        } else {
            self.find(t).or_else(|| self.find_ooo(t))
        };
        match stored {
            Some(b) if b == bits => Verdict::Duplicate,
            Some(_) => Verdict::Conflict,
            None if t >= last_t.saturating_sub(window) => Verdict::Append,
            None => Verdict::OutOfOrder,
        }
    }

    fn find_ooo(&self, t: i64) -> Option<u64> {
        self.ooo
            .binary_search_by_key(&t, |&(x, _)| x)
            .ok()
            .and_then(|i| self.ooo.get(i))
            .map(|&(_, b)| b)
    }

    /// The value bits stored at timestamp `t`, if any.
    fn find(&self, t: i64) -> Option<u64> {
        fn scan(mut it: impl Iterator<Item = Sample>, t: i64) -> Option<u64> {
            it.find(|s| s.timestamp_ms >= t)
                .filter(|s| s.timestamp_ms == t)
                .map(|s| s.value.to_bits())
        }
        if !self.open.is_empty() && t >= self.open.min_t() {
            return scan(self.open.iter(), t);
        }
        let i = self.sealed.partition_point(|c| c.max_t < t);
        let chunk = self.sealed.get(i)?;
        if t < chunk.min_t {
            return None;
        }
        scan(chunk.iter(), t)
    }

    /// Stores a sample [`Head::classify`] judged [`Verdict::Append`].
    fn insert(&mut self, t: i64, v: f64) {
        let bits = v.to_bits();
        if self.last.is_some_and(|(last_t, _)| t < last_t) {
            let at = self.ooo.partition_point(|&(x, _)| x < t);
            self.ooo.insert(at, (t, bits));
            return;
        }
        if self.open.len() >= SAMPLES_PER_CHUNK {
            let full = std::mem::take(&mut self.open);
            self.sealed.extend(full.seal());
        }
        if self.open.append(t, v) {
            self.last = Some((t, bits));
        }
    }

    /// Calls `f` with every sample in `[start, end]`, oldest first, until it returns false.
    fn scan_range(&self, start: i64, end: i64, mut f: impl FnMut(Sample) -> bool) {
        if start > end {
            return;
        }
        if !self.ooo.is_empty() {
            // Merge the out-of-order samples in (rare: only series that received some).
            let mut merged: Vec<Sample> = Vec::new();
            self.scan_chunks(start, end, |s| {
                merged.push(s);
                true
            });
            let from = self.ooo.partition_point(|&(t, _)| t < start);
            merged.extend(
                self.ooo[from..]
                    .iter()
                    .take_while(|&&(t, _)| t <= end)
                    .map(|&(t, b)| Sample::new(t, f64::from_bits(b))),
            );
            merged.sort_by_key(|s| s.timestamp_ms);
            for s in merged {
                if !f(s) {
                    return;
                }
            }
            return;
        }
        self.scan_chunks(start, end, f);
    }

    /// The sealed chunks overlapping `[start, end]`.
    fn sealed_in(&self, start: i64, end: i64) -> &[SealedChunk] {
        let rest = &self.sealed[self.sealed.partition_point(|c| c.max_t < start)..];
        &rest[..rest.partition_point(|c| c.min_t <= end)]
    }

    /// Whether the open chunk holds samples at or before `end` (those after `start` are
    /// filtered by whoever reads it: its newest sample is the series' newest).
    fn open_reaches(&self, end: i64) -> bool {
        !self.open.is_empty() && self.open.min_t() <= end
    }

    /// [`MemSeries::scan_range`] over the chunks alone.
    fn scan_chunks(&self, start: i64, end: i64, mut f: impl FnMut(Sample) -> bool) {
        // Whether to go on after `s`.
        let mut visit = |s: Sample| s.timestamp_ms <= end && (s.timestamp_ms < start || f(s));
        for chunk in self.sealed_in(start, end) {
            if !chunk.iter().all(&mut visit) {
                return;
            }
        }
        if self.open_reaches(end) {
            self.open.iter().all(visit);
        }
    }

    /// Timestamp of the first sample at or after `t`. A chunk that starts at or after `t`
    /// answers from its bounds, without being decoded.
    fn first_at_or_after(&self, t: i64) -> Option<i64> {
        let ooo = self
            .ooo
            .get(self.ooo.partition_point(|&(x, _)| x < t))
            .map(|&(x, _)| x);
        let after = |s: &Sample| s.timestamp_ms >= t;
        let i = self.sealed.partition_point(|c| c.max_t < t);
        let chunks = match self.sealed.get(i) {
            Some(c) if c.min_t >= t => Some(c.min_t),
            Some(c) => c.iter().find(after).map(|s| s.timestamp_ms),
            None if self.open.is_empty() || self.open.max_t() < t => None,
            None if self.open.min_t() >= t => Some(self.open.min_t()),
            None => self.open.iter().find(after).map(|s| s.timestamp_ms),
        };
        match (ooo, chunks) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Frees the chunks wholly older than `t` (the open one too: `last` still guards the
    /// series' order). Returns how many samples stopped counting as served by the head: those
    /// freed, plus those older than `t` left in a chunk that straddles it, minus the ones an
    /// earlier cut already stopped counting.
    fn drop_chunks_below(&mut self, t: i64) -> u64 {
        let keep_from = self.sealed.partition_point(|c| c.max_t < t);
        let mut dropped: u64 = self
            .sealed
            .drain(..keep_from)
            .map(|c| u64::from(c.len()))
            .sum();
        if !self.open.is_empty() && self.open.max_t() < t {
            dropped += u64::from(self.open.len());
            self.open = OpenChunk::new();
        }
        let before = self.ooo.len();
        self.ooo.retain(|&(x, _)| x >= t);
        dropped += (before - self.ooo.len()) as u64;
        // Only the oldest remaining chunk can still hold samples older than `t`.
        let straddling = match self.sealed.first() {
            Some(c) => c.iter().take_while(|s| s.timestamp_ms < t).count(),
            None => self.open.iter().take_while(|s| s.timestamp_ms < t).count(),
        } as u64;
        let newly = (dropped + straddling).saturating_sub(self.hidden);
        self.hidden = straddling;
        newly
    }

    fn chunk_bytes(&self) -> u64 {
        self.sealed
            .iter()
            .map(|c| c.bytes.len() as u64)
            .sum::<u64>()
            + self.open.byte_len() as u64
            + (self.ooo.len() * 16) as u64
    }

    pub(crate) fn samples_in(&self, start: i64, end: i64) -> Vec<Sample> {
        let mut out = Vec::with_capacity(self.room_for(start, end));
        if !self.ooo.is_empty() || start > end {
            self.scan_range(start, end, |s| {
                out.push(s);
                true
            });
            return out;
        }
        // Each chunk decoded in one pass (a packed one without an iterator).
        for c in self.sealed_in(start, end) {
            super::decimal::decode_range_into(&c.bytes, start, end, &mut out);
        }
        if self.open_reaches(end) {
            self.open.decode_range_into(start, end, &mut out);
        }
        out
    }

    /// Room for the samples in `[start, end]`: every chunk overlapping it in full, and the
    /// out-of-order samples.
    fn room_for(&self, start: i64, end: i64) -> usize {
        if start > end {
            return 0;
        }
        let sealed: usize = self
            .sealed_in(start, end)
            .iter()
            .map(|c| usize::from(c.len()))
            .sum();
        let open = if self.open_reaches(end) {
            usize::from(self.open.len())
        } else {
            0
        };
        sealed + open + self.ooo.len()
    }

    pub(crate) fn has_samples_in(&self, start: i64, end: i64) -> bool {
        match self.last {
            None => return false,
            Some((last_t, _)) if last_t < start || start > end => return false,
            Some(_) => {}
        }
        // The first chunk reaching `start` answers from its bounds when its first or last
        // sample lies in the range (a range that falls between two of its samples needs a
        // decode).
        let i = self.sealed.partition_point(|c| c.max_t < start);
        let bounds = match self.sealed.get(i) {
            Some(c) => Some((c.min_t, c.max_t)),
            None if !self.open.is_empty() && self.open.max_t() >= start => {
                Some((self.open.min_t(), self.open.max_t()))
            }
            None => None,
        };
        if bounds.is_some_and(|(lo, hi)| hi <= end || (start..=end).contains(&lo)) {
            return true;
        }
        self.first_at_or_after(start).is_some_and(|t| t <= end)
    }
}

/// Ends every part of an identity key: a byte UTF-8 never contains, so no two identities share
/// a key.
const KEY_SEPARATOR: u8 = 0xff;

/// Writes the identity key of `name` + `labels` (sorted): each string followed by
/// [`KEY_SEPARATOR`].
fn identity_key<'a>(
    out: &mut Vec<u8>,
    name: &str,
    labels: impl Iterator<Item = (&'a str, &'a str)>,
) {
    out.extend_from_slice(name.as_bytes());
    out.push(KEY_SEPARATOR);
    for (n, v) in labels {
        out.extend_from_slice(n.as_bytes());
        out.push(KEY_SEPARATOR);
        out.extend_from_slice(v.as_bytes());
        out.push(KEY_SEPARATOR);
    }
}

/// WAL ref -> slot. Refs are handed out densely from 1, so a vector indexed by ref answers in
/// one memory access (the per-sample lookup of every commit); a ref far beyond the others
/// (only an old or damaged WAL has one) goes to a map instead of growing the vector.
#[derive(Debug, Default)]
struct RefIndex {
    dense: Vec<Slot>,
    sparse: HashMap<u64, Slot, BuildIdHasher>,
}

impl RefIndex {
    const NONE: Slot = Slot::MAX;
    /// How far past the end of `dense` a ref may be and still grow it.
    const MAX_GAP: u64 = 1 << 20;

    fn get(&self, sref: u64) -> Option<Slot> {
        match usize::try_from(sref).ok().and_then(|i| self.dense.get(i)) {
            Some(&slot) if slot != Self::NONE => Some(slot),
            Some(_) => None,
            None => self.sparse.get(&sref).copied(),
        }
    }

    fn insert(&mut self, sref: u64, slot: Slot) {
        let len = self.dense.len() as u64;
        if sref < len.saturating_add(Self::MAX_GAP)
            && let Ok(i) = usize::try_from(sref)
        {
            if i >= self.dense.len() {
                self.dense.resize(i + 1, Self::NONE);
            }
            self.dense[i] = slot;
        } else {
            self.sparse.insert(sref, slot);
        }
    }
}

/// Why a SERIES entry could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SeriesConflict {
    #[error("ref {sref} names {existing} but the WAL now says {new}")]
    RefReused {
        sref: u64,
        existing: String,
        new: String,
    },
    #[error("more than {} series", Slot::MAX)]
    Full,
}

/// The in-memory series and their index.
#[derive(Debug)]
pub(crate) struct Head {
    series: Vec<MemSeries>,
    refs: RefIndex,
    by_hash: HashMap<u64, Slot, BuildIdHasher>,
    /// Slots whose identity hash equals that of the slot in `by_hash` under the same key.
    collisions: HashMap<u64, Vec<Slot>, BuildIdHasher>,
    postings: Postings,
    /// Seeded per process (foldhash): series identities come from senders, so the hash must not
    /// be predictable; SipHash was a sixth of the ingest CPU.
    hasher: foldhash::fast::RandomState,
    next_ref: u64,
    samples: u64,
    /// Appends of older samples are refused: they belong to a block already cut.
    min_valid_t: i64,
    /// Queries see only samples from here on; older ones are in blocks (the head may still
    /// hold some, in chunks that straddle the cut).
    min_query_t: i64,
    /// Newest sample timestamp appended (`i64::MIN` for none).
    max_t: i64,
    /// Bytes of every series' name and labels (for the memory self-metric).
    label_bytes: u64,
    /// How much older than its series' newest sample a sample may be and still be stored, ms.
    ooo_window: i64,
}

impl Default for Head {
    fn default() -> Self {
        Self::new()
    }
}

impl Head {
    pub(crate) fn new() -> Self {
        Self {
            series: Vec::new(),
            refs: RefIndex::default(),
            by_hash: HashMap::default(),
            collisions: HashMap::default(),
            postings: Postings::default(),
            hasher: foldhash::fast::RandomState::default(),
            next_ref: 1,
            samples: 0,
            min_valid_t: i64::MIN,
            min_query_t: i64::MIN,
            max_t: i64::MIN,
            label_bytes: 0,
            ooo_window: 0,
        }
    }

    pub(crate) fn series_count(&self) -> u64 {
        self.series.len() as u64
    }

    pub(crate) fn sample_count(&self) -> u64 {
        self.samples
    }

    pub(crate) fn get(&self, slot: Slot) -> Option<&MemSeries> {
        self.series.get(slot as usize)
    }

    /// Hash of a series identity. Labels must come sorted, as in a [`Series`] or a batch.
    pub(crate) fn identity_hash<'a>(
        &self,
        name: &str,
        labels: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
    ) -> u64 {
        let mut h = self.hasher.build_hasher();
        // `str::hash` ends each string with 0xff, which UTF-8 never contains: no ambiguity.
        name.hash(&mut h);
        h.write_usize(labels.len());
        for (n, v) in labels {
            n.hash(&mut h);
            v.hash(&mut h);
        }
        h.finish()
    }

    /// The slot of series `name` + `labels()` whose identity hashes to `hash`.
    pub(crate) fn lookup<'a, I>(
        &self,
        hash: u64,
        name: &str,
        labels: impl Fn() -> I,
    ) -> Option<Slot>
    where
        I: ExactSizeIterator<Item = (&'a str, &'a str)>,
    {
        let is = |slot: Slot| self.get(slot).is_some_and(|s| s.is(name, labels()));
        let first = *self.by_hash.get(&hash)?;
        if is(first) {
            return Some(first);
        }
        self.collisions.get(&hash)?.iter().copied().find(|&s| is(s))
    }

    /// Finds or creates (with a fresh ref, not yet logged) the series for an append.
    pub(crate) fn get_or_create<'a, I>(
        &mut self,
        hash: u64,
        name: &str,
        labels: impl Fn() -> I,
    ) -> Result<Slot, SeriesConflict>
    where
        I: ExactSizeIterator<Item = (&'a str, &'a str)>,
    {
        if let Some(slot) = self.lookup(hash, name, &labels) {
            return Ok(slot);
        }
        let series = Series {
            name: name.to_owned(),
            labels: labels().map(|(n, v)| Label::new(n, v)).collect(),
        };
        let sref = self.next_ref;
        self.create(hash, series, sref, false)
    }

    fn create(
        &mut self,
        hash: u64,
        series: Series,
        sref: u64,
        logged: bool,
    ) -> Result<Slot, SeriesConflict> {
        let slot = Slot::try_from(self.series.len()).map_err(|_| SeriesConflict::Full)?;
        self.index(slot, METRIC_NAME_LABEL, &series.name);
        for l in &series.labels {
            self.index(slot, &l.name, &l.value);
        }
        match self.by_hash.get(&hash) {
            None => {
                self.by_hash.insert(hash, slot);
            }
            Some(_) => self.collisions.entry(hash).or_default().push(slot),
        }
        self.refs.insert(sref, slot);
        self.next_ref = self.next_ref.max(sref.saturating_add(1));
        self.label_bytes += (series.name.len()
            + series
                .labels
                .iter()
                .map(|l| l.name.len() + l.value.len())
                .sum::<usize>()) as u64;
        self.series.push(MemSeries::new(series, sref, logged));
        Ok(slot)
    }

    fn index(&mut self, slot: Slot, name: &str, value: &str) {
        self.postings.add(slot, name, value);
    }

    /// Applies a SERIES entry from the WAL: creates the series under `sref` (at replay), or
    /// marks it durable (after the group commit that carried it).
    pub(crate) fn apply_series(
        &mut self,
        sref: u64,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<Slot, SeriesConflict> {
        if let Some(slot) = self.refs.get(sref) {
            let Some(s) = self.series.get_mut(slot as usize) else {
                return Err(SeriesConflict::Full);
            };
            if !s.is(name, labels.iter().copied()) {
                return Err(SeriesConflict::RefReused {
                    sref,
                    existing: s.series.to_string(),
                    new: Series::new(name, labels.iter().copied()).to_string(),
                });
            }
            s.logged = true;
            return Ok(slot);
        }
        let hash = self.identity_hash(name, labels.iter().copied());
        if let Some(slot) = self.lookup(hash, name, || labels.iter().copied()) {
            self.refs.insert(sref, slot);
            self.next_ref = self.next_ref.max(sref.saturating_add(1));
            if let Some(s) = self.series.get_mut(slot as usize) {
                s.logged = true;
            }
            return Ok(slot);
        }
        let series = Series {
            name: name.to_owned(),
            labels: labels.iter().map(|&(n, v)| Label::new(n, v)).collect(),
        };
        self.create(hash, series, sref, true)
    }

    pub(crate) fn slot_of_ref(&self, sref: u64) -> Option<Slot> {
        self.refs.get(sref)
    }

    /// Appends a sample to a series, if it is new.
    pub(crate) fn append(&mut self, slot: Slot, t: i64, v: f64) -> Verdict {
        let Some(s) = self.series.get(slot as usize) else {
            return Verdict::OutOfOrder;
        };
        let verdict = self.classify(s, t, v.to_bits());
        if verdict == Verdict::Append
            && let Some(s) = self.series.get_mut(slot as usize)
        {
            s.insert(t, v);
            self.samples += 1;
            self.max_t = self.max_t.max(t);
        }
        verdict
    }

    /// What appending (`t`, `bits`) to `s` would do: older than the last block cut is out of
    /// order; otherwise the series decides, within the out-of-order window.
    pub(crate) fn classify(&self, s: &MemSeries, t: i64, bits: u64) -> Verdict {
        if t < self.min_valid_t {
            return Verdict::OutOfOrder;
        }
        s.classify(t, bits, self.ooo_window)
    }

    /// Accept samples up to `ms` older than their series' newest sample.
    pub(crate) fn set_out_of_order_window(&mut self, ms: i64) {
        self.ooo_window = ms.max(0);
    }

    /// Appends of samples older than this are refused (see [`Head::cut_below`]).
    pub(crate) fn min_valid_t(&self) -> i64 {
        self.min_valid_t
    }

    /// The oldest sample the head serves and the newest, if it holds any.
    pub(crate) fn time_range(&self) -> Option<(i64, i64)> {
        if self.max_t == i64::MIN {
            return None;
        }
        let floor = self.min_query_t;
        let min = self
            .series
            .iter()
            .filter_map(|s| s.first_at_or_after(floor))
            .min()?;
        Some((min, self.max_t))
    }

    /// First step of cutting a block: from now on samples older than `t` are refused, so
    /// what the head holds below `t` no longer changes and can be copied into a block.
    pub(crate) fn cut_below(&mut self, t: i64) {
        self.min_valid_t = self.min_valid_t.max(t);
    }

    /// The series of `slots` with samples in `[start, end]` (that the head serves), with them.
    pub(crate) fn series_samples(
        &self,
        slots: impl IntoIterator<Item = Slot>,
        start: i64,
        end: i64,
    ) -> Vec<(Series, Vec<Sample>)> {
        slots
            .into_iter()
            .filter_map(|slot| self.get(slot))
            .filter_map(|s| {
                let samples = s.samples_in(start.max(self.min_query_t), end);
                (!samples.is_empty()).then(|| (s.series.clone(), samples))
            })
            .collect()
    }

    /// Last step of cutting a block, once it is on disk and queryable: queries stop reading
    /// the head below `t`, and chunks wholly below it are freed.
    pub(crate) fn truncate_below(&mut self, t: i64) {
        self.cut_below(t);
        self.min_query_t = self.min_query_t.max(t);
        let mut dropped = 0u64;
        for s in &mut self.series {
            dropped += s.drop_chunks_below(t);
        }
        self.samples = self.samples.saturating_sub(dropped);
    }

    /// Bytes of the series identities (names and labels), for the memory self-metric.
    pub(crate) fn label_bytes(&self) -> u64 {
        self.label_bytes
    }

    /// Bytes of sample data the head holds (chunk bytes), for the memory self-metric.
    pub(crate) fn chunk_bytes(&self) -> u64 {
        self.series.iter().map(MemSeries::chunk_bytes).sum()
    }

    // -----------------------------------------------------------------------------------------
    // Queries

    /// Slots of the series matching every matcher, ascending (all series for no matchers).
    pub(crate) fn matching(&self, matchers: &[Matcher]) -> Vec<Slot> {
        self.postings.matching(matchers, self.series.len() as Slot)
    }

    /// Matching series with at least one sample in `[start, end]`, in slot order.
    fn live<'h>(
        &'h self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> impl Iterator<Item = &'h MemSeries> {
        let start = start.max(self.min_query_t);
        self.matching(matchers)
            .into_iter()
            .filter_map(|slot| self.get(slot))
            .filter(move |s| s.has_samples_in(start, end))
    }

    pub(crate) fn select(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Vec<(Series, Vec<Sample>)> {
        let mut out = self.series_samples(self.matching(matchers), start, end);
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The identities of the series [`Head::series`] returns, unsorted and borrowed.
    pub(crate) fn live_series<'h>(
        &'h self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> impl Iterator<Item = &'h Series> {
        self.live(matchers, start, end).map(|s| &s.series)
    }

    pub(crate) fn series(&self, matchers: &[Matcher], start: i64, end: i64) -> Vec<Series> {
        let mut out: Vec<Series> = self.live_series(matchers, start, end).cloned().collect();
        out.sort_unstable();
        out
    }

    pub(crate) fn label_names(&self, matchers: &[Matcher], start: i64, end: i64) -> Vec<String> {
        let mut names: BTreeSet<&str> = BTreeSet::new();
        for s in self.live(matchers, start, end) {
            names.insert(METRIC_NAME_LABEL);
            names.extend(s.series.labels.iter().map(|l| l.name.as_str()));
        }
        names.into_iter().map(str::to_owned).collect()
    }

    pub(crate) fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        start: i64,
        end: i64,
    ) -> Vec<String> {
        let Some(values) = self.postings.values_of(name) else {
            return Vec::new();
        };
        let candidates = (!matchers.is_empty()).then(|| self.matching(matchers));
        let mut out: Vec<String> = values
            .iter()
            .filter(|(_, slots)| {
                slots.iter().any(|&slot| {
                    candidates
                        .as_ref()
                        .is_none_or(|c| c.binary_search(&slot).is_ok())
                        && self
                            .get(slot)
                            .is_some_and(|s| s.has_samples_in(start.max(self.min_query_t), end))
                })
            })
            .map(|(v, _)| v.clone())
            .collect();
        out.sort_unstable();
        out
    }
}

/// Hasher for keys that are ids or already hashes: one multiply, which keeps distinct keys
/// distinct in the low bits (bucket) and spreads them into the high bits (hashbrown's tag).
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

type BuildIdHasher = BuildHasherDefault<IdHasher>;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0 ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(head: &mut Head, name: &str, labels: &[(&'static str, &'static str)]) -> Slot {
        let hash = head.identity_hash(name, labels.iter().copied());
        head.get_or_create(hash, name, || labels.iter().copied())
            .unwrap()
    }

    #[test]
    fn lookup_by_identity_finds_the_same_slot() {
        let mut head = Head::new();
        let a = add(&mut head, "up", &[("job", "api")]);
        let b = add(&mut head, "up", &[("job", "db")]);
        let c = add(&mut head, "up", &[]);
        assert_eq!((a, b, c), (0, 1, 2));
        assert_eq!(add(&mut head, "up", &[("job", "api")]), a);
        assert_eq!(head.series_count(), 3);
        assert_eq!(head.get(a).unwrap().wal_ref, 1);
        assert!(!head.get(a).unwrap().logged);
    }

    #[test]
    fn identity_comparison_is_exact() {
        let mut head = Head::new();
        let slot = add(&mut head, "up", &[("job", "api"), ("zone", "a")]);
        let s = head.get(slot).unwrap();
        assert!(s.is("up", [("job", "api"), ("zone", "a")].into_iter()));
        // A prefix, an extension, moved boundaries, another order: all different series.
        assert!(!s.is("up", [("job", "api")].into_iter()));
        assert!(!s.is("up", [("job", "api"), ("zone", "a"), ("x", "")].into_iter()));
        assert!(!s.is("upj", [("ob", "api"), ("zone", "a")].into_iter()));
        assert!(!s.is("up", [("job", "apiz"), ("one", "a")].into_iter()));
        assert!(!s.is("up", [("zone", "a"), ("job", "api")].into_iter()));
        assert!(!s.is("u", [("job", "api"), ("zone", "a")].into_iter()));
        let empty = add(&mut head, "", &[]);
        assert!(head.get(empty).unwrap().is("", std::iter::empty()));
        assert!(!head.get(empty).unwrap().is("", [("", "")].into_iter()));
    }

    #[test]
    fn refs_dense_and_far_apart_are_both_found() {
        let mut refs = RefIndex::default();
        refs.insert(1, 10);
        refs.insert(5, 50);
        refs.insert(u64::MAX, 7);
        refs.insert(1 << 40, 8);
        assert_eq!(refs.get(1), Some(10));
        assert_eq!(refs.get(5), Some(50));
        assert_eq!(refs.get(3), None);
        assert_eq!(refs.get(0), None);
        assert_eq!(refs.get(u64::MAX), Some(7));
        assert_eq!(refs.get(1 << 40), Some(8));
        assert_eq!(refs.get(6), None);
        // The far refs did not grow the vector.
        assert!(refs.dense.len() <= 6);
        refs.insert(1, 11);
        assert_eq!(refs.get(1), Some(11));
    }

    #[test]
    fn hash_collisions_are_told_apart() {
        let mut head = Head::new();
        let labels_a = [("x", "1")];
        let labels_b = [("x", "2")];
        // Force both series under one hash.
        let a = head
            .get_or_create(42, "m", || labels_a.iter().copied())
            .unwrap();
        let b = head
            .get_or_create(42, "m", || labels_b.iter().copied())
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(head.lookup(42, "m", || labels_a.iter().copied()), Some(a));
        assert_eq!(head.lookup(42, "m", || labels_b.iter().copied()), Some(b));
        assert_eq!(head.lookup(42, "m", || [("x", "3")].into_iter()), None);
    }

    #[test]
    fn verdicts_cover_duplicates_conflicts_and_out_of_order() {
        let mut head = Head::new();
        let s = add(&mut head, "m", &[]);
        for t in 0..300 {
            assert_eq!(head.append(s, t * 10, t as f64), Verdict::Append);
        }
        assert_eq!(head.sample_count(), 300);
        // Newest sample again, and samples in sealed and open chunks.
        for t in [299, 0, 5, 119, 120, 250] {
            assert_eq!(
                head.append(s, t * 10, t as f64),
                Verdict::Duplicate,
                "t={t}"
            );
            assert_eq!(head.append(s, t * 10, -1.0), Verdict::Conflict, "t={t}");
        }
        assert_eq!(head.append(s, 15, 1.0), Verdict::OutOfOrder);
        assert_eq!(head.append(s, -5, 1.0), Verdict::OutOfOrder);
        assert_eq!(head.sample_count(), 300);
        let series = head.get(s).unwrap();
        assert_eq!(series.sealed.len(), 2);
        let all = series.samples_in(i64::MIN, i64::MAX);
        assert_eq!(all.len(), 300);
        assert!(
            all.windows(2)
                .all(|w| w[0].timestamp_ms < w[1].timestamp_ms)
        );
    }

    #[test]
    fn nan_values_compare_bitwise() {
        let mut head = Head::new();
        let s = add(&mut head, "m", &[]);
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        assert_eq!(head.append(s, 1, stale), Verdict::Append);
        assert_eq!(head.append(s, 1, stale), Verdict::Duplicate);
        assert_eq!(head.append(s, 1, f64::NAN), Verdict::Conflict);
        assert_eq!(head.append(s, 2, 0.0), Verdict::Append);
        assert_eq!(head.append(s, 2, -0.0), Verdict::Conflict);
    }

    #[test]
    fn sealed_chunks_are_packed_when_smaller_and_read_alike() {
        let mut head = Head::new();
        let ints = add(&mut head, "ints", &[]);
        let thirds = add(&mut head, "thirds", &[]);
        for t in 0..500i64 {
            head.append(ints, t * 10_000, (t * 37 % 11 + t * 100) as f64);
            head.append(thirds, t * 10_000, t as f64 / 3.0);
        }
        let packed = head.get(ints).unwrap();
        let gorilla = head.get(thirds).unwrap();
        assert_eq!(packed.sealed.len(), 4);
        assert!(
            packed
                .sealed
                .iter()
                .all(|c| c.bytes[0] == super::super::packed::MARKER)
        );
        assert!(gorilla.sealed.iter().all(|c| c.bytes[0] == 0));
        for series in [packed, gorilla] {
            let mut all = Vec::new();
            series.scan_range(i64::MIN, i64::MAX, |s| {
                all.push(s);
                true
            });
            assert_eq!(all.len(), 500);
            for (start, end) in [
                (i64::MIN, i64::MAX),
                (0, 1_200_000),
                (1_195_000, 1_215_000),
                (1_200_001, 4_990_000),
                (-5, 0),
                (4_990_000, 4_990_000),
            ] {
                let want: Vec<(i64, u64)> = all
                    .iter()
                    .filter(|s| (start..=end).contains(&s.timestamp_ms))
                    .map(|s| (s.timestamp_ms, s.value.to_bits()))
                    .collect();
                let got: Vec<(i64, u64)> = series
                    .samples_in(start, end)
                    .iter()
                    .map(|s| (s.timestamp_ms, s.value.to_bits()))
                    .collect();
                assert_eq!(got, want, "{start}..={end}");
            }
        }
        // Packed chunks take less memory.
        assert!(packed.chunk_bytes() * 2 < gorilla.chunk_bytes());
    }

    #[test]
    fn range_scans_respect_bounds() {
        let mut head = Head::new();
        let s = add(&mut head, "m", &[]);
        for t in 0..500 {
            head.append(s, t * 10, t as f64);
        }
        let series = head.get(s).unwrap();
        let got = series.samples_in(1195, 1215);
        assert_eq!(
            got.iter().map(|s| s.timestamp_ms).collect::<Vec<_>>(),
            [1200, 1210]
        );
        assert!(series.has_samples_in(4990, 10_000));
        assert!(!series.has_samples_in(4991, 10_000));
        assert!(!series.has_samples_in(1201, 1209));
        assert!(series.samples_in(10, 5).is_empty());
        // Whether a range holds samples agrees with reading them, for ranges inside a chunk,
        // across chunk edges and between samples, with out-of-order samples too.
        let mut head2 = Head::new();
        head2.set_out_of_order_window(2000);
        let s2 = add(&mut head2, "m", &[]);
        for t in (0..300).filter(|t| t % 37 != 5) {
            head2.append(s2, t * 10, t as f64);
        }
        for t in [55, 425, 1235] {
            assert_eq!(head2.append(s2, 2990 - t, 0.5), Verdict::Append);
        }
        for series in [series, head2.get(s2).unwrap()] {
            for start in (-20..3100).step_by(7) {
                for len in [0, 3, 9, 10, 25, 1300, 4000] {
                    let end = start + len;
                    assert_eq!(
                        series.has_samples_in(start, end),
                        !series.samples_in(start, end).is_empty(),
                        "[{start}, {end}]"
                    );
                }
            }
        }
        // The room reserved covers what is read, over sealed and open chunks.
        for (start, end) in [
            (0, 5000),
            (1195, 1215),
            (-50, 3),
            (4000, 9999),
            (5000, 6000),
        ] {
            let n = series.samples_in(start, end).len();
            assert!(series.room_for(start, end) >= n, "[{start}, {end}]");
        }
        assert_eq!(series.room_for(10, 5), 0);
    }

    #[test]
    fn postings_evaluate_every_matcher_kind() {
        let mut head = Head::new();
        let a = add(
            &mut head,
            "http_requests_total",
            &[("code", "200"), ("job", "api")],
        );
        let b = add(
            &mut head,
            "http_requests_total",
            &[("code", "500"), ("job", "api")],
        );
        let c = add(&mut head, "http_requests_total", &[("job", "db")]);
        let d = add(&mut head, "up", &[("job", "api")]);
        let m = |ms: &[Matcher]| head.matching(ms);
        assert_eq!(m(&[]), [a, b, c, d]);
        assert_eq!(m(&[Matcher::equal("__name__", "up")]), [d]);
        assert_eq!(
            m(&[Matcher::equal("job", "api"), Matcher::equal("code", "500")]),
            [b]
        );
        assert_eq!(m(&[Matcher::not_equal("code", "500")]), [a, c, d]);
        assert_eq!(m(&[Matcher::equal("code", "")]), [c, d]);
        assert_eq!(m(&[Matcher::not_equal("code", "")]), [a, b]);
        assert_eq!(m(&[Matcher::regex("code", "2..|5..").unwrap()]), [a, b]);
        assert_eq!(m(&[Matcher::regex("code", "5..|").unwrap()]), [b, c, d]);
        assert_eq!(m(&[Matcher::not_regex("code", "2..").unwrap()]), [b, c, d]);
        assert_eq!(
            m(&[
                Matcher::regex("__name__", "http_.*").unwrap(),
                Matcher::not_equal("job", "api")
            ]),
            [c]
        );
        assert_eq!(m(&[Matcher::equal("nope", "x")]), Vec::<Slot>::new());
        assert_eq!(m(&[Matcher::regex("job", ".*").unwrap()]), [a, b, c, d]);
    }

    #[test]
    fn apply_series_creates_marks_and_aliases() {
        let mut head = Head::new();
        let slot = head.apply_series(10, "up", &[("job", "api")]).unwrap();
        assert!(head.get(slot).unwrap().logged);
        assert_eq!(head.slot_of_ref(10), Some(slot));
        // A fresh series gets a ref past every ref seen.
        let next = add(&mut head, "up", &[("job", "db")]);
        assert_eq!(head.get(next).unwrap().wal_ref, 11);
        // The same identity under another ref becomes an alias.
        assert_eq!(head.apply_series(3, "up", &[("job", "api")]).unwrap(), slot);
        assert_eq!(head.slot_of_ref(3), Some(slot));
        // A ref reused for another identity is refused.
        assert!(matches!(
            head.apply_series(10, "down", &[]),
            Err(SeriesConflict::RefReused { .. })
        ));
    }
}
