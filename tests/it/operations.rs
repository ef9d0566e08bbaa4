//! Everyday operations on workers: scaling down (SIGTERM) hands nothing back to the broker, and a
//! worker whose forwarding channel was closed by the broker opens a new one without hot-looping.

use burrow::children::Signal;
use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::{order_body, wait_for, TestVhost};

const LONG: Duration = Duration::from_secs(120);

/// Consumers of `queue` as the queue itself reports them (a passive declare, no stats delay).
async fn consumers(t: &TestVhost, queue: &str) -> u32 {
    let conn = t.connect().await;
    let q = burrow::broker::queue_state(&conn, queue)
        .await
        .unwrap_or_else(|e| panic!("passive declare of {queue}: {e}"));
    let _ = conn.close(200, "done".into()).await;
    q.consumer_count()
}

#[tokio::test]
async fn scaling_down_ten_times_dead_letters_no_healthy_order_and_redelivers_nothing() {
    let t = TestVhost::new("scale-down")
        .await
        .with_fast_topology()
        .await;
    let orders: Vec<_> = (0..100).map(|_| order_body("SKU-1")).collect();
    let ids: HashSet<String> = orders.iter().map(|(id, _)| id.clone()).collect();
    t.publish_raw(orders).await;

    // A slow worker with a deep prefetch, stopped as soon as it holds deliveries, ten times.
    // The grace period covers handling a whole prefetch window (64 × 300 ms).
    for stop in 0..10 {
        let mut slow = t.spawn_worker(
            "fulfillment",
            &[
                "--concurrency",
                "1",
                "--prefetch",
                "64",
                "--carrier-latency-ms",
                "300",
                "--no-events",
            ],
            &[("BURROW__WORKER__GRACE_MS", "60000")],
        );
        wait_for("the slow worker to consume", LONG, || async {
            (consumers(&t, "orders.fulfillment").await == 1).then_some(())
        })
        .await;
        wait_for("the slow worker to hold deliveries", LONG, || async {
            let ready = u64::from(t.ready("orders.fulfillment").await);
            (ready + t.store_counts().0 < 100 || ready == 0).then_some(())
        })
        .await;
        slow.signal(Signal::SIGTERM);
        assert_eq!(
            slow.wait_exit(LONG).await.and_then(|s| s.code()),
            Some(0),
            "stop {stop}: the worker exits cleanly within its grace period"
        );
        assert_eq!(t.ready("orders.dead").await, 0, "after stop {stop}");
    }

    let _fast = t.spawn_worker("fulfillment", &["--no-events"], &[]);
    wait_for("all 100 orders fulfilled", LONG, || async {
        (t.store_counts().0 >= 100).then_some(())
    })
    .await;
    let (fulfilled, duplicates) = t.store_counts();
    assert_eq!(
        t.fulfilled_ids().into_iter().collect::<HashSet<_>>(),
        ids,
        "every order fulfilled"
    );
    assert_eq!(
        (fulfilled, duplicates),
        (100, 0),
        "each order fulfilled exactly once (no duplicate deliveries reached the store)"
    );
    assert_eq!(
        t.ready("orders.dead").await,
        0,
        "no healthy order dead-lettered"
    );
    // A stop never requeues: the queue redelivered nothing. The management API's message
    // stats lag; wait until they have counted all 100 acks, then read the redeliveries.
    let stats = wait_for("queue stats to count 100 acks", LONG, || async {
        let q = t.queue_info("orders.fulfillment").await;
        let stats = q.message_stats.unwrap_or_default();
        (stats["ack"].as_u64().unwrap_or(0) >= 100).then_some(stats)
    })
    .await;
    assert_eq!(
        stats["redeliver"].as_u64().unwrap_or(0),
        0,
        "no delivery count rose because of a stop: {stats}"
    );
}

/// The value of `burrow_messages_total` for `outcome` on `orders.fulfillment` (0 when absent).
fn counted(metrics: &str, outcome: &str) -> u64 {
    let series =
        format!(r#"burrow_messages_total{{queue="orders.fulfillment",outcome="{outcome}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().expect("counter value"))
}

#[tokio::test]
async fn a_closed_forwarding_channel_is_reopened_and_a_failed_forward_does_not_hot_loop() {
    use burrow::message::{header_str, HEADER_ERROR};

    let t = TestVhost::new("forward").await.with_fast_topology().await;
    let w = t.spawn_service("fulfillment", &["--no-events"], &[]).await;
    wait_for("the worker to consume", LONG, || async {
        (consumers(&t, "orders.fulfillment").await == 1).then_some(())
    })
    .await;
    // Forwarding a dead letter now fails: the broker closes the channel with 404.
    t.delete_exchange("orders.dlx").await;
    t.publish_raw(vec![("bad-1".into(), b"not json, first".to_vec())])
        .await;
    wait_for("a failed forward", LONG, || async {
        let m = w.text("/metrics").await;
        (counted(&m, "forward_failed") + counted(&m, "requeued") > 0).then_some(())
    })
    .await;
    t.apply_topology().await;
    t.publish_raw(vec![("bad-2".into(), b"not json, second".to_vec())])
        .await;
    wait_for("both malformed orders in orders.dead", LONG, || async {
        (t.ready("orders.dead").await >= 2).then_some(())
    })
    .await;
    let dead = t.drain("orders.dead").await;
    let mut reasons: Vec<(String, Option<String>)> = dead
        .iter()
        .map(|m| {
            let p = &m.delivery.properties;
            (
                p.message_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                header_str(p.headers().as_ref(), HEADER_ERROR),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    for ((id, reason), expected) in reasons.iter().zip(["bad-1", "bad-2"]) {
        assert_eq!(id, expected);
        assert!(
            reason
                .as_deref()
                .is_some_and(|r| r.contains("malformed JSON")),
            "{id} was dead-lettered by the worker with its reason, not by the broker: {reason:?}"
        );
    }
    // No hot loop: the held message was forwarded again at the pace of the back-off (100 ms
    // doubling), not re-handled and requeued as fast as the broker redelivers it.
    let m = w.text("/metrics").await;
    let (failed, requeued) = (counted(&m, "forward_failed"), counted(&m, "requeued"));
    assert!(
        failed + requeued <= 20,
        "failed forwards {failed}, requeued {requeued}"
    );
    assert_eq!(counted(&m, "dead_lettered"), 2);
    w.stop().await;
}
