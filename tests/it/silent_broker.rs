//! A broker that stops answering (a node going away, a network that drops packets without
//! resetting) never hangs a program whose work is done: closing a channel or a connection waits
//! for the broker's `close-ok` for `broker::CLOSE_TIMEOUT` at most. The test goes through a TCP
//! link to the broker (the demo's `BrokerLink`) that it freezes: the sockets stay open and
//! nothing passes.

use std::time::{Duration, Instant};

use burrow::demo::link::BrokerLink;

use crate::helpers::TestVhost;

#[tokio::test]
async fn closing_on_a_broker_that_stopped_answering_gives_up_after_the_close_timeout() {
    let t = TestVhost::new("silent-broker").await;
    let link = BrokerLink::to(t.amqp_url())
        .await
        .expect("a link to the broker");
    let mut amqp = t.settings.amqp.clone();
    amqp.url = link
        .url_for(t.amqp_url())
        .expect("the URL through the link");
    // No heartbeats: only the close timeout can end the wait.
    amqp.heartbeat_secs = 0;

    let conn = burrow::broker::connect(&amqp, "silent broker test")
        .await
        .expect("connect through the link");
    let channel = conn.create_channel().await.expect("a channel");
    link.freeze();

    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(60), async {
        burrow::broker::close_channel(&channel, "done").await;
        burrow::broker::close(&conn, "done").await;
    })
    .await;
    assert!(
        closed.is_ok(),
        "closing waited a minute for a broker that never answers"
    );
    assert!(
        started.elapsed() >= burrow::broker::CLOSE_TIMEOUT,
        "the close gave the broker its time to answer: {:?}",
        started.elapsed()
    );
}
