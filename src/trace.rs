//! The trace of a message: its W3C trace context (`traceparent`, `tracestate`) read and written
//! with OpenTelemetry's TraceContext propagator, and the spans of its life: `publish` (one per
//! message sent), `delivery` (one per message taken from a queue, a child of the message's
//! `traceparent`) and `handler` (the service's work, inside the delivery).
//!
//! The `delivery` span always exists: its fields (queue, message id, attempt, trace id) are on
//! every log line of the delivery. The `publish` and `handler` spans, the parent links and the
//! OpenTelemetry attributes exist only while spans are exported
//! ([`crate::telemetry::exporting`]); otherwise they cost one relaxed load per message.

use std::collections::HashMap;

use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::message::{string_value, HEADER_TRACEPARENT};
use crate::publisher::{Confirm, Outgoing};
use crate::telemetry::exporting;
use crate::worker::{Incoming, Outcome};

/// `messaging.system` of every message span.
const SYSTEM: &str = "rabbitmq";
/// The name OpenTelemetry gives RabbitMQ's default exchange (`""`).
const DEFAULT_EXCHANGE: &str = "amq.default";

/// AMQP headers read as a W3C carrier.
struct HeaderExtractor<'a>(Option<&'a FieldTable>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0?.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|h| h.inner().keys().map(|k| k.as_str()).collect())
            .unwrap_or_default()
    }
}

/// AMQP headers written as a W3C carrier (an empty `tracestate` is left out).
struct HeaderInjector<'a>(&'a mut FieldTable);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        self.0.insert(key.into(), string_value(&value));
    }
}

/// HTTP request headers read as a W3C carrier.
struct HttpExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The trace context `headers` carry (empty when they carry none or a malformed one).
pub fn context(headers: Option<&FieldTable>) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes the trace context of `cx` into `headers` (`traceparent`, and `tracestate` when it
/// has one); nothing when `cx` has no valid span.
pub fn inject(cx: &Context, headers: &mut FieldTable) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// The `traceparent` of `cx`, if it has a valid span.
fn traceparent_of(cx: &Context) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove(HEADER_TRACEPARENT)
}

/// The `traceparent` a new message starts its trace with: while spans are exported, the
/// context of the current span or, outside any span (the `producer` commands), of a new root
/// `create` span for the message (`kind` and `id` name it); otherwise a random one (version
/// 00, sampled), so that logs can still follow one message through the shop.
pub fn new_traceparent(kind: &str, id: &str) -> String {
    if exporting() {
        if let Some(tp) = traceparent_of(&Span::current().context()) {
            return tp;
        }
        let span = tracing::info_span!(
            parent: None,
            "create",
            otel.kind = "producer",
            otel.name = %format_args!("create {kind}"),
            messaging.system = SYSTEM,
            messaging.operation.type = "create",
            messaging.message.id = %id,
        );
        if let Some(tp) = traceparent_of(&span.context()) {
            return tp;
        }
    }
    random_traceparent()
}

fn random_traceparent() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    format!(
        "00-{:032x}-{:016x}-01",
        rng.random::<u128>(),
        rng.random::<u64>()
    )
}

/// The span of one publish of `msg`, whose trace context it writes into `msg`'s headers, so
/// that the consumer's delivery is its child. [`Span::none`] unless spans are exported.
///
/// Its parent is the current span when that belongs to the trace the message already carries
/// (a handler publishing on: `order.fulfilled` inside the fulfillment handler, a retry copy
/// inside its delivery), else the message's own `traceparent` (the outbox relay publishing an
/// order stored by an earlier request), else the current span or nothing.
pub fn publish_span(msg: &mut Outgoing) -> Span {
    if !exporting() {
        return Span::none();
    }
    let carried = context(msg.properties.headers().as_ref());
    let carried_trace = carried.span().span_context().trace_id();
    let current = Span::current().context();
    let current = current.span();
    let current = current.span_context();
    let under_current = current.is_valid()
        && (!carried.span().span_context().is_valid() || current.trace_id() == carried_trace);
    let destination = if msg.exchange.is_empty() {
        DEFAULT_EXCHANGE
    } else {
        msg.exchange.as_str()
    };
    let message_id = msg
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str())
        .unwrap_or("");
    let span = tracing::info_span!(
        "publish",
        otel.kind = "producer",
        otel.name = %format_args!("publish {destination}"),
        messaging.system = SYSTEM,
        messaging.operation = "publish",
        messaging.operation.type = "send",
        messaging.destination.name = %destination,
        messaging.rabbitmq.destination.routing_key = %msg.routing_key,
        messaging.message.id = %message_id,
        outcome = Empty,
    );
    if !under_current {
        let _ = span.set_parent(carried);
    }
    let mut headers = msg.properties.headers().clone().unwrap_or_default();
    inject(&span.context(), &mut headers);
    msg.properties = std::mem::take(&mut msg.properties).with_headers(headers);
    span
}

/// Records on a publish span how the broker answered.
pub fn published(span: &Span, confirm: &Confirm) {
    if span.is_none() {
        return;
    }
    let outcome = match confirm {
        Confirm::Confirmed => "confirmed",
        Confirm::Nacked => "nacked",
        Confirm::Returned(_) => "returned",
    };
    span.record("outcome", outcome);
    if *confirm != Confirm::Confirmed {
        span.set_status(Status::error(outcome));
    }
}

/// Records on a publish span that it failed (channel lost, no confirm in time).
pub fn publish_failed(span: &Span, error: &str) {
    if span.is_none() {
        return;
    }
    span.record("outcome", "failed");
    span.set_status(Status::error(error.to_owned()));
}

/// The span of one delivery of `msg` from `queue`: `queue`, `message_id`, `attempt` (1 for the
/// first), `redelivered` and the `trace_id` of its `traceparent` as fields; `outcome` is
/// recorded by [`delivered`]. While spans are exported it is a consumer span, a child of the
/// message's trace context, with the OpenTelemetry messaging attributes.
pub fn delivery_span(queue: &str, msg: &Incoming) -> Span {
    let span = tracing::info_span!(
        "delivery",
        queue = %queue,
        message_id = msg.message_id().unwrap_or("-"),
        attempt = msg.attempts().saturating_add(1),
        redelivered = msg.redelivered,
        trace_id = Empty,
        outcome = Empty,
        otel.kind = Empty,
        otel.name = Empty,
    );
    // Nobody reads it (the log is quieter than `info` and nothing is exported): no parsing.
    if span.is_disabled() {
        return span;
    }
    let parent = context(msg.headers());
    let trace_id = parent.span().span_context().trace_id();
    if parent.span().span_context().is_valid() {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    if exporting() {
        span.record("otel.kind", "consumer");
        span.record(
            "otel.name",
            tracing::field::display(format_args!("process {queue}")),
        );
        let _ = span.set_parent(parent);
        span.set_attribute("messaging.system", SYSTEM);
        span.set_attribute("messaging.operation", "process");
        span.set_attribute("messaging.operation.type", "process");
        span.set_attribute("messaging.destination.name", queue.to_owned());
        span.set_attribute(
            "messaging.rabbitmq.destination.routing_key",
            msg.routing_key.clone(),
        );
        if let Some(id) = msg.message_id() {
            span.set_attribute("messaging.message.id", id.to_owned());
        }
    }
    span
}

/// Records on a delivery span how it was settled: `success`, `retried`, `dead_lettered` or
/// `released` (handed back to the queue).
pub fn delivered(span: &Span, outcome: &'static str) {
    span.record("outcome", outcome);
    if exporting() && outcome != "success" {
        span.set_status(Status::error(outcome));
    }
}

/// The span of a handler's work on `msg` from `queue` (inside its delivery span);
/// [`Span::none`] unless spans are exported.
pub fn handler_span(queue: &str, msg: &Incoming) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = tracing::info_span!("handler", outcome = Empty);
    span.set_attribute("messaging.destination.name", queue.to_owned());
    span.set_attribute(
        "messaging.message.id",
        msg.message_id().unwrap_or("").to_owned(),
    );
    span.set_attribute("attempt", i64::from(msg.attempts().saturating_add(1)));
    span
}

/// Records the handler's outcome: `success`, `transient`, `permanent` or `unavailable` (an
/// error status with the reason for the last three).
pub fn handled(span: &Span, outcome: &Outcome) {
    if span.is_none() {
        return;
    }
    let (name, reason) = match outcome {
        Outcome::Success => ("success", None),
        Outcome::Transient(r) => ("transient", Some(r.clone())),
        Outcome::Permanent(r) => ("permanent", Some(r.clone())),
        Outcome::Unavailable { dependency, reason } => {
            ("unavailable", Some(format!("{dependency}: {reason}")))
        }
    };
    span.record("outcome", name);
    if let Some(reason) = reason {
        span.set_status(Status::error(reason));
    }
}

/// The server span of an HTTP request of the order service (`POST /orders`), a child of the
/// request's own `traceparent` when it has one; [`Span::none`] unless spans are exported.
pub fn request_span(method: &str, route: &str, headers: &axum::http::HeaderMap) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        otel.name = %format_args!("{method} {route}"),
        http.request.method = %method,
        http.route = %route,
        order_id = Empty,
        http.response.status_code = Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HttpExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::HEADER_TRACESTATE;

    #[test]
    fn the_trace_context_is_read_from_and_written_to_amqp_headers() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = FieldTable::default();
        headers.insert(HEADER_TRACEPARENT.into(), string_value(tp));
        let cx = context(Some(&headers));
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");

        let mut out = FieldTable::default();
        inject(&cx, &mut out);
        assert_eq!(
            crate::message::header_str(Some(&out), HEADER_TRACEPARENT).as_deref(),
            Some(tp)
        );
        // No tracestate came in, so none goes out (not even an empty one).
        assert!(!out.inner().contains_key(HEADER_TRACESTATE));
    }

    #[test]
    fn a_missing_or_malformed_traceparent_is_no_context() {
        for tp in ["garbage", "00-short-00f067aa0ba902b7-01", ""] {
            let mut headers = FieldTable::default();
            headers.insert(HEADER_TRACEPARENT.into(), string_value(tp));
            assert!(
                !context(Some(&headers)).span().span_context().is_valid(),
                "{tp}"
            );
        }
        assert!(!context(None).span().span_context().is_valid());
    }

    #[test]
    fn without_export_a_new_message_gets_a_random_w3c_traceparent() {
        let tp = new_traceparent("order", "ord_1");
        let mut headers = FieldTable::default();
        headers.insert(HEADER_TRACEPARENT.into(), string_value(&tp));
        assert!(
            context(Some(&headers)).span().span_context().is_valid(),
            "{tp}"
        );
        assert_ne!(tp, new_traceparent("order", "ord_1"));
    }

    #[test]
    fn without_export_no_publish_or_handler_span_is_made() {
        let mut msg = crate::producer::event_message(
            &crate::message::ActivityEvent::order_placed(&crate::message::tests_support::order(
                "ord_1",
            )),
            None,
        );
        assert!(publish_span(&mut msg).is_none());
        assert!(msg.properties.headers().is_none());
    }
}
