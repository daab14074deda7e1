//! The sending side: [`pump`] takes units of records from the queue, splits each into shard
//! requests sent in parallel, retries per the shared rule, and acks the unit's records once
//! every shard is done. See the module docs of [`super`] for the ordering argument.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use hyper::{Request, StatusCode};
use sonde_common::remote_write;
use sonde_common::retry::{Backoff, Verdict, classify_status, error_chain, parse_retry_after};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{DrainOutcome, Inner, RemoteWriteSink, convert, record};
use crate::queue::{Record, RecordId};

const TENANT_HEADER: &str = "X-Scope-OrgID";
/// How much of an error answer is kept for the log.
const MAX_REASON_BYTES: usize = 1024;

/// A queue record, its batch prepared for sending ([`convert::prepare`]).
struct Decoded {
    id: RecordId,
    tenant: Option<String>,
    prepared: Bytes,
    samples: usize,
}

/// Consecutive records of one tenant, sent and acked together.
struct Unit {
    tenant: Option<String>,
    ids: Vec<RecordId>,
    prepared: Vec<Bytes>,
    samples: usize,
}

impl Unit {
    fn new(first: Decoded) -> Self {
        Self {
            tenant: first.tenant,
            ids: vec![first.id],
            prepared: vec![first.prepared],
            samples: first.samples,
        }
    }

    fn add(&mut self, d: Decoded) {
        self.ids.push(d.id);
        self.prepared.push(d.prepared);
        self.samples += d.samples;
    }
}

/// What one attempt came to.
#[derive(Debug)]
pub(super) enum Attempt {
    Delivered,
    Retry {
        outcome: &'static str,
        cause: String,
        retry_after: Option<Duration>,
    },
    Refused {
        outcome: &'static str,
        cause: String,
    },
}

/// Sends until the queue is closed or `hard_stop` fires; with `until`, waits for new records
/// while `until` is not cancelled, and once it is (or without it) stops when the queue has
/// nothing more to hand out.
pub(super) async fn pump(
    sink: &RemoteWriteSink,
    until: Option<&CancellationToken>,
    hard_stop: &CancellationToken,
) -> DrainOutcome {
    let inner = &sink.inner;
    let capacity = inner
        .cfg
        .max_samples_per_send
        .saturating_mul(inner.cfg.shards);
    let mut carry: Option<Decoded> = None;
    let emptied = loop {
        if hard_stop.is_cancelled() {
            break false;
        }
        let first = match carry.take() {
            Some(d) => d,
            None => {
                // Everything handed out so far is acked: the direct path may take over.
                if let Some(direct) = &inner.direct {
                    direct.resume_if_idle(inner);
                }
                let waiting = until.filter(|t| !t.is_cancelled());
                let record = match waiting {
                    Some(token) => tokio::select! {
                        biased;
                        _ = hard_stop.cancelled() => break false,
                        _ = token.cancelled() => continue,
                        r = inner.queue.next() => r,
                    },
                    None => inner.queue.try_next().await,
                };
                let Some(record) = record else {
                    // Closed while waiting, or nothing left while draining.
                    break waiting.is_none();
                };
                match decode(inner, record) {
                    Some(d) => d,
                    None => continue,
                }
            }
        };
        // Linger for more records only while running: a drain sends what there is.
        let linger = until
            .filter(|t| !t.is_cancelled())
            .map(|t| (t, tokio::time::Instant::now() + inner.cfg.flush_interval));
        let (unit, rest) = gather(inner, first, capacity, linger, hard_stop).await;
        carry = rest;
        if !deliver(inner, unit, hard_stop).await {
            break false;
        }
    };
    DrainOutcome {
        emptied,
        records_left: inner.queue.stats().records,
    }
}

/// A record as the sender needs it: its batch prepared at enqueue when the record came
/// straight from memory, else decoded from the record and prepared here.
fn decode(inner: &Inner, record: Record) -> Option<Decoded> {
    let max = inner.cfg.max_samples_per_send;
    let decoded = match record.companion {
        Some(prepared) => record::split(&record.data).map(|(tenant, _)| (tenant, prepared)),
        None => record::decode(&record.data)
            .map(|(tenant, batch)| (tenant, Bytes::from(convert::prepare(&batch, max)))),
    };
    match decoded {
        Ok((tenant, prepared)) => Some(Decoded {
            id: record.id,
            tenant,
            samples: convert::prepared_samples(&prepared),
            prepared,
        }),
        Err(e) => {
            // Retrying cannot help; keeping it would stop the queue for good.
            inner.stats.undecodable_records.inc();
            tracing::error!(
                position = %record.id.position(),
                "dropping a remote-write queue record that cannot be decoded: {e}"
            );
            inner.queue.ack(record.id);
            None
        }
    }
}

/// Adds records to `first`'s unit, up to `capacity` samples and while the tenant stays the
/// same; the record that does not fit is returned for the next unit. Takes the records already
/// readable; with `linger`, a unit still short of `capacity` then sleeps until its deadline
/// (the flush interval after its first record; the token's cancellation or a hard stop end the
/// wait early) and takes what became readable meanwhile. It sleeps rather than waking for each
/// record, so a steady stream of small batches costs one wake-up per unit and leaves as few
/// large requests.
async fn gather(
    inner: &Inner,
    first: Decoded,
    capacity: usize,
    mut linger: Option<(&CancellationToken, tokio::time::Instant)>,
    hard_stop: &CancellationToken,
) -> (Unit, Option<Decoded>) {
    let mut unit = Unit::new(first);
    loop {
        while unit.samples < capacity {
            let Some(record) = inner.queue.try_next().await else {
                break;
            };
            let Some(d) = decode(inner, record) else {
                continue;
            };
            if d.tenant != unit.tenant || unit.samples + d.samples > capacity {
                return (unit, Some(d));
            }
            unit.add(d);
        }
        let Some((until, deadline)) = linger.take().filter(|_| unit.samples < capacity) else {
            return (unit, None);
        };
        tokio::select! {
            biased;
            _ = hard_stop.cancelled() => return (unit, None),
            _ = until.cancelled() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Sends a unit; acks its records and returns true once every shard is done, false if
/// `hard_stop` fired first (nothing acked: it is all sent again later).
async fn deliver(inner: &Arc<Inner>, unit: Unit, hard_stop: &CancellationToken) -> bool {
    let shards = convert::assemble(
        unit.prepared.iter().map(|p| &p[..]),
        inner.cfg.shards,
        inner.cfg.max_samples_per_send,
    );
    let mut tasks = JoinSet::new();
    for requests in shards.into_iter().filter(|s| !s.is_empty()) {
        let (inner, tenant, hard_stop) = (inner.clone(), unit.tenant.clone(), hard_stop.clone());
        tasks.spawn(
            async move { send_shard(&inner, requests, tenant.as_deref(), &hard_stop).await },
        );
    }
    let mut complete = true;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(true) => {}
            Ok(false) => complete = false,
            Err(e) => {
                tracing::error!("remote-write shard task failed: {e}");
                complete = false;
            }
        }
    }
    if complete {
        for id in unit.ids {
            inner.queue.ack(id);
        }
    }
    complete
}

/// Sends one shard's requests in order, each until it is acknowledged or refused for good.
async fn send_shard(
    inner: &Inner,
    requests: Vec<(Vec<u8>, usize)>,
    tenant: Option<&str>,
    hard_stop: &CancellationToken,
) -> bool {
    let url = &inner.cfg.url;
    for (raw, samples) in requests {
        let body = Bytes::from(remote_write::compress(&raw));
        drop(raw);
        let mut backoff = Backoff::new(inner.cfg.min_backoff, inner.cfg.max_backoff);
        loop {
            let started = Instant::now();
            let attempt = tokio::select! {
                biased;
                _ = hard_stop.cancelled() => return false,
                a = attempt(inner, body.clone(), tenant) => a,
            };
            match attempt {
                Attempt::Delivered => {
                    delivered(inner, samples, body.len(), started);
                    break;
                }
                Attempt::Retry {
                    outcome,
                    cause,
                    retry_after,
                } => {
                    inner.stats.requests.add(outcome, 1);
                    inner.stats.retries.inc();
                    let delay = backoff.next_delay(retry_after);
                    if inner.stats.should_log() {
                        tracing::warn!(
                            %url,
                            samples,
                            attempts = backoff.attempts(),
                            "cannot send samples to remote storage: {cause}; retrying in {delay:?}"
                        );
                    }
                    tokio::select! {
                        biased;
                        _ = hard_stop.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Attempt::Refused { outcome, cause } => {
                    refused(inner, outcome, samples, &cause);
                    break;
                }
            }
        }
    }
    true
}

/// Counts a request the storage acknowledged.
pub(super) fn delivered(inner: &Inner, samples: usize, body_bytes: usize, started: Instant) {
    inner.stats.requests.add("2xx", 1);
    inner.stats.sent(samples, body_bytes, started.elapsed());
}

/// Counts and logs (rate-limited) a request the storage refused for good: its samples are
/// dropped, since retrying cannot help.
pub(super) fn refused(inner: &Inner, outcome: &'static str, samples: usize, cause: &str) {
    inner.stats.requests.add(outcome, 1);
    inner.stats.samples_dropped.add("rejected", samples as u64);
    if inner.stats.should_log() {
        tracing::warn!(
            url = %inner.cfg.url,
            samples,
            "remote storage refused samples for good, dropping them: {cause}"
        );
    }
}

pub(super) async fn attempt(inner: &Inner, body: Bytes, tenant: Option<&str>) -> Attempt {
    let timeout = inner.cfg.timeout;
    let mut req = Request::post(inner.cfg.url.clone())
        .header(CONTENT_TYPE, remote_write::CONTENT_TYPE)
        .header(CONTENT_ENCODING, remote_write::CONTENT_ENCODING)
        .header(remote_write::VERSION_HEADER, remote_write::VERSION)
        .header(USER_AGENT, &inner.user_agent);
    if let Some(tenant) = tenant {
        req = req.header(TENANT_HEADER, tenant);
    }
    let req = match req.body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => {
            return Attempt::Refused {
                outcome: "invalid_request",
                cause: format!("cannot build request: {e}"),
            };
        }
    };
    let resp = match tokio::time::timeout(timeout, inner.client.request(req)).await {
        Err(_) => {
            return Attempt::Retry {
                outcome: "timeout",
                cause: format!("no answer within {timeout:?}"),
                retry_after: None,
            };
        }
        Ok(Err(e)) => {
            return Attempt::Retry {
                outcome: "network",
                cause: error_chain(&e),
                retry_after: None,
            };
        }
        Ok(Ok(resp)) => resp,
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let verdict = classify_status(status.as_u16());
    // A success's body is read to its end so the connection is reused; an error's only as far
    // as the reason kept for the log.
    let success = verdict == Verdict::Success;
    let reason = match tokio::time::timeout(timeout, read_reason(resp.into_body(), success)).await {
        Ok(text) => text,
        Err(_) if success => String::new(),
        Err(_) => "(no reason given in time)".to_owned(),
    };
    let cause = || format!("HTTP {}: {}", status.as_u16(), reason.trim());
    match verdict {
        Verdict::Success => Attempt::Delivered,
        Verdict::Retry => Attempt::Retry {
            outcome: if status == StatusCode::TOO_MANY_REQUESTS {
                "429"
            } else {
                "5xx"
            },
            cause: cause(),
            retry_after,
        },
        Verdict::Permanent => Attempt::Refused {
            outcome: match status.as_u16() {
                300..=399 => "3xx",
                400..=499 => "4xx",
                _ => "other",
            },
            cause: cause(),
        },
    }
}

/// The first [`MAX_REASON_BYTES`] of a body, as text; with `to_end`, reads (and discards)
/// the rest too.
async fn read_reason(mut body: hyper::body::Incoming, to_end: bool) -> String {
    let mut out = Vec::new();
    while to_end || out.len() < MAX_REASON_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = MAX_REASON_BYTES.saturating_sub(out.len());
                    out.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
