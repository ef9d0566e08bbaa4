//! The bulk publisher's kept channel (the outbox relay runs it once per burst of orders): later
//! runs open no channel of their own, and one the broker closed is replaced without losing a
//! message.

use burrow::publisher::{BulkPublisher, BulkReport, Confirm, Outgoing};

use std::time::Duration;

use crate::helpers::{order_body, wait_for, TestVhost};

const LONG: Duration = Duration::from_secs(60);

fn orders(n: usize) -> Vec<Outgoing> {
    (0..n)
        .map(|_| {
            let (id, body) = order_body("SKU-KEEP");
            Outgoing {
                exchange: "orders".into(),
                routing_key: "order.placed".into(),
                body,
                properties: burrow::message::properties("order", &id),
                label: 0,
            }
        })
        .collect()
}

/// Publishes `n` orders through `publisher`; every one must be confirmed.
async fn run(publisher: &BulkPublisher, n: usize) -> BulkReport {
    let mut confirmed = 0;
    let report = publisher
        .run(orders(n), |_, fate| {
            assert_eq!(*fate, Confirm::Confirmed);
            confirmed += 1;
        })
        .await
        .expect("publish");
    assert_eq!(confirmed, n, "every order confirmed");
    report
}

#[tokio::test]
async fn a_kept_channel_serves_every_run_and_one_the_broker_closed_is_replaced() {
    let t = TestVhost::new("keep-channel")
        .await
        .with_fast_topology()
        .await;
    let pool = burrow::broker::pool(&t.settings.amqp, "test publisher").expect("pool");
    let publisher = BulkPublisher::new(pool, 64, None).keep_channel();

    assert_eq!(
        run(&publisher, 10).await.connections,
        1,
        "the first run opens it"
    );
    for _ in 0..5 {
        assert_eq!(
            run(&publisher, 10).await.connections,
            0,
            "later runs use the kept channel"
        );
    }

    // The management API lists a new connection after its next stats emission.
    wait_for(
        "the broker to list and close the publisher's connection",
        LONG,
        || async { (t.close_connections().await >= 1).then_some(()) },
    )
    .await;
    let report = run(&publisher, 10).await;
    assert_eq!(
        report.connections, 1,
        "a new channel after the close: {report:?}"
    );
    assert_eq!(run(&publisher, 10).await.connections, 0, "and it is kept");
    publisher.close().await;

    // Each order once at least (one sent on the closed channel may have been sent again).
    assert!(t.ready("orders.fulfillment").await >= 80);
}
