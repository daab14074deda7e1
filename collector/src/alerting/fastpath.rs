//! Fast path (being built).
