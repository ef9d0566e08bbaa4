//! Dead-letter queues (`orders.dead` by default): list, show, replay and purge.
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
//!
//! Files: `letter.rs` (one [`DeadLetter`] and the copies a pass sends), `reader.rs` (the
//! [`Reader`] on `basic.get`; [`list`] and [`find`]), `replay.rs` ([`replay()`] and [`purge`],
//! one pass each).
//!
//! The functions here take the [`Settings`], open and close their own connection and return
//! data; `burrow dlq` ([`crate::cli::dlq`]) prints it.

mod letter;
mod reader;
mod replay;

use anyhow::Context;
use lapin::Connection;
use serde::Serialize;

pub use letter::DeadLetter;
pub use reader::{find, list, Reader};
pub use replay::{
    purge, replay, Counts, Progress, Refusal, ReplayReport, Selection, MAX_REFUSALS_REPORTED,
    MIN_RATE,
};

use crate::settings::Settings;
use crate::topology::Topology;

/// The dead-letter queue the commands work on unless told otherwise.
pub const DEFAULT_QUEUE: &str = "orders.dead";
pub use crate::message::HEADER_REPLAYED;

/// Dead letters read from a queue (and left in it).
#[derive(Debug, Clone, Serialize)]
pub struct DlqListing {
    /// The dead-letter queue read.
    pub queue: String,
    /// What was read, in queue order.
    pub letters: Vec<DeadLetter>,
}

async fn connect(settings: &Settings) -> anyhow::Result<Connection> {
    let conn = crate::broker::connect(&settings.amqp, "burrow dlq").await?;
    crate::broker_version::log(settings, "burrow dlq").await;
    Ok(conn)
}

/// Up to `limit` dead letters of `queue` on the broker of `settings`, every one left in place.
///
/// # Errors
/// The broker is unreachable ([`crate::broker::BrokerError`]), or as [`list`].
pub async fn listing(settings: &Settings, queue: &str, limit: usize) -> anyhow::Result<DlqListing> {
    let conn = connect(settings).await?;
    let letters = list(&conn, queue, limit).await;
    crate::broker::close(&conn, "done").await;
    Ok(DlqListing {
        queue: queue.to_owned(),
        letters: letters?,
    })
}

/// The dead letter of `queue` whose `message_id` is `id`, if there is one; every message is
/// left in place.
///
/// # Errors
/// The broker is unreachable, or as [`find`].
pub async fn letter(
    settings: &Settings,
    queue: &str,
    id: &str,
) -> anyhow::Result<Option<DeadLetter>> {
    let conn = connect(settings).await?;
    let found = find(&conn, queue, id).await;
    crate::broker::close(&conn, "done").await;
    found
}

/// Moves the selected dead letters of `queue` back to their source queues, only to queues of
/// the settings' topology that dead-letter into `queue`; `progress` follows the pass.
///
/// # Errors
/// The topology cannot be loaded, the broker is unreachable, or as [`replay()`].
pub async fn replay_queue(
    settings: &Settings,
    queue: &str,
    selection: &Selection,
    progress: impl FnMut(Progress),
) -> anyhow::Result<ReplayReport> {
    let topology = Topology::load(&settings.topology)
        .with_context(|| format!("loading topology {}", settings.topology.display()))?;
    let allowed = topology.dead_letter_sources(queue);
    let conn = connect(settings).await?;
    let report = replay(&conn, queue, selection, &allowed, progress).await;
    crate::broker::close(&conn, "done").await;
    report
}

/// Deletes the selected dead letters of `queue` for good; `progress` follows the pass.
///
/// # Errors
/// The broker is unreachable, or as [`purge`].
pub async fn purge_queue(
    settings: &Settings,
    queue: &str,
    selection: &Selection,
    progress: impl FnMut(Progress),
) -> anyhow::Result<Counts> {
    let conn = connect(settings).await?;
    let counts = purge(&conn, queue, selection, progress).await;
    crate::broker::close(&conn, "done").await;
    counts
}
