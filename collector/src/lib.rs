//! The Sonde collector. A pushed batch's path: [`server`] -> [`ingest`] (decode, validate) ->
//! [`route`] -> [`store`] (the embedded store's WAL and head); [`query`] reads it back through
//! the Prometheus HTTP API. [`events`] counts and logs what happens on the way.
//!
//! [`run`] serves on a listener the caller binds, until a cancellation token fires, so tests
//! run the whole collector in-process on port 0 and the binary only parses flags and signals.

pub mod alerting;
pub mod cli;
pub mod config;
pub mod events;
pub mod ingest;
pub mod overview;
pub mod query;
pub mod queue;
pub mod route;
pub mod scrape;
pub mod server;
pub(crate) mod shapes;
pub mod sinks;
pub mod store;
pub mod tls;

pub use server::{RunError, run};
