//! One key kept alive in etcd, bound to a lease, for as long as its owner runs.
//!
//! The task grants a lease of the TTL, puts the key bound to it, and renews the lease every
//! TTL/3. If etcd says the lease is gone (expired while etcd was unreachable, or revoked), it
//! grants a new one and puts the key again. On a clean stop it revokes the lease, so the key
//! disappears at once; if the process dies, the key expires after the TTL.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{EtcdClient, EtcdError};
use crate::retry::Backoff;

/// How long a revoke may take at shutdown.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(2);

/// A key registered in etcd until [`Registration::stop`] (or the cancellation token given to
/// [`Registration::start`]).
pub struct Registration {
    cancel: CancellationToken,
    refresh: Arc<Notify>,
    lease: watch::Receiver<Option<i64>>,
    task: JoinHandle<()>,
}

impl Registration {
    /// Registers `key` = `value` with a lease of `ttl` (whole seconds, at least 1; etcd may
    /// raise very short ones to its minimum) and keeps it alive until `cancel` or
    /// [`Registration::stop`]. Failures are logged and retried with backoff, never fatal.
    pub fn start(
        client: EtcdClient,
        key: String,
        value: Vec<u8>,
        ttl: Duration,
        cancel: CancellationToken,
    ) -> Registration {
        let cancel = cancel.child_token();
        let refresh = Arc::new(Notify::new());
        let (lease_tx, lease) = watch::channel(None);
        let task = tokio::spawn(keep(
            client,
            key,
            value,
            ttl,
            lease_tx,
            Arc::clone(&refresh),
            cancel.clone(),
        ));
        Registration {
            cancel,
            refresh,
            lease,
            task,
        }
    }

    /// The lease the key is bound to now; `None` while (re-)registering.
    pub fn lease(&self) -> Option<i64> {
        *self.lease.borrow()
    }

    /// Waits until the key is registered (or the registration stopped); returns the lease.
    pub async fn registered(&self) -> Option<i64> {
        let mut rx = self.lease.clone();
        rx.wait_for(Option::is_some).await.ok().and_then(|l| *l)
    }

    /// Puts the key again (someone deleted it while the lease lives on).
    pub fn refresh(&self) {
        self.refresh.notify_one();
    }

    /// A handle whose `notify_one` does what [`Registration::refresh`] does, for a task that
    /// watches the key.
    pub fn refresher(&self) -> Arc<Notify> {
        Arc::clone(&self.refresh)
    }

    /// Stops keeping the key alive and revokes the lease, so the key disappears at once.
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }

    /// Stops keeping the key alive without revoking the lease, as a crash would: the key
    /// expires after the TTL.
    pub fn abandon(self) {
        self.task.abort();
    }
}

fn ttl_seconds(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs().max(1) + u64::from(ttl.subsec_nanos() > 0)).unwrap_or(i64::MAX)
}

async fn register(
    client: &EtcdClient,
    key: &str,
    value: &[u8],
    ttl_s: i64,
) -> Result<i64, EtcdError> {
    let lease = client.grant(ttl_s).await?;
    if let Err(e) = client.put(key, value, Some(lease)).await {
        let _ = client.revoke(lease).await;
        return Err(e);
    }
    Ok(lease)
}

async fn keep(
    client: EtcdClient,
    key: String,
    value: Vec<u8>,
    ttl: Duration,
    lease_tx: watch::Sender<Option<i64>>,
    refresh: Arc<Notify>,
    cancel: CancellationToken,
) {
    let ttl_s = ttl_seconds(ttl);
    let period = Duration::from_secs(u64::try_from(ttl_s).unwrap_or(1))
        .div_f64(3.0)
        .max(Duration::from_millis(100));
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        period.max(Duration::from_secs(1)),
    );
    let mut failing = false;
    loop {
        let attempt = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            r = register(&client, &key, &value, ttl_s) => r,
        };
        let lease = match attempt {
            Ok(lease) => lease,
            Err(e) => {
                if !failing {
                    tracing::warn!(key, error = %e, "cannot register in etcd; retrying");
                }
                failing = true;
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay(None)) => continue,
                    _ = cancel.cancelled() => return,
                }
            }
        };
        tracing::info!(
            key,
            lease = format_args!("{lease:x}"),
            ttl_s,
            "registered in etcd"
        );
        failing = false;
        backoff.reset();
        lease_tx.send_replace(Some(lease));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    lease_tx.send_replace(None);
                    match tokio::time::timeout(REVOKE_TIMEOUT, client.revoke(lease)).await {
                        Ok(Ok(())) => tracing::info!(key, "deregistered from etcd"),
                        Ok(Err(e)) => tracing::warn!(key, error = %e, "cannot revoke the etcd lease; the key expires after its TTL"),
                        Err(_) => tracing::warn!(key, "etcd did not answer the revoke; the key expires after its TTL"),
                    }
                    return;
                }
                // Calls below race the cancellation, so a stop never waits on a slow etcd
                // before revoking.
                _ = refresh.notified() => {
                    let put = tokio::select! {
                        r = client.put(&key, &value, Some(lease)) => r,
                        _ = cancel.cancelled() => continue,
                    };
                    if let Err(e) = put {
                        tracing::warn!(key, error = %e, "cannot put the registration again");
                    }
                }
                _ = ticker.tick() => {
                    let renewed = tokio::select! {
                        r = client.keepalive(lease) => r,
                        _ = cancel.cancelled() => continue,
                    };
                    match renewed {
                        Ok(_) => failing = false,
                        Err(EtcdError::LeaseLost(_)) => {
                            tracing::warn!(key, "etcd lease lost; registering again");
                            lease_tx.send_replace(None);
                            break;
                        }
                        Err(e) => {
                            if !failing {
                                tracing::warn!(key, error = %e, "cannot renew the etcd lease; retrying");
                            }
                            failing = true;
                        }
                    }
                }
            }
        }
    }
}
