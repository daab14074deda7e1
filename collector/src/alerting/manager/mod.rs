//! The alert manager (being built).

pub mod config;
