//! Sinks: where routed batches go. Each sink owns a durable queue ([`crate::queue`]) that the
//! route hands batches to, and a sending side that drains it to its destination.

pub mod alerting;
pub mod remote_write;
