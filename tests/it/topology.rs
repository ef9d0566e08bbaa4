//! The topology against a real broker: declared idempotently, drift reported, verified through
//! the management API, exported definitions imported, and messages routed as docs/CONTRACT.md says.

use std::time::{Duration, Instant};

use burrow::management::Management;
use burrow::topology::{self, export, verify, DestinationType, Drift, Entity, Topology};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeUnbindOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

use crate::helpers::{wait_for, TestVhost};

const SHOP: &str = crate::common::SHOP_TOPOLOGY;

fn shop() -> Topology {
    Topology::load(SHOP).expect("topology/shop.toml is valid")
}

async fn connect(vhost: &TestVhost) -> lapin::Connection {
    burrow::broker::connect(&vhost.settings.amqp, "topology test")
        .await
        .expect("connecting to the test vhost")
}

fn management(vhost: &TestVhost) -> Management {
    Management::new(&vhost.settings.management, &vhost.settings.amqp).expect("management client")
}

async fn publish(conn: &lapin::Connection, exchange: &str, routing_key: &str, body: &[u8]) {
    let channel = conn.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(
        confirm.is_ack(),
        "publish to '{exchange}' was not confirmed"
    );
    assert!(
        confirm.take_message().is_none(),
        "'{exchange}' with key '{routing_key}' was unroutable"
    );
}

/// Waits until `queue` holds a message and takes it.
async fn take(
    conn: &lapin::Connection,
    queue: &str,
    timeout: Duration,
) -> lapin::message::BasicGetMessage {
    let channel = conn.create_channel().await.expect("channel");
    wait_for(&format!("a message in '{queue}'"), timeout, || {
        let channel = channel.clone();
        async move {
            channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get")
        }
    })
    .await
}

#[tokio::test]
async fn apply_declares_every_design_queue_with_its_arguments() {
    let vhost = TestVhost::new("topo-apply").await;
    let conn = connect(&vhost).await;
    let report = topology::apply(&conn, &shop()).await.expect("apply");
    assert!(report.drift.is_empty(), "{:?}", report.drift);
    assert_eq!(report.created.len(), 5 + 22, "{:?}", report.created);
    assert_eq!(report.bindings, 12);
    assert_eq!(report.unbound, 2, "the removed bindings, absent already");

    let m = management(&vhost);
    let fulfillment = m
        .queue(&vhost.name, "orders.fulfillment")
        .await
        .expect("api")
        .expect("orders.fulfillment exists");
    assert_eq!(fulfillment.kind, "quorum");
    assert_eq!(fulfillment.arguments["x-delivery-limit"], 5);
    assert_eq!(
        fulfillment.arguments["x-dead-letter-exchange"],
        "orders.dlx"
    );
    assert_eq!(
        fulfillment.arguments["x-dead-letter-strategy"],
        "at-least-once"
    );
    assert_eq!(fulfillment.arguments["x-overflow"], "reject-publish");

    for (queue, target) in [
        ("orders.fulfillment.retry.10s", "orders.fulfillment"),
        ("activity.notifications.retry.10s", "activity.notifications"),
        ("activity.analytics.retry.10s", "activity.analytics"),
    ] {
        let retry = m
            .queue(&vhost.name, queue)
            .await
            .expect("api")
            .expect("retry queue exists");
        assert_eq!(retry.arguments["x-message-ttl"], 10000, "{queue}");
        assert_eq!(retry.arguments["x-dead-letter-exchange"], "", "{queue}");
        assert_eq!(
            retry.arguments["x-dead-letter-routing-key"], target,
            "{queue}"
        );
    }

    let log = m
        .queue(&vhost.name, "activity.log")
        .await
        .expect("api")
        .expect("stream exists");
    assert_eq!(log.kind, "stream");
    assert_eq!(log.arguments["x-max-age"], "7D");

    let names: Vec<String> = m
        .queues(&vhost.name)
        .await
        .expect("api")
        .into_iter()
        .map(|q| q.name)
        .collect();
    for q in &shop().queues {
        assert!(names.contains(&q.name), "{} missing from {names:?}", q.name);
    }
    let exchanges = m.exchanges(&vhost.name).await.expect("api");
    let orders = exchanges
        .iter()
        .find(|e| e.name == "orders")
        .expect("orders exchange");
    assert_eq!((orders.kind.as_str(), orders.durable), ("topic", true));

    let drift = verify::verify(&m, &vhost.name, &shop())
        .await
        .expect("verify");
    assert!(drift.is_empty(), "{drift:?}");
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn second_apply_creates_nothing() {
    let vhost = TestVhost::new("topo-idempotent").await;
    let conn = connect(&vhost).await;
    topology::apply(&conn, &shop()).await.expect("first apply");
    let again = topology::apply(&conn, &shop()).await.expect("second apply");
    assert!(again.created.is_empty(), "{:?}", again.created);
    assert!(again.drift.is_empty(), "{:?}", again.drift);
    assert_eq!(again.unchanged.len(), 27);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn conflicting_queue_is_reported_as_drift_while_the_rest_is_declared() {
    let vhost = TestVhost::new("topo-drift").await;
    let conn = connect(&vhost).await;
    let channel = conn.create_channel().await.expect("channel");
    // The queue as the file says, except for the delivery limit.
    let mut declared = shop()
        .queue("orders.fulfillment")
        .expect("in the file")
        .declared_arguments();
    declared.insert("x-delivery-limit".into(), 9.into());
    let args = topology::declare::field_table(&declared);
    channel
        .queue_declare(
            "orders.fulfillment".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("pre-existing queue");

    let report = topology::apply(&conn, &shop())
        .await
        .expect("apply goes on despite drift");
    let fulfillment = Entity::Queue("orders.fulfillment".into());
    let drift: Vec<&Drift> = report
        .drift
        .iter()
        .filter(|d| d.entity == fulfillment)
        .collect();
    assert_eq!(drift.len(), 1, "{:?}", report.drift);
    assert_eq!(drift[0].what, "argument x-delivery-limit");
    assert_eq!(
        (drift[0].expected.as_deref(), drift[0].actual.as_deref()),
        (Some("5"), Some("9"))
    );
    assert_eq!(
        report.created.len(),
        26,
        "every other entity is declared: {:?}",
        report.created
    );
    assert_eq!(report.bindings, 12);

    let m = management(&vhost);
    let still = m
        .queue(&vhost.name, "orders.fulfillment")
        .await
        .expect("api")
        .expect("queue");
    assert_eq!(
        still.arguments["x-delivery-limit"], 9,
        "drift is reported, never fixed"
    );
    assert!(m
        .queue(&vhost.name, "orders.dead")
        .await
        .expect("api")
        .is_some());

    let found = verify::verify(&m, &vhost.name, &shop())
        .await
        .expect("verify");
    let limit = found
        .iter()
        .find(|d| d.entity == fulfillment && d.what == "argument x-delivery-limit")
        .unwrap_or_else(|| panic!("verify names the queue and argument: {found:?}"));
    assert_eq!(
        limit.describe("topology/shop.toml"),
        "queue 'orders.fulfillment': argument x-delivery-limit: broker has 9, topology/shop.toml says 5"
    );
    assert_eq!(found.len(), 1, "only that argument differs: {found:?}");
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn verify_reports_missing_entities_of_an_empty_vhost() {
    let vhost = TestVhost::new("topo-missing").await;
    let drift = verify::verify(&management(&vhost), &vhost.name, &shop())
        .await
        .expect("verify");
    assert!(drift.contains(&Drift::missing(Entity::Queue("orders.fulfillment".into()))));
    assert!(drift.contains(&Drift::missing(Entity::Exchange("activity".into()))));
    assert!(drift.contains(&Drift::missing(Entity::Binding {
        source: "activity".into(),
        destination: "activity.by-kind".into(),
        destination_type: DestinationType::Exchange,
        routing_key: String::new(),
    })));
    assert_eq!(drift.len(), 5 + 22 + 12, "{drift:?}");
}

#[tokio::test]
async fn exported_definitions_import_into_a_fresh_vhost() {
    let vhost = TestVhost::new("topo-import").await;
    let m = management(&vhost);
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/topology/definitions.json"
        ))
        .expect("committed definitions"),
    )
    .expect("json");
    assert_eq!(committed, export::definitions(&shop()));
    m.import_definitions(&vhost.name, &committed)
        .await
        .expect("the management API accepts the export");

    let drift = verify::verify(&m, &vhost.name, &shop())
        .await
        .expect("verify");
    assert!(
        drift.is_empty(),
        "imported topology matches the file: {drift:?}"
    );
    let fulfillment = m
        .queue(&vhost.name, "orders.fulfillment")
        .await
        .expect("api")
        .expect("queue");
    assert_eq!(fulfillment.kind, "quorum");

    // Declaring over an imported topology changes nothing.
    let conn = connect(&vhost).await;
    let report = topology::apply(&conn, &shop()).await.expect("apply");
    assert!(
        report.created.is_empty() && report.drift.is_empty(),
        "{report:?}"
    );
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn order_published_to_orders_reaches_fulfillment() {
    let vhost = TestVhost::new("topo-route").await;
    let conn = connect(&vhost).await;
    topology::apply(&conn, &shop()).await.expect("apply");
    publish(&conn, "orders", "order.placed", br#"{"order_id":"ord_1"}"#).await;
    let got = take(&conn, "orders.fulfillment", Duration::from_secs(5)).await;
    assert_eq!(got.delivery.data, br#"{"order_id":"ord_1"}"#);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn message_in_a_retry_queue_returns_to_its_queue_after_the_delay() {
    let tiny = Topology::parse(
        r#"
        [[queues]]
        name = "work"
        type = "quorum"

        [[queues]]
        name = "work.retry.200ms"
        type = "quorum"
        retry_for = "work"
        delay = "200ms"
        arguments = { x-dead-letter-exchange = "", x-dead-letter-routing-key = "work", x-dead-letter-strategy = "at-least-once", x-overflow = "reject-publish" }
        "#,
    )
    .expect("tiny topology");
    let vhost = TestVhost::new("topo-retry").await;
    let conn = connect(&vhost).await;
    topology::apply(&conn, &tiny).await.expect("apply");
    let step = &tiny.retry_ladder("work")[0];

    let sent = Instant::now();
    publish(&conn, "", &step.queue, b"again").await;
    let got = take(&conn, "work", Duration::from_secs(5)).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(150),
        "came back too early: {:?}",
        sent.elapsed()
    );
    assert_eq!(got.delivery.data, b"again");
    let headers = got
        .delivery
        .properties
        .headers()
        .clone()
        .expect("dead-lettered messages carry x-death");
    assert!(headers.inner().contains_key("x-death"), "{headers:?}");
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn activity_event_reaches_every_service_queue_and_the_stream() {
    let vhost = TestVhost::new("topo-fanout").await;
    let conn = connect(&vhost).await;
    topology::apply(&conn, &shop()).await.expect("apply");
    let event = br#"{"event_id":"evt_1","kind":"product.viewed"}"#;
    publish(&conn, "activity", "product.viewed", event).await;

    for queue in [
        "activity.analytics",
        "activity.notifications",
        "activity.recommendations",
    ] {
        let got = take(&conn, queue, Duration::from_secs(5)).await;
        assert_eq!(got.delivery.data, event, "{queue}");
    }

    // A stream is read by a consumer with a prefetch, from an offset.
    let channel = conn.create_channel().await.expect("channel");
    channel
        .basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = channel
        .basic_consume(
            "activity.log".into(),
            "replay".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .expect("consume the stream");
    let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("the stream has the event")
        .expect("consumer open")
        .expect("delivery");
    assert_eq!(delivery.data, event);
    let _ = conn.close(200, "bye".into()).await;
}

/// Publishes one activity event of each kind in `kinds` to `activity`, routing key = its kind,
/// as every burrow publisher does.
async fn publish_events(conn: &lapin::Connection, kinds: &[&str]) {
    for (i, kind) in kinds.iter().enumerate() {
        let body = format!(r#"{{"event_id":"evt_{i}","kind":"{kind}"}}"#);
        publish(conn, "activity", kind, body.as_bytes()).await;
    }
}

/// The kinds of the events in `queue`, taken out of it. Every publish was confirmed, and a
/// confirm means every queue it was routed to has it: what is not here now never will be.
async fn kinds_in(conn: &lapin::Connection, queue: &str) -> Vec<String> {
    crate::common::drain_queue(conn, queue)
        .await
        .into_iter()
        .map(|m| {
            let event: serde_json::Value =
                serde_json::from_slice(&m.delivery.data).expect("an event");
            event["kind"].as_str().expect("kind").to_owned()
        })
        .collect()
}

const KINDS: [&str; 4] = [
    "product.viewed",
    "order.placed",
    "inventory.changed",
    "order.fulfilled",
];

#[tokio::test]
async fn activity_events_reach_inventory_and_order_status_only_by_their_kind() {
    let vhost = TestVhost::new("topo-by-kind").await;
    let conn = connect(&vhost).await;
    topology::apply(&conn, &shop()).await.expect("apply");
    publish_events(&conn, &KINDS).await;

    assert_eq!(
        kinds_in(&conn, "orders.inventory").await,
        ["inventory.changed"]
    );
    assert_eq!(kinds_in(&conn, "orders.status").await, ["order.fulfilled"]);
    // The fanout's own queues still get every event.
    for queue in ["activity.analytics", "activity.notifications"] {
        assert_eq!(kinds_in(&conn, queue).await, KINDS, "{queue}");
    }
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn verify_reports_a_missing_exchange_binding_and_one_the_file_does_not_declare() {
    let vhost = TestVhost::new("topo-e2e-drift").await;
    let conn = connect(&vhost).await;
    topology::apply(&conn, &shop()).await.expect("apply");
    let m = management(&vhost);
    assert_eq!(
        verify::verify(&m, &vhost.name, &shop())
            .await
            .expect("verify"),
        []
    );

    let channel = conn.create_channel().await.expect("channel");
    channel
        .exchange_unbind(
            "activity.by-kind".into(),
            "activity".into(),
            "".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("unbind activity.by-kind by hand");
    channel
        .queue_bind(
            "orders.inventory".into(),
            "activity.by-kind".into(),
            "product.viewed".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind orders.inventory to more by hand");

    let drift = verify::verify(&m, &vhost.name, &shop())
        .await
        .expect("verify");
    let lines: Vec<String> = drift.iter().map(|d| d.describe("shop.toml")).collect();
    assert_eq!(
        lines,
        [
            "binding 'activity' -> exchange 'activity.by-kind': missing on the broker, shop.toml \
             declares it",
            "binding 'activity.by-kind' -> 'orders.inventory' ('product.viewed'): on the broker, \
             not in shop.toml; to remove it, list it under [[removed_bindings]] there and run \
             `burrow topology apply` (or unbind it in the management UI)"
        ]
    );

    // apply declares what is missing and leaves what the file does not mention: an operator
    // says what goes, in [[removed_bindings]].
    topology::apply(&conn, &shop()).await.expect("apply");
    let drift = verify::verify(&m, &vhost.name, &shop())
        .await
        .expect("verify");
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert!(drift[0].is_extra(), "{drift:?}");
    let mut file = shop();
    file.removed_bindings
        .push(burrow::topology::BindingDefinition {
            source: "activity.by-kind".into(),
            destination: "orders.inventory".into(),
            destination_type: DestinationType::Queue,
            routing_key: "product.viewed".into(),
            arguments: Default::default(),
        });
    topology::apply(&conn, &file).await.expect("apply");
    assert_eq!(
        verify::verify(&m, &vhost.name, &file)
            .await
            .expect("verify"),
        []
    );
    let _ = conn.close(200, "bye".into()).await;
}

/// The shop as its file was before `activity.by-kind`: orders.inventory and orders.status bound
/// to the `activity` fanout itself.
fn shop_before_by_kind() -> Topology {
    let mut old = shop();
    old.exchanges.retain(|e| e.name != "activity.by-kind");
    old.bindings
        .retain(|b| b.source != "activity.by-kind" && b.destination != "activity.by-kind");
    old.bindings.append(&mut old.removed_bindings);
    old
}

#[tokio::test]
async fn apply_over_the_old_fanout_bindings_leaves_one_copy_of_each_event() {
    let vhost = TestVhost::new("topo-upgrade").await;
    let conn = connect(&vhost).await;
    let m = management(&vhost);
    topology::apply(&conn, &shop_before_by_kind())
        .await
        .expect("the old topology");

    let drift = verify::verify(&m, &vhost.name, &shop())
        .await
        .expect("verify");
    let lines: Vec<String> = drift.iter().map(|d| d.describe("shop.toml")).collect();
    assert_eq!(drift.len(), 1 + 3 + 2, "{lines:#?}");
    for queue in ["orders.inventory", "orders.status"] {
        let line = format!(
            "binding 'activity' -> '{queue}': still on the broker, shop.toml lists it under \
             [[removed_bindings]]; `burrow topology apply` removes it"
        );
        assert!(lines.contains(&line), "{line} in {lines:#?}");
    }

    let report = topology::apply(&conn, &shop()).await.expect("apply");
    assert_eq!(
        report.created,
        [Entity::Exchange("activity.by-kind".into())]
    );
    assert_eq!((report.bindings, report.unbound), (12, 2));
    assert!(
        report.refused.is_empty() && report.drift.is_empty(),
        "{report:?}"
    );
    assert_eq!(
        verify::verify(&m, &vhost.name, &shop())
            .await
            .expect("verify"),
        []
    );
    publish_events(&conn, &KINDS).await;
    assert_eq!(
        kinds_in(&conn, "orders.inventory").await,
        ["inventory.changed"]
    );
    assert_eq!(kinds_in(&conn, "orders.status").await, ["order.fulfilled"]);

    // The next apply (every worker's, on connect) finds them gone: no error.
    let again = topology::apply(&conn, &shop()).await.expect("apply again");
    assert_eq!(again.unbound, 2);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn a_removed_binding_whose_queue_is_gone_is_no_error() {
    let tiny = Topology::parse(
        r#"
        [[exchanges]]
        name = "events"
        type = "fanout"

        [[removed_bindings]]
        source = "events"
        destination = "deleted.queue"
        destination_type = "queue"

        [[removed_bindings]]
        source = "events.gone"
        destination = "events"
        "#,
    )
    .expect("tiny topology");
    let vhost = TestVhost::new("topo-removed-gone").await;
    let conn = connect(&vhost).await;
    let report = topology::apply(&conn, &tiny).await.expect("apply");
    assert_eq!(report.unbound, 2, "{report:?}");
    assert!(
        report.refused.is_empty() && report.drift.is_empty(),
        "{report:?}"
    );
    assert_eq!(
        verify::verify(&management(&vhost), &vhost.name, &tiny)
            .await
            .expect("verify"),
        []
    );
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn management_client_creates_and_deletes_a_vhost_the_user_can_connect_to() {
    let settings = burrow::settings::Settings::load().expect("settings");
    let m = Management::new(&settings.management, &settings.amqp).expect("management client");
    let name = format!(
        "burrow-test-mgmt-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    let user = settings
        .amqp
        .url
        .username()
        .unwrap_or_else(|| "guest".into());
    m.put_vhost(&name).await.expect("create the vhost");
    m.put_vhost(&name).await.expect("creating it again is fine");
    m.put_permissions(&name, &user, ".*", ".*", ".*")
        .await
        .expect("grant");
    let mut amqp = settings.amqp.clone();
    amqp.url = amqp.url.with_vhost(&name);
    let conn = burrow::broker::connect(&amqp, "management test")
        .await
        .expect("the user connects to the new vhost");
    let _ = conn.close(200, "bye".into()).await;
    assert!(m.queues(&name).await.expect("list").is_empty());

    m.delete_vhost(&name).await.expect("delete the vhost");
    assert!(
        matches!(
            m.queues(&name).await,
            Err(burrow::management::ManagementError::Status { status: 404, .. })
        ),
        "the vhost is gone"
    );
    m.delete_vhost(&name)
        .await
        .expect("deleting a missing vhost is fine");
}

#[test]
fn the_tests_fast_topology_is_the_shop_with_a_fast_retry_ladder() {
    let shop = shop();
    let fast = crate::common::fast_topology();
    let delays: Vec<Duration> = fast
        .retry_ladder("orders.fulfillment")
        .iter()
        .map(|s| s.delay)
        .collect();
    assert_eq!(
        delays,
        [100, 200, 300].map(Duration::from_millis),
        "the ladder, shortest first"
    );
    assert_eq!(fast.exchanges, shop.exchanges);
    assert_eq!(fast.bindings, shop.bindings);
    assert_eq!(fast.removed_bindings, shop.removed_bindings);
    assert_eq!(fast.users, shop.users);
    assert_eq!(fast.queues.len(), shop.queues.len());
    for (f, s) in fast.queues.iter().zip(&shop.queues) {
        let Some(retry) = &f.retry else {
            assert_eq!(f, s, "only retry steps change");
            continue;
        };
        let ttl = u64::try_from(retry.delay.as_millis()).expect("ms");
        assert_eq!(
            f.arguments["x-message-ttl"],
            serde_json::json!(ttl),
            "{}",
            f.name
        );
        let (mut f, mut s) = (f.clone(), s.clone());
        f.arguments.remove("x-message-ttl");
        s.arguments.remove("x-message-ttl");
        f.retry = None;
        s.retry = None;
        assert_eq!(
            f, s,
            "a retry step keeps its name and everything but the delay"
        );
    }
}
