//! The fulfillment service: validate the order, book the shipment with a carrier, record the
//! fulfillment once per `order_id`, then announce `order.fulfilled`.

mod carrier;
mod store;

use std::sync::Arc;
use std::time::Duration;

use lapin::Channel;
use tokio::sync::Mutex;
use tracing::debug;

pub use carrier::{Carrier, CarrierError, SimulatedCarrier};
pub use store::{
    FulfillmentRecord, FulfillmentStore, PostgresStore, Recorded, SqliteStore, StoreCounts,
};

use crate::message::{properties, ActivityEvent, Order, HEADER_ORIGIN, HEADER_TRACEPARENT};
use crate::publisher::{self, Confirm, Outgoing};
use crate::worker::{Handler, Incoming, Outcome};

/// The queue the service consumes.
pub const QUEUE: &str = "orders.fulfillment";

/// Where the fulfillment handler announces `order.fulfilled` (and the inventory service
/// `inventory.changed`): confirmed publishes to the `activity` exchange on one channel.
pub struct Announcer {
    pool: crate::broker::Pool,
    channel: Mutex<Option<Channel>>,
    timeout: Duration,
    origin: Option<&'static str>,
}

impl Announcer {
    /// Publishes to the `activity` exchange through connections from `pool`.
    pub fn new(pool: crate::broker::Pool, timeout: Duration) -> Self {
        Self {
            pool,
            channel: Mutex::new(None),
            timeout,
            origin: None,
        }
    }

    /// Marks every announcement with the header `x-burrow-origin: origin`, so that the
    /// publishing service knows its own events when they come back.
    #[must_use]
    pub fn with_origin(mut self, origin: &'static str) -> Self {
        self.origin = Some(origin);
        self
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        let mut guard = self.channel.lock().await;
        if let Some(ch) = guard.as_ref().filter(|c| c.status().connected()) {
            return Ok(ch.clone());
        }
        let (ch, _) = crate::broker::confirm_channel(&self.pool).await?;
        *guard = Some(ch.clone());
        Ok(ch)
    }

    /// Publishes `event` to `activity` and waits for the confirm.
    ///
    /// # Errors
    /// Not confirmed: nacked, returned, timed out or the channel failed.
    pub async fn announce(
        &self,
        event: &ActivityEvent,
        traceparent: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut props = properties(event.kind.as_str(), &event.event_id);
        let mut headers = lapin::types::FieldTable::default();
        if let Some(tp) = traceparent {
            headers.insert(HEADER_TRACEPARENT.into(), crate::message::string_value(tp));
        }
        if let Some(origin) = self.origin {
            headers.insert(HEADER_ORIGIN.into(), crate::message::string_value(origin));
        }
        if !headers.inner().is_empty() {
            props = props.with_headers(headers);
        }
        let msg = Outgoing {
            exchange: "activity".into(),
            routing_key: event.kind.as_str().into(),
            body: serde_json::to_vec(event)?,
            properties: props,
            label: 0,
        };
        let channel = self.channel().await?;
        match publisher::publish_one(&channel, &msg, self.timeout).await {
            Ok(Confirm::Confirmed) => Ok(()),
            Ok(other) => anyhow::bail!("{} not confirmed: {other:?}", event.kind),
            Err(e) => {
                *self.channel.lock().await = None;
                Err(e)
            }
        }
    }
}

/// The fulfillment handler.
pub struct Fulfillment<C> {
    carrier: C,
    store: Arc<FulfillmentStore>,
    announcer: Option<Arc<Announcer>>,
}

impl<C: Carrier> Fulfillment<C> {
    /// A handler booking with `carrier`, recording in `store` and, when `announcer` is set,
    /// publishing `order.fulfilled`.
    pub fn new(
        carrier: C,
        store: Arc<FulfillmentStore>,
        announcer: Option<Arc<Announcer>>,
    ) -> Self {
        Self {
            carrier,
            store,
            announcer,
        }
    }
}

/// The dependency name of the fulfillment store in the circuit breaker.
pub const STORE: &str = "store";
/// The dependency an `order.fulfilled` announcement needs: the broker taking events. A broker
/// that nacks them (e.g. during a node restart) pauses the worker through the circuit breaker
/// instead of walking fulfilled orders down the retry ladder into the dead-letter queue.
pub const EVENTS: &str = "events";

fn store_down(e: &anyhow::Error) -> Outcome {
    Outcome::Unavailable {
        dependency: STORE,
        reason: format!("{e:#}"),
    }
}

impl<C: Carrier> Handler for Fulfillment<C> {
    /// The store: one read (`SELECT` on PostgreSQL).
    async fn probe(&self, dependency: &str) -> Result<(), String> {
        if dependency != STORE {
            return Ok(());
        }
        self.store
            .contains("probe")
            .await
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    }

    async fn handle(&self, msg: &Incoming) -> Outcome {
        let order = match Order::decode(&msg.body) {
            Ok(o) => o,
            Err(e) => return Outcome::Permanent(e.to_string()),
        };
        let traceparent = msg.header(HEADER_TRACEPARENT);
        let shipment = match self.carrier.book(&order.order_id, &order).await {
            Ok(s) => s,
            Err(e @ CarrierError::Unavailable(_)) => return Outcome::Transient(e.to_string()),
            Err(e @ CarrierError::Refused(_)) => return Outcome::Permanent(e.to_string()),
        };
        let announced = match self.store.record(&order.order_id, &shipment).await {
            Ok(Recorded::New) => false,
            Ok(Recorded::Duplicate { announced }) => {
                debug!(order_id = %order.order_id, "duplicate delivery; already fulfilled");
                announced
            }
            Err(e) => return store_down(&e),
        };
        if let (Some(announcer), false) = (&self.announcer, announced) {
            let event = ActivityEvent::order_fulfilled(&order, &shipment);
            if let Err(e) = announcer.announce(&event, traceparent.as_deref()).await {
                return Outcome::Unavailable {
                    dependency: EVENTS,
                    reason: format!("announcing order.fulfilled: {e:#}"),
                };
            }
            if let Err(e) = self.store.mark_announced(&order.order_id).await {
                return store_down(&e);
            }
        }
        // debug, not info: one line per order on the hot path cost ~4% of a worker's CPU in
        // `burrow bench` (formatting plus an unbuffered stderr write); successes are counted in
        // `burrow_messages_total`.
        debug!(order_id = %order.order_id, %shipment, trace = traceparent.as_deref().unwrap_or("-"), "fulfilled");
        Outcome::Success
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(order: &Order) -> Incoming {
        Incoming {
            body: serde_json::to_vec(order).unwrap(),
            properties: lapin::BasicProperties::default(),
            exchange: "orders".into(),
            routing_key: crate::message::ORDER_PLACED.into(),
            redelivered: false,
        }
    }

    #[tokio::test]
    async fn a_store_failure_after_booking_does_not_book_the_order_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fulfillment.db");
        let store = Arc::new(FulfillmentStore::Sqlite(SqliteStore::open(&path).unwrap()));
        // An instant carrier that never fails.
        let carrier = SimulatedCarrier::new(super::carrier::tests::settings());
        let handler = Fulfillment::new(carrier.clone(), store.clone(), None);
        let msg = incoming(&crate::message::tests_support::order("ord_1"));

        // The store fails behind a successful booking: its table is away for the first attempt.
        let side = rusqlite::Connection::open(&path).unwrap();
        side.execute_batch("ALTER TABLE fulfillments RENAME TO away")
            .unwrap();
        let first = handler.handle(&msg).await;
        assert!(
            matches!(first, Outcome::Unavailable { dependency, .. } if dependency == "store"),
            "{first:?}"
        );
        assert_eq!(carrier.bookings(), 1);
        side.execute_batch("ALTER TABLE away RENAME TO fulfillments")
            .unwrap();

        // The retry books with the same key: the carrier answers with the earlier booking.
        assert!(matches!(handler.handle(&msg).await, Outcome::Success));
        assert_eq!(carrier.bookings(), 1, "one shipment booked");
        assert_eq!(carrier.duplicate_bookings(), 1);
        assert_eq!(store.counts().await.unwrap().fulfilled, 1);
    }
}
