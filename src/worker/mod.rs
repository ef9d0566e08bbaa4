//! The worker runtime every service runs on: competing consumers with manual acks, a prefetch
//! window, N handlers at once, settlement by outcome (ack, retry ladder, dead letter), panics
//! caught, reconnection with jittered back-off, and graceful shutdown.
//!
//! The consume loop only feeds handlers and settles: a delivery is taken from the consumer only
//! once a handler slot is free. On shutdown the consumer is cancelled and what the broker already
//! sent (prefetched, still in the consumer's buffer) is handled and settled like any delivery,
//! within the grace period; only what is unfinished or unstarted when the grace period ends is
//! released with `basic.nack(requeue=true)`. A stop within the grace period hands nothing back,
//! so scaling down never raises a message's delivery count (RabbitMQ 3.10–4.2 count every
//! requeue toward `x-delivery-limit`).

mod acks;
mod breaker;
mod forward;
mod handler;
mod session;
mod settle;

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use acks::{AckFrame, AckTracker};
pub use breaker::{Breaker, BreakerSettings, Phase, Transition};
pub use handler::{Handler, Incoming, Outcome};
pub use settle::{Decision, SettlePolicy};

use self::forward::Forwarder;
use self::session::{Session, SessionEnd};
use crate::backoff::Backoff;
use crate::broker::BrokerError;
use crate::metrics::{QueueLabels, WorkerMetrics};
use crate::topology::Topology;

/// How long a session's set-up (declaring the topology, opening its channel) may wait for the
/// broker: a connection that gets no answer is taken for dead, dropped from the pool, and the
/// next session connects afresh.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How one worker process consumes.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Where failures go; its `queue` is the queue consumed.
    pub policy: SettlePolicy,
    /// Handlers running at once.
    pub concurrency: usize,
    /// Deliveries the broker sends ahead of acks. At least `concurrency`, so that every handler
    /// slot has work waiting; more only hides broker round-trips.
    pub prefetch: u16,
    /// How long the worker may keep handling after shutdown begins: the deliveries in flight and
    /// those already prefetched. Enough for a prefetch window's worth of handling means a stop
    /// never requeues.
    pub grace: Duration,
    /// How long a forwarded copy may wait for its confirm.
    pub confirm_timeout: Duration,
    /// Arguments of `basic.consume`, unless the handler gives them per session
    /// ([`Handler::consume_arguments`]).
    pub consume_arguments: FieldTable,
    /// The queue is a stream: no settlement ever sends `basic.nack` or `basic.reject` (before
    /// RabbitMQ 3.13 either closes the channel of a stream consumer). What would be released or
    /// rejected is acked instead (on a stream an ack only returns credit) and is read again from
    /// the reader's stored offset, never requeued.
    pub stream: bool,
    /// When a dependency outage stops consuming (see [`Breaker`]).
    pub breaker: BreakerSettings,
}

/// The worker runtime for one queue.
pub struct Worker<H> {
    config: WorkerConfig,
    handler: Arc<H>,
    pool: crate::broker::Pool,
    metrics: Arc<WorkerMetrics>,
    topology: Option<Arc<Topology>>,
    breaker: breaker::Watch,
}

impl<H: Handler> Worker<H> {
    /// A worker that consumes `config.policy.queue` with `handler`.
    pub fn new(
        config: WorkerConfig,
        handler: Arc<H>,
        pool: crate::broker::Pool,
        metrics: Arc<WorkerMetrics>,
    ) -> Self {
        Self {
            breaker: breaker::Watch::new(&config.policy.queue, config.breaker.clone()),
            config,
            handler,
            pool,
            metrics,
            topology: None,
        }
    }

    /// Declares `topology` on every new connection before consuming, so that a worker
    /// recreates what it needs after a broker lost its definitions. Drift is logged, not fatal.
    #[must_use]
    pub fn declare(mut self, topology: Arc<Topology>) -> Self {
        self.topology = Some(topology);
        self
    }

    /// Consumes until `shutdown` is cancelled, then drains and returns.
    ///
    /// # Errors
    /// Only what retrying cannot fix: the broker refused the login or the vhost.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let queue = self.config.policy.queue.clone();
        let mut backoff = Backoff::default();
        let mut sessions = 0u64;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let end = self.session(&shutdown, &mut backoff, sessions).await;
            match end {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::Lost(reason)) => {
                    sessions += 1;
                    let delay = backoff.next_delay();
                    warn!(%queue, %reason, attempt = backoff.attempts(), ?delay, "connection lost; reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) if e.is_transient() => {
                    let delay = backoff.next_delay();
                    warn!(%queue, error = %e, attempt = backoff.attempts(), ?delay, "broker unavailable; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        info!(%queue, "worker stopped");
        Ok(())
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
        sessions: u64,
    ) -> Result<SessionEnd, BrokerError> {
        let queue = self.config.policy.queue.as_str();
        let conn = self.pool.connection().await?;
        let lost =
            |what: &str, e: &dyn std::fmt::Display| Ok(SessionEnd::Lost(format!("{what}: {e}")));
        if let Some(topology) = &self.topology {
            let applied =
                tokio::time::timeout(SETUP_TIMEOUT, crate::topology::apply(&conn, topology))
                    .await
                    .map_err(|_| format!("no answer within {SETUP_TIMEOUT:?}"))
                    .and_then(|r| r.map_err(|e| e.to_string()));
            match applied {
                Ok(report) => {
                    for drift in &report.drift {
                        warn!(%queue, drift = %drift.describe("the topology file"), "topology drift");
                    }
                }
                Err(e) => {
                    // A connection that failed here goes, so the next session gets a fresh one
                    // rather than the same (perhaps dead) one from the pool.
                    crate::broker::discard(conn);
                    return lost("declaring the topology", &e);
                }
            }
        }
        let opened = tokio::time::timeout(SETUP_TIMEOUT, conn.create_channel())
            .await
            .map_err(|_| format!("no answer within {SETUP_TIMEOUT:?}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        let consume_channel = match opened {
            Ok(c) => c,
            Err(e) => {
                crate::broker::discard(conn);
                return lost("opening a channel", &e);
            }
        };
        let forwarder = Forwarder::new(&conn, self.config.confirm_timeout);
        if let Err(e) = consume_channel
            .basic_qos(self.config.prefetch.max(1), BasicQosOptions::default())
            .await
        {
            return lost("setting prefetch", &e);
        }
        let arguments = match self.handler.consume_arguments().await {
            Ok(Some(arguments)) => arguments,
            Ok(None) => self.config.consume_arguments.clone(),
            Err(e) => return lost("asking where to resume", &format!("{e:#}")),
        };
        let mut consumer = match consume_channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                arguments.clone(),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return lost(&format!("consuming from {queue}"), &e),
        };
        backoff.reset();
        if sessions > 0 {
            self.metrics
                .reconnects
                .get_or_create(&QueueLabels {
                    queue: queue.to_owned(),
                })
                .inc();
            info!(%queue, "reconnected and consuming again");
        } else {
            info!(%queue, concurrency = self.config.concurrency, prefetch = self.config.prefetch, "consuming");
        }

        let end = Session {
            handler: self.handler.as_ref(),
            policy: &self.config.policy,
            metrics: &self.metrics,
            channel: &consume_channel,
            forwarder: &forwarder,
            concurrency: self.config.concurrency,
            grace: self.config.grace,
            stream: self.config.stream,
            breaker: &self.breaker,
            consume_arguments: &arguments,
        }
        .consume(&mut consumer, shutdown)
        .await;
        if matches!(end, SessionEnd::Shutdown) {
            forwarder.close("shutdown").await;
            crate::broker::close_channel(&consume_channel, "shutdown").await;
            crate::broker::close(&conn, "shutdown").await;
        } else if conn.status().connected() {
            // The connection outlived the session (e.g. the broker cancelled the consumer because
            // the queue was deleted): close this session's channels so that whatever is still
            // unsettled goes back to the queue now and the pooled connection does not collect
            // dead channels.
            let close = async {
                crate::broker::close_channel(&consume_channel, "session ended").await;
                forwarder.close("session ended").await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
        }
        Ok(end)
    }
}
