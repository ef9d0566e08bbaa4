//! Helpers shared by the test binaries (`tests/it`, `tests/faults`): waiting on a condition,
//! the shop topology with a fast retry ladder, a valid order body, and emptying a queue.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A shop topology with the same names but a fast retry ladder (100/200/300 ms), for tests.
pub fn fast_topology_text() -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/topology/shop.toml"))
        .expect("reading topology/shop.toml");
    text.replace("x-message-ttl = 60000", "x-message-ttl = 300")
        .replace("x-message-ttl = 10000", "x-message-ttl = 200")
        .replace("x-message-ttl = 1000", "x-message-ttl = 100")
        .replace("delay = \"60s\"", "delay = \"300ms\"")
        .replace("delay = \"10s\"", "delay = \"200ms\"")
        .replace("delay = \"1s\"", "delay = \"100ms\"")
}

/// A valid order body with a fresh id.
pub fn order_body(sku: &str) -> (String, Vec<u8>) {
    let id = burrow::message::new_id("ord");
    let order = serde_json::json!({
        "order_id": id, "customer_id": "cus_42", "email": "ann@example.com",
        "items": [{"sku": sku, "quantity": 2, "unit_price_cents": 1999}],
        "currency": "EUR", "placed_at": "2026-11-28T05:00:00Z"
    });
    (id, order.to_string().into_bytes())
}

/// Takes every message out of `queue` on a channel of `conn` (no-ack) and returns them.
pub async fn drain_queue(
    conn: &lapin::Connection,
    queue: &str,
) -> Vec<lapin::message::BasicGetMessage> {
    let ch = conn.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
    {
        out.push(m);
    }
    out
}
