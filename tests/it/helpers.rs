//! Shared test helpers: an isolated vhost per test, settings pointing at it, and waiting on
//! conditions with a timeout instead of sleeping.

#![allow(dead_code)]

use std::time::Duration;

use burrow::management::{Management, QueueInfo};
use burrow::settings::{SecretUrl, Settings};

pub use crate::common::{fast_topology_text, order_body, wait_for};

/// `producer` arguments that place one valid order (customer `cus_42`, one line of SKU-1).
pub const ONE_ORDER: [&str; 7] = [
    "order",
    "--customer",
    "cus_42",
    "--email",
    "ann@example.com",
    "--item",
    "SKU-1:2:1999",
];

/// A vhost that exists for one test and is deleted when dropped, made and inspected through
/// the one management client ([`burrow::management::Management`]).
pub struct TestVhost {
    pub name: String,
    pub settings: Settings,
    management: Management,
}

impl TestVhost {
    /// Creates `burrow-test-<label>-<random>` and grants the configured user all rights on it.
    pub async fn new(label: &str) -> Self {
        let mut settings = Settings::load().expect("settings");
        let name = format!(
            "burrow-test-{label}-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let management =
            Management::new(&settings.management, &settings.amqp).expect("management client");
        let user = settings
            .amqp
            .url
            .username()
            .unwrap_or_else(|| "guest".into());
        management
            .put_vhost(&name)
            .await
            .expect("creating test vhost (is the management plugin enabled?)");
        management
            .put_permissions(&name, &user, ".*", ".*", ".*")
            .await
            .expect("granting permissions on test vhost");
        settings.amqp.url = settings.amqp.url.with_vhost(&name);
        settings.store.dir = std::env::temp_dir().join(&name);
        settings.mail.outbox = settings.store.dir.join("outbox");
        std::fs::create_dir_all(&settings.store.dir).expect("store dir");
        settings.topology = crate::common::SHOP_TOPOLOGY.into();
        Self {
            name,
            settings,
            management,
        }
    }

    /// The AMQP URL of this vhost.
    pub fn amqp_url(&self) -> &SecretUrl {
        &self.settings.amqp.url
    }

    /// A management API client acting as the configured (administrator) user.
    pub fn management(&self) -> Management {
        self.management.clone()
    }

    /// `queue` of this vhost as the management API shows it; panics when it does not exist.
    pub async fn queue_info(&self, queue: &str) -> QueueInfo {
        self.management
            .queue(&self.name, queue)
            .await
            .unwrap_or_else(|e| panic!("reading queue {queue}: {e}"))
            .unwrap_or_else(|| panic!("queue {queue} does not exist"))
    }

    /// Deletes `queue` of this vhost through the management API.
    pub async fn delete_queue(&self, queue: &str) {
        self.management
            .delete_queue(&self.name, queue)
            .await
            .unwrap_or_else(|e| panic!("deleting queue {queue}: {e}"));
    }

    /// Deletes `exchange` of this vhost through the management API.
    pub async fn delete_exchange(&self, exchange: &str) {
        self.management
            .delete_exchange(&self.name, exchange)
            .await
            .unwrap_or_else(|e| panic!("deleting exchange {exchange}: {e}"));
    }

    /// Closes every client connection to this vhost, as an operator (or a node restart)
    /// would; returns how many there were.
    pub async fn close_connections(&self) -> usize {
        let connections = self
            .management
            .connections(&self.name)
            .await
            .expect("listing connections");
        for c in &connections {
            self.management
                .close_connection(&c.name)
                .await
                .unwrap_or_else(|e| panic!("closing connection {}: {e}", c.name));
        }
        connections.len()
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let name = self.name.clone();
        let settings = self.settings.clone();
        // Drop cannot be async; a client of its own on its own thread cleans up (the test's
        // client belongs to the test's runtime, which this thread blocks).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let (Ok(rt), Ok(management)) =
                (rt, Management::new(&settings.management, &settings.amqp))
            {
                let _ = rt.block_on(management.delete_vhost(&name));
            }
        })
        .join();
        let _ = std::fs::remove_dir_all(&self.settings.store.dir);
    }
}

impl TestVhost {
    /// Writes the fast topology into this test's directory, points the settings at it and
    /// declares it.
    pub async fn with_fast_topology(mut self) -> Self {
        let path = self.settings.store.dir.join("shop.toml");
        std::fs::write(&path, fast_topology_text()).expect("writing test topology");
        self.settings.topology = path;
        self.apply_topology().await;
        self
    }

    /// Declares the settings' topology in this vhost.
    pub async fn apply_topology(&self) {
        let topology = burrow::topology::Topology::load(&self.settings.topology).expect("topology");
        let conn = self.connect().await;
        let report = burrow::topology::apply(&conn, &topology)
            .await
            .expect("apply");
        assert!(
            report.drift.is_empty(),
            "unexpected drift: {:?}",
            report.drift
        );
        let _ = conn.close(200, "done".into()).await;
    }

    /// A plain lapin connection to this vhost.
    pub async fn connect(&self) -> lapin::Connection {
        burrow::broker::connect(&self.settings.amqp, "test")
            .await
            .expect("connect to test vhost")
    }

    /// Environment that points a burrow binary at this vhost and directory.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "AMQP_URL".into(),
                self.settings.amqp.url.expose().to_owned(),
            ),
            (
                "BURROW__TOPOLOGY".into(),
                self.settings.topology.display().to_string(),
            ),
            (
                "BURROW__STORE__DIR".into(),
                self.settings.store.dir.display().to_string(),
            ),
            (
                "BURROW__MAIL__OUTBOX".into(),
                self.settings.mail.outbox.display().to_string(),
            ),
            (
                "RUST_LOG".into(),
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        ]
    }

    /// The `worker <service> <args>` command against this vhost, with extra environment.
    pub fn worker_command(
        &self,
        service: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_worker"));
        cmd.arg(service)
            .args(args)
            .envs(self.env())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts `worker <service>` against this vhost with extra arguments and environment; it
    /// logs to the test's stderr when `TEST_LOG` is set.
    pub fn spawn_worker(&self, service: &str, args: &[&str], env: &[(&str, &str)]) -> Worker {
        let mut cmd = self.worker_command(service, args, env);
        if std::env::var_os("TEST_LOG").is_none() {
            cmd.stderr(std::process::Stdio::null());
        }
        Worker::spawn(service, cmd).expect("spawning worker")
    }

    /// Runs `producer` with `args` against this vhost; returns (exit code, stdout, stderr).
    pub fn producer(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        use std::io::Write;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_producer"));
        cmd.args(args)
            .envs(self.env())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawning producer");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("writing stdin");
        }
        drop(input);
        let out = child.wait_with_output().expect("producer output");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `burrow` with `args` against this vhost; returns (exit code, stdout, stderr).
    pub fn burrow(&self, args: &[&str]) -> (i32, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
            .args(args)
            .envs(self.env())
            .output()
            .expect("running burrow");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Publishes `messages` (exchange, routing key, body, properties) confirmed.
    pub async fn publish_messages(&self, messages: Vec<burrow::publisher::Outgoing>) {
        use burrow::publisher::{BulkPublisher, Confirm};
        let pool = burrow::broker::pool(&self.settings.amqp, "test publisher").expect("pool");
        let mut confirmed = 0usize;
        let mut total = 0usize;
        BulkPublisher::new(pool, 256, None)
            .run(messages, |_, fate| {
                total += 1;
                if *fate == Confirm::Confirmed {
                    confirmed += 1;
                }
            })
            .await
            .expect("publish");
        assert_eq!(confirmed, total, "every test publish is confirmed");
    }

    /// Messages ready in `queue` (not counting unacked ones).
    pub async fn ready(&self, queue: &str) -> u32 {
        let conn = self.connect().await;
        let q = burrow::broker::queue_state(&conn, queue)
            .await
            .unwrap_or_else(|e| panic!("passive declare of {queue}: {e}"));
        let _ = conn.close(200, "done".into()).await;
        q.message_count()
    }

    /// Takes every message out of `queue` (acking them) and returns them.
    pub async fn drain(&self, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
        let conn = self.connect().await;
        let out = crate::common::drain_queue(&conn, queue).await;
        let _ = conn.close(200, "done".into()).await;
        out
    }

    /// Publishes orders straight to the `orders` exchange as any AMQP client would, confirmed.
    pub async fn publish_raw(&self, bodies: Vec<(String, Vec<u8>)>) {
        let msgs = bodies
            .into_iter()
            .map(|(id, body)| burrow::publisher::Outgoing {
                exchange: "orders".into(),
                routing_key: "order.placed".into(),
                body,
                properties: burrow::message::properties("order", &id),
                label: 0,
            })
            .collect();
        self.publish_messages(msgs).await;
    }

    /// The fulfillment store of this test's directory.
    pub fn fulfilled_ids(&self) -> Vec<String> {
        let path = self.settings.store.dir.join("fulfillment.db");
        if !path.exists() {
            return Vec::new();
        }
        let conn = rusqlite::Connection::open(path).expect("open store");
        conn.busy_timeout(Duration::from_secs(10)).ok();
        let mut stmt = match conn.prepare("SELECT order_id FROM fulfillments") {
            Ok(s) => s,
            Err(_) => return Vec::new(),
        };
        stmt.query_map([], |r| r.get(0))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    }

    /// (fulfilled, duplicates suppressed) in this test's store.
    pub fn store_counts(&self) -> (u64, u64) {
        let path = self.settings.store.dir.join("fulfillment.db");
        if !path.exists() {
            return (0, 0);
        }
        let conn = rusqlite::Connection::open(path).expect("open store");
        conn.busy_timeout(Duration::from_secs(10)).ok();
        conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(duplicates),0) FROM fulfillments",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .unwrap_or((0, 0))
    }
}

/// A worker child process, killed if the test ends without stopping it.
pub type Worker = burrow::children::Process;

/// A dead letter as the worker makes one: an order body published to `orders.dlx` with the
/// reason, attempts, source queue and time of failure.
pub fn dead_letter(reason: &str, attempts: i64) -> (String, burrow::publisher::Outgoing) {
    use burrow::message::{
        string_value, HEADER_ATTEMPTS, HEADER_ERROR, HEADER_FAILED_AT, HEADER_SOURCE_QUEUE,
    };
    use lapin::types::{AMQPValue, FieldTable};
    let (id, body) = order_body("SKU-1");
    let mut headers = FieldTable::default();
    headers.insert(HEADER_ERROR.into(), string_value(reason));
    headers.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongLongInt(attempts));
    headers.insert(
        HEADER_SOURCE_QUEUE.into(),
        string_value("orders.fulfillment"),
    );
    headers.insert(
        HEADER_FAILED_AT.into(),
        string_value(&chrono::Utc::now().to_rfc3339()),
    );
    let msg = burrow::publisher::Outgoing {
        exchange: "orders.dlx".into(),
        routing_key: "order.placed".into(),
        body,
        properties: burrow::message::properties("order", &id).with_headers(headers),
        label: 0,
    };
    (id, msg)
}
