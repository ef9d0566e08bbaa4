//! Ack batching that never acknowledges a delivery that is still being handled.
//!
//! Deliveries are registered in tag order as they arrive. An ack is held until the batch is
//! flushed; the flush acknowledges the prefix below the lowest unsettled tag with one
//! `basic.ack(multiple=true)` and acks the rest one by one, so one slow handler never holds back
//! the acks (and so the prefetch window) of the deliveries behind it.

use std::collections::BTreeSet;

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
