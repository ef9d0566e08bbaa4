//! The AMQP side of a message: the properties every burrow message carries, and every header
//! name burrow reads or writes, its own (`x-burrow-*`) and the broker's (`x-death`, ...), with
//! the functions that read them.

use chrono::Utc;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

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
/// Header with the reason of the latest transient failure, set when a message goes to a retry
/// queue.
pub const HEADER_LAST_ERROR: &str = "x-burrow-last-error";
/// Header counting how often a message was replayed from a dead-letter queue.
pub const HEADER_REPLAYED: &str = "x-burrow-replayed";
/// Header naming the burrow service that published a message, where its own consumers must
/// recognise it: the inventory service marks its `inventory.changed` events so that it ignores
/// them when their binding to `activity.by-kind` brings them back.
pub const HEADER_ORIGIN: &str = "x-burrow-origin";
/// W3C trace context header: the trace and the span a message was published in.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// W3C trace context header: vendor data of the trace, carried along when a tracer set it.
pub const HEADER_TRACESTATE: &str = "tracestate";

// The broker's headers.

/// RabbitMQ's dead-lettering history: an array of tables, newest first.
pub const HEADER_DEATH: &str = "x-death";
/// The queue a message was first dead-lettered from.
pub const HEADER_FIRST_DEATH_QUEUE: &str = "x-first-death-queue";
/// Why a message was first dead-lettered (`rejected`, `expired`, `delivery_limit`...).
pub const HEADER_FIRST_DEATH_REASON: &str = "x-first-death-reason";
/// The exchange a message was first dead-lettered from.
pub const HEADER_FIRST_DEATH_EXCHANGE: &str = "x-first-death-exchange";
/// The queue a message was last dead-lettered from (RabbitMQ 3.13+).
pub const HEADER_LAST_DEATH_QUEUE: &str = "x-last-death-queue";
/// Why a message was last dead-lettered (RabbitMQ 3.13+).
pub const HEADER_LAST_DEATH_REASON: &str = "x-last-death-reason";
/// The exchange a message was last dead-lettered from (RabbitMQ 3.13+).
pub const HEADER_LAST_DEATH_EXCHANGE: &str = "x-last-death-exchange";
/// How often a quorum queue has delivered the message before.
pub const HEADER_DELIVERY_COUNT: &str = "x-delivery-count";
/// The offset of a delivery from a stream; also the consumer argument that says where to
/// start reading.
pub const HEADER_STREAM_OFFSET: &str = "x-stream-offset";

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

#[cfg(test)]
mod tests {
    use super::*;

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
