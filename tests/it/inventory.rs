//! The inventory service end to end: restocks set a level, orders reserve it once each, an order
//! beyond the stock is back-ordered, its own `inventory.changed` echoes never reset a level, and
//! a product sold out drops out of the recommendations without anyone running a command.

use std::time::Duration;

use burrow::message::{string_value, ActivityEvent, Order, OrderItem, HEADER_ORIGIN};
use burrow::publisher::Outgoing;

use crate::helpers::{wait_for, TestVhost};
use crate::services::{viewed, ServiceProcess};

const LONG: Duration = Duration::from_secs(120);

/// An order of `quantity` units of `sku` by `cus_buyer`.
fn order(sku: &str, quantity: u32) -> Order {
    Order {
        order_id: burrow::message::new_id("ord"),
        customer_id: "cus_buyer".into(),
        email: "buyer@example.com".into(),
        items: vec![OrderItem {
            sku: sku.into(),
            quantity,
            unit_price_cents: 1999,
        }],
        currency: "EUR".into(),
        placed_at: chrono::Utc::now(),
    }
}

/// The messages `producer order` sends for `orders`: each order and its `order.placed` event.
fn placing(orders: &[Order]) -> Vec<Outgoing> {
    orders
        .iter()
        .flat_map(|o| burrow::producer::order_messages(o, true))
        .collect()
}

/// `producer inventory --sku SKU --stock N`, the restock command.
fn restock(t: &TestVhost, sku: &str, stock: i64) {
    let stock = stock.to_string();
    let (code, out, err) = t.producer(&["inventory", "--sku", sku, "--stock", &stock], None);
    assert_eq!(code, 0, "producer inventory: {out}{err}");
}

/// A counter of the service's `/metrics`, 0 when absent.
async fn counter(svc: &ServiceProcess, name: &str) -> u64 {
    let text = svc.text("/metrics").await;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `GET /stock` of one SKU (`null` when it has no level).
async fn sku_stock(svc: &ServiceProcess, sku: &str) -> serde_json::Value {
    svc.get("/stock").await["skus"][sku].clone()
}

async fn wait_level(svc: &ServiceProcess, sku: &str, level: i64) {
    wait_for(&format!("{sku} at {level}"), LONG, || async {
        (sku_stock(svc, sku).await["stock"] == level).then_some(())
    })
    .await;
}

fn recommended(answer: &serde_json::Value) -> Vec<String> {
    answer["recommendations"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| s["sku"].as_str().expect("sku").to_owned())
        .collect()
}

#[tokio::test]
async fn a_product_reserved_down_to_zero_stops_being_recommended() {
    let t = TestVhost::new("inventory-sold-out")
        .await
        .with_fast_topology()
        .await;
    let recs = t.spawn_service("recommendations", &[], &[]).await;
    let inventory = t.spawn_service("inventory", &[], &[]).await;

    // Customers who viewed SKU-1 also viewed SKU-2 and SKU-3: both are recommended to a new
    // customer who viewed SKU-1.
    let mut events = Vec::new();
    for u in 0..6 {
        let user = format!("cus_{u}");
        for sku in ["SKU-1", "SKU-2", "SKU-3"] {
            events.push(viewed(&user, sku));
        }
    }
    events.push(viewed("cus_new", "SKU-1"));
    t.publish_events(&events).await;
    wait_for("SKU-2 and SKU-3 recommended", LONG, || async {
        let recs = recommended(&recs.get("/recommendations/cus_new").await);
        (recs == ["SKU-2", "SKU-3"]).then_some(())
    })
    .await;

    restock(&t, "SKU-2", 4);
    wait_level(&inventory, "SKU-2", 4).await;
    t.publish_messages(placing(&[order("SKU-2", 1), order("SKU-2", 3)]))
        .await;
    wait_level(&inventory, "SKU-2", 0).await;

    wait_for("SKU-2 no longer recommended", LONG, || async {
        let recs = recommended(&recs.get("/recommendations/cus_new").await);
        (recs == ["SKU-3"]).then_some(())
    })
    .await;
    let s = sku_stock(&inventory, "SKU-2").await;
    assert_eq!(
        (&s["reserved_units"], &s["backordered_units"]),
        (&4.into(), &0.into()),
        "{s}"
    );

    // The service announced the level 0 itself, marked as its own.
    let announced: Vec<ActivityEvent> = t
        .drain("activity.recommendations")
        .await
        .into_iter()
        .filter(|m| {
            burrow::message::header_str(m.properties.headers().as_ref(), HEADER_ORIGIN).as_deref()
                == Some(burrow::inventory::ORIGIN)
        })
        .map(|m| ActivityEvent::decode(&m.delivery.data).expect("a valid event"))
        .collect();
    let last = announced.last().expect("inventory.changed announced");
    assert_eq!(last.product_id.as_deref(), Some("SKU-2"));
    assert_eq!(last.data["stock"], 0, "{last:?}");
}

#[tokio::test]
async fn a_duplicated_order_reserves_once_and_an_order_beyond_the_stock_is_back_ordered() {
    let t = TestVhost::new("inventory-once")
        .await
        .with_fast_topology()
        .await;
    let inventory = t.spawn_service("inventory", &[], &[]).await;
    let _fulfillment = t.spawn_worker("fulfillment", &[], &[]);
    restock(&t, "SKU-4", 10);
    restock(&t, "SKU-5", 3);
    wait_level(&inventory, "SKU-4", 10).await;
    wait_level(&inventory, "SKU-5", 3).await;

    // The same order published twice (as a producer retrying after a lost confirm would).
    let twice = order("SKU-4", 3);
    let mut messages = placing(std::slice::from_ref(&twice));
    messages.extend(placing(std::slice::from_ref(&twice)));
    let beyond = order("SKU-5", 5);
    messages.extend(placing(std::slice::from_ref(&beyond)));
    t.publish_messages(messages).await;

    wait_for("the duplicate seen and SKU-5 sold out", LONG, || async {
        (counter(&inventory, "burrow_inventory_duplicates_total").await == 1
            && sku_stock(&inventory, "SKU-5").await["stock"] == 0)
            .then_some(())
    })
    .await;
    let s4 = sku_stock(&inventory, "SKU-4").await;
    assert_eq!(
        (&s4["stock"], &s4["reserved_units"]),
        (&7.into(), &3.into()),
        "reserved once: {s4}"
    );
    let s5 = sku_stock(&inventory, "SKU-5").await;
    assert_eq!(
        (&s5["reserved_units"], &s5["backordered_units"]),
        (&3.into(), &2.into()),
        "{s5}"
    );
    assert_eq!(inventory.get("/stock").await["backordered_units"], 2);
    assert_eq!(
        counter(&inventory, "burrow_inventory_backordered_units_total").await,
        2
    );
    assert_eq!(
        counter(&inventory, "burrow_inventory_reserved_units_total").await,
        6
    );

    // A back-order is still fulfilled.
    wait_for("both orders fulfilled", LONG, || async {
        let ids = t.fulfilled_ids();
        (ids.contains(&twice.order_id) && ids.contains(&beyond.order_id)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_services_own_echo_never_resets_a_level_that_reservations_lowered() {
    let t = TestVhost::new("inventory-echo")
        .await
        .with_fast_topology()
        .await;
    let inventory = t
        .spawn_service("inventory", &["--concurrency", "4"], &[])
        .await;
    restock(&t, "SKU-6", 10);
    wait_level(&inventory, "SKU-6", 10).await;

    // Reservations race the echo of the restock's announcement (level 10), then a stale echo
    // of that level arrives after all of them: none may put the level back to 10.
    let mut messages = placing(&(0..5).map(|_| order("SKU-6", 1)).collect::<Vec<_>>());
    let stale = burrow::producer::activity::inventory_event("SKU-6", 10, 0);
    let mut echo = burrow::producer::event_message(&stale, None);
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        HEADER_ORIGIN.into(),
        string_value(burrow::inventory::ORIGIN),
    );
    echo.properties = echo.properties.with_headers(headers);
    messages.push(echo);
    t.publish_messages(messages).await;

    // Every announcement came back and was ignored, and so was the stale echo.
    wait_for("every echo ignored at level 5", LONG, || async {
        let announced = counter(&inventory, "burrow_inventory_announcements_total").await;
        let echoes = counter(&inventory, "burrow_inventory_echoes_total").await;
        let level = sku_stock(&inventory, "SKU-6").await;
        (announced >= 2
            && echoes == announced + 1
            && level["stock"] == 5
            && level["version"] == level["announced_version"])
            .then_some(())
    })
    .await;
    assert_eq!(
        counter(&inventory, "burrow_inventory_restocks_total").await,
        1,
        "only the restock command set a level"
    );
    assert_eq!(sku_stock(&inventory, "SKU-6").await["stock"], 5);
}

#[tokio::test]
async fn two_processes_on_one_store_reserve_every_order_once_and_announce_the_final_level_last() {
    let t = TestVhost::new("inventory-two")
        .await
        .with_fast_topology()
        .await;
    two_processes_reserve_once(&t, &[], &[]).await;
}

/// As above, with the processes on two hosts (here: two store directories) sharing one
/// PostgreSQL database: their reservations of one SKU serialize on its row.
#[tokio::test]
async fn two_processes_on_one_postgres_database_reserve_every_order_once() {
    let t = TestVhost::new("inventory-pg")
        .await
        .with_fast_topology()
        .await;
    let db = crate::common::TestDatabase::new("burrow_inventory").await;
    let url = db.url();
    let dir = |host: &str| t.settings.store.dir.join(host).display().to_string();
    let (dir_a, dir_b) = (dir("host-a"), dir("host-b"));
    two_processes_reserve_once(
        &t,
        &[
            ("BURROW__STORE__URL", url.as_str()),
            ("BURROW__STORE__DIR", dir_a.as_str()),
        ],
        &[
            ("BURROW__STORE__URL", url.as_str()),
            ("BURROW__STORE__DIR", dir_b.as_str()),
        ],
    )
    .await;
    // The levels are in the database, not in either host's directory.
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT stock, reserved FROM inventory_stock WHERE sku = 'SKU-7'",
            &[],
        )
        .await
        .expect("SKU-7's row");
    let (stock, reserved): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(stock + reserved, 100, "every unit is in stock or reserved");
    assert!(!std::path::Path::new(&dir_a).join("inventory.db").exists());

    // The seen ids are forgotten past the retention window, in batches; the levels stay.
    let store = burrow::inventory::InventoryStore::open(&burrow::settings::StoreSettings {
        url: Some(burrow::settings::SecretUrl::new(url.as_str())),
        ..t.settings.store.clone()
    })
    .await
    .expect("open the store");
    let aged = client
        .execute(
            "UPDATE inventory_seen SET seen_at = now() - interval '2 hours'
             WHERE id IN (SELECT id FROM inventory_seen ORDER BY id LIMIT 40)",
            &[],
        )
        .await
        .expect("age 40 ids");
    assert_eq!(aged, 40);
    let purged = store.purge(Duration::from_secs(3600)).await.expect("purge");
    assert_eq!(purged, 40, "only the ids past the window");
    let left: i64 = client
        .query_one("SELECT count(*) FROM inventory_seen", &[])
        .await
        .expect("count")
        .get(0);
    assert!(left > 0, "fresh ids stay");
    assert_eq!(
        store.level("SKU-7").await.expect("level").map(|l| l.stock),
        Some(stock)
    );
}

/// Two inventory processes (with `env_a` and `env_b`) take 60 orders of SKU-7 (stock 100)
/// between them: every order is reserved once, and the last announcement is the final level.
async fn two_processes_reserve_once(t: &TestVhost, env_a: &[(&str, &str)], env_b: &[(&str, &str)]) {
    let a = t.spawn_service("inventory", &[], env_a).await;
    let b = t.spawn_service("inventory", &[], env_b).await;
    restock(t, "SKU-7", 100);
    wait_level(&a, "SKU-7", 100).await;
    wait_for("both processes consuming", LONG, || async {
        (t.queue_info("orders.inventory").await.consumers >= Some(2)).then_some(())
    })
    .await;

    let orders: Vec<Order> = (0..60).map(|i| order("SKU-7", 1 + i % 2)).collect();
    let units: i64 = orders.iter().map(|o| i64::from(o.items[0].quantity)).sum();
    t.publish_messages(placing(&orders)).await;

    // Idle: every order and the restock handled, and every announcement back as an echo and
    // handled too (so none is still being published). The orders' order.placed events are not
    // routed to orders.inventory (activity.by-kind sends it inventory.changed only).
    const HANDLED: &str = "burrow_messages_total{queue=\"orders.inventory\",outcome=\"success\"}";
    wait_for("both processes idle", LONG, || async {
        let mut handled = 0;
        let mut announced = 0;
        let mut echoes = 0;
        for svc in [&a, &b] {
            handled += counter(svc, HANDLED).await;
            announced += counter(svc, "burrow_inventory_announcements_total").await;
            echoes += counter(svc, "burrow_inventory_echoes_total").await;
        }
        (echoes == announced && handled == orders.len() as u64 + 1 + echoes).then_some(())
    })
    .await;
    // The broker decides how the orders are shared (often both take some, not always): the
    // processes' counts add up to what the store holds.
    let mut reserved = 0;
    for svc in [&a, &b] {
        reserved += counter(svc, "burrow_inventory_reserved_units_total").await;
    }
    assert_eq!(reserved, units as u64);
    let s = sku_stock(&a, "SKU-7").await;
    assert_eq!(s["stock"], 100 - units, "{s}");
    assert_eq!(s["reserved_units"], units, "{s}");
    assert_eq!(s["version"], s["announced_version"], "{s}");

    let last = t
        .drain("activity.recommendations")
        .await
        .into_iter()
        .filter(|m| {
            burrow::message::header_str(m.properties.headers().as_ref(), HEADER_ORIGIN).is_some()
        })
        .map(|m| ActivityEvent::decode(&m.delivery.data).expect("a valid event"))
        .next_back()
        .expect("announcements");
    assert_eq!(
        last.data["stock"],
        100 - units,
        "the last announcement is the final level: {last:?}"
    );
}
