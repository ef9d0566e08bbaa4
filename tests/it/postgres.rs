//! The fulfillment store on PostgreSQL: workers on different hosts (here: different SQLite
//! directories) share one database, so each order is fulfilled once and duplicates are
//! suppressed across processes.

use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::{order_body, wait_for, TestVhost};

const LONG: Duration = Duration::from_secs(180);
const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A database that exists for one test and is dropped afterwards.
struct TestDatabase {
    name: String,
}

impl TestDatabase {
    async fn new() -> Self {
        let name = format!(
            "burrow_test_{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        admin(&format!("CREATE DATABASE {name}")).await;
        Self { name }
    }

    fn url(&self) -> String {
        format!("{SERVER}/{}", self.name)
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to test database");
        tokio::spawn(conn);
        client
    }
}

async fn admin(sql: &str) {
    let (client, conn) =
        tokio_postgres::connect(&format!("{SERVER}/postgres"), tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432 (trust auth)");
    tokio::spawn(conn);
    client.batch_execute(sql).await.expect(sql);
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(admin(&sql));
            }
        })
        .join();
    }
}

#[tokio::test]
async fn two_workers_on_one_postgres_database_fulfil_each_of_500_orders_once() {
    let t = TestVhost::new("pg").await.with_fast_topology().await;
    let db = TestDatabase::new().await;
    let url = db.url();
    let dir_a = t.settings.store.dir.join("host-a");
    let dir_b = t.settings.store.dir.join("host-b");
    let (dir_a, dir_b) = (dir_a.display().to_string(), dir_b.display().to_string());
    let _a = t.spawn_worker(
        "fulfillment",
        &[],
        &[
            ("BURROW__STORE__URL", url.as_str()),
            ("BURROW__STORE__DIR", dir_a.as_str()),
        ],
    );
    let _b = t.spawn_worker(
        "fulfillment",
        &[],
        &[
            ("BURROW__STORE__URL", url.as_str()),
            ("BURROW__STORE__DIR", dir_b.as_str()),
        ],
    );
    let orders: Vec<_> = (0..500).map(|_| order_body("SKU-1")).collect();
    let ids: HashSet<String> = orders.iter().map(|(id, _)| id.clone()).collect();
    let duplicate = orders[0].clone();
    t.publish_raw(orders).await;
    t.publish_raw(vec![duplicate.clone()]).await;

    let client = db.client().await;
    let counts = || async {
        client
            .query_one(
                "SELECT COUNT(*), COALESCE(SUM(duplicates), 0)::BIGINT FROM fulfillments",
                &[],
            )
            .await
            .ok()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
    };
    let (fulfilled, duplicates) = wait_for("500 fulfilments and 1 duplicate", LONG, || async {
        counts().await.filter(|&(n, d)| n >= 500 && d >= 1)
    })
    .await;
    assert_eq!(fulfilled, 500);
    assert_eq!(duplicates, 1, "the duplicate publish is suppressed once");
    let rows = client
        .query("SELECT order_id FROM fulfillments", &[])
        .await
        .expect("query");
    let fulfilled: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(fulfilled, ids);
    let dup: i64 = client
        .query_one(
            "SELECT duplicates FROM fulfillments WHERE order_id = $1",
            &[&duplicate.0],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(dup, 1);
    // The library reads the same record back.
    let store = burrow::fulfillment::FulfillmentStore::open(&burrow::settings::StoreSettings {
        dir: t.settings.store.dir.clone(),
        url: Some(burrow::settings::SecretUrl::new(url.as_str())),
        ..t.settings.store.clone()
    })
    .await
    .expect("open the store");
    let records = store.fulfillments().await.expect("read the fulfillments");
    let read: HashSet<String> = records.iter().map(|r| r.order_id.clone()).collect();
    assert_eq!(read, ids);
    let now = chrono::Utc::now();
    assert!(records
        .iter()
        .all(|r| r.fulfilled_at <= now && now - r.fulfilled_at < chrono::TimeDelta::minutes(10)));
    // Neither host wrote a SQLite store: the state is in PostgreSQL only.
    assert!(t.fulfilled_ids().is_empty());
    assert_eq!(t.ready("orders.dead").await, 0);
}
