//! The activity services end to end: notifications, analytics and the fanout that feeds them.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use burrow::message::{
    header_str, properties, ActivityEvent, EventKind, HEADER_ERROR, HEADER_SOURCE_QUEUE,
};
use burrow::producer::activity::ActivityGenerator;
use burrow::publisher::Outgoing;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};

use crate::helpers::{wait_for, TestVhost};
use crate::services::viewed;

const LONG: Duration = Duration::from_secs(120);

fn registered(user: &str) -> ActivityEvent {
    let mut e = ActivityEvent::new(EventKind::UserRegistered, user);
    e.data = serde_json::json!({"email": format!("{user}@example.com"), "name": user});
    e
}

fn placed(user: &str, sku: &str) -> ActivityEvent {
    let mut e = ActivityEvent::new(EventKind::OrderPlaced, user);
    e.order_id = Some(burrow::message::new_id("ord"));
    e.product_id = Some(sku.into());
    e.data = serde_json::json!({"email": format!("{user}@example.com"), "skus": [sku], "total_cents": 1999, "currency": "EUR"});
    e
}

#[tokio::test]
async fn one_event_from_a_plain_amqp_client_reaches_each_service_exactly_once() {
    let t = TestVhost::new("fanout").await.with_fast_topology().await;
    let notifications = t.spawn_service("notifications", &[], &[]);
    let analytics = t.spawn_service("analytics", &[], &[]);
    let recommendations = t.spawn_service("recommendations", &[], &[]);
    let _ = &notifications;

    // A plain AMQP publish: no burrow publisher involved.
    let event = placed("cus_7", "SKU-3");
    let conn = t.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            "activity".into(),
            "order.placed".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &serde_json::to_vec(&event).unwrap(),
            properties("order.placed", &event.event_id),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let _ = conn.close(200, "done".into()).await;

    wait_for("the confirmation mail", LONG, || async {
        (t.outbox_count() >= 1).then_some(())
    })
    .await;
    wait_for("analytics to count it", LONG, || async {
        (analytics.get("/stats").await["events_total"] == 1).then_some(())
    })
    .await;
    wait_for("recommendations to apply it", LONG, || async {
        (recommendations.get("/state").await["events"] == 1).then_some(())
    })
    .await;
    wait_for("both queues settled", LONG, || async {
        (t.queue_messages("activity.notifications").await == 0
            && t.queue_messages("activity.analytics").await == 0)
            .then_some(())
    })
    .await;
    let mails = t.outbox();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].contains("cus_7@example.com"));
    assert!(mails[0].contains(event.order_id.as_deref().unwrap()));
    let stats = analytics.get("/stats").await;
    assert_eq!(stats["events_total"], 1);
    assert_eq!(stats["by_kind"]["order.placed"], 1);
    assert_eq!(stats["by_product"]["SKU-3"]["order.placed"], 1);
    let state = recommendations.get("/state").await;
    assert_eq!(
        (state["events"].as_u64(), state["users"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(t.ready("activity.dead").await, 0);
}

#[tokio::test]
async fn two_notification_workers_never_send_the_same_mail_twice() {
    let t = TestVhost::new("mail-dedup")
        .await
        .with_fast_topology()
        .await;
    let _a = t.spawn_worker("notifications", &[], &[]);
    let _b = t.spawn_worker("notifications", &[], &[]);
    let mut events = Vec::new();
    for i in 0..200 {
        let user = format!("cus_{i}");
        let e = match i % 3 {
            0 => registered(&user),
            1 => placed(&user, "SKU-1"),
            _ => {
                let mut e = placed(&user, "SKU-2");
                e.kind = EventKind::OrderFulfilled;
                e
            }
        };
        events.push(e.clone());
        // Every fourth event is published twice in a row, so the copies race between workers.
        if i % 4 == 0 {
            events.push(e);
        }
        events.push(viewed(&user, "SKU-1"));
    }
    // A mail-worthy event without an address: settled with a warning, not mailed, not retried.
    let mut no_mail = placed("cus_x", "SKU-1");
    no_mail.data = serde_json::json!({});
    events.push(no_mail);
    t.publish_events(&events).await;

    wait_for("200 mails", LONG, || async {
        (t.outbox_count() >= 200).then_some(())
    })
    .await;
    wait_for("every delivery settled", LONG, || async {
        (t.queue_messages("activity.notifications").await == 0).then_some(())
    })
    .await;
    let mails = t.outbox();
    assert_eq!(mails.len(), 200, "one mail per distinct mail-worthy event");
    let recipients: HashSet<String> = mails
        .iter()
        .filter_map(|m| m.lines().find(|l| l.starts_with("To: ")).map(str::to_owned))
        .collect();
    assert_eq!(recipients.len(), 200, "no recipient got two mails");
    assert_eq!(t.ready("activity.dead").await, 0);
}

#[tokio::test]
async fn analytics_counts_match_what_was_published_and_survive_a_restart() {
    let t = TestVhost::new("analytics").await.with_fast_topology().await;
    let analytics = t.spawn_service("analytics", &[], &[]);
    let mut generator = ActivityGenerator::new(40);
    let events: Vec<ActivityEvent> = (0..400).map(|_| generator.next_event()).collect();
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &events {
        *expected.entry(e.kind.as_str()).or_default() += 1;
    }
    let mut with_duplicates = events.clone();
    with_duplicates.extend(events.iter().take(25).cloned());
    t.publish_events(&with_duplicates).await;

    wait_for(
        "400 events counted and 25 duplicates seen",
        LONG,
        || async {
            let s = analytics.get("/stats").await;
            (s["events_total"] == 400 && s["duplicates"] == 25).then_some(())
        },
    )
    .await;
    let stats = analytics.get("/stats").await;
    for (kind, n) in &expected {
        assert_eq!(stats["by_kind"][kind], *n, "{kind}");
    }
    let views = expected["product.viewed"];
    let placed = expected.get("order.placed").copied().unwrap_or(0);
    assert_eq!(stats["funnel"]["views"], views);
    assert_eq!(stats["funnel"]["orders_placed"], placed);
    let rate = stats["funnel"]["view_to_order"].as_f64().unwrap();
    assert!((rate - placed as f64 / views as f64).abs() < 1e-9);
    let per_product_views: u64 = stats["by_product"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|k| k["product.viewed"].as_u64())
        .sum();
    assert_eq!(per_product_views, views);
    let metrics = analytics.text("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "burrow_analytics_events_total{{kind=\"product.viewed\"}} {views}"
        )),
        "{metrics}"
    );

    analytics.stop().await;
    let analytics = t.spawn_service("analytics", &[], &[]);
    assert_eq!(
        analytics.get("/stats").await,
        stats,
        "counts survive a restart"
    );

    // The producer's own generator and one hand-made event add on top.
    let (code, out, err) = t.producer(&["activity", "--count", "60"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("60 confirmed, 0 failed"), "{out}");
    let (code, out, err) = t.producer(
        &[
            "activity",
            "--kind",
            "product.viewed",
            "--user",
            "cus_1",
            "--product",
            "SKU-1",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().starts_with("evt_"), "{out}");
    let (code, _, err) = t.producer(&["inventory", "--sku", "SKU-1", "--stock", "0"], None);
    assert_eq!(code, 0, "{err}");
    wait_for("462 events counted", LONG, || async {
        (analytics.get("/stats").await["events_total"] == 462).then_some(())
    })
    .await;
    assert_eq!(
        analytics.get("/stats").await["by_kind"]["inventory.changed"],
        1
    );
}

#[tokio::test]
async fn malformed_events_are_dead_lettered_with_their_reason() {
    let t = TestVhost::new("activity-dead")
        .await
        .with_fast_topology()
        .await;
    let _notifications = t.spawn_worker("notifications", &[], &[]);
    let analytics = t.spawn_service("analytics", &[], &[]);
    let recommendations = t.spawn_service("recommendations", &[], &[]);
    let mut unknown = serde_json::to_value(viewed("cus_1", "SKU-1")).unwrap();
    unknown["kind"] = "product.teleported".into();
    let mut missing = serde_json::to_value(viewed("cus_1", "SKU-1")).unwrap();
    missing.as_object_mut().unwrap().remove("product_id");
    let raw = |id: &str, body: Vec<u8>| Outgoing {
        exchange: "activity".into(),
        routing_key: "product.viewed".into(),
        body,
        properties: properties("product.viewed", id),
        label: 0,
    };
    t.publish_activity(vec![
        raw("bad-json", b"{not json".to_vec()),
        raw("bad-kind", unknown.to_string().into_bytes()),
        raw("bad-field", missing.to_string().into_bytes()),
    ])
    .await;
    t.publish_events(&[viewed("cus_2", "SKU-2")]).await;

    wait_for("six dead letters (three per queue)", LONG, || async {
        (t.ready("activity.dead").await >= 6).then_some(())
    })
    .await;
    let dead = t.drain("activity.dead").await;
    assert_eq!(dead.len(), 6);
    let mut seen = BTreeMap::<(String, String), String>::new();
    for m in &dead {
        let h = m.delivery.properties.headers().as_ref();
        let id = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .to_string();
        let source = header_str(h, HEADER_SOURCE_QUEUE).unwrap();
        seen.insert((id, source), header_str(h, HEADER_ERROR).unwrap());
    }
    for queue in ["activity.analytics", "activity.notifications"] {
        let reason = |id: &str| seen[&(id.to_owned(), queue.to_owned())].clone();
        assert!(reason("bad-json").contains("malformed JSON"), "{seen:?}");
        assert!(
            reason("bad-kind").contains("product.teleported"),
            "{seen:?}"
        );
        assert!(reason("bad-field").contains("product_id"), "{seen:?}");
    }
    // The good event still went through; the stream consumer skipped the bad ones.
    wait_for("analytics counted the good event", LONG, || async {
        (analytics.get("/stats").await["events_total"] == 1).then_some(())
    })
    .await;
    wait_for("recommendations skipped three", LONG, || async {
        let s = recommendations.get("/state").await;
        (s["skipped"] == 3 && s["events"] == 1).then_some(())
    })
    .await;
    // Graceful shutdown still works after dead-lettering.
    analytics.stop().await;
    recommendations.stop().await;
}

/// Each Message-ID accepted by `smtp`, with how often.
fn mails_by_id(smtp: &crate::services::FakeSmtp) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for id in smtp.accepted() {
        *out.entry(id).or_default() += 1;
    }
    out
}

#[tokio::test]
async fn a_send_slower_than_the_claim_lease_is_sent_once() {
    let t = TestVhost::new("mail-slow").await.with_fast_topology().await;
    let smtp = crate::services::FakeSmtp::start(Duration::from_secs(3)).await;
    let url = smtp.url();
    // A lease of 1 s, a relay that takes 3 s per mail: without renewal the second worker
    // would take the claim over mid-send and send again.
    let env = [
        ("BURROW__MAIL__SMTP_URL", url.as_str()),
        ("BURROW__MAIL__CLAIM_LEASE_MS", "1000"),
    ];
    let _a = t.spawn_worker("notifications", &[], &env);
    let _b = t.spawn_worker("notifications", &[], &env);
    let mut events = Vec::new();
    for i in 0..6 {
        let e = registered(&format!("cus_{i}"));
        // Both copies are in flight at once, one at each worker.
        events.push(e.clone());
        events.push(e);
    }
    t.publish_events(&events).await;
    wait_for("6 mails accepted", LONG, || async {
        (smtp.accepted().len() >= 6).then_some(())
    })
    .await;
    wait_for("every delivery settled", LONG, || async {
        (t.queue_messages("activity.notifications").await == 0).then_some(())
    })
    .await;
    let mails = mails_by_id(&smtp);
    assert_eq!(mails.len(), 6, "{mails:?}");
    assert!(
        mails.values().all(|n| *n == 1),
        "a mail was sent twice: {mails:?}"
    );
    assert_eq!(t.ready("activity.dead").await, 0);
}

#[tokio::test]
async fn a_claim_left_by_a_killed_worker_is_taken_over_at_once_and_sent_once() {
    let t = TestVhost::new("mail-killed")
        .await
        .with_fast_topology()
        .await;
    let smtp = crate::services::FakeSmtp::start(Duration::from_secs(3600)).await;
    let url = smtp.url();
    let env = [("BURROW__MAIL__SMTP_URL", url.as_str())];
    let mut a = t.spawn_worker("notifications", &[], &env);
    let events: Vec<ActivityEvent> = (0..5).map(|i| registered(&format!("cus_{i}"))).collect();
    t.publish_events(&events).await;
    wait_for("every mail to be mid-send", LONG, || async {
        (smtp.holding() == 5).then_some(())
    })
    .await;
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(10)).await;
    *smtp.delay.lock().unwrap() = Duration::ZERO;
    let killed = std::time::Instant::now();
    let _b = t.spawn_worker("notifications", &[], &env);
    wait_for("5 mails accepted", Duration::from_secs(30), || async {
        (smtp.accepted().len() >= 5).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(30), "took {took:?}");
    wait_for("every delivery settled", LONG, || async {
        (t.queue_messages("activity.notifications").await == 0).then_some(())
    })
    .await;
    let mails = mails_by_id(&smtp);
    let expected: HashSet<String> = events
        .iter()
        .map(|e| format!("<{}@burrow>", e.event_id))
        .collect();
    assert_eq!(mails.keys().cloned().collect::<HashSet<_>>(), expected);
    assert!(
        mails.values().all(|n| *n == 1),
        "a mail was sent twice: {mails:?}"
    );
    assert_eq!(t.ready("activity.dead").await, 0);
}
