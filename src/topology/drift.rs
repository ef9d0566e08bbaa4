//! Drift: a difference between the topology file and what the broker has. Drift is reported,
//! never "fixed": changing a queue's arguments means deleting it and its messages, which is an
//! operator's decision. The one removal `apply` makes is the operator's decision written down:
//! the bindings the file lists under `[[removed_bindings]]`.

use std::fmt;

use super::definition::{fmt_binding, DestinationType};

/// An exchange, queue or binding of the topology.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entity {
    /// An exchange, by name.
    Exchange(String),
    /// A queue or stream, by name.
    Queue(String),
    /// A binding of a queue, or of another exchange, to an exchange.
    Binding {
        /// The exchange.
        source: String,
        /// The queue or exchange.
        destination: String,
        /// Whether the destination is a queue or an exchange.
        destination_type: DestinationType,
        /// The binding key.
        routing_key: String,
    },
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exchange(name) => write!(f, "exchange '{name}'"),
            Self::Queue(name) => write!(f, "queue '{name}'"),
            Self::Binding {
                source,
                destination,
                destination_type,
                routing_key,
            } => {
                f.write_str("binding ")?;
                fmt_binding(f, source, destination, *destination_type, routing_key)
            }
        }
    }
}

const MISSING: &str = "missing";
const UNEXPECTED: &str = "not in the file";
const REMOVED: &str = "removed in the file";

/// One difference between the topology file and the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// What differs.
    pub entity: Entity,
    /// Which property, e.g. `argument x-delivery-limit`, `type`, `durable`, `existence`.
    pub what: String,
    /// What the topology file says; `None` when the file does not set it.
    pub expected: Option<String>,
    /// What the broker has; `None` when the broker does not have it.
    pub actual: Option<String>,
}

impl Drift {
    /// The entity does not exist on the broker.
    pub fn missing(entity: Entity) -> Self {
        Self {
            entity,
            what: MISSING.into(),
            expected: None,
            actual: None,
        }
    }

    /// A binding between two entities of the file that the file does not declare (on the
    /// broker only).
    pub fn unexpected(entity: Entity) -> Self {
        Self {
            entity,
            what: UNEXPECTED.into(),
            expected: None,
            actual: None,
        }
    }

    /// A binding the file lists under `[[removed_bindings]]` that is still on the broker.
    pub fn removed(entity: Entity) -> Self {
        Self {
            entity,
            what: REMOVED.into(),
            expected: None,
            actual: None,
        }
    }

    /// Whether this drift is a missing entity.
    pub fn is_missing(&self) -> bool {
        self.what == MISSING
    }

    /// Whether this drift is a binding the broker has and the file does not want
    /// ([`Drift::unexpected`] or [`Drift::removed`]).
    pub fn is_extra(&self) -> bool {
        self.what == UNEXPECTED || self.what == REMOVED
    }

    /// One line for operators, naming the topology file, e.g.
    /// `queue 'orders.fulfillment': argument x-delivery-limit: broker has 9, topology/shop.toml says 5`.
    /// A binding the file does not want says how to remove it.
    pub fn describe(&self, source: &str) -> String {
        if self.is_missing() {
            return format!(
                "{}: missing on the broker, {source} declares it",
                self.entity
            );
        }
        if self.what == UNEXPECTED {
            return format!(
                "{}: on the broker, not in {source}; to remove it, list it under \
                 [[removed_bindings]] there and run `burrow topology apply` (or unbind it in the \
                 management UI)",
                self.entity
            );
        }
        if self.what == REMOVED {
            return format!(
                "{}: still on the broker, {source} lists it under [[removed_bindings]]; \
                 `burrow topology apply` removes it",
                self.entity
            );
        }
        let actual = self.actual.as_deref().unwrap_or("none");
        let expected = self.expected.as_deref().unwrap_or("none");
        format!(
            "{}: {}: broker has {actual}, {source} says {expected}",
            self.entity, self.what
        )
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe("the topology"))
    }
}

/// Renders an argument value as RabbitMQ shows it: strings bare, everything else as JSON.
pub(crate) fn show(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Reads RabbitMQ's 406 PRECONDITION_FAILED reply to a declare, e.g.
/// `inequivalent arg 'x-delivery-limit' for queue 'orders.fulfillment' in vhost '/': received '5' but current is '9'`,
/// into a [`Drift`]. Any other text becomes a drift of `entity` whose `what` is the reply itself.
pub fn parse_precondition_failed(entity: &Entity, reply: &str) -> Drift {
    parse_inequivalent(entity, reply).unwrap_or_else(|| Drift {
        entity: entity.clone(),
        what: reply.trim().to_owned(),
        expected: None,
        actual: None,
    })
}

fn parse_inequivalent(entity: &Entity, reply: &str) -> Option<Drift> {
    let rest = reply.split_once("inequivalent arg '")?.1;
    let (arg, rest) = rest.split_once('\'')?;
    let rest = rest.split_once(": received ")?.1;
    let (received, current) = rest.rsplit_once(" but current is ")?;
    let what = match arg {
        "type" | "durable" | "auto_delete" | "internal" | "exclusive" => arg.to_owned(),
        _ => format!("argument {arg}"),
    };
    Some(Drift {
        entity: entity.clone(),
        what,
        expected: reply_value(received),
        actual: reply_value(current),
    })
}

/// `'5'` → `5`; `the value 'foo' of type 'longstr'` → `foo`; `none` → nothing.
fn reply_value(text: &str) -> Option<String> {
    let text = text.trim();
    if text == "none" {
        return None;
    }
    let text = text.strip_prefix("the value ").unwrap_or(text);
    let text = match text.rsplit_once(" of type '") {
        Some((value, _)) => value,
        None => text,
    };
    Some(
        text.strip_prefix('\'')
            .and_then(|t| t.strip_suffix('\''))
            .unwrap_or(text)
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Entity {
        Entity::Queue("orders.fulfillment".into())
    }

    #[test]
    fn inequivalent_integer_argument_is_parsed() {
        let d = parse_precondition_failed(
            &queue(),
            "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'orders.fulfillment' in vhost '/': received '5' but current is '9'",
        );
        assert_eq!(d.what, "argument x-delivery-limit");
        assert_eq!(d.expected.as_deref(), Some("5"));
        assert_eq!(d.actual.as_deref(), Some("9"));
        assert_eq!(
            d.describe("topology/shop.toml"),
            "queue 'orders.fulfillment': argument x-delivery-limit: broker has 9, topology/shop.toml says 5"
        );
    }

    #[test]
    fn inequivalent_missing_argument_is_parsed() {
        let d = parse_precondition_failed(
            &queue(),
            "inequivalent arg 'x-dead-letter-exchange' for queue 'dl' in vhost 'v': received the value 'orders.dlx' of type 'longstr' but current is none",
        );
        assert_eq!(d.what, "argument x-dead-letter-exchange");
        assert_eq!(d.expected.as_deref(), Some("orders.dlx"));
        assert_eq!(d.actual, None);
    }

    #[test]
    fn exchange_type_and_unknown_replies_are_kept() {
        let x = Entity::Exchange("orders".into());
        let d = parse_precondition_failed(
            &x,
            "inequivalent arg 'type' for exchange 'orders' in vhost '/': received 'topic' but current is 'fanout'",
        );
        assert_eq!(
            (d.what.as_str(), d.actual.as_deref()),
            ("type", Some("fanout"))
        );
        let d = parse_precondition_failed(&x, "something new");
        assert_eq!(d.what, "something new");
    }
}
