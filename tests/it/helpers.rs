//! Shared test helpers: an isolated vhost per test, settings pointing at it, and waiting on
//! conditions with a timeout instead of sleeping.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use burrow::settings::{encode_vhost, SecretUrl, Settings};

/// A vhost that exists for one test and is deleted when dropped.
pub struct TestVhost {
    pub name: String,
    pub settings: Settings,
    http: reqwest::Client,
    api: String,
    user: String,
    password: String,
}

impl TestVhost {
    /// Creates `burrow-test-<label>-<random>` and grants the configured user all rights on it.
    pub async fn new(label: &str) -> Self {
        let mut settings = Settings::load().expect("settings");
        let name = format!(
            "burrow-test-{label}-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let api = settings
            .management
            .url
            .expose()
            .trim_end_matches('/')
            .to_owned();
        let user = settings
            .amqp
            .url
            .username()
            .unwrap_or_else(|| "guest".into());
        let password = settings
            .amqp
            .url
            .password()
            .unwrap_or_else(|| "guest".into());
        let http = reqwest::Client::new();
        let vhost = encode_vhost(&name);
        http.put(format!("{api}/api/vhosts/{vhost}"))
            .basic_auth(&user, Some(&password))
            .json(&serde_json::json!({}))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("creating test vhost (is the management plugin enabled?)");
        http.put(format!("{api}/api/permissions/{vhost}/{user}"))
            .basic_auth(&user, Some(&password))
            .json(&serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("granting permissions on test vhost");
        settings.amqp.url = settings.amqp.url.with_vhost(&name);
        settings.store.dir = std::env::temp_dir().join(&name);
        settings.mail.outbox = settings.store.dir.join("outbox");
        std::fs::create_dir_all(&settings.store.dir).expect("store dir");
        settings.topology = concat!(env!("CARGO_MANIFEST_DIR"), "/topology/shop.toml").into();
        Self {
            name,
            settings,
            http,
            api,
            user,
            password,
        }
    }

    /// The AMQP URL of this vhost.
    pub fn amqp_url(&self) -> &SecretUrl {
        &self.settings.amqp.url
    }

    /// GET a management API path, e.g. `/api/queues/{vhost}/orders.dead`, as JSON.
    pub async fn api_get(&self, path: &str) -> serde_json::Value {
        let path = path.replace("{vhost}", &encode_vhost(&self.name));
        self.http
            .get(format!("{}{}", self.api, path))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .json()
            .await
            .expect("json")
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let url = format!("{}/api/vhosts/{}", self.api, encode_vhost(&self.name));
        let (user, password) = (self.user.clone(), self.password.clone());
        // Drop cannot be async; a blocking client on its own thread cleans up.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ = reqwest::Client::new()
                        .delete(url)
                        .basic_auth(user, Some(password))
                        .send()
                        .await;
                });
            }
        })
        .join();
        let _ = std::fs::remove_dir_all(&self.settings.store.dir);
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
