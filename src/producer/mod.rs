//! The order service and the other publishers: one order (`producer order`), many generated or
//! read from a file (`producer orders`), each with its `order.placed` event; activity events and
//! inventory changes ([`activity`]); all confirmed and mandatory. The functions return what
//! happened; `producer` ([`crate::cli::producer`]) prints it.

pub mod activity;
mod file;
mod generate;

use std::io::BufRead;
use std::time::{Duration, Instant};

use anyhow::Context;
use lapin::types::FieldTable;

pub use generate::{Generated, OrderGenerator, CATALOGUE};

use crate::broker;
use crate::message::{
    new_id, properties, string_value, ActivityEvent, Order, OrderItem, HEADER_TRACEPARENT,
    ORDER_PLACED,
};
use crate::publisher::{self, BulkPublisher, Confirm, Outgoing};
use crate::settings::Settings;

/// The `orders` exchange.
pub const ORDERS_EXCHANGE: &str = "orders";
/// The `activity` exchange.
pub const ACTIVITY_EXCHANGE: &str = "activity";

const LABEL_ORDER: u8 = 0;
const LABEL_EVENT: u8 = 1;

/// Parses `SKU:QUANTITY:UNIT_PRICE_CENTS`, e.g. `SKU-1:2:1999`.
///
/// # Errors
/// Says which part is wrong.
pub fn parse_item(s: &str) -> Result<OrderItem, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [sku, qty, price] = parts.as_slice() else {
        return Err(format!(
            "'{s}': expected SKU:QUANTITY:UNIT_PRICE_CENTS, e.g. SKU-1:2:1999"
        ));
    };
    Ok(OrderItem {
        sku: (*sku).to_owned(),
        quantity: qty
            .parse()
            .map_err(|_| format!("'{s}': quantity '{qty}' is not a whole number"))?,
        unit_price_cents: price
            .parse()
            .map_err(|_| format!("'{s}': unit price '{price}' is not a whole number of cents"))?,
    })
}

/// A `traceparent` header table.
pub(crate) fn headers_with_trace(traceparent: &str) -> FieldTable {
    let mut h = FieldTable::default();
    h.insert(HEADER_TRACEPARENT.into(), string_value(traceparent));
    h
}

/// The messages that place `order`: the order itself and, when `events`, its `order.placed`.
pub fn order_messages(order: &Order, events: bool) -> Vec<Outgoing> {
    // One trace for the order and its event: the caller's (the order service's request) or a
    // new one.
    let trace = crate::trace::new_traceparent("order", &order.order_id);
    let mut out = vec![Outgoing {
        exchange: ORDERS_EXCHANGE.into(),
        routing_key: ORDER_PLACED.into(),
        body: serde_json::to_vec(order).expect("orders serialize"),
        properties: properties("order", &order.order_id).with_headers(headers_with_trace(&trace)),
        label: LABEL_ORDER,
    }];
    if events {
        out.push(event_message(
            &ActivityEvent::order_placed(order),
            Some(&trace),
        ));
    }
    out
}

/// The message of an activity event.
pub fn event_message(event: &ActivityEvent, traceparent: Option<&str>) -> Outgoing {
    let mut props = properties(event.kind.as_str(), &event.event_id);
    if let Some(tp) = traceparent {
        props = props.with_headers(headers_with_trace(tp));
    }
    Outgoing {
        exchange: ACTIVITY_EXCHANGE.into(),
        routing_key: event.kind.as_str().into(),
        body: serde_json::to_vec(event).expect("events serialize"),
        properties: props,
        label: LABEL_EVENT,
    }
}

/// Refuses a message larger than RabbitMQ 4.0+ accepts (16 MiB): the broker would close the
/// channel, so the producer says why first.
///
/// # Errors
/// A line naming the order, its size and the limit.
pub fn check_size(what: &str, id: &str, body: &[u8]) -> Result<(), String> {
    let limit = crate::broker_version::MAX_MESSAGE_BYTES_4_0;
    if body.len() > limit {
        return Err(format!(
            "the {what} {id} is {} bytes, more than the {limit} bytes (16 MiB) RabbitMQ 4.0+ \
             accepts in one message; split it",
            body.len()
        ));
    }
    Ok(())
}

/// Why an order or event was not published.
///
/// The command layer branches on it: [`PublishError::Invalid`] is the caller's input (exit 65,
/// nothing was sent), the others are the broker's answer (exit 1); see [`crate::cli::Exit`].
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The input breaks a rule or is too large; nothing was sent.
    #[error("{0}")]
    Invalid(String),
    /// The broker refused the message (`basic.nack`).
    #[error("the broker refused the {what} {id} (nack)")]
    Nacked {
        /// `order`, `order.placed event` or `event`.
        what: &'static str,
        /// The order or event id.
        id: String,
    },
    /// No queue is bound for the message (returned as mandatory).
    #[error("the {what} {id} was unroutable ({reason}): no queue is bound to {destination}; run `burrow topology apply`")]
    Unroutable {
        /// `order`, `order.placed event` or `event`.
        what: &'static str,
        /// The order or event id.
        id: String,
        /// The broker's reply text.
        reason: String,
        /// Where it was sent, as said to the user (`'orders' with key 'order.placed'`).
        destination: String,
    },
    /// The exchange does not exist on the vhost (the broker closed the channel with 404).
    #[error("the {what} {id} was not published: {reason}; run `burrow topology apply`")]
    NoSuchExchange {
        /// `order`, `order.placed event` or `event`.
        what: &'static str,
        /// The order or event id.
        id: String,
        /// The broker's reply text, e.g. `NOT_FOUND - no exchange 'orders' in vhost '/'`.
        reason: String,
    },
    /// No confirm came (the channel failed or the confirm timed out).
    #[error("the {what} {id} was not confirmed")]
    NotConfirmed {
        /// `order`, `order.placed event` or `event`.
        what: &'static str,
        /// The order or event id.
        id: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Publishes `msg` and waits for its confirm; anything but a confirm is a [`PublishError`].
pub(crate) async fn publish_confirmed(
    channel: &lapin::Channel,
    msg: &Outgoing,
    timeout: Duration,
    what: &'static str,
    id: &str,
    destination: String,
) -> Result<(), PublishError> {
    let id = id.to_owned();
    match publisher::publish_one(channel, msg, timeout).await {
        Ok(Confirm::Confirmed) => Ok(()),
        Ok(Confirm::Nacked) => Err(PublishError::Nacked { what, id }),
        Ok(Confirm::Returned(reason)) => Err(PublishError::Unroutable {
            what,
            id,
            reason: reason.to_string(),
            destination,
        }),
        Err(e) => match missing_exchange(&e) {
            Some(reason) => Err(PublishError::NoSuchExchange { what, id, reason }),
            None => Err(PublishError::NotConfirmed {
                what,
                id,
                source: e.into(),
            }),
        },
    }
}

/// Refuses a bulk publish into a vhost that lacks one of `exchanges`, with the broker's reason and
/// the fix. The bulk publisher re-sends whatever was not confirmed, as the order service's relay
/// must while an operator repairs the topology; a command would re-send into the missing
/// exchange until interrupted.
///
/// # Errors
/// An exchange is missing, or the broker cannot be reached.
pub(crate) async fn require_exchanges(
    pool: &broker::Pool,
    exchanges: &[&str],
) -> anyhow::Result<()> {
    let conn = pool.connection().await?;
    for exchange in exchanges {
        if let Err(e) = broker::exchange_exists(&conn, exchange).await {
            let e = anyhow::Error::new(e);
            return Err(match missing_exchange(&e) {
                Some(reason) => anyhow::anyhow!("{reason}; run `burrow topology apply`"),
                None => e.context(format!("checking the exchange '{exchange}'")),
            });
        }
    }
    Ok(())
}

/// The broker's reply when `error` is the 404 NOT_FOUND that closes a channel publishing to (or
/// passively declaring) an exchange that does not exist.
fn missing_exchange(error: &anyhow::Error) -> Option<String> {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    let lapin::ErrorKind::ProtocolError(amqp) = error.downcast_ref::<lapin::Error>()?.kind() else {
        return None;
    };
    (amqp.kind() == &AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
        .then(|| amqp.get_message().to_string())
}

/// What [`place_order`] did: whether the order was confirmed, and the first failure (of the
/// order, or of its `order.placed` event after the order was confirmed).
#[derive(Debug)]
pub struct OrderPlacement {
    /// The order's id.
    pub order_id: String,
    /// Whether the broker confirmed the order itself.
    pub order_confirmed: bool,
    /// What went wrong, if anything; nothing more was sent after it.
    pub failure: Option<PublishError>,
}

/// Publishes one order (and, when `events`, its `order.placed` event), each waiting for its
/// confirm.
///
/// # Errors
/// The order is invalid or too large ([`PublishError::Invalid`], nothing sent), or the broker
/// is unreachable.
pub async fn place_order(
    settings: &Settings,
    order: Order,
    events: bool,
) -> anyhow::Result<OrderPlacement> {
    order
        .validate()
        .map_err(|e| PublishError::Invalid(e.to_string()))?;
    let messages = order_messages(&order, events);
    messages
        .iter()
        .try_for_each(|m| check_size("order", &order.order_id, &m.body))
        .map_err(PublishError::Invalid)?;
    let conn = broker::connect(&settings.amqp, "producer").await?;
    crate::broker_version::log(settings, "producer").await;
    let channel = publisher::confirm_channel(&conn)
        .await
        .context("opening a confirm channel")?;
    let timeout = Duration::from_millis(settings.producer.confirm_timeout_ms);
    let mut placement = OrderPlacement {
        order_id: order.order_id.clone(),
        order_confirmed: false,
        failure: None,
    };
    for msg in messages {
        let what = if msg.label == LABEL_ORDER {
            "order"
        } else {
            "order.placed event"
        };
        let destination = format!("'{}' with key '{}'", msg.exchange, msg.routing_key);
        match publish_confirmed(&channel, &msg, timeout, what, &order.order_id, destination).await {
            Ok(()) if msg.label == LABEL_ORDER => placement.order_confirmed = true,
            Ok(()) => {}
            Err(e) => {
                placement.failure = Some(e);
                break;
            }
        }
    }
    crate::broker::close(&conn, "done").await;
    Ok(placement)
}

/// What a bulk publish reports while it runs; the command layer shows it as a progress bar.
/// Every method does nothing by default.
pub trait PublishProgress: Sync {
    /// The publish starts; `total` messages are planned, when known.
    fn start(&self, _total: Option<u64>) {}
    /// One more order (or event) was confirmed.
    fn confirmed(&self) {}
    /// An input line was skipped, and why (`line 3: …`).
    fn skipped(&self, _reason: &str) {}
}

/// No progress reported.
impl PublishProgress for () {}

/// Where `producer orders` takes its orders from.
#[derive(Debug, Clone)]
pub enum OrderSource {
    /// `count` generated orders, `invalid_ratio` of them invalid.
    Generate {
        /// How many.
        count: u64,
        /// Share of invalid ones.
        invalid_ratio: f64,
    },
    /// JSON lines from a file, or stdin for `-`.
    File(String),
}

/// One order to publish: a valid one, or a deliberately invalid body (`--invalid-ratio`).
enum Planned {
    Order(Order),
    Invalid { order_id: String, body: Vec<u8> },
}

/// Counts of one bulk publish of orders.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct PublishTally {
    /// Orders confirmed.
    pub confirmed: u64,
    /// Orders nacked.
    pub nacked: u64,
    /// Orders returned unroutable.
    pub returned: u64,
    /// Events confirmed.
    pub events_confirmed: u64,
    /// Events not confirmed.
    pub events_failed: u64,
    /// Input lines skipped as malformed.
    pub skipped_lines: u64,
    /// Messages re-sent after a lost connection.
    pub resent: u64,
    /// Seconds the publish took.
    pub seconds: f64,
}

impl PublishTally {
    /// Whether every order was confirmed and every input line read.
    pub fn ok(&self) -> bool {
        self.nacked == 0 && self.returned == 0 && self.skipped_lines == 0
    }
}

/// Publishes many orders through a window of pipelined confirms, telling `progress` as orders
/// are confirmed and input lines skipped, and returns the tally.
///
/// # Errors
/// The broker is unreachable or the file cannot be read.
pub async fn publish_orders(
    settings: &Settings,
    source: OrderSource,
    rate: Option<f64>,
    events: bool,
    progress: &dyn PublishProgress,
) -> anyhow::Result<PublishTally> {
    let pool = broker::pool(&settings.amqp, "producer")?;
    // Fail fast with one line when the broker or the topology is not there.
    let exchanges: &[&str] = if events {
        &[ORDERS_EXCHANGE, ACTIVITY_EXCHANGE]
    } else {
        &[ORDERS_EXCHANGE]
    };
    require_exchanges(&pool, exchanges).await?;
    let (total, planned): (
        Option<u64>,
        Box<dyn Iterator<Item = Result<Planned, String>> + Send + '_>,
    ) = match source {
        OrderSource::Generate {
            count,
            invalid_ratio,
        } => {
            let mut g = OrderGenerator::new(invalid_ratio);
            let planned = (0..count).map(move |_| {
                Ok(match g.next_order() {
                    Generated::Valid(o) => Planned::Order(o),
                    Generated::Invalid(_, v) => Planned::Invalid {
                        order_id: v["order_id"]
                            .as_str()
                            .map_or_else(|| new_id("ord"), str::to_owned),
                        body: v.to_string().into_bytes(),
                    },
                })
            });
            (Some(count), Box::new(planned))
        }
        OrderSource::File(path) => {
            let reader: Box<dyn BufRead + Send> = if path == "-" {
                Box::new(std::io::BufReader::new(std::io::stdin()))
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(&path).with_context(|| format!("opening {path}"))?,
                ))
            };
            (
                None,
                Box::new(file::read_orders(reader).map(|r| r.map(Planned::Order))),
            )
        }
    };
    progress.start(total);
    let skipped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let skipped_in = skipped.clone();
    let messages = planned.flat_map(move |item| match item {
        Ok(Planned::Order(order)) => order_messages(&order, events),
        Ok(Planned::Invalid { order_id, body }) => vec![Outgoing {
            exchange: ORDERS_EXCHANGE.into(),
            routing_key: ORDER_PLACED.into(),
            body,
            properties: properties("order", &order_id),
            label: LABEL_ORDER,
        }],
        Err(reason) => {
            skipped_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            progress.skipped(&reason);
            Vec::new()
        }
    });
    let started = Instant::now();
    let mut tally = PublishTally::default();
    // `rate` counts orders; the publisher paces messages, and an order with its `order.placed`
    // event is two of them (a deliberately invalid order, which has no event, then goes a
    // little faster).
    let message_rate = rate.map(|r| if events { 2.0 * r } else { r });
    let publisher = BulkPublisher::new(pool, settings.producer.confirm_window, message_rate)
        .confirm_timeout(Duration::from_millis(settings.producer.confirm_timeout_ms));
    let report = publisher
        .run(messages, |msg, fate| match (msg.label, fate) {
            (LABEL_ORDER, Confirm::Confirmed) => {
                tally.confirmed += 1;
                progress.confirmed();
            }
            (LABEL_ORDER, Confirm::Nacked) => tally.nacked += 1,
            (LABEL_ORDER, Confirm::Returned(_)) => tally.returned += 1,
            (_, Confirm::Confirmed) => tally.events_confirmed += 1,
            _ => tally.events_failed += 1,
        })
        .await?;
    tally.resent = report.resent + report.nack_resends;
    tally.skipped_lines = skipped.load(std::sync::atomic::Ordering::Relaxed);
    tally.seconds = started.elapsed().as_secs_f64();
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_over_16_mib_is_refused_with_its_size() {
        let mut order = crate::message::tests_support::order("ord_big");
        order.items[0].sku = "S".repeat(17 * 1024 * 1024);
        let messages = order_messages(&order, false);
        let e = check_size("order", &order.order_id, &messages[0].body).expect_err("too big");
        assert!(e.contains("ord_big") && e.contains("16 MiB"), "{e}");
        let small = crate::message::tests_support::order("ord_small");
        let body = &order_messages(&small, false)[0].body;
        assert!(check_size("order", "ord_small", body).is_ok());
    }

    #[test]
    fn items_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_item("SKU-1:2:1999").unwrap(),
            OrderItem {
                sku: "SKU-1".into(),
                quantity: 2,
                unit_price_cents: 1999
            }
        );
        assert!(parse_item("SKU-1:2")
            .unwrap_err()
            .contains("expected SKU:QUANTITY"));
        assert!(parse_item("SKU-1:x:1")
            .unwrap_err()
            .contains("quantity 'x'"));
    }

    #[test]
    fn an_order_and_its_event_share_one_w3c_traceparent() {
        let order = crate::message::tests_support::order("ord_1");
        let messages = order_messages(&order, true);
        let traces: Vec<_> = messages
            .iter()
            .map(|m| {
                crate::message::header_str(m.properties.headers().as_ref(), HEADER_TRACEPARENT)
                    .expect("traceparent")
            })
            .collect();
        assert_eq!(traces.len(), 2);
        assert_eq!(traces[0], traces[1]);
        let parts: Vec<_> = traces[0].split('-').collect();
        assert_eq!(
            (
                parts.len(),
                parts[0],
                parts[1].len(),
                parts[2].len(),
                parts[3]
            ),
            (4, "00", 32, 16, "01")
        );
    }
}
