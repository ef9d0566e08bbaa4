//! Jittered exponential back-off for reconnects: 100 ms doubling to a 5 s cap, each delay drawn
//! from half to all of the nominal value so that many clients do not reconnect in step.

use std::time::Duration;

use rand::Rng;

/// Back-off state for one reconnect episode.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    /// Starts at `base`, never waits more than `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempts: 0,
        }
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self
            .base
            .saturating_mul(1 << self.attempts.min(16))
            .min(self.cap);
        self.attempts += 1;
        let millis = u64::try_from(nominal.as_millis())
            .unwrap_or(u64::MAX)
            .max(2);
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }

    /// Forgets past failures after a success.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(delays[9] >= Duration::from_secs(1));
        assert_eq!(b.attempts(), 10);
    }
}
