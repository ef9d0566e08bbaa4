//! Orders: the `order.placed` message of the order service and its validation rules.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{rule, InvalidMessage};

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

    /// Checks the rules of docs/CONTRACT.md.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::tests_support;

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
}
