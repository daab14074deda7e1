//! The loop of one owned target: wait for its slot, fetch, parse, append, write; at the end,
//! stale markers for everything it wrote, unless the collector is shutting down or a reload
//! replaces the loop (the series continue).
//!
//! Slots are aligned on wall-clock time: `k * interval + offset`, the offset a hash of the
//! target key. Every pool member computes the same slots, so during a hand-over the old and
//! the new owner scrape at the same moments.
//!
//! Writes, unlike scrapes, wait for a shared wall-clock tick ([`WRITE_TICK_MS`]): the store
//! makes each write durable with one fsync per group of writes queued together, and targets
//! spread over the interval would otherwise each pay their own. Nobody waits on a scraped
//! sample's acknowledgement, so the tick costs only visibility: a scraped sample is queryable
//! at most one tick later than it would be.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sonde_common::wire::Batch;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ScrapeSink;
use super::append::{self, SeriesCache};
use super::config::ScrapeJob;
use super::events::Stats;
use super::fetch::{self, HttpClient};
use super::target::{Target, stable_hash};

/// A target's health, as `/api/v1/targets` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Health {
    #[default]
    Unknown,
    Up,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// The latest scrape of a target.
#[derive(Debug, Clone, Default)]
pub struct TargetStatus {
    pub health: Health,
    pub last_error: String,
    pub last_scrape: Option<SystemTime>,
    pub last_duration: f64,
}

/// What a loop shares with the job that started it.
pub struct LoopShared {
    pub client: HttpClient,
    pub sink: Arc<dyn ScrapeSink>,
    pub tenant: String,
    /// Names this pool member to targets: `sonde-collector/<version> (+<member URL>)`.
    pub user_agent: String,
    pub stats: Arc<Stats>,
    /// The collector's shutdown: loops end without stale markers.
    pub shutdown: CancellationToken,
}

/// The job's handle on a running loop.
pub struct LoopHandle {
    pub status: Arc<Mutex<TargetStatus>>,
    pub cancel: CancellationToken,
    /// Set before `cancel` when the end must not write stale markers (a reload replaces it).
    pub quiet: Arc<AtomicBool>,
    /// When set, the loop scrapes until then and ends with stale markers (hand-over).
    pub retire: watch::Sender<Option<Instant>>,
    pub done: Arc<AtomicBool>,
}

/// Writes of scraped samples are aligned on this wall-clock tick, or a tenth of the scrape
/// interval when that is shorter.
pub const WRITE_TICK_MS: i64 = 100;

/// How long a write ready at `now_ms` waits for the next write tick (zero on a tick).
pub fn until_write_tick(now_ms: i64, interval: Duration) -> Duration {
    let tick = WRITE_TICK_MS.min(interval.as_millis() as i64 / 10).max(1);
    let past = now_ms.rem_euclid(tick);
    Duration::from_millis(if past == 0 { 0 } else { (tick - past) as u64 })
}

/// The next slot of a target strictly after `now_ms`.
pub fn next_slot_ms(now_ms: i64, interval: Duration, key: &str) -> i64 {
    let interval_ms = (interval.as_millis() as i64).max(1);
    let offset = (stable_hash(&[key]) % interval_ms as u64) as i64;
    let base = now_ms - now_ms.rem_euclid(interval_ms) + offset;
    if base > now_ms {
        base
    } else {
        base + interval_ms
    }
}

/// Starts the loop of `target`; `on_end` is notified when it has ended.
pub fn spawn(
    tracker: &tokio_util::task::TaskTracker,
    shared: Arc<LoopShared>,
    job: Arc<ScrapeJob>,
    target: Arc<Target>,
    cancel: CancellationToken,
    on_end: Arc<tokio::sync::Notify>,
) -> LoopHandle {
    let status = Arc::new(Mutex::new(TargetStatus::default()));
    let quiet = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (retire, retire_rx) = watch::channel(None);
    let handle = LoopHandle {
        status: status.clone(),
        cancel: cancel.clone(),
        quiet: quiet.clone(),
        retire,
        done: done.clone(),
    };
    tracker.spawn(async move {
        run(&shared, &job, &target, &status, cancel, retire_rx, &quiet).await;
        done.store(true, Ordering::Release);
        on_end.notify_one();
    });
    handle
}

async fn run(
    shared: &LoopShared,
    job: &ScrapeJob,
    target: &Target,
    status: &Mutex<TargetStatus>,
    cancel: CancellationToken,
    mut retire: watch::Receiver<Option<Instant>>,
    quiet: &AtomicBool,
) {
    let mut cache = SeriesCache::new(&target.labels);
    let mut sequence = 0u64;
    let agent_id = format!("scrape/{}", target.key);
    shared.stats.targets_running.fetch_add(1, Ordering::Relaxed);
    loop {
        let now_ms = sonde_common::model::now_ms();
        let slot = next_slot_ms(now_ms, target.interval, &target.key);
        let wake = Instant::now() + Duration::from_millis((slot - now_ms).max(0) as u64);
        let deadline = *retire.borrow_and_update();
        let retiring = deadline.is_some_and(|d| d <= wake);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(deadline.filter(|_| retiring).unwrap_or(wake)) => {
                if retiring {
                    break;
                }
            }
            changed = retire.changed() => {
                if changed.is_err() {
                    // The job dropped the handle without cancelling: end as if removed.
                    break;
                }
                continue;
            }
        }
        let output = scrape_once(shared, job, target, status, &mut cache).await;
        let (batches, validated) = cache.batches(&output, &agent_id, &mut sequence);
        let wait = until_write_tick(sonde_common::model::now_ms(), target.interval);
        tokio::select! {
            // Shutting down: write at once, the samples are scraped.
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        let valid = write(shared, &agent_id, &batches, validated).await;
        cache.recycle(batches, valid);
    }
    shared.stats.targets_running.fetch_sub(1, Ordering::Relaxed);
    if shared.shutdown.is_cancelled() || quiet.load(Ordering::Acquire) {
        return;
    }
    let markers = cache.end(sonde_common::model::now_ms());
    shared.stats.stale_markers.add(markers.len() as u64);
    let batches = append::batches(markers, &agent_id, &mut sequence);
    write(shared, &agent_id, &batches, false).await;
}

async fn scrape_once(
    shared: &LoopShared,
    job: &ScrapeJob,
    target: &Target,
    status: &Mutex<TargetStatus>,
    cache: &mut SeriesCache,
) -> append::Output {
    let started = std::time::Instant::now();
    let started_wall = SystemTime::now();
    let scrape_ms = sonde_common::model::now_ms();
    shared.stats.scrapes.inc();
    let result = match fetch::fetch(
        &shared.client,
        &target.url,
        target.timeout,
        job.body_size_limit,
        &shared.user_agent,
    )
    .await
    {
        Err(e) => Err((e.reason(), e.to_string(), 0)),
        Ok((body, format)) => append::samples(&body, format, target, job, scrape_ms, cache)
            .map_err(|(e, scraped)| (e.reason(), e.to_string(), scraped)),
    };
    let duration = started.elapsed().as_secs_f64();
    let (samples, error, scraped) = match result {
        Ok(s) => (Some(s.samples), None, s.scraped),
        Err((reason, message, scraped)) => {
            shared.stats.scrapes_failed.add(reason, 1);
            (None, Some(message), scraped)
        }
    };
    let (out, report) = cache.scrape(scrape_ms, duration, scraped, samples);
    shared.stats.samples.add(report.post_relabel as u64);
    if let Ok(mut s) = status.lock() {
        s.health = if report.up { Health::Up } else { Health::Down };
        s.last_error = error.clone().unwrap_or_default();
        s.last_scrape = Some(started_wall);
        s.last_duration = duration;
    }
    if let Some(e) = error {
        tracing::debug!(target = target.url, error = %e, "scrape failed");
    }
    out
}

/// Writes `batches` to the sink, validating those not `validated` yet; returns whether all of
/// them were valid.
async fn write(shared: &LoopShared, agent_id: &str, batches: &[Batch], validated: bool) -> bool {
    let limits = sonde_common::model::Limits::default();
    let mut valid = true;
    for batch in batches {
        // The route takes validated batches only; target labels come from discovery.
        if !validated && let Err(e) = batch.validate(&limits) {
            valid = false;
            shared.stats.write_failures.inc();
            tracing::warn!(agent_id, error = %e, "scrape: dropping an invalid batch");
            continue;
        }
        if let Err(e) = shared.sink.write(&shared.tenant, batch).await {
            shared.stats.write_failures.inc();
            tracing::warn!(agent_id, error = %e, "scrape: cannot write scraped samples");
        }
    }
    valid
}

#[cfg(test)]
mod tests {
    use super::{next_slot_ms, until_write_tick};
    use std::time::Duration;

    #[test]
    fn writes_wait_for_the_next_tick() {
        let i = Duration::from_secs(15);
        assert_eq!(until_write_tick(1_000_000, i), Duration::ZERO);
        assert_eq!(until_write_tick(1_000_001, i), Duration::from_millis(99));
        assert_eq!(until_write_tick(1_000_099, i), Duration::from_millis(1));
        // Short intervals shorten the tick to a tenth of them.
        let short = Duration::from_millis(200);
        assert_eq!(
            until_write_tick(1_000_005, short),
            Duration::from_millis(15)
        );
        assert_eq!(
            until_write_tick(1_000_005, Duration::from_millis(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn slots_are_aligned_and_in_the_future() {
        let i = Duration::from_secs(10);
        let a = next_slot_ms(1_000_000, i, "k");
        assert!(a > 1_000_000 && a <= 1_010_000);
        assert_eq!(next_slot_ms(a, i, "k"), a + 10_000);
        assert_eq!(next_slot_ms(a - 1, i, "k"), a);
        // Every member computes the same slot.
        assert_eq!(next_slot_ms(a - 5_000, i, "k"), a);
    }
}
