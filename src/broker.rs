//! The broker connection: a deadpool-lapin pool with heartbeats, a connection name that shows in
//! the management UI, failover to the other nodes of a cluster, and errors that say in one line
//! what is wrong without leaking the password.
//!
//! Failover: `AmqpSettings::failover_urls` (`AMQP_FAILOVER_URLS`) names other nodes. Every
//! connection attempt tries `url` first, then each failover URL in order, so a client moves to a
//! surviving node when its node dies and back to the primary once that is up again. A
//! [`Pool`] keeps a deadpool pool per node, whose connections [`connect`] makes too.
//!
//! TLS: an `amqps://` URL verifies the broker's certificate against the system's CAs and, with
//! `amqp.tls_ca_file`, the CAs of that PEM file; a certificate neither trusts is
//! [`BrokerError::Untrusted`], never retried.

use std::path::{Path, PathBuf};
use std::time::Duration;

use deadpool::managed;
use lapin::tcp::OwnedTLSConfig;
use lapin::{ConnectionProperties, ErrorKind};
use tracing::info;

use crate::settings::{AmqpSettings, SecretUrl};

/// Why the broker could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Nothing answered, or the connection was cut before the handshake finished (a node
    /// starting or stopping).
    #[error("cannot reach RabbitMQ at {url}: {reason}")]
    Unreachable {
        /// The URL with its password redacted.
        url: String,
        /// Why, in a few words.
        reason: String,
    },
    /// The broker answered but cannot serve the connection now: it is shutting down (320
    /// CONNECTION_FORCED), the vhost is down on that node (530), or it failed internally.
    /// Another node, or the same one a moment later, can.
    #[error("RabbitMQ at {url} is not accepting connections now: {reason}")]
    Unavailable {
        /// The URL with its password redacted.
        url: String,
        /// The broker's reply, e.g. `CONNECTION_FORCED - broker forced connection closure…`.
        reason: String,
    },
    /// The broker refused the login (403 ACCESS_REFUSED) or the vhost does not exist; waiting
    /// will not change that.
    #[error("RabbitMQ at {url} refused the connection: {reason}")]
    Refused {
        /// The URL with its password redacted.
        url: String,
        /// Why, in a few words.
        reason: String,
    },
    /// The broker's TLS certificate is not signed by a trusted CA (or names another host):
    /// waiting will not change that.
    #[error("the TLS certificate of RabbitMQ at {url} is not trusted: {reason} (is amqp.tls_ca_file the CA that signed it?)")]
    Untrusted {
        /// The URL with its password redacted.
        url: String,
        /// What the TLS library said, e.g. `invalid peer certificate: UnknownIssuer`.
        reason: String,
    },
    /// `amqp.tls_ca_file` cannot be read or holds no certificate.
    #[error("cannot use the CA file {path} (amqp.tls_ca_file): {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What a failed connection attempt means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Nothing answered or the socket closed: try again, or another node.
    Unreachable,
    /// The broker answered "not now": try again, or another node.
    Unavailable,
    /// Credentials, permissions or the vhost are wrong: stop and say so.
    Refused,
    /// The broker's certificate is not trusted: stop and say so.
    Untrusted,
}

/// Sorts a lapin error met while connecting (or opening a channel).
///
/// lapin advertises the `authentication_failure_close` capability, so RabbitMQ answers a wrong
/// user or password with `connection.close` 403 ACCESS_REFUSED instead of dropping the socket
/// (measured on 3.10.8: `ACCESS_REFUSED - Login was refused using authentication mechanism
/// PLAIN`). A socket closed during the handshake is therefore not a refused login but a node
/// starting or stopping, and is retried.
fn classify(error: &lapin::Error) -> Class {
    use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            // 403: wrong credentials, or no permission on the vhost.
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => Class::Refused,
            // 530 is both "vhost x not found" (a wrong URL) and "vhost x is down" (on a node
            // that is booting or recovering the vhost): only the text tells them apart.
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
                if amqp.get_message().as_str().contains("not found") =>
            {
                Class::Refused
            }
            // 320 CONNECTION_FORCED (node shutting down), 530 vhost down, 541 INTERNAL_ERROR,
            // 506 RESOURCE_ERROR and the rest: the node, not the client's settings.
            _ => Class::Unavailable,
        },
        ErrorKind::InvalidProtocolVersion(_) | ErrorKind::AuthProviderError(_) => Class::Refused,
        ErrorKind::IOError(io) if rejected_certificate(io).is_some() => Class::Untrusted,
        _ => Class::Unreachable,
    }
}

impl BrokerError {
    /// Classifies a lapin connection error: only refused credentials or permissions and a
    /// vhost that does not exist are [`BrokerError::Refused`]; everything a node starting,
    /// stopping or failing over can cause is transient.
    pub fn from_lapin(url: &SecretUrl, error: &lapin::Error) -> Self {
        let url = url.redacted();
        let reason = match error.kind() {
            ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
            ErrorKind::IOError(io) => match rejected_certificate(io) {
                Some(e) => e.to_string(),
                None => io_reason(io),
            },
            ErrorKind::InvalidConnectionState(_) => {
                "the connection closed during the handshake (node starting or stopping?)".into()
            }
            _ => crate::settings::redact_url(&error.to_string()),
        };
        match classify(error) {
            Class::Unreachable => Self::Unreachable { url, reason },
            Class::Unavailable => Self::Unavailable { url, reason },
            Class::Refused => Self::Refused { url, reason },
            Class::Untrusted => Self::Untrusted { url, reason },
        }
    }

    /// Whether trying again later, or another node, can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Unavailable { .. })
    }
}

/// The TLS library's verdict on the broker's certificate, if `io` is one: rustls reports it as
/// an I/O error that wraps a `rustls::Error::InvalidCertificate`.
fn rejected_certificate(io: &std::io::Error) -> Option<&rustls::Error> {
    io.get_ref()?
        .downcast_ref::<rustls::Error>()
        .filter(|e| matches!(e, rustls::Error::InvalidCertificate(_)))
}

/// The TLS settings of a connection: the CAs of `amqp.tls_ca_file` on top of the system's.
fn tls_config(settings: &AmqpSettings) -> Result<OwnedTLSConfig, BrokerError> {
    let cert_chain = settings
        .tls_ca_file
        .as_deref()
        .map(read_ca_file)
        .transpose()?;
    Ok(OwnedTLSConfig {
        identity: None,
        cert_chain,
    })
}

fn read_ca_file(path: &Path) -> Result<String, BrokerError> {
    let fail = |reason: String| BrokerError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    if pem.contains("-----BEGIN CERTIFICATE-----") {
        Ok(pem)
    } else {
        Err(fail("no PEM certificate in it".into()))
    }
}

fn io_reason(io: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match io.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::TimedOut => "timed out".into(),
        K::ConnectionReset | K::UnexpectedEof | K::ConnectionAborted => {
            "connection closed by the peer (node starting or stopping, or a TLS setting?)".into()
        }
        _ => io.to_string().to_lowercase(),
    }
}

/// The client property of every connection of a process that serves HTTP (a worker's
/// `--http`): its address, e.g. `127.0.0.1:9101`, so `burrow console` finds the workers'
/// `/healthz` and `/metrics` through the management API's connection list.
pub const CLIENT_PROPERTY_HTTP: &str = "burrow_http";

static HTTP_ADDRESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Announces `addr` as this process's HTTP endpoint in the client properties of every
/// connection opened afterwards ([`CLIENT_PROPERTY_HTTP`]). Once per process; later calls are
/// ignored.
pub fn announce_http(addr: std::net::SocketAddr) {
    let _ = HTTP_ADDRESS.set(addr.to_string());
}

/// The connection properties of `name`: its connection name and, once announced, the
/// process's HTTP address.
fn connection_properties(name: &str) -> ConnectionProperties {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    match HTTP_ADDRESS.get() {
        Some(addr) => props.with_client_property(CLIENT_PROPERTY_HTTP.into(), addr.as_str().into()),
        None => props,
    }
}

/// The name this process shows in the management UI's Connections tab, e.g.
/// `burrow worker fulfillment@host#4242`.
pub fn connection_name(role: &str) -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("burrow {role}@{host}#{}", std::process::id())
}

/// The URL lapin connects to for `url`: with heartbeat and frame size added, unless the URL
/// already sets them.
fn connect_url_for(settings: &AmqpSettings, url: &SecretUrl) -> String {
    let raw = url.expose();
    let mut url = match url::Url::parse(raw) {
        Ok(u) => u,
        Err(_) => return raw.to_owned(),
    };
    let has = |k: &str| url.query_pairs().any(|(key, _)| key == k);
    let (hb, fm) = (has("heartbeat"), has("frame_max"));
    {
        let mut q = url.query_pairs_mut();
        if !hb {
            q.append_pair("heartbeat", &settings.heartbeat_secs.to_string());
        }
        if !fm {
            q.append_pair("frame_max", &settings.frame_max.to_string());
        }
    }
    url.to_string()
}

/// Connections to the broker: one pool per node (`url`, then each failover URL), made lazily
/// by [`connect`]'s code (the same name, TLS settings and errors), each dropping a connection
/// that is no longer connected instead of handing it out. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    nodes: std::sync::Arc<Vec<(SecretUrl, managed::Pool<Node>)>>,
    settings: AmqpSettings,
}

/// A pooled connection (derefs to [`lapin::Connection`]).
pub type PooledConnection = managed::Object<Node>;

/// Makes and checks the connections of one node's pool.
#[derive(Debug)]
pub struct Node {
    settings: AmqpSettings,
    url: SecretUrl,
    role: String,
}

impl managed::Manager for Node {
    type Type = lapin::Connection;
    type Error = BrokerError;

    async fn create(&self) -> Result<lapin::Connection, BrokerError> {
        connect_to(&self.settings, &self.url, &self.role).await
    }

    async fn recycle(
        &self,
        conn: &mut lapin::Connection,
        _: &managed::Metrics,
    ) -> managed::RecycleResult<BrokerError> {
        if conn.status().connected() {
            Ok(())
        } else {
            Err(managed::RecycleError::message("the connection is closed"))
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.nodes.iter().map(|(u, _)| u.redacted()).collect();
        f.debug_struct("Pool")
            .field("nodes", &urls)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Pool`] whose connections are named after `role`.
///
/// # Errors
/// Only a malformed configuration; an unreachable broker shows on first use.
pub fn pool(settings: &AmqpSettings, role: &str) -> anyhow::Result<Pool> {
    let nodes = settings
        .urls()
        .map(|url| {
            let node = Node {
                settings: settings.clone(),
                url: url.clone(),
                role: role.to_owned(),
            };
            // Each connection attempt has its own timeout (`connect_timeout_ms`).
            Ok((
                url.clone(),
                managed::Pool::builder(node).max_size(4).build()?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Pool {
        nodes: std::sync::Arc::new(nodes),
        settings: settings.clone(),
    })
}

impl Pool {
    /// Closes every node's pool: idle connections are dropped, and no new ones are made.
    pub fn close(&self) {
        for (_, pool) in self.nodes.iter() {
            pool.close();
        }
    }

    /// The settings the pool was built from.
    pub fn settings(&self) -> &AmqpSettings {
        &self.settings
    }

    /// Takes a live connection from the first node that answers: `url`, then each failover URL
    /// in order, so a client moves to a surviving node and back to the primary once it is up.
    ///
    /// # Errors
    /// [`BrokerError`] when no node can be reached, or one refuses the login.
    pub async fn connection(&self) -> Result<PooledConnection, BrokerError> {
        let mut last = None;
        for (i, (url, pool)) in self.nodes.iter().enumerate() {
            match pooled(pool, url).await {
                Ok(conn) => {
                    if let (true, Some(unreachable)) = (i > 0, &last) {
                        info!(url = %url, %unreachable, "connected to a failover node");
                    }
                    return Ok(conn);
                }
                Err(e) if e.is_transient() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("a pool has at least the primary node"))
    }
}

/// Takes `conn` out of its pool and closes it: a connection on which opening a channel failed
/// or got no answer may still look connected to lapin (its socket died unnoticed), and the pool
/// would hand it out again and again; the next caller gets a fresh one instead.
pub fn discard(conn: PooledConnection) {
    let conn = managed::Object::take(conn);
    tokio::spawn(async move { close(&conn, "discarded").await });
}

/// A channel in confirm mode on a connection of `pool`, within the connect timeout, with that
/// connection (back to the pool when dropped); a connection that cannot give one is
/// [`discard`]ed.
///
/// # Errors
/// No connection, or the channel could not be opened in time.
pub async fn confirm_channel(
    pool: &Pool,
) -> Result<(lapin::Channel, PooledConnection), BrokerError> {
    let conn = pool.connection().await?;
    let url = &pool.settings().url;
    let limit = Duration::from_millis(pool.settings().connect_timeout_ms.max(1000));
    match tokio::time::timeout(limit, crate::publisher::confirm_channel(&conn)).await {
        Ok(Ok(channel)) => Ok((channel, conn)),
        Ok(Err(e)) => {
            let error = BrokerError::from_lapin(url, &e);
            discard(conn);
            Err(error)
        }
        Err(_) => {
            discard(conn);
            Err(BrokerError::Unreachable {
                url: url.redacted(),
                reason: format!("no channel within {limit:?}"),
            })
        }
    }
}

async fn pooled(
    pool: &managed::Pool<Node>,
    url: &SecretUrl,
) -> Result<PooledConnection, BrokerError> {
    pool.get().await.map_err(|e| match e {
        managed::PoolError::Backend(e) => e,
        other => BrokerError::Unreachable {
            url: url.redacted(),
            reason: crate::settings::redact_url(&other.to_string()),
        },
    })
}

/// Connects once, outside a pool (for short-lived tools), to `url` or else the first failover
/// node that answers.
///
/// # Errors
/// [`BrokerError`] when no node can be reached, or one refuses the login.
pub async fn connect(
    settings: &AmqpSettings,
    role: &str,
) -> Result<lapin::Connection, BrokerError> {
    let mut last = None;
    for url in settings.urls() {
        match connect_to(settings, url, role).await {
            Err(e) if e.is_transient() => last = Some(e),
            other => return other,
        }
    }
    Err(last.expect("urls() yields at least `url`"))
}

async fn connect_to(
    settings: &AmqpSettings,
    url: &SecretUrl,
    role: &str,
) -> Result<lapin::Connection, BrokerError> {
    let props = connection_properties(&connection_name(role));
    let target = connect_url_for(settings, url);
    let runtime =
        lapin::runtime::default_runtime().map_err(|e| BrokerError::from_lapin(url, &e))?;
    let attempt =
        lapin::Connection::connect_with_config(&target, props, tls_config(settings)?, runtime);
    match tokio::time::timeout(Duration::from_millis(settings.connect_timeout_ms), attempt).await {
        Ok(Ok(conn)) => {
            watch_blocked(&conn);
            Ok(conn)
        }
        Ok(Err(e)) => Err(BrokerError::from_lapin(url, &e)),
        Err(_) => Err(BrokerError::Unreachable {
            url: url.redacted(),
            reason: "timed out".into(),
        }),
    }
}

/// Logs when the broker blocks or unblocks publishing on `conn` (memory or disk alarm), once
/// each time: one task per connection, which ends with the connection. (lapin's event listeners
/// share one queue, each event going to one of them, so there must be one per connection: a
/// listener per channel piled up with every channel opened, and the unblock could reach
/// another listener than the block.)
fn watch_blocked(conn: &lapin::Connection) {
    use futures::StreamExt;
    let mut events = conn.events_listener();
    tokio::spawn(async move {
        let mut blocked = false;
        while let Some(event) = events.next().await {
            match event {
                lapin::Event::ConnectionBlocked(reason) if !blocked => {
                    blocked = true;
                    tracing::warn!(%reason, "broker blocked publishing (resource alarm); waiting for it to clear");
                }
                lapin::Event::ConnectionUnblocked if blocked => {
                    blocked = false;
                    info!("broker unblocked publishing; resuming");
                }
                _ => {}
            }
        }
    });
}

/// How long closing a channel or a connection waits for the broker's `close-ok`: a node that
/// is going away may never send it, and a program whose work is done must not hang on it.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes `conn` (reply 200, `reason`), waiting at most [`CLOSE_TIMEOUT`]. A failure is
/// ignored: the work on the connection is over either way.
pub async fn close(conn: &lapin::Connection, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, reason.into())).await;
}

/// Closes `channel` as [`close`] closes a connection.
pub async fn close_channel(channel: &lapin::Channel, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, reason.into())).await;
}

/// What the broker says of `queue` now (messages ready, consumers), by a passive declare on a
/// channel of its own: a missing queue closes that channel, not the caller's.
///
/// # Errors
/// The queue does not exist, or the connection failed.
pub async fn queue_state(
    conn: &lapin::Connection,
    queue: &str,
) -> Result<lapin::Queue, lapin::Error> {
    let channel = conn.create_channel().await?;
    let state = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await;
    if state.is_ok() {
        close_channel(&channel, "done").await;
    }
    state
}

/// Whether `exchange` exists on the vhost, by a passive declare on a channel of its own: a
/// missing exchange closes that channel (404), not the caller's.
///
/// # Errors
/// The exchange does not exist, or the connection failed.
pub async fn exchange_exists(conn: &lapin::Connection, exchange: &str) -> Result<(), lapin::Error> {
    let channel = conn.create_channel().await?;
    channel
        .exchange_declare(
            exchange.into(),
            lapin::ExchangeKind::Direct,
            lapin::options::ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await?;
    close_channel(&channel, "done").await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amqp(code: u16, text: &str) -> lapin::Error {
        let error = lapin::protocol::AMQPError::from_id(code, text.into()).expect("a reply code");
        ErrorKind::ProtocolError(error).into()
    }

    fn io(kind: std::io::ErrorKind) -> lapin::Error {
        std::io::Error::from(kind).into()
    }

    fn secret() -> SecretUrl {
        SecretUrl::new("amqp://ann:s3cret@node1:5672/shop")
    }

    #[test]
    fn a_refused_login_is_fatal_and_names_no_password() {
        // What RabbitMQ 3.10.8 sends for a wrong user or password (lapin advertises
        // authentication_failure_close).
        let e = BrokerError::from_lapin(
            &secret(),
            &amqp(
                403,
                "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For \
                 details see the broker logfile.",
            ),
        );
        assert!(matches!(e, BrokerError::Refused { .. }), "{e:?}");
        assert!(!e.is_transient());
        let text = e.to_string();
        assert!(
            text.contains("refused") && text.contains("ACCESS_REFUSED"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
        // No permission on the vhost is also a 403.
        let e = amqp(
            403,
            "ACCESS_REFUSED - access to vhost 'shop' refused for user 'ann'",
        );
        assert_eq!(classify(&e), Class::Refused);
    }

    #[test]
    fn a_vhost_that_does_not_exist_is_fatal_but_one_that_is_down_is_retried() {
        assert_eq!(
            classify(&amqp(530, "NOT_ALLOWED - vhost shop not found")),
            Class::Refused
        );
        let down = amqp(
            530,
            "NOT_ALLOWED - access to vhost 'shop' refused for user 'ann': vhost 'shop' is down",
        );
        assert_eq!(classify(&down), Class::Unavailable);
        assert!(BrokerError::from_lapin(&secret(), &down).is_transient());
    }

    #[test]
    fn a_node_shutting_down_or_failing_is_retried() {
        for (code, text) in [
            (
                320,
                "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
            ),
            (541, "INTERNAL_ERROR"),
            (506, "RESOURCE_ERROR - out of file descriptors"),
        ] {
            let e = BrokerError::from_lapin(&secret(), &amqp(code, text));
            assert!(
                matches!(e, BrokerError::Unavailable { .. }),
                "{code}: {e:?}"
            );
            assert!(e.is_transient(), "{code}");
            assert!(e.to_string().contains(text), "{e}");
        }
    }

    #[test]
    fn a_handshake_cut_short_is_retried() {
        use lapin::ConnectionState;
        for state in [ConnectionState::Closed, ConnectionState::Error] {
            let e = BrokerError::from_lapin(
                &secret(),
                &ErrorKind::InvalidConnectionState(state).into(),
            );
            assert!(matches!(e, BrokerError::Unreachable { .. }), "{e:?}");
            assert!(e.is_transient());
        }
        for kind in [
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::TimedOut,
        ] {
            let e = BrokerError::from_lapin(&secret(), &io(kind));
            assert!(e.is_transient(), "{kind:?}");
            assert!(!e.to_string().contains("s3cret"));
        }
        let e = BrokerError::from_lapin(&secret(), &ErrorKind::MissingHeartbeatError.into());
        assert!(e.is_transient());
    }

    #[test]
    fn an_auth_provider_failure_is_fatal() {
        let e: lapin::Error = ErrorKind::AuthProviderError("no token".into()).into();
        assert_eq!(classify(&e), Class::Refused);
    }

    #[test]
    fn connection_name_names_role_host_and_pid() {
        let name = connection_name("worker fulfillment");
        assert!(name.starts_with("burrow worker fulfillment@"));
        assert!(name.ends_with(&format!("#{}", std::process::id())));
    }

    #[test]
    fn connect_url_adds_heartbeat_once() {
        let s = AmqpSettings {
            url: SecretUrl::new("amqp://u:p@h:5672/%2f?heartbeat=5"),
            heartbeat_secs: 30,
            frame_max: 131072,
            connect_timeout_ms: 100,
            failover_urls: Vec::new(),
            tls_ca_file: None,
        };
        let url = connect_url_for(&s, &s.url);
        assert!(url.contains("heartbeat=5"));
        assert!(!url.contains("heartbeat=30"));
        assert!(url.contains("frame_max=131072"));
    }
}
