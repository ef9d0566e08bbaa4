//! `burrow run`: a supervisor that keeps each service's worker processes between MIN and MAX
//! and follows the backlog. Every `supervisor.interval_ms` it reads each service's queue
//! through the management API, lets the [`policy`] decide the count (logging every change with
//! its reason), and [`workers`] starts, restarts or stops (SIGTERM, graceful drain) processes
//! to match. It writes its [`state`] for `burrow status` and serves `/metrics` ([`metrics`])
//! and `/state` on `--http`. On shutdown every worker gets SIGTERM and drains.
//!
//! The supervisor holds no broker connection and runs on one thread: it stays small (a few
//! MB of RSS) next to the workers it runs.

pub mod metrics;
pub mod policy;
pub mod state;
pub mod workers;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::management::Management;
use crate::service::Service;
use crate::settings::Settings;
use metrics::{ScalingLabels, ServiceLabels, SupervisorMetrics};
use policy::{Decision, Observation, Policy, PolicySettings, Reason};
use state::{ServiceState, SupervisorState};
use workers::{Event, GroupSettings, Launcher, WorkerEnd, WorkerGroup};

/// One `--service NAME=MIN..MAX` (or `NAME=N`, meaning `N..N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The service.
    pub service: Service,
    /// Fewest workers.
    pub min: u32,
    /// Most workers.
    pub max: u32,
}

/// Why a `--service` value is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not `NAME=MIN..MAX` or `NAME=N`.
    #[error("expected NAME=MIN..MAX or NAME=N (e.g. fulfillment=1..8)")]
    Syntax,
    /// No such service.
    #[error("unknown service '{0}' (fulfillment, notifications, analytics, recommendations)")]
    UnknownService(String),
    /// A count that is not a number.
    #[error("'{0}' is not a worker count")]
    Count(String),
    /// MIN > MAX.
    #[error("MIN {min} is greater than MAX {max}")]
    Inverted {
        /// MIN.
        min: u32,
        /// MAX.
        max: u32,
    },
    /// MAX is 0.
    #[error("MAX is 0: the service would never run")]
    Nothing,
    /// A range for the stream service.
    #[error("recommendations reads its stream in order and keeps one model: give one count (recommendations=1)")]
    StreamRange,
}

impl FromStr for ServiceSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, counts) = s.split_once('=').ok_or(SpecError::Syntax)?;
        let service = <Service as clap::ValueEnum>::from_str(name.trim(), true)
            .map_err(|_| SpecError::UnknownService(name.trim().to_owned()))?;
        let count = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| SpecError::Count(v.trim().to_owned()))
        };
        let (min, max) = match counts.split_once("..") {
            Some((min, max)) => (count(min)?, count(max)?),
            None => {
                let n = count(counts)?;
                (n, n)
            }
        };
        if min > max {
            return Err(SpecError::Inverted { min, max });
        }
        if max == 0 {
            return Err(SpecError::Nothing);
        }
        if service == Service::Recommendations && min != max {
            return Err(SpecError::StreamRange);
        }
        Ok(Self { service, min, max })
    }
}

impl fmt::Display for ServiceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}..{}", self.service.name(), self.min, self.max)
    }
}

/// What `burrow run` runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The services and their bounds (each service at most once).
    pub services: Vec<ServiceSpec>,
    /// Where to serve `/healthz`, `/metrics` and `/state`.
    pub http: Option<SocketAddr>,
    /// How workers are started.
    pub launcher: Launcher,
}

/// How one service's workers ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceExit {
    /// The service.
    pub service: Service,
    /// Each worker's pid and how it ended.
    pub workers: Vec<(u32, WorkerEnd)>,
    /// Scaling decisions that changed the count (the latest 1000).
    pub scalings: Vec<String>,
}

/// What a supervisor run did, once it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Per service, in the order given.
    pub services: Vec<ServiceExit>,
}

impl RunReport {
    /// Whether every worker stopped as asked ([`WorkerEnd::clean`]).
    pub fn clean(&self) -> bool {
        self.services
            .iter()
            .flat_map(|s| &s.workers)
            .all(|(_, end)| end.clean())
    }
}

/// One supervised service: its policy, processes and last decision.
struct Supervised {
    spec: ServiceSpec,
    policy: Policy,
    group: WorkerGroup,
    desired: u32,
    decision: Option<Decision>,
    last_change_at: Option<chrono::DateTime<chrono::Utc>>,
    scalings: Vec<String>,
    frozen: bool,
}

/// Scaling decisions kept for the final report (a supervisor runs for weeks).
const KEPT_SCALINGS: usize = 1000;

/// How often exits are noticed and the running count is reconciled with the wanted one.
const REAP_INTERVAL: Duration = Duration::from_millis(250);

/// Runs the supervisor until `shutdown` is cancelled, then stops every worker gracefully.
///
/// # Errors
/// A service given twice, bad management settings, or an HTTP address that cannot be bound.
pub async fn run(
    settings: &Settings,
    options: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<RunReport> {
    for (i, spec) in options.services.iter().enumerate() {
        anyhow::ensure!(
            !options.services[..i]
                .iter()
                .any(|s| s.service == spec.service),
            "--service {} is given twice",
            spec.service.name()
        );
    }
    anyhow::ensure!(!options.services.is_empty(), "no --service to run");
    let management = Management::new(&settings.management, &settings.amqp)?;
    let vhost = settings.amqp.url.vhost();
    let sup = &settings.supervisor;
    let policy_settings = PolicySettings::from(sup);
    let group_settings = GroupSettings {
        restart_base: Duration::from_millis(sup.restart_backoff_ms),
        restart_cap: Duration::from_millis(sup.restart_backoff_max_ms),
        crash_loop_exits: sup.crash_loop_exits.max(1),
        crash_window: Duration::from_secs(sup.crash_window_secs),
        // The worker's own grace period, plus time to close its connection.
        stop_grace: settings.worker.grace() + Duration::from_secs(5),
    };
    let metrics = Arc::new(SupervisorMetrics::default());
    let shared_state: Arc<Mutex<Option<SupervisorState>>> = Arc::default();
    let http = match options.http {
        Some(addr) => Some(
            crate::http::serve(
                addr,
                router(metrics.clone(), shared_state.clone()),
                shutdown.clone(),
            )
            .await?,
        ),
        None => None,
    };
    std::fs::create_dir_all(&settings.store.dir)
        .with_context(|| format!("creating {}", settings.store.dir.display()))?;
    let state_path = state::state_path(&settings.store.dir);

    let mut services: Vec<Supervised> = options
        .services
        .iter()
        .map(|spec| Supervised {
            spec: *spec,
            policy: Policy::new(spec.min, spec.max, policy_settings),
            group: WorkerGroup::new(spec.service, options.launcher.clone(), group_settings),
            desired: spec.min,
            decision: None,
            last_change_at: None,
            scalings: Vec::new(),
            frozen: false,
        })
        .collect();
    for s in &services {
        info!(
            service = s.spec.service.name(),
            min = s.spec.min,
            max = s.spec.max,
            "supervising {}",
            s.spec
        );
    }

    // Start MIN workers of each service before the first decision, so that the first state
    // written already counts them.
    for s in &mut services {
        let events = s.group.reconcile(s.desired, Instant::now());
        log_events(s.spec.service, &events);
        metrics.set_counts(s.spec.service.name(), s.desired, s.group.running());
    }
    let mut reap = tokio::time::interval(REAP_INTERVAL);
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut decide = tokio::time::interval(sup.interval());
    decide.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let write_state = |services: &[Supervised], stopped: bool| {
        let state = snapshot(services, http, stopped);
        if let Err(e) = state.write(&state_path) {
            warn!(error = %format!("{e:#}"), "cannot write the supervisor state");
        }
        *shared_state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(state);
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = reap.tick() => {
                let now = Instant::now();
                for s in &mut services {
                    let mut events = s.group.reap(now);
                    events.extend(s.group.reconcile(s.desired, now));
                    log_events(s.spec.service, &events);
                    let restarted = events.iter().filter(|e| matches!(e, Event::Exited { .. })).count();
                    let labels = ServiceLabels { service: s.spec.service.name().to_owned() };
                    metrics.restarts.get_or_create(&labels).inc_by(restarted as u64);
                    metrics.set_counts(s.spec.service.name(), s.desired, s.group.running());
                }
            }
            _ = decide.tick() => {
                for s in &mut services {
                    let observation = if s.spec.min == s.spec.max {
                        Err("fixed".to_owned())
                    } else {
                        observe(&management, &vhost, s.spec.service, sup.interval()).await
                    };
                    let decision = s.policy.decide(s.desired, observation, Instant::now());
                    record(s, decision, &metrics);
                }
                write_state(&services, false);
            }
        }
    }

    info!("stopping every worker (SIGTERM; each drains within its grace period)");
    let mut report = RunReport {
        services: Vec::new(),
    };
    let stops = services.iter_mut().map(|s| async {
        let workers = s.group.stop_all().await;
        let name = s.spec.service.name();
        for (pid, end) in &workers {
            info!(service = name, pid, "{name} worker {pid} stopped: {end}");
        }
        workers
    });
    let exits = futures::future::join_all(stops).await;
    for (s, workers) in services.iter_mut().zip(exits) {
        metrics.set_counts(s.spec.service.name(), 0, 0);
        report.services.push(ServiceExit {
            service: s.spec.service,
            workers,
            scalings: s.scalings.clone(),
        });
    }
    write_state(&services, true);
    Ok(report)
}

/// Logs a decision that changes the count or freezes it (once per outage), and remembers it.
fn record(s: &mut Supervised, decision: Decision, metrics: &SupervisorMetrics) {
    let name = s.spec.service.name();
    if decision.changes() {
        info!(
            service = name,
            from = decision.from,
            to = decision.to,
            "scale {name} {decision}"
        );
        let direction = if decision.to > decision.from {
            "up"
        } else {
            "down"
        };
        metrics
            .scalings
            .get_or_create(&ScalingLabels {
                service: name.to_owned(),
                direction: direction.to_owned(),
            })
            .inc();
        s.scalings.push(format!("scale {name} {decision}"));
        if s.scalings.len() > KEPT_SCALINGS {
            s.scalings.remove(0);
        }
        s.last_change_at = Some(chrono::Utc::now());
        s.desired = decision.to;
    }
    match &decision.reason {
        Reason::NoData { .. } if !s.frozen => {
            warn!(service = name, "hold {name} {decision}");
            s.frozen = true;
        }
        Reason::NoData { .. } => {}
        _ if s.frozen => {
            info!(service = name, "{name}: broker data is back ({decision})");
            s.frozen = false;
        }
        _ => {}
    }
    s.decision = Some(decision);
}

/// What the management API reports for `service`'s queue, or why there is nothing.
async fn observe(
    management: &Management,
    vhost: &str,
    service: Service,
    timeout: Duration,
) -> Result<Observation, String> {
    let queue = service.queue();
    let read = tokio::time::timeout(
        timeout.max(Duration::from_secs(2)),
        management.queue(vhost, queue),
    );
    let info = match read.await {
        Err(_) => {
            return Err(format!(
                "the management API did not answer within {timeout:?}"
            ))
        }
        Ok(Err(e)) => return Err(crate::settings::redact_url(&e.to_string())),
        Ok(Ok(None)) => return Err(format!("queue {queue} does not exist")),
        Ok(Ok(Some(info))) => info,
    };
    let status = crate::status::queue_status(queue, &info.kind, false, Some(&info));
    Ok(Observation {
        ready: status.ready.unwrap_or(0),
        unacked: status.unacked.unwrap_or(0),
        ack_rate: status.ack_rate.unwrap_or(0.0),
    })
}

fn log_events(service: Service, events: &[Event]) {
    let name = service.name();
    for e in events {
        match e {
            Event::Started { pid } => info!(service = name, pid, "started {name} worker {pid}"),
            Event::Exited {
                pid,
                code,
                restart_in,
                recent_exits,
                crash_loop: false,
            } => warn!(
                service = name,
                pid,
                ?code,
                recent_exits,
                "{name} worker {pid} exited on its own ({}); restarting in {restart_in:?}",
                exit_text(*code)
            ),
            Event::Exited {
                pid,
                code,
                restart_in,
                recent_exits,
                crash_loop: true,
            } => error!(
                service = name,
                pid,
                ?code,
                recent_exits,
                "crash loop: {name} workers exited {recent_exits} times recently (last {pid}: {}); next start in {restart_in:?}",
                exit_text(*code)
            ),
            Event::SpawnFailed { error, restart_in } => error!(
                service = name,
                "cannot start a {name} worker: {error}; retrying in {restart_in:?}"
            ),
            Event::Stopping { pid } => {
                info!(service = name, pid, "stopping {name} worker {pid} (SIGTERM, draining)");
            }
            Event::Stopped { pid, code } => {
                info!(service = name, pid, ?code, "{name} worker {pid} stopped ({})", exit_text(*code));
            }
            Event::Killed { pid } => warn!(
                service = name,
                pid,
                "{name} worker {pid} outlived its grace period: killed"
            ),
        }
    }
}

fn exit_text(code: Option<i32>) -> String {
    code.map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit {c}"))
}

fn snapshot(services: &[Supervised], http: Option<SocketAddr>, stopped: bool) -> SupervisorState {
    SupervisorState {
        pid: std::process::id(),
        updated_at: chrono::Utc::now(),
        stopped,
        http: http.map(|a| a.to_string()),
        services: services
            .iter()
            .map(|s| ServiceState {
                service: s.spec.service.name().to_owned(),
                min: s.spec.min,
                max: s.spec.max,
                desired: s.desired,
                running: s.group.running(),
                pids: s.group.pids(),
                restarts: s.group.restarts(),
                last_decision: s.decision.as_ref().map(ToString::to_string),
                decision: s.decision.clone(),
                last_change_at: s.last_change_at,
                recent_scalings: s.scalings
                    [s.scalings.len().saturating_sub(state::RECENT_SCALINGS)..]
                    .to_vec(),
            })
            .collect(),
    }
}

/// `/healthz`, `/metrics` and `/state` of the supervisor.
fn router(
    metrics: Arc<SupervisorMetrics>,
    state: Arc<Mutex<Option<SupervisorState>>>,
) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { crate::http::openmetrics(metrics.render()) }
            }),
        )
        .route(
            "/state",
            get(move || {
                let state = state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                async move { axum::Json(state) }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_specs_parse_ranges_and_single_counts() {
        let spec: ServiceSpec = "fulfillment=1..8".parse().expect("valid");
        assert_eq!(
            (spec.service, spec.min, spec.max),
            (Service::Fulfillment, 1, 8)
        );
        let spec: ServiceSpec = "analytics=1".parse().expect("valid");
        assert_eq!((spec.min, spec.max), (1, 1));
        let spec: ServiceSpec = "notifications=0..2".parse().expect("valid");
        assert_eq!((spec.min, spec.max), (0, 2));
        assert_eq!(spec.to_string(), "notifications=0..2");
    }

    #[test]
    fn bad_service_specs_say_what_is_wrong() {
        let err = |s: &str| s.parse::<ServiceSpec>().expect_err(s);
        assert_eq!(
            err("billing=1..2"),
            SpecError::UnknownService("billing".into())
        );
        assert_eq!(
            err("fulfillment=5..2"),
            SpecError::Inverted { min: 5, max: 2 }
        );
        assert_eq!(err("fulfillment=0..0"), SpecError::Nothing);
        assert_eq!(err("fulfillment"), SpecError::Syntax);
        assert_eq!(err("fulfillment=a..2"), SpecError::Count("a".into()));
        assert_eq!(err("recommendations=1..2"), SpecError::StreamRange);
    }
}
