//! Per-tenant ingest rate limits: a token bucket of samples per second. A batch is admitted
//! while the bucket is not empty (it may go into debt, so a batch larger than the burst still
//! passes eventually); an empty bucket answers 429 with the seconds until it refills.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimits {
    /// Samples per second per tenant; 0 disables the limit.
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimits {
    pub fn new(samples_per_second: f64, burst: f64) -> Self {
        Self {
            rate: samples_per_second,
            burst: burst.max(samples_per_second),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Admits `samples` for `tenant`, or says how long to wait.
    pub fn admit(&self, tenant: &str, samples: usize, now: Instant) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = buckets
            .entry(tenant.to_owned())
            .or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * self.rate)
            .min(self.burst);
        *last = now;
        if *tokens <= 0.0 {
            return Err(Duration::from_secs_f64(
                (-*tokens / self.rate).ceil().max(1.0),
            ));
        }
        *tokens -= samples as f64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_per_tenant() {
        let l = RateLimits::new(100.0, 200.0);
        let t0 = Instant::now();
        assert!(l.admit("a", 150, t0).is_ok());
        assert!(l.admit("a", 150, t0).is_ok(), "into debt: 200 - 300 = -100");
        let wait = l.admit("a", 1, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(
            l.admit("b", 150, t0).is_ok(),
            "another tenant has its own bucket"
        );
        assert!(
            l.admit("a", 1, t0 + Duration::from_millis(1500)).is_ok(),
            "refilled"
        );
        assert!(RateLimits::new(0.0, 0.0).admit("x", 1_000_000, t0).is_ok());
    }
}
