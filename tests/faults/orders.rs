//! The order service against a private node (`burrowf4`) that is stopped while customers order:
//! the API keeps accepting, the outbox grows, and once the node is back every accepted order is
//! published and fulfilled, each once.

use crate::shop::Command;
use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{self, Node};
use crate::shop::{wait_for, Proc, Shop, LONG};

/// This scenario's node index (the other scenarios use 1..3).
const NODE: u16 = 4;

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

async fn metric(http: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_accepted_while_the_node_is_stopped_are_all_fulfilled_once_after_it_starts() {
    crate::requires::skip_unless_fault_env!();
    let _serial = harness::SERIAL.lock().await;
    let node = Node::start(NODE);
    let shop = Shop::new(vec![node.url()]);
    shop.apply_topology_ok();
    let _worker = shop.spawn_worker(0, &[], &[]);
    let addr = free_addr();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_producer"));
    cmd.args(["serve", "--http", &addr])
        .envs(shop.env_for(&shop.urls));
    let _service = Proc::spawn(cmd, shop.path("order-service.log"), None);
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    wait_for("the order service", LONG, || async {
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .ok()
            .map(|_| ())
    })
    .await;

    node.stop();
    let mut ids = Vec::new();
    for i in 0..100 {
        let order = json!({
            "customer_id": format!("cus_{i}"),
            "email": "ann@example.com",
            "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 500}],
            "currency": "EUR"
        });
        let resp = http
            .post(format!("{base}/orders"))
            .header("Idempotency-Key", format!("outage-{i}"))
            .json(&order)
            .send()
            .await
            .expect("POST /orders while the node is down");
        assert_eq!(resp.status().as_u16(), 202);
        let body: Value = resp.json().await.expect("json");
        ids.push(body["order_id"].as_str().expect("order_id").to_owned());
    }
    let ready = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(
        ready.status().as_u16(),
        200,
        "ready while the store answers"
    );
    let report: Value = ready.json().await.expect("json");
    assert_ne!(report["checks"]["broker"], "ok", "{report}");
    wait_for("the outbox holding every order and event", LONG, || async {
        (metric(&http, &base, "burrow_outbox_depth").await == Some(200.0)).then_some(())
    })
    .await;

    node.boot();
    let expected: HashSet<String> = ids.iter().cloned().collect();
    wait_for("every accepted order fulfilled", LONG, || async {
        expected.is_subset(&shop.fulfilled_ids()).then_some(())
    })
    .await;
    wait_for("an empty outbox", LONG, || async {
        (metric(&http, &base, "burrow_outbox_depth").await == Some(0.0)).then_some(())
    })
    .await;
    let (fulfilled, duplicates) = shop.store_counts();
    assert_eq!(fulfilled, ids.len() as u64, "nothing else was fulfilled");
    assert_eq!(duplicates, 0, "nothing was published twice");
    for id in &ids {
        let body: Value = http
            .get(format!("{base}/orders/{id}"))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("json");
        assert_eq!(body["status"], "published", "{id}: {body}");
    }
}
