//! Prometheus metrics of a worker: messages per queue and outcome, handler latency, handlers in
//! flight and reconnects, rendered in the text exposition format for `/metrics`.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of per-queue, per-outcome counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The queue consumed.
    pub queue: String,
    /// `success`, `retried`, `dead_lettered`, `requeued`.
    pub outcome: String,
}

/// Labels of per-queue metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// The queue consumed.
    pub queue: String,
}

/// Labels of a worker's circuit breaker.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakerLabels {
    /// The queue consumed.
    pub queue: String,
    /// The dependency the breaker watches (`smtp`, `store`).
    pub dependency: String,
}

/// The metrics of the worker runtime.
pub struct WorkerMetrics {
    registry: Mutex<Registry>,
    /// Settled messages by outcome.
    pub messages: Family<OutcomeLabels, Counter>,
    /// Handler run time in seconds.
    pub handler_seconds: Family<QueueLabels, Histogram>,
    /// Handlers running now.
    pub in_flight: Family<QueueLabels, Gauge>,
    /// Connections re-established after a loss.
    pub reconnects: Family<QueueLabels, Counter>,
    /// Circuit breaker per dependency: 0 closed (consuming), 1 half-open (consuming on trial),
    /// 2 open (not consuming, probing).
    pub breaker_state: Family<BreakerLabels, Gauge>,
    /// Times a circuit breaker opened.
    pub breaker_opened: Family<BreakerLabels, Counter>,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("burrow");
        let messages = Family::<OutcomeLabels, Counter>::default();
        let handler_seconds = Family::<QueueLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let in_flight = Family::<QueueLabels, Gauge>::default();
        let reconnects = Family::<QueueLabels, Counter>::default();
        let breaker_state = Family::<BreakerLabels, Gauge>::default();
        let breaker_opened = Family::<BreakerLabels, Counter>::default();
        registry.register(
            "messages",
            "Messages settled, by queue and outcome",
            messages.clone(),
        );
        registry.register(
            "handler_seconds",
            "Handler run time",
            handler_seconds.clone(),
        );
        registry.register("in_flight", "Handlers running now", in_flight.clone());
        registry.register(
            "reconnects",
            "Connections re-established after a loss",
            reconnects.clone(),
        );
        registry.register(
            "breaker_state",
            "Circuit breaker per dependency: 0 closed, 1 half-open, 2 open (not consuming)",
            breaker_state.clone(),
        );
        registry.register(
            "breaker_opened",
            "Times a circuit breaker opened (consuming stopped)",
            breaker_opened.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            messages,
            handler_seconds,
            in_flight,
            reconnects,
            breaker_state,
            breaker_opened,
        }
    }
}

impl WorkerMetrics {
    /// A fresh set, shared between the runtime and the HTTP endpoint.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Counts one settled message.
    pub fn count(&self, queue: &str, outcome: &str) {
        self.messages
            .get_or_create(&OutcomeLabels {
                queue: queue.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Registers more metrics (e.g. a service's own) in the same registry.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut registry)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// The exposition name of [`WorkerMetrics::messages`] (a counter: `_total`), for readers of
/// `/metrics` such as `burrow console`.
pub const MESSAGES_TOTAL: &str = "burrow_messages_total";
/// The exposition name of [`WorkerMetrics::handler_seconds`] (a histogram: `_sum`, `_count`).
pub const HANDLER_SECONDS: &str = "burrow_handler_seconds";
