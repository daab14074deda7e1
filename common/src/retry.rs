//! The one retry policy every sender follows (agent push now; remote write and notifications
//! later): 5xx, 429 and network errors are retried with capped exponential backoff and full
//! jitter, honouring `Retry-After`; any other 4xx is permanent.

use std::time::Duration;

/// What to do with the outcome of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// Try again later (5xx, 429, network error).
    Retry,
    /// Do not try again (other 4xx, and anything else unexpected).
    Permanent,
}

/// Classifies an HTTP status code.
pub fn classify_status(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Success,
        429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Permanent,
    }
}

/// Parses `Retry-After` given in seconds (the form our collectors and most storages send). An
/// HTTP-date is ignored, and the backoff applies instead.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// An error with its sources, for log lines: "client error (Connect): tcp connect error:
/// Connection refused".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Capped exponential backoff with full jitter: the n-th delay is uniform in
/// `[0, min(max, initial * 2^n)]`, but never shorter than a server's `Retry-After` (itself
/// capped at `max`, so a hostile server cannot park a sender forever).
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jittered = ceiling.mul_f64(fastrand::f64());
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.max)),
            None => jittered,
        }
    }

    /// The upper bound the next delay is drawn under (before `Retry-After`).
    pub fn current_ceiling(&self) -> Duration {
        self.initial
            .saturating_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max)
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_per_the_rule() {
        assert_eq!(classify_status(200), Verdict::Success);
        assert_eq!(classify_status(204), Verdict::Success);
        assert_eq!(classify_status(429), Verdict::Retry);
        assert_eq!(classify_status(503), Verdict::Retry);
        assert_eq!(classify_status(400), Verdict::Permanent);
        assert_eq!(classify_status(413), Verdict::Permanent);
    }

    #[test]
    fn delays_grow_to_the_cap_with_jitter_below_the_ceiling() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let ceiling = b.current_ceiling();
            let d = b.next_delay(None);
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.current_ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn retry_after_is_honoured_but_capped() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_secs(5));
        assert!(b.next_delay(Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(3600))),
            Duration::from_secs(5)
        );
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            assert!(b.next_delay(None) <= Duration::from_secs(30));
        }
    }
}
