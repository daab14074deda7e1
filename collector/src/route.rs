//! Route: where an accepted batch goes. The embedded store (single node) and/or any number of
//! remote-write sinks (fleet), each durable on its own: the store fsyncs its WAL, each sink has
//! the storage acknowledge the batch or fsyncs it in its disk queue. The route answers only
//! once every destination holds the batch durably, so a 200 to the sender means nothing
//! acknowledged can be lost.

use sonde_common::wire::Batch;
use thiserror::Error;

use crate::shapes::ShapeWork;
use crate::sinks::remote_write::{RemoteWriteSink, SeriesLabels, SinkError};
use crate::store::{AppendStats, Store, StoreError};

#[derive(Debug, Error)]
pub enum RouteError {
    #[error("cannot store batch: {0}")]
    Store(#[from] StoreError),
    /// A sink's disk queue is full: the sender should back off (429).
    #[error("the queue to {url} is full: {cause}")]
    Full { url: String, cause: SinkError },
    #[error("cannot queue batch for {url}: {cause}")]
    Sink { url: String, cause: SinkError },
}

impl RouteError {
    pub fn is_full(&self) -> bool {
        matches!(self, RouteError::Full { .. })
    }
}

/// Sees every batch once it is durable, without slowing it down: the alerting fast path (in
/// this process, or forwarded to a separate alerting instance).
pub trait SampleTap: Send + Sync {
    /// Looks at `batch` of `tenant`; must return at once.
    fn offer(&self, tenant: &str, batch: &Batch);

    /// False for a tap that learns only from series' names and kinds: it is not offered a
    /// sender's batch whose shape it has seen (see [`SeriesWork`]).
    fn wants_known_shapes(&self) -> bool {
        true
    }
}

/// Work done once per shape of a sender's batches (see [`crate::shapes`]) and kept with it:
/// that the shape's names and labels passed validation (being remembered says so), and its
/// series encoded for remote write, by the first sink that needs them.
#[derive(Debug, Default)]
pub struct SeriesWork {
    pub(crate) remote_write: Option<SeriesLabels>,
    /// The taps were offered a batch of this shape.
    offered: bool,
}

impl ShapeWork for SeriesWork {
    fn bytes(&self) -> usize {
        self.remote_write
            .as_ref()
            .map_or(0, SeriesLabels::heap_bytes)
    }
}

/// Hands validated batches to the destinations.
#[derive(Clone)]
pub struct Router {
    store: Option<Store>,
    sinks: Vec<RemoteWriteSink>,
    taps: Vec<std::sync::Arc<dyn SampleTap>>,
}

impl Router {
    /// `store` is `None` when remote storage replaces the embedded store.
    pub fn new(store: Option<Store>, sinks: Vec<RemoteWriteSink>) -> Self {
        Self {
            store,
            sinks,
            taps: Vec::new(),
        }
    }

    /// Adds a tap that sees every batch after it is durable.
    pub fn with_tap(mut self, tap: std::sync::Arc<dyn SampleTap>) -> Self {
        self.taps.push(tap);
        self
    }

    /// Returns once the batch is durable in every destination, in `tenant`'s namespace.
    /// `envelope` is the batch as received, when it came as a native envelope: sinks queue it
    /// without encoding it again. `work` is what is known of the batch's series from the
    /// sender's earlier batches of the same shape, and takes what sinks work out for them.
    pub async fn route(
        &self,
        tenant: &str,
        batch: &Batch,
        envelope: Option<&bytes::Bytes>,
        mut work: Option<&mut SeriesWork>,
    ) -> Result<AppendStats, RouteError> {
        let tenant_opt = (!tenant.is_empty()).then_some(tenant);
        for sink in &self.sinks {
            let labels = work.as_deref_mut().map(|w| {
                &*w.remote_write
                    .get_or_insert_with(|| SeriesLabels::of(batch))
            });
            if let Err(cause) = sink
                .enqueue_prepared(batch, envelope, tenant_opt, labels)
                .await
            {
                let url = sink.url().to_string();
                return Err(if cause.is_full() {
                    RouteError::Full { url, cause }
                } else {
                    RouteError::Sink { url, cause }
                });
            }
        }
        let stats = match &self.store {
            Some(store) => store.append_tenant(tenant, batch).await?,
            None => AppendStats {
                appended: batch.sample_count() as u64,
                ..AppendStats::default()
            },
        };
        let seen = work.as_ref().is_some_and(|w| w.offered);
        for tap in &self.taps {
            if !seen || tap.wants_known_shapes() {
                tap.offer(tenant, batch);
            }
        }
        if let Some(w) = work {
            w.offered = true;
        }
        Ok(stats)
    }

    pub fn sinks(&self) -> &[RemoteWriteSink] {
        &self.sinks
    }

    /// The fullest queue between ingest and a destination (0 idle, 1 full).
    pub fn queue_fill(&self) -> f64 {
        let store = self.store.as_ref().map_or(0.0, Store::queue_fill);
        self.sinks
            .iter()
            .map(RemoteWriteSink::queue_fill)
            .fold(store, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::model::{MetricKind, Sample, Series};
    use sonde_common::wire::{BatchBuilder, BatchHeader};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        seen: AtomicUsize,
        known_too: bool,
    }

    impl SampleTap for Counting {
        fn offer(&self, _tenant: &str, _batch: &Batch) {
            self.seen.fetch_add(1, Ordering::Relaxed);
        }
        fn wants_known_shapes(&self) -> bool {
            self.known_too
        }
    }

    #[tokio::test]
    async fn a_tap_of_names_and_kinds_sees_each_shape_once_the_others_every_batch() {
        let every = Arc::new(Counting {
            seen: AtomicUsize::new(0),
            known_too: true,
        });
        let shapes_only = Arc::new(Counting {
            seen: AtomicUsize::new(0),
            known_too: false,
        });
        let router = Router::new(None, Vec::new())
            .with_tap(every.clone())
            .with_tap(shapes_only.clone());
        let mut b = BatchBuilder::new(BatchHeader::default());
        b.push(
            &Series::new("up", [("job", "a")]),
            MetricKind::Gauge,
            None,
            vec![Sample::new(1, 1.0)],
        );
        let batch = b.build();
        let mut work = SeriesWork::default();
        for _ in 0..3 {
            router
                .route("", &batch, None, Some(&mut work))
                .await
                .unwrap();
        }
        // Without a remembered shape (remote write, or no sender id), every batch is offered.
        router.route("", &batch, None, None).await.unwrap();
        assert_eq!(every.seen.load(Ordering::Relaxed), 4);
        assert_eq!(shapes_only.seen.load(Ordering::Relaxed), 2);
    }
}
