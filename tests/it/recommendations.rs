//! The recommendations service: a model built from the stream `activity.log`, replayable,
//! resumable from its stored offset, and never recommending what is out of stock.

use std::time::Duration;

use burrow::message::ActivityEvent;
use burrow::producer::activity::ActivityGenerator;
use burrow::producer::CATALOGUE;

use crate::helpers::{wait_for, TestVhost};
use crate::services::{stock, viewed, ServiceProcess};

const LONG: Duration = Duration::from_secs(120);

async fn wait_events(svc: &ServiceProcess, n: u64) {
    wait_for(&format!("{n} events in the model"), LONG, || async {
        (svc.get("/state").await["events"] == n).then_some(())
    })
    .await;
}

/// Every answer the service gives for `users` and the catalogue, as one JSON value.
async fn answers(svc: &ServiceProcess, users: &[String]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for u in users {
        out.insert(u.clone(), svc.get(&format!("/recommendations/{u}")).await);
    }
    for (sku, _) in CATALOGUE {
        out.insert(
            sku.to_owned(),
            svc.get(&format!("/products/{sku}/related")).await,
        );
    }
    out.into()
}

fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

const PROCESSED: &str = "burrow_messages_total{queue=\"activity.log\",outcome=\"success\"}";

#[tokio::test]
async fn a_replay_of_the_stream_gives_the_same_recommendations_as_following_it_live() {
    let t = TestVhost::new("recs-replay")
        .await
        .with_fast_topology()
        .await;
    let live = t.spawn_service("recommendations", &[], &[]);
    let mut generator = ActivityGenerator::new(100);
    let mut events: Vec<ActivityEvent> = (0..600).map(|_| generator.next_event()).collect();
    events.insert(300, stock("SKU-2", 0));
    events.push(stock("SKU-5", 0));
    t.publish_events(&events).await;
    wait_events(&live, events.len() as u64).await;

    let replay_dir = t.settings.store.dir.join("replica");
    let replay_dir = replay_dir.display().to_string();
    let replay = t.spawn_service(
        "recommendations",
        &[],
        &[("BURROW__STORE__DIR", replay_dir.as_str())],
    );
    wait_events(&replay, events.len() as u64).await;

    let users: Vec<String> = (1..=100).map(|i| format!("cus_{i}")).collect();
    let a = answers(&live, &users).await;
    let b = answers(&replay, &users).await;
    assert_eq!(a, b);
    let mut recommended = 0;
    for answer in a.as_object().unwrap().values() {
        let list = answer
            .get("recommendations")
            .or_else(|| answer.get("related"))
            .and_then(|l| l.as_array())
            .unwrap();
        recommended += list.len();
        for s in list {
            let sku = s["sku"].as_str().unwrap();
            assert!(sku != "SKU-2" && sku != "SKU-5", "{answer}");
        }
    }
    assert!(recommended > 50, "the model recommends something: {a}");
}

#[tokio::test]
async fn a_restart_resumes_from_the_stored_offset_and_rebuild_rereads() {
    let t = TestVhost::new("recs-resume")
        .await
        .with_fast_topology()
        .await;
    let svc = t.spawn_service("recommendations", &[], &[]);
    let first: Vec<ActivityEvent> = (0..100)
        .map(|i| viewed(&format!("cus_{}", i % 10), CATALOGUE[i % 12].0))
        .collect();
    t.publish_events(&first).await;
    wait_events(&svc, 100).await;
    let before = svc.get("/state").await;
    let answer = svc.get("/recommendations/cus_3").await;
    svc.stop().await;

    let svc = t.spawn_service("recommendations", &[], &[]);
    assert_eq!(
        svc.get("/state").await,
        before,
        "the model survives a restart"
    );
    assert_eq!(svc.get("/recommendations/cus_3").await, answer);
    let more: Vec<ActivityEvent> = (0..50)
        .map(|i| viewed(&format!("cus_{}", 20 + i % 5), CATALOGUE[i % 12].0))
        .collect();
    t.publish_events(&more).await;
    wait_events(&svc, 150).await;
    let processed = metric(&svc.text("/metrics").await, PROCESSED);
    assert_eq!(
        processed, 50,
        "the restarted instance read only the new messages"
    );
    let state = svc.get("/state").await;
    assert_eq!(
        state["offset"].as_i64().unwrap(),
        before["offset"].as_i64().unwrap() + 50
    );
    svc.stop().await;

    let svc = t.spawn_service("recommendations", &["--rebuild"], &[]);
    wait_events(&svc, 150).await;
    assert_eq!(metric(&svc.text("/metrics").await, PROCESSED), 150);
    assert_eq!(svc.get("/state").await, state);
}

#[tokio::test]
async fn out_of_stock_products_are_never_recommended() {
    let t = TestVhost::new("recs-stock")
        .await
        .with_fast_topology()
        .await;
    let svc = t.spawn_service("recommendations", &[], &[]);
    let mut events = Vec::new();
    for u in 0..6 {
        let user = format!("cus_{u}");
        events.push(viewed(&user, "SKU-1"));
        events.push(viewed(&user, "SKU-2"));
        events.push(viewed(&user, "SKU-3"));
    }
    events.push(viewed("cus_new", "SKU-1"));
    t.publish_events(&events).await;
    wait_events(&svc, events.len() as u64).await;
    let skus = |v: &serde_json::Value, field: &str| -> Vec<String> {
        v[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sku"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        skus(
            &svc.get("/recommendations/cus_new").await,
            "recommendations"
        ),
        ["SKU-2", "SKU-3"]
    );

    t.publish_events(&[stock("SKU-2", 0)]).await;
    wait_events(&svc, events.len() as u64 + 1).await;
    assert_eq!(
        skus(
            &svc.get("/recommendations/cus_new").await,
            "recommendations"
        ),
        ["SKU-3"]
    );
    assert_eq!(
        skus(&svc.get("/products/SKU-1/related").await, "related"),
        ["SKU-3"]
    );
    // A user without history gets popular products, still none out of stock.
    let cold = skus(
        &svc.get("/recommendations/cus_unknown").await,
        "recommendations",
    );
    assert_eq!(cold, ["SKU-1", "SKU-3"]);

    t.publish_events(&[stock("SKU-2", 7)]).await;
    wait_events(&svc, events.len() as u64 + 2).await;
    assert_eq!(
        skus(&svc.get("/products/SKU-1/related").await, "related"),
        ["SKU-2", "SKU-3"]
    );
}

/// Closes every connection of the test vhost through the management API, as an operator (or a
/// node restart) would.
async fn force_close_connections(t: &crate::helpers::TestVhost) -> usize {
    let conns = t.api_get("/api/vhosts/{vhost}/connections").await;
    let names: Vec<String> = conns
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    for name in &names {
        t.api_delete(&format!(
            "/api/connections/{}",
            burrow::settings::encode_vhost(name)
        ))
        .await;
    }
    names.len()
}

#[tokio::test]
async fn a_reconnect_resumes_from_the_stored_offset_and_reads_nothing_twice() {
    let t = TestVhost::new("recs-reconnect")
        .await
        .with_fast_topology()
        .await;
    let svc = t.spawn_service("recommendations", &[], &[]);
    let first: Vec<ActivityEvent> = (0..60)
        .map(|i| viewed(&format!("cus_{}", i % 6), CATALOGUE[i % 12].0))
        .collect();
    t.publish_events(&first).await;
    wait_events(&svc, 60).await;
    // The management API lists a connection a moment after it opens.
    wait_for("the worker's connection to be listed", LONG, || async {
        (force_close_connections(&t).await > 0).then_some(())
    })
    .await;
    wait_for("the worker to reconnect", LONG, || async {
        let m = svc.text("/metrics").await;
        (metric(&m, "burrow_reconnects_total{queue=\"activity.log\"}") >= 1).then_some(())
    })
    .await;
    let more: Vec<ActivityEvent> = (0..40)
        .map(|i| viewed(&format!("cus_{}", 10 + i % 4), CATALOGUE[i % 12].0))
        .collect();
    t.publish_events(&more).await;
    wait_events(&svc, 100).await;
    // A re-read (re-consuming from the start-up offset) would come before the new messages in
    // stream order, so it is counted by the time the new ones are applied.
    assert_eq!(
        metric(&svc.text("/metrics").await, PROCESSED),
        100,
        "every stream message was handled exactly once across the reconnect"
    );
    let state = svc.get("/state").await;
    assert_eq!(state["events"], 100);
    assert_eq!(state["skipped"], 0);
    assert_eq!(
        (state["users"].as_u64(), state["products"].as_u64()),
        (Some(10), Some(12))
    );
    svc.stop().await;
}
