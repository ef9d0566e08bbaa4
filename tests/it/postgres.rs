//! The fulfillment store on PostgreSQL: workers on different hosts (here: different SQLite
//! directories) share one database, so each order is fulfilled once and duplicates are
//! suppressed across processes; terminated sessions are replaced; `/readyz` tells whether the
//! broker and the store answer.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::{pg_admin, TestDatabase};
use crate::helpers::{order_body, wait_for, TestVhost};
use crate::services::ServiceProcess;

const LONG: Duration = Duration::from_secs(180);

#[tokio::test]
async fn two_workers_on_one_postgres_database_fulfil_each_of_500_orders_once() {
    let t = TestVhost::new("pg").await.with_fast_topology().await;
    let db = TestDatabase::new("burrow_test").await;
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

/// Fulfilled orders in the test database (None while the table does not exist yet).
async fn fulfilled(client: &tokio_postgres::Client) -> Option<i64> {
    client
        .query_one("SELECT COUNT(*) FROM fulfillments", &[])
        .await
        .ok()
        .map(|r| r.get(0))
}

/// Terminates every session on `database` but the caller's; returns how many.
async fn terminate_sessions(client: &tokio_postgres::Client, database: &str) -> i64 {
    client
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&database],
        )
        .await
        .expect("pg_terminate_backend")
        .get(0)
}

/// The value of a counter in a worker's `/metrics`.
async fn metric(worker: &ServiceProcess, name: &str) -> Option<f64> {
    worker.text("/metrics").await.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.parse().ok())?
    })
}

#[tokio::test]
async fn terminated_postgres_sessions_are_replaced_and_each_order_is_fulfilled_once() {
    const N: usize = 2000;
    let t = TestVhost::new("pgkill").await.with_fast_topology().await;
    let db = TestDatabase::new("burrow_test").await;
    let url = db.url();
    let worker = t
        .spawn_service(
            "fulfillment",
            &[],
            &[
                ("BURROW__STORE__URL", url.as_str()),
                // About 800 orders/s with 16 handlers: the stream lasts a few seconds.
                ("BURROW__CARRIER__LATENCY_MS", "20"),
            ],
        )
        .await;
    let orders: Vec<_> = (0..N).map(|_| order_body("SKU-1")).collect();
    let ids: HashSet<String> = orders.iter().map(|(id, _)| id.clone()).collect();
    t.publish_raw(orders).await;

    let client = db.client().await;
    let mut mid_stream = 0;
    for step in 1..=4 {
        let threshold = i64::try_from(N * step / 5).unwrap();
        let done = wait_for(&format!("{threshold} fulfilments"), LONG, || async {
            fulfilled(&client).await.filter(|&n| n >= threshold)
        })
        .await;
        let killed = terminate_sessions(&client, &db.name).await;
        println!("after {done} fulfilments: terminated {killed} sessions");
        if killed > 0 && done < i64::try_from(N).unwrap() {
            mid_stream += 1;
        }
    }
    assert!(
        mid_stream >= 3,
        "the worker's sessions were terminated mid-stream only {mid_stream} times"
    );

    let done = wait_for("every order fulfilled", LONG, || async {
        fulfilled(&client)
            .await
            .filter(|&n| n >= i64::try_from(N).unwrap())
    })
    .await;
    assert_eq!(done, i64::try_from(N).unwrap());
    let rows = client
        .query("SELECT order_id FROM fulfillments", &[])
        .await
        .expect("query");
    let recorded: HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        recorded, ids,
        "each order fulfilled, once (order_id is the key)"
    );
    assert_eq!(t.ready("orders.dead").await, 0, "nothing dead-lettered");
    assert_eq!(
        metric(&worker, "burrow_carrier_bookings_total").await,
        Some(N as f64),
        "one shipment booked per order"
    );
    worker.stop().await;
}

/// A local port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// `/readyz`: the status code and the JSON body.
async fn readyz(worker: &ServiceProcess) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("{}/readyz", worker.base))
        .await
        .expect("GET /readyz");
    let status = response.status().as_u16();
    (status, response.json().await.expect("/readyz answers JSON"))
}

#[tokio::test]
async fn readyz_answers_503_while_the_store_or_the_broker_is_unreachable() {
    let t = TestVhost::new("readyz").await;
    let db = TestDatabase::new("burrow_test").await;
    let url = db.url();
    let closed = closed_port();

    let healthy = t
        .spawn_service("fulfillment", &[], &[("BURROW__STORE__URL", url.as_str())])
        .await;
    let body = wait_for("/readyz 200", LONG, || async {
        let (status, body) = readyz(&healthy).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(body["ready"], true);
    assert_eq!(body["checks"]["broker"], "ok");
    assert_eq!(body["checks"]["store"], "ok");

    let store_url = format!("postgres://postgres:secret@127.0.0.1:{closed}/nowhere");
    let no_store = t
        .spawn_service(
            "fulfillment",
            &[],
            &[("BURROW__STORE__URL", store_url.as_str())],
        )
        .await;
    let (status, body) = readyz(&no_store).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["broker"], "ok", "{body}");
    let reason = body["checks"]["store"].as_str().unwrap_or_default();
    assert!(reason.contains("cannot connect to PostgreSQL"), "{reason}");
    assert!(
        !reason.contains("secret"),
        "the password is not shown: {reason}"
    );
    assert_eq!(
        no_store.text("/healthz").await,
        "ok\n",
        "alive all the same"
    );

    let amqp_url = format!("amqp://guest:guest@127.0.0.1:{closed}/%2f");
    let no_broker = t
        .spawn_service("fulfillment", &[], &[("AMQP_URL", amqp_url.as_str())])
        .await;
    let (status, body) = readyz(&no_broker).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["store"], "ok", "{body}");
    assert_ne!(body["checks"]["broker"], "ok", "{body}");
    assert_eq!(no_broker.text("/healthz").await, "ok\n");

    // The store goes away under a ready worker: it turns unready.
    pg_admin(&format!("DROP DATABASE {} WITH (FORCE)", db.name)).await;
    let body = wait_for("/readyz 503 once the database is gone", LONG, || async {
        let (status, body) = readyz(&healthy).await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body["checks"]["broker"], "ok", "{body}");
    assert_ne!(body["checks"]["store"], "ok", "{body}");
}

#[tokio::test]
async fn the_postgres_store_forgets_records_past_the_window_in_batches_and_keeps_fresh_ones() {
    let db = TestDatabase::new("burrow_test").await;
    let settings = burrow::settings::Settings::load().expect("settings");
    let store = burrow::fulfillment::FulfillmentStore::open(&burrow::settings::StoreSettings {
        url: Some(burrow::settings::SecretUrl::new(db.url().as_str())),
        ..settings.store
    })
    .await
    .expect("open the store");
    // Creates the schema; then 1,200 records are made old and one fresh one is added.
    store.counts().await.expect("counts");
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO fulfillments (order_id, shipment_id, fulfilled_at)
             SELECT 'old_' || i, 'shp', now() - interval '2 days' FROM generate_series(1, 1200) i;
             INSERT INTO fulfillments (order_id, shipment_id) VALUES ('fresh', 'shp');",
        )
        .await
        .expect("seed records");
    let purged = store
        .purge(Duration::from_secs(24 * 3600))
        .await
        .expect("purge");
    assert_eq!(purged, 1200);
    assert!(store.contains("fresh").await.expect("contains"));
    assert!(!store.contains("old_7").await.expect("contains"));
    assert_eq!(store.counts().await.expect("counts").fulfilled, 1);
}

#[tokio::test]
async fn stores_started_together_on_an_empty_database_all_create_the_schema() {
    let db = TestDatabase::new("burrow_test").await;
    let settings = burrow::settings::Settings::load().expect("settings");
    let opened = (0..8).map(|_| {
        let store_settings = burrow::settings::StoreSettings {
            url: Some(burrow::settings::SecretUrl::new(db.url().as_str())),
            ..settings.store.clone()
        };
        async move {
            let store = burrow::fulfillment::FulfillmentStore::open(&store_settings).await?;
            store.counts().await
        }
    });
    for result in futures::future::join_all(opened).await {
        let counts = result.expect("every store creates or finds the schema");
        assert_eq!(counts.fulfilled, 0);
    }
}
