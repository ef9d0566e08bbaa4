//! The broker connection: a deadpool-lapin pool with heartbeats, a connection name that shows in
//! the management UI, failover to the other nodes of a cluster, and errors that say in one line
//! what is wrong without leaking the password.
//!
//! Failover: `AmqpSettings::failover_urls` (`AMQP_FAILOVER_URLS`) names other nodes. Every
//! connection attempt tries `url` first, then each failover URL in order, so a client moves to a
//! surviving node when its node dies and back to the primary once that is up again. A
//! [`Pool`] keeps a deadpool-lapin pool per node.

use std::time::Duration;

use deadpool_lapin::Runtime;
use lapin::{ConnectionProperties, ErrorKind};
use tracing::info;

use crate::settings::{AmqpSettings, SecretUrl};

/// Why the broker could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Nothing answered, or the connection was cut before the handshake finished.
    #[error("cannot reach RabbitMQ at {url}: {reason}")]
    Unreachable {
        /// The URL with its password redacted.
        url: String,
        /// Why, in a few words.
        reason: String,
    },
    /// The broker answered but refused the login or the vhost.
    #[error("RabbitMQ at {url} refused the connection: {reason}")]
    Refused {
        /// The URL with its password redacted.
        url: String,
        /// Why, in a few words.
        reason: String,
    },
}

impl BrokerError {
    /// Classifies a lapin connection error.
    pub fn from_lapin(url: &SecretUrl, error: &lapin::Error) -> Self {
        let url_text = url.redacted();
        match error.kind() {
            ErrorKind::IOError(io) => Self::Unreachable {
                url: url_text,
                reason: io_reason(io),
            },
            ErrorKind::ProtocolError(amqp) => Self::Refused {
                url: url_text,
                reason: amqp.to_string(),
            },
            ErrorKind::InvalidConnectionState(_) => Self::Refused {
                url: url_text,
                reason: "the broker closed the connection during the handshake (wrong user, password or vhost?)".into(),
            },
            _ => Self::Unreachable {
                url: url_text,
                reason: crate::settings::redact_url(&error.to_string()),
            },
        }
    }

    /// Whether trying again later can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

fn io_reason(io: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match io.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::TimedOut => "timed out".into(),
        K::ConnectionReset | K::UnexpectedEof | K::ConnectionAborted => {
            "connection closed by the peer (wrong credentials, vhost or TLS setting?)".into()
        }
        _ => io.to_string().to_lowercase(),
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

/// Connections to the broker: one deadpool-lapin pool per node (`url`, then each failover URL),
/// made lazily, each dropping a connection that is no longer connected instead of handing it
/// out. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    nodes: std::sync::Arc<Vec<(SecretUrl, deadpool_lapin::Pool)>>,
    settings: AmqpSettings,
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
        .map(|url| Ok((url.clone(), node_pool(settings, url, role)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Pool {
        nodes: std::sync::Arc::new(nodes),
        settings: settings.clone(),
    })
}

fn node_pool(
    settings: &AmqpSettings,
    url: &SecretUrl,
    role: &str,
) -> anyhow::Result<deadpool_lapin::Pool> {
    let name = connection_name(role);
    let config = deadpool_lapin::Config {
        url: Some(connect_url_for(settings, url)),
        pool: Some(deadpool_lapin::PoolConfig::new(4)),
    };
    let pool = config
        .builder(
            move || ConnectionProperties::default().with_connection_name(name.clone().into()),
            Runtime::Tokio1,
        )?
        .create_timeout(Some(Duration::from_millis(settings.connect_timeout_ms)))
        .build()?;
    Ok(pool)
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
    pub async fn connection(&self) -> Result<deadpool_lapin::Connection, BrokerError> {
        let mut last = None;
        for (i, (url, pool)) in self.nodes.iter().enumerate() {
            match pooled(pool, &self.settings, url).await {
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

async fn pooled(
    pool: &deadpool_lapin::Pool,
    settings: &AmqpSettings,
    url: &SecretUrl,
) -> Result<deadpool_lapin::Connection, BrokerError> {
    match pool.get().await {
        Ok(conn) => Ok(conn),
        Err(deadpool_lapin::PoolError::Backend(e)) => Err(BrokerError::from_lapin(url, &e)),
        Err(deadpool_lapin::PoolError::Timeout(_)) => Err(BrokerError::Unreachable {
            url: url.redacted(),
            reason: format!("timed out after {} ms", settings.connect_timeout_ms),
        }),
        Err(other) => Err(BrokerError::Unreachable {
            url: url.redacted(),
            reason: crate::settings::redact_url(&other.to_string()),
        }),
    }
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
    let props = ConnectionProperties::default().with_connection_name(connection_name(role).into());
    let target = connect_url_for(settings, url);
    let attempt = lapin::Connection::connect(&target, props);
    match tokio::time::timeout(Duration::from_millis(settings.connect_timeout_ms), attempt).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(BrokerError::from_lapin(url, &e)),
        Err(_) => Err(BrokerError::Unreachable {
            url: url.redacted(),
            reason: "timed out".into(),
        }),
    }
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
        let _ = channel.close(200, "done".into()).await;
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

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
        };
        let url = connect_url_for(&s, &s.url);
        assert!(url.contains("heartbeat=5"));
        assert!(!url.contains("heartbeat=30"));
        assert!(url.contains("frame_max=131072"));
    }
}
