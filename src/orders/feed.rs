//! The order service's two status feeds, run on the worker runtime: `orders.status` (the
//! `order.fulfilled` activity events, bound through `activity.by-kind`; each marks its order
//! `fulfilled`) and `orders.status.dead-letters` (a copy of every dead-lettered order; marks it
//! `dead_lettered`). Anything else (another event kind an operator bound, an order this service
//! did not take) is acked and ignored; a store that does not answer is
//! [`Outcome::Unavailable`].

use std::sync::Arc;

use super::status::OrderStatus;
use super::store::OrderStore;
use crate::message::{ActivityEvent, EventKind};
use crate::worker::{Handler, Incoming, Outcome};

/// The queue of activity events the order service follows.
pub const STATUS_QUEUE: &str = "orders.status";
/// The queue of dead-lettered orders the order service follows.
pub const DEAD_LETTERS_QUEUE: &str = "orders.status.dead-letters";

/// One status feed: the status it records and where the order id comes from.
pub struct StatusFeed {
    store: Arc<OrderStore>,
    marks: OrderStatus,
}

impl StatusFeed {
    /// The `orders.status` feed: `order.fulfilled` events mark orders `fulfilled`.
    pub fn fulfilled(store: Arc<OrderStore>) -> Self {
        Self {
            store,
            marks: OrderStatus::Fulfilled,
        }
    }

    /// The `orders.status.dead-letters` feed: dead-lettered orders are marked `dead_lettered`.
    pub fn dead_lettered(store: Arc<OrderStore>) -> Self {
        Self {
            store,
            marks: OrderStatus::DeadLettered,
        }
    }

    /// The order `msg` is about, if it concerns this feed.
    fn order_id(&self, msg: &Incoming) -> Option<String> {
        match self.marks {
            OrderStatus::Fulfilled => {
                let event: ActivityEvent = serde_json::from_slice(&msg.body).ok()?;
                (event.kind == EventKind::OrderFulfilled)
                    .then_some(event.order_id)
                    .flatten()
            }
            // A dead letter may be a malformed order: its message id is the order id.
            _ => msg.message_id().map(str::to_owned),
        }
    }
}

impl Handler for StatusFeed {
    async fn handle(&self, msg: &Incoming) -> Outcome {
        let Some(order_id) = self.order_id(msg) else {
            return Outcome::Success;
        };
        match self.store.advance(&order_id, self.marks).await {
            Ok(_) => Outcome::Success,
            Err(e) => Outcome::Unavailable {
                dependency: "store",
                reason: format!("{e:#}"),
            },
        }
    }

    async fn probe(&self, _dependency: &str) -> Result<(), String> {
        self.store.ping().await.map_err(|e| format!("{e:#}"))
    }
}
