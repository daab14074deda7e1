//! Group commit: the thread that owns the WAL files, and the one function that turns WAL
//! records into head changes, used both live (after each fsync) and at replay.
//!
//! The thread takes a request, waits the commit delay (default 3 ms) for more, takes every
//! request queued by then (up to [`MAX_GROUP_BYTES`]), writes them in order, fsyncs once, then applies the durable ones to the head under one write lock and
//! answers each caller. Because the head changes only here, in WAL order, and replay applies
//! the same records in the same order with the same function, the head after a restart holds
//! what it held before, down to which of two conflicting values was first.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::head::{Head, Slot, Verdict};
use super::wal::{self, DecodeError, Record, SegmentWriter};
use super::{AppendStats, StoreError};

/// A group stops growing past this many bytes (one fsync then covers up to this much).
const MAX_GROUP_BYTES: usize = 16 << 20;

/// One `append` call's records, and where to send its outcome.
#[derive(Debug)]
pub(crate) struct CommitRequest {
    pub(crate) records: Vec<u8>,
    pub(crate) reply: oneshot::Sender<Result<AppendStats, StoreError>>,
}

/// What applying records did, beyond [`AppendStats`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Applied {
    pub(crate) stats: AppendStats,
    /// Samples naming a series ref no SERIES record defined (lost to WAL damage).
    pub(crate) unknown_series: u64,
    /// SERIES entries that contradict an earlier one.
    pub(crate) bad_series: u64,
}

/// Applies one record's payload to the head.
pub(crate) fn apply_record(
    head: &mut Head,
    payload: &[u8],
    out: &mut Applied,
) -> Result<(), DecodeError> {
    match wal::decode(payload)? {
        Record::Series(entries) => {
            for entry in entries {
                let e = entry?;
                if let Err(conflict) = head.apply_series(e.sref, e.name, &e.labels) {
                    tracing::warn!("ignoring WAL series record: {conflict}");
                    out.bad_series += 1;
                }
            }
        }
        Record::Samples(entries) => {
            // Entries of one series come together: remember the last ref looked up.
            let mut cached: Option<(u64, Slot)> = None;
            for entry in entries {
                let e = entry?;
                let slot = match cached {
                    Some((sref, slot)) if sref == e.sref => slot,
                    _ => match head.slot_of_ref(e.sref) {
                        Some(slot) => {
                            cached = Some((e.sref, slot));
                            slot
                        }
                        None => {
                            out.unknown_series += 1;
                            continue;
                        }
                    },
                };
                append(head, slot, e.t, e.v, out);
            }
        }
        Record::Chunks(entries) => {
            for entry in entries {
                let e = entry?;
                let samples = super::decimal::iter(e.chunk);
                let Some(slot) = head.slot_of_ref(e.sref) else {
                    out.unknown_series += samples.count() as u64;
                    continue;
                };
                for s in samples {
                    append(head, slot, s.timestamp_ms, s.value, out);
                }
            }
        }
    }
    Ok(())
}

fn append(head: &mut Head, slot: Slot, t: i64, v: f64, out: &mut Applied) {
    match head.append(slot, t, v) {
        Verdict::Append => out.stats.appended += 1,
        Verdict::Duplicate => out.stats.duplicates += 1,
        Verdict::Conflict => out.stats.conflicts += 1,
        Verdict::OutOfOrder => out.stats.out_of_order += 1,
    }
}

/// Starts the commit thread. It exits once every sender is gone and the queue is drained,
/// releasing `dir_lock` (the store directory's lock) last.
pub(crate) fn spawn(
    writer: SegmentWriter,
    head: Arc<RwLock<Head>>,
    rx: mpsc::Receiver<CommitRequest>,
    dir_lock: File,
    delay: Duration,
    groups: Arc<AtomicU64>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sonde-store-wal".to_owned())
        .spawn(move || {
            run(writer, &head, rx, delay, &groups);
            drop(dir_lock);
        })
}

fn run(
    mut writer: SegmentWriter,
    head: &RwLock<Head>,
    mut rx: mpsc::Receiver<CommitRequest>,
    delay: Duration,
    groups: &AtomicU64,
) {
    let mut group: Vec<CommitRequest> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut bytes = first.records.len();
        group.push(first);
        if !delay.is_zero() {
            // Let the appends arriving meanwhile share this group's write and fsync.
            std::thread::sleep(delay);
        }
        while bytes < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.records.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        if commit(&mut writer, head, &mut group) {
            groups.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes, applies and answers a group; true if any of it was written.
fn commit(writer: &mut SegmentWriter, head: &RwLock<Head>, group: &mut Vec<CommitRequest>) -> bool {
    let outcome = writer.write_group(group.iter().map(|r| r.records.as_slice()));
    let mut results: Vec<Result<AppendStats, StoreError>> = Vec::with_capacity(group.len());
    if outcome.durable > 0 {
        let mut head = head.write().unwrap_or_else(PoisonError::into_inner);
        for request in group.iter().take(outcome.durable) {
            results.push(apply_request(&mut head, &request.records, writer));
        }
    }
    if let Some(error) = &outcome.error {
        tracing::error!(
            "cannot make {} append(s) durable: {error}",
            group.len() - outcome.durable
        );
        for _ in outcome.durable..group.len() {
            results.push(Err(error.replicate()));
        }
    }
    for (request, result) in group.drain(..).zip(results) {
        // The caller may have gone away (a cancelled request): its samples are stored anyway.
        let _ = request.reply.send(result);
    }
    outcome.durable > 0
}

fn apply_request(
    head: &mut Head,
    records: &[u8],
    writer: &SegmentWriter,
) -> Result<AppendStats, StoreError> {
    let mut applied = Applied::default();
    for frame in wal::frames(records) {
        let reason = match frame {
            Ok(payload) => match apply_record(head, payload, &mut applied) {
                Ok(()) => continue,
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_owned(),
        };
        // Only a bug gets here: these are the bytes this process just encoded.
        tracing::error!("cannot apply records just written to the WAL: {reason}");
        return Err(StoreError::Corrupt {
            path: writer.path(),
            reason,
        });
    }
    if applied.unknown_series > 0 || applied.bad_series > 0 {
        tracing::error!(
            unknown_series = applied.unknown_series,
            bad_series = applied.bad_series,
            "records just written to the WAL name unknown or conflicting series"
        );
    }
    Ok(applied.stats)
}
