//! The agent's pipeline: sources -> batch -> buffer -> push, and its shutdown order.
//!
//! Every interval the host source is read (on a blocking thread), the readings are cut into
//! one encoded batch and buffered; the pusher delivers buffered batches independently, so a slow
//! or absent collector never delays collection. On shutdown: stop collecting; keep pushing until
//! the buffer is empty or the shutdown timeout passes; count and log whatever is left.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batch::Batcher;
use crate::buffer::Buffer;
use crate::config::Config;
use crate::events::Events;
use crate::http;
use crate::push::Pusher;
use crate::sources::Reading;
use crate::sources::host::{HostError, HostSource};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("cannot start the host source: {0}")]
    Host(#[from] HostError),
    #[error("host source task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Runs the agent until `shutdown` is cancelled, then flushes (bounded by the configured
/// shutdown timeout) and returns. `http` serves self-metrics when given.
pub async fn run(
    config: Config,
    http_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let host_cfg = config.host.clone();
    let host = tokio::task::spawn_blocking(move || HostSource::new(host_cfg)).await??;
    let hostname = host.hostname().to_owned();
    let host = Arc::new(Mutex::new(host));
    let events = Arc::new(Events::default());
    let buffer = Arc::new(Buffer::new(config.buffer_bytes));
    let first_sequence = sonde_common::model::now_ms().max(0) as u64;
    let mut batcher = Batcher::new(hostname.clone(), first_sequence, config.push.compression);
    tracing::info!(host = %hostname, interval = ?config.interval, collectors = ?config.push.urls.iter().map(|u| u.to_string()).collect::<Vec<_>>(), "agent started");

    let tracker = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    let pusher = Pusher::new(config.push.clone(), events.clone());
    tracker.spawn(pusher.run(buffer.clone(), shutdown.clone(), hard_stop.clone()));
    if let Some(listener) = http_listener {
        tracker.spawn(http::serve(listener, events.clone(), hard_stop.clone()));
    }

    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut readings: Vec<Reading> = Vec::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let timestamp = sonde_common::model::now_ms();
        let started = Instant::now();
        let source = host.clone();
        let mut out = std::mem::take(&mut readings);
        let (out, stats) = tokio::task::spawn_blocking(move || {
            let mut source = source.lock().unwrap_or_else(|e| e.into_inner());
            let stats = source.collect(&mut out);
            (out, stats)
        })
        .await?;
        events.collected(started.elapsed(), &stats.errors);
        match batcher.cut(&out, timestamp) {
            Ok(Some(batch)) => {
                let dropped = buffer.push(batch);
                if !dropped.is_empty() {
                    events.dropped("buffer_full", &dropped, "the push buffer is full (collectors unreachable for long); dropped the oldest batches");
                }
                events.buffered(buffer.usage());
            }
            Ok(None) => {}
            Err(e) => events.dropped("encode_error", &[], &format!("cannot encode batch: {e}")),
        }
        readings = out;
        readings.clear();
    }

    tracing::info!(timeout = ?config.shutdown_timeout, buffered = ?buffer.usage(), "shutting down: delivering buffered batches");
    tracker.close();
    let deadline = tokio::time::sleep(config.shutdown_timeout);
    tokio::pin!(deadline);
    loop {
        // The pusher returns by itself once the buffer is empty (shutdown is cancelled).
        if buffer.usage().0 == 0 {
            break;
        }
        tokio::select! {
            _ = &mut deadline => break,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    hard_stop.cancel();
    tracker.wait().await;
    let left = buffer.drain();
    if !left.is_empty() {
        events.dropped(
            "shutdown",
            &left,
            "shutdown timeout reached before the collectors acknowledged these batches",
        );
    }
    tracing::info!("agent stopped");
    Ok(())
}
