//! One session's consume loop, on one task: deliveries are taken from the consumer only while a
//! handler slot is free, the handlers of a session run concurrently as futures of that task (no
//! task per delivery, no channel between handlers and the acks), and acks are sent batched, the
//! way a hand-tuned lapin consumer does it: `basic.ack(multiple=true)` every [`ACK_BATCH`]
//! successes and whenever nothing else is ready, so an ack never waits for more traffic.
//!
//! Handlers share the task: a handler that burns CPU for long should move that work to
//! `tokio::task::spawn_blocking` (the fulfillment store already runs on a thread of its own).

use std::future::Future;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::BasicCancelOptions;
use lapin::Channel;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::acks::{Settlement, Settler};
use super::handler::{Handler, Incoming, Outcome};
use super::settle::{Decision, SettlePolicy};
use crate::metrics::{OutcomeLabels, QueueLabels, WorkerMetrics};
use crate::publisher::{self, Fate};

/// Successes acknowledged with one frame at most; fewer when the loop runs out of work first.
pub const ACK_BATCH: usize = 64;

/// How a session ended.
pub enum SessionEnd {
    /// Shutdown was requested; the session drained.
    Shutdown,
    /// The connection, the channel or the consumer went away.
    Lost(String),
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

/// What one session needs: its channels and the worker's handler, policy and limits.
pub struct Session<'a, H> {
    pub handler: &'a H,
    pub policy: &'a SettlePolicy,
    pub metrics: &'a WorkerMetrics,
    /// The channel consumed from; delivery tags belong to it.
    pub channel: &'a Channel,
    /// A confirm channel for forwarding failed messages.
    pub publish_channel: &'a Channel,
    pub concurrency: usize,
    pub grace: Duration,
    pub confirm_timeout: Duration,
    /// Settle as a stream consumer: never nack or reject (see `WorkerConfig::stream`).
    pub stream: bool,
}

impl<H: Handler> Session<'_, H> {
    /// Consumes until shutdown or until the session is lost, then lets the handlers in flight
    /// finish (within the grace period) and settles them while the channel lives.
    pub async fn consume(
        &self,
        consumer: &mut lapin::Consumer,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let queue = self.policy.queue.as_str();
        let hot = HotMetrics::resolve(self.metrics, queue);
        let mut settler = Settler::new(self.channel, self.stream);
        let mut jobs = FuturesUnordered::new();
        // While every handler slot is busy the consumer is not polled, so the channel's health
        // is checked on a tick too: a dead connection ends the session even then.
        let mut health = tokio::time::interval(Duration::from_secs(1));
        health.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let concurrency = self.concurrency.max(1);
        // One waiter for the whole session, not one registered and dropped per loop turn.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);

        let end = loop {
            let room = jobs.len() < concurrency;
            let unflushed = settler.ready() > 0;
            tokio::select! {
                biased;
                () = &mut cancelled => break SessionEnd::Shutdown,
                Some((tag, settlement)) = jobs.next(), if !jobs.is_empty() => {
                    settler.settle(tag, settlement).await;
                    if settler.ready() >= ACK_BATCH {
                        settler.flush().await;
                    }
                }
                delivery = consumer.next(), if room => match delivery {
                    Some(Ok(delivery)) => {
                        settler.received(delivery.delivery_tag);
                        jobs.push(self.job(&hot, delivery));
                    }
                    Some(Err(e)) => break SessionEnd::Lost(format!("consumer failed: {e}")),
                    None => {
                        break SessionEnd::Lost(format!(
                            "the broker cancelled the consumer of {queue} (queue deleted?)"
                        ))
                    }
                },
                // Nothing else is ready: send the acks now rather than wait for more traffic.
                () = std::future::ready(()), if unflushed => settler.flush().await,
                _ = health.tick(), if !room => {
                    if !self.channel.status().connected() {
                        break SessionEnd::Lost(
                            "the channel closed while every handler was busy".into(),
                        );
                    }
                }
            }
        };

        let consumer = match end {
            SessionEnd::Shutdown => {
                info!(%queue, "shutting down: no new work; finishing handlers in flight");
                if let Err(e) = self
                    .channel
                    .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                    .await
                {
                    debug!(error = %e, "cancel failed");
                }
                Some(consumer)
            }
            SessionEnd::Lost(_) => None,
        };
        self.finish(&mut jobs, &mut settler, consumer).await;
        end
    }

    /// Runs the handlers in flight to completion (at most the grace period) and settles them;
    /// releases with `basic.nack(requeue=true)` what the consumer still holds (prefetched, never
    /// started) and, after the grace period, whatever is still unsettled.
    async fn finish<F>(
        &self,
        jobs: &mut FuturesUnordered<F>,
        settler: &mut Settler<'_>,
        mut consumer: Option<&mut lapin::Consumer>,
    ) where
        F: Future<Output = (u64, Settlement)>,
    {
        let queue = self.policy.queue.as_str();
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.grace;
        let mut released = 0u32;
        let mut in_time = true;
        while !jobs.is_empty() || consumer.is_some() {
            let unflushed = settler.ready() > 0;
            let open = consumer.is_some();
            let buffered = async {
                match consumer.as_mut() {
                    Some(c) => tokio::time::timeout(Duration::from_millis(500), c.next()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some((tag, s)) = jobs.next(), if !jobs.is_empty() => settler.settle(tag, s).await,
                d = buffered, if open => match d {
                    Ok(Some(Ok(d))) => {
                        settler.received(d.delivery_tag);
                        settler.release(d.delivery_tag).await;
                        released += 1;
                    }
                    _ => consumer = None,
                },
                () = std::future::ready(()), if unflushed => settler.flush().await,
                () = tokio::time::sleep_until(deadline) => {
                    in_time = false;
                    break;
                }
            }
        }
        settler.flush().await;
        if !in_time {
            warn!(%queue, grace = ?self.grace, unfinished = jobs.len(), "grace period over; releasing unfinished deliveries");
        }
        settler.release_unsettled().await;
        if settler.dead() {
            debug!(%queue, "some settlements were not sent: the channel is closed; the broker redelivers them");
        }
        info!(%queue, released, waited_ms = started.elapsed().as_millis() as u64, "session finished");
    }

    /// Handles one delivery and decides its settlement: ack, or forward a copy (retry or dead
    /// letter) and ack once the copy is confirmed, or reject(requeue) when the forward failed.
    async fn job(&self, hot: &HotMetrics, delivery: Delivery) -> (u64, Settlement) {
        let tag = delivery.delivery_tag;
        let msg = Incoming {
            body: delivery.data,
            properties: delivery.properties,
            exchange: delivery.exchange.to_string(),
            routing_key: delivery.routing_key.to_string(),
            redelivered: delivery.redelivered,
        };
        hot.in_flight.inc();
        let started = Instant::now();
        let outcome = std::panic::AssertUnwindSafe(self.handler.handle(&msg))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Outcome::Transient(format!("handler panicked: {}", panic_text(&panic)))
            });
        hot.handler_seconds.observe(started.elapsed().as_secs_f64());
        hot.in_flight.dec();
        let queue = &self.policy.queue;
        let (copy, outcome, reason) = match self.policy.decide(&msg, outcome) {
            Decision::Ack => {
                hot.success.inc();
                return (tag, Settlement::Ack);
            }
            Decision::Forward {
                copy,
                outcome,
                reason,
            } => (copy, outcome, reason),
        };
        let id = msg.message_id().unwrap_or("-");
        match publisher::publish_one(self.publish_channel, &copy, self.confirm_timeout).await {
            Ok(Fate::Confirmed) => {
                if outcome == "dead_lettered" {
                    warn!(%queue, message_id = %id, %reason, "dead-lettered");
                } else {
                    info!(%queue, message_id = %id, %reason, to = %copy.routing_key, "scheduled retry");
                }
                self.metrics.count(queue, outcome);
                (tag, Settlement::Ack)
            }
            other => {
                let why = match other {
                    Ok(fate) => format!("{fate:?}"),
                    Err(e) => format!("{e:#}"),
                };
                error!(%queue, message_id = %id, error = %why, "could not forward a failed message; requeueing it");
                self.metrics.count(queue, "requeued");
                (tag, Settlement::Reject)
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
