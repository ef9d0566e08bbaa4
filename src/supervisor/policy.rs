//! The scaling policy of `burrow run`: from what the broker reports for a service's queue (ready
//! messages, unacked messages, ack rate) to how many workers the service should have, with the
//! reason. Pure: time is a parameter, so every rule is unit-tested without a broker.
//!
//! - **Up** when the ready messages would take longer than `target_drain` to drain at the ack
//!   rate (at least 1/s is assumed, so a lone message on a quiet queue is not a backlog); the
//!   count grows in proportion to how far the drain time exceeds the target, at most doubling
//!   per step, never past MAX. A service at 0 workers with anything ready gets one.
//! - **Down** by one worker when the queue stayed empty, with nothing unacked (consumers
//!   idle), for `idle`: the hysteresis between "too slow" and "idle" that prevents thrash.
//! - **Cooldowns**: no scale-up within `up_cooldown` of the last one (new workers need time
//!   to show in the rate), no scale-down within `down_cooldown` of any change.
//! - **No data** (the management API does not answer, the queue is missing): the count is
//!   frozen, never lowered.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The ack rate assumed at least, in messages per second, when estimating a drain time.
const MIN_RATE: f64 = 1.0;

/// What the broker reports for a service's queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// Messages ready for delivery.
    pub ready: u64,
    /// Messages delivered and not yet acknowledged.
    pub unacked: u64,
    /// Acknowledgements per second.
    pub ack_rate: f64,
}

/// The policy's settings, as durations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicySettings {
    /// Scale up when the drain time exceeds this.
    pub target_drain: Duration,
    /// Scale down after the queue stayed empty and idle this long.
    pub idle: Duration,
    /// Minimum time between two scale-ups.
    pub up_cooldown: Duration,
    /// Minimum time between any change and a scale-down.
    pub down_cooldown: Duration,
}

impl From<&crate::settings::SupervisorSettings> for PolicySettings {
    fn from(s: &crate::settings::SupervisorSettings) -> Self {
        let secs = |v: f64| Duration::from_secs_f64(v.max(0.0));
        Self {
            target_drain: secs(s.target_drain_secs),
            idle: secs(s.idle_secs),
            up_cooldown: secs(s.scale_up_cooldown_secs),
            down_cooldown: secs(s.scale_down_cooldown_secs),
        }
    }
}

/// Why the count is what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// MIN equals MAX: nothing to decide.
    Fixed,
    /// The count was outside MIN..MAX (at start).
    Bounds {
        /// MIN.
        min: u32,
        /// MAX.
        max: u32,
    },
    /// The backlog drains too slowly (up), or fast enough (hold).
    Backlog {
        /// Ready messages.
        ready: u64,
        /// Estimated seconds to drain them.
        drain_secs: f64,
        /// The ack rate.
        rate: f64,
        /// Whether a wanted scale-up waits for its cooldown.
        cooling_down: bool,
    },
    /// The queue has been empty and idle this long (down, or waiting to).
    Idle {
        /// Seconds empty and idle so far.
        idle_secs: f64,
    },
    /// Messages are being handled, with no backlog to speak of.
    Busy {
        /// Messages delivered and unacknowledged.
        unacked: u64,
        /// The ack rate.
        rate: f64,
    },
    /// No observation: counts frozen.
    NoData {
        /// What failed (never a password).
        error: String,
    },
}

/// One decision: the count before and after, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Workers wanted before.
    pub from: u32,
    /// Workers wanted now.
    pub to: u32,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// Whether the count changes.
    pub fn changes(&self) -> bool {
        self.from != self.to
    }
}

/// `5100` as `5,100`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Fixed => write!(f, "fixed count"),
            Reason::Bounds { min, max } => write!(f, "kept within {min}..{max}"),
            Reason::Backlog {
                ready,
                drain_secs,
                rate,
                cooling_down,
            } => {
                write!(
                    f,
                    "{} ready, draining in {drain_secs:.0} s",
                    thousands(*ready)
                )?;
                if *rate < MIN_RATE {
                    // Nothing measurable was acked: the drain time is a floor, not an estimate.
                    write!(f, " or more (under {MIN_RATE:.0}/s acked)")?;
                } else {
                    write!(f, " at {rate:.0}/s")?;
                }
                if *cooling_down {
                    write!(f, " (scale-up cooling down)")?;
                }
                Ok(())
            }
            Reason::Idle { idle_secs } => write!(f, "queue empty and idle for {idle_secs:.0} s"),
            Reason::Busy { unacked, rate } => {
                write!(f, "no backlog, {unacked} in flight at {rate:.0}/s")
            }
            Reason::NoData { error } => {
                write!(f, "no data from the broker, counts frozen: {error}")
            }
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}→{}: {}", self.from, self.to, self.reason)
    }
}

/// The policy of one service: its bounds, settings and what it remembers between decisions.
#[derive(Debug, Clone)]
pub struct Policy {
    min: u32,
    max: u32,
    settings: PolicySettings,
    last_up: Option<Instant>,
    last_change: Option<Instant>,
    empty_since: Option<Instant>,
}

impl Policy {
    /// A policy keeping a service within `min..=max`.
    pub fn new(min: u32, max: u32, settings: PolicySettings) -> Self {
        Self {
            min,
            max,
            settings,
            last_up: None,
            last_change: None,
            empty_since: None,
        }
    }

    /// Decides the count for a service now running `current` (as wanted), given what the broker
    /// reports (`Err`: why there is no observation).
    pub fn decide(
        &mut self,
        current: u32,
        observation: Result<Observation, String>,
        now: Instant,
    ) -> Decision {
        let decision = self.rule(current, observation, now);
        if decision.to != decision.from {
            self.last_change = Some(now);
            if decision.to > decision.from {
                self.last_up = Some(now);
            }
        }
        decision
    }

    fn rule(
        &mut self,
        current: u32,
        observation: Result<Observation, String>,
        now: Instant,
    ) -> Decision {
        let decision = |to: u32, reason: Reason| Decision {
            from: current,
            to,
            reason,
        };
        if current < self.min || current > self.max {
            let (min, max) = (self.min, self.max);
            return decision(current.clamp(min, max), Reason::Bounds { min, max });
        }
        if self.min == self.max {
            return decision(current, Reason::Fixed);
        }
        let obs = match observation {
            Ok(obs) => obs,
            Err(error) => {
                self.empty_since = None;
                return decision(current, Reason::NoData { error });
            }
        };
        let since = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
        let idle = obs.ready == 0 && obs.unacked == 0;
        if idle {
            self.empty_since.get_or_insert(now);
        } else {
            self.empty_since = None;
        }

        let drain_secs = obs.ready as f64 / obs.ack_rate.max(MIN_RATE);
        let target = self.settings.target_drain.as_secs_f64();
        let backlog = |cooling_down| Reason::Backlog {
            ready: obs.ready,
            drain_secs,
            rate: obs.ack_rate,
            cooling_down,
        };
        let too_slow = drain_secs > target || (current == 0 && obs.ready > 0);
        if too_slow && current < self.max {
            if since(self.last_up).is_some_and(|d| d < self.settings.up_cooldown) {
                return decision(current, backlog(true));
            }
            let factor = if target > 0.0 {
                drain_secs / target
            } else {
                2.0
            };
            let wanted = (f64::from(current.max(1)) * factor).ceil();
            let wanted = if wanted.is_finite() {
                wanted.min(f64::from(u32::MAX)) as u32
            } else {
                u32::MAX
            };
            let to = wanted
                .min(current.saturating_mul(2).max(1))
                .max(current + 1)
                .min(self.max);
            return decision(to, backlog(false));
        }
        if let Some(idle_for) = since(self.empty_since) {
            let reason = Reason::Idle {
                idle_secs: idle_for.as_secs_f64(),
            };
            let cooled = since(self.last_change).is_none_or(|d| d >= self.settings.down_cooldown);
            if current > self.min && idle_for >= self.settings.idle && cooled {
                return decision(current - 1, reason);
            }
            return decision(current, reason);
        }
        if obs.ready > 0 {
            return decision(current, backlog(false));
        }
        decision(
            current,
            Reason::Busy {
                unacked: obs.unacked,
                rate: obs.ack_rate,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PolicySettings {
        PolicySettings {
            target_drain: Duration::from_secs(10),
            idle: Duration::from_secs(30),
            up_cooldown: Duration::from_secs(10),
            down_cooldown: Duration::from_secs(30),
        }
    }

    fn obs(ready: u64, unacked: u64, ack_rate: f64) -> Result<Observation, String> {
        Ok(Observation {
            ready,
            unacked,
            ack_rate,
        })
    }

    const IDLE: Result<Observation, String> = Ok(Observation {
        ready: 0,
        unacked: 0,
        ack_rate: 0.0,
    });

    #[test]
    fn a_slow_backlog_scales_up_in_proportion_at_most_doubling_and_says_why() {
        let mut p = Policy::new(1, 8, settings());
        let d = p.decide(2, obs(5100, 32, 164.0), Instant::now());
        assert_eq!(
            (d.from, d.to),
            (2, 4),
            "31 s is 3.1× the target, capped at double"
        );
        assert_eq!(d.to_string(), "2→4: 5,100 ready, draining in 31 s at 164/s");

        // Nothing acked yet (a worker just started, or its handlers wait on a slow call): the
        // drain time assumes 1/s and says so, rather than "at 0/s".
        let mut p = Policy::new(1, 8, settings());
        let d = p.decide(1, obs(41, 0, 0.0), Instant::now());
        assert_eq!(
            d.to_string(),
            "1→2: 41 ready, draining in 41 s or more (under 1/s acked)"
        );

        let mut p = Policy::new(1, 8, settings());
        let d = p.decide(4, obs(600, 0, 50.0), Instant::now());
        assert_eq!(d.to, 5, "12 s is 1.2× the target: 4 × 1.2 rounded up");

        let mut p = Policy::new(1, 3, settings());
        assert_eq!(
            p.decide(2, obs(100_000, 0, 10.0), Instant::now()).to,
            3,
            "MAX"
        );
        assert_eq!(p.decide(3, obs(100_000, 0, 10.0), Instant::now()).to, 3);
    }

    #[test]
    fn a_backlog_that_drains_within_the_target_keeps_the_count() {
        let mut p = Policy::new(1, 8, settings());
        let d = p.decide(2, obs(900, 16, 100.0), Instant::now());
        assert!(!d.changes(), "{d}");
        // A handful of messages on a queue whose rate reads 0 is no backlog (1/s assumed).
        let d = p.decide(2, obs(5, 0, 0.0), Instant::now());
        assert!(!d.changes(), "{d}");
    }

    #[test]
    fn zero_workers_with_anything_ready_get_one() {
        let mut p = Policy::new(0, 4, settings());
        let d = p.decide(0, obs(1, 0, 0.0), Instant::now());
        assert_eq!(d.to, 1);
        let d = p.decide(0, IDLE, Instant::now());
        assert_eq!(d.to, 0);
    }

    #[test]
    fn scale_ups_wait_for_their_cooldown() {
        let t0 = Instant::now();
        let mut p = Policy::new(1, 8, settings());
        assert_eq!(p.decide(1, obs(10_000, 0, 100.0), t0).to, 2);
        let d = p.decide(2, obs(10_000, 0, 100.0), t0 + Duration::from_secs(5));
        assert_eq!(d.to, 2);
        assert!(d.to_string().contains("cooling down"), "{d}");
        assert_eq!(
            p.decide(2, obs(10_000, 0, 100.0), t0 + Duration::from_secs(11))
                .to,
            4
        );
    }

    #[test]
    fn scale_down_needs_an_empty_idle_queue_for_the_idle_time_and_goes_one_at_a_time() {
        let t0 = Instant::now();
        let mut p = Policy::new(1, 8, settings());
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(p.decide(4, IDLE, at(0)).to, 4, "just emptied");
        assert_eq!(p.decide(4, IDLE, at(20)).to, 4, "not idle long enough");
        // Messages in flight: consumers are not idle, the idle clock restarts.
        assert_eq!(p.decide(4, obs(0, 3, 50.0), at(25)).to, 4);
        assert_eq!(p.decide(4, IDLE, at(30)).to, 4);
        let d = p.decide(4, IDLE, at(61));
        assert_eq!((d.from, d.to), (4, 3));
        assert_eq!(d.to_string(), "4→3: queue empty and idle for 31 s");
        assert_eq!(p.decide(3, IDLE, at(70)).to, 3, "down cooldown");
        assert_eq!(p.decide(3, IDLE, at(92)).to, 2);
        assert_eq!(p.decide(2, IDLE, at(123)).to, 1);
        assert_eq!(p.decide(1, IDLE, at(200)).to, 1, "never below MIN");
    }

    #[test]
    fn a_recent_scale_up_delays_the_scale_down() {
        let t0 = Instant::now();
        let settings = PolicySettings {
            idle: Duration::from_secs(1),
            ..settings()
        };
        let mut p = Policy::new(1, 8, settings);
        assert_eq!(p.decide(1, obs(5000, 0, 10.0), t0).to, 2);
        assert_eq!(p.decide(2, IDLE, t0 + Duration::from_secs(5)).to, 2);
        assert_eq!(p.decide(2, IDLE, t0 + Duration::from_secs(29)).to, 2);
        assert_eq!(p.decide(2, IDLE, t0 + Duration::from_secs(31)).to, 1);
    }

    #[test]
    fn missing_data_freezes_the_count_and_restarts_the_idle_clock() {
        let t0 = Instant::now();
        let mut p = Policy::new(1, 8, settings());
        assert_eq!(p.decide(5, IDLE, t0).to, 5);
        let d = p.decide(
            5,
            Err("management API not reachable".into()),
            t0 + Duration::from_secs(40),
        );
        assert_eq!(d.to, 5);
        assert!(d.to_string().contains("counts frozen"), "{d}");
        assert_eq!(
            p.decide(5, IDLE, t0 + Duration::from_secs(41)).to,
            5,
            "the idle time counts from the first observation after the gap"
        );
    }

    #[test]
    fn counts_outside_the_bounds_are_brought_in_and_fixed_counts_stay() {
        let mut p = Policy::new(2, 4, settings());
        assert_eq!(p.decide(0, IDLE, Instant::now()).to, 2);
        assert_eq!(p.decide(9, IDLE, Instant::now()).to, 4);
        let mut p = Policy::new(1, 1, settings());
        let d = p.decide(1, Err("down".into()), Instant::now());
        assert_eq!((d.to, d.reason), (1, Reason::Fixed));
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(5100), "5,100");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
