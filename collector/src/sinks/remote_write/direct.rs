//! The direct path: while the storage keeps up, a batch is forwarded before the collector
//! answers, and the disk queue is not touched; when it does not, the sink falls back to the
//! queue until the queue has drained.
//!
//! # Modes
//! - `Direct`: [`Direct::submit`] adds the batch (prepared for sending at enqueue) to the
//!   pending list and waits. The sender ([`Direct::run`]) waits `wait` after the first pending
//!   batch for others to share its request (group commit, as the WAL does with its fsync), takes
//!   up to `max_samples_per_send x shards` samples of them as a *group*, and sends it, one
//!   attempt per request within `timeout`: a group of up to `max_samples_per_send` samples (per
//!   tenant) as one request, whose body is the batches' prepared fields compressed part by
//!   part ([`remote_write::compress_parts`]: no copy of them is joined), a larger one as a
//!   request per `max_samples_per_send` samples, dealt to shards by series hash as the queue's
//!   sender does. Once every request is answered 2xx (or
//!   refused for good with a 4xx: dropped and counted, as the queue's sender does), each
//!   batch's push gets its answer: the storage holds it. One group is in flight at a time; the
//!   batches arriving meanwhile form the next one.
//! - `Spilling`: a request of the group failed in a retryable way (5xx, 429, network, or no
//!   answer within `timeout`). The group, then every batch pending behind it, are pushed to
//!   the disk queue in order, as one unit, and their pushes answered with the queue's verdict
//!   (durable, or full: 429). Batches submitted meanwhile wait for the spill to end, so none
//!   overtakes it.
//! - `Queue`: batches go to the disk queue, as with the direct path off; the queue's sender
//!   delivers them with its retries. Once the queue holds nothing (every record acked) and no
//!   push into it is under way, [`Direct::resume_if_idle`] switches back to `Direct`.
//!
//! So a series' samples still reach the storage in order: a group is sent only when nothing
//! is queued, the queue is used only after the last group ended, and a group's series each go
//! to one request. A group that failed partway is sent again from the queue (at least once:
//! samples are idempotent, so the storage keeps one copy).
//!
//! The sink starts in `Queue` and turns `Direct` once its sender runs and its queue is empty;
//! at shutdown the direct sender sends what is pending and hands over to the queue, which the
//! drain then empties.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::send::{Attempt, attempt, delivered, refused};
use super::{Inner, SinkError, convert};
use sonde_common::remote_write;

/// The direct path's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectConfig {
    /// How long the sender waits after a batch arrives for others to share its request
    /// (default 20 ms). Adds up to that to a push's latency; under load it divides the
    /// requests, and their CPU on both sides, by the batches within it.
    pub wait: Duration,
    /// How long one request may take before its group falls back to the disk queue (default
    /// 2 s). Bounds the latency the storage adds to a push.
    pub timeout: Duration,
}

impl Default for DirectConfig {
    fn default() -> Self {
        Self {
            wait: Duration::from_millis(20),
            timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Direct,
    Spilling,
    Queue,
}

/// A batch as the sink holds it.
pub(super) struct Item {
    /// Validated ([`super::record::validate_tenant`]).
    pub(super) tenant: Option<Arc<str>>,
    /// What its queue record is made of, if it goes to the queue.
    pub(super) source: RecordSource,
    /// Its series encoded for remote write ([`convert::prepare`]).
    pub(super) prepared: Bytes,
    pub(super) samples: usize,
}

/// What a batch's queue record is made of.
pub(super) enum RecordSource {
    /// The native envelope as received: the record is made of it when needed.
    Envelope(Bytes),
    /// The record itself (a batch that came in another form, encoded at enqueue).
    Record(Bytes),
}

impl Item {
    /// The batch's queue record.
    pub(super) fn record(&self) -> Bytes {
        match &self.source {
            RecordSource::Envelope(envelope) => {
                super::record::encode_envelope(envelope, self.tenant.as_deref())
            }
            RecordSource::Record(record) => record.clone(),
        }
    }
}

/// A batch waiting for its group, and where its verdict goes.
struct Pending {
    item: Item,
    done: oneshot::Sender<Result<(), SinkError>>,
}

struct State {
    mode: Mode,
    /// The direct sender runs (between `run`'s start and its hand-over at shutdown).
    running: bool,
    pending: VecDeque<Pending>,
    /// Pushes into the disk queue under way in `Queue` mode.
    queue_pushes: usize,
}

/// What [`Direct::submit`] did with a batch.
pub(super) enum Submitted {
    /// The batch waits for its group: the receiver gets its verdict.
    Pending(oneshot::Receiver<Result<(), SinkError>>),
    /// The sink is in `Queue` mode: push the batch to the disk queue, then call
    /// [`Direct::queue_push_done`].
    Queue(Item),
}

pub(super) struct Direct {
    cfg: DirectConfig,
    state: Mutex<State>,
    /// Wakes the sender: a batch became pending.
    work: Notify,
    /// Wakes submitters waiting out a spill.
    spilled: Notify,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("cfg", &self.cfg)
            .field("mode", &self.state().mode)
            .finish()
    }
}

impl Direct {
    pub(super) fn new(cfg: DirectConfig) -> Self {
        Self {
            cfg,
            state: Mutex::new(State {
                mode: Mode::Queue,
                running: false,
                pending: VecDeque::new(),
                queue_pushes: 0,
            }),
            work: Notify::new(),
            spilled: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// True while batches are forwarded directly.
    pub(super) fn is_direct(&self) -> bool {
        self.state().mode == Mode::Direct
    }

    /// Hands a batch to the direct path, or back to the caller for the queue.
    pub(super) async fn submit(&self, item: Item) -> Submitted {
        loop {
            let spilled = self.spilled.notified();
            tokio::pin!(spilled);
            spilled.as_mut().enable();
            {
                let mut st = self.state();
                match st.mode {
                    Mode::Direct => {
                        let (done, verdict) = oneshot::channel();
                        st.pending.push_back(Pending { item, done });
                        if st.pending.len() == 1 {
                            self.work.notify_one();
                        }
                        return Submitted::Pending(verdict);
                    }
                    Mode::Queue => {
                        st.queue_pushes += 1;
                        return Submitted::Queue(item);
                    }
                    Mode::Spilling => {}
                }
            }
            spilled.await;
        }
    }

    /// A push into the queue that [`Submitted::Queue`] asked for has ended.
    pub(super) fn queue_push_done(&self, inner: &Inner) {
        self.state().queue_pushes -= 1;
        self.resume_if_idle(inner);
    }

    /// Switches back to `Direct` if the sender runs, the queue holds nothing and no push into
    /// it is under way.
    pub(super) fn resume_if_idle(&self, inner: &Inner) {
        let mut st = self.state();
        if st.mode == Mode::Queue
            && st.running
            && st.queue_pushes == 0
            && inner.queue.stats().records == 0
        {
            st.mode = Mode::Direct;
            tracing::debug!(url = %inner.cfg.url, "remote-write sink forwards directly again");
        }
    }

    /// The direct sender: runs until `shutdown`, then sends what is pending and hands over to
    /// the queue (see the module docs).
    pub(super) async fn run(&self, inner: &Arc<Inner>, shutdown: &CancellationToken) {
        self.state().running = true;
        self.resume_if_idle(inner);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = self.work.notified() => {}
            }
            if !self.cfg.wait.is_zero() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(self.cfg.wait) => {}
                }
            }
            while let Some(group) = self.take_group(inner) {
                self.forward(inner, group).await;
            }
        }
        // Shutdown: the last groups, then the queue takes over.
        loop {
            let group = {
                let mut st = self.state();
                let group = Self::take_from(&mut st, inner);
                if group.is_none() {
                    st.running = false;
                    if st.mode == Mode::Direct {
                        st.mode = Mode::Queue;
                    }
                }
                group
            };
            match group {
                Some(group) => self.forward(inner, group).await,
                None => break,
            }
        }
        self.spilled.notify_waiters();
    }

    fn take_group(&self, inner: &Inner) -> Option<Vec<Pending>> {
        Self::take_from(&mut self.state(), inner)
    }

    /// The oldest pending batches, up to the capacity of one round of requests (at least one).
    fn take_from(st: &mut State, inner: &Inner) -> Option<Vec<Pending>> {
        let capacity = inner
            .cfg
            .max_samples_per_send
            .saturating_mul(inner.cfg.shards);
        let mut samples = 0usize;
        let mut n = 0;
        for p in &st.pending {
            if n > 0 && samples + p.item.samples > capacity {
                break;
            }
            samples += p.item.samples;
            n += 1;
        }
        (n > 0).then(|| st.pending.drain(..n).collect())
    }

    /// Sends a group and answers its pushes, spilling it to the queue if it cannot be
    /// delivered now.
    async fn forward(&self, inner: &Arc<Inner>, group: Vec<Pending>) {
        if send_group(inner, &group, self.cfg.timeout).await {
            let samples: usize = group.iter().map(|p| p.item.samples).sum();
            inner.stats.batches_forwarded.add(group.len() as u64);
            inner.stats.samples_forwarded.add(samples as u64);
            for p in group {
                let _ = p.done.send(Ok(()));
            }
            return;
        }
        self.spill(inner, group).await;
    }

    /// Pushes `group` and everything pending behind it to the queue, in order, and answers
    /// their pushes with the queue's verdict; `Queue` mode from then on.
    async fn spill(&self, inner: &Inner, mut group: Vec<Pending>) {
        {
            let mut st = self.state();
            st.mode = Mode::Spilling;
            group.extend(st.pending.drain(..));
        }
        let samples: usize = group.iter().map(|p| p.item.samples).sum();
        let records: Vec<(Bytes, Option<Bytes>)> = group
            .iter()
            .map(|p| (p.item.record(), Some(p.item.prepared.clone())))
            .collect();
        let result = inner.queue.push_with(&records).await;
        inner.stats.spills.inc();
        inner.stats.queued(&result, group.len(), samples);
        match &result {
            Ok(()) => {
                tracing::warn!(
                    url = %inner.cfg.url,
                    batches = group.len(),
                    samples,
                    "remote storage did not take a group of batches in time; they are in the disk queue, and batches go through the queue until it has drained"
                );
            }
            Err(e) => {
                tracing::warn!(
                    url = %inner.cfg.url,
                    batches = group.len(),
                    samples,
                    "remote storage did not take a group of batches in time, and the disk queue refused them ({e}): their senders get an error and retry"
                );
            }
        }
        self.state().mode = Mode::Queue;
        self.spilled.notify_waiters();
        for p in group {
            let verdict = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(SinkError::Queue(e.replicate())),
            };
            let _ = p.done.send(verdict);
        }
        // A refused spill left the queue as it was: possibly empty.
        self.resume_if_idle(inner);
    }
}

/// Sends a group once: per tenant, its series dealt to as few shards as its size needs (at
/// most the sink's), each shard's requests one after another, the shards in parallel. True
/// when every request was answered 2xx or refused for good.
async fn send_group(inner: &Arc<Inner>, group: &[Pending], timeout: Duration) -> bool {
    let max = inner.cfg.max_samples_per_send;
    // Per tenant: its batches' prepared bytes and their samples.
    type Tenant<'a> = (Option<Arc<str>>, Vec<&'a [u8]>, usize);
    let mut tenants: Vec<Tenant<'_>> = Vec::new();
    for Pending { item: p, .. } in group {
        match tenants.iter_mut().find(|(t, _, _)| *t == p.tenant) {
            Some((_, prepared, samples)) => {
                prepared.push(&p.prepared);
                *samples += p.samples;
            }
            None => tenants.push((p.tenant.clone(), vec![&p.prepared], p.samples)),
        }
    }
    // Per tenant and shard: its requests, (compressed body, samples) each.
    type Part = (Option<Arc<str>>, Vec<(Bytes, usize)>);
    let mut parts: Vec<Part> = Vec::new();
    for (tenant, prepared, samples) in tenants {
        if samples <= max {
            // One request: the batches' fields as they are, compressed without joining them.
            let fields: Vec<&[u8]> = prepared.iter().map(|p| convert::fields(p)).collect();
            let body = Bytes::from(remote_write::compress_parts(&fields));
            parts.push((tenant, vec![(body, samples)]));
            continue;
        }
        let shards = samples.div_ceil(max).clamp(1, inner.cfg.shards);
        for requests in convert::assemble(prepared, shards, max) {
            if !requests.is_empty() {
                let requests = requests
                    .into_iter()
                    .map(|(raw, n)| (Bytes::from(remote_write::compress(&raw)), n))
                    .collect();
                parts.push((tenant.clone(), requests));
            }
        }
    }
    if parts.len() == 1 {
        let (tenant, requests) = parts.pop().unwrap_or_default();
        return send_requests(inner, requests, tenant.as_deref(), timeout).await;
    }
    let mut tasks = JoinSet::new();
    for (tenant, requests) in parts {
        let inner = inner.clone();
        tasks.spawn(
            async move { send_requests(&inner, requests, tenant.as_deref(), timeout).await },
        );
    }
    let mut delivered = true;
    while let Some(done) = tasks.join_next().await {
        delivered &= done.unwrap_or(false);
    }
    delivered
}

/// One shard's requests, in order, one attempt each; false at the first that may succeed
/// later (the group then spills).
async fn send_requests(
    inner: &Inner,
    requests: Vec<(Bytes, usize)>,
    tenant: Option<&str>,
    timeout: Duration,
) -> bool {
    for (body, samples) in requests {
        let started = Instant::now();
        let outcome =
            match tokio::time::timeout(timeout, attempt(inner, body.clone(), tenant)).await {
                Ok(a) => a,
                Err(_) => Attempt::Retry {
                    outcome: "timeout",
                    cause: format!("no answer within {timeout:?}"),
                    retry_after: None,
                },
            };
        match outcome {
            Attempt::Delivered => delivered(inner, samples, body.len(), started),
            Attempt::Retry { outcome, cause, .. } => {
                inner.stats.requests.add(outcome, 1);
                if inner.stats.should_log() {
                    tracing::warn!(
                        url = %inner.cfg.url,
                        samples,
                        "cannot forward samples to remote storage: {cause}; queueing them"
                    );
                }
                return false;
            }
            Attempt::Refused { outcome, cause } => refused(inner, outcome, samples, &cause),
        }
    }
    true
}
