//! Observability of a worker: `/healthz` and Prometheus `/metrics` on `--http`, JSON log lines
//! with `--log-format json`, and the W3C trace context carried from an order to its
//! `order.fulfilled` event.

use std::time::Duration;

use burrow::children::{Lines, Process};
use burrow::message::{header_str, HEADER_TRACEPARENT};

use crate::helpers::{order_body, wait_for, TestVhost, ONE_ORDER};
use crate::services::listening_addr;

const LONG: Duration = Duration::from_secs(60);

/// A worker started with `--http 127.0.0.1:0 --log-format json`, with its HTTP address and
/// its log lines.
struct ObservedWorker {
    _process: Process,
    addr: String,
    lines: Lines,
}

impl ObservedWorker {
    async fn spawn(t: &TestVhost) -> Self {
        let mut cmd = t.worker_command(
            "fulfillment",
            &["--http", "127.0.0.1:0", "--log-format", "json"],
            &[("RUST_LOG", "info")],
        );
        cmd.stderr(std::process::Stdio::piped());
        let mut process = Process::spawn("fulfillment", cmd).expect("spawn worker");
        let mut lines = process.stderr_lines(None);
        let addr = lines
            .find(LONG, listening_addr)
            .await
            .expect("'http listening on' in the log");
        Self {
            _process: process,
            addr,
            lines,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (r.status().as_u16(), r.text().await.expect("body"))
    }
}

#[tokio::test]
async fn worker_serves_health_and_metrics_and_logs_json() {
    let t = TestVhost::new("obs-metrics")
        .await
        .with_fast_topology()
        .await;
    let mut w = ObservedWorker::spawn(&t).await;
    assert_eq!(w.get("/healthz").await, (200, "ok\n".to_owned()));

    t.publish_raw((0..20).map(|_| order_body("SKU-1")).collect())
        .await;
    wait_for("20 fulfilments", LONG, || async {
        (t.store_counts().0 >= 20).then_some(())
    })
    .await;
    let metrics = wait_for("the success counter", LONG, || async {
        let (_, m) = w.get("/metrics").await;
        m.contains(r#"burrow_messages_total{queue="orders.fulfillment",outcome="success"} 20"#)
            .then_some(m)
    })
    .await;
    for needle in [
        r#"burrow_handler_seconds_bucket{le="#,
        r#"burrow_handler_seconds_count{queue="orders.fulfillment"} 20"#,
        r#"burrow_in_flight{queue="orders.fulfillment"} 0"#,
        "# TYPE burrow_handler_seconds histogram",
        "# TYPE burrow_in_flight gauge",
    ] {
        assert!(metrics.contains(needle), "{needle} in:\n{metrics}");
    }

    // Every log line so far is a JSON object with a level and a message.
    let lines: Vec<String> = w.lines.drain();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
}

#[tokio::test]
async fn traceparent_of_an_order_reaches_its_order_fulfilled_event() {
    let t = TestVhost::new("obs-trace").await.with_fast_topology().await;
    let (code, out, err) = t.producer(&ONE_ORDER, None);
    assert_eq!(code, 0, "{err}");
    let order_id = out.trim().to_owned();

    // Read the order's trace context before any worker takes it (the message stays queued).
    let conn = t.connect().await;
    let order = burrow::dlq::list(&conn, "orders.fulfillment", 10)
        .await
        .expect("peek");
    let _ = conn.close(200, "done".into()).await;
    assert_eq!(order.len(), 1);
    assert_eq!(order[0].id, order_id);
    let order_trace = header_str(order[0].properties.headers().as_ref(), HEADER_TRACEPARENT)
        .expect("the producer sets traceparent");
    let trace_id = |tp: &str| tp.split('-').nth(1).expect("trace-id").to_owned();
    assert_eq!(trace_id(&order_trace).len(), 32);

    let _w = t.spawn_worker("fulfillment", &[], &[]);
    let event = wait_for("order.fulfilled in activity.analytics", LONG, || async {
        t.drain("activity.analytics").await.into_iter().find(|m| {
            m.delivery.properties.kind().as_ref().map(|k| k.as_str()) == Some("order.fulfilled")
        })
    })
    .await;
    let body: serde_json::Value = serde_json::from_slice(&event.delivery.data).expect("json");
    assert_eq!(body["order_id"], order_id.as_str());
    let event_trace = header_str(
        event.delivery.properties.headers().as_ref(),
        HEADER_TRACEPARENT,
    )
    .expect("order.fulfilled carries traceparent");
    assert_eq!(trace_id(&event_trace), trace_id(&order_trace));
}
