//! StatsD/DogStatsD intake: see [`parser`] for the line format and [`listener`] for the sockets.

pub mod listener;
pub mod parser;
