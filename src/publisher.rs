//! Publishing with publisher confirms: one message at a time ([`publish_one`]), or many through a
//! bounded window of pipelined confirms that survives a lost connection by re-sending whatever was
//! not confirmed ([`BulkPublisher`]). Every publish is `mandatory`, so an unroutable message is
//! reported, never silently dropped.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use tracing::{info, warn, Instrument};

use crate::backoff::Backoff;
use crate::broker::BrokerError;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Target exchange (`""` is the default exchange).
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    /// AMQP properties (see [`crate::message::properties`]).
    pub properties: BasicProperties,
    /// What the caller counts this message as (e.g. order or event); passed back untouched.
    pub label: u8,
}

/// The broker's confirm of one mandatory publish, as burrow reads it: lapin's
/// [`Confirmation`] folded with the `basic.return` a mandatory publish may get first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    /// Stored (and routed to at least one queue).
    Confirmed,
    /// The broker refused it (e.g. a full queue with `x-overflow=reject-publish`).
    Nacked,
    /// No queue was bound for its routing key; the reply text says why.
    Returned(String),
}

/// Opens a channel in confirm mode.
///
/// # Errors
/// The channel could not be opened.
pub async fn confirm_channel(conn: &Connection) -> Result<Channel, lapin::Error> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Sends one mandatory message and returns the broker's confirm, without waiting for it.
///
/// # Errors
/// The channel is closed.
pub async fn send(
    channel: &Channel,
    msg: &Outgoing,
) -> Result<impl Future<Output = Result<Confirm, lapin::Error>> + Send + 'static, lapin::Error> {
    let confirm = send_raw(channel, msg).await?;
    Ok(async move { confirm.await.map(confirm_of) })
}

async fn send_raw(channel: &Channel, msg: &Outgoing) -> Result<PublisherConfirm, lapin::Error> {
    channel
        .basic_publish(
            msg.exchange.as_str().into(),
            msg.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &msg.body,
            msg.properties.clone(),
        )
        .await
}

fn confirm_of(c: Confirmation) -> Confirm {
    match c {
        Confirmation::Ack(Some(returned)) => Confirm::Returned(returned.reply_text.to_string()),
        Confirmation::Ack(None) | Confirmation::NotRequested => Confirm::Confirmed,
        Confirmation::Nack(_) => Confirm::Nacked,
    }
}

/// Publishes one message on `channel` and waits up to `timeout` for the confirm.
///
/// # Errors
/// The channel failed or the confirm did not come in time.
pub async fn publish_one(
    channel: &Channel,
    msg: &Outgoing,
    timeout: Duration,
) -> anyhow::Result<Confirm> {
    if !crate::telemetry::exporting() {
        return publish_one_untraced(channel, msg, timeout).await;
    }
    // The message goes out with the publish span's trace context.
    let mut msg = msg.clone();
    let span = crate::trace::publish_span(&mut msg);
    let result = publish_one_untraced(channel, &msg, timeout)
        .instrument(span.clone())
        .await;
    match &result {
        Ok(confirm) => crate::trace::published(&span, confirm),
        Err(e) => crate::trace::publish_failed(&span, &format!("{e:#}")),
    }
    result
}

async fn publish_one_untraced(
    channel: &Channel,
    msg: &Outgoing,
    timeout: Duration,
) -> anyhow::Result<Confirm> {
    // The timeout covers the send too: a publish on a connection that is dying must not hang.
    let attempt = async { send(channel, msg).await?.await };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(confirm) => Ok(confirm?),
        Err(_) => anyhow::bail!("no confirm from the broker within {timeout:?}"),
    }
}

/// What a bulk publish did beyond the per-message confirms.
#[derive(Debug, Default, Clone, Copy)]
pub struct BulkReport {
    /// Messages sent again after their channel or connection died, or their confirm did not
    /// come in time, before the confirm (each may now exist twice; consumers are idempotent).
    pub resent: u64,
    /// Nacked messages sent again on a fresh channel (see [`BulkPublisher`]).
    pub nack_resends: u64,
    /// Connections or channels (re)established.
    pub connections: u64,
}

/// How often a nacked message is sent again on a fresh channel before it counts as nacked.
pub const NACK_RESENDS: u32 = 3;

/// Publishes a sequence through a window of pipelined confirms, reconnecting with back-off and
/// re-sending unconfirmed messages when the connection dies (duplicates are possible; consumers
/// are idempotent).
///
/// Failure handling, per message:
/// - channel or connection lost, or no confirm within the confirm timeout → re-sent (counted in
///   [`BulkReport::resent`]) on a new channel, from a new connection if need be (the pool drops
///   dead ones; failover URLs are tried in order), after the old channel's confirms settled;
/// - nacked → the channel is replaced and the message re-sent, up to [`NACK_RESENDS`] times with a
///   pause that grows each time (a quorum queue that just lost its leader nacks until a new
///   one is elected; a full queue with `x-overflow=reject-publish` may have drained). Only
///   then is it reported as [`Confirm::Nacked`];
/// - returned (unroutable) → reported at once: re-sending cannot route it.
///
/// While the broker blocks the connection (memory or disk alarm) publishes wait; one log line says
/// so and another when it clears (logged for every connection: see [`crate::broker::connect`]).
pub struct BulkPublisher {
    pool: crate::broker::Pool,
    window: usize,
    rate: Option<f64>,
    confirm_timeout: Duration,
    /// With [`BulkPublisher::keep_channel`]: the channel a run ended on, healthy and with nothing
    /// in flight, for the next run.
    kept: Option<std::sync::Mutex<Option<Channel>>>,
}

struct Tracked {
    msg: Outgoing,
    nacks: u32,
    /// The publish span (see [`crate::trace::publish_span`]), open until the confirm; the same
    /// across re-sends. [`tracing::Span::none`] unless spans are exported.
    span: tracing::Span,
}

impl Tracked {
    fn new(mut msg: Outgoing) -> Self {
        let span = crate::trace::publish_span(&mut msg);
        Self {
            msg,
            nacks: 0,
            span,
        }
    }
}

enum Settled {
    Confirm(Confirm),
    Lost(String),
}

/// A sent message waiting for its confirm. The broker confirms a channel's publishes in order,
/// so in-flight messages are awaited oldest first, each until its own deadline: no per-message
/// timer or boxed future on the hot path.
struct InFlight {
    tracked: Tracked,
    confirm: PublisherConfirm,
    deadline: tokio::time::Instant,
}

async fn settle_oldest(inflight: &mut VecDeque<InFlight>) -> Option<(Tracked, Settled)> {
    let mut oldest = inflight.pop_front()?;
    let settled = match tokio::time::timeout_at(oldest.deadline, &mut oldest.confirm).await {
        Ok(Ok(c)) => Settled::Confirm(confirm_of(c)),
        Ok(Err(e)) => Settled::Lost(e.to_string()),
        Err(_) => Settled::Lost("no confirm within the confirm timeout".into()),
    };
    Some((oldest.tracked, settled))
}

/// The oldest in-flight message, if its confirm has already arrived.
fn settle_ready(inflight: &mut VecDeque<InFlight>) -> Option<(Tracked, Settled)> {
    let confirmed = (&mut inflight.front_mut()?.confirm).now_or_never()?;
    let oldest = inflight.pop_front()?;
    let settled = match confirmed {
        Ok(c) => Settled::Confirm(confirm_of(c)),
        Err(e) => Settled::Lost(e.to_string()),
    };
    Some((oldest.tracked, settled))
}

/// Puts messages back at the head of the re-send queue, in their order.
fn requeue_front(retry: &mut VecDeque<Tracked>, messages: Vec<Tracked>) {
    for t in messages.into_iter().rev() {
        retry.push_front(t);
    }
}

/// Publishes sent at once at most (see [`BulkPublisher::run`]).
const SEND_BATCH: usize = 64;

impl BulkPublisher {
    /// A publisher drawing connections from `pool`, with `window` unconfirmed messages at most
    /// and an optional rate limit in messages per second. A confirm is awaited 30 s by default.
    pub fn new(pool: crate::broker::Pool, window: usize, rate: Option<f64>) -> Self {
        Self {
            pool,
            window: window.max(1),
            rate: rate.filter(|r| *r > 0.0),
            confirm_timeout: Duration::from_secs(30),
            kept: None,
        }
    }

    /// Keeps the channel from one run to the next, for a caller that runs again and again, one
    /// run at a time (the outbox relay: a run per burst of orders; of two runs at once, the one
    /// ending last would keep its channel and the other's would stay open unused). Otherwise
    /// every run opens a channel, puts it in confirm mode and closes it: three round trips and a
    /// channel process in the broker per run. [`BulkPublisher::close`] closes it.
    #[must_use]
    pub fn keep_channel(mut self) -> Self {
        self.kept = Some(std::sync::Mutex::new(None));
        self
    }

    /// Closes the channel kept by [`BulkPublisher::keep_channel`], if any.
    pub async fn close(&self) {
        if let Some(ch) = self.kept.as_ref().and_then(|k| lock(k).take()) {
            crate::broker::close_channel(&ch, "done").await;
        }
    }

    /// How long to wait for one confirm before re-sending the message on a new channel.
    #[must_use]
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Publishes every message of `messages`, calling `on_confirm` once per message as its confirm
    /// (or return) arrives.
    ///
    /// # Errors
    /// The broker refused the login, or could not be reached for the whole back-off budget.
    pub async fn run<I, F>(&self, messages: I, on_confirm: F) -> Result<BulkReport, BrokerError>
    where
        I: IntoIterator<Item = Outgoing>,
        F: FnMut(&Outgoing, &Confirm),
    {
        self.run_stream(futures::stream::iter(messages), on_confirm)
            .await
    }

    /// [`BulkPublisher::run`] for messages that come as a stream (e.g. read from a store while
    /// earlier ones are in flight): one channel for all of them, so they go out in order. The
    /// stream is polled only when the window has room; confirms already in are taken first.
    ///
    /// # Errors
    /// As [`BulkPublisher::run`].
    pub async fn run_stream<S, F>(
        &self,
        messages: S,
        mut on_confirm: F,
    ) -> Result<BulkReport, BrokerError>
    where
        S: futures::Stream<Item = Outgoing>,
        F: FnMut(&Outgoing, &Confirm),
    {
        let mut input = std::pin::pin!(messages);
        let mut retry: VecDeque<Tracked> = VecDeque::new();
        let mut inflight: VecDeque<InFlight> = VecDeque::with_capacity(self.window);
        let mut channel: Option<Channel> = self.kept.as_ref().and_then(|k| lock(k).take());
        let mut report = BulkReport::default();
        let mut pacer = self.rate.map(|r| {
            let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            i
        });
        // Pauses between channel replacements that follow failures (not the first connect).
        let mut failures = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut pause = false;
        let mut retired: Vec<Channel> = Vec::new();
        let mut exhausted = false;
        'publishing: loop {
            while inflight.len() < self.window {
                // A batch of messages is sent at once: lapin hands each publish to its I/O
                // thread and resolves it once written, so one at a time would cost a thread
                // round trip per message. A rate-limited publisher sends one per tick.
                let room = (self.window - inflight.len()).min(if pacer.is_some() {
                    1
                } else {
                    SEND_BATCH
                });
                let mut batch: Vec<Tracked> = Vec::with_capacity(room);
                while batch.len() < room {
                    match retry.pop_front() {
                        Some(t) => batch.push(t),
                        None if exhausted => break,
                        None => match input.next().await {
                            Some(msg) => {
                                if let Some(p) = pacer.as_mut() {
                                    p.tick().await;
                                }
                                batch.push(Tracked::new(msg));
                            }
                            None => exhausted = true,
                        },
                    }
                }
                if batch.is_empty() {
                    break;
                }
                if channel.as_ref().is_none_or(|c| !c.status().connected()) {
                    if !inflight.is_empty() {
                        // Let the old channel's confirms settle first; they fail, time out or land.
                        requeue_front(&mut retry, batch);
                        break;
                    }
                    retired.extend(channel.take());
                    for old in retired.drain(..) {
                        crate::broker::close_channel(&old, "replaced").await;
                    }
                    if std::mem::take(&mut pause) {
                        let delay = failures.next_delay();
                        info!(
                            attempt = failures.attempts(),
                            ?delay,
                            "publisher replacing its channel"
                        );
                        tokio::time::sleep(delay).await;
                    }
                    channel = Some(self.reconnect(&mut report).await?);
                }
                let ch = channel.as_ref().expect("channel set above");
                let sent =
                    futures::future::join_all(batch.iter().map(|t| send_raw(ch, &t.msg))).await;
                let deadline = tokio::time::Instant::now() + self.confirm_timeout;
                let mut unsent = Vec::new();
                for (tracked, result) in batch.into_iter().zip(sent) {
                    match result {
                        Ok(confirm) => inflight.push_back(InFlight {
                            tracked,
                            confirm,
                            deadline,
                        }),
                        Err(e) => {
                            if unsent.is_empty() {
                                warn!(error = %e, "publish failed; will reconnect and re-send");
                            }
                            unsent.push(tracked);
                        }
                    }
                }
                if !unsent.is_empty() {
                    requeue_front(&mut retry, unsent);
                    mark_broken(&mut channel, &mut retired, &mut pause);
                    break;
                }
            }
            // Wait for the oldest confirm, then take every other one that has already arrived
            // (the broker confirms with `multiple=true`), so that the next batch is a full one.
            let mut wait = true;
            loop {
                let settled = if std::mem::take(&mut wait) {
                    settle_oldest(&mut inflight).await
                } else {
                    match settle_ready(&mut inflight) {
                        Some(s) => Some(s),
                        None => break,
                    }
                };
                match settled {
                    Some((tracked, Settled::Confirm(Confirm::Nacked)))
                        if tracked.nacks < NACK_RESENDS =>
                    {
                        if channel.is_some() {
                            warn!(message_id = ?tracked.msg.properties.message_id(), nacks = tracked.nacks + 1,
                                "broker nacked a publish; re-sending it on a fresh channel");
                        }
                        report.nack_resends += 1;
                        mark_broken(&mut channel, &mut retired, &mut pause);
                        retry.push_back(Tracked {
                            nacks: tracked.nacks + 1,
                            ..tracked
                        });
                    }
                    Some((tracked, Settled::Confirm(confirm))) => {
                        if confirm == Confirm::Confirmed {
                            failures.reset();
                        }
                        crate::trace::published(&tracked.span, &confirm);
                        on_confirm(&tracked.msg, &confirm);
                    }
                    Some((tracked, Settled::Lost(reason))) => {
                        if channel.is_some() {
                            warn!(%reason, "publishes unconfirmed (connection lost or confirm timed out); re-sending them");
                        }
                        mark_broken(&mut channel, &mut retired, &mut pause);
                        report.resent += 1;
                        retry.push_back(tracked);
                    }
                    None if exhausted && retry.is_empty() => break 'publishing,
                    None => break,
                }
            }
        }
        if let Some(ch) = channel {
            match &self.kept {
                Some(kept) if ch.status().connected() => *lock(kept) = Some(ch),
                _ => crate::broker::close_channel(&ch, "done").await,
            }
        }
        Ok(report)
    }

    async fn reconnect(&self, report: &mut BulkReport) -> Result<Channel, BrokerError> {
        let mut backoff = Backoff::default();
        loop {
            match crate::broker::confirm_channel(&self.pool)
                .await
                .map(|(ch, _)| ch)
            {
                Ok(ch) => {
                    report.connections += 1;
                    if report.connections > 1 {
                        info!(attempts = backoff.attempts() + 1, "publisher reconnected");
                    }
                    return Ok(ch);
                }
                Err(e) if e.is_transient() && backoff.attempts() < 60 => {
                    let delay = backoff.next_delay();
                    warn!(error = %e, attempt = backoff.attempts(), ?delay, "publisher reconnecting");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn lock(kept: &std::sync::Mutex<Option<Channel>>) -> std::sync::MutexGuard<'_, Option<Channel>> {
    kept.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stops using a channel that failed (its outstanding confirms still settle; it is closed before
/// the next one opens) and asks for a pause before the next one.
fn mark_broken(channel: &mut Option<Channel>, retired: &mut Vec<Channel>, pause: &mut bool) {
    retired.extend(channel.take());
    *pause = true;
}
