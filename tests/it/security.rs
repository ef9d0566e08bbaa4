//! Least privilege: the users of `topology/shop.toml`, created in a test vhost, may do what
//! their program needs and nothing else; a wrong login is refused with one clear line.

use std::time::Duration;

use burrow::publisher::{self, Confirm, Outgoing};
use burrow::settings::SecretUrl;
use burrow::topology::{Topology, UserDefinition};
use lapin::options::{BasicConsumeOptions, BasicGetOptions};

use crate::helpers::{order_body, wait_for, TestVhost, ONE_ORDER};

const LONG: Duration = Duration::from_secs(60);

/// The topology's users under unique names (users are broker-wide), deleted on drop.
struct TestUsers {
    users: Vec<UserDefinition>,
    management: burrow::management::Management,
}

impl TestUsers {
    async fn create(t: &TestVhost) -> Self {
        let topology = Topology::load(&t.settings.topology).expect("topology");
        let suffix = t.name.rsplit('-').next().expect("suffix").to_owned();
        let users: Vec<UserDefinition> = topology
            .users
            .into_iter()
            .map(|mut u| {
                u.name = format!("{}-{suffix}", u.name);
                u
            })
            .collect();
        let management = t.management();
        let created = burrow::topology::users::apply(&management, &t.name, &users)
            .await
            .expect("creating users");
        assert!(
            !created.iter().any(|n| n.starts_with("guest")),
            "export-only users are not created: {created:?}"
        );
        Self { users, management }
    }

    /// The AMQP URL of `program`'s user (e.g. `burrow-fulfillment`) on the test vhost.
    fn url(&self, t: &TestVhost, program: &str) -> SecretUrl {
        let user = self
            .users
            .iter()
            .find(|u| u.name.starts_with(&format!("{program}-")))
            .expect("user in topology");
        let mut url = url::Url::parse(t.amqp_url().expose()).expect("url");
        url.set_username(&user.name).expect("user");
        url.set_password(Some(user.password.expose()))
            .expect("password");
        SecretUrl::new(url.to_string())
    }
}

impl Drop for TestUsers {
    fn drop(&mut self) {
        let names: Vec<String> = self.users.iter().map(|u| u.name.clone()).collect();
        let management = self.management.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    for n in names {
                        let _ = management.delete_user(&n).await;
                    }
                });
            }
        })
        .join();
    }
}

async fn connect_as(t: &TestVhost, url: SecretUrl) -> lapin::Connection {
    let mut amqp = t.settings.amqp.clone();
    amqp.url = url;
    burrow::broker::connect(&amqp, "security test")
        .await
        .expect("the user may log in to the vhost")
}

fn message(exchange: &str, routing_key: &str) -> Outgoing {
    let (id, body) = order_body("SKU-1");
    Outgoing {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        body,
        properties: burrow::message::properties("order", &id),
        label: 0,
    }
}

async fn publish(conn: &lapin::Connection, exchange: &str, routing_key: &str) -> String {
    let ch = publisher::confirm_channel(conn).await.expect("channel");
    match publisher::publish_one(&ch, &message(exchange, routing_key), LONG).await {
        Ok(fate) => format!("{fate:?}"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test]
async fn fulfillment_worker_may_not_publish_orders_nor_read_other_queues() {
    let t = TestVhost::new("sec-worker")
        .await
        .with_fast_topology()
        .await;
    let users = TestUsers::create(&t).await;
    let conn = connect_as(&t, users.url(&t, "burrow-fulfillment")).await;

    let refused = publish(&conn, "orders", "order.placed").await;
    assert!(
        refused.contains("ACCESS_REFUSED"),
        "publish to orders: {refused}"
    );

    let ch = conn.create_channel().await.expect("channel");
    let e = ch
        .basic_consume(
            "activity.analytics".into(),
            "".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .expect_err("consuming another service's queue is refused");
    assert!(format!("{e}").contains("ACCESS_REFUSED"), "{e}");

    // What the worker needs: its queue, retries through the default exchange (`amq.default`),
    // dead letters and order.fulfilled.
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_get(
        "orders.fulfillment".into(),
        BasicGetOptions { no_ack: true },
    )
    .await
    .expect("reading its own queue");
    for (exchange, key) in [
        ("", "orders.fulfillment.retry.1s"),
        ("orders.dlx", "order.placed"),
        ("activity", "order.fulfilled"),
    ] {
        assert_eq!(
            publish(&conn, exchange, key).await,
            format!("{:?}", Confirm::Confirmed),
            "publish to '{exchange}'"
        );
    }
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn activity_workers_may_publish_retries_and_dead_letters_but_not_events() {
    let t = TestVhost::new("sec-activity")
        .await
        .with_fast_topology()
        .await;
    let users = TestUsers::create(&t).await;
    for (program, queue) in [
        ("burrow-notifications", "activity.notifications"),
        ("burrow-analytics", "activity.analytics"),
    ] {
        let conn = connect_as(&t, users.url(&t, program)).await;
        // Retries through the default exchange (`amq.default`) and dead letters.
        let retry = format!("{queue}.retry.1s");
        for (exchange, key) in [("", retry.as_str()), ("activity.dlx", "user.registered")] {
            assert_eq!(
                publish(&conn, exchange, key).await,
                format!("{:?}", Confirm::Confirmed),
                "{program} publishes to '{exchange}' ({key})"
            );
        }
        for exchange in ["activity", "orders"] {
            let refused = publish(&conn, exchange, "x").await;
            assert!(
                refused.contains("ACCESS_REFUSED"),
                "{program} publish to {exchange}: {refused}"
            );
        }
        let _ = conn.close(200, "done".into()).await;
    }
}

#[tokio::test]
async fn inventory_worker_may_announce_stock_but_not_place_orders_nor_read_other_queues() {
    let t = TestVhost::new("sec-inventory")
        .await
        .with_fast_topology()
        .await;
    let users = TestUsers::create(&t).await;
    let conn = connect_as(&t, users.url(&t, "burrow-inventory")).await;

    let refused = publish(&conn, "orders", "order.placed").await;
    assert!(
        refused.contains("ACCESS_REFUSED"),
        "publish to orders: {refused}"
    );
    let ch = conn.create_channel().await.expect("channel");
    let e = ch
        .basic_consume(
            "orders.fulfillment".into(),
            "".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .expect_err("consuming the fulfillment queue is refused");
    assert!(format!("{e}").contains("ACCESS_REFUSED"), "{e}");

    // What the worker needs: its queue, retries, dead letters and inventory.changed.
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_get("orders.inventory".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("reading its own queue");
    for (exchange, key) in [
        ("", "orders.inventory.retry.1s"),
        ("orders.dlx", "order.placed"),
        ("activity", "inventory.changed"),
    ] {
        assert_eq!(
            publish(&conn, exchange, key).await,
            format!("{:?}", Confirm::Confirmed),
            "publish to '{exchange}'"
        );
    }
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn least_privilege_worker_and_producer_fulfil_an_order_end_to_end() {
    let t = TestVhost::new("sec-e2e").await.with_fast_topology().await;
    let users = TestUsers::create(&t).await;
    let worker_url = users.url(&t, "burrow-fulfillment");
    let producer_url = users.url(&t, "burrow-producer");

    // The worker re-declares the topology on connect without configure permission.
    let _w = t.spawn_worker("fulfillment", &[], &[("AMQP_URL", worker_url.expose())]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_producer"))
        .args(ONE_ORDER)
        .envs(t.env())
        .env("AMQP_URL", producer_url.expose())
        .output()
        .expect("producer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "producer user may publish orders: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let order_id = stdout.trim().to_owned();
    assert!(order_id.starts_with("ord_"), "{stdout}");
    wait_for("the order fulfilled", LONG, || async {
        t.fulfilled_ids().contains(&order_id).then_some(())
    })
    .await;

    // The producer reads only its status queues, never the orders queue.
    let conn = connect_as(&t, producer_url).await;
    let ch = conn.create_channel().await.expect("channel");
    let e = ch
        .basic_get(
            "orders.fulfillment".into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect_err("producer cannot read");
    assert!(format!("{e}").contains("ACCESS_REFUSED"), "{e}");
}

#[tokio::test]
async fn ops_moves_the_old_fanout_bindings_and_a_worker_reapplying_is_refused_only_those() {
    let t = TestVhost::new("sec-bindings").await;
    let users = TestUsers::create(&t).await;
    let shop = Topology::load(&t.settings.topology).expect("topology");
    // The shop as it was before activity.by-kind, applied by the operator.
    let mut old = shop.clone();
    old.exchanges.retain(|e| e.name != "activity.by-kind");
    old.bindings
        .retain(|b| b.source != "activity.by-kind" && b.destination != "activity.by-kind");
    old.bindings.append(&mut old.removed_bindings);
    let ops = connect_as(&t, users.url(&t, "burrow-ops")).await;
    burrow::topology::apply(&ops, &old)
        .await
        .expect("ops applies the old topology");

    // The upgrade: ops may declare activity.by-kind, bind it to the fanout (write on
    // activity.by-kind, read on activity) and remove the old bindings.
    let report = burrow::topology::apply(&ops, &shop)
        .await
        .expect("ops applies the new one");
    assert!(report.refused.is_empty(), "{report:?}");
    assert_eq!((report.bindings, report.unbound), (shop.bindings.len(), 2));
    let _ = ops.close(200, "done".into()).await;
    let drift = burrow::topology::verify::verify(&t.management(), &t.name, &shop)
        .await
        .expect("verify");
    assert!(drift.is_empty(), "{drift:?}");

    // A worker re-declaring on connect may bind and unbind nothing: refused, not an error.
    let worker = connect_as(&t, users.url(&t, "burrow-inventory")).await;
    let report = burrow::topology::apply(&worker, &shop)
        .await
        .expect("a worker's re-declare goes through");
    let e2e = shop
        .bindings
        .iter()
        .find(|b| b.destination == "activity.by-kind")
        .expect("the exchange binding")
        .entity();
    assert!(report.refused.contains(&e2e), "{report:?}");
    for removed in &shop.removed_bindings {
        assert!(report.refused.contains(&removed.entity()), "{report:?}");
    }
    assert!(
        report.created.is_empty() && report.drift.is_empty(),
        "{report:?}"
    );
    let _ = worker.close(200, "done".into()).await;
}

#[tokio::test]
async fn wrong_credentials_are_refused_in_one_line_without_the_password() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_producer"))
        .args(ONE_ORDER)
        .env("AMQP_URL", "amqp://nobody:wrong-s3cret@127.0.0.1:5672/%2f")
        .env("RUST_LOG", "off")
        .output()
        .expect("producer");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("refused"), "{err}");
    assert!(!err.contains("wrong-s3cret"), "{err}");
}

#[tokio::test]
async fn live_users_get_a_hash_the_broker_made_not_the_exported_one() {
    let t = TestVhost::new("sec-hash").await;
    let users = TestUsers::create(&t).await;
    let user = users
        .users
        .iter()
        .find(|u| u.name.starts_with("burrow-fulfillment-"))
        .expect("user in topology");
    let stored = users
        .management
        .user(&user.name)
        .await
        .expect("reading the user")
        .expect("the user exists");
    assert!(!stored.password_hash.is_empty(), "{stored:?}");
    assert_ne!(
        stored.password_hash,
        burrow::topology::users::password_hash(&user.name, user.password.expose()),
        "the broker salted the plain password itself; the deterministic hash is for the export"
    );
    let conn = connect_as(&t, users.url(&t, "burrow-fulfillment")).await;
    let _ = conn.close(200, "done".into()).await;
}

/// The user KEDA's rabbitmq scaler logs in with (`deploy/k8s`): it reads a queue's depth
/// through the management API, and may not consume, publish or delete.
#[tokio::test]
async fn the_scaler_user_reads_queue_depths_and_nothing_else() {
    let t = TestVhost::new("sec-scaler")
        .await
        .with_fast_topology()
        .await;
    let users = TestUsers::create(&t).await;
    t.publish_raw(vec![order_body("SKU-1"), order_body("SKU-1")])
        .await;

    let url = users.url(&t, "burrow-scaler");
    let mut management_url =
        url::Url::parse(t.settings.management.url.expose()).expect("management url");
    management_url
        .set_username(&url.username().expect("user"))
        .expect("user");
    management_url
        .set_password(url.password().as_deref())
        .expect("password");
    let scaler = burrow::management::Management::new(
        &burrow::settings::ManagementSettings {
            url: SecretUrl::new(management_url.to_string()),
        },
        &t.settings.amqp,
    )
    .expect("client");
    wait_for("the scaler to read 2 ready orders", LONG, || async {
        let q = scaler
            .queue(&t.name, "orders.fulfillment")
            .await
            .expect("the scaler reads the queue")
            .expect("the queue exists");
        (q.messages_ready == Some(2)).then_some(())
    })
    .await;
    assert!(
        scaler
            .delete_queue(&t.name, "orders.fulfillment")
            .await
            .is_err(),
        "the scaler may not delete a queue"
    );

    let conn = connect_as(&t, url).await;
    let refused = publish(&conn, "orders", "order.placed").await;
    assert!(refused.contains("ACCESS_REFUSED"), "publish: {refused}");
    let ch = conn.create_channel().await.expect("channel");
    let e = ch
        .basic_get(
            "orders.fulfillment".into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .expect_err("the scaler may not take messages");
    assert!(format!("{e}").contains("ACCESS_REFUSED"), "{e}");
    assert_eq!(t.ready("orders.fulfillment").await, 2, "nothing was taken");
}
