//! Ack batching that never acknowledges a delivery that is still being handled.
//!
//! Deliveries are registered in tag order as they arrive. An ack is held until the batch is
//! flushed; the flush acknowledges the prefix below the lowest unsettled tag with one
//! `basic.ack(multiple=true)` and acks the rest one by one, so one slow handler never holds back
//! the acks (and so the prefetch window) of the deliveries behind it. [`Settler`] sends them on
//! the channel the deliveries came from.

use std::collections::BTreeSet;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;

/// What to send to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckFrame {
    /// `basic.ack(tag, multiple=false)`.
    Single(u64),
    /// `basic.ack(tag, multiple=true)`.
    UpTo(u64),
}

/// Bookkeeping of one channel's deliveries.
#[derive(Debug, Default)]
pub struct AckTracker {
    unsettled: BTreeSet<u64>,
    ready: BTreeSet<u64>,
}

impl AckTracker {
    /// A delivery arrived.
    pub fn received(&mut self, tag: u64) {
        self.unsettled.insert(tag);
    }

    /// A delivery succeeded and may be acked at the next flush.
    pub fn ack(&mut self, tag: u64) {
        if self.unsettled.remove(&tag) {
            self.ready.insert(tag);
        }
    }

    /// A delivery was settled otherwise (nack or reject, sent at once by the caller).
    pub fn settled_otherwise(&mut self, tag: u64) {
        self.unsettled.remove(&tag);
    }

    /// Acks waiting for the next flush.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Deliveries received and not settled.
    pub fn unsettled(&self) -> impl Iterator<Item = u64> + '_ {
        self.unsettled.iter().copied()
    }

    /// The frames that acknowledge everything ready now.
    pub fn flush(&mut self) -> Vec<AckFrame> {
        if self.ready.is_empty() {
            return Vec::new();
        }
        let lowest_unsettled = self.unsettled.first().copied().unwrap_or(u64::MAX);
        let above = self.ready.split_off(&lowest_unsettled);
        let below = std::mem::take(&mut self.ready);
        let mut frames = Vec::with_capacity(1 + above.len());
        match below.len() {
            0 => {}
            1 => frames.push(AckFrame::Single(*below.first().expect("one element"))),
            _ => frames.push(AckFrame::UpTo(*below.last().expect("non-empty"))),
        }
        frames.extend(above.into_iter().map(AckFrame::Single));
        frames
    }
}

/// How a finished delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Acknowledged at the next flush.
    Ack,
    /// Given back to the queue at once (a forward that kept failing):
    /// `basic.nack(requeue=true, multiple=false)`, never part of a multiple ack or nack.
    Release,
}

/// Sends one channel's settlements: acks batched through an [`AckTracker`], releases at once. Delivery tags belong to their channel: once it is closed nothing is sent
/// (a tag on another channel would settle some other delivery); the broker then redelivers
/// whatever was not settled.
///
/// On a stream (`stream = true`) nothing but `basic.ack` is ever sent: `basic.nack` and
/// `basic.reject` close a stream consumer's channel before RabbitMQ 3.13, and a stream never
/// requeues anyway. A reject or a release becomes an ack (which only returns the consumer's
/// credit); the reader reads the message again from its stored offset in its next session.
pub struct Settler<'a> {
    channel: &'a Channel,
    tracker: AckTracker,
    dead: bool,
    stream: bool,
}

/// The frame a settlement is sent as on a stream (`stream`) or a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Acked with the next flush: every success, and everything on a stream, which must never
    /// see a nack or a reject.
    Ack,
    /// `basic.nack(requeue=true, multiple=false)`: handed back to a queue.
    Release,
}

/// How `settlement` is sent on a stream or a queue.
pub fn frame_for(stream: bool, settlement: Settlement) -> Frame {
    match (stream, settlement) {
        (true, _) | (false, Settlement::Ack) => Frame::Ack,
        (false, Settlement::Release) => Frame::Release,
    }
}

impl<'a> Settler<'a> {
    /// Settles deliveries of `channel`; `stream` when it consumes a stream.
    pub fn new(channel: &'a Channel, stream: bool) -> Self {
        Self {
            channel,
            tracker: AckTracker::default(),
            dead: false,
            stream,
        }
    }

    /// A delivery arrived.
    pub fn received(&mut self, tag: u64) {
        self.tracker.received(tag);
    }

    /// Acks waiting for the next flush.
    pub fn ready(&self) -> usize {
        self.tracker.ready_len()
    }

    /// Whether a settlement could not be sent because the channel is closed.
    pub fn dead(&self) -> bool {
        self.dead
    }

    /// A delivery finished.
    pub async fn settle(&mut self, tag: u64, settlement: Settlement) {
        match settlement {
            Settlement::Ack => self.tracker.ack(tag),
            Settlement::Release => self.release(tag).await,
        }
    }

    /// Gives a delivery back to the queue, not as a failure: `basic.nack(requeue=true)`.
    pub async fn release(&mut self, tag: u64) {
        if frame_for(self.stream, Settlement::Release) == Frame::Ack {
            self.tracker.ack(tag);
            return;
        }
        self.tracker.settled_otherwise(tag);
        if self.alive() {
            let opts = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            self.dead = self.channel.basic_nack(tag, opts).await.is_err();
        }
    }

    /// Sends the acks that are ready.
    pub async fn flush(&mut self) {
        let frames = self.tracker.flush();
        for frame in frames {
            if !self.alive() {
                return;
            }
            let (tag, multiple) = match frame {
                AckFrame::Single(tag) => (tag, false),
                AckFrame::UpTo(tag) => (tag, true),
            };
            let opts = BasicAckOptions { multiple };
            self.dead = self.channel.basic_ack(tag, opts).await.is_err();
        }
    }

    /// Releases every delivery still unsettled (handlers past the grace period).
    pub async fn release_unsettled(&mut self) {
        let leftover: Vec<u64> = self.tracker.unsettled().collect();
        for tag in leftover {
            self.release(tag).await;
        }
        if self.stream {
            self.flush().await;
        }
    }

    fn alive(&mut self) -> bool {
        self.dead |= !self.channel.status().connected();
        !self.dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_acks_become_one_multiple_ack() {
        let mut t = AckTracker::default();
        (1..=5).for_each(|tag| t.received(tag));
        (1..=5).for_each(|tag| t.ack(tag));
        assert_eq!(t.flush(), vec![AckFrame::UpTo(5)]);
        assert!(t.flush().is_empty());
    }

    #[test]
    fn never_acks_past_an_unsettled_delivery_with_multiple() {
        let mut t = AckTracker::default();
        (1..=6).for_each(|tag| t.received(tag));
        for tag in [1, 2, 4, 5] {
            t.ack(tag);
        }
        // 3 is still running; 6 has not finished.
        assert_eq!(
            t.flush(),
            vec![AckFrame::UpTo(2), AckFrame::Single(4), AckFrame::Single(5)]
        );
        t.ack(3);
        assert_eq!(t.flush(), vec![AckFrame::Single(3)]);
    }

    #[test]
    fn a_stream_is_never_sent_a_nack_or_a_reject() {
        for settlement in [Settlement::Ack, Settlement::Release] {
            assert_eq!(frame_for(true, settlement), Frame::Ack, "{settlement:?}");
        }
        assert_eq!(frame_for(false, Settlement::Release), Frame::Release);
        assert_eq!(frame_for(false, Settlement::Ack), Frame::Ack);
    }

    #[test]
    fn rejected_deliveries_do_not_block_the_prefix() {
        let mut t = AckTracker::default();
        (1..=3).for_each(|tag| t.received(tag));
        t.settled_otherwise(2);
        t.ack(1);
        t.ack(3);
        assert_eq!(t.flush(), vec![AckFrame::UpTo(3)]);
        assert_eq!(t.unsettled().count(), 0);
    }
}
