//! The alert manager (being built).

pub mod config;
pub mod history;
pub mod inhibit;
pub mod matchers;
pub mod nflog;
pub mod persist;
pub mod route;
pub mod silence;
