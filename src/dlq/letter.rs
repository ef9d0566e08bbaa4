//! One dead letter as read from a dead-letter queue: where it failed and why (burrow's headers,
//! else the broker's `x-death`), and the copies a replay or a pass sends.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::message::BasicGetMessage;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use serde::Serialize;

use super::HEADER_REPLAYED;
use crate::message::{
    header_str, header_u32, HEADER_ATTEMPTS, HEADER_DEAD_EXCHANGE, HEADER_DEAD_ROUTING_KEY,
    HEADER_DEATH, HEADER_DELIVERY_COUNT, HEADER_ERROR, HEADER_FAILED_AT,
    HEADER_FIRST_DEATH_EXCHANGE, HEADER_FIRST_DEATH_QUEUE, HEADER_FIRST_DEATH_REASON,
    HEADER_LAST_DEATH_EXCHANGE, HEADER_LAST_DEATH_QUEUE, HEADER_LAST_DEATH_REASON,
    HEADER_LAST_ERROR, HEADER_SOURCE_QUEUE,
};
use crate::publisher::Outgoing;

/// Headers a replay removes: why and when the message failed, and the broker's own
/// dead-lettering history, so the replayed message starts clean.
const FAILURE_HEADERS: &[&str] = &[
    HEADER_ERROR,
    HEADER_FAILED_AT,
    HEADER_SOURCE_QUEUE,
    HEADER_DEAD_EXCHANGE,
    HEADER_DEAD_ROUTING_KEY,
    HEADER_LAST_ERROR,
    HEADER_DEATH,
    HEADER_FIRST_DEATH_QUEUE,
    HEADER_FIRST_DEATH_REASON,
    HEADER_FIRST_DEATH_EXCHANGE,
    HEADER_LAST_DEATH_QUEUE,
    HEADER_LAST_DEATH_REASON,
    HEADER_LAST_DEATH_EXCHANGE,
    HEADER_DELIVERY_COUNT,
];

/// One dead letter, as read from the queue.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Its `message_id` (`-` when it has none).
    pub id: String,
    /// The queue it failed in: `x-burrow-source-queue`, else the broker's `x-death`.
    pub source_queue: Option<String>,
    /// Why it failed: `x-burrow-error`, else the broker's reason (e.g. `delivery_limit`).
    pub reason: Option<String>,
    /// `x-burrow-attempts`.
    pub attempts: Option<u32>,
    /// When it was dead-lettered (`x-burrow-failed-at`), else when it was published.
    pub failed_at: Option<DateTime<Utc>>,
    /// How often it was replayed before.
    pub replayed: u32,
    /// The exchange and routing key it was dead-lettered with.
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// Its body.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// Its properties (headers included).
    #[serde(skip)]
    pub properties: BasicProperties,
}

impl DeadLetter {
    /// Reads the burrow and broker headers of a fetched message.
    pub fn from_message(message: &BasicGetMessage) -> Self {
        let d = &message.delivery;
        Self::from_parts(
            &d.properties,
            d.exchange.as_str(),
            d.routing_key.as_str(),
            &d.data,
        )
    }

    /// Reads a dead letter from its properties, the exchange and routing key it was delivered
    /// with, and its body. Source and reason: burrow's headers first, else the newest
    /// `x-death` entry (RabbitMQ keeps that array newest first), else `x-last-death-*`
    /// (3.13+), else `x-first-death-*`.
    pub fn from_parts(
        properties: &BasicProperties,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
    ) -> Self {
        let headers = properties.headers().as_ref();
        let death = newest_death(headers);
        let source_queue = header_str(headers, HEADER_SOURCE_QUEUE)
            .or_else(|| death.as_ref().and_then(|t| table_str(t, "queue")))
            .or_else(|| header_str(headers, HEADER_LAST_DEATH_QUEUE))
            .or_else(|| header_str(headers, HEADER_FIRST_DEATH_QUEUE));
        let reason = header_str(headers, HEADER_ERROR)
            .or_else(|| death.as_ref().and_then(|t| table_str(t, "reason")))
            .or_else(|| header_str(headers, HEADER_LAST_DEATH_REASON))
            .or_else(|| header_str(headers, HEADER_FIRST_DEATH_REASON));
        let failed_at = header_str(headers, HEADER_FAILED_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| {
                properties
                    .timestamp()
                    .and_then(|t| DateTime::from_timestamp(i64::try_from(t).ok()?, 0))
            });
        Self {
            id: properties
                .message_id()
                .as_ref()
                .map_or_else(|| "-".to_owned(), |s| s.as_str().to_owned()),
            source_queue,
            reason,
            attempts: header_u32(headers, HEADER_ATTEMPTS),
            failed_at,
            replayed: header_u32(headers, HEADER_REPLAYED).unwrap_or(0),
            exchange: header_str(headers, HEADER_DEAD_EXCHANGE)
                .unwrap_or_else(|| exchange.to_owned()),
            routing_key: header_str(headers, HEADER_DEAD_ROUTING_KEY)
                .unwrap_or_else(|| routing_key.to_owned()),
            body: body.to_vec(),
            properties: properties.clone(),
        }
    }

    /// How long ago it failed; `None` when that is not known.
    pub fn age(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.failed_at
            .map(|t| (now - t).to_std().unwrap_or_default())
    }

    /// Whether its reason contains `filter` (case-insensitive); no filter matches everything.
    pub fn matches(&self, filter: Option<&str>) -> bool {
        filter.is_none_or(|f| {
            self.reason
                .as_deref()
                .is_some_and(|r| r.to_lowercase().contains(&f.to_lowercase()))
        })
    }

    /// Every header as (name, text), in the order the message carries them.
    pub fn header_texts(&self) -> Vec<(String, String)> {
        self.properties
            .headers()
            .as_ref()
            .map(|h| {
                h.into_iter()
                    .map(|(k, v)| (k.as_str().to_owned(), value_text(v)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Its body as text: pretty-printed when it is JSON, else as it is (invalid UTF-8
    /// replaced).
    pub fn body_text(&self) -> String {
        match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_default(),
            Err(_) => String::from_utf8_lossy(&self.body).into_owned(),
        }
    }

    /// Its headers, to edit for a copy.
    fn headers(&self) -> BTreeMap<ShortString, AMQPValue> {
        self.properties
            .headers()
            .as_ref()
            .map(|h| h.inner().clone())
            .unwrap_or_default()
    }

    /// The copy a replay publishes: to the default exchange with the source queue as routing
    /// key, `x-burrow-attempts` reset to 0, the failure headers removed and `x-burrow-replayed`
    /// counted up. `None` when the source queue is unknown.
    pub fn replay_copy(&self) -> Option<Outgoing> {
        let queue = self.source_queue.clone()?;
        let mut headers = self.headers();
        for name in FAILURE_HEADERS {
            headers.remove(*name);
        }
        headers.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongLongInt(0));
        headers.insert(
            HEADER_REPLAYED.into(),
            AMQPValue::LongLongInt(i64::from(self.replayed) + 1),
        );
        Some(Outgoing {
            exchange: String::new(),
            routing_key: queue,
            body: self.body.clone(),
            properties: self
                .properties
                .clone()
                .with_headers(FieldTable::from(headers))
                .with_delivery_mode(2),
            label: 0,
        })
    }

    /// The copy that keeps this message in `queue` (its dead-letter queue) when a pass moves
    /// past it: body and properties unchanged, to the default exchange with `queue` as routing
    /// key (only that queue, not every binding of the dead-letter exchange), and the exchange
    /// and routing key it was dead-lettered with kept in headers so `list` and `show` still
    /// show them.
    pub fn keep_copy(&self, queue: &str) -> Outgoing {
        let mut headers = self.headers();
        headers
            .entry(HEADER_DEAD_EXCHANGE.into())
            .or_insert_with(|| crate::message::string_value(&self.exchange));
        headers
            .entry(HEADER_DEAD_ROUTING_KEY.into())
            .or_insert_with(|| crate::message::string_value(&self.routing_key));
        Outgoing {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            body: self.body.clone(),
            properties: self
                .properties
                .clone()
                .with_headers(FieldTable::from(headers)),
            label: 0,
        }
    }
}

/// A header value as text: strings as they are, numbers, arrays and tables spelled out.
fn value_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(t) => i64::try_from(*t)
            .ok()
            .and_then(|t| DateTime::from_timestamp(t, 0))
            .map_or_else(|| t.to_string(), |t| t.to_rfc3339()),
        AMQPValue::FieldArray(a) => format!(
            "[{}]",
            a.as_slice()
                .iter()
                .map(value_text)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AMQPValue::FieldTable(t) => format!(
            "{{{}}}",
            t.into_iter()
                .map(|(k, v)| format!("{}: {}", k.as_str(), value_text(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        AMQPValue::ByteArray(b) => format!("{} bytes", b.len()),
        AMQPValue::DecimalValue(d) => format!("{d:?}"),
        AMQPValue::Void => "null".into(),
    }
}

/// The newest `x-death` entry: RabbitMQ puts the latest dead-lettering first.
fn newest_death(headers: Option<&FieldTable>) -> Option<FieldTable> {
    match headers?.inner().get(HEADER_DEATH)? {
        AMQPValue::FieldArray(a) => match a.as_slice().first()? {
            AMQPValue::FieldTable(t) => Some(t.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn table_str(t: &FieldTable, key: &str) -> Option<String> {
    header_str(Some(t), key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::string_value;

    fn dead(headers: FieldTable) -> DeadLetter {
        DeadLetter {
            id: "ord_1".into(),
            source_queue: header_str(Some(&headers), HEADER_SOURCE_QUEUE),
            reason: header_str(Some(&headers), HEADER_ERROR),
            attempts: header_u32(Some(&headers), HEADER_ATTEMPTS),
            failed_at: None,
            replayed: header_u32(Some(&headers), HEADER_REPLAYED).unwrap_or(0),
            exchange: "orders.dlx".into(),
            routing_key: "order.placed".into(),
            body: b"{\"a\":1}".to_vec(),
            properties: BasicProperties::default().with_headers(headers),
        }
    }

    #[test]
    fn replay_copy_resets_attempts_drops_the_error_and_counts_replays() {
        let mut h = FieldTable::default();
        h.insert(HEADER_ERROR.into(), string_value("carrier down"));
        h.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongLongInt(4));
        h.insert(
            HEADER_SOURCE_QUEUE.into(),
            string_value("orders.fulfillment"),
        );
        h.insert(
            HEADER_FAILED_AT.into(),
            string_value("2026-01-01T00:00:00Z"),
        );
        h.insert("traceparent".into(), string_value("00-abc-def-01"));
        let m = dead(h);
        assert!(m.matches(Some("CARRIER")));
        assert!(!m.matches(Some("malformed")));
        let copy = m.replay_copy().expect("source known");
        assert_eq!(
            (copy.exchange.as_str(), copy.routing_key.as_str()),
            ("", "orders.fulfillment")
        );
        let h = copy.properties.headers().as_ref();
        assert_eq!(header_u32(h, HEADER_ATTEMPTS), Some(0));
        assert_eq!(header_u32(h, HEADER_REPLAYED), Some(1));
        assert_eq!(header_str(h, HEADER_ERROR), None);
        assert_eq!(header_str(h, HEADER_FAILED_AT), None);
        assert_eq!(
            header_str(h, "traceparent").as_deref(),
            Some("00-abc-def-01")
        );
    }

    fn death(queue: &str, reason: &str) -> AMQPValue {
        let mut t = FieldTable::default();
        t.insert("queue".into(), string_value(queue));
        t.insert("reason".into(), string_value(reason));
        t.insert("count".into(), AMQPValue::LongLongInt(1));
        t.insert("exchange".into(), string_value(""));
        AMQPValue::FieldTable(t)
    }

    #[test]
    fn source_and_reason_come_from_the_newest_x_death_entry() {
        // RabbitMQ keeps x-death newest first: here the message expired twice in a retry
        // queue, then hit the delivery limit of orders.fulfillment.
        let mut h = FieldTable::default();
        h.insert(
            HEADER_DEATH.into(),
            AMQPValue::FieldArray(
                vec![
                    death("orders.fulfillment", "delivery_limit"),
                    death("orders.fulfillment.retry.1s", "expired"),
                ]
                .into(),
            ),
        );
        h.insert(
            HEADER_FIRST_DEATH_QUEUE.into(),
            string_value("orders.fulfillment.retry.1s"),
        );
        h.insert(HEADER_FIRST_DEATH_REASON.into(), string_value("expired"));
        let props = BasicProperties::default().with_headers(h);
        let m = DeadLetter::from_parts(&props, "orders.dlx", "order.placed", b"{}");
        assert_eq!(m.source_queue.as_deref(), Some("orders.fulfillment"));
        assert_eq!(m.reason.as_deref(), Some("delivery_limit"));
        assert_eq!(
            m.replay_copy().map(|c| c.routing_key).as_deref(),
            Some("orders.fulfillment")
        );
    }

    #[test]
    fn without_x_death_the_last_death_headers_win_over_the_first() {
        let mut h = FieldTable::default();
        h.insert(HEADER_FIRST_DEATH_QUEUE.into(), string_value("a.retry"));
        h.insert(HEADER_FIRST_DEATH_REASON.into(), string_value("expired"));
        h.insert(HEADER_LAST_DEATH_QUEUE.into(), string_value("a"));
        h.insert(HEADER_LAST_DEATH_REASON.into(), string_value("rejected"));
        let props = BasicProperties::default().with_headers(h);
        let m = DeadLetter::from_parts(&props, "x", "k", b"");
        assert_eq!(m.source_queue.as_deref(), Some("a"));
        assert_eq!(m.reason.as_deref(), Some("rejected"));
    }

    #[test]
    fn keep_copy_is_the_same_message_addressed_to_the_dead_letter_queue() {
        let mut h = FieldTable::default();
        h.insert(HEADER_ERROR.into(), string_value("carrier down"));
        h.insert(
            HEADER_DEATH.into(),
            AMQPValue::FieldArray(vec![death("q", "rejected")].into()),
        );
        let m = dead(h);
        let keep = m.keep_copy("orders.dead");
        assert_eq!(
            (keep.exchange.as_str(), keep.routing_key.as_str()),
            ("", "orders.dead")
        );
        assert_eq!(keep.body, m.body);
        assert_eq!(keep.properties.message_id(), m.properties.message_id());
        let kh = keep.properties.headers().as_ref();
        assert_eq!(
            header_str(kh, HEADER_ERROR).as_deref(),
            Some("carrier down")
        );
        assert!(kh.is_some_and(|t| t.inner().contains_key(HEADER_DEATH)));
        // Read back from the tail, it still shows where it was dead-lettered, and a second
        // keep does not overwrite that.
        let again = DeadLetter::from_parts(&keep.properties, "", "orders.dead", &keep.body);
        assert_eq!(
            (again.exchange.as_str(), again.routing_key.as_str()),
            ("orders.dlx", "order.placed")
        );
        let twice = again.keep_copy("orders.dead");
        let back = DeadLetter::from_parts(&twice.properties, "", "orders.dead", &twice.body);
        assert_eq!(back.exchange, "orders.dlx");
        // A replay goes to the source the broker recorded and drops the bookkeeping headers.
        let copy = again.replay_copy().expect("source from x-death");
        assert_eq!(copy.routing_key, "q");
        let ch = copy.properties.headers().as_ref();
        assert_eq!(header_str(ch, HEADER_DEAD_EXCHANGE), None);
        assert_eq!(header_str(ch, HEADER_DEAD_ROUTING_KEY), None);
    }

    #[test]
    fn unknown_source_cannot_be_replayed() {
        assert!(dead(FieldTable::default()).replay_copy().is_none());
    }
}
