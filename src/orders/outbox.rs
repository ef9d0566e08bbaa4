//! One outbox row: a message exactly as the producer builds it ([`crate::producer::order_messages`]),
//! stored with its order in the same transaction and rebuilt for the relay. The body, the
//! message id and the `traceparent` are stored, so a message re-sent after a crash or a lost
//! confirm is the same message (consumers de-duplicate by id) in the same trace. While spans are
//! exported the stored `traceparent` is the accepting request's, and each publish sends the
//! context of its own span under it ([`crate::trace::publish_span`]).

use crate::message::{header_str, properties, HEADER_TRACEPARENT};
use crate::publisher::Outgoing;

/// A message waiting in (or read from) the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The row id: the relay publishes in this order (0 before the row is stored).
    pub id: i64,
    /// The order the message belongs to.
    pub order_id: String,
    pub exchange: String,
    pub routing_key: String,
    /// The AMQP `type` (`order`, `order.placed`).
    pub kind: String,
    /// The AMQP `message_id`.
    pub message_id: String,
    /// The W3C trace context the message carries, if any.
    pub traceparent: Option<String>,
    pub body: Vec<u8>,
}

/// The `type` of the order message itself (its confirm makes the order `published`).
pub const ORDER_KIND: &str = "order";

impl OutboxMessage {
    /// The outbox row of `msg`, a message of order `order_id`.
    pub fn from_outgoing(order_id: &str, msg: Outgoing) -> Self {
        let p = &msg.properties;
        Self {
            id: 0,
            order_id: order_id.to_owned(),
            kind: p.kind().as_ref().map(|k| k.to_string()).unwrap_or_default(),
            message_id: p
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default(),
            traceparent: header_str(p.headers().as_ref(), HEADER_TRACEPARENT),
            exchange: msg.exchange,
            routing_key: msg.routing_key,
            body: msg.body,
        }
    }

    /// Whether this is the order message (not its activity event).
    pub fn is_order(&self) -> bool {
        self.kind == ORDER_KIND
    }

    /// The message to publish, with the properties every burrow message carries.
    pub fn into_outgoing(self) -> Outgoing {
        let mut props = properties(&self.kind, &self.message_id);
        if let Some(tp) = &self.traceparent {
            props = props.with_headers(crate::producer::headers_with_trace(tp));
        }
        let label = u8::from(!self.is_order());
        Outgoing {
            exchange: self.exchange,
            routing_key: self.routing_key,
            body: self.body,
            properties: props,
            label,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_rebuilds_the_messages_the_producer_publishes() {
        let order = crate::message::tests_support::order("ord_1");
        for msg in crate::producer::order_messages(&order, true) {
            let row = OutboxMessage::from_outgoing(&order.order_id, msg.clone());
            let again = row.into_outgoing();
            assert_eq!(again.exchange, msg.exchange);
            assert_eq!(again.routing_key, msg.routing_key);
            assert_eq!(again.body, msg.body);
            assert_eq!(again.label, msg.label);
            let (a, b) = (&again.properties, &msg.properties);
            assert_eq!(a.kind(), b.kind());
            assert_eq!(a.message_id(), b.message_id());
            assert_eq!(a.headers(), b.headers());
            assert_eq!(a.delivery_mode(), b.delivery_mode());
            assert_eq!(a.content_type(), b.content_type());
        }
    }
}
