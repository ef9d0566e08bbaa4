//! `burrow console` against the real broker: the overview lists the shop's queues and the
//! workers, dead letters are listed with their reason and shown in full, replay and purge need
//! the console's token and act on the selection only, and a non-loopback address needs a
//! password.

use std::time::Duration;

use burrow::console::TOKEN_HEADER;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::helpers::{dead_letter, wait_for, TestVhost};

const LONG: Duration = Duration::from_secs(60);

/// A console serving one test's vhost, stopped when dropped.
pub struct TestConsole {
    pub base: String,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
}

impl TestConsole {
    pub async fn start(t: &TestVhost) -> Self {
        let shutdown = CancellationToken::new();
        let running = burrow::console::start(
            t.settings.clone(),
            "127.0.0.1:0".parse().expect("address"),
            shutdown.clone(),
        )
        .await
        .expect("starting the console");
        Self {
            base: format!("http://{}", running.addr),
            client: reqwest::Client::new(),
            shutdown,
        }
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The token the page carries, read from it as a browser would.
    pub async fn token(&self) -> String {
        let page = self
            .client
            .get(format!("{}/", self.base))
            .send()
            .await
            .expect("GET /")
            .text()
            .await
            .expect("page");
        let start = page
            .find(r#"<meta name="burrow-token" content=""#)
            .expect("the page carries a token")
            + r#"<meta name="burrow-token" content=""#.len();
        page[start..].split('"').next().expect("token").to_owned()
    }

    pub async fn post(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> (StatusCode, String) {
        let mut request = self.client.post(format!("{}{path}", self.base)).json(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let r = request.send().await.expect("POST");
        (r.status(), r.text().await.unwrap_or_default())
    }
}

impl Drop for TestConsole {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test]
async fn overview_lists_the_shops_queues_and_the_workers_with_their_health() {
    let t = TestVhost::new("console-overview")
        .await
        .with_fast_topology()
        .await;
    let http = burrow::children::free_port().expect("free port");
    let mut worker = t.spawn_worker("fulfillment", &["--http", &http.to_string()], &[]);
    let console = TestConsole::start(&t).await;

    let overview = wait_for("the worker in the overview", LONG, || async {
        let (status, overview) = console.get("/api/overview").await;
        assert_eq!(status, StatusCode::OK, "{overview}");
        let healthy = overview["workers"].as_array()?.iter().any(|w| {
            w["http"] == http.to_string() && w["healthy"] == true && w["service"] == "fulfillment"
        });
        healthy.then_some(overview)
    })
    .await;
    let queues: Vec<&str> = overview["status"]["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    for q in [
        "orders.fulfillment",
        "activity.notifications",
        "orders.dead",
        "activity.dead",
    ] {
        assert!(queues.contains(&q), "{q} in {queues:?}");
    }
    assert_eq!(
        overview["dead_letter_queues"],
        json!(["activity.dead", "orders.dead"])
    );
    assert_eq!(
        overview["outbox"],
        Value::Null,
        "no order service runs in this vhost"
    );
    let fulfillment = overview["status"]["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "orders.fulfillment")
        .unwrap()
        .clone();
    assert!(fulfillment["consumers"].as_u64().is_some(), "{fulfillment}");

    worker.stop(Duration::from_secs(10)).await;
    wait_for(
        "the stopped worker to show unhealthy or gone",
        LONG,
        || async {
            let (_, overview) = console.get("/api/overview").await;
            let still_healthy = overview["workers"]
                .as_array()?
                .iter()
                .any(|w| w["http"] == http.to_string() && w["healthy"] == true);
            (!still_healthy).then_some(())
        },
    )
    .await;
}

/// The outbox panel reads the order service (`producer serve`, found by the address its
/// connections announce) and shows what it accepted and relayed.
#[tokio::test]
async fn the_overview_shows_the_order_services_outbox() {
    let t = TestVhost::new("console-outbox")
        .await
        .with_fast_topology()
        .await;
    let http = burrow::children::free_port().expect("free port");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_producer"));
    cmd.args(["serve", "--http", &http.to_string()])
        .envs(t.env())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _service = burrow::children::Process::spawn("orders", cmd).expect("producer serve");
    let console = TestConsole::start(&t).await;
    let outbox = wait_for("the order service in the overview", LONG, || async {
        let (_, overview) = console.get("/api/overview").await;
        let found = overview["workers"]
            .as_array()?
            .iter()
            .any(|w| w["http"] == http.to_string() && w["service"] == "producer");
        found.then(|| overview["outbox"].clone())
    })
    .await;
    assert_eq!(outbox["services"], 1, "{outbox}");
    assert_eq!(outbox["depth"], 0.0, "{outbox}");

    let order = json!({"customer_id": "cus_1", "email": "ann@example.com", "currency": "EUR",
        "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 100}]});
    let placed = console
        .client
        .post(format!("http://{http}/orders"))
        .header("Idempotency-Key", "console-1")
        .json(&order)
        .send()
        .await
        .expect("POST /orders");
    assert_eq!(placed.status(), StatusCode::ACCEPTED);
    // The order and its event, published: the panel counts what the service counts.
    wait_for("the order relayed", LONG, || async {
        let (_, overview) = console.get("/api/overview").await;
        let o = &overview["outbox"];
        (o["accepted"] == 1.0 && o["relayed"] == 2.0 && o["depth"] == 0.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn dead_letters_are_listed_with_their_reason_and_shown_in_full() {
    let t = TestVhost::new("console-dlq")
        .await
        .with_fast_topology()
        .await;
    let (id, letter) = dead_letter("still failing after 4 attempts: carrier on fire", 4);
    t.publish_messages(vec![letter]).await;
    let console = TestConsole::start(&t).await;

    let (status, listing) = console.get("/api/dead-letters/orders.dead").await;
    assert_eq!(status, StatusCode::OK, "{listing}");
    let letters = listing["letters"].as_array().expect("letters");
    assert_eq!(letters.len(), 1, "{listing}");
    assert_eq!(letters[0]["id"], id.as_str());
    assert_eq!(
        letters[0]["reason"],
        "still failing after 4 attempts: carrier on fire"
    );
    assert_eq!(letters[0]["source_queue"], "orders.fulfillment");
    assert_eq!(letters[0]["attempts"], 4);
    assert!(letters[0]["age_secs"].as_u64().is_some(), "{listing}");

    let (status, full) = console
        .get(&format!("/api/dead-letters/orders.dead/messages/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{full}");
    let headers = full["headers"].as_array().expect("headers");
    assert!(
        headers.iter().any(|h| h[0] == "x-burrow-error"
            && h[1] == "still failing after 4 attempts: carrier on fire"),
        "{full}"
    );
    assert!(
        full["body"]
            .as_str()
            .is_some_and(|b| b.contains(&format!("\"order_id\": \"{id}\""))),
        "{full}"
    );
    assert_eq!(
        t.ready("orders.dead").await,
        1,
        "reading leaves it in place"
    );

    let (status, _) = console
        .get("/api/dead-letters/orders.dead/messages/ord_nope")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = console.get("/api/dead-letters/orders.fulfillment").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "only the topology's dead-letter queues are served"
    );
}

#[tokio::test]
async fn replay_needs_the_consoles_token_and_moves_the_message_back_to_its_source_queue() {
    let t = TestVhost::new("console-replay")
        .await
        .with_fast_topology()
        .await;
    let (id, letter) = dead_letter("still failing after 4 attempts: simulated timeout", 4);
    t.publish_messages(vec![letter]).await;
    let console = TestConsole::start(&t).await;
    let path = "/api/dead-letters/orders.dead/replay";
    let body = json!({ "ids": [id] });

    let (status, text) = console.post(path, &body, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains("token"), "{text}");
    let (status, _) = console
        .post(path, &body, &[(TOKEN_HEADER, "not-the-token")])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let token = console.token().await;
    let (status, text) = console
        .post(
            path,
            &body,
            &[(TOKEN_HEADER, &token), ("origin", "http://evil.example")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another origin: {text}");
    let (status, _) = console
        .post(
            path,
            &body,
            &[(TOKEN_HEADER, &token), ("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another site");
    assert_eq!(
        t.ready("orders.dead").await,
        1,
        "nothing refused was replayed"
    );
    assert_eq!(t.ready("orders.fulfillment").await, 0);

    let (status, text) = console
        .post(
            path,
            &json!({ "ids": [id], "dry_run": true }),
            &[(TOKEN_HEADER, &token)],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let dry: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(dry["counts"]["matched"], 1, "{text}");
    assert_eq!(t.ready("orders.dead").await, 1, "a dry run moves nothing");

    let (status, text) = console.post(path, &body, &[(TOKEN_HEADER, &token)]).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let report: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(report["counts"]["done"], 1, "{text}");
    let moved = t.drain("orders.fulfillment").await;
    let ids: Vec<_> = moved
        .iter()
        .filter_map(|m| m.delivery.properties.message_id().as_ref())
        .map(|s| s.as_str().to_owned())
        .collect();
    assert_eq!(ids, vec![id]);
    assert_eq!(t.ready("orders.dead").await, 0);
}

#[tokio::test]
async fn purge_removes_the_selected_dead_letters_only() {
    let t = TestVhost::new("console-purge")
        .await
        .with_fast_topology()
        .await;
    let letters: Vec<_> = (0..3)
        .map(|i| dead_letter(&format!("invalid order {i}"), 1))
        .collect();
    let ids: Vec<String> = letters.iter().map(|(id, _)| id.clone()).collect();
    t.publish_messages(letters.into_iter().map(|(_, m)| m).collect())
        .await;
    let console = TestConsole::start(&t).await;
    let token = console.token().await;

    let (status, text) = console
        .post(
            "/api/dead-letters/orders.dead/purge",
            &json!({ "ids": [] }),
            &[(TOKEN_HEADER, &token)],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "an empty selection: {text}"
    );
    let (status, text) = console
        .post(
            "/api/dead-letters/orders.dead/purge",
            &json!({ "ids": [ids[1]] }),
            &[(TOKEN_HEADER, &token)],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let counts: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(counts["done"], 1, "{text}");
    assert_eq!(counts["skipped"], 2, "{text}");

    let (_, listing) = console.get("/api/dead-letters/orders.dead").await;
    let mut left: Vec<String> = listing["letters"]
        .as_array()
        .expect("letters")
        .iter()
        .filter_map(|l| l["id"].as_str().map(str::to_owned))
        .collect();
    left.sort();
    let mut expected = vec![ids[0].clone(), ids[2].clone()];
    expected.sort();
    assert_eq!(left, expected);
    assert_eq!(
        t.ready("orders.fulfillment").await,
        0,
        "purge replays nothing"
    );
}

#[tokio::test]
async fn a_non_loopback_address_needs_a_password() {
    let t = TestVhost::new("console-password")
        .await
        .with_fast_topology()
        .await;
    let open = "0.0.0.0:0".parse().expect("address");
    let refused = burrow::console::start(t.settings.clone(), open, CancellationToken::new())
        .await
        .expect_err("a non-loopback address without a password is refused");
    let text = format!("{refused:#}");
    assert!(text.contains("BURROW__CONSOLE__PASSWORD"), "{text}");
    assert!(!text.contains(":guest@"), "no AMQP password: {text}");

    // The binary says the same and exits 78 (configuration).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["console", "--http", "0.0.0.0:0"])
        .envs(t.env())
        .output()
        .expect("running burrow console");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("BURROW__CONSOLE__PASSWORD"), "{stderr}");

    let mut settings = t.settings.clone();
    settings.console.password = Some(burrow::topology::Password::new("s3cret"));
    let shutdown = CancellationToken::new();
    let running = burrow::console::start(settings, open, shutdown.clone())
        .await
        .expect("with a password it starts");
    let url = format!("http://127.0.0.1:{}/api/overview", running.addr.port());
    let client = reqwest::Client::new();
    let r = client.get(&url).send().await.expect("GET");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client
        .get(&url)
        .basic_auth("ops", Some("wrong"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client
        .get(&url)
        .basic_auth("ops", Some("s3cret"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::OK);
    shutdown.cancel();
}

#[tokio::test]
async fn the_topology_picture_highlights_drift_against_the_file() {
    let t = TestVhost::new("console-topology")
        .await
        .with_fast_topology()
        .await;
    let console = TestConsole::start(&t).await;
    let (status, view) = console.get("/api/topology").await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["drift"], json!([]), "a fresh vhost matches the file");

    t.delete_queue("activity.dead").await;
    let (status, view) = console.get("/api/topology").await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let dead = view["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["name"] == "activity.dead")
        .expect("activity.dead drawn")
        .clone();
    assert!(
        dead["drift"][0]
            .as_str()
            .is_some_and(|d| d.contains("missing on the broker")),
        "{dead}"
    );
    let svg = console
        .client
        .get(format!("{}/api/topology.svg", console.base))
        .send()
        .await
        .expect("GET svg")
        .text()
        .await
        .expect("svg");
    assert!(
        svg.contains(r#"<g class="queue drift" data-name="activity.dead">"#),
        "{svg}"
    );
    assert!(svg.contains(r#"<g class="queue" data-name="orders.dead">"#));
}
