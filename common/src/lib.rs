//! Sonde's shared vocabulary.
//!
//! - [`model`]: series, labels, samples, metric kinds, and their validation rules and limits.
//! - [`wire`]: the versioned agent-to-collector batch format (envelope, codec, hostile-input limits).
//! - [`retry`]: the one retry policy (capped exponential backoff with full jitter, Retry-After)
//!   used by every sender.
//! - [`remote_write`]: Prometheus remote write 1.0 messages and their snappy framing.
//! - [`telemetry`]: self-metric primitives and their text rendering.
//! - [`duration`]: Prometheus-style durations for flags and config.
//! - [`exposition`]: the Prometheus text and OpenMetrics parser (scrapes, pushed text).
//! - [`time`]: RFC 3339 timestamps to and from milliseconds.
//! - [`hash`]: FNV-1a, the hash that must agree across processes and versions.
//! - [`etcd`]: a small etcd v3 client (HTTP/JSON gateway): keys, leases, watches, registrations.

pub mod duration;
pub mod etcd;
pub mod exposition;
pub mod hash;
pub mod model;
pub mod remote_write;
pub mod retry;
pub mod telemetry;
pub mod time;
pub mod wire;
