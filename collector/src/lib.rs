//! Sonde collector library.
