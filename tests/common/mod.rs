//! Helpers shared by the test binaries (`tests/it`, `tests/faults`): waiting on a condition,
//! the shop topology with a fast retry ladder, a valid order body, and emptying a queue.

#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

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

/// `topology/shop.toml`.
pub const SHOP_TOPOLOGY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/topology/shop.toml");

/// The delay of step `rank` (0 = the shortest) of the tests' retry ladders: 100, 200, 300 ms…
pub fn fast_delay(rank: usize) -> Duration {
    Duration::from_millis(100 * (rank as u64 + 1))
}

/// The shop topology with the same names and the fast retry ladders of [`fast_delay`].
pub fn fast_topology() -> burrow::topology::Topology {
    burrow::topology::Topology::parse(&fast_topology_text()).expect("the fast topology is valid")
}

/// [`fast_topology`] as the text of a topology file, for the binaries a test starts.
///
/// The retry steps come from the typed topology (every ladder, shortest step first); each
/// step's `delay` is set in the parsed document and its `x-message-ttl` left to follow from it.
pub fn fast_topology_text() -> String {
    use burrow::topology::Topology;
    use toml::Value;
    let text = std::fs::read_to_string(SHOP_TOPOLOGY).expect("reading topology/shop.toml");
    let shop = Topology::parse(&text).expect("topology/shop.toml is valid");
    let fast: std::collections::HashMap<String, Duration> = shop
        .queues
        .iter()
        .filter(|q| q.retry.is_none())
        .flat_map(|q| shop.retry_ladder(&q.name).into_iter().enumerate())
        .map(|(rank, step)| (step.queue, fast_delay(rank)))
        .collect();
    let mut doc: toml::Table = text.parse().expect("topology/shop.toml is TOML");
    let queues = doc
        .get_mut("queues")
        .and_then(Value::as_array_mut)
        .expect("topology/shop.toml has [[queues]]");
    for queue in queues.iter_mut().filter_map(Value::as_table_mut) {
        let name = queue
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(delay) = fast.get(name) else {
            continue;
        };
        queue.insert("delay".into(), format!("{}ms", delay.as_millis()).into());
        if let Some(arguments) = queue.get_mut("arguments").and_then(Value::as_table_mut) {
            arguments.remove("x-message-ttl");
        }
    }
    toml::to_string(&doc).expect("writing the fast topology")
}

/// A valid order body with a fresh id.
pub fn order_body(sku: &str) -> (String, Vec<u8>) {
    let id = burrow::message::new_id("ord");
    let order = serde_json::json!({
        "order_id": id, "customer_id": "cus_42", "email": "ann@example.com",
        "items": [{"sku": sku, "quantity": 2, "unit_price_cents": 1999}],
        "currency": "EUR", "placed_at": "2026-11-28T05:00:00Z"
    });
    (id, order.to_string().into_bytes())
}

/// Takes every message out of `queue` on a channel of `conn` (no-ack) and returns them.
pub async fn drain_queue(
    conn: &lapin::Connection,
    queue: &str,
) -> Vec<lapin::message::BasicGetMessage> {
    let ch = conn.create_channel().await.expect("channel");
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
    {
        out.push(m);
    }
    out
}

/// Whether this process runs as root (the effective uid in /proc/self/status), as the tests that
/// start private servers through `runuser` need.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The system PostgreSQL server (trust auth, user `postgres`); tests use databases of their own.
pub const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// Runs `sql` on the server's `postgres` database (creating and dropping test databases).
pub async fn pg_admin(sql: &str) {
    let (client, conn) =
        tokio_postgres::connect(&format!("{PG_SERVER}/postgres"), tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432 (trust auth, user postgres)");
    tokio::spawn(conn);
    client.batch_execute(sql).await.expect(sql);
}

/// A database that exists for one test and is dropped (with its sessions) afterwards.
pub struct TestDatabase {
    pub name: String,
}

impl TestDatabase {
    /// Creates `<prefix>_<ulid>`.
    pub async fn new(prefix: &str) -> Self {
        let name = format!("{prefix}_{}", ulid::Ulid::new().to_string().to_lowercase());
        pg_admin(&format!("CREATE DATABASE {name}")).await;
        Self { name }
    }

    pub fn url(&self) -> String {
        format!("{PG_SERVER}/{}", self.name)
    }

    /// A session of the test's own.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to test database");
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(pg_admin(&sql));
            }
        })
        .join();
    }
}
