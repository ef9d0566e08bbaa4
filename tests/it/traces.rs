//! Traces over OTLP/HTTP: the real binaries export their spans to a small OTLP receiver in this
//! test (protobuf decoded with `opentelemetry-proto`), and one order's spans, from the order
//! service through the fulfillment worker to an `order.fulfilled` consumer, form one trace with
//! the right parent links. Without an endpoint (or with the SDK disabled) nothing is exported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::routing::post;
use burrow::children::Process;
use burrow::message::{header_str, HEADER_TRACEPARENT};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::json;

use crate::helpers::{wait_for, TestVhost, ONE_ORDER};

const LONG: Duration = Duration::from_secs(120);

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    /// `service.name` of the exporting process.
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    /// Empty for a root span.
    parent: String,
    attributes: HashMap<String, String>,
}

impl Received {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// An OTLP/HTTP trace receiver on a free local port: `POST /v1/traces` with protobuf.
struct Receiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<Received>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Receiver {
    async fn start() -> Self {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("address");
        let stop = tokio_util::sync::CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(until.cancelled_owned())
                .await;
        });
        Self {
            endpoint: format!("http://{addr}"),
            spans,
            stop,
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("spans").clone()
    }

    /// The environment that makes a burrow binary export here; `delay_ms` is the batch
    /// processor's schedule delay (the SDK's default is 5 s).
    fn env(&self, delay_ms: u64) -> Vec<(&'static str, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", delay_ms.to_string()),
        ]
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn receive(
    State(spans): State<Arc<Mutex<Vec<Received>>>>,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain")],
            b"not an ExportTraceServiceRequest".to_vec(),
        );
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .and_then(|mut a| a.remove("service.name"))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(Received {
                    service: service.clone(),
                    name: span.name.clone(),
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    spans.lock().expect("spans").extend(received);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => s.clone(),
                any_value::Value::IntValue(i) => i.to_string(),
                any_value::Value::BoolValue(b) => b.to_string(),
                any_value::Value::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The one span matching `what`, or `None` while it has not arrived (more than one is a bug).
fn one<'a>(
    spans: &'a [Received],
    what: &str,
    pred: impl Fn(&Received) -> bool,
) -> Option<&'a Received> {
    let found: Vec<_> = spans.iter().filter(|s| pred(s)).collect();
    assert!(found.len() <= 1, "more than one {what}: {found:#?}");
    found.first().copied()
}

/// A burrow binary started with `args`, exporting to `receiver`.
fn spawn(
    t: &TestVhost,
    receiver: &Receiver,
    binary: &str,
    args: &[&str],
    extra: &[(&str, String)],
) -> Process {
    let program = match binary {
        "producer" => env!("CARGO_BIN_EXE_producer"),
        _ => env!("CARGO_BIN_EXE_worker"),
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(t.env())
        .envs(receiver.env(100))
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    if std::env::var_os("TEST_LOG").is_none() {
        cmd.stderr(std::process::Stdio::null());
    }
    Process::spawn(args.join(" "), cmd)
        .expect("spawning")
        .terminate_on_drop()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// What the test looks for in one order's trace.
struct OrderTrace {
    request: Received,
    order_publish: Received,
    event_publish: Received,
    delivery: Received,
    handler: Received,
    fulfilled_publish: Received,
    consumer_delivery: Received,
    consumer_handler: Received,
}

impl OrderTrace {
    /// Every span of the order's journey, once all have arrived.
    fn find(spans: &[Received], order_id: &str, consumer: &str) -> Option<Self> {
        let producer = "burrow-producer";
        let fulfillment = "burrow-worker-fulfillment";
        let request = one(spans, "request span", |s| {
            s.service == producer
                && s.name == "POST /orders"
                && s.attr("order_id") == Some(order_id)
        })?;
        let order_publish = one(spans, "publish of the order", |s| {
            s.service == producer
                && s.name == "publish orders"
                && s.attr("messaging.message.id") == Some(order_id)
        })?;
        let event_publish = one(spans, "publish of order.placed", |s| {
            s.service == producer
                && s.name == "publish activity"
                && s.attr("messaging.rabbitmq.destination.routing_key") == Some("order.placed")
                && s.trace_id == request.trace_id
        })?;
        let delivery = one(spans, "fulfillment delivery", |s| {
            s.service == fulfillment && s.name == "process orders.fulfillment"
        })?;
        let handler = one(spans, "fulfillment handler", |s| {
            s.service == fulfillment && s.name == "handler"
        })?;
        let fulfilled_publish = one(spans, "publish of order.fulfilled", |s| {
            s.service == fulfillment
                && s.name == "publish activity"
                && s.attr("messaging.rabbitmq.destination.routing_key") == Some("order.fulfilled")
        })?;
        let consumer_delivery = one(spans, "consumer delivery of order.fulfilled", |s| {
            s.service == format!("burrow-worker-{consumer}")
                && s.parent == fulfilled_publish.span_id
        })?;
        let consumer_handler = one(spans, "consumer handler of order.fulfilled", |s| {
            s.service == format!("burrow-worker-{consumer}")
                && s.name == "handler"
                && s.parent == consumer_delivery.span_id
        })?;
        Some(Self {
            request: request.clone(),
            order_publish: order_publish.clone(),
            event_publish: event_publish.clone(),
            delivery: delivery.clone(),
            handler: handler.clone(),
            fulfilled_publish: fulfilled_publish.clone(),
            consumer_delivery: consumer_delivery.clone(),
            consumer_handler: consumer_handler.clone(),
        })
    }
}

#[tokio::test]
async fn one_order_is_one_trace_from_the_order_service_through_fulfillment_to_its_consumers() {
    let t = TestVhost::new("traces").await.with_fast_topology().await;
    let receiver = Receiver::start().await;
    let port = free_port();
    let http = format!("127.0.0.1:{port}");
    let _service = spawn(&t, &receiver, "producer", &["serve", "--http", &http], &[]);
    let _fulfillment = spawn(&t, &receiver, "worker", &["fulfillment"], &[]);
    let _analytics = spawn(&t, &receiver, "worker", &["analytics"], &[]);

    let client = reqwest::Client::new();
    let base = format!("http://{http}");
    wait_for("the order service's API", LONG, || async {
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
    // The caller's own trace context: the order service continues it.
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let response = client
        .post(format!("{base}/orders"))
        .header("Idempotency-Key", "trace-1")
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({
            "customer_id": "cus_1",
            "email": "ann@example.com",
            "items": [{"sku": "SKU-1", "quantity": 2, "unit_price_cents": 1999}],
            "currency": "EUR"
        }))
        .send()
        .await
        .expect("POST /orders");
    assert_eq!(response.status().as_u16(), 202);
    let body: serde_json::Value = response.json().await.expect("JSON");
    let order_id = body["order_id"].as_str().expect("order_id").to_owned();

    let trace = wait_for(
        "the order's spans from the order service, fulfillment and analytics",
        LONG,
        || async { OrderTrace::find(&receiver.spans(), &order_id, "analytics") },
    )
    .await;

    // One trace, the caller's.
    for s in [
        &trace.request,
        &trace.order_publish,
        &trace.event_publish,
        &trace.delivery,
        &trace.handler,
        &trace.fulfilled_publish,
        &trace.consumer_delivery,
        &trace.consumer_handler,
    ] {
        assert_eq!(s.trace_id, caller_trace, "{s:#?}");
    }
    // The parent links, hop by hop.
    assert_eq!(trace.request.parent, caller_span);
    assert_eq!(trace.order_publish.parent, trace.request.span_id);
    assert_eq!(trace.event_publish.parent, trace.request.span_id);
    assert_eq!(trace.delivery.parent, trace.order_publish.span_id);
    assert_eq!(trace.handler.parent, trace.delivery.span_id);
    assert_eq!(trace.fulfilled_publish.parent, trace.handler.span_id);
    assert_eq!(
        trace.consumer_delivery.parent,
        trace.fulfilled_publish.span_id
    );
    assert_eq!(
        trace.consumer_handler.parent,
        trace.consumer_delivery.span_id
    );

    // Kinds and the messaging attributes.
    assert_eq!(trace.request.kind, SpanKind::Server as i32);
    for publish in [&trace.order_publish, &trace.fulfilled_publish] {
        assert_eq!(publish.kind, SpanKind::Producer as i32);
        assert_eq!(publish.attr("messaging.system"), Some("rabbitmq"));
        assert_eq!(publish.attr("messaging.operation"), Some("publish"));
        assert_eq!(publish.attr("outcome"), Some("confirmed"));
    }
    assert_eq!(
        trace.order_publish.attr("messaging.destination.name"),
        Some("orders")
    );
    assert_eq!(
        trace.fulfilled_publish.attr("messaging.destination.name"),
        Some("activity")
    );
    let d = &trace.delivery;
    assert_eq!(d.kind, SpanKind::Consumer as i32);
    assert_eq!(d.attr("messaging.system"), Some("rabbitmq"));
    assert_eq!(d.attr("messaging.operation"), Some("process"));
    assert_eq!(
        d.attr("messaging.destination.name"),
        Some("orders.fulfillment")
    );
    assert_eq!(d.attr("messaging.message.id"), Some(order_id.as_str()));
    assert_eq!(d.attr("queue"), Some("orders.fulfillment"));
    assert_eq!(d.attr("attempt"), Some("1"));
    assert_eq!(d.attr("outcome"), Some("success"));
    assert_eq!(d.attr("trace_id"), Some(caller_trace));
    assert_eq!(trace.handler.attr("outcome"), Some("success"));
    assert_eq!(trace.handler.attr("attempt"), Some("1"));
    let c = &trace.consumer_delivery;
    assert_eq!(
        c.attr("messaging.destination.name"),
        Some("activity.analytics")
    );
    assert_eq!(c.attr("outcome"), Some("success"));
    assert_eq!(
        c.attr("messaging.message.id"),
        trace.fulfilled_publish.attr("messaging.message.id")
    );

    // Looking the order up is a server span too, in the trace of whoever asks.
    let lookup_trace = "5b8efff798038103d269b633813fc60c";
    let lookup_span = "eee19b7ec3c1b174";
    let response = client
        .get(format!("{base}/orders/{order_id}"))
        .header("traceparent", format!("00-{lookup_trace}-{lookup_span}-01"))
        .send()
        .await
        .expect("GET /orders/{order_id}");
    assert_eq!(response.status().as_u16(), 200);
    let lookup = wait_for("the span of GET /orders/{order_id}", LONG, || async {
        receiver
            .spans()
            .into_iter()
            .find(|s| s.name == "GET /orders/{order_id}" && s.trace_id == lookup_trace)
    })
    .await;
    assert_eq!(lookup.kind, SpanKind::Server as i32);
    assert_eq!(lookup.parent, lookup_span);
    assert_eq!(lookup.attr("order_id"), Some(order_id.as_str()));
    assert_eq!(lookup.attr("http.response.status_code"), Some("200"));
}

/// The one order `producer order` left in `orders.fulfillment`, peeked (handed back).
async fn the_queued_order(t: &TestVhost) -> burrow::dlq::DeadLetter {
    let conn = t.connect().await;
    let mut queued = burrow::dlq::list(&conn, "orders.fulfillment", 10)
        .await
        .expect("peek");
    let _ = conn.close(200, "done".into()).await;
    assert_eq!(queued.len(), 1, "one order queued");
    queued.remove(0)
}

#[tokio::test]
async fn a_producer_command_exports_its_spans_before_it_exits() {
    let t = TestVhost::new("traces-cli")
        .await
        .with_fast_topology()
        .await;
    let receiver = Receiver::start().await;
    // A schedule delay far longer than the command: only the flush at exit can send them.
    let mut command = spawn(
        &t,
        &receiver,
        "producer",
        &ONE_ORDER,
        &[("OTEL_BSP_SCHEDULE_DELAY", "600000".into())],
    );
    let status = command.wait_exit(LONG).await.expect("producer order exits");
    assert!(status.success());
    let queued = the_queued_order(&t).await;
    let order_id = queued.id.clone();
    let traceparent =
        header_str(queued.properties.headers().as_ref(), HEADER_TRACEPARENT).expect("traceparent");

    // Already there: the process exported before it exited.
    let spans = receiver.spans();
    let create = one(&spans, "create span", |s| {
        s.name == "create order" && s.attr("messaging.message.id") == Some(order_id.as_str())
    })
    .unwrap_or_else(|| panic!("no create span in {spans:#?}"));
    let publish = one(&spans, "publish span", |s| {
        s.name == "publish orders" && s.attr("messaging.message.id") == Some(order_id.as_str())
    })
    .unwrap_or_else(|| panic!("no publish span in {spans:#?}"));
    assert_eq!(create.service, "burrow-producer");
    assert!(create.parent.is_empty(), "a new trace: {create:#?}");
    assert_eq!(publish.parent, create.span_id);
    assert_eq!(publish.trace_id, create.trace_id);
    // The message carries the publish span's context.
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", publish.trace_id, publish.span_id)
    );
}

#[tokio::test]
async fn with_the_sdk_disabled_nothing_is_exported_and_messages_still_carry_a_trace() {
    let t = TestVhost::new("traces-off")
        .await
        .with_fast_topology()
        .await;
    let receiver = Receiver::start().await;
    let mut command = spawn(
        &t,
        &receiver,
        "producer",
        &ONE_ORDER,
        &[("OTEL_SDK_DISABLED", "true".into())],
    );
    let status = command.wait_exit(LONG).await.expect("producer order exits");
    assert!(status.success());
    let queued = the_queued_order(&t).await;
    assert!(header_str(queued.properties.headers().as_ref(), HEADER_TRACEPARENT).is_some());
    // The process has exited, so whatever it would have exported has been sent.
    assert!(receiver.spans().is_empty(), "{:#?}", receiver.spans());
}

#[tokio::test]
async fn the_order_service_and_a_worker_export_their_last_spans_when_stopped() {
    let t = TestVhost::new("traces-stop")
        .await
        .with_fast_topology()
        .await;
    let receiver = Receiver::start().await;
    // A schedule delay far longer than the test: only the flush at shutdown can send them.
    let slow = [("OTEL_BSP_SCHEDULE_DELAY", "600000".to_owned())];
    let port = free_port();
    let http = format!("127.0.0.1:{port}");
    let mut service = spawn(
        &t,
        &receiver,
        "producer",
        &["serve", "--http", &http],
        &slow,
    );
    let mut fulfillment = spawn(&t, &receiver, "worker", &["fulfillment"], &slow);

    let client = reqwest::Client::new();
    let base = format!("http://{http}");
    wait_for("the order service's API", LONG, || async {
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(|_| ())
    })
    .await;
    let response = client
        .post(format!("{base}/orders"))
        .header("Idempotency-Key", "stop-1")
        .json(&json!({
            "customer_id": "cus_1",
            "email": "ann@example.com",
            "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 500}],
            "currency": "EUR"
        }))
        .send()
        .await
        .expect("POST /orders");
    assert_eq!(response.status().as_u16(), 202);
    let body: serde_json::Value = response.json().await.expect("JSON");
    let order_id = body["order_id"].as_str().expect("order_id").to_owned();
    // Fulfilled: the worker handled it and the service took its order.fulfilled.
    wait_for("the order fulfilled", LONG, || async {
        let r = client
            .get(format!("{base}/orders/{order_id}"))
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        (v["status"] == "fulfilled").then_some(())
    })
    .await;
    assert!(receiver.spans().is_empty(), "exported before the stop");

    // SIGTERM: both stop gracefully and export on the way out.
    assert_eq!(fulfillment.stop(LONG).await, Some(0));
    assert_eq!(service.stop(LONG).await, Some(0));
    let spans = receiver.spans();
    let request = one(&spans, "request span", |s| {
        s.service == "burrow-producer"
            && s.name == "POST /orders"
            && s.attr("order_id") == Some(order_id.as_str())
    })
    .unwrap_or_else(|| panic!("no request span in {spans:#?}"));
    let delivery = one(&spans, "fulfillment delivery", |s| {
        s.service == "burrow-worker-fulfillment" && s.name == "process orders.fulfillment"
    })
    .unwrap_or_else(|| panic!("no delivery span in {spans:#?}"));
    assert_eq!(delivery.trace_id, request.trace_id);
    assert_eq!(delivery.attr("outcome"), Some("success"));
}

#[tokio::test]
async fn each_attempt_of_a_retried_order_is_a_delivery_under_the_publish_of_its_retry_copy() {
    let t = TestVhost::new("traces-retry")
        .await
        .with_fast_topology()
        .await;
    let receiver = Receiver::start().await;
    // Every booking fails with a transient error: the order walks the whole retry ladder.
    let _fulfillment = spawn(
        &t,
        &receiver,
        "worker",
        &["fulfillment", "--carrier-failure-rate", "1"],
        &[],
    );
    let mut command = spawn(&t, &receiver, "producer", &ONE_ORDER, &[]);
    let status = command.wait_exit(LONG).await.expect("producer order exits");
    assert!(status.success());

    let fulfillment = "burrow-worker-fulfillment";
    let spans = wait_for("the dead-lettered delivery", LONG, || async {
        let spans = receiver.spans();
        let dead = spans.iter().any(|s| {
            s.service == fulfillment
                && s.name == "process orders.fulfillment"
                && s.attr("outcome") == Some("dead_lettered")
        });
        // The dead-letter copy's publish ends after the delivery's outcome is known.
        let copy = spans.iter().any(|s| {
            s.service == fulfillment && s.attr("messaging.destination.name") == Some("orders.dlx")
        });
        (dead && copy).then_some(spans)
    })
    .await;
    let publish = one(&spans, "the producer's publish", |s| {
        s.service == "burrow-producer" && s.name == "publish orders"
    })
    .expect("the producer's publish span");
    let mut deliveries: Vec<&Received> = spans
        .iter()
        .filter(|s| s.service == fulfillment && s.name == "process orders.fulfillment")
        .collect();
    deliveries.sort_by_key(|s| s.attr("attempt").and_then(|a| a.parse::<u32>().ok()));
    assert!(deliveries.len() >= 2, "{deliveries:#?}");
    let mut parent = publish.span_id.clone();
    for (i, d) in deliveries.iter().enumerate() {
        let attempt = i + 1;
        let last = attempt == deliveries.len();
        assert_eq!(d.trace_id, publish.trace_id, "{d:#?}");
        assert_eq!(d.attr("attempt"), Some(attempt.to_string().as_str()));
        assert_eq!(
            d.parent, parent,
            "attempt {attempt} continues the copy it came from"
        );
        assert_eq!(
            d.attr("outcome"),
            Some(if last { "dead_lettered" } else { "retried" })
        );
        let handler = one(&spans, "handler", |s| {
            s.service == fulfillment && s.name == "handler" && s.parent == d.span_id
        })
        .expect("a handler span per delivery");
        assert_eq!(handler.attr("outcome"), Some("transient"));
        // The copy (to the next retry queue, or to the dead-letter exchange) is published
        // inside the delivery, and the next attempt is its child.
        let copy = one(&spans, "forwarded copy", |s| {
            s.service == fulfillment && s.name.starts_with("publish ") && s.parent == d.span_id
        })
        .expect("the publish of the copy");
        assert_eq!(copy.attr("outcome"), Some("confirmed"));
        if last {
            assert_eq!(copy.attr("messaging.destination.name"), Some("orders.dlx"));
        } else {
            assert_eq!(copy.attr("messaging.destination.name"), Some("amq.default"));
        }
        parent = copy.span_id.clone();
    }
}

#[tokio::test]
async fn a_replayed_dead_letter_continues_its_trace() {
    let t = TestVhost::new("traces-replay")
        .await
        .with_fast_topology()
        .await;
    let receiver = Receiver::start().await;
    let (trace_id, span_id) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let (order_id, mut letter) = crate::helpers::dead_letter("carrier TIMEOUT", 3);
    let mut headers = letter.properties.headers().clone().unwrap_or_default();
    headers.insert(
        HEADER_TRACEPARENT.into(),
        burrow::message::string_value(&format!("00-{trace_id}-{span_id}-01")),
    );
    letter.properties = letter.properties.with_headers(headers);
    t.publish_messages(vec![letter]).await;
    wait_for("the dead letter in orders.dead", LONG, || async {
        (t.ready("orders.dead").await == 1).then_some(())
    })
    .await;

    // Awaited, not blocking: the receiver runs on this test's runtime.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["dlq", "replay"])
        .envs(t.env())
        .envs(receiver.env(600_000))
        .output()
        .await
        .expect("burrow dlq replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let spans = receiver.spans();
    let publish = one(&spans, "the replay's publish", |s| {
        s.attr("messaging.message.id") == Some(order_id.as_str())
    })
    .unwrap_or_else(|| {
        panic!(
            "no publish span in {spans:#?}; replay said: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(publish.service, "burrow");
    assert_eq!(publish.name, "publish amq.default");
    assert_eq!(
        (publish.trace_id.as_str(), publish.parent.as_str()),
        (trace_id, span_id)
    );
    assert_eq!(publish.attr("outcome"), Some("confirmed"));
    let replayed = t.drain("orders.fulfillment").await;
    assert_eq!(replayed.len(), 1);
    assert_eq!(
        header_str(
            replayed[0].delivery.properties.headers().as_ref(),
            HEADER_TRACEPARENT
        ),
        Some(format!("00-{trace_id}-{}-01", publish.span_id))
    );
}

/// `producer order` with `RUST_LOG=debug` and `env`: its stderr.
async fn producer_debug_log(t: &TestVhost, env: &[(&str, &str)]) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_producer"));
    cmd.args(ONE_ORDER)
        .envs(t.env())
        .env("RUST_LOG", "debug")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("producer order");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn without_an_endpoint_no_exporter_is_built() {
    let t = TestVhost::new("traces-none")
        .await
        .with_fast_topology()
        .await;
    let receiver = Receiver::start().await;
    // With an endpoint the SDK logs its work at debug (its batch export at exit)...
    let with = producer_debug_log(&t, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint)]).await;
    assert!(with.contains("opentelemetry"), "{with}");
    assert!(!receiver.spans().is_empty());
    // ...and without one there is no SDK at all.
    let without = producer_debug_log(&t, &[]).await;
    assert!(!without.contains("opentelemetry"), "{without}");
    assert_eq!(t.ready("orders.fulfillment").await, 2);
}
