//! A broker that stops answering (a node going away, a network that drops packets without
//! resetting) never hangs a program whose work is done: closing a channel or a connection waits
//! for the broker's `close-ok` for `broker::CLOSE_TIMEOUT` at most. The test goes through a TCP
//! relay of its own that it freezes: the sockets stay open and nothing passes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::helpers::TestVhost;

/// Relays connections to `broker` until `frozen` turns true, then holds them open silently.
async fn freezable_relay(broker: SocketAddr, frozen: watch::Receiver<bool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let local = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mut frozen = frozen.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(broker).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    () = async { let _ = frozen.wait_for(|f| *f).await; } => {
                        // Keep both sockets open and read nothing: the peer waits forever.
                        std::future::pending::<()>().await;
                    }
                }
            });
        }
    });
    local
}

#[tokio::test]
async fn closing_on_a_broker_that_stopped_answering_gives_up_after_the_close_timeout() {
    let t = TestVhost::new("silent-broker").await;
    let url = url::Url::parse(t.amqp_url().expose()).expect("url");
    let broker: SocketAddr = format!(
        "{}:{}",
        url.host_str().expect("host"),
        url.port().unwrap_or(5672)
    )
    .parse()
    .expect("broker address");
    let (freeze, frozen) = watch::channel(false);
    let relay = freezable_relay(broker, frozen).await;
    let mut via_relay = url.clone();
    via_relay.set_port(Some(relay.port())).expect("port");
    let mut amqp = t.settings.amqp.clone();
    amqp.url = burrow::settings::SecretUrl::new(via_relay.to_string());
    // No heartbeats: only the close timeout can end the wait.
    amqp.heartbeat_secs = 0;

    let conn = burrow::broker::connect(&amqp, "silent broker test")
        .await
        .expect("connect through the relay");
    let channel = conn.create_channel().await.expect("a channel");
    freeze.send_replace(true);

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
