//! The Sonde agent. A sample's path: [`sources`] (host metrics) -> [`batch`] (encode with a
//! sequence number) -> [`buffer`] (bounded, drops oldest) -> [`push`] (retry, failover).
//! [`pipeline::run`] wires them and owns the shutdown order; [`events`] counts and logs.

pub mod aggregate;
pub mod batch;
pub mod buffer;
pub mod cli;
pub mod config;
pub mod events;
pub mod http;
pub mod pipeline;
pub mod push;
pub mod selfmetrics;
pub mod sources;
pub mod spool;
pub mod tls;

pub use pipeline::{AgentError, run};
