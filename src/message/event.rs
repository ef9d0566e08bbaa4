//! Activity events: what customers and the shop did, published on the `activity` exchange.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{new_id, rule, InvalidMessage, Order};

/// The kinds of activity event. The wire name (also the routing key) is written once, in the
/// `strum` attribute; serde, `Display`, `FromStr` and [`EventKind::as_str`] all use it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(try_from = "String", into = "&'static str")]
pub enum EventKind {
    /// A customer signed up; `data` = `{"email", "name"}`.
    #[strum(serialize = "user.registered")]
    UserRegistered,
    /// A customer looked at a product.
    #[strum(serialize = "product.viewed")]
    ProductViewed,
    /// A customer reviewed a product.
    #[strum(serialize = "review.posted")]
    ReviewPosted,
    /// An order was placed; carries `order_id` and `data.email`.
    #[strum(serialize = "order.placed")]
    OrderPlaced,
    /// An order was fulfilled; carries `order_id` and `data.email`.
    #[strum(serialize = "order.fulfilled")]
    OrderFulfilled,
    /// Stock changed; `data` = `{"stock", "delta"}`.
    #[strum(serialize = "inventory.changed")]
    InventoryChanged,
}

impl EventKind {
    /// Every kind, in a stable order.
    pub const ALL: &'static [EventKind] = <EventKind as strum::VariantArray>::VARIANTS;

    /// The wire name, also the routing key.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Parses a wire name.
    ///
    /// # Errors
    /// Names the unknown kind and lists the known ones.
    pub fn parse(s: &str) -> Result<Self, String> {
        s.parse().map_err(|_| {
            let known: Vec<_> = Self::ALL.iter().map(|k| k.as_str()).collect();
            format!("unknown event kind '{s}' (known: {})", known.join(", "))
        })
    }
}

impl TryFrom<String> for EventKind {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

/// A user-activity event (`activity` exchange, routing key = kind).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityEvent {
    /// Unique id, also the AMQP `message_id`.
    pub event_id: String,
    /// What happened.
    pub kind: EventKind,
    /// Who did it.
    pub user_id: String,
    /// When.
    pub occurred_at: DateTime<Utc>,
    /// The product, where there is one.
    #[serde(default)]
    pub product_id: Option<String>,
    /// The order, for order events.
    #[serde(default)]
    pub order_id: Option<String>,
    /// Kind-specific data.
    #[serde(default)]
    pub data: serde_json::Value,
}

impl ActivityEvent {
    /// A new event with a fresh id, happening now.
    pub fn new(kind: EventKind, user_id: impl Into<String>) -> Self {
        Self {
            event_id: new_id("evt"),
            kind,
            user_id: user_id.into(),
            occurred_at: Utc::now(),
            product_id: None,
            order_id: None,
            data: serde_json::json!({}),
        }
    }

    /// The `order.placed` event of an order.
    pub fn order_placed(order: &Order) -> Self {
        let mut e = Self::new(EventKind::OrderPlaced, &order.customer_id);
        e.order_id = Some(order.order_id.clone());
        e.product_id = order.items.first().map(|i| i.sku.clone());
        e.data = serde_json::json!({
            "email": order.email,
            "skus": order.items.iter().map(|i| i.sku.as_str()).collect::<Vec<_>>(),
            // A validated order's total fits; an unvalidated one that overflows shows `null`.
            "total_cents": order.total_cents().ok(),
            "currency": order.currency,
        });
        e
    }

    /// The `order.fulfilled` event of an order.
    pub fn order_fulfilled(order: &Order, shipment_id: &str) -> Self {
        let mut e = Self::order_placed(order);
        e.kind = EventKind::OrderFulfilled;
        e.event_id = format!("evt_fulfilled_{}", order.order_id);
        e.data["shipment_id"] = serde_json::Value::String(shipment_id.to_owned());
        e
    }

    /// Decodes and validates an event from a message body.
    ///
    /// # Errors
    /// [`InvalidMessage`] naming what is wrong.
    pub fn decode(body: &[u8]) -> Result<Self, InvalidMessage> {
        let e: ActivityEvent =
            serde_json::from_slice(body).map_err(|e| InvalidMessage::Malformed(e.to_string()))?;
        e.validate()?;
        Ok(e)
    }

    /// Checks the per-kind rules.
    ///
    /// # Errors
    /// The first broken rule, naming its field.
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        if self.event_id.trim().is_empty() {
            return Err(rule("event_id", "must not be empty"));
        }
        if self.user_id.trim().is_empty() {
            return Err(rule("user_id", "must not be empty"));
        }
        match self.kind {
            EventKind::ProductViewed | EventKind::ReviewPosted | EventKind::InventoryChanged
                if self
                    .product_id
                    .as_deref()
                    .is_none_or(|p| p.trim().is_empty()) =>
            {
                Err(rule("product_id", format!("required for {}", self.kind)))
            }
            EventKind::OrderPlaced | EventKind::OrderFulfilled
                if self.order_id.as_deref().is_none_or(|p| p.trim().is_empty()) =>
            {
                Err(rule("order_id", format!("required for {}", self.kind)))
            }
            EventKind::InventoryChanged
                if !self
                    .data
                    .get("stock")
                    .is_some_and(serde_json::Value::is_i64) =>
            {
                Err(rule("data.stock", "required integer for inventory.changed"))
            }
            _ => Ok(()),
        }
    }

    /// `data.email`, where the event carries one.
    pub fn email(&self) -> Option<&str> {
        self.data
            .get("email")
            .and_then(serde_json::Value::as_str)
            .filter(|e| e.contains('@'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_round_trip_and_rules_apply() {
        for &k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Ok(k));
        }
        assert!(EventKind::parse("order.cancelled")
            .unwrap_err()
            .contains("order.cancelled"));
        let mut e = ActivityEvent::new(EventKind::ProductViewed, "cus_1");
        assert!(
            matches!(e.validate(), Err(InvalidMessage::Rule { ref field, .. }) if field == "product_id")
        );
        e.product_id = Some("SKU-1".into());
        let body = serde_json::to_vec(&e).unwrap();
        assert_eq!(ActivityEvent::decode(&body).unwrap(), e);
    }
}
