//! Sonde agent library.
