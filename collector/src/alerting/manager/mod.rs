//! The alert manager (being built).

pub mod config;
pub mod matchers;
pub mod persist;
