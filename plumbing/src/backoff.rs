//! Capped exponential backoff with jitter, so many clients coming back after a busd restart
//! do not reconnect in lockstep: the one backoff of busctl and ingest alike.

use std::time::Duration;

/// The delays between reconnection attempts, growing from `base` to `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    base: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    /// Delays starting at `base`, doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            attempt: 0,
            base,
            cap,
        }
    }

    /// Attempts made since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The wait before the next attempt: half the capped exponential step, plus a random
    /// part of the other half.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .base
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Back to the first step, after a connection that worked.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_inside_bounds() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut steps = Vec::new();
        for _ in 0..10 {
            steps.push(backoff.next_delay());
        }
        assert!(steps[0] >= Duration::from_millis(50) && steps[0] <= Duration::from_millis(100));
        assert!(steps[3] >= Duration::from_millis(400) && steps[3] <= Duration::from_millis(800));
        assert!(steps.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(steps[9] >= Duration::from_secs(1), "capped, not collapsed");
        assert_eq!(backoff.attempt(), 10);
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
