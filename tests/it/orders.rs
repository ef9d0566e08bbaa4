//! The order service (`producer serve`): the API's answers, idempotency keys, the outbox and
//! its relay, against the real broker (a vhost of the test's own) and, for two processes on
//! one database, the real PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

use burrow::orders::{OrderStatus, ServeOptions};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::common::TestDatabase;
use crate::helpers::{wait_for, TestVhost};

const LONG: Duration = Duration::from_secs(120);

/// An order-service instance in this test process, stopped when dropped.
struct Service {
    base: String,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Service {
    async fn start(settings: burrow::settings::Settings) -> Self {
        let stop = CancellationToken::new();
        let running = burrow::orders::start(
            settings,
            ServeOptions {
                http: "127.0.0.1:0".parse().unwrap(),
                events: true,
                announce: false,
            },
            stop.clone(),
        )
        .await
        .expect("starting the order service");
        Self::at(running.addr.to_string(), stop)
    }

    fn at(addr: String, stop: CancellationToken) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            stop,
        }
    }

    /// POST /orders with `key` (none when `None`) and a raw body: (status, JSON or text).
    async fn post_raw(&self, key: Option<&str>, body: Vec<u8>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/orders", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await.expect("POST /orders");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, key: &str, order: &Value) -> (u16, Value) {
        self.post_raw(Some(key), order.to_string().into_bytes())
            .await
    }

    /// POST /orders that must be accepted; returns the order id.
    async fn place(&self, key: &str, order: &Value) -> String {
        let (status, body) = self.post(key, order).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["status"], "accepted");
        body["order_id"].as_str().expect("order_id").to_owned()
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn status(&self, order_id: &str) -> Option<String> {
        let (code, body) = self.get(&format!("/orders/{order_id}")).await;
        (code == 200).then(|| body["status"].as_str().unwrap_or_default().to_owned())
    }

    /// The value of metric `name` on /metrics.
    async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await;
        let text = body.as_str().unwrap_or_default().to_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
    }

    async fn wait_status(&self, order_id: &str, status: OrderStatus) {
        wait_for(&format!("order {order_id} {status}"), LONG, || async {
            (self.status(order_id).await.as_deref() == Some(status.as_str())).then_some(())
        })
        .await;
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn order_json(customer: &str) -> Value {
    json!({
        "customer_id": customer,
        "email": "ann@example.com",
        "items": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1999}],
        "currency": "EUR"
    })
}

/// Deliveries in `queue` per message id (each message taken out of the queue).
async fn deliveries_by_id(t: &TestVhost, queue: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for m in t.drain(queue).await {
        let id = m
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        *counts.entry(id).or_default() += 1;
    }
    counts
}

/// Asserts that `counts` holds each of `ids` exactly once and nothing else, naming the
/// exceptions only.
fn assert_each_once(counts: &HashMap<String, usize>, ids: &[String]) {
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
    let strangers: Vec<_> = counts.keys().filter(|id| !ids.contains(id)).collect();
    assert!(
        twice.is_empty() && missing.is_empty() && strangers.is_empty(),
        "{} of {} more than once: {twice:?}; missing: {missing:?}; unknown: {strangers:?}",
        twice.len(),
        ids.len()
    );
}

#[tokio::test]
async fn the_api_refuses_bad_requests_and_answers_a_repeated_key_with_the_same_order() {
    let t = TestVhost::new("orders-api")
        .await
        .with_fast_topology()
        .await;
    let svc = Service::start(t.settings.clone()).await;
    let order = order_json("cus_1");

    let (code, body) = svc.post_raw(None, order.to_string().into_bytes()).await;
    assert_eq!(code, 400, "no key: {body}");
    assert!(body["error"].as_str().unwrap().contains("Idempotency-Key"));

    let (code, body) = svc
        .post_raw(Some("k-bad"), b"{\"customer_id\": ".to_vec())
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("malformed JSON"),
        "{body}"
    );

    let mut invalid = order.clone();
    invalid["items"][0]["quantity"] = json!(0);
    let (code, body) = svc.post("k-invalid", &invalid).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["field"], "items[0].quantity");
    assert!(body["rule"].as_str().unwrap().contains("1..=1000"));

    let (code, _) = svc.post_raw(Some("k-big"), vec![b' '; 65 * 1024]).await;
    assert_eq!(code, 413);

    let id = svc.place("k-1", &order).await;
    let (code, body) = svc.post("k-1", &order).await;
    assert_eq!(code, 200, "same key, same body: {body}");
    assert_eq!(body["order_id"], id.as_str());

    let (code, body) = svc.post("k-1", &order_json("cus_2")).await;
    assert_eq!(code, 422, "same key, other body: {body}");
    assert_eq!(body["order_id"], id.as_str());

    let (code, _) = svc.get("/orders/ord_unknown").await;
    assert_eq!(code, 404);

    // Refused requests stored nothing: only the one order (and its event) was relayed.
    svc.wait_status(&id, OrderStatus::Published).await;
    let orders = deliveries_by_id(&t, "orders.fulfillment").await;
    assert_eq!(orders, HashMap::from([(id.clone(), 1)]));
}

#[tokio::test]
async fn an_accepted_order_is_published_once_with_its_event_as_the_producer_sends_them() {
    let t = TestVhost::new("orders-relay")
        .await
        .with_fast_topology()
        .await;
    let svc = Service::start(t.settings.clone()).await;
    let ids: Vec<String> = futures::future::join_all((0..20).map(|i| {
        let svc = &svc;
        async move {
            svc.place(&format!("key-{i}"), &order_json(&format!("cus_{i}")))
                .await
        }
    }))
    .await;
    for id in &ids {
        svc.wait_status(id, OrderStatus::Published).await;
    }
    let orders = t.drain("orders.fulfillment").await;
    assert_eq!(orders.len(), ids.len());
    let mut traces = HashMap::new();
    for m in &orders {
        let order: burrow::message::Order = serde_json::from_slice(&m.data).expect("an order body");
        let p = &m.properties;
        assert_eq!(
            p.message_id().as_ref().map(|s| s.to_string()),
            Some(order.order_id.clone())
        );
        assert_eq!(
            p.kind().as_ref().map(|s| s.to_string()).as_deref(),
            Some("order")
        );
        assert_eq!(p.delivery_mode(), &Some(2));
        let tp = burrow::message::header_str(p.headers().as_ref(), "traceparent")
            .expect("a traceparent");
        traces.insert(order.order_id, tp);
    }
    // Each order's `order.placed` event went through the outbox too, in the same trace.
    let events = t.drain("activity.analytics").await;
    assert_eq!(events.len(), ids.len());
    for e in &events {
        let event: burrow::message::ActivityEvent = serde_json::from_slice(&e.data).unwrap();
        let order_id = event
            .order_id
            .clone()
            .expect("order.placed names its order");
        let tp = burrow::message::header_str(e.properties.headers().as_ref(), "traceparent");
        assert_eq!(tp.as_ref(), traces.get(&order_id));
    }
    wait_for("an empty outbox", LONG, || async {
        (svc.metric("burrow_outbox_depth").await == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(svc.metric("burrow_outbox_relayed_total").await, Some(40.0));
}

#[tokio::test]
async fn orders_are_accepted_while_the_broker_is_unreachable_and_the_outbox_grows() {
    let t = TestVhost::new("orders-down").await;
    let mut settings = t.settings.clone();
    // Nothing listens on port 1.
    settings.amqp.url = burrow::settings::SecretUrl::new("amqp://guest:guest@127.0.0.1:1/%2f");
    settings.amqp.connect_timeout_ms = 500;
    let svc = Service::start(settings).await;
    let (code, ready) = svc.get("/readyz").await;
    assert_eq!(code, 200, "ready while the store answers: {ready}");
    assert_eq!(ready["checks"]["store"], "ok");
    assert_ne!(ready["checks"]["broker"], "ok", "{ready}");
    for i in 0..5 {
        let id = svc.place(&format!("down-{i}"), &order_json("cus_1")).await;
        assert_eq!(svc.status(&id).await.as_deref(), Some("accepted"));
    }
    wait_for("the outbox depth on /metrics", LONG, || async {
        // Five orders, each with its `order.placed` event.
        (svc.metric("burrow_outbox_depth").await == Some(10.0)).then_some(())
    })
    .await;
}

#[cfg(feature = "test-hooks")]
#[tokio::test]
async fn a_service_killed_between_commit_and_publish_loses_nothing_and_publishes_nothing_twice() {
    let t = TestVhost::new("orders-kill")
        .await
        .with_fast_topology()
        .await;
    let port = free_port();
    let spawn = |hook: bool| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_producer"));
        cmd.args(["serve", "--http", &format!("127.0.0.1:{port}")])
            .envs(t.env())
            .env("BURROW__ORDERS__RELAY_LEASE_MS", "500")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        if std::env::var_os("TEST_LOG").is_none() {
            cmd.stderr(std::process::Stdio::null());
        }
        if hook {
            cmd.env("BURROW_TEST_ABORT_RELAY_SKUS", "SKU-KILL");
        }
        cmd.kill_on_drop(true)
            .spawn()
            .expect("spawning producer serve")
    };
    let svc = Service::at(format!("127.0.0.1:{port}"), CancellationToken::new());
    let mut first = spawn(true);
    wait_for("the API", LONG, || async {
        svc.http
            .get(format!("{}/healthz", svc.base))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(svc.place(&format!("k-{i}"), &order_json("cus_1")).await);
    }
    let mut doomed = order_json("cus_2");
    doomed["items"][0]["sku"] = json!("SKU-KILL");
    // The commit is answered, or the process dies first: either way the key finds it later.
    let _ = svc.post("k-doomed", &doomed).await;
    let status = tokio::time::timeout(LONG, first.wait())
        .await
        .expect("the relay hook kills the service")
        .expect("exit status");
    assert!(!status.success());

    let _second = spawn(false);
    wait_for("the restarted API", LONG, || async {
        svc.http
            .get(format!("{}/healthz", svc.base))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let (code, body) = svc.post("k-doomed", &doomed).await;
    assert_eq!(code, 200, "the killed order was committed: {body}");
    ids.push(body["order_id"].as_str().unwrap().to_owned());
    for id in &ids {
        svc.wait_status(id, OrderStatus::Published).await;
    }
    assert_each_once(&deliveries_by_id(&t, "orders.fulfillment").await, &ids);
}

#[tokio::test]
async fn two_services_on_one_postgres_database_publish_each_row_once() {
    let t = TestVhost::new("orders-pg").await.with_fast_topology().await;
    let db = TestDatabase::new("burrow_orders").await;
    let mut settings = t.settings.clone();
    settings.store.url = Some(burrow::settings::SecretUrl::new(db.url()));
    settings.orders.relay_batch = 16;
    let a = Service::start(settings.clone()).await;
    let b = Service::start(settings).await;
    let ids: Vec<String> = futures::future::join_all((0..300).map(|i| {
        let svc = if i % 2 == 0 { &a } else { &b };
        async move {
            svc.place(&format!("pg-{i}"), &order_json(&format!("cus_{i}")))
                .await
        }
    }))
    .await;
    // Either service answers for any order: they share the database.
    for id in &ids {
        a.wait_status(id, OrderStatus::Published).await;
    }
    assert_each_once(&deliveries_by_id(&t, "orders.fulfillment").await, &ids);
    // Both relays took part.
    let (ra, rb) = (
        a.metric("burrow_outbox_relayed_total").await.unwrap_or(0.0),
        b.metric("burrow_outbox_relayed_total").await.unwrap_or(0.0),
    );
    assert_eq!(ra + rb, 600.0, "a {ra}, b {rb}");
}

#[tokio::test]
async fn a_relay_reading_small_batches_ahead_publishes_every_row_once() {
    let t = TestVhost::new("orders-batches")
        .await
        .with_fast_topology()
        .await;
    let mut settings = t.settings.clone();
    // 400 rows in batches of 7: each read starts while the rows before it are in flight.
    settings.orders.relay_batch = 7;
    let svc = Service::start(settings).await;
    let mut ids = Vec::new();
    for chunk in 0..10 {
        let placed = futures::future::join_all((0..20).map(|i| {
            let svc = &svc;
            async move {
                svc.place(&format!("b-{chunk}-{i}"), &order_json(&format!("cus_{i}")))
                    .await
            }
        }))
        .await;
        ids.extend(placed);
    }
    for id in &ids {
        svc.wait_status(id, OrderStatus::Published).await;
    }
    assert_each_once(&deliveries_by_id(&t, "orders.fulfillment").await, &ids);
    // Each order and its event, marked once.
    wait_for("400 rows relayed", LONG, || async {
        (svc.metric("burrow_outbox_relayed_total").await == Some(400.0)).then_some(())
    })
    .await;
}

#[cfg(feature = "test-hooks")]
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test]
async fn an_order_becomes_fulfilled_on_its_event_and_dead_lettered_when_it_fails_for_good() {
    let t = TestVhost::new("orders-status")
        .await
        .with_fast_topology()
        .await;
    let svc = Service::start(t.settings.clone()).await;
    let _worker = t.spawn_worker(
        "fulfillment",
        &["--carrier-latency-ms", "1"],
        &[("BURROW__CARRIER__ALWAYS_FAIL_SKUS", "SKU-FAIL")],
    );
    let good = svc.place("good", &order_json("cus_1")).await;
    let mut failing = order_json("cus_2");
    failing["items"][0]["sku"] = json!("SKU-FAIL");
    let bad = svc.place("bad", &failing).await;
    svc.wait_status(&good, OrderStatus::Fulfilled).await;
    svc.wait_status(&bad, OrderStatus::DeadLettered).await;
    // The operators' copy of the dead letter stays in orders.dead.
    let dead = deliveries_by_id(&t, "orders.dead").await;
    assert_eq!(dead.get(&bad), Some(&1), "{dead:?}");
    // A final status stays final: the relay's `published` does not overwrite it.
    assert_eq!(svc.status(&good).await.as_deref(), Some("fulfilled"));
}

/// Stores three orders in `store`, publishes the first two (claim, then mark published) and
/// purges with a zero window: the published rows go, the third order's stay for its relay.
async fn purge_keeps_unpublished_rows(store: burrow::orders::OrderStore) {
    use burrow::orders::outbox::OutboxMessage;
    use burrow::orders::store::{Acceptance, NewOrder};
    let mut ids = Vec::new();
    for i in 0..3 {
        let order = burrow::message::Order {
            order_id: burrow::message::new_id("ord"),
            customer_id: format!("cus_{i}"),
            email: "ann@example.com".into(),
            items: vec![burrow::message::OrderItem {
                sku: "SKU-1".into(),
                quantity: 1,
                unit_price_cents: 100,
            }],
            currency: "EUR".into(),
            placed_at: chrono::Utc::now(),
        };
        let messages = burrow::producer::order_messages(&order, true)
            .into_iter()
            .map(|m| OutboxMessage::from_outgoing(&order.order_id, m))
            .collect();
        let accepted = store
            .accept(NewOrder {
                key: format!("purge-{i}-{}", order.order_id),
                request_hash: "h".into(),
                order_id: order.order_id.clone(),
                messages,
            })
            .await
            .expect("accept");
        assert_eq!(accepted, Acceptance::New);
        ids.push(order.order_id);
    }
    // The first two orders' rows (an order and its event each).
    let claimed = store
        .claim("purge-test", 0, 4, Duration::from_secs(10))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 4);
    store
        .published(claimed.iter().map(|m| m.id).collect())
        .await
        .expect("published");
    assert_eq!(store.stats().await.expect("stats").depth, 2);
    // Past the rows' timestamps (millisecond precision on SQLite).
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.purge(Duration::ZERO).await.expect("purge"), 4);
    assert_eq!(store.purge(Duration::ZERO).await.expect("purge"), 0);
    assert_eq!(
        store.stats().await.expect("stats").depth,
        2,
        "the unpublished rows stay"
    );
    assert_eq!(
        store.status(&ids[2]).await.expect("status"),
        Some(OrderStatus::Accepted)
    );
    // An order whose rows were published and then purged stays published.
    for id in &ids[..2] {
        assert_eq!(
            store.status(id).await.expect("status"),
            Some(OrderStatus::Published),
            "{id}"
        );
    }
}

#[tokio::test]
async fn published_outbox_rows_are_purged_and_unpublished_ones_stay_on_sqlite_and_postgres() {
    let dir = tempfile::tempdir().expect("a directory");
    let mut settings = burrow::settings::Settings::load().expect("settings").store;
    settings.dir = dir.path().to_owned();
    settings.url = None;
    purge_keeps_unpublished_rows(
        burrow::orders::OrderStore::open(&settings)
            .await
            .expect("sqlite"),
    )
    .await;
    let db = TestDatabase::new("burrow_orders_purge").await;
    settings.url = Some(burrow::settings::SecretUrl::new(db.url()));
    purge_keeps_unpublished_rows(
        burrow::orders::OrderStore::open(&settings)
            .await
            .expect("postgres"),
    )
    .await;
}
