//! The status of an order as the order service tells it: `accepted` (stored with its outbox
//! rows) → `published` (the broker confirmed the order) → `fulfilled` (its `order.fulfilled`
//! event arrived) or `dead_lettered` (it reached the dead-letter exchange).

use std::fmt;

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Stored with its outbox rows; not yet confirmed by the broker.
    Accepted,
    /// The broker confirmed the order message.
    Published,
    /// The fulfillment service announced it (`order.fulfilled`).
    Fulfilled,
    /// It was dead-lettered (see `burrow dlq list orders.dead`).
    DeadLettered,
}

impl OrderStatus {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Published => "published",
            Self::Fulfilled => "fulfilled",
            Self::DeadLettered => "dead_lettered",
        }
    }

    /// Parses a stored name.
    ///
    /// # Errors
    /// Names the unknown status.
    pub fn parse(s: &str) -> Result<Self, String> {
        [
            Self::Accepted,
            Self::Published,
            Self::Fulfilled,
            Self::DeadLettered,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| format!("unknown order status '{s}'"))
    }

    /// The statuses an order may move to this one from: a status only moves forward, and the
    /// two ends (`fulfilled`, `dead_lettered`) are final, whatever order the events arrive in.
    pub fn predecessors(self) -> &'static [&'static str] {
        match self {
            Self::Accepted => &[],
            Self::Published => &["accepted"],
            Self::Fulfilled | Self::DeadLettered => &["accepted", "published"],
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_move_forward() {
        for s in [
            OrderStatus::Accepted,
            OrderStatus::Published,
            OrderStatus::Fulfilled,
            OrderStatus::DeadLettered,
        ] {
            assert_eq!(OrderStatus::parse(s.as_str()), Ok(s));
            assert!(!s.predecessors().contains(&s.as_str()));
        }
        assert!(!OrderStatus::Published
            .predecessors()
            .contains(&OrderStatus::Fulfilled.as_str()));
        assert!(OrderStatus::parse("lost").is_err());
    }
}
