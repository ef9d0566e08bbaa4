//! The one client of the RabbitMQ management HTTP API, used by the commands, the benchmark and
//! the tests alike: the overview, queues, exchanges, bindings, connections, vhosts, users and
//! permissions, and definitions import. Errors name what failed and the URL, never the password.
//!
//! It knows nothing of burrow's topology: callers pass names and values.

use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::settings::{encode_vhost, AmqpSettings, ManagementSettings, SecretUrl};

/// Why a management API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    /// Nothing answered at the URL.
    #[error("management API not reachable at {url} (is rabbitmq_management enabled?)")]
    Unreachable {
        /// The URL, without credentials.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The API answered 401.
    #[error("management API refused the credentials of user '{user}' at {url}")]
    Unauthorized {
        /// The URL, without credentials.
        url: String,
        /// The user name (never the password).
        user: String,
    },
    /// The API answered with another error status.
    #[error("management API: {what} failed at {url}: HTTP {status}: {reason}")]
    Status {
        /// What was asked, e.g. `listing queues`.
        what: String,
        /// The URL, without credentials.
        url: String,
        /// The status code.
        status: u16,
        /// The `reason` the API gave, or the body.
        reason: String,
    },
    /// The request failed midway or the answer could not be read.
    #[error("management API: {what} failed at {url}")]
    Http {
        /// What was asked.
        what: String,
        /// The URL, without credentials.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The management URL is not a URL.
    #[error("management API URL {url} is not valid")]
    BadUrl {
        /// The URL as configured, password redacted.
        url: String,
    },
}

impl ManagementError {
    /// Whether trying again later can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

/// A queue as the management API shows it (the fields burrow uses).
#[derive(Debug, Clone, Deserialize)]
pub struct QueueInfo {
    /// Its name.
    pub name: String,
    /// Its vhost.
    pub vhost: String,
    /// `classic`, `quorum` or `stream`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Whether it is durable.
    #[serde(default)]
    pub durable: bool,
    /// Its arguments as declared.
    #[serde(default)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
    /// Messages ready and unacknowledged (absent until the stats are collected).
    #[serde(default)]
    pub messages: Option<u64>,
    /// Messages ready for delivery.
    #[serde(default)]
    pub messages_ready: Option<u64>,
    /// Messages delivered and not yet acknowledged.
    #[serde(default)]
    pub messages_unacknowledged: Option<u64>,
    /// Consumers attached.
    #[serde(default)]
    pub consumers: Option<u64>,
    /// Rates and counters, as the API gives them.
    #[serde(default)]
    pub message_stats: Option<serde_json::Value>,
}

/// An exchange as the management API shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct ExchangeInfo {
    /// Its name (empty for the default exchange).
    pub name: String,
    /// Its vhost.
    pub vhost: String,
    /// `direct`, `fanout`, `topic`, `headers`…
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether it is durable.
    #[serde(default)]
    pub durable: bool,
    /// Whether it is deleted when its last binding goes.
    #[serde(default)]
    pub auto_delete: bool,
    /// Whether clients may not publish to it.
    #[serde(default)]
    pub internal: bool,
    /// Its arguments.
    #[serde(default)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

/// A binding as the management API shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct BindingInfo {
    /// The exchange (empty for the default exchange's implicit bindings).
    pub source: String,
    /// Its vhost.
    pub vhost: String,
    /// The queue or exchange bound.
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    /// The binding key.
    pub routing_key: String,
    /// Binding arguments.
    #[serde(default)]
    pub arguments: serde_json::Map<String, serde_json::Value>,
}

/// The broker's overview (the fields burrow uses).
#[derive(Debug, Clone, Deserialize)]
pub struct Overview {
    /// e.g. `3.10.8`.
    pub rabbitmq_version: String,
    /// e.g. `25.2.3`.
    #[serde(default)]
    pub erlang_version: String,
    /// The cluster's name.
    #[serde(default)]
    pub cluster_name: String,
    /// The node answering.
    #[serde(default)]
    pub node: String,
    /// The protocol listeners of the cluster's nodes.
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

/// One protocol listener of a node, from `/api/overview`.
#[derive(Debug, Clone, Deserialize)]
pub struct Listener {
    /// e.g. `amqp`, `amqp/ssl`, `http`.
    pub protocol: String,
    /// The port.
    pub port: u16,
}

/// A client connection as the management API shows it (the fields burrow uses).
#[derive(Debug, Clone, Deserialize)]
pub struct ConnectionInfo {
    /// The broker's name for it, e.g. `127.0.0.1:50212 -> 127.0.0.1:5672`.
    pub name: String,
    /// Its vhost.
    pub vhost: String,
    /// The user it logged in as.
    #[serde(default)]
    pub user: String,
    /// The client's address as the broker sees it.
    #[serde(default)]
    pub peer_host: String,
    /// The name the client gave (`connection_name` client property), if any.
    #[serde(default)]
    pub client_properties: serde_json::Map<String, serde_json::Value>,
}

/// A user as the management API shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct UserInfo {
    /// Its name.
    pub name: String,
    /// The salted hash the broker stores.
    #[serde(default)]
    pub password_hash: String,
    /// The scheme of that hash, e.g. `rabbit_password_hashing_sha256`.
    #[serde(default)]
    pub hashing_algorithm: String,
    /// Management tags (`administrator`, `monitoring`…); a list on 3.9+, a comma-separated
    /// string before.
    #[serde(default)]
    pub tags: serde_json::Value,
}

/// A client of the management HTTP API.
#[derive(Clone)]
pub struct Management {
    http: reqwest::Client,
    base: String,
    user: String,
    password: String,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Management")
            .field("base", &self.base)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Management {
    /// A client for the API at `management.url`. Credentials are those of the management URL
    /// when it carries a user, otherwise those of the AMQP URL (`guest`/`guest` when neither
    /// has any).
    ///
    /// # Errors
    /// [`ManagementError::BadUrl`] when the URL cannot be parsed.
    pub fn new(
        management: &ManagementSettings,
        amqp: &AmqpSettings,
    ) -> Result<Self, ManagementError> {
        let bad = || ManagementError::BadUrl {
            url: management.url.redacted(),
        };
        let mut url = url::Url::parse(management.url.expose()).map_err(|_| bad())?;
        let (user, password) = match management.url.username() {
            Some(user) => (user, management.url.password().unwrap_or_default()),
            None => (
                amqp.url.username().unwrap_or_else(|| "guest".into()),
                amqp.url.password().unwrap_or_else(|| "guest".into()),
            ),
        };
        url.set_username("").map_err(|_| bad())?;
        url.set_password(None).map_err(|_| bad())?;
        let base = url.as_str().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|source| ManagementError::Http {
                what: "building the HTTP client".into(),
                url: base.clone(),
                source,
            })?;
        Ok(Self {
            http,
            base,
            user,
            password,
        })
    }

    /// The API's base URL, without credentials.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The broker's overview: version, cluster name.
    ///
    /// # Errors
    /// [`ManagementError`] when the API cannot be reached, refuses the login or answers badly.
    pub async fn overview(&self) -> Result<Overview, ManagementError> {
        self.get("reading the overview", "/api/overview").await
    }

    /// Checks that this management API belongs to the broker `amqp` names, by the AMQP port its
    /// nodes listen on, so that a report never silently describes another broker (e.g. the
    /// local one while `AMQP_URL` names a closed port). Skipped when the API lists no AMQP
    /// listener.
    ///
    /// # Errors
    /// The API cannot be read, or no node of it listens on the port of `amqp`.
    pub async fn ensure_serves(&self, amqp: &SecretUrl) -> anyhow::Result<()> {
        let Some(port) = url::Url::parse(amqp.expose()).ok().and_then(|u| {
            u.port()
                .or(Some(if u.scheme() == "amqps" { 5671 } else { 5672 }))
        }) else {
            return Ok(());
        };
        let overview = self.overview().await?;
        let amqp_ports: Vec<u16> = overview
            .listeners
            .iter()
            .filter(|l| l.protocol.starts_with("amqp"))
            .map(|l| l.port)
            .collect();
        anyhow::ensure!(
            amqp_ports.is_empty() || amqp_ports.contains(&port),
            "the management API at {} belongs to a broker listening for AMQP on port {}, not on \
             port {port} of {}; set RABBITMQ_MANAGEMENT_URL to the management API of that broker",
            self.base,
            amqp_ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            amqp.redacted()
        );
        Ok(())
    }

    /// Every queue of `vhost`.
    ///
    /// # Errors
    /// As [`Management::overview`].
    pub async fn queues(&self, vhost: &str) -> Result<Vec<QueueInfo>, ManagementError> {
        let path = format!("/api/queues/{}", encode_vhost(vhost));
        self.get("listing queues", &path).await
    }

    /// One queue of `vhost`, or `None` when it does not exist.
    ///
    /// # Errors
    /// As [`Management::overview`].
    pub async fn queue(
        &self,
        vhost: &str,
        name: &str,
    ) -> Result<Option<QueueInfo>, ManagementError> {
        let path = format!("/api/queues/{}/{}", encode_vhost(vhost), encode_vhost(name));
        self.get_optional(&format!("reading queue '{name}'"), &path)
            .await
    }

    /// Deletes a queue with its messages; a queue that does not exist is not an error.
    ///
    /// # Errors
    /// As [`Management::overview`].
    pub async fn delete_queue(&self, vhost: &str, name: &str) -> Result<(), ManagementError> {
        let path = format!("/api/queues/{}/{}", encode_vhost(vhost), encode_vhost(name));
        self.delete(&format!("deleting queue '{name}'"), &path)
            .await
    }

    /// Deletes an exchange; one that does not exist is not an error.
    ///
    /// # Errors
    /// As [`Management::overview`].
    pub async fn delete_exchange(&self, vhost: &str, name: &str) -> Result<(), ManagementError> {
        let path = format!(
            "/api/exchanges/{}/{}",
            encode_vhost(vhost),
            encode_vhost(name)
        );
        self.delete(&format!("deleting exchange '{name}'"), &path)
            .await
    }

    /// Every client connection to `vhost`.
    ///
    /// # Errors
    /// As [`Management::overview`].
    pub async fn connections(&self, vhost: &str) -> Result<Vec<ConnectionInfo>, ManagementError> {
        let path = format!("/api/vhosts/{}/connections", encode_vhost(vhost));
        self.get("listing connections", &path).await
    }

    /// Closes a client connection by its name, as an operator would; one already gone is not
    /// an error.
    ///
    /// # Errors
    /// As [`Management::overview`].
    pub async fn close_connection(&self, name: &str) -> Result<(), ManagementError> {
        let path = format!("/api/connections/{}", encode_vhost(name));
        self.delete(&format!("closing connection '{name}'"), &path)
            .await
    }

    /// Every exchange of `vhost`, including the built-in ones.
    ///
    /// # Errors
    /// As [`Management::overview`].
    pub async fn exchanges(&self, vhost: &str) -> Result<Vec<ExchangeInfo>, ManagementError> {
        let path = format!("/api/exchanges/{}", encode_vhost(vhost));
        self.get("listing exchanges", &path).await
    }

    /// Every binding of `vhost`, including the default exchange's implicit ones.
    ///
    /// # Errors
    /// As [`Management::overview`].
    pub async fn bindings(&self, vhost: &str) -> Result<Vec<BindingInfo>, ManagementError> {
        let path = format!("/api/bindings/{}", encode_vhost(vhost));
        self.get("listing bindings", &path).await
    }

    /// Imports a definitions document (the JSON of `rabbitmqctl export_definitions`) into
    /// `vhost`.
    ///
    /// # Errors
    /// As [`Management::overview`]; a rejected document is a [`ManagementError::Status`] with
    /// the broker's reason.
    pub async fn import_definitions(
        &self,
        vhost: &str,
        definitions: &serde_json::Value,
    ) -> Result<(), ManagementError> {
        let path = format!("/api/definitions/{}", encode_vhost(vhost));
        let url = format!("{}{path}", self.base);
        let what = format!("importing definitions into vhost '{vhost}'");
        let request = self
            .http
            .post(&url)
            .basic_auth(&self.user, Some(&self.password))
            .json(definitions);
        self.send(&what, &url, request).await.map(drop)
    }

    /// Creates or updates a user with management `tags`. The password travels in plain text
    /// (over the API's own transport, HTTPS in production) and the broker salts and hashes it
    /// with its configured scheme, as `rabbitmqctl add_user` does.
    ///
    /// # Errors
    /// As [`Management::overview`].
    pub async fn put_user(
        &self,
        name: &str,
        password: &str,
        tags: &[String],
    ) -> Result<(), ManagementError> {
        let path = format!("/api/users/{}", encode_vhost(name));
        let body = serde_json::json!({
            "password": password,
            "tags": tags.join(","),
        });
        self.put(&format!("creating user '{name}'"), &path, &body)
            .await
    }

    /// One user, or `None` when it does not exist.
    ///
    /// # Errors
    /// As [`Management::overview`].
    pub async fn user(&self, name: &str) -> Result<Option<UserInfo>, ManagementError> {
        let path = format!("/api/users/{}", encode_vhost(name));
        self.get_optional(&format!("reading user '{name}'"), &path)
            .await
    }

    /// Deletes a user; a user that does not exist is not an error.
    ///
    /// # Errors
    /// As [`Management::overview`].
    pub async fn delete_user(&self, name: &str) -> Result<(), ManagementError> {
        let path = format!("/api/users/{}", encode_vhost(name));
        self.delete(&format!("deleting user '{name}'"), &path).await
    }

    /// Sets what `user` may configure, write and read in `vhost` (regular expressions).
    ///
    /// # Errors
    /// As [`Management::overview`].
    pub async fn put_permissions(
        &self,
        vhost: &str,
        user: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), ManagementError> {
        let path = format!(
            "/api/permissions/{}/{}",
            encode_vhost(vhost),
            encode_vhost(user)
        );
        let body = serde_json::json!({"configure": configure, "write": write, "read": read});
        self.put(
            &format!("setting permissions of '{user}' on vhost '{vhost}'"),
            &path,
            &body,
        )
        .await
    }

    async fn put(
        &self,
        what: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(), ManagementError> {
        let url = format!("{}{path}", self.base);
        let request = self
            .http
            .put(&url)
            .basic_auth(&self.user, Some(&self.password))
            .json(body);
        self.send(what, &url, request).await.map(drop)
    }

    async fn get<T: DeserializeOwned>(&self, what: &str, path: &str) -> Result<T, ManagementError> {
        let url = format!("{}{path}", self.base);
        let request = self
            .http
            .get(&url)
            .basic_auth(&self.user, Some(&self.password));
        let response = self.send(what, &url, request).await?;
        response
            .json()
            .await
            .map_err(|source| ManagementError::Http {
                what: what.into(),
                url,
                source,
            })
    }

    /// GET `path`; a 404 is `None`.
    async fn get_optional<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
    ) -> Result<Option<T>, ManagementError> {
        match self.get(what, path).await {
            Ok(v) => Ok(Some(v)),
            Err(ManagementError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn send(
        &self,
        what: &str,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ManagementError> {
        let response = request.send().await.map_err(|source| {
            if source.is_connect() {
                ManagementError::Unreachable {
                    url: self.base.clone(),
                    source,
                }
            } else {
                ManagementError::Http {
                    what: what.into(),
                    url: url.into(),
                    source,
                }
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(ManagementError::Unauthorized {
                url: self.base.clone(),
                user: self.user.clone(),
            });
        }
        let body = response.text().await.unwrap_or_default();
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_owned))
            .unwrap_or(body);
        Err(ManagementError::Status {
            what: what.into(),
            url: url.into(),
            status: status.as_u16(),
            reason,
        })
    }

    /// Creates `vhost` (nothing changes when it exists).
    ///
    /// # Errors
    /// As [`Management::overview`].
    pub async fn put_vhost(&self, vhost: &str) -> Result<(), ManagementError> {
        let path = format!("/api/vhosts/{}", encode_vhost(vhost));
        self.put(
            &format!("creating vhost '{vhost}'"),
            &path,
            &serde_json::json!({}),
        )
        .await
    }

    /// Deletes `vhost` with everything in it; a vhost that does not exist is not an error.
    ///
    /// # Errors
    /// As [`Management::overview`].
    pub async fn delete_vhost(&self, vhost: &str) -> Result<(), ManagementError> {
        let path = format!("/api/vhosts/{}", encode_vhost(vhost));
        self.delete(&format!("deleting vhost '{vhost}'"), &path)
            .await
    }

    /// DELETE `path`; a 404 (already gone) is success.
    async fn delete(&self, what: &str, path: &str) -> Result<(), ManagementError> {
        let url = format!("{}{path}", self.base);
        let request = self
            .http
            .delete(&url)
            .basic_auth(&self.user, Some(&self.password));
        match self.send(what, &url, request).await {
            Ok(_) | Err(ManagementError::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::SecretUrl;

    fn amqp(url: &str) -> AmqpSettings {
        AmqpSettings {
            url: SecretUrl::new(url),
            heartbeat_secs: 30,
            frame_max: 131072,
            connect_timeout_ms: 1000,
            failover_urls: Vec::new(),
            tls_ca_file: None,
        }
    }

    #[test]
    fn credentials_come_from_the_amqp_url_unless_the_management_url_has_its_own() {
        let m = Management::new(
            &ManagementSettings {
                url: SecretUrl::new("http://127.0.0.1:15672/"),
            },
            &amqp("amqp://ann:s3cret@127.0.0.1:5672/%2f"),
        )
        .expect("client");
        assert_eq!((m.user.as_str(), m.password.as_str()), ("ann", "s3cret"));
        assert_eq!(m.base_url(), "http://127.0.0.1:15672");
        assert!(!format!("{m:?}").contains("s3cret"));

        let m = Management::new(
            &ManagementSettings {
                url: SecretUrl::new("http://admin:pw@mgmt:15672"),
            },
            &amqp("amqp://ann:s3cret@127.0.0.1:5672/%2f"),
        )
        .expect("client");
        assert_eq!((m.user.as_str(), m.password.as_str()), ("admin", "pw"));
        assert_eq!(m.base_url(), "http://mgmt:15672");
    }

    #[tokio::test]
    async fn unreachable_api_says_so_without_the_password() {
        let m = Management::new(
            &ManagementSettings {
                url: SecretUrl::new("http://admin:s3cret@127.0.0.1:1"),
            },
            &amqp("amqp://guest:guest@127.0.0.1:5672/%2f"),
        )
        .expect("client");
        let e = m.overview().await.expect_err("nothing listens on port 1");
        let text = e.to_string();
        assert!(
            text.contains("management API not reachable at http://127.0.0.1:1"),
            "{text}"
        );
        assert!(text.contains("rabbitmq_management"), "{text}");
        assert!(!format!("{e:?}").contains("s3cret"));
    }
}
