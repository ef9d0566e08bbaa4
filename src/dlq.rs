//! `burrow dlq list|show|replay|purge`: inspect and operate a dead-letter queue (`orders.dead`
//! by default).
//!
//! Messages are read one at a time with `basic.get` and manual acks.
//!
//! `list` and `show` hold what they read unacknowledged (at most `--limit` messages for `list`)
//! and hand it all back at the end with one `basic.nack(requeue=true)`; a quorum queue serves
//! returned messages first, so the queue's order is unchanged. Each return raises the
//! message's delivery count: on RabbitMQ 3.10-4.2 every return counts toward `x-delivery-limit`,
//! on 4.3 only `basic.reject` and lost connections do, so `basic.nack` is chosen on purpose.
//! The dead-letter queues carry a delivery limit no inspection can reach (see
//! `topology/shop.toml`), because 4.0 gives every quorum queue without one a limit of 20.
//!
//! `replay` and `purge` make one pass over the queue (the messages it held when they started)
//! and settle every message within milliseconds of reading it, so nothing waits long enough to
//! meet the broker's `consumer_timeout`, whatever the queue's depth or the replay rate:
//! - a message to replay is republished to its source queue through the default exchange and
//!   acked once the broker confirms the copy;
//! - a message to delete (purge) is acked;
//! - every other message (not matching, beyond `--limit`, refused, a dry run) is republished
//!   unchanged to the tail of the dead-letter queue itself and acked once that copy is
//!   confirmed. A requeue would raise its delivery count and bring it straight back to the head
//!   (a quorum queue serves returned messages first, so the scan would never pass it); a
//!   confirmed copy loses nothing, counts nothing, and after the whole pass the kept messages
//!   are in their old order again (new dead letters arriving meanwhile interleave).
//!
//! Publishing before acking makes every step at-least-once: a pass killed half-way loses
//! nothing, and may leave a message in two places (its source queue and the dead-letter queue,
//! or twice in the dead-letter queue); consumers are idempotent.
//!
//! A replay sends a message only to a queue of the topology whose dead letters land in this
//! dead-letter queue ([`Topology::dead_letter_sources`]): `x-burrow-source-queue` is written by
//! whoever published the message and must not steer it anywhere else.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::StreamExt;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;
use tokio::time::Instant;

use crate::message::{
    header_str, header_u32, HEADER_ATTEMPTS, HEADER_DEAD_EXCHANGE, HEADER_DEAD_ROUTING_KEY,
    HEADER_ERROR, HEADER_FAILED_AT, HEADER_SOURCE_QUEUE,
};
use crate::publisher::{self, Fate, Outgoing};
use crate::settings::Settings;
use crate::topology::Topology;

/// The dead-letter queue the commands work on unless told otherwise.
pub const DEFAULT_QUEUE: &str = "orders.dead";
/// Header counting how often a message was replayed from a dead-letter queue.
pub const HEADER_REPLAYED: &str = "x-burrow-replayed";

/// Headers a replay removes: why and when the message failed, and the broker's own
/// dead-lettering history, so the replayed message starts clean.
const FAILURE_HEADERS: &[&str] = &[
    HEADER_ERROR,
    HEADER_FAILED_AT,
    HEADER_SOURCE_QUEUE,
    HEADER_DEAD_EXCHANGE,
    HEADER_DEAD_ROUTING_KEY,
    "x-burrow-last-error",
    "x-death",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-last-death-exchange",
    "x-delivery-count",
];

/// Unconfirmed republishes in flight during a pass: each message read waits at most for the
/// confirms of this many publishes before it is acked.
const CONFIRM_WINDOW: usize = 256;
/// Messages settled between two batched acks (see `Acks`).
const ACK_BATCH: usize = 64;
/// `basic.get` requests in flight during a pass. Measured on RabbitMQ 3.10.8: with 32 in
/// flight a pass over 20,000 took 20 s instead of 76-90 s (debug build, busy machine), but
/// 8 to 191 messages it had acked came back into the queue as duplicates; with 1, none.
/// Keep it at 1 until that is understood.
const GET_PIPELINE: usize = 1;
/// The lowest `--rate`: a message waiting for its turn is held unacknowledged for up to
/// `1 / rate` seconds, which must stay far below the broker's `consumer_timeout` (30 min).
pub const MIN_RATE: f64 = 0.01;

/// One dead letter, as read from the queue.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Its `message_id` (`-` when it has none).
    pub id: String,
    /// The queue it failed in: `x-burrow-source-queue`, else the broker's `x-death`.
    pub source_queue: Option<String>,
    /// Why it failed: `x-burrow-error`, else the broker's reason (e.g. `delivery_limit`).
    pub reason: Option<String>,
    /// `x-burrow-attempts`.
    pub attempts: Option<u32>,
    /// When it was dead-lettered (`x-burrow-failed-at`), else when it was published.
    pub failed_at: Option<DateTime<Utc>>,
    /// How often it was replayed before.
    pub replayed: u32,
    /// The exchange and routing key it was dead-lettered with.
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// Its body.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// Its properties (headers included).
    #[serde(skip)]
    pub properties: BasicProperties,
}

impl DeadLetter {
    /// Reads the burrow and broker headers of a fetched message.
    pub fn from_message(message: &BasicGetMessage) -> Self {
        let d = &message.delivery;
        Self::from_parts(
            &d.properties,
            d.exchange.as_str(),
            d.routing_key.as_str(),
            &d.data,
        )
    }

    /// Reads a dead letter from its properties, the exchange and routing key it was delivered
    /// with, and its body. Source and reason: burrow's headers first, else the newest
    /// `x-death` entry (RabbitMQ keeps that array newest first), else `x-last-death-*`
    /// (3.13+), else `x-first-death-*`.
    pub fn from_parts(
        properties: &BasicProperties,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> Self {
        let headers = properties.headers().as_ref();
        let death = newest_death(headers);
        let source_queue = header_str(headers, HEADER_SOURCE_QUEUE)
            .or_else(|| death.as_ref().and_then(|t| table_str(t, "queue")))
            .or_else(|| header_str(headers, "x-last-death-queue"))
            .or_else(|| header_str(headers, "x-first-death-queue"));
        let reason = header_str(headers, HEADER_ERROR)
            .or_else(|| death.as_ref().and_then(|t| table_str(t, "reason")))
            .or_else(|| header_str(headers, "x-last-death-reason"))
            .or_else(|| header_str(headers, "x-first-death-reason"));
        let failed_at = header_str(headers, HEADER_FAILED_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| {
                properties
                    .timestamp()
                    .and_then(|t| DateTime::from_timestamp(i64::try_from(t).ok()?, 0))
            });
        Self {
            id: properties
                .message_id()
                .as_ref()
                .map_or_else(|| "-".to_owned(), |s| s.as_str().to_owned()),
            source_queue,
            reason,
            attempts: header_u32(headers, HEADER_ATTEMPTS),
            failed_at,
            replayed: header_u32(headers, HEADER_REPLAYED).unwrap_or(0),
            exchange: header_str(headers, HEADER_DEAD_EXCHANGE)
                .unwrap_or_else(|| exchange.to_owned()),
            routing_key: header_str(headers, HEADER_DEAD_ROUTING_KEY)
                .unwrap_or_else(|| routing_key.to_owned()),
            body: body.to_vec(),
            properties: properties.clone(),
        }
    }

    /// How long ago it failed, e.g. `3m12s`.
    pub fn age(&self, now: DateTime<Utc>) -> String {
        self.failed_at.map_or_else(
            || "-".to_owned(),
            |t| human_duration((now - t).to_std().unwrap_or_default()),
        )
    }

    /// Whether its reason contains `filter` (case-insensitive); no filter matches everything.
    pub fn matches(&self, filter: Option<&str>) -> bool {
        filter.is_none_or(|f| {
            self.reason
                .as_deref()
                .is_some_and(|r| r.to_lowercase().contains(&f.to_lowercase()))
        })
    }

    /// The copy a replay publishes: to the default exchange with the source queue as routing
    /// key, `x-burrow-attempts` reset to 0, the failure headers removed and `x-burrow-replayed`
    /// counted up. `None` when the source queue is unknown.
    pub fn replay_copy(&self) -> Option<Outgoing> {
        let queue = self.source_queue.clone()?;
        let mut headers: BTreeMap<ShortString, AMQPValue> = self
            .properties
            .headers()
            .as_ref()
            .map(|h| h.inner().clone())
            .unwrap_or_default();
        for name in FAILURE_HEADERS {
            headers.remove(*name);
        }
        headers.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongLongInt(0));
        headers.insert(
            HEADER_REPLAYED.into(),
            AMQPValue::LongLongInt(i64::from(self.replayed) + 1),
        );
        Some(Outgoing {
            exchange: String::new(),
            routing_key: queue,
            body: self.body.clone(),
            properties: self
                .properties
                .clone()
                .with_headers(FieldTable::from(headers))
                .with_delivery_mode(2),
            label: 0,
        })
    }

    /// The copy that keeps this message in `queue` (its dead-letter queue) when a pass moves
    /// past it: body and properties unchanged, to the default exchange with `queue` as routing
    /// key (only that queue, not every binding of the dead-letter exchange), and the exchange
    /// and routing key it was dead-lettered with kept in headers so `list` and `show` still
    /// show them.
    pub fn keep_copy(&self, queue: &str) -> Outgoing {
        let mut headers: BTreeMap<ShortString, AMQPValue> = self
            .properties
            .headers()
            .as_ref()
            .map(|h| h.inner().clone())
            .unwrap_or_default();
        headers
            .entry(HEADER_DEAD_EXCHANGE.into())
            .or_insert_with(|| crate::message::string_value(&self.exchange));
        headers
            .entry(HEADER_DEAD_ROUTING_KEY.into())
            .or_insert_with(|| crate::message::string_value(&self.routing_key));
        Outgoing {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            body: self.body.clone(),
            properties: self
                .properties
                .clone()
                .with_headers(FieldTable::from(headers)),
            label: 0,
        }
    }

    /// Every header and the body, pretty-printed when it is JSON, for `dlq show`.
    pub fn describe(&self) -> String {
        let p = &self.properties;
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<16} {v}\n"));
        line("message_id", self.id.clone());
        line(
            "type",
            p.kind().as_ref().map_or("-".into(), |s| s.to_string()),
        );
        line(
            "content_type",
            p.content_type()
                .as_ref()
                .map_or("-".into(), |s| s.to_string()),
        );
        line(
            "timestamp",
            p.timestamp()
                .and_then(|t| DateTime::from_timestamp(i64::try_from(t).ok()?, 0))
                .map_or("-".into(), |t| t.to_rfc3339()),
        );
        line("exchange", format!("'{}'", self.exchange));
        line("routing_key", self.routing_key.clone());
        line(
            "source_queue",
            self.source_queue.clone().unwrap_or("-".into()),
        );
        line("reason", self.reason.clone().unwrap_or("-".into()));
        line("age", self.age(Utc::now()));
        out.push_str("headers:\n");
        if let Some(h) = p.headers() {
            for (k, v) in h {
                out.push_str(&format!("  {}: {}\n", k.as_str(), show_value(v)));
            }
        }
        out.push_str("body:\n");
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(v) => out.push_str(&serde_json::to_string_pretty(&v).unwrap_or_default()),
            Err(_) => out.push_str(&String::from_utf8_lossy(&self.body)),
        }
        out.push('\n');
        out
    }
}

/// The newest `x-death` entry: RabbitMQ puts the latest dead-lettering first.
fn newest_death(headers: Option<&FieldTable>) -> Option<FieldTable> {
    match headers?.inner().get("x-death")? {
        AMQPValue::FieldArray(a) => match a.as_slice().first()? {
            AMQPValue::FieldTable(t) => Some(t.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn table_str(t: &FieldTable, key: &str) -> Option<String> {
    header_str(Some(t), key)
}

/// A header value as text: strings as they are, numbers, arrays and tables spelled out.
pub fn show_value(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(t) => i64::try_from(*t)
            .ok()
            .and_then(|t| DateTime::from_timestamp(t, 0))
            .map_or_else(|| t.to_string(), |t| t.to_rfc3339()),
        AMQPValue::FieldArray(a) => format!(
            "[{}]",
            a.as_slice()
                .iter()
                .map(show_value)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AMQPValue::FieldTable(t) => format!(
            "{{{}}}",
            t.into_iter()
                .map(|(k, v)| format!("{}: {}", k.as_str(), show_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AMQPValue::ByteArray(b) => format!("{} bytes", b.len()),
        AMQPValue::DecimalValue(d) => format!("{d:?}"),
        AMQPValue::Void => "null".into(),
    }
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Reads a queue message by message, holding each unacknowledged until it is acked or the
/// reader is closed (which hands every held message back).
pub struct Reader {
    channel: Channel,
    queue: String,
    /// Messages in the queue when the reader opened; a pass reads at most this many, so that
    /// messages arriving meanwhile (and the copies a pass keeps at the tail) do not make it
    /// endless.
    pub depth: u32,
    /// Whether some message was read (and may still be held).
    read_any: AtomicBool,
}

impl Reader {
    /// Opens a channel on `conn` and checks that `queue` exists.
    ///
    /// # Errors
    /// The queue does not exist, or the channel failed.
    pub async fn open(conn: &Connection, queue: &str) -> anyhow::Result<Self> {
        let channel = conn.create_channel().await.context("opening a channel")?;
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("queue '{queue}' cannot be read (does it exist?)"))?;
        Ok(Self {
            channel,
            queue: queue.to_owned(),
            depth: q.message_count(),
            read_any: AtomicBool::new(false),
        })
    }

    /// The next message, held unacknowledged; `None` when the queue is empty.
    ///
    /// # Errors
    /// The channel failed.
    pub async fn next(&self) -> anyhow::Result<Option<(u64, DeadLetter)>> {
        let m = self
            .channel
            .basic_get(
                self.queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .with_context(|| format!("reading from '{}'", self.queue))?;
        if m.is_some() {
            self.read_any.store(true, Ordering::Relaxed);
        }
        Ok(m.map(|m| (m.delivery.delivery_tag, DeadLetter::from_message(&m))))
    }

    /// Removes one held message from the queue for good.
    ///
    /// # Errors
    /// The channel failed (the message stays in the queue).
    pub async fn ack(&self, tag: u64) -> anyhow::Result<()> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: false })
            .await
            .with_context(|| format!("acknowledging a message of '{}'", self.queue))
    }

    /// Removes every held message with a delivery tag up to `tag` for good (`multiple=true`).
    ///
    /// # Errors
    /// The channel failed (the messages stay in the queue).
    pub async fn ack_upto(&self, tag: u64) -> anyhow::Result<()> {
        self.channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .with_context(|| format!("acknowledging messages of '{}'", self.queue))
    }

    /// Hands every held message back to the queue, then closes the channel.
    ///
    /// The return is an explicit `basic.nack(requeue=true)` of every outstanding delivery
    /// (delivery tag 0 with `multiple`), not `basic.reject` and not just closing the channel:
    /// from RabbitMQ 4.3 on an explicit nack does not count toward the queue's delivery limit,
    /// while a reject or a lost channel does. This is inspection, not a failure, so it must not
    /// count. Closing the channel afterwards returns whatever the nack missed.
    pub async fn close(self) {
        if self.read_any.load(Ordering::Relaxed) {
            let _ = self
                .channel
                .basic_nack(
                    0,
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await;
        }
        let _ = self.channel.close(200, "done".into()).await;
    }

    /// Reads at most [`Reader::depth`] messages, handing each to `visit` until it says stop,
    /// then closes the reader (every message read goes back to the queue), also on an error.
    async fn scan(
        self,
        mut visit: impl FnMut(DeadLetter) -> ControlFlow<()>,
    ) -> anyhow::Result<()> {
        let mut result = Ok(());
        for _ in 0..self.depth {
            match self.next().await {
                Ok(Some((_, m))) => {
                    if visit(m).is_break() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.close().await;
        result
    }
}

/// Reads up to `limit` dead letters, leaving every one in the queue.
///
/// # Errors
/// The queue does not exist or the connection failed.
pub async fn list(conn: &Connection, queue: &str, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
    let mut out = Vec::new();
    Reader::open(conn, queue)
        .await?
        .scan(|m| {
            if out.len() < limit {
                out.push(m);
            }
            if out.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await?;
    Ok(out)
}

/// Finds the dead letter whose `message_id` is `id`, leaving every message in the queue.
///
/// # Errors
/// The queue does not exist or the connection failed.
pub async fn find(conn: &Connection, queue: &str, id: &str) -> anyhow::Result<Option<DeadLetter>> {
    let mut found = None;
    Reader::open(conn, queue)
        .await?
        .scan(|m| {
            if m.id == id {
                found = Some(m);
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await?;
    Ok(found)
}

/// What a replay or purge should pick.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only messages whose reason contains this (case-insensitive).
    pub filter: Option<String>,
    /// At most this many messages.
    pub limit: Option<usize>,
    /// Count what would be done, change nothing.
    pub dry_run: bool,
    /// At most this many messages replayed per second, so the workers are not flooded.
    /// Messages that are only scanned are not slowed down.
    pub rate: Option<f64>,
}

/// What a replay or purge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Messages looked at.
    pub scanned: u64,
    /// Messages that matched the selection (up to its limit).
    pub matched: u64,
    /// Messages moved (replay) or deleted (purge); 0 in a dry run.
    pub done: u64,
    /// Matching messages left in the dead-letter queue because their republish was not
    /// confirmed, or because their source queue is unknown or not allowed (see `refused`).
    pub failed: u64,
    /// Of `failed`: matching messages a replay refused to send, because their source queue is
    /// unknown or not a queue that dead-letters into this one.
    pub refused: u64,
    /// Messages left in the queue because they did not match (or were beyond the limit).
    pub skipped: u64,
}

/// A dead letter a replay refused to send, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// Its `message_id`.
    pub id: String,
    /// The source queue it claims, if any.
    pub source_queue: Option<String>,
}

/// What a replay did: the counts, and the first refused messages (at most
/// [`MAX_REFUSALS_REPORTED`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// The counts.
    pub counts: Counts,
    /// Messages left in place because of their source queue.
    pub refused: Vec<Refusal>,
    /// The queues this replay may send to.
    pub allowed: BTreeSet<String>,
}

/// How many refused messages a [`ReplayReport`] names.
pub const MAX_REFUSALS_REPORTED: usize = 20;

/// Acknowledges what a pass settled in batches: one `basic.ack(multiple=true)` up to the
/// highest delivery tag below which every message read is settled, every [`ACK_BATCH`]
/// messages, before the pass waits, and at its end.
///
/// Why not one ack per message: on RabbitMQ 3.10 a channel with more than 32 quorum-queue
/// commands not yet applied stashes further settles in the channel process and drops them when
/// the channel closes (`rabbit_fifo_client` soft limit; `rabbit_quorum_queue:close/1` is a
/// no-op), so the broker hands those messages back although they were acked: measured, 8 of
/// 20,000 came back as duplicates. A batched ack is one command, so a pass stays far below that.
#[derive(Default)]
struct Acks {
    /// Tags read and not yet settled.
    held: BTreeSet<u64>,
    highest_read: u64,
    acked_upto: u64,
    since_flush: usize,
}

impl Acks {
    fn read(&mut self, tag: u64) {
        self.held.insert(tag);
        self.highest_read = self.highest_read.max(tag);
    }

    /// `tag` may go: acked at the next flush.
    async fn settled(&mut self, reader: &Reader, tag: u64) -> anyhow::Result<()> {
        self.held.remove(&tag);
        self.since_flush += 1;
        if self.since_flush >= ACK_BATCH {
            self.flush(reader).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, reader: &Reader) -> anyhow::Result<()> {
        self.since_flush = 0;
        let upto = self
            .held
            .first()
            .map_or(self.highest_read, |t| t.saturating_sub(1));
        if upto > self.acked_upto {
            reader.ack_upto(upto).await?;
            self.acked_upto = upto;
        }
        Ok(())
    }
}

/// What a pass does with one message it read.
enum Action {
    /// Republish this copy (to the source queue); keep the message if that fails.
    Replay(Box<Outgoing>),
    /// Ack it: gone for good.
    Delete,
    /// Put it back at the tail of the dead-letter queue.
    Keep,
}

/// What a confirm in flight was for.
enum Sent {
    /// A replayed copy; on failure the message is kept with this copy.
    Replayed(Box<Outgoing>),
    /// The kept copy of a message.
    Kept,
}

type Confirm = Pin<Box<dyn Future<Output = (u64, Sent, anyhow::Result<Fate>)> + Send>>;

/// One pass over the messages `reader` found in the queue: each is read, handed to `decide`,
/// and settled as soon as its republish is confirmed (see the module documentation). Replays
/// are at least `1 / rate` seconds apart; scanning is not slowed. A message whose replay must
/// wait is the only one held meanwhile (with the few reads in flight): everything else is
/// settled before the wait.
async fn pass(
    reader: &Reader,
    publish: &Channel,
    rate: Option<f64>,
    mut decide: impl FnMut(&DeadLetter, &mut Counts) -> Action,
    progress: &mut impl FnMut(&Counts),
) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    let mut pending: FuturesUnordered<Confirm> = FuturesUnordered::new();
    let period = rate
        .filter(|r| r.is_finite() && *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let mut next_replay: Option<Instant> = None;
    let depth = u64::from(reader.depth);
    // Never more than `depth` reads are asked for, so a pass never reads the copies it put at
    // the tail.
    let mut gets = FuturesOrdered::new();
    let mut requested = 0u64;
    let mut acks = Acks::default();
    loop {
        while requested < depth && gets.len() < GET_PIPELINE {
            gets.push_back(reader.next());
            requested += 1;
        }
        let Some(got) = gets.next().await else {
            break;
        };
        let Some((tag, message)) = got? else {
            // The queue ran dry (someone else took messages): ask for no more.
            requested = depth;
            continue;
        };
        counts.scanned += 1;
        acks.read(tag);
        let decision = decide(&message, &mut counts);
        if let (Action::Replay(_), Some(at)) = (&decision, next_replay) {
            if at > Instant::now() {
                // Hold only this message (and the few reads in flight) while waiting for its
                // turn: settle everything else first.
                while !pending.is_empty() {
                    settle_one(reader, publish, &mut pending, &mut acks, &mut counts).await?;
                }
                acks.flush(reader).await?;
                progress(&counts);
                tokio::time::sleep_until(at).await;
            }
        }
        match decision {
            Action::Delete => {
                acks.settled(reader, tag).await?;
                counts.done += 1;
            }
            Action::Keep => {
                send(
                    publish,
                    &mut pending,
                    tag,
                    &message.keep_copy(&reader.queue),
                    Sent::Kept,
                )
                .await?;
            }
            Action::Replay(copy) => {
                let keep = Box::new(message.keep_copy(&reader.queue));
                send(publish, &mut pending, tag, &copy, Sent::Replayed(keep)).await?;
                next_replay = period.map(|p| Instant::now() + p);
            }
        }
        while pending.len() >= CONFIRM_WINDOW {
            settle_one(reader, publish, &mut pending, &mut acks, &mut counts).await?;
        }
        progress(&counts);
    }
    while !pending.is_empty() {
        settle_one(reader, publish, &mut pending, &mut acks, &mut counts).await?;
    }
    acks.flush(reader).await?;
    progress(&counts);
    Ok(counts)
}

async fn send(
    publish: &Channel,
    pending: &mut FuturesUnordered<Confirm>,
    tag: u64,
    copy: &Outgoing,
    sent: Sent,
) -> anyhow::Result<()> {
    let confirm = publisher::send(publish, copy)
        .await
        .context("republishing a dead letter")?;
    pending.push(Box::pin(async move {
        (tag, sent, confirm.await.map_err(anyhow::Error::from))
    }));
    Ok(())
}

/// Waits for one republish: confirmed → ack the message read; a replayed copy that was not
/// confirmed → keep the message instead. A kept copy that was not confirmed ends the pass
/// with an error (the message read goes back to the queue when the reader closes).
async fn settle_one(
    reader: &Reader,
    publish: &Channel,
    pending: &mut FuturesUnordered<Confirm>,
    acks: &mut Acks,
    counts: &mut Counts,
) -> anyhow::Result<()> {
    let Some((tag, sent, fate)) = pending.next().await else {
        return Ok(());
    };
    match (fate?, sent) {
        (Fate::Confirmed, sent) => {
            acks.settled(reader, tag).await?;
            if matches!(sent, Sent::Replayed(_)) {
                counts.done += 1;
            }
        }
        (Fate::Nacked | Fate::Returned(_), Sent::Replayed(keep)) => {
            counts.failed += 1;
            send(publish, pending, tag, &keep, Sent::Kept).await?;
        }
        (fate, Sent::Kept) => anyhow::bail!(
            "could not put a message back at the tail of '{}' ({fate:?}); stopped, nothing \
             was lost: every message not yet settled goes back to the queue",
            reader.queue
        ),
    }
    Ok(())
}

/// Opens a reader and a confirm channel on `conn`, runs one [`pass`], and closes both, also
/// on an error.
async fn with_pass(
    conn: &Connection,
    queue: &str,
    rate: Option<f64>,
    decide: impl FnMut(&DeadLetter, &mut Counts) -> Action,
    mut progress: impl FnMut(&Counts),
) -> anyhow::Result<Counts> {
    let reader = Reader::open(conn, queue).await?;
    let publish = match publisher::confirm_channel(conn).await {
        Ok(p) => p,
        Err(e) => {
            reader.close().await;
            return Err(anyhow::Error::from(e).context("opening a confirm channel"));
        }
    };
    let result = pass(&reader, &publish, rate, decide, &mut progress).await;
    let _ = publish.close(200, "done".into()).await;
    reader.close().await;
    result
}

/// Moves the selected dead letters of `queue` back to their source queues, sending a message
/// only to a queue of `allowed` (see [`Topology::dead_letter_sources`]); `progress` is called
/// as messages are scanned.
///
/// # Errors
/// The queue does not exist or the connection failed; what was confirmed before is moved, the
/// rest stays in the dead-letter queue.
pub async fn replay(
    conn: &Connection,
    queue: &str,
    selection: &Selection,
    allowed: &BTreeSet<String>,
    progress: impl FnMut(&Counts),
) -> anyhow::Result<ReplayReport> {
    if let Some(rate) = selection.rate {
        anyhow::ensure!(
            rate.is_finite() && rate >= MIN_RATE,
            "--rate must be at least {MIN_RATE} messages per second (a message waits up to \
             1/rate seconds for its turn, unacknowledged)"
        );
    }
    let limit = selection.limit.unwrap_or(usize::MAX) as u64;
    let mut refused = Vec::new();
    let decide = |m: &DeadLetter, c: &mut Counts| {
        if c.matched >= limit || !m.matches(selection.filter.as_deref()) {
            c.skipped += 1;
            return Action::Keep;
        }
        c.matched += 1;
        let target = m.source_queue.as_ref().filter(|q| allowed.contains(*q));
        if target.is_none() {
            c.failed += 1;
            c.refused += 1;
            if refused.len() < MAX_REFUSALS_REPORTED {
                refused.push(Refusal {
                    id: m.id.clone(),
                    source_queue: m.source_queue.clone(),
                });
            }
            return Action::Keep;
        }
        match m.replay_copy() {
            Some(copy) if !selection.dry_run => Action::Replay(Box::new(copy)),
            _ => Action::Keep,
        }
    };
    let counts = with_pass(conn, queue, selection.rate, decide, progress).await?;
    Ok(ReplayReport {
        counts,
        refused,
        allowed: allowed.clone(),
    })
}

/// Deletes the selected dead letters of `queue` for good.
///
/// # Errors
/// The queue does not exist or the connection failed.
pub async fn purge(
    conn: &Connection,
    queue: &str,
    selection: &Selection,
    progress: impl FnMut(&Counts),
) -> anyhow::Result<Counts> {
    let limit = selection.limit.unwrap_or(usize::MAX) as u64;
    let decide = |m: &DeadLetter, c: &mut Counts| {
        if c.matched >= limit || !m.matches(selection.filter.as_deref()) {
            c.skipped += 1;
            return Action::Keep;
        }
        c.matched += 1;
        if selection.dry_run {
            Action::Keep
        } else {
            Action::Delete
        }
    };
    with_pass(conn, queue, None, decide, progress).await
}

async fn connect(settings: &Settings) -> anyhow::Result<Connection> {
    crate::broker_version::log(settings, "burrow dlq").await;
    Ok(crate::broker::connect(&settings.amqp, "burrow dlq").await?)
}

/// `burrow dlq list`: a table of up to `limit` dead letters (id, source queue, reason,
/// attempts, age).
///
/// # Errors
/// As [`list`].
pub async fn run_list(settings: &Settings, queue: &str, limit: usize) -> anyhow::Result<ExitCode> {
    let conn = connect(settings).await?;
    let messages = list(&conn, queue, limit).await;
    let _ = conn.close(200, "done".into()).await;
    let messages = messages?;
    let now = Utc::now();
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_header(vec!["id", "source", "reason", "attempts", "age"]);
    for m in &messages {
        let mut reason = m.reason.clone().unwrap_or_else(|| "-".into());
        if reason.chars().count() > 70 {
            reason = reason.chars().take(69).collect::<String>() + "…";
        }
        table.add_row(vec![
            m.id.clone(),
            m.source_queue.clone().unwrap_or_else(|| "-".into()),
            reason,
            m.attempts.map_or_else(|| "-".into(), |a| a.to_string()),
            m.age(now),
        ]);
    }
    println!("{table}");
    println!("{} dead letter(s) shown from '{queue}'", messages.len());
    Ok(ExitCode::SUCCESS)
}

/// `burrow dlq show ID`: headers and body of one dead letter. Exit code 1 when not found.
///
/// # Errors
/// As [`find`].
pub async fn run_show(settings: &Settings, queue: &str, id: &str) -> anyhow::Result<ExitCode> {
    let conn = connect(settings).await?;
    let found = find(&conn, queue, id).await;
    let _ = conn.close(200, "done".into()).await;
    match found? {
        Some(m) => {
            print!("{}", m.describe());
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("error: no message with id '{id}' in '{queue}'");
            Ok(ExitCode::from(1))
        }
    }
}

/// The depth of `queue` for the progress bar (0 when it cannot be read: the command itself
/// then reports why).
async fn depth(conn: &Connection, queue: &str) -> u32 {
    match Reader::open(conn, queue).await {
        Ok(r) => {
            let depth = r.depth;
            r.close().await;
            depth
        }
        Err(_) => 0,
    }
}

/// Runs `scan` over `queue` on a connection of its own, behind a progress bar sized to the
/// queue's depth, and closes both afterwards.
async fn scan_with_progress<T>(
    settings: &Settings,
    queue: &str,
    scan: impl AsyncFnOnce(&Connection, &indicatif::ProgressBar) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let conn = connect(settings).await?;
    let bar = indicatif::ProgressBar::new(u64::from(depth(&conn, queue).await));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} scanned  {msg}  {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let result = scan(&conn, &bar).await;
    bar.finish_and_clear();
    let _ = conn.close(200, "done".into()).await;
    result
}

/// `burrow dlq replay`: moves the selected dead letters back to their source queues (only
/// queues of the settings' topology that dead-letter into `queue`) and prints the counts and
/// every refused message. Exit code 1 when some matching message could not be moved.
///
/// # Errors
/// The topology cannot be loaded, or as [`replay`].
pub async fn run_replay(
    settings: &Settings,
    queue: &str,
    selection: &Selection,
) -> anyhow::Result<ExitCode> {
    let topology = Topology::load(&settings.topology)
        .with_context(|| format!("loading topology {}", settings.topology.display()))?;
    let allowed = topology.dead_letter_sources(queue);
    let report = scan_with_progress(settings, queue, async |conn, bar| {
        replay(conn, queue, selection, &allowed, |c| {
            bar.set_position(c.scanned);
            bar.set_message(format!("{} replayed", c.done));
        })
        .await
    })
    .await?;
    let c = report.counts;
    for r in &report.refused {
        eprintln!("{}", refusal_text(r, queue, &report.allowed));
    }
    if c.refused > report.refused.len() as u64 {
        eprintln!(
            "… and {} more refused for their source queue",
            c.refused - report.refused.len() as u64
        );
    }
    let verb = if selection.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    println!(
        "{verb} {} of {} scanned in '{queue}' ({} matched, {} not matching left, {} failed and left, {} of them refused)",
        if selection.dry_run { c.matched - c.failed } else { c.done },
        c.scanned,
        c.matched,
        c.skipped,
        c.failed,
        c.refused,
    );
    Ok(if c.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The line `dlq replay` prints for a message it refused to send.
pub fn refusal_text(r: &Refusal, queue: &str, allowed: &BTreeSet<String>) -> String {
    let allowed = if allowed.is_empty() {
        format!("no queue of the topology dead-letters into '{queue}'")
    } else {
        format!(
            "only {} may receive replays from '{queue}'",
            allowed
                .iter()
                .map(|q| format!("'{q}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    match &r.source_queue {
        Some(source) => format!(
            "refused to replay {}: its source queue '{source}' is not a queue of the topology \
             that dead-letters into '{queue}' ({allowed}); it stays in '{queue}'",
            r.id
        ),
        None => format!(
            "refused to replay {}: its source queue is unknown ({allowed}); it stays in '{queue}'",
            r.id
        ),
    }
}

/// `burrow dlq purge`: deletes the selected dead letters; refuses unless `yes`.
///
/// # Errors
/// As [`purge`], or `yes` is false.
pub async fn run_purge(
    settings: &Settings,
    queue: &str,
    selection: &Selection,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        yes || selection.dry_run,
        "purge deletes dead letters for good: add --yes to confirm (or --dry-run to count them)"
    );
    let c = scan_with_progress(settings, queue, async |conn, bar| {
        purge(conn, queue, selection, |c| bar.set_position(c.scanned)).await
    })
    .await?;
    let verb = if selection.dry_run {
        "would purge"
    } else {
        "purged"
    };
    println!(
        "{verb} {} of {} scanned in '{queue}' ({} not matching left)",
        if selection.dry_run { c.matched } else { c.done },
        c.scanned,
        c.skipped
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::string_value;

    fn dead(headers: FieldTable) -> DeadLetter {
        DeadLetter {
            id: "ord_1".into(),
            source_queue: header_str(Some(&headers), HEADER_SOURCE_QUEUE),
            reason: header_str(Some(&headers), HEADER_ERROR),
            attempts: header_u32(Some(&headers), HEADER_ATTEMPTS),
            failed_at: None,
            replayed: header_u32(Some(&headers), HEADER_REPLAYED).unwrap_or(0),
            exchange: "orders.dlx".into(),
            routing_key: "order.placed".into(),
            body: b"{\"a\":1}".to_vec(),
            properties: BasicProperties::default().with_headers(headers),
        }
    }

    #[test]
    fn replay_copy_resets_attempts_drops_the_error_and_counts_replays() {
        let mut h = FieldTable::default();
        h.insert(HEADER_ERROR.into(), string_value("carrier down"));
        h.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongLongInt(4));
        h.insert(
            HEADER_SOURCE_QUEUE.into(),
            string_value("orders.fulfillment"),
        );
        h.insert(
            HEADER_FAILED_AT.into(),
            string_value("2026-01-01T00:00:00Z"),
        );
        h.insert("traceparent".into(), string_value("00-abc-def-01"));
        let m = dead(h);
        assert!(m.matches(Some("CARRIER")));
        assert!(!m.matches(Some("malformed")));
        let copy = m.replay_copy().expect("source known");
        assert_eq!(
            (copy.exchange.as_str(), copy.routing_key.as_str()),
            ("", "orders.fulfillment")
        );
        let h = copy.properties.headers().as_ref();
        assert_eq!(header_u32(h, HEADER_ATTEMPTS), Some(0));
        assert_eq!(header_u32(h, HEADER_REPLAYED), Some(1));
        assert_eq!(header_str(h, HEADER_ERROR), None);
        assert_eq!(header_str(h, HEADER_FAILED_AT), None);
        assert_eq!(
            header_str(h, "traceparent").as_deref(),
            Some("00-abc-def-01")
        );
    }

    fn death(queue: &str, reason: &str) -> AMQPValue {
        let mut t = FieldTable::default();
        t.insert("queue".into(), string_value(queue));
        t.insert("reason".into(), string_value(reason));
        t.insert("count".into(), AMQPValue::LongLongInt(1));
        t.insert("exchange".into(), string_value(""));
        AMQPValue::FieldTable(t)
    }

    #[test]
    fn source_and_reason_come_from_the_newest_x_death_entry() {
        // RabbitMQ keeps x-death newest first: here the message expired twice in a retry
        // queue, then hit the delivery limit of orders.fulfillment.
        let mut h = FieldTable::default();
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(
                vec![
                    death("orders.fulfillment", "delivery_limit"),
                    death("orders.fulfillment.retry.1s", "expired"),
                ]
                .into(),
            ),
        );
        h.insert(
            "x-first-death-queue".into(),
            string_value("orders.fulfillment.retry.1s"),
        );
        h.insert("x-first-death-reason".into(), string_value("expired"));
        let props = BasicProperties::default().with_headers(h);
        let m = DeadLetter::from_parts(&props, "orders.dlx", "order.placed", b"{}");
        assert_eq!(m.source_queue.as_deref(), Some("orders.fulfillment"));
        assert_eq!(m.reason.as_deref(), Some("delivery_limit"));
        assert_eq!(
            m.replay_copy().map(|c| c.routing_key).as_deref(),
            Some("orders.fulfillment")
        );
    }

    #[test]
    fn without_x_death_the_last_death_headers_win_over_the_first() {
        let mut h = FieldTable::default();
        h.insert("x-first-death-queue".into(), string_value("a.retry"));
        h.insert("x-first-death-reason".into(), string_value("expired"));
        h.insert("x-last-death-queue".into(), string_value("a"));
        h.insert("x-last-death-reason".into(), string_value("rejected"));
        let props = BasicProperties::default().with_headers(h);
        let m = DeadLetter::from_parts(&props, "x", "k", b"");
        assert_eq!(m.source_queue.as_deref(), Some("a"));
        assert_eq!(m.reason.as_deref(), Some("rejected"));
    }

    #[test]
    fn keep_copy_is_the_same_message_addressed_to_the_dead_letter_queue() {
        let mut h = FieldTable::default();
        h.insert(HEADER_ERROR.into(), string_value("carrier down"));
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![death("q", "rejected")].into()),
        );
        let m = dead(h);
        let keep = m.keep_copy("orders.dead");
        assert_eq!(
            (keep.exchange.as_str(), keep.routing_key.as_str()),
            ("", "orders.dead")
        );
        assert_eq!(keep.body, m.body);
        assert_eq!(keep.properties.message_id(), m.properties.message_id());
        let kh = keep.properties.headers().as_ref();
        assert_eq!(
            header_str(kh, HEADER_ERROR).as_deref(),
            Some("carrier down")
        );
        assert!(kh.is_some_and(|t| t.inner().contains_key("x-death")));
        // Read back from the tail, it still shows where it was dead-lettered, and a second
        // keep does not overwrite that.
        let again = DeadLetter::from_parts(&keep.properties, "", "orders.dead", &keep.body);
        assert_eq!(
            (again.exchange.as_str(), again.routing_key.as_str()),
            ("orders.dlx", "order.placed")
        );
        let twice = again.keep_copy("orders.dead");
        let back = DeadLetter::from_parts(&twice.properties, "", "orders.dead", &twice.body);
        assert_eq!(back.exchange, "orders.dlx");
        // A replay goes to the source the broker recorded and drops the bookkeeping headers.
        let copy = again.replay_copy().expect("source from x-death");
        assert_eq!(copy.routing_key, "q");
        let ch = copy.properties.headers().as_ref();
        assert_eq!(header_str(ch, HEADER_DEAD_EXCHANGE), None);
        assert_eq!(header_str(ch, HEADER_DEAD_ROUTING_KEY), None);
    }

    #[test]
    fn refusals_name_the_claimed_and_the_allowed_queues() {
        let allowed = BTreeSet::from(["orders.fulfillment".to_owned()]);
        let r = Refusal {
            id: "ord_1".into(),
            source_queue: Some("some.other".into()),
        };
        let text = refusal_text(&r, "orders.dead", &allowed);
        assert!(
            text.contains("ord_1") && text.contains("'some.other'"),
            "{text}"
        );
        assert!(text.contains("only 'orders.fulfillment'"), "{text}");
        assert!(text.contains("stays in 'orders.dead'"), "{text}");
    }

    #[test]
    fn unknown_source_cannot_be_replayed() {
        assert!(dead(FieldTable::default()).replay_copy().is_none());
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_secs(192)), "3m12s");
        assert_eq!(human_duration(Duration::from_secs(7300)), "2h01m");
    }
}
