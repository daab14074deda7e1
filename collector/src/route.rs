//! Route: where an accepted batch goes. In this version there is one sink, the embedded store;
//! remote-write sinks and the alerting fast path join here later, each behind its own queue.

use sonde_common::wire::Batch;

use crate::store::{AppendStats, Store, StoreError};

/// Hands validated batches to the sinks and reports only once every sink holds them durably.
#[derive(Clone)]
pub struct Router {
    store: Store,
}

impl Router {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Returns once the batch is durable in every sink (for the store: fsynced in its WAL), in
    /// `tenant`'s namespace.
    pub async fn route(&self, tenant: &str, batch: &Batch) -> Result<AppendStats, StoreError> {
        self.store.append_tenant(tenant, batch).await
    }
}
