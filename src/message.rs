//! The messages of the shop: orders and activity events, their JSON schemas, validation rules,
//! AMQP properties and the `x-burrow-*` headers.

use std::fmt;

use chrono::{DateTime, Utc};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use serde::{Deserialize, Serialize};

/// Header counting how often a message has been tried.
pub const HEADER_ATTEMPTS: &str = "x-burrow-attempts";
/// Header carrying the human-readable reason a message was dead-lettered.
pub const HEADER_ERROR: &str = "x-burrow-error";
/// Header naming the queue a dead letter came from.
pub const HEADER_SOURCE_QUEUE: &str = "x-burrow-source-queue";
/// Header with the RFC 3339 time a message was dead-lettered.
pub const HEADER_FAILED_AT: &str = "x-burrow-failed-at";
/// Header with the exchange a dead letter was first delivered from in its dead-letter queue,
/// kept when `burrow dlq` puts the message back at the tail of that queue.
pub const HEADER_DEAD_EXCHANGE: &str = "x-burrow-dead-exchange";
/// Header with the routing key a dead letter was first delivered with in its dead-letter
/// queue, kept like [`HEADER_DEAD_EXCHANGE`].
pub const HEADER_DEAD_ROUTING_KEY: &str = "x-burrow-dead-routing-key";
/// W3C trace context header.
pub const HEADER_TRACEPARENT: &str = "traceparent";

/// The routing key orders are published with.
pub const ORDER_PLACED: &str = "order.placed";

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    /// Stock-keeping unit, non-empty.
    pub sku: String,
    /// 1..=1000.
    pub quantity: u32,
    /// Price of one unit in cents, >= 0.
    pub unit_price_cents: i64,
}

/// An order placed by a customer (`orders` exchange, routing key `order.placed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Unique id, also the AMQP `message_id`.
    pub order_id: String,
    /// The customer, non-empty.
    pub customer_id: String,
    /// Where confirmations go; must contain `@`.
    pub email: String,
    /// At least one line.
    pub items: Vec<OrderItem>,
    /// Three upper-case letters.
    pub currency: String,
    /// When the order was placed.
    pub placed_at: DateTime<Utc>,
}

/// Why a message body is not an acceptable message. Always a permanent failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    /// Not JSON, or JSON of the wrong shape; serde's message names the field and position.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// A field breaks a rule of DESIGN.md.
    #[error("invalid field `{field}`: {rule}")]
    Rule {
        /// The field, e.g. `items[1].quantity`.
        field: String,
        /// The rule it breaks.
        rule: String,
    },
}

fn rule(field: impl Into<String>, rule: impl Into<String>) -> InvalidMessage {
    InvalidMessage::Rule {
        field: field.into(),
        rule: rule.into(),
    }
}

impl Order {
    /// Decodes and validates an order from a message body.
    ///
    /// # Errors
    /// [`InvalidMessage`] naming what is wrong.
    pub fn decode(body: &[u8]) -> Result<Self, InvalidMessage> {
        let order: Order =
            serde_json::from_slice(body).map_err(|e| InvalidMessage::Malformed(e.to_string()))?;
        order.validate()?;
        Ok(order)
    }

    /// Checks the rules of DESIGN.md.
    ///
    /// # Errors
    /// The first broken rule, naming its field.
    pub fn validate(&self) -> Result<(), InvalidMessage> {
        if self.order_id.trim().is_empty() {
            return Err(rule("order_id", "must not be empty"));
        }
        if self.customer_id.trim().is_empty() {
            return Err(rule("customer_id", "must not be empty"));
        }
        if !self.email.contains('@') {
            return Err(rule("email", "must contain '@'"));
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(rule("currency", "must be three upper-case letters"));
        }
        if self.items.is_empty() {
            return Err(rule("items", "must not be empty"));
        }
        for (i, item) in self.items.iter().enumerate() {
            if item.sku.trim().is_empty() {
                return Err(rule(format!("items[{i}].sku"), "must not be empty"));
            }
            if !(1..=1000).contains(&item.quantity) {
                return Err(rule(
                    format!("items[{i}].quantity"),
                    format!("must be 1..=1000, got {}", item.quantity),
                ));
            }
            if item.unit_price_cents < 0 {
                return Err(rule(format!("items[{i}].unit_price_cents"), "must be >= 0"));
            }
        }
        self.total_cents().map(|_| ())
    }

    /// Total in cents, computed with checked arithmetic.
    ///
    /// # Errors
    /// The total does not fit in an `i64`; the error names the price of the first line at which
    /// the running total overflows.
    pub fn total_cents(&self) -> Result<i64, InvalidMessage> {
        self.items
            .iter()
            .enumerate()
            .try_fold(0i64, |total, (i, item)| {
                item.unit_price_cents
                    .checked_mul(i64::from(item.quantity))
                    .and_then(|line| total.checked_add(line))
                    .ok_or_else(|| {
                        rule(
                            format!("items[{i}].unit_price_cents"),
                            format!("the order total overflows {} cents", i64::MAX),
                        )
                    })
            })
    }
}

/// The kinds of activity event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventKind {
    /// A customer signed up; `data` = `{"email", "name"}`.
    #[serde(rename = "user.registered")]
    UserRegistered,
    /// A customer looked at a product.
    #[serde(rename = "product.viewed")]
    ProductViewed,
    /// A customer reviewed a product.
    #[serde(rename = "review.posted")]
    ReviewPosted,
    /// An order was placed; carries `order_id` and `data.email`.
    #[serde(rename = "order.placed")]
    OrderPlaced,
    /// An order was fulfilled; carries `order_id` and `data.email`.
    #[serde(rename = "order.fulfilled")]
    OrderFulfilled,
    /// Stock changed; `data` = `{"stock", "delta"}`.
    #[serde(rename = "inventory.changed")]
    InventoryChanged,
}

impl EventKind {
    /// Every kind, in a stable order.
    pub const ALL: [EventKind; 6] = [
        EventKind::UserRegistered,
        EventKind::ProductViewed,
        EventKind::ReviewPosted,
        EventKind::OrderPlaced,
        EventKind::OrderFulfilled,
        EventKind::InventoryChanged,
    ];

    /// The wire name, also the routing key.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::UserRegistered => "user.registered",
            EventKind::ProductViewed => "product.viewed",
            EventKind::ReviewPosted => "review.posted",
            EventKind::OrderPlaced => "order.placed",
            EventKind::OrderFulfilled => "order.fulfilled",
            EventKind::InventoryChanged => "inventory.changed",
        }
    }

    /// Parses a wire name.
    ///
    /// # Errors
    /// Names the unknown kind and lists the known ones.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown event kind '{s}' (known: {})", known.join(", "))
            })
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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

/// A fresh, sortable, unique id with a prefix, e.g. `ord_01J…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new())
}

/// Properties every burrow message carries: JSON, persistent, id, timestamp and type.
pub fn properties(kind: &str, message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(message_id))
        .with_timestamp(u64::try_from(Utc::now().timestamp()).unwrap_or(0))
        .with_type(ShortString::from(kind))
}

/// Reads an integer header, tolerating the integer widths different clients use.
pub fn header_u32(headers: Option<&FieldTable>, name: &str) -> Option<u32> {
    let value = headers?.inner().get(name)?;
    let n: i128 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?,
        _ => return None,
    };
    u32::try_from(n).ok()
}

/// Reads a string header.
pub fn header_str(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A long-string header value.
pub fn string_value(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.as_bytes().to_vec().into())
}

/// Sample data for tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A valid order with id `order_id`.
    pub(crate) fn order(order_id: &str) -> Order {
        Order {
            order_id: order_id.into(),
            customer_id: "cus_42".into(),
            email: "ann@example.com".into(),
            items: vec![OrderItem {
                sku: "SKU-1".into(),
                quantity: 2,
                unit_price_cents: 1999,
            }],
            currency: "EUR".into(),
            placed_at: Utc::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_order() -> Order {
        tests_support::order("ord_1")
    }

    #[test]
    fn valid_order_round_trips() {
        let order = sample_order();
        let body = serde_json::to_vec(&order).unwrap();
        assert_eq!(Order::decode(&body).unwrap(), order);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut v = serde_json::to_value(sample_order()).unwrap();
        v["gift_wrap"] = serde_json::json!(true);
        assert!(Order::decode(v.to_string().as_bytes()).is_ok());
    }

    #[test]
    fn each_rule_names_its_field() {
        type Breaker = Box<dyn Fn(&mut Order)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("order_id", Box::new(|o| o.order_id.clear())),
            ("customer_id", Box::new(|o| o.customer_id = " ".into())),
            ("email", Box::new(|o| o.email = "nobody".into())),
            ("currency", Box::new(|o| o.currency = "eur".into())),
            ("items", Box::new(|o| o.items.clear())),
            ("items[0].sku", Box::new(|o| o.items[0].sku.clear())),
            ("items[0].quantity", Box::new(|o| o.items[0].quantity = 0)),
            (
                "items[0].quantity",
                Box::new(|o| o.items[0].quantity = 1001),
            ),
            (
                "items[0].unit_price_cents",
                Box::new(|o| o.items[0].unit_price_cents = -1),
            ),
            (
                "items[0].unit_price_cents",
                Box::new(|o| o.items[0].unit_price_cents = i64::MAX),
            ),
        ];
        for (field, break_it) in cases {
            let mut o = sample_order();
            break_it(&mut o);
            match o.validate() {
                Err(InvalidMessage::Rule { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected a rule error, got {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_is_malformed() {
        for body in [
            &b""[..],
            b"not json",
            b"{\"order_id\": 5}",
            &[0xff, 0xfe, 0x00],
        ] {
            assert!(matches!(
                Order::decode(body),
                Err(InvalidMessage::Malformed(_))
            ));
        }
    }

    #[test]
    fn event_kinds_round_trip_and_rules_apply() {
        for k in EventKind::ALL {
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

    #[test]
    fn attempts_header_reads_any_integer_width() {
        let mut t = FieldTable::default();
        t.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongLongInt(3));
        assert_eq!(header_u32(Some(&t), HEADER_ATTEMPTS), Some(3));
        t.insert(HEADER_ATTEMPTS.into(), AMQPValue::ShortShortUInt(2));
        assert_eq!(header_u32(Some(&t), HEADER_ATTEMPTS), Some(2));
        t.insert(HEADER_ATTEMPTS.into(), string_value("7"));
        assert_eq!(header_u32(Some(&t), HEADER_ATTEMPTS), Some(7));
        assert_eq!(header_u32(None, HEADER_ATTEMPTS), None);
    }
}
