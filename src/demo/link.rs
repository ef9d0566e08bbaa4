//! The demo's broker outage: the order service reaches RabbitMQ through a TCP link of the
//! demo's own, which the demo cuts for a few seconds. While it is cut every connection through
//! it is dropped and new ones are closed at once, as a broker that went away looks to a client
//! (the broker itself, which other work may share, is never touched). A link can also freeze:
//! its connections stay open and nothing passes, as a network that drops packets looks (the
//! tests use that).

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::settings::SecretUrl;

/// What a link does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Forwards both ways.
    Up,
    /// Drops every connection and closes new ones at once.
    Cut,
    /// Holds every connection open and passes nothing.
    Frozen,
}

/// A cuttable TCP link from a local port to the broker.
#[derive(Debug)]
pub struct BrokerLink {
    /// Where clients connect instead of the broker.
    pub local: SocketAddr,
    state: watch::Sender<State>,
    stop: CancellationToken,
}

impl BrokerLink {
    /// Listens on a free loopback port and forwards every connection to `broker`.
    ///
    /// # Errors
    /// No local port could be bound.
    pub async fn start(broker: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the demo's broker link")?;
        let local = listener.local_addr()?;
        let (state, _) = watch::channel(State::Up);
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, broker, state.clone(), stop.clone()));
        Ok(Self { local, state, stop })
    }

    /// A link to the broker that `url` names (port 5672 unless it says another).
    ///
    /// # Errors
    /// The URL is malformed, its host does not resolve, or no local port could be bound.
    pub async fn to(url: &SecretUrl) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url.expose())
            .map_err(|e| anyhow::anyhow!("the AMQP URL {} is malformed: {e}", url.redacted()))?;
        let host = parsed
            .host_str()
            .with_context(|| format!("the AMQP URL {} has no host", url.redacted()))?;
        let port = parsed.port().unwrap_or(5672);
        let broker = tokio::net::lookup_host((host, port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .with_context(|| format!("resolving the broker's host {host}"))?;
        Self::start(broker).await
    }

    /// Drops every connection through the link and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.state.send_replace(State::Cut);
    }

    /// Silences every connection through the link, open or new: they stay open and nothing
    /// passes, until the link is dropped.
    pub fn freeze(&self) {
        self.state.send_replace(State::Frozen);
    }

    /// Lets new connections through again (after [`Self::cut`]).
    pub fn restore(&self) {
        self.state.send_replace(State::Up);
    }

    /// `url` with its host and port replaced by the link's.
    ///
    /// # Errors
    /// `url` is not a URL with a host.
    pub fn url_for(&self, url: &SecretUrl) -> anyhow::Result<SecretUrl> {
        let mut u = url::Url::parse(url.expose())
            .map_err(|e| anyhow::anyhow!("the AMQP URL {} is malformed: {e}", url.redacted()))?;
        u.set_host(Some(&self.local.ip().to_string()))
            .map_err(|e| anyhow::anyhow!("the AMQP URL {} has no host: {e}", url.redacted()))?;
        u.set_port(Some(self.local.port()))
            .map_err(|()| anyhow::anyhow!("the AMQP URL {} takes no port", url.redacted()))?;
        Ok(SecretUrl::new(u.to_string()))
    }
}

impl Drop for BrokerLink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept(
    listener: TcpListener,
    broker: SocketAddr,
    state: watch::Sender<State>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(e) => {
                    tracing::warn!(error = %e, "the demo's broker link could not accept");
                    continue;
                }
            },
        };
        let now = *state.borrow();
        match now {
            // The client sees its connection closed during the handshake.
            State::Cut => drop(client),
            State::Frozen => {
                let stop = stop.clone();
                tokio::spawn(async move {
                    stop.cancelled().await;
                    drop(client);
                });
            }
            State::Up => {
                tokio::spawn(forward(client, broker, state.subscribe(), stop.clone()));
            }
        }
    }
}

/// Copies both ways until either side closes, the link is cut or frozen, or the link ends.
async fn forward(
    mut client: TcpStream,
    broker: SocketAddr,
    mut state: watch::Receiver<State>,
    stop: CancellationToken,
) {
    let Ok(mut server) = TcpStream::connect(broker).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let next = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
        changed = state.wait_for(|s| *s != State::Up) => changed.map_or(State::Cut, |s| *s),
        () = stop.cancelled() => return,
    };
    if next == State::Frozen {
        // Both sockets stay open and nothing is read: each peer waits for the other.
        stop.cancelled().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn echoes(stream: &mut TcpStream) -> bool {
        if stream.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf)).await,
            Ok(Ok(_)) if &buf == b"ping"
        )
    }

    #[tokio::test]
    async fn a_cut_drops_open_connections_and_refuses_new_ones_until_restored() {
        let link = BrokerLink::start(echo_server().await).await.expect("link");
        let mut open = TcpStream::connect(link.local).await.expect("connect");
        assert!(echoes(&mut open).await, "the link forwards");

        link.cut();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "an open connection is closed by the cut: {read:?}"
        );
        let mut during = TcpStream::connect(link.local).await.expect("accepted");
        assert!(!echoes(&mut during).await, "nothing passes while cut");

        link.restore();
        let mut after = TcpStream::connect(link.local).await.expect("connect");
        assert!(echoes(&mut after).await, "the link forwards again");
    }

    #[test]
    fn the_url_keeps_user_and_vhost_and_points_at_the_link() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let link = BrokerLink::start("127.0.0.1:1".parse().expect("addr"))
                .await
                .expect("link");
            let url = link
                .url_for(&SecretUrl::new("amqp://shop:pw@rabbit.example:5672/shop"))
                .expect("url");
            assert_eq!(
                url.expose(),
                format!("amqp://shop:pw@127.0.0.1:{}/shop", link.local.port())
            );
            let bad = link
                .url_for(&SecretUrl::new("amqp://shop:s3cret@host:56x72/"))
                .expect_err("malformed");
            assert!(!format!("{bad:#}").contains("s3cret"), "{bad:#}");
        });
    }
}
