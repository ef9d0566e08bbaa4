//! Reading a queue message by message with `basic.get` and manual acks, and the two read-only
//! scans built on it: [`list`] and [`find`].

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::DeadLetter;

/// Reads a queue message by message, holding each unacknowledged until it is acked or the
/// reader is closed (which hands every held message back).
pub struct Reader {
    channel: Channel,
    pub(super) queue: String,
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
        crate::broker::close_channel(&self.channel, "done").await;
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
