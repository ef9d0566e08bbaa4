//! The messages of the shop: orders (`order.rs`) and activity events (`event.rs`), their JSON
//! schemas and validation rules, and the AMQP properties and every header name (`headers.rs`).

mod event;
mod headers;
mod order;

pub use event::{ActivityEvent, EventKind};
pub use headers::*;
pub use order::{Order, OrderItem, ORDER_PLACED};

/// Why a message body is not an acceptable message. Always a permanent failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    /// Not JSON, or JSON of the wrong shape; serde's message names the field and position.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// A field breaks a rule of docs/CONTRACT.md.
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

/// A fresh, sortable, unique id with a prefix, e.g. `ord_01J…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new())
}

/// Sample data for tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use chrono::Utc;

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
