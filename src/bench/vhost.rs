//! The benchmark's own vhost, `burrow-bench`: created through the management API before a mode
//! runs and deleted after it, so every mode starts on fresh quorum queues and nothing of the
//! benchmark is left on the broker (not even when a mode fails).

use std::time::Duration;

use anyhow::Context;

use crate::settings::{encode_vhost, Settings};

/// The vhost every mode runs in.
pub const BENCH_VHOST: &str = "burrow-bench";

/// A vhost that exists while this value lives.
pub struct BenchVhost {
    http: reqwest::Client,
    api: String,
    user: String,
    password: String,
    /// Settings whose AMQP URL points at the vhost.
    pub settings: Settings,
}

impl BenchVhost {
    /// Deletes any leftover `burrow-bench` (a killed earlier run), creates it afresh and grants
    /// the AMQP user every permission on it.
    ///
    /// # Errors
    /// The management API is unreachable or refuses the login.
    pub async fn create(settings: &Settings) -> anyhow::Result<Self> {
        let mut url = url::Url::parse(settings.management.url.expose())
            .context("parsing the management URL")?;
        let (user, password) = match settings.management.url.username() {
            Some(u) => (u, settings.management.url.password().unwrap_or_default()),
            None => (
                settings
                    .amqp
                    .url
                    .username()
                    .unwrap_or_else(|| "guest".into()),
                settings
                    .amqp
                    .url
                    .password()
                    .unwrap_or_else(|| "guest".into()),
            ),
        };
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let api = url.as_str().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        let amqp_user = settings
            .amqp
            .url
            .username()
            .unwrap_or_else(|| "guest".into());
        let mut bench_settings = settings.clone();
        bench_settings.amqp.url = settings.amqp.url.with_vhost(BENCH_VHOST);
        let vhost = Self {
            http,
            api,
            user,
            password,
            settings: bench_settings,
        };
        vhost.delete().await.with_context(|| {
            format!(
                "the management API at {} does not answer as expected (the benchmark makes a \
                 vhost of its own through it; `rabbitmq-plugins enable rabbitmq_management` \
                 turns it on)",
                vhost.api
            )
        })?;
        let path = format!("/api/vhosts/{}", encode_vhost(BENCH_VHOST));
        vhost
            .send(vhost.http.put(format!("{}{path}", vhost.api)))
            .await
            .context("creating vhost burrow-bench through the management API")?;
        let perms = format!(
            "/api/permissions/{}/{}",
            encode_vhost(BENCH_VHOST),
            encode_vhost(&amqp_user)
        );
        let body = serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"});
        vhost
            .send(vhost.http.put(format!("{}{perms}", vhost.api)).json(&body))
            .await
            .with_context(|| format!("granting {amqp_user} permissions on burrow-bench"))?;
        Ok(vhost)
    }

    /// Deletes the vhost (and so every queue of the mode); a missing vhost is fine.
    ///
    /// # Errors
    /// The management API failed.
    pub async fn delete(&self) -> anyhow::Result<()> {
        let url = format!("{}/api/vhosts/{}", self.api, encode_vhost(BENCH_VHOST));
        let response = self
            .http
            .delete(&url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .context("deleting vhost burrow-bench")?;
        anyhow::ensure!(
            response.status().is_success() || response.status().as_u16() == 404,
            "deleting vhost burrow-bench: HTTP {}",
            response.status()
        );
        Ok(())
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<()> {
        let response = request
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "HTTP {}: {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        Ok(())
    }
}
