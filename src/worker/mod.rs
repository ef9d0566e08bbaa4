//! The worker runtime every service runs on: competing consumers with manual acks, a prefetch
//! window, N handlers at once, settlement by outcome (ack, retry ladder, dead letter), panics
//! caught, reconnection with jittered back-off, and graceful shutdown.
//!
//! The consume loop only feeds handlers and settles: a delivery is taken from the consumer only
//! once a handler slot is free, so on shutdown whatever the broker prefetched but no handler
//! started is still in the consumer's buffer and is released with `basic.nack(requeue=true)`.

mod acks;
mod handler;
mod settle;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

pub use acks::{AckFrame, AckTracker};
pub use handler::{Handler, Incoming, Outcome};
pub use settle::{Decision, SettlePolicy};

use crate::backoff::Backoff;
use crate::broker::BrokerError;
use crate::metrics::{OutcomeLabels, QueueLabels, WorkerMetrics};
use crate::publisher::{self, Fate};
use crate::topology::Topology;

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
    /// How long in-flight handlers may run after shutdown begins.
    pub grace: Duration,
    /// How long a forwarded copy may wait for its confirm.
    pub confirm_timeout: Duration,
    /// Arguments of `basic.consume`, e.g. `x-stream-offset` when consuming a stream.
    pub consume_arguments: FieldTable,
}

/// The worker runtime for one queue.
pub struct Worker<H> {
    config: WorkerConfig,
    handler: Arc<H>,
    pool: crate::broker::Pool,
    metrics: Arc<WorkerMetrics>,
    topology: Option<Arc<Topology>>,
}

enum Settle {
    Received(u64),
    Ack(u64),
    /// A failed forward: `basic.reject(requeue=true)`, never `nack(multiple)`.
    Reject(u64),
    /// Not started or not finished at shutdown: `basic.nack(requeue=true)`, not a failure.
    Release(u64),
}

enum SessionEnd {
    Shutdown,
    Lost(String),
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
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let tasks = TaskTracker::new();
        let mut backoff = Backoff::default();
        let mut sessions = 0u64;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let end = self
                .session(&slots, &tasks, &shutdown, &mut backoff, sessions)
                .await;
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
        tasks.close();
        if tokio::time::timeout(self.config.grace, tasks.wait())
            .await
            .is_err()
        {
            warn!(%queue, "handlers still running after the grace period; their messages will be redelivered");
        }
        info!(%queue, "worker stopped");
        Ok(())
    }

    async fn session(
        &self,
        slots: &Arc<Semaphore>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
        sessions: u64,
    ) -> Result<SessionEnd, BrokerError> {
        let queue = self.config.policy.queue.as_str();
        let conn = self.pool.connection().await?;
        let lost =
            |what: &str, e: &dyn std::fmt::Display| Ok(SessionEnd::Lost(format!("{what}: {e}")));
        if let Some(topology) = &self.topology {
            match crate::topology::apply(&conn, topology).await {
                Ok(report) => {
                    for drift in &report.drift {
                        warn!(%queue, drift = %drift.describe("the topology file"), "topology drift");
                    }
                }
                Err(e) => return lost("declaring the topology", &e),
            }
        }
        let consume_channel = match conn.create_channel().await {
            Ok(c) => c,
            Err(e) => return lost("opening a channel", &e),
        };
        let publish_channel = match publisher::confirm_channel(&conn).await {
            Ok(c) => c,
            Err(e) => return lost("opening a confirm channel", &e),
        };
        if let Err(e) = consume_channel
            .basic_qos(self.config.prefetch.max(1), BasicQosOptions::default())
            .await
        {
            return lost("setting prefetch", &e);
        }
        let mut consumer = match consume_channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                self.config.consume_arguments.clone(),
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

        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        let stop_settling = CancellationToken::new();
        let settler = tokio::spawn(settle_loop(
            consume_channel.clone(),
            settle_rx,
            stop_settling.clone(),
        ));
        let publish_channel = Arc::new(publish_channel);
        let policy = Arc::new(self.config.policy.clone());
        let hot = Arc::new(HotMetrics::resolve(&self.metrics, queue));

        let end = loop {
            // While every handler slot is busy the consumer is not polled, so the channel's
            // health is checked here too: a dead connection ends the session even then.
            let permit = loop {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break None,
                    p = slots.clone().acquire_owned() => break Some(p.expect("semaphore never closed")),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        if !consume_channel.status().connected() {
                            break None;
                        }
                    }
                }
            };
            let Some(permit) = permit else {
                if shutdown.is_cancelled() {
                    break SessionEnd::Shutdown;
                }
                break SessionEnd::Lost("the channel closed while every handler was busy".into());
            };
            let delivery = tokio::select! {
                biased;
                () = shutdown.cancelled() => break SessionEnd::Shutdown,
                d = consumer.next() => d,
            };
            let delivery = match delivery {
                Some(Ok(d)) => d,
                Some(Err(e)) => break SessionEnd::Lost(format!("consumer failed: {e}")),
                None => {
                    break SessionEnd::Lost(format!(
                        "the broker cancelled the consumer of {queue} (queue deleted?)"
                    ))
                }
            };
            let tag = delivery.delivery_tag;
            let _ = settle_tx.send(Settle::Received(tag));
            let msg = Incoming {
                body: delivery.data,
                properties: delivery.properties,
                exchange: delivery.exchange.to_string(),
                routing_key: delivery.routing_key.to_string(),
                redelivered: delivery.redelivered,
            };
            let job = Job {
                handler: self.handler.clone(),
                policy: policy.clone(),
                hot: hot.clone(),
                publish_channel: publish_channel.clone(),
                settle: settle_tx.clone(),
                metrics: self.metrics.clone(),
                confirm_timeout: self.config.confirm_timeout,
            };
            tasks.spawn(async move {
                job.run(tag, msg).await;
                drop(permit);
            });
        };

        if matches!(end, SessionEnd::Shutdown) {
            self.drain(&consume_channel, &mut consumer, &settle_tx, tasks)
                .await;
        }
        drop(settle_tx);
        stop_settling.cancel();
        let _ = settler.await;
        if matches!(end, SessionEnd::Shutdown) {
            let _ = publish_channel.close(200, "shutdown".into()).await;
            let _ = consume_channel.close(200, "shutdown".into()).await;
            let _ = conn.close(200, "shutdown".into()).await;
        } else if conn.status().connected() {
            // The connection outlived the session (e.g. the broker cancelled the consumer because
            // the queue was deleted): close this session's channels so that their unsettled
            // deliveries go back to the queue now and the pooled connection does not collect
            // dead channels. In-flight handlers of this session settle nothing.
            let close = async {
                let _ = consume_channel.close(200, "session ended".into()).await;
                let _ = publish_channel.close(200, "session ended".into()).await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
        }
        Ok(end)
    }

    /// Stops consuming, releases what was prefetched and not started, and gives in-flight
    /// handlers the grace period to finish and settle.
    async fn drain(
        &self,
        channel: &Channel,
        consumer: &mut lapin::Consumer,
        settle: &mpsc::UnboundedSender<Settle>,
        tasks: &TaskTracker,
    ) {
        let queue = &self.config.policy.queue;
        info!(%queue, "shutting down: no new work; finishing handlers in flight");
        if let Err(e) = channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await
        {
            debug!(error = %e, "cancel failed");
        }
        let mut released = 0u32;
        while let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
        {
            let _ = settle.send(Settle::Received(d.delivery_tag));
            let _ = settle.send(Settle::Release(d.delivery_tag));
            released += 1;
        }
        let started = Instant::now();
        tasks.close();
        let finished = tokio::time::timeout(self.config.grace, tasks.wait())
            .await
            .is_ok();
        if !finished {
            warn!(%queue, grace = ?self.config.grace, "grace period over; releasing unfinished deliveries");
        }
        info!(%queue, released, waited_ms = started.elapsed().as_millis() as u64, "drained");
    }
}

/// The metric series every delivery touches, looked up once per session rather than once per
/// delivery (a lookup allocates the label strings and takes the family's lock).
struct HotMetrics {
    in_flight: Gauge,
    handler_seconds: Histogram,
    success: Counter,
}

impl HotMetrics {
    fn resolve(metrics: &WorkerMetrics, queue: &str) -> Self {
        let labels = QueueLabels {
            queue: queue.to_owned(),
        };
        let outcome = OutcomeLabels {
            queue: queue.to_owned(),
            outcome: "success".to_owned(),
        };
        Self {
            in_flight: metrics.in_flight.get_or_create(&labels).clone(),
            handler_seconds: metrics.handler_seconds.get_or_create(&labels).clone(),
            success: metrics.messages.get_or_create(&outcome).clone(),
        }
    }
}

struct Job<H> {
    handler: Arc<H>,
    /// Shared by every job of a session: cloning the policy per delivery allocated its strings.
    policy: Arc<SettlePolicy>,
    hot: Arc<HotMetrics>,
    publish_channel: Arc<Channel>,
    settle: mpsc::UnboundedSender<Settle>,
    metrics: Arc<WorkerMetrics>,
    confirm_timeout: Duration,
}

impl<H: Handler> Job<H> {
    async fn run(self, tag: u64, msg: Incoming) {
        let in_flight = &self.hot.in_flight;
        in_flight.inc();
        let started = Instant::now();
        let outcome = std::panic::AssertUnwindSafe(self.handler.handle(&msg))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Outcome::Transient(format!("handler panicked: {}", panic_text(&panic)))
            });
        self.hot
            .handler_seconds
            .observe(started.elapsed().as_secs_f64());
        in_flight.dec();
        let queue = &self.policy.queue;
        match self.policy.decide(&msg, outcome) {
            Decision::Ack => {
                self.hot.success.inc();
                let _ = self.settle.send(Settle::Ack(tag));
            }
            Decision::Forward {
                copy,
                outcome,
                reason,
            } => {
                let id = msg.message_id().unwrap_or("-");
                match publisher::publish_one(&self.publish_channel, &copy, self.confirm_timeout)
                    .await
                {
                    Ok(Fate::Confirmed) => {
                        if outcome == "dead_lettered" {
                            warn!(%queue, message_id = %id, %reason, "dead-lettered");
                        } else {
                            info!(%queue, message_id = %id, %reason, to = %copy.routing_key, "scheduled retry");
                        }
                        self.metrics.count(queue, outcome);
                        let _ = self.settle.send(Settle::Ack(tag));
                    }
                    other => {
                        let why = match other {
                            Ok(fate) => format!("{fate:?}"),
                            Err(e) => format!("{e:#}"),
                        };
                        error!(%queue, message_id = %id, error = %why, "could not forward a failed message; requeueing it");
                        self.metrics.count(queue, "requeued");
                        let _ = self.settle.send(Settle::Reject(tag));
                    }
                }
            }
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Owns the acks of one channel: batches them (see [`AckTracker`]) and sends rejects and
/// releases at once. Errors mean the channel is gone; the broker then redelivers whatever was
/// not settled, so they are only logged.
async fn settle_loop(
    channel: Channel,
    mut rx: mpsc::UnboundedReceiver<Settle>,
    stop: CancellationToken,
) {
    let mut tracker = AckTracker::default();
    let mut dead = false;
    loop {
        let first = tokio::select! {
            biased;
            cmd = rx.recv() => cmd,
            () = stop.cancelled() => rx.try_recv().ok(),
        };
        let Some(first) = first else { break };
        // Delivery tags belong to their channel: once it is closed nothing is sent (a tag on
        // another channel would settle some other delivery, or close that channel with 406).
        dead |= !channel.status().connected();
        let mut next = Some(first);
        while let Some(cmd) = next {
            match cmd {
                Settle::Received(tag) => tracker.received(tag),
                Settle::Ack(tag) => tracker.ack(tag),
                Settle::Reject(tag) => {
                    tracker.settled_otherwise(tag);
                    let opts = BasicRejectOptions { requeue: true };
                    dead = dead || channel.basic_reject(tag, opts).await.is_err();
                }
                Settle::Release(tag) => {
                    tracker.settled_otherwise(tag);
                    let opts = BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    };
                    dead = dead || channel.basic_nack(tag, opts).await.is_err();
                }
            }
            next = rx.try_recv().ok();
        }
        if dead {
            tracker.flush();
            continue;
        }
        for frame in tracker.flush() {
            let result = match frame {
                AckFrame::Single(tag) => {
                    channel
                        .basic_ack(tag, BasicAckOptions { multiple: false })
                        .await
                }
                AckFrame::UpTo(tag) => {
                    channel
                        .basic_ack(tag, BasicAckOptions { multiple: true })
                        .await
                }
            };
            dead = dead || result.is_err();
        }
    }
    // Anything still unsettled (handlers past the grace period) goes back to the queue.
    let leftover: Vec<u64> = tracker.unsettled().collect();
    for tag in leftover {
        let opts = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        dead = dead || channel.basic_nack(tag, opts).await.is_err();
    }
    if dead {
        debug!("some settlements were not sent: the channel is closed; the broker redelivers them");
    }
}
