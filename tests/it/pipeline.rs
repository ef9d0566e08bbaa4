//! The order pipeline end to end: producer, competing fulfillment workers, retries, dead letters.

use burrow::children::Signal;
use std::collections::HashSet;
use std::time::Duration;

use burrow::message::{header_str, header_u32, HEADER_ATTEMPTS, HEADER_ERROR, HEADER_SOURCE_QUEUE};

use crate::helpers::{order_body, wait_for, TestVhost, ONE_ORDER};

const LONG: Duration = Duration::from_secs(120);

#[tokio::test]
async fn two_workers_share_1000_orders_and_fulfil_each_once() {
    let t = TestVhost::new("share").await.with_fast_topology().await;
    let _a = t.spawn_worker("fulfillment", &[], &[]);
    let _b = t.spawn_worker("fulfillment", &[], &[]);
    let orders: Vec<_> = (0..1000).map(|_| order_body("SKU-1")).collect();
    let ids: HashSet<String> = orders.iter().map(|(id, _)| id.clone()).collect();
    t.publish_raw(orders).await;
    wait_for("1000 fulfilments", LONG, || async {
        (t.store_counts().0 >= 1000).then_some(())
    })
    .await;
    let fulfilled: HashSet<String> = t.fulfilled_ids().into_iter().collect();
    assert_eq!(fulfilled, ids);
    assert_eq!(t.ready("orders.dead").await, 0);
    // Every fulfilment announced order.fulfilled once per order.
    wait_for("1000 order.fulfilled events", LONG, || async {
        (t.ready("activity.analytics").await >= 1000).then_some(())
    })
    .await;
}

#[tokio::test]
async fn invalid_order_is_dead_lettered_with_its_reason_and_the_worker_keeps_going() {
    let t = TestVhost::new("invalid").await.with_fast_topology().await;
    let _w = t.spawn_worker("fulfillment", &[], &[]);
    let mut bad = serde_json::from_slice::<serde_json::Value>(&order_body("SKU-1").1).unwrap();
    bad["items"][0]["quantity"] = 0.into();
    let good = order_body("SKU-2");
    t.publish_raw(vec![
        ("bad-1".into(), bad.to_string().into_bytes()),
        ("bad-2".into(), b"this is not json".to_vec()),
        good.clone(),
    ])
    .await;
    wait_for("good order fulfilled", LONG, || async {
        t.fulfilled_ids().contains(&good.0).then_some(())
    })
    .await;
    wait_for("two dead letters", LONG, || async {
        (t.ready("orders.dead").await >= 2).then_some(())
    })
    .await;
    let dead = t.drain("orders.dead").await;
    let reasons: Vec<String> = dead
        .iter()
        .map(|m| header_str(m.delivery.properties.headers().as_ref(), HEADER_ERROR).unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("items[0].quantity")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("malformed JSON")),
        "{reasons:?}"
    );
    for m in &dead {
        let h = m.delivery.properties.headers().as_ref();
        assert_eq!(
            header_str(h, HEADER_SOURCE_QUEUE).as_deref(),
            Some("orders.fulfillment")
        );
        assert_eq!(header_u32(h, HEADER_ATTEMPTS), Some(1));
    }
}

#[tokio::test]
async fn transient_carrier_failures_are_retried_and_then_succeed() {
    let t = TestVhost::new("transient").await.with_fast_topology().await;
    let mut w = t.spawn_worker(
        "fulfillment",
        &["--carrier-failure-rate", "0.4", "--http", "127.0.0.1:0"],
        &[],
    );
    let orders: Vec<_> = (0..40).map(|_| order_body("SKU-3")).collect();
    t.publish_raw(orders).await;
    // With 0.4 failures and 4 tries, a few may run out of retries: every order ends fulfilled or
    // dead-lettered with the carrier's reason, and most are retried at least once.
    wait_for("40 orders settled", LONG, || async {
        let done = t.store_counts().0 + u64::from(t.ready("orders.dead").await);
        (done >= 40).then_some(())
    })
    .await;
    assert!(
        t.store_counts().0 >= 30,
        "most orders fulfilled: {:?}",
        t.store_counts()
    );
    for m in t.drain("orders.dead").await {
        let h = m.delivery.properties.headers().as_ref();
        assert!(header_str(h, HEADER_ERROR)
            .unwrap()
            .contains("simulated timeout"));
        assert_eq!(header_u32(h, HEADER_ATTEMPTS), Some(4));
    }
    w.signal(Signal::SIGTERM);
    assert_eq!(w.wait_exit(LONG).await.and_then(|s| s.code()), Some(0));
}

#[tokio::test]
async fn permanently_failing_carrier_dead_letters_after_the_last_retry_step() {
    let t = TestVhost::new("permanent").await.with_fast_topology().await;
    let _w = t.spawn_worker(
        "fulfillment",
        &[],
        &[("BURROW__CARRIER__ALWAYS_FAIL_SKUS", "SKU-DOOM")],
    );
    let doomed = order_body("SKU-DOOM");
    t.publish_raw(vec![doomed.clone(), order_body("SKU-1")])
        .await;
    wait_for("dead letter", LONG, || async {
        (t.ready("orders.dead").await >= 1).then_some(())
    })
    .await;
    let dead = t.drain("orders.dead").await;
    assert_eq!(dead.len(), 1);
    let props = &dead[0].delivery.properties;
    assert_eq!(
        props.message_id().as_ref().map(|s| s.as_str()),
        Some(doomed.0.as_str())
    );
    let h = props.headers().as_ref();
    assert_eq!(
        header_u32(h, HEADER_ATTEMPTS),
        Some(4),
        "1 try + 3 retry steps"
    );
    let reason = header_str(h, HEADER_ERROR).unwrap();
    assert!(
        reason.contains("still failing after 4 attempts") && reason.contains("SKU-DOOM"),
        "{reason}"
    );
    assert!(!t.fulfilled_ids().contains(&doomed.0));
}

#[tokio::test]
async fn sigterm_mid_batch_exits_cleanly_and_loses_nothing() {
    let t = TestVhost::new("sigterm").await.with_fast_topology().await;
    let mut w = t.spawn_worker(
        "fulfillment",
        &["--carrier-latency-ms", "20", "--concurrency", "4"],
        &[],
    );
    let orders: Vec<_> = (0..300).map(|_| order_body("SKU-1")).collect();
    let ids: HashSet<String> = orders.iter().map(|(id, _)| id.clone()).collect();
    t.publish_raw(orders).await;
    wait_for("some progress", LONG, || async {
        (t.store_counts().0 >= 20).then_some(())
    })
    .await;
    w.signal(Signal::SIGTERM);
    assert_eq!(
        w.wait_exit(LONG).await.and_then(|s| s.code()),
        Some(0),
        "graceful exit code"
    );
    let after_stop = t.store_counts().0;
    assert!(after_stop < 300, "stopped mid-batch ({after_stop} done)");
    let _w2 = t.spawn_worker("fulfillment", &[], &[]);
    wait_for("all 300 fulfilled", LONG, || async {
        (t.store_counts().0 >= 300).then_some(())
    })
    .await;
    assert_eq!(t.fulfilled_ids().into_iter().collect::<HashSet<_>>(), ids);
    assert_eq!(t.ready("orders.dead").await, 0);
}

#[tokio::test]
async fn sigkill_mid_batch_loses_nothing_because_the_other_worker_takes_over() {
    let t = TestVhost::new("sigkill").await.with_fast_topology().await;
    let a = t.spawn_worker("fulfillment", &["--carrier-latency-ms", "10"], &[]);
    let _b = t.spawn_worker("fulfillment", &["--carrier-latency-ms", "10"], &[]);
    let orders: Vec<_> = (0..600).map(|_| order_body("SKU-1")).collect();
    let ids: HashSet<String> = orders.iter().map(|(id, _)| id.clone()).collect();
    t.publish_raw(orders).await;
    wait_for("some progress", LONG, || async {
        (t.store_counts().0 >= 50).then_some(())
    })
    .await;
    a.signal(Signal::SIGKILL);
    wait_for("all 600 fulfilled", LONG, || async {
        (t.store_counts().0 >= 600).then_some(())
    })
    .await;
    assert_eq!(t.fulfilled_ids().into_iter().collect::<HashSet<_>>(), ids);
    assert_eq!(t.ready("orders.dead").await, 0);
}

#[tokio::test]
async fn unroutable_order_is_reported_with_a_non_zero_exit() {
    // No topology in this vhost: nothing is bound to `orders`, and the exchange does not exist.
    let t = TestVhost::new("unroutable").await;
    {
        let conn = t.connect().await;
        let ch = conn.create_channel().await.unwrap();
        ch.exchange_declare(
            "orders".into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    }
    let (code, stdout, stderr) = t.producer(
        &[
            "order",
            "--customer",
            "cus_1",
            "--email",
            "a@example.com",
            "--item",
            "SKU-1:1:100",
        ],
        None,
    );
    assert_ne!(code, 0);
    assert!(stdout.trim().is_empty(), "no order id printed: {stdout}");
    assert!(stderr.contains("unroutable"), "{stderr}");
}

#[tokio::test]
async fn producer_order_prints_the_id_of_a_confirmed_order() {
    let t = TestVhost::new("one-order").await.with_fast_topology().await;
    let args = [&ONE_ORDER[..], &["--item", "SKU-2:1:500"]].concat();
    let (code, stdout, stderr) = t.producer(&args, None);
    assert_eq!(code, 0, "{stderr}");
    let id = stdout.trim();
    assert!(id.starts_with("ord_"), "{stdout}");
    assert_eq!(t.ready("orders.fulfillment").await, 1);
    // And its order.placed event went to every activity queue.
    assert_eq!(t.ready("activity.notifications").await, 1);
}

#[tokio::test]
async fn file_with_a_bad_line_still_publishes_the_rest() {
    let t = TestVhost::new("file").await.with_fast_topology().await;
    let good = |i: usize| {
        serde_json::json!({"order_id": format!("ord_file_{i}"), "customer_id": "cus_1", "email": "a@example.com",
            "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 100}], "currency": "EUR",
            "placed_at": "2026-11-28T05:00:00Z"})
        .to_string()
    };
    // What the service can generate (order_id, placed_at) may be left out.
    let minimal = r#"{"customer_id":"cus_1","email":"a@example.com","items":[{"sku":"SKU-1","quantity":1,"unit_price_cents":100}],"currency":"EUR"}"#;
    let input = format!("{}\n{}\n{{not json\n{minimal}\n", good(1), good(2));
    let (code, stdout, stderr) =
        t.producer(&["orders", "--file", "-", "--no-events"], Some(&input));
    assert_eq!(code, 65, "a skipped line is bad data: exit 65");
    assert!(stderr.contains("line 3"), "the bad line is named: {stderr}");
    assert!(stdout.contains("3 confirmed"), "{stdout}");
    assert_eq!(t.ready("orders.fulfillment").await, 3);
}

#[tokio::test]
async fn generated_orders_with_invalid_ones_all_settle() {
    let t = TestVhost::new("generated").await.with_fast_topology().await;
    let _w = t.spawn_worker("fulfillment", &[], &[]);
    let (code, stdout, stderr) = t.producer(
        &["orders", "--count", "200", "--invalid-ratio", "0.1"],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("200 confirmed"), "{stdout}");
    wait_for("200 settled", LONG, || async {
        let done = t.store_counts().0 + u64::from(t.ready("orders.dead").await);
        (done >= 200).then_some(())
    })
    .await;
    let dead = t.ready("orders.dead").await;
    assert!(dead > 0 && dead < 60, "about 10% dead-lettered, got {dead}");
}
