//! Replay and purge: one pass over a dead-letter queue that settles every message within
//! milliseconds of reading it (see the [module documentation](super)).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::StreamExt;
use lapin::Channel;
use lapin::Connection;
use serde::Serialize;
use tokio::time::Instant;

use super::{DeadLetter, Reader};
use crate::publisher::{self, Confirm, Outgoing};

/// Unconfirmed republishes in flight during a pass: each message read waits at most for the
/// confirms of this many publishes before it is acked.
const CONFIRM_WINDOW: usize = 256;
/// Messages settled between two batched acks (see `Acks`).
const ACK_BATCH: usize = 64;
/// How long the reader's channel stays open after the last ack of a pass (see [`with_pass`]).
const SETTLE_BEFORE_CLOSE: Duration = Duration::from_secs(2);
/// `basic.get` requests in flight during a pass. Measured on RabbitMQ 3.10.8: with 32 in
/// flight a pass over 20,000 took 20 s instead of 76-90 s (debug build, busy machine), but
/// 8 to 191 messages it had acked came back into the queue as duplicates; with 1, none.
/// Keep it at 1 until that is understood.
const GET_PIPELINE: usize = 1;
/// The lowest `--rate`: a message waiting for its turn is held unacknowledged for up to
/// `1 / rate` seconds, which must stay far below the broker's `consumer_timeout` (30 min).
pub const MIN_RATE: f64 = 0.01;

/// What a replay or purge should pick.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only messages whose reason contains this (case-insensitive).
    pub filter: Option<String>,
    /// Only the messages with these `message_id`s (the console's ticked rows, `--id`).
    pub ids: Option<BTreeSet<String>>,
    /// At most this many messages.
    pub limit: Option<usize>,
    /// Count what would be done, change nothing.
    pub dry_run: bool,
    /// At most this many messages replayed per second, so the workers are not flooded.
    /// Messages that are only scanned are not slowed down.
    pub rate: Option<f64>,
}

impl Selection {
    /// Whether `letter` is picked: its reason matches the filter and its id is among `ids`
    /// (each when set). The limit is counted by the pass.
    pub fn picks(&self, letter: &DeadLetter) -> bool {
        letter.matches(self.filter.as_deref())
            && self.ids.as_ref().is_none_or(|ids| ids.contains(&letter.id))
    }
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

/// How far a pass is: what it has done so far, out of the messages the queue held when it
/// started. Handed to the `progress` callback of [`replay`] and [`purge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Messages in the queue when the pass started: it reads at most this many.
    pub depth: u64,
    /// The counts so far.
    pub counts: Counts,
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

type PendingConfirm = Pin<Box<dyn Future<Output = (u64, Sent, anyhow::Result<Confirm>)> + Send>>;

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
    let mut pending: FuturesUnordered<PendingConfirm> = FuturesUnordered::new();
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
    pending: &mut FuturesUnordered<PendingConfirm>,
    tag: u64,
    copy: &Outgoing,
    sent: Sent,
) -> anyhow::Result<()> {
    // While spans are exported the copy goes out under a publish span of its own, which
    // continues the dead letter's trace (see `crate::trace::publish_span`).
    let mut copy = std::borrow::Cow::Borrowed(copy);
    let span = if crate::telemetry::exporting() {
        crate::trace::publish_span(copy.to_mut())
    } else {
        tracing::Span::none()
    };
    let confirm = publisher::send(publish, &copy)
        .await
        .context("republishing a dead letter")?;
    pending.push(Box::pin(async move {
        let fate = confirm.await.map_err(anyhow::Error::from);
        match &fate {
            Ok(c) => crate::trace::published(&span, c),
            Err(e) => crate::trace::publish_failed(&span, &format!("{e:#}")),
        }
        (tag, sent, fate)
    }));
    Ok(())
}

/// Waits for one republish: confirmed → ack the message read; a replayed copy that was not
/// confirmed → keep the message instead. A kept copy that was not confirmed ends the pass
/// with an error (the message read goes back to the queue when the reader closes).
async fn settle_one(
    reader: &Reader,
    publish: &Channel,
    pending: &mut FuturesUnordered<PendingConfirm>,
    acks: &mut Acks,
    counts: &mut Counts,
) -> anyhow::Result<()> {
    let Some((tag, sent, fate)) = pending.next().await else {
        return Ok(());
    };
    match (fate?, sent) {
        (Confirm::Confirmed, sent) => {
            acks.settled(reader, tag).await?;
            if matches!(sent, Sent::Replayed(_)) {
                counts.done += 1;
            }
        }
        (Confirm::Nacked | Confirm::Returned(_), Sent::Replayed(keep)) => {
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
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<Counts> {
    let reader = Reader::open(conn, queue).await?;
    let depth = u64::from(reader.depth);
    let mut progress = |counts: &Counts| {
        progress(Progress {
            depth,
            counts: *counts,
        });
    };
    let publish = match publisher::confirm_channel(conn).await {
        Ok(p) => p,
        Err(e) => {
            reader.close().await;
            return Err(anyhow::Error::from(e).context("opening a confirm channel"));
        }
    };
    let result = pass(&reader, &publish, rate, decide, &mut progress).await;
    crate::broker::close_channel(&publish, "done").await;
    // RabbitMQ 3.10 stashes quorum-queue settles in the channel process while more than 32 of
    // its commands are not yet applied, and drops the stash when the channel closes: messages
    // acked (and already republished) would come back as duplicates. Give the queue a moment to
    // apply the last acks before the reader's channel closes.
    tokio::time::sleep(SETTLE_BEFORE_CLOSE).await;
    reader.close().await;
    result
}

/// Moves the selected dead letters of `queue` back to their source queues, sending a message
/// only to a queue of `allowed` (see [`Topology::dead_letter_sources`](crate::topology::Topology::dead_letter_sources)); `progress` is called
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
    progress: impl FnMut(Progress),
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
        if c.matched >= limit || !selection.picks(m) {
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
    progress: impl FnMut(Progress),
) -> anyhow::Result<Counts> {
    let limit = selection.limit.unwrap_or(usize::MAX) as u64;
    let decide = |m: &DeadLetter, c: &mut Counts| {
        if c.matched >= limit || !selection.picks(m) {
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
