//! Placeholder: filled in by the alerting work.
