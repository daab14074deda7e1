//! One scrape job: its discovery providers, its targets, and which of them this collector
//! scrapes. Re-reconciles when any provider publishes or the pool's members change:
//! - a target this member owns and does not scrape yet starts at once;
//! - a target it scrapes but no longer owns keeps being scraped for one more interval (the
//!   new owner has started meanwhile), then ends with stale markers;
//! - a target that left discovery ends at once, with stale markers.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::TargetGroup;
use super::config::ScrapeJob;
use super::discovery::Provider;
use super::pool::Membership;
use super::pool::owners;
use super::target::{self, DroppedTarget, Target};
use super::target_loop::{self, LoopHandle, LoopShared, TargetStatus};

/// Whether a member that hands a target over ends its series with stale markers. Written when
/// the hand-over interval ends, they would fall between two scrapes of the new owner and make
/// the series look stale until its next one, a gap the pool promises not to have. So a
/// hand-over ends quietly (the series simply continue under the new owner, as after a
/// reload); a target that leaves discovery, or stops answering, is still marked stale.
const STALE_MARKERS_AFTER_HAND_OVER: bool = false;

/// A target as the API shows it.
#[derive(Clone)]
pub struct TargetView {
    pub target: Arc<Target>,
    /// The member scraping it: this one if it is among the owners, else the first owner.
    pub owner: String,
    /// Set while this member scrapes it.
    pub status: Option<Arc<Mutex<TargetStatus>>>,
}

/// The job's targets now.
#[derive(Default)]
pub struct JobView {
    pub active: Vec<TargetView>,
    pub dropped: Vec<DroppedTarget>,
}

/// What the job task needs from the service.
pub struct JobContext {
    pub shared: Arc<LoopShared>,
    pub membership: Arc<dyn Membership>,
    pub replicas: usize,
    pub tracker: TaskTracker,
    /// The collector's `--etcd` endpoints, for `etcd_sd_configs` without their own.
    pub default_etcd: Vec<hyper::Uri>,
}

/// The job's targets after relabeling.
struct Found {
    active: Vec<Target>,
    dropped: Vec<DroppedTarget>,
}

struct Running {
    handle: LoopHandle,
    target: Arc<Target>,
}

/// Runs the job until `cancel`; then ends its loops (quietly if `quiet` is set by then).
pub async fn run(
    job: Arc<ScrapeJob>,
    ctx: Arc<JobContext>,
    view: Arc<Mutex<JobView>>,
    cancel: CancellationToken,
    quiet: Arc<std::sync::atomic::AtomicBool>,
) {
    let discovery_cancel = cancel.child_token();
    let notify = Arc::new(Notify::new());
    let mut providers: Vec<watch::Receiver<Vec<TargetGroup>>> = Vec::new();
    for provider in Provider::for_job(&job) {
        let mut rx = provider.spawn(
            &job.job_name,
            &ctx.tracker,
            &ctx.default_etcd,
            discovery_cancel.clone(),
        );
        providers.push(rx.clone());
        let notify = notify.clone();
        let stop = discovery_cancel.clone();
        ctx.tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return; // the provider is done; its last groups stay
                        }
                        notify.notify_one();
                    }
                }
            }
        });
    }
    let mut members_rx = ctx.membership.members();
    let mut members_open = true;
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    loop {
        let groups: Vec<TargetGroup> = providers
            .iter()
            .flat_map(|rx| rx.borrow().clone())
            .collect();
        let members = members_rx.borrow_and_update().clone();
        let (active, dropped) = target::build(&job, &groups);
        let next_wake = reconcile(
            &job,
            &ctx,
            &members,
            Found { active, dropped },
            &mut running,
            &view,
            &notify,
        );
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = notify.notified() => {}
            changed = members_rx.changed(), if members_open => {
                members_open = changed.is_ok();
            }
            _ = sleep_until(next_wake) => {}
        }
    }
    discovery_cancel.cancel();
    let quiet = quiet.load(Ordering::Acquire);
    for (_, r) in running {
        r.handle.quiet.store(quiet, Ordering::Release);
        r.handle.cancel.cancel();
    }
    if let Ok(mut v) = view.lock() {
        *v = JobView::default();
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Starts, retires and ends loops; returns when to look again (a hand-over ending).
fn reconcile(
    job: &Arc<ScrapeJob>,
    ctx: &JobContext,
    members: &[String],
    found: Found,
    running: &mut BTreeMap<String, Running>,
    view: &Mutex<JobView>,
    notify: &Arc<Notify>,
) -> Option<Instant> {
    let Found { active, dropped } = found;
    let me = ctx.membership.me().to_owned();
    // Loops that ended on their own (hand-over done).
    running.retain(|_, r| !r.handle.done.load(Ordering::Acquire));
    let mut views = Vec::with_capacity(active.len());
    let mut keys = std::collections::HashSet::with_capacity(active.len());
    let mut next_wake: Option<Instant> = None;
    for t in active {
        let owners = owners(members, &t.key, ctx.replicas);
        let owned = owners.contains(&me);
        keys.insert(t.key.clone());
        let status = match running.get(&t.key) {
            Some(r) => {
                if owned {
                    r.handle.quiet.store(false, Ordering::Release);
                    r.handle.retire.send_if_modified(|d| d.take().is_some());
                } else if r.handle.retire.borrow().is_none() {
                    r.handle
                        .quiet
                        .store(!STALE_MARKERS_AFTER_HAND_OVER, Ordering::Release);
                    let at = Instant::now() + r.target.interval;
                    r.handle.retire.send_replace(Some(at));
                }
                if let Some(at) = *r.handle.retire.borrow() {
                    // Look again just after the loop ends, to show the new owner.
                    // Never in the past: a loop still writing its markers is not polled hot.
                    let at = (at + std::time::Duration::from_millis(50))
                        .max(Instant::now() + std::time::Duration::from_millis(50));
                    next_wake = Some(next_wake.map_or(at, |w| w.min(at)));
                }
                Some(r.handle.status.clone())
            }
            None if owned => {
                let target = Arc::new(t.clone());
                let handle = target_loop::spawn(
                    &ctx.tracker,
                    ctx.shared.clone(),
                    job.clone(),
                    target.clone(),
                    CancellationToken::new(),
                    notify.clone(),
                );
                let status = handle.status.clone();
                running.insert(t.key.clone(), Running { handle, target });
                Some(status)
            }
            None => None,
        };
        let owner = if owned || status.is_some() {
            me.clone()
        } else {
            owners.first().cloned().unwrap_or_default()
        };
        views.push(TargetView {
            target: Arc::new(t),
            owner,
            status,
        });
    }
    running.retain(|key, r| {
        if keys.contains(key) {
            return true;
        }
        r.handle.cancel.cancel();
        false
    });
    if let Ok(mut v) = view.lock() {
        *v = JobView {
            active: views,
            dropped,
        };
    }
    next_wake
}
