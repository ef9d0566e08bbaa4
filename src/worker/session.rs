//! One session's consume loop, on one task: deliveries are taken from the consumer only while a
//! handler slot is free, the handlers of a session run concurrently as futures of that task (no
//! task per delivery, no channel between handlers and the acks), and acks are sent batched, the
//! way a hand-tuned lapin consumer does it: `basic.ack(multiple=true)` every [`ACK_BATCH`]
//! successes and whenever nothing else is ready, so an ack never waits for more traffic.
//!
//! Handlers share the task: a handler that burns CPU for long should move that work to
//! `tokio::task::spawn_blocking` (the fulfillment store already runs on a thread of its own).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

use super::acks::{Settlement, Settler};
use super::breaker::Watch;
use super::forward::Forwarder;
use super::handler::{Handler, Incoming, Outcome};
use super::settle::{Decision, SettlePolicy};
use crate::backoff::Backoff;
use crate::metrics::{OutcomeLabels, QueueLabels, WorkerMetrics};
use crate::publisher::Confirm;

/// How long a delivery whose copy could not be forwarded is held (the forward tried again with
/// back-off) before it is released to the queue.
pub const FORWARD_HOLD: Duration = Duration::from_secs(120);

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
    /// Forwards copies of failed messages on a confirm channel of its own.
    pub forwarder: &'a Forwarder<'a>,
    pub concurrency: usize,
    pub grace: Duration,
    /// Settle as a stream consumer: never nack or reject (see `WorkerConfig::stream`).
    pub stream: bool,
    /// The worker's circuit breaker; consuming pauses while it is open.
    pub breaker: &'a Watch,
    /// Arguments of `basic.consume`, for a consumer started again after a pause.
    pub consume_arguments: &'a FieldTable,
}

/// A running probe of a dependency: its name and the answer.
type Probe<'a> = Pin<Box<dyn Future<Output = (String, Result<(), String>)> + Send + 'a>>;

impl<H: Handler> Session<'_, H> {
    /// Consumes until shutdown or until the session is lost.
    ///
    /// On shutdown the consumer is cancelled (`basic.cancel`) and the session keeps handling
    /// and settling, with the usual concurrency, every delivery the broker already sent: lapin
    /// queues deliveries and the end of the consumer in one channel, in arrival order, and the
    /// end is queued when `cancel-ok` arrives, so the stream yields the whole buffer and then
    /// ends. All of this within the grace period; only what is unfinished or unstarted when it
    /// ends is released (`basic.nack(requeue=true)`). Releasing is what raises a message's
    /// delivery count (RabbitMQ 3.10–4.2 count every requeue toward `x-delivery-limit`), so a
    /// stop within the grace period never does.
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
        // Set once shutdown began: the end of the grace period.
        let mut draining: Option<tokio::time::Instant> = None;
        let grace_over = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace_over);
        // Whether the consumer may still yield deliveries.
        let mut open = true;
        let started = Instant::now();
        // The circuit breaker (see `breaker`): while it is open the consumer is cancelled, what
        // the broker had already sent is held here unstarted, and the dependency is probed with
        // back-off; once it answers a new consumer starts and the held deliveries go first.
        // Held rather than released: a requeue raises the delivery count on RabbitMQ 3.10–4.2
        // (toward x-delivery-limit), and handling them now would only burn retry steps on a
        // dependency known to be down. Unacked, they count against `consumer_timeout` (30 min
        // by default): an outage longer than that closes the channel and the broker redelivers
        // them (one count each).
        let mut paused = false;
        let mut held: VecDeque<Delivery> = VecDeque::new();
        let probe_at = tokio::time::sleep(Duration::MAX);
        tokio::pin!(probe_at);
        let mut probe: Option<Probe<'_>> = None;

        let end = loop {
            if draining.is_some() && !open && jobs.is_empty() && held.is_empty() {
                break SessionEnd::Shutdown;
            }
            if !paused && draining.is_none() {
                if let Some((dependency, delay)) = self.breaker.next_probe() {
                    paused = true;
                    if open {
                        if let Err(e) = self
                            .channel
                            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                            .await
                        {
                            debug!(error = %e, "cancel failed");
                        }
                    }
                    info!(%queue, %dependency, running = jobs.len(), next_probe = ?delay, "consumer cancelled while {dependency} is down; deliveries already received are held");
                    probe_at.as_mut().reset(tokio::time::Instant::now() + delay);
                }
            }
            // On trial after a probe answered: one handler at a time.
            let limit = if self.breaker.is_half_open() {
                1
            } else {
                concurrency
            };
            let room = jobs.len() < limit;
            let unflushed = settler.ready() > 0;
            tokio::select! {
                biased;
                () = &mut cancelled, if draining.is_none() => {
                    info!(%queue, grace = ?self.grace, "shutting down: consumer cancelled; handling what was already delivered");
                    let deadline = tokio::time::Instant::now() + self.grace;
                    draining = Some(deadline);
                    grace_over.as_mut().reset(deadline);
                    if paused {
                        // A dependency is down: what is held would only fail. Back to the
                        // queue for the next worker (a requeue; no retry step burnt).
                        probe = None;
                        if !held.is_empty() {
                            info!(%queue, held = held.len(), "releasing the deliveries held while the breaker is open");
                        }
                        for d in held.drain(..) {
                            settler.release(d.delivery_tag).await;
                        }
                    } else if let Err(e) = self
                        .channel
                        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                        .await
                    {
                        // The channel is closing: the consumer stream ends with it.
                        debug!(error = %e, "cancel failed");
                    }
                }
                () = &mut grace_over, if draining.is_some() => break SessionEnd::Shutdown,
                Some((tag, settlement)) = jobs.next(), if !jobs.is_empty() => {
                    settler.settle(tag, settlement).await;
                    if settler.ready() >= ACK_BATCH {
                        settler.flush().await;
                    }
                }
                () = std::future::ready(()), if room && !paused && !held.is_empty() => {
                    if let Some(delivery) = held.pop_front() {
                        jobs.push(self.job(&hot, delivery, shutdown));
                    }
                }
                delivery = consumer.next(), if (room || paused) && open => match delivery {
                    Some(Ok(delivery)) => {
                        if !self.channel.status().connected() {
                            // Its acks could not be sent; the broker redelivers it anyway.
                            break SessionEnd::Lost("the channel closed".into());
                        }
                        settler.received(delivery.delivery_tag);
                        if !paused {
                            jobs.push(self.job(&hot, delivery, shutdown));
                        } else if draining.is_some() {
                            settler.release(delivery.delivery_tag).await;
                        } else {
                            held.push_back(delivery);
                        }
                    }
                    Some(Err(e)) if draining.is_none() => {
                        break SessionEnd::Lost(format!("consumer failed: {e}"))
                    }
                    None if draining.is_none() && !paused => {
                        break SessionEnd::Lost(format!(
                            "the broker cancelled the consumer of {queue} (queue deleted?)"
                        ))
                    }
                    // After our basic.cancel: everything buffered was handed out.
                    Some(Err(_)) | None => open = false,
                },
                // Probe once the old consumer has ended (everything it had is held).
                () = &mut probe_at, if paused && !open && probe.is_none() && draining.is_none() => {
                    if let Some((dependency, _)) = self.breaker.next_probe() {
                        let handler = self.handler;
                        probe = Some(Box::pin(async move {
                            let answer = handler.probe(&dependency).await;
                            (dependency, answer)
                        }));
                    }
                }
                (dependency, answer) = async { probe.as_mut().expect("a probe is running").await }, if probe.is_some() => {
                    probe = None;
                    match answer {
                        Ok(()) => {
                            self.breaker.probe_succeeded(self.metrics);
                            match self
                                .channel
                                .basic_consume(
                                    queue.into(),
                                    "".into(),
                                    BasicConsumeOptions::default(),
                                    self.consume_arguments.clone(),
                                )
                                .await
                            {
                                Ok(c) => {
                                    *consumer = c;
                                    open = true;
                                    paused = false;
                                    info!(%queue, %dependency, held = held.len(), "consuming again");
                                }
                                Err(e) => {
                                    break SessionEnd::Lost(format!(
                                        "consuming from {queue} again: {e}"
                                    ))
                                }
                            }
                        }
                        Err(e) => {
                            self.breaker.probe_failed(&dependency, &e);
                            if let Some((_, delay)) = self.breaker.next_probe() {
                                probe_at.as_mut().reset(tokio::time::Instant::now() + delay);
                            }
                        }
                    }
                }
                // Nothing else is ready: send the acks now rather than wait for more traffic.
                () = std::future::ready(()), if unflushed => settler.flush().await,
                _ = health.tick(), if !room || paused || draining.is_some() => {
                    if !self.channel.status().connected() {
                        break SessionEnd::Lost(
                            "the channel closed while handlers were busy".into(),
                        );
                    }
                }
            }
        };

        match end {
            SessionEnd::Shutdown => {
                settler.flush().await;
                // Past the grace period: what the consumer still buffers was never started.
                let mut released = 0u32;
                while let Some(Some(Ok(d))) = consumer.next().now_or_never() {
                    settler.received(d.delivery_tag);
                    settler.release(d.delivery_tag).await;
                    released += 1;
                }
                for d in held.drain(..) {
                    settler.release(d.delivery_tag).await;
                    released += 1;
                }
                if !jobs.is_empty() || released > 0 {
                    warn!(%queue, grace = ?self.grace, unfinished = jobs.len(), unstarted = released, "grace period over; releasing what was not handled");
                }
                self.release_rest(&mut settler).await;
                info!(%queue, waited_ms = started.elapsed().as_millis() as u64, "session drained");
            }
            SessionEnd::Lost(_) => self.finish(&mut jobs, &mut settler).await,
        }
        end
    }

    /// After the session was lost: runs the handlers in flight to completion (at most the grace
    /// period) and settles them if the channel still lives, then releases the rest.
    async fn finish<F>(&self, jobs: &mut FuturesUnordered<F>, settler: &mut Settler<'_>)
    where
        F: Future<Output = (u64, Settlement)>,
    {
        let deadline = tokio::time::Instant::now() + self.grace;
        while !jobs.is_empty() {
            tokio::select! {
                Some((tag, s)) = jobs.next() => settler.settle(tag, s).await,
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        settler.flush().await;
        self.release_rest(settler).await;
    }

    /// Releases every delivery still unsettled (handlers past the grace period).
    async fn release_rest(&self, settler: &mut Settler<'_>) {
        settler.release_unsettled().await;
        if settler.dead() {
            debug!(queue = %self.policy.queue, "some settlements were not sent: the channel is closed; the broker redelivers them");
        }
    }

    /// Handles one delivery and decides its settlement: ack, or forward a copy (retry or dead
    /// letter) and ack once the copy is confirmed.
    ///
    /// A forward that fails (the forwarding channel was closed, the broker nacked or returned
    /// the copy) is tried again with back-off while the delivery is held, so the message is not
    /// handled again and its delivery count does not rise; the forwarder opens a new channel
    /// meanwhile. Only after [`FORWARD_HOLD`], at shutdown, or when the consuming channel is gone
    /// is the delivery released.
    async fn job(
        &self,
        hot: &HotMetrics,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) -> (u64, Settlement) {
        let tag = delivery.delivery_tag;
        let msg = Incoming {
            body: delivery.data,
            properties: delivery.properties,
            exchange: delivery.exchange.to_string(),
            routing_key: delivery.routing_key.to_string(),
            redelivered: delivery.redelivered,
        };
        // Every log line of this delivery's handling and settlement carries its queue, message
        // id, attempt and the trace id of its W3C `traceparent`; `outcome` is recorded at the end.
        let span = crate::trace::delivery_span(&self.policy.queue, &msg);
        let (tag, settlement, outcome) = self
            .settle_one(hot, tag, &msg, shutdown)
            .instrument(span.clone())
            .await;
        crate::trace::delivered(&span, outcome);
        (tag, settlement)
    }

    /// Runs the handler on `msg` and decides its settlement (see [`Self::job`]).
    async fn settle_one(
        &self,
        hot: &HotMetrics,
        tag: u64,
        msg: &Incoming,
        shutdown: &CancellationToken,
    ) -> (u64, Settlement, &'static str) {
        hot.in_flight.inc();
        let started = Instant::now();
        let span = crate::trace::handler_span(&self.policy.queue, msg);
        let outcome = std::panic::AssertUnwindSafe(self.handler.handle(msg))
            .catch_unwind()
            .instrument(span.clone())
            .await
            .unwrap_or_else(|panic| {
                Outcome::Transient(format!("handler panicked: {}", panic_text(&panic)))
            });
        crate::trace::handled(&span, &outcome);
        drop(span);
        hot.handler_seconds.observe(started.elapsed().as_secs_f64());
        hot.in_flight.dec();
        self.breaker.record(&outcome, self.metrics);
        let queue = &self.policy.queue;
        let (copy, outcome, reason) = match self.policy.decide(msg, outcome) {
            Decision::Ack => {
                hot.success.inc();
                return (tag, Settlement::Ack, "success");
            }
            Decision::Forward {
                copy,
                outcome,
                reason,
            } => (copy, outcome, reason),
        };
        let id = msg.message_id().unwrap_or("-");
        let held_since = Instant::now();
        let mut backoff = Backoff::default();
        loop {
            let why = match self.forwarder.forward(&copy).await {
                Ok(Confirm::Confirmed) => break,
                Ok(fate) => format!("{fate:?}"),
                Err(e) => format!("{e:#}"),
            };
            self.metrics.count(queue, "forward_failed");
            let gone = !self.channel.status().connected();
            if gone || shutdown.is_cancelled() || held_since.elapsed() >= FORWARD_HOLD {
                // Released with basic.nack(requeue=true), not basic.reject: the message did
                // nothing wrong, our path to the retry queue or the dead-letter exchange did.
                // RabbitMQ 4.3+ does not count a nack toward x-delivery-limit, so a broken
                // forward path never makes the broker dead-letter a message without a reason
                // there; 3.10–4.2 count every requeue, and the hold keeps that to one count
                // per FORWARD_HOLD instead of one per redelivery.
                error!(%queue, message_id = %id, error = %why, held = ?held_since.elapsed(), "could not forward a failed message; releasing it to the queue");
                self.metrics.count(queue, "requeued");
                return (tag, Settlement::Release, "released");
            }
            let delay = backoff.next_delay();
            warn!(%queue, message_id = %id, error = %why, ?delay, "could not forward a failed message; holding it and trying again");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => {}
            }
        }
        if outcome == "dead_lettered" {
            warn!(%queue, message_id = %id, %reason, "dead-lettered");
        } else {
            info!(%queue, message_id = %id, %reason, to = %copy.routing_key, "scheduled retry");
        }
        self.metrics.count(queue, outcome);
        (tag, Settlement::Ack, outcome)
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
