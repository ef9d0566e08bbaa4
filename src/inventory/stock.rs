//! The inventory service's decisions, without a broker or a store: what a delivery on
//! `orders.inventory` is ([`Input`]), what reserving an order line does to a level
//! ([`reserve`]), and the level a restock sets ([`restock_level`]).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::message::{ActivityEvent, EventKind, Order, HEADER_ORIGIN};
use crate::worker::Incoming;

/// The value of [`HEADER_ORIGIN`] on every `inventory.changed` the inventory service publishes,
/// so that it knows its own announcements when its `inventory.changed` binding brings them back.
pub const ORIGIN: &str = "inventory";

/// What reserving one order line does to a SKU's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// Units taken from stock.
    pub reserved: i64,
    /// Units ordered beyond the stock: the order is still fulfilled, these are back-ordered.
    pub backordered: i64,
    /// The level afterwards, never below 0.
    pub stock: i64,
}

/// Reserves `quantity` units of a SKU at `stock`: as many as there are, the rest back-ordered.
/// The level floors at 0 (a negative level or quantity counts as 0).
pub fn reserve(stock: i64, quantity: i64) -> Reservation {
    let stock = stock.max(0);
    let quantity = quantity.max(0);
    let reserved = quantity.min(stock);
    Reservation {
        reserved,
        backordered: quantity - reserved,
        stock: stock - reserved,
    }
}

/// The level a restock to `stock` sets: `stock`, never below 0.
pub fn restock_level(stock: i64) -> i64 {
    stock.max(0)
}

/// The units an order asks for per SKU (a SKU on two lines is summed), in SKU order.
pub fn order_lines(order: &Order) -> Vec<(String, i64)> {
    let mut lines: BTreeMap<&str, i64> = BTreeMap::new();
    for item in &order.items {
        *lines.entry(item.sku.as_str()).or_default() += i64::from(item.quantity);
    }
    lines.into_iter().map(|(s, q)| (s.to_owned(), q)).collect()
}

/// What a delivery on the service's queue is.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// An order (from the `orders` exchange): reserve its lines.
    Order(Order),
    /// An `inventory.changed` someone else published (`producer inventory`): set the level.
    Restock {
        /// The event's id, the de-duplication key.
        event_id: String,
        /// The SKU.
        sku: String,
        /// The level it asks for (`data.stock`, not yet floored).
        stock: i64,
    },
    /// An `inventory.changed` this service published, back through its binding: ignored, since
    /// its level is already in the store and applying it could undo later reservations.
    Echo,
    /// Another activity event: ignored. The shop's topology routes only `inventory.changed`
    /// here, but an operator may bind more kinds (or the old binding to the `activity` fanout
    /// may still be there); acking them unread keeps that harmless.
    Other(EventKind),
    /// Not a valid order or event. Skipped, not dead-lettered: `orders.fulfillment` and the
    /// activity queues dead-letter the same message with its reason, and a second copy in the
    /// dead-letter queue would only be a duplicate to replay.
    Invalid(String),
}

/// Only whether the body has a `kind`: activity events do, orders do not. The body decides,
/// not the exchange, because a retry comes back through the default exchange.
#[derive(Deserialize)]
struct Shape {
    #[serde(default)]
    kind: Option<String>,
}

impl Input {
    /// Classifies `msg`.
    pub fn of(msg: &Incoming) -> Self {
        let shape: Shape = match serde_json::from_slice(&msg.body) {
            Ok(s) => s,
            Err(e) => return Self::Invalid(format!("malformed JSON: {e}")),
        };
        let Some(kind) = shape.kind else {
            return match Order::decode(&msg.body) {
                Ok(order) => Self::Order(order),
                Err(e) => Self::Invalid(e.to_string()),
            };
        };
        match EventKind::parse(&kind) {
            Ok(EventKind::InventoryChanged) => {}
            Ok(other) => return Self::Other(other),
            Err(e) => return Self::Invalid(e),
        }
        if msg.header(HEADER_ORIGIN).as_deref() == Some(ORIGIN) {
            return Self::Echo;
        }
        match ActivityEvent::decode(&msg.body) {
            Ok(event) => Self::Restock {
                stock: event
                    .data
                    .get("stock")
                    .and_then(serde_json::Value::as_i64)
                    .unwrap_or(0),
                sku: event.product_id.unwrap_or_default(),
                event_id: event.event_id,
            },
            Err(e) => Self::Invalid(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::FieldTable;

    use super::*;
    use crate::message::{string_value, OrderItem};

    #[test]
    fn a_reservation_takes_what_there_is_and_back_orders_the_rest() {
        assert_eq!(
            reserve(5, 2),
            Reservation {
                reserved: 2,
                backordered: 0,
                stock: 3
            }
        );
        assert_eq!(
            reserve(3, 3),
            Reservation {
                reserved: 3,
                backordered: 0,
                stock: 0
            }
        );
        assert_eq!(
            reserve(2, 5),
            Reservation {
                reserved: 2,
                backordered: 3,
                stock: 0
            }
        );
        assert_eq!(
            reserve(0, 4),
            Reservation {
                reserved: 0,
                backordered: 4,
                stock: 0
            }
        );
        assert_eq!(reserve(-3, 1).stock, 0, "a level never goes below 0");
        assert_eq!(restock_level(40), 40);
        assert_eq!(restock_level(-1), 0);
    }

    #[test]
    fn an_order_asks_per_sku() {
        let mut order = crate::message::tests_support::order("ord_1");
        order.items.push(OrderItem {
            sku: "SKU-0".into(),
            quantity: 1,
            unit_price_cents: 1,
        });
        order.items.push(OrderItem {
            sku: "SKU-1".into(),
            quantity: 3,
            unit_price_cents: 1,
        });
        assert_eq!(
            order_lines(&order),
            vec![("SKU-0".to_owned(), 1), ("SKU-1".to_owned(), 5)]
        );
    }

    fn incoming(body: Vec<u8>, origin: Option<&str>) -> Incoming {
        let mut properties = lapin::BasicProperties::default();
        if let Some(o) = origin {
            let mut headers = FieldTable::default();
            headers.insert(HEADER_ORIGIN.into(), string_value(o));
            properties = properties.with_headers(headers);
        }
        Incoming {
            body,
            properties,
            exchange: String::new(),
            routing_key: "orders.inventory".into(),
            redelivered: false,
        }
    }

    #[test]
    fn deliveries_are_told_apart_by_body_and_origin() {
        let order = crate::message::tests_support::order("ord_1");
        let body = serde_json::to_vec(&order).unwrap();
        assert_eq!(Input::of(&incoming(body, None)), Input::Order(order));

        let restock = crate::producer::activity::inventory_event("SKU-1", 7, 0);
        let body = serde_json::to_vec(&restock).unwrap();
        assert_eq!(
            Input::of(&incoming(body.clone(), None)),
            Input::Restock {
                event_id: restock.event_id.clone(),
                sku: "SKU-1".into(),
                stock: 7
            }
        );
        assert_eq!(
            Input::of(&incoming(body.clone(), Some(ORIGIN))),
            Input::Echo
        );
        assert!(
            matches!(
                Input::of(&incoming(body, Some("someone-else"))),
                Input::Restock { .. }
            ),
            "only the service's own mark makes an echo"
        );

        let placed = ActivityEvent::order_placed(&crate::message::tests_support::order("ord_2"));
        let body = serde_json::to_vec(&placed).unwrap();
        assert_eq!(
            Input::of(&incoming(body, None)),
            Input::Other(EventKind::OrderPlaced),
            "the order.placed event is not the order"
        );
        assert!(matches!(
            Input::of(&incoming(b"{".to_vec(), None)),
            Input::Invalid(_)
        ));
        assert!(matches!(
            Input::of(&incoming(br#"{"order_id":"ord_3"}"#.to_vec(), None)),
            Input::Invalid(_)
        ));
        let mut bad = crate::producer::activity::inventory_event("SKU-1", 7, 0);
        bad.data = serde_json::json!({});
        assert!(matches!(
            Input::of(&incoming(serde_json::to_vec(&bad).unwrap(), None)),
            Input::Invalid(_)
        ));
    }
}
