//! The order service and the other publishers: one order (`producer order`), many generated or
//! read from a file (`producer orders`), each with its `order.placed` event; activity events and
//! inventory changes ([`activity`]); all confirmed and mandatory.

pub mod activity;
mod generate;

use std::io::BufRead;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::types::FieldTable;

pub use generate::{Generated, OrderGenerator, CATALOGUE};

use crate::broker;
use crate::message::{
    new_id, properties, string_value, ActivityEvent, Order, OrderItem, HEADER_TRACEPARENT,
    ORDER_PLACED,
};
use crate::publisher::{self, BulkPublisher, Fate, Outgoing};
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

/// A fresh W3C `traceparent` (version 00, sampled).
pub fn new_traceparent() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    format!(
        "00-{:032x}-{:016x}-01",
        rng.random::<u128>(),
        rng.random::<u64>()
    )
}

fn headers_with_trace(traceparent: &str) -> FieldTable {
    let mut h = FieldTable::default();
    h.insert(HEADER_TRACEPARENT.into(), string_value(traceparent));
    h
}

/// The messages that place `order`: the order itself and, when `events`, its `order.placed`.
pub fn order_messages(order: &Order, events: bool) -> Vec<Outgoing> {
    let trace = new_traceparent();
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

/// Publishes one order, waits for its confirm and prints its id.
///
/// # Errors
/// The broker is unreachable (one clear line).
pub async fn place_order(
    settings: &Settings,
    order: Order,
    events: bool,
) -> anyhow::Result<ExitCode> {
    if let Err(e) = order.validate() {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(2));
    }
    let messages = order_messages(&order, events);
    if let Err(e) = messages
        .iter()
        .try_for_each(|m| check_size("order", &order.order_id, &m.body))
    {
        eprintln!("error: {e}");
        return Ok(ExitCode::from(2));
    }
    crate::broker_version::log(settings, "producer").await;
    let conn = broker::connect(&settings.amqp, "producer").await?;
    let channel = publisher::confirm_channel(&conn)
        .await
        .context("opening a confirm channel")?;
    let timeout = Duration::from_millis(settings.producer.confirm_timeout_ms);
    let mut code = ExitCode::SUCCESS;
    for msg in messages {
        let what = if msg.label == LABEL_ORDER {
            "order"
        } else {
            "order.placed event"
        };
        match publisher::publish_one(&channel, &msg, timeout).await {
            Ok(Fate::Confirmed) if msg.label == LABEL_ORDER => println!("{}", order.order_id),
            Ok(Fate::Confirmed) => {}
            Ok(Fate::Nacked) => {
                eprintln!(
                    "error: the broker refused the {what} {} (nack)",
                    order.order_id
                );
                code = ExitCode::FAILURE;
            }
            Ok(Fate::Returned(reason)) => {
                eprintln!(
                    "error: the {what} {} was unroutable ({reason}): no queue is bound to '{}' with key '{}'; run `burrow topology apply`",
                    order.order_id, msg.exchange, msg.routing_key
                );
                code = ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!(
                    "error: the {what} {} was not confirmed: {e:#}",
                    order.order_id
                );
                code = ExitCode::FAILURE;
            }
        }
        if code != ExitCode::SUCCESS {
            break;
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(code)
}

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

/// Counts of one bulk publish.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Tally {
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
}

/// Publishes many orders through a window of pipelined confirms with a progress bar, and prints
/// the tally. Exit code 1 if any order was not confirmed or any input line was skipped.
///
/// # Errors
/// The broker is unreachable or the file cannot be read.
pub async fn publish_orders(
    settings: &Settings,
    source: OrderSource,
    rate: Option<f64>,
    events: bool,
) -> anyhow::Result<ExitCode> {
    let pool = broker::pool(&settings.amqp, "producer")?;
    // Fail fast with one line when the broker is not there at all.
    drop(pool.connection().await?);
    let (total, planned): (
        Option<u64>,
        Box<dyn Iterator<Item = Result<Planned, String>> + Send>,
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
                Box::new(read_orders(reader).map(|r| r.map(Planned::Order))),
            )
        }
    };
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} orders confirmed ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let skipped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (skipped_in, bar_in) = (skipped.clone(), bar.clone());
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
            bar_in.suspend(|| eprintln!("skipped {reason}"));
            Vec::new()
        }
    });
    let started = Instant::now();
    let mut tally = Tally::default();
    let publisher = BulkPublisher::new(pool, settings.producer.confirm_window, rate)
        .confirm_timeout(Duration::from_millis(settings.producer.confirm_timeout_ms));
    let report = publisher
        .run(messages, |msg, fate| match (msg.label, fate) {
            (LABEL_ORDER, Fate::Confirmed) => {
                tally.confirmed += 1;
                bar.inc(1);
            }
            (LABEL_ORDER, Fate::Nacked) => tally.nacked += 1,
            (LABEL_ORDER, Fate::Returned(_)) => tally.returned += 1,
            (_, Fate::Confirmed) => tally.events_confirmed += 1,
            _ => tally.events_failed += 1,
        })
        .await?;
    bar.finish_and_clear();
    tally.resent = report.resent + report.nack_resends;
    tally.skipped_lines = skipped.load(std::sync::atomic::Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "orders: {} confirmed, {} nacked, {} returned; events: {} confirmed, {} failed; {} lines skipped; {} re-sent; {:.0} orders/s over {:.1}s",
        tally.confirmed,
        tally.nacked,
        tally.returned,
        tally.events_confirmed,
        tally.events_failed,
        tally.skipped_lines,
        tally.resent,
        tally.confirmed as f64 / secs.max(1e-9),
        secs
    );
    if tally.returned > 0 {
        eprintln!(
            "error: {} orders were unroutable: run `burrow topology apply`",
            tally.returned
        );
    }
    let ok = tally.nacked == 0 && tally.returned == 0 && tally.skipped_lines == 0;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Reads JSON-lines orders; a line that is not a valid order becomes an error naming its number.
fn read_orders(reader: impl BufRead + Send) -> impl Iterator<Item = Result<Order, String>> + Send {
    reader.lines().enumerate().filter_map(|(i, line)| {
        let n = i + 1;
        match line {
            Err(e) => Some(Err(format!("line {n}: unreadable: {e}"))),
            Ok(l) if l.trim().is_empty() => None,
            Ok(l) => Some(Order::decode(l.as_bytes()).map_err(|e| format!("line {n}: {e}"))),
        }
    })
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
    fn file_lines_are_numbered_and_blank_lines_skipped() {
        let good = serde_json::to_string(&crate::message::tests_support::order("ord_a")).unwrap();
        let input = format!("{good}\n\nnot json\n{good}\n");
        let results: Vec<_> = read_orders(std::io::Cursor::new(input)).collect();
        assert_eq!(results.len(), 3);
        assert!(results[1].as_ref().unwrap_err().starts_with("line 3:"));
    }

    #[test]
    fn traceparent_has_the_w3c_shape() {
        let tp = new_traceparent();
        let parts: Vec<_> = tp.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
    }
}
