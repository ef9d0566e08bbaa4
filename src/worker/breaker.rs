//! A circuit breaker per dependency: when most of a worker's recent attempts failed because the
//! same dependency (the mail server, the database) is unavailable, the worker stops consuming,
//! probes the dependency with back-off, and consumes again once it answers. Without it, every
//! message of an outage climbs the retry ladder in seconds and is dead-lettered, although
//! nothing is wrong with it.
//!
//! [`Breaker`] is the pure state machine (no clock of its own, no I/O): the session feeds it
//! every handler outcome and the probe results, and asks it whether to consume.
//!
//! - **Closed**: consuming. The last `window` outcomes are kept; when `threshold` of them are
//!   [`Outcome::Unavailable`] naming one dependency, the breaker opens on that dependency.
//! - **Open**: the consumer is cancelled; the dependency is probed after `probe_base`, doubling
//!   up to `probe_cap` after each failed probe.
//! - **Half-open**: the probe answered; consuming again, one handler at a time. The first
//!   outcome decides: unavailable on the same dependency opens again (the probe back-off keeps
//!   growing), anything else closes the breaker and forgets the window.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::{info, warn};

use super::handler::Outcome;
use crate::metrics::{BreakerLabels, WorkerMetrics};

/// When the breaker opens and how it probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Outcomes remembered.
    pub window: usize,
    /// Failures on one dependency among the last `window` outcomes that open the breaker; 0
    /// disables the breaker.
    pub threshold: usize,
    /// Delay before the first probe.
    pub probe_base: Duration,
    /// Longest delay between probes.
    pub probe_cap: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            window: 20,
            threshold: 11,
            probe_base: Duration::from_secs(1),
            probe_cap: Duration::from_secs(30),
        }
    }
}

/// Where the breaker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Consuming.
    Closed,
    /// Not consuming; probing `dependency`.
    Open {
        /// The dependency that is down.
        dependency: String,
    },
    /// The probe answered; consuming one at a time until an outcome decides.
    HalfOpen {
        /// The dependency that was down.
        dependency: String,
    },
}

/// A change of phase, for the log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The breaker opened (or opened again after a half-open trial failed).
    Opened {
        /// The dependency that is down.
        dependency: String,
        /// Why: e.g. "12 of the last 20 attempts failed on smtp: connection refused".
        reason: String,
    },
    /// A probe answered: consuming again on trial.
    HalfOpened {
        /// The dependency.
        dependency: String,
    },
    /// A trial succeeded: consuming as usual.
    Closed {
        /// The dependency.
        dependency: String,
    },
}

/// The state machine of one worker's breaker (all dependencies of its handler).
#[derive(Debug, Clone)]
pub struct Breaker {
    settings: BreakerSettings,
    /// The last outcomes: `Some(dependency)` for one that found it unavailable.
    recent: VecDeque<Option<String>>,
    phase: Phase,
    /// Probes failed since the breaker opened (sets the back-off).
    probes: u32,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            recent: VecDeque::with_capacity(settings.window),
            settings,
            phase: Phase::Closed,
            probes: 0,
        }
    }

    /// Where the breaker is.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Whether the worker should stop consuming.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    /// Whether the worker consumes on trial (one handler at a time).
    pub fn is_half_open(&self) -> bool {
        matches!(self.phase, Phase::HalfOpen { .. })
    }

    /// The dependency the breaker is open or half-open on.
    pub fn dependency(&self) -> Option<&str> {
        match &self.phase {
            Phase::Closed => None,
            Phase::Open { dependency } | Phase::HalfOpen { dependency } => Some(dependency),
        }
    }

    /// Records a handler's outcome.
    pub fn record(&mut self, outcome: &Outcome) -> Option<Transition> {
        let down = match outcome {
            Outcome::Unavailable { dependency, .. } => Some(*dependency),
            _ => None,
        };
        match &self.phase {
            // Handlers that were running when the breaker opened finish meanwhile; their
            // outcomes say nothing new.
            Phase::Open { .. } => None,
            Phase::HalfOpen { dependency } => {
                let dependency = dependency.clone();
                if down == Some(dependency.as_str()) {
                    self.phase = Phase::Open {
                        dependency: dependency.clone(),
                    };
                    Some(Transition::Opened {
                        reason: format!(
                            "the first attempt after a successful probe failed on {dependency}: {}",
                            reason_of(outcome)
                        ),
                        dependency,
                    })
                } else {
                    self.close();
                    Some(Transition::Closed { dependency })
                }
            }
            Phase::Closed => {
                if self.settings.threshold == 0 || self.settings.window == 0 {
                    return None;
                }
                if self.recent.len() == self.settings.window {
                    self.recent.pop_front();
                }
                self.recent.push_back(down.map(str::to_owned));
                let dependency = down?;
                let failures = self
                    .recent
                    .iter()
                    .filter(|d| d.as_deref() == Some(dependency))
                    .count();
                if failures < self.settings.threshold {
                    return None;
                }
                self.phase = Phase::Open {
                    dependency: dependency.to_owned(),
                };
                self.probes = 0;
                Some(Transition::Opened {
                    dependency: dependency.to_owned(),
                    reason: format!(
                        "{failures} of the last {} attempts failed on {dependency}: {}",
                        self.recent.len(),
                        reason_of(outcome)
                    ),
                })
            }
        }
    }

    /// How long to wait before the next probe.
    pub fn probe_delay(&self) -> Duration {
        self.settings
            .probe_base
            .saturating_mul(1u32 << self.probes.min(16))
            .min(self.settings.probe_cap)
    }

    /// The probe failed: the next one waits longer.
    pub fn probe_failed(&mut self) {
        self.probes = self.probes.saturating_add(1);
    }

    /// The probe answered: consume again, on trial.
    pub fn probe_succeeded(&mut self) -> Option<Transition> {
        let Phase::Open { dependency } = &self.phase else {
            return None;
        };
        let dependency = dependency.clone();
        self.phase = Phase::HalfOpen {
            dependency: dependency.clone(),
        };
        Some(Transition::HalfOpened { dependency })
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.recent.clear();
        self.probes = 0;
    }
}

/// A worker's breaker as the runtime uses it: shared by its sessions (a reconnect does not
/// forget an outage), every transition logged with its reason and exported in
/// `burrow_breaker_state{queue,dependency}` / `burrow_breaker_opened_total`.
pub struct Watch {
    queue: String,
    breaker: Mutex<Breaker>,
}

impl Watch {
    /// A closed breaker for the worker of `queue`.
    pub fn new(queue: &str, settings: BreakerSettings) -> Self {
        Self {
            queue: queue.to_owned(),
            breaker: Mutex::new(Breaker::new(settings)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether consuming runs on trial, one handler at a time.
    pub fn is_half_open(&self) -> bool {
        self.lock().is_half_open()
    }

    /// The dependency the breaker is open on, with the delay before the next probe.
    pub fn next_probe(&self) -> Option<(String, Duration)> {
        let b = self.lock();
        b.is_open()
            .then(|| b.dependency().map(|d| (d.to_owned(), b.probe_delay())))
            .flatten()
    }

    /// Records a handler's outcome.
    pub fn record(&self, outcome: &Outcome, metrics: &WorkerMetrics) {
        let transition = self.lock().record(outcome);
        if let Some(t) = transition {
            self.report(&t, metrics);
        }
    }

    /// A probe of `dependency` failed with `error`.
    pub fn probe_failed(&self, dependency: &str, error: &str) {
        let delay = {
            let mut b = self.lock();
            b.probe_failed();
            b.probe_delay()
        };
        info!(queue = %self.queue, %dependency, %error, next_probe = ?delay, "circuit breaker: dependency still down");
    }

    /// A probe answered.
    pub fn probe_succeeded(&self, metrics: &WorkerMetrics) {
        let transition = self.lock().probe_succeeded();
        if let Some(t) = transition {
            self.report(&t, metrics);
        }
    }

    fn report(&self, transition: &Transition, metrics: &WorkerMetrics) {
        let labels = |dependency: &str| BreakerLabels {
            queue: self.queue.clone(),
            dependency: dependency.to_owned(),
        };
        let queue = &self.queue;
        match transition {
            Transition::Opened { dependency, reason } => {
                warn!(%queue, %dependency, %reason, "circuit breaker opened: consuming stops until the dependency answers");
                metrics
                    .breaker_state
                    .get_or_create(&labels(dependency))
                    .set(2);
                metrics
                    .breaker_opened
                    .get_or_create(&labels(dependency))
                    .inc();
            }
            Transition::HalfOpened { dependency } => {
                info!(%queue, %dependency, reason = "the probe answered", "circuit breaker half-open: consuming again, one at a time");
                metrics
                    .breaker_state
                    .get_or_create(&labels(dependency))
                    .set(1);
            }
            Transition::Closed { dependency } => {
                info!(%queue, %dependency, reason = "an attempt after the probe did not find it down", "circuit breaker closed: consuming as usual");
                metrics
                    .breaker_state
                    .get_or_create(&labels(dependency))
                    .set(0);
            }
        }
    }
}

fn reason_of(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Success => "",
        Outcome::Transient(r) | Outcome::Permanent(r) | Outcome::Unavailable { reason: r, .. } => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            window: 4,
            threshold: 3,
            probe_base: Duration::from_millis(100),
            probe_cap: Duration::from_millis(350),
        }
    }

    fn down(dependency: &'static str) -> Outcome {
        Outcome::Unavailable {
            dependency,
            reason: "connection refused".into(),
        }
    }

    #[test]
    fn opens_when_most_recent_attempts_fail_on_one_dependency() {
        let mut b = Breaker::new(settings());
        assert_eq!(b.record(&down("smtp")), None);
        assert_eq!(b.record(&Outcome::Success), None);
        assert_eq!(b.record(&down("smtp")), None);
        let t = b.record(&down("smtp")).expect("opens at 3 of 4");
        match t {
            Transition::Opened { dependency, reason } => {
                assert_eq!(dependency, "smtp");
                assert!(
                    reason.starts_with("3 of the last 4 attempts failed on smtp"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(b.is_open());
        assert_eq!(b.dependency(), Some("smtp"));
    }

    #[test]
    fn failures_spread_over_dependencies_or_out_of_the_window_do_not_open() {
        let mut b = Breaker::new(settings());
        for o in [
            down("smtp"),
            down("db"),
            down("smtp"),
            down("db"),
            down("smtp"),
        ] {
            assert_eq!(b.record(&o), None);
        }
        // Old failures leave the window: 2 of the last 4 are smtp.
        let mut b = Breaker::new(settings());
        for o in [
            down("smtp"),
            down("smtp"),
            Outcome::Success,
            Outcome::Transient("carrier".into()),
            Outcome::Permanent("bad json".into()),
            down("smtp"),
            down("smtp"),
        ] {
            assert_eq!(b.record(&o), None);
        }
        assert!(!b.is_open());
    }

    #[test]
    fn a_zero_threshold_disables_the_breaker() {
        let mut b = Breaker::new(BreakerSettings {
            threshold: 0,
            ..settings()
        });
        for _ in 0..10 {
            assert_eq!(b.record(&down("smtp")), None);
        }
    }

    #[test]
    fn probes_back_off_then_a_trial_closes() {
        let mut b = Breaker::new(settings());
        for _ in 0..3 {
            b.record(&down("smtp"));
        }
        assert_eq!(b.probe_delay(), Duration::from_millis(100));
        b.probe_failed();
        assert_eq!(b.probe_delay(), Duration::from_millis(200));
        b.probe_failed();
        assert_eq!(b.probe_delay(), Duration::from_millis(350), "capped");
        // Outcomes of handlers still running when it opened change nothing.
        assert_eq!(b.record(&Outcome::Success), None);
        assert!(b.is_open());

        assert_eq!(
            b.probe_succeeded(),
            Some(Transition::HalfOpened {
                dependency: "smtp".into()
            })
        );
        assert!(b.is_half_open() && !b.is_open());
        assert_eq!(
            b.record(&Outcome::Success),
            Some(Transition::Closed {
                dependency: "smtp".into()
            })
        );
        assert_eq!(b.phase(), &Phase::Closed);
        // The window was forgotten: two more failures do not reopen it.
        b.record(&down("smtp"));
        assert_eq!(b.record(&down("smtp")), None);
        assert_eq!(b.probe_delay(), Duration::from_millis(100));
    }

    #[test]
    fn a_failed_trial_reopens_at_once_and_keeps_backing_off() {
        let mut b = Breaker::new(settings());
        for _ in 0..3 {
            b.record(&down("smtp"));
        }
        b.probe_failed();
        b.probe_succeeded();
        let t = b.record(&down("smtp")).expect("reopens");
        assert!(matches!(t, Transition::Opened { ref dependency, .. } if dependency == "smtp"));
        assert!(b.is_open());
        assert_eq!(b.probe_delay(), Duration::from_millis(200));
        // A failure on another dependency during the trial does not keep it open.
        b.probe_succeeded();
        assert!(matches!(
            b.record(&down("db")),
            Some(Transition::Closed { .. })
        ));
    }
}
