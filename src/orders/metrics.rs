//! The order service's own metrics on its `/metrics`: orders accepted, outbox depth, age of
//! the oldest unpublished row, and messages relayed (its rate is the relay rate).

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::store::OutboxStats;
use crate::metrics::WorkerMetrics;

/// The order service's metrics.
#[derive(Debug, Clone, Default)]
pub struct OrderMetrics {
    /// Orders accepted (new ones, not idempotent replays).
    pub accepted: Counter,
    /// Outbox rows published (confirmed by the broker).
    pub relayed: Counter,
    /// Outbox rows not yet published.
    pub outbox_depth: Gauge,
    /// Seconds since the oldest unpublished row was stored.
    pub oldest_unpublished: Gauge<f64, AtomicU64>,
}

impl OrderMetrics {
    /// Fresh metrics, registered in `metrics`' registry.
    pub fn register(metrics: &WorkerMetrics) -> Self {
        let m = Self::default();
        metrics.with_registry(|r| {
            r.register(
                "orders_accepted",
                "Orders accepted by POST /orders (stored with their outbox rows)",
                m.accepted.clone(),
            );
            r.register(
                "outbox_relayed",
                "Outbox messages the broker confirmed; its rate is the relay rate",
                m.relayed.clone(),
            );
            r.register(
                "outbox_depth",
                "Outbox messages not yet published",
                m.outbox_depth.clone(),
            );
            r.register(
                "outbox_oldest_unpublished_seconds",
                "Age of the oldest outbox message not yet published (0 when none)",
                m.oldest_unpublished.clone(),
            );
        });
        m
    }

    /// Shows `stats` on the gauges.
    pub fn observe(&self, stats: OutboxStats) {
        self.outbox_depth
            .set(i64::try_from(stats.depth).unwrap_or(i64::MAX));
        self.oldest_unpublished.set(stats.oldest_age_secs);
    }
}
