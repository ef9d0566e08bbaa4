//! `burrow dlq list|show|replay|purge`: inspect and operate a dead-letter queue (`orders.dead`
//! by default).
//!
//! Messages are read with `basic.get` and manual acks, and every message that is not meant to
//! leave the queue is held unacknowledged until the command is done, then returned by closing
//! the channel. Holding them (rather than rejecting each at once) matters: a quorum queue hands
//! a returned message out again first, so a reject-as-you-go scan would see the same message
//! forever. Returning a message raises its `x-delivery-count`; the dead-letter queues have no
//! `x-delivery-limit`, so that never dead-letters anything. While a command runs, the messages
//! it holds are invisible to other consumers, and their order in the queue may change.
//!
//! `replay` republishes each chosen message to its source queue through the default exchange,
//! with publisher confirms, and acks the dead copy only once the republish is confirmed: a
//! replay killed half-way loses nothing (a message may then exist in both queues; consumers
//! are idempotent).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;

use crate::message::{
    header_str, header_u32, HEADER_ATTEMPTS, HEADER_ERROR, HEADER_FAILED_AT, HEADER_SOURCE_QUEUE,
};
use crate::publisher::{self, Fate, Outgoing};
use crate::settings::Settings;

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

/// Unconfirmed republishes in flight during a replay.
const CONFIRM_WINDOW: usize = 256;

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
        let headers = d.properties.headers().as_ref();
        let death = first_death(headers);
        let source_queue = header_str(headers, HEADER_SOURCE_QUEUE)
            .or_else(|| death.as_ref().and_then(|t| table_str(t, "queue")))
            .or_else(|| header_str(headers, "x-first-death-queue"));
        let reason = header_str(headers, HEADER_ERROR)
            .or_else(|| death.as_ref().and_then(|t| table_str(t, "reason")))
            .or_else(|| header_str(headers, "x-first-death-reason"));
        let failed_at = header_str(headers, HEADER_FAILED_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| {
                d.properties
                    .timestamp()
                    .and_then(|t| DateTime::from_timestamp(i64::try_from(t).ok()?, 0))
            });
        Self {
            id: d
                .properties
                .message_id()
                .as_ref()
                .map_or_else(|| "-".to_owned(), |s| s.as_str().to_owned()),
            source_queue,
            reason,
            attempts: header_u32(headers, HEADER_ATTEMPTS),
            failed_at,
            replayed: header_u32(headers, HEADER_REPLAYED).unwrap_or(0),
            exchange: d.exchange.as_str().to_owned(),
            routing_key: d.routing_key.as_str().to_owned(),
            body: d.data.clone(),
            properties: d.properties.clone(),
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

fn first_death(headers: Option<&FieldTable>) -> Option<FieldTable> {
    match headers?.inner().get("x-death")? {
        AMQPValue::FieldArray(a) => match a.as_slice().last()? {
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
/// reader is closed (which returns every held message to the queue).
pub struct Reader {
    channel: Channel,
    queue: String,
    /// Messages in the queue when the reader opened; a scan reads at most this many, so that
    /// messages arriving meanwhile do not make it endless.
    pub depth: u32,
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

    /// Returns every held message to the queue (by closing the channel).
    pub async fn close(self) {
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
    /// At most this many messages per second (replay), so the workers are not flooded.
    pub rate: Option<f64>,
}

/// What a replay or purge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Messages looked at.
    pub scanned: u64,
    /// Messages that matched the selection.
    pub matched: u64,
    /// Messages moved (replay) or deleted (purge); 0 in a dry run.
    pub done: u64,
    /// Matching messages left in the dead-letter queue because their republish was not
    /// confirmed or their source queue is unknown.
    pub failed: u64,
    /// Messages left in the queue because they did not match.
    pub skipped: u64,
}

type Confirm = Pin<Box<dyn Future<Output = (u64, anyhow::Result<Fate>)> + Send>>;

/// Moves the selected dead letters of `queue` back to their source queues; `progress` is
/// called once per message scanned.
///
/// # Errors
/// The queue does not exist or the connection failed; what was confirmed before is moved, the
/// rest stays in the dead-letter queue.
pub async fn replay(
    conn: &Connection,
    queue: &str,
    selection: &Selection,
    mut progress: impl FnMut(&Counts),
) -> anyhow::Result<Counts> {
    let reader = Reader::open(conn, queue).await?;
    let publish = publisher::confirm_channel(conn)
        .await
        .context("opening a confirm channel")?;
    let result = replay_with(&reader, &publish, selection, &mut progress).await;
    let _ = publish.close(200, "done".into()).await;
    reader.close().await;
    result
}

async fn replay_with(
    reader: &Reader,
    publish: &Channel,
    selection: &Selection,
    progress: &mut impl FnMut(&Counts),
) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    let limit = selection.limit.unwrap_or(usize::MAX) as u64;
    let mut pending: FuturesOrdered<Confirm> = FuturesOrdered::new();
    let mut pacer = selection.rate.filter(|r| *r > 0.0).map(|r| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    let mut unconfirmed: VecDeque<u64> = VecDeque::new();
    while counts.scanned < u64::from(reader.depth) && counts.matched < limit {
        if let Some(p) = pacer.as_mut() {
            p.tick().await;
        }
        let Some((tag, message)) = reader.next().await? else {
            break;
        };
        counts.scanned += 1;
        if !message.matches(selection.filter.as_deref()) {
            // Held until the reader closes, then returned to the queue.
            counts.skipped += 1;
            progress(&counts);
            continue;
        }
        counts.matched += 1;
        if selection.dry_run {
            progress(&counts);
            continue;
        }
        let Some(copy) = message.replay_copy() else {
            counts.failed += 1;
            progress(&counts);
            continue;
        };
        let confirm = publisher::send(publish, &copy)
            .await
            .context("republishing a dead letter")?;
        unconfirmed.push_back(tag);
        pending.push_back(Box::pin(async move {
            (tag, confirm.await.map_err(anyhow::Error::from))
        }));
        while pending.len() >= CONFIRM_WINDOW {
            settle_one(reader, &mut pending, &mut counts).await?;
        }
        progress(&counts);
    }
    while !pending.is_empty() {
        settle_one(reader, &mut pending, &mut counts).await?;
        progress(&counts);
    }
    Ok(counts)
}

/// Waits for the oldest republish: confirmed → ack the dead copy; otherwise keep it (it is
/// returned to the queue when the reader closes).
async fn settle_one(
    reader: &Reader,
    pending: &mut FuturesOrdered<Confirm>,
    counts: &mut Counts,
) -> anyhow::Result<()> {
    let Some((tag, fate)) = pending.next().await else {
        return Ok(());
    };
    match fate? {
        Fate::Confirmed => {
            reader.ack(tag).await?;
            counts.done += 1;
        }
        Fate::Nacked | Fate::Returned(_) => counts.failed += 1,
    }
    Ok(())
}

/// Deletes the selected dead letters of `queue` for good.
///
/// # Errors
/// The queue does not exist or the connection failed.
pub async fn purge(
    conn: &Connection,
    queue: &str,
    selection: &Selection,
    mut progress: impl FnMut(&Counts),
) -> anyhow::Result<Counts> {
    let reader = Reader::open(conn, queue).await?;
    let mut counts = Counts::default();
    let limit = selection.limit.unwrap_or(usize::MAX) as u64;
    let result = async {
        while counts.scanned < u64::from(reader.depth) && counts.matched < limit {
            let Some((tag, message)) = reader.next().await? else {
                break;
            };
            counts.scanned += 1;
            if message.matches(selection.filter.as_deref()) {
                counts.matched += 1;
                if !selection.dry_run {
                    reader.ack(tag).await?;
                    counts.done += 1;
                }
            } else {
                counts.skipped += 1;
            }
            progress(&counts);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    reader.close().await;
    result.map(|()| counts)
}

async fn connect(settings: &Settings) -> anyhow::Result<Connection> {
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

/// `burrow dlq replay`: moves the selected dead letters back to their source queues and prints
/// the counts. Exit code 1 when some matching message could not be moved.
///
/// # Errors
/// As [`replay`].
pub async fn run_replay(
    settings: &Settings,
    queue: &str,
    selection: &Selection,
) -> anyhow::Result<ExitCode> {
    let c = scan_with_progress(settings, queue, async |conn, bar| {
        replay(conn, queue, selection, |c| {
            bar.set_position(c.scanned);
            bar.set_message(format!("{} replayed", c.done));
        })
        .await
    })
    .await?;
    let verb = if selection.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    println!(
        "{verb} {} of {} scanned in '{queue}' ({} matched, {} not matching left, {} failed and left)",
        if selection.dry_run { c.matched } else { c.done },
        c.scanned,
        c.matched,
        c.skipped,
        c.failed
    );
    Ok(if c.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
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
