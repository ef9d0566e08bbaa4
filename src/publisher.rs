//! Publishing with publisher confirms: one message at a time ([`publish_one`]), or many through a
//! bounded window of pipelined confirms that survives a lost connection by re-sending whatever was
//! not confirmed ([`BulkPublisher`]). Every publish is `mandatory`, so an unroutable message is
//! reported, never silently dropped.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::broker::{self, BrokerError};
use crate::settings::AmqpSettings;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Target exchange (`""` is the default exchange).
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// The body.
    pub body: Vec<u8>,
    /// AMQP properties (see [`crate::message::properties`]).
    pub properties: BasicProperties,
    /// What the caller counts this message as (e.g. order or event); passed back untouched.
    pub label: u8,
}

/// What the broker said about one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
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
) -> Result<impl Future<Output = Result<Fate, lapin::Error>> + Send + 'static, lapin::Error> {
    let confirm = channel
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
        .await?;
    Ok(async move { confirm.await.map(fate) })
}

fn fate(c: Confirmation) -> Fate {
    match c {
        Confirmation::Ack(Some(returned)) => Fate::Returned(returned.reply_text.to_string()),
        Confirmation::Ack(None) | Confirmation::NotRequested => Fate::Confirmed,
        Confirmation::Nack(_) => Fate::Nacked,
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
) -> anyhow::Result<Fate> {
    let confirm = send(channel, msg).await?;
    match tokio::time::timeout(timeout, confirm).await {
        Ok(fate) => Ok(fate?),
        Err(_) => anyhow::bail!("no confirm from the broker within {timeout:?}"),
    }
}

/// What a bulk publish did beyond the per-message fates.
#[derive(Debug, Default, Clone, Copy)]
pub struct BulkReport {
    /// Messages sent again after their channel or connection died before the confirm.
    pub resent: u64,
    /// Connections (re)established.
    pub connections: u64,
}

/// Publishes a sequence through a window of pipelined confirms, reconnecting with back-off and
/// re-sending unconfirmed messages when the connection dies (duplicates are possible; consumers
/// are idempotent).
pub struct BulkPublisher {
    pool: deadpool_lapin::Pool,
    settings: AmqpSettings,
    window: usize,
    rate: Option<f64>,
}

type Pending = Pin<Box<dyn Future<Output = (Outgoing, Result<Fate, lapin::Error>)> + Send>>;

impl BulkPublisher {
    /// A publisher drawing connections from `pool`, with `window` unconfirmed messages at most
    /// and an optional rate limit in messages per second.
    pub fn new(
        pool: deadpool_lapin::Pool,
        settings: AmqpSettings,
        window: usize,
        rate: Option<f64>,
    ) -> Self {
        Self {
            pool,
            settings,
            window: window.max(1),
            rate: rate.filter(|r| *r > 0.0),
        }
    }

    /// Publishes every message of `messages`, calling `on_fate` once per message as its confirm
    /// (or return) arrives.
    ///
    /// # Errors
    /// The broker refused the login, or could not be reached for the whole back-off budget.
    pub async fn run<I, F>(&self, messages: I, mut on_fate: F) -> Result<BulkReport, BrokerError>
    where
        I: IntoIterator<Item = Outgoing>,
        F: FnMut(&Outgoing, &Fate),
    {
        let mut input = messages.into_iter();
        let mut retry: VecDeque<Outgoing> = VecDeque::new();
        let mut inflight: FuturesUnordered<Pending> = FuturesUnordered::new();
        let mut channel: Option<Channel> = None;
        let mut report = BulkReport::default();
        let mut pacer = self.rate.map(|r| {
            let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            i
        });
        let blocked = Arc::new(AtomicBool::new(false));
        let mut exhausted = false;
        loop {
            while inflight.len() < self.window {
                let msg = match retry.pop_front() {
                    Some(m) => m,
                    None if exhausted => break,
                    None => match input.next() {
                        Some(m) => {
                            if let Some(p) = pacer.as_mut() {
                                p.tick().await;
                            }
                            m
                        }
                        None => {
                            exhausted = true;
                            break;
                        }
                    },
                };
                if channel.as_ref().is_none_or(|c| !c.status().connected()) {
                    if !inflight.is_empty() {
                        // Let the old channel's confirms drain first; they will fail or land.
                        retry.push_front(msg);
                        break;
                    }
                    channel = Some(self.reconnect(&mut report, &blocked).await?);
                }
                let ch = channel.as_ref().expect("channel set above");
                match send(ch, &msg).await {
                    Ok(confirm) => inflight.push(Box::pin(async move { (msg, confirm.await) })),
                    Err(e) => {
                        warn!(error = %e, "publish failed; will reconnect and re-send");
                        retry.push_front(msg);
                        channel = None;
                        break;
                    }
                }
            }
            match inflight.next().await {
                Some((msg, Ok(fate))) => on_fate(&msg, &fate),
                Some((msg, Err(e))) => {
                    if channel.is_some() {
                        warn!(error = %e, "connection lost with publishes unconfirmed; re-sending them");
                    }
                    channel = None;
                    report.resent += 1;
                    retry.push_back(msg);
                }
                None if exhausted && retry.is_empty() => break,
                None => {}
            }
        }
        if let Some(ch) = channel {
            let _ = ch.close(200, "done".into()).await;
        }
        Ok(report)
    }

    async fn reconnect(
        &self,
        report: &mut BulkReport,
        blocked: &Arc<AtomicBool>,
    ) -> Result<Channel, BrokerError> {
        let mut backoff = Backoff::default();
        loop {
            let attempt = async {
                let conn = broker::connection(&self.pool, &self.settings).await?;
                let ch = confirm_channel(&conn)
                    .await
                    .map_err(|e| BrokerError::from_lapin(&self.settings.url, &e))?;
                watch_blocked(&conn, blocked.clone());
                Ok::<_, BrokerError>(ch)
            };
            match attempt.await {
                Ok(ch) => {
                    report.connections += 1;
                    if report.connections > 1 {
                        info!(attempts = backoff.attempts(), "publisher reconnected");
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

/// Logs when the broker blocks or unblocks publishing on `conn` (memory or disk alarm), once per
/// connection.
pub fn watch_blocked(conn: &Connection, blocked: Arc<AtomicBool>) {
    let mut events = conn.events_listener();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                lapin::Event::ConnectionBlocked(reason)
                    if !blocked.swap(true, Ordering::SeqCst) =>
                {
                    warn!(%reason, "broker blocked publishing (resource alarm); waiting for it to clear");
                }
                lapin::Event::ConnectionUnblocked if blocked.swap(false, Ordering::SeqCst) => {
                    info!("broker unblocked publishing; resuming");
                }
                _ => {}
            }
        }
    });
}
