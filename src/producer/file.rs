//! The input of `producer orders --file`: one order per line as JSON, in which `order_id` and
//! `placed_at` may be left out (the producer then assigns them, as `producer order` does).

use std::io::BufRead;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::message::{new_id, Order, OrderItem};

/// One line of the file: an [`Order`] whose `order_id` and `placed_at` are optional. Unknown
/// fields are ignored, as in every message.
#[derive(Debug, Deserialize)]
struct OrderLine {
    order_id: Option<String>,
    customer_id: String,
    email: String,
    items: Vec<OrderItem>,
    currency: String,
    placed_at: Option<DateTime<Utc>>,
}

impl OrderLine {
    /// The order, with a fresh `ord_<ULID>` and the current time where they were left out.
    fn complete(self) -> Order {
        Order {
            order_id: self.order_id.unwrap_or_else(|| new_id("ord")),
            customer_id: self.customer_id,
            email: self.email,
            items: self.items,
            currency: self.currency,
            placed_at: self.placed_at.unwrap_or_else(Utc::now),
        }
    }
}

/// The valid orders of `reader`, one per non-blank line; a line that is not an order or breaks
/// a rule is an `Err` naming its line number and what is wrong.
pub(super) fn read_orders(
    reader: impl BufRead + Send,
) -> impl Iterator<Item = Result<Order, String>> + Send {
    reader.lines().enumerate().filter_map(|(i, line)| {
        let n = i + 1;
        let line = match line {
            Err(e) => return Some(Err(format!("line {n}: unreadable: {e}"))),
            Ok(l) if l.trim().is_empty() => return None,
            Ok(l) => l,
        };
        Some(
            serde_json::from_str::<OrderLine>(&line)
                .map_err(|e| format!("line {n}: malformed: {e}"))
                .map(OrderLine::complete)
                .and_then(|order| {
                    order.validate().map_err(|e| format!("line {n}: {e}"))?;
                    Ok(order)
                }),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_may_leave_out_the_id_and_the_time_and_gets_fresh_ones() {
        let input = r#"{"customer_id":"cus_1","email":"a@example.com","items":[{"sku":"SKU-1","quantity":2,"unit_price_cents":1999}],"currency":"EUR"}
{"order_id":"ord_given","customer_id":"cus_2","email":"b@example.com","items":[{"sku":"SKU-2","quantity":1,"unit_price_cents":500}],"currency":"EUR","placed_at":"2026-11-28T05:00:00Z","coupon":"ignored"}

{"customer_id":"cus_3","email":"no-at-sign","items":[{"sku":"SKU-1","quantity":1,"unit_price_cents":1}],"currency":"EUR"}
{not json
"#;
        let before = Utc::now();
        let orders: Vec<_> = read_orders(input.as_bytes()).collect();
        assert_eq!(
            orders.len(),
            4,
            "the blank line is not an order: {orders:?}"
        );
        let first = orders[0].as_ref().expect("valid");
        assert!(first.order_id.starts_with("ord_") && first.order_id.len() > 20);
        assert!(first.placed_at >= before && first.placed_at <= Utc::now());
        let second = orders[1].as_ref().expect("valid");
        assert_eq!(second.order_id, "ord_given");
        assert_eq!(second.placed_at.to_rfc3339(), "2026-11-28T05:00:00+00:00");
        let invalid = orders[2].as_ref().expect_err("no @");
        assert!(
            invalid.starts_with("line 4:") && invalid.contains("email"),
            "{invalid}"
        );
        let malformed = orders[3].as_ref().expect_err("not JSON");
        assert!(malformed.starts_with("line 5: malformed"), "{malformed}");
    }

    #[test]
    fn generated_ids_differ_line_by_line() {
        let line = r#"{"customer_id":"cus_1","email":"a@example.com","items":[{"sku":"SKU-1","quantity":1,"unit_price_cents":1}],"currency":"EUR"}"#;
        let input = format!("{line}\n{line}\n");
        let ids: Vec<String> = read_orders(input.as_bytes())
            .map(|o| o.expect("valid").order_id)
            .collect();
        assert_ne!(ids[0], ids[1]);
    }
}
