//! The order service's own metrics on its `/metrics`: orders accepted, outbox depth, age of
//! the oldest unpublished row, and messages relayed (its rate is the relay rate).

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use serde::Serialize;

use super::store::OutboxStats;
use crate::children::metric_sum;
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

/// An order service's outbox as its `/metrics` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OutboxStatus {
    /// Messages not yet published (the whole store's: processes sharing a store agree).
    pub depth: f64,
    /// Age of the oldest of them, in seconds.
    pub oldest_unpublished_seconds: f64,
    /// Orders this process accepted.
    pub accepted: f64,
    /// Messages this process's relay published.
    pub relayed: f64,
}

impl OutboxStatus {
    /// The outbox of a process whose metrics are `metrics`, if it has one.
    pub fn from_metrics(metrics: &str) -> Option<Self> {
        metrics
            .lines()
            .any(|l| l.starts_with(&format!("{OUTBOX_DEPTH} ")))
            .then(|| Self {
                depth: metric_sum(metrics, OUTBOX_DEPTH, &[]),
                oldest_unpublished_seconds: metric_sum(metrics, OUTBOX_OLDEST, &[]),
                accepted: metric_sum(metrics, ORDERS_ACCEPTED, &[]),
                relayed: metric_sum(metrics, OUTBOX_RELAYED, &[]),
            })
    }

    /// The order services' outboxes together: the deepest and oldest (processes sharing a
    /// store report the same rows), the counts summed.
    pub fn combined(all: impl IntoIterator<Item = Self>) -> Option<Self> {
        all.into_iter().reduce(|a, b| Self {
            depth: a.depth.max(b.depth),
            oldest_unpublished_seconds: a
                .oldest_unpublished_seconds
                .max(b.oldest_unpublished_seconds),
            accepted: a.accepted + b.accepted,
            relayed: a.relayed + b.relayed,
        })
    }
}

/// The outbox depth as `/metrics` names it.
const OUTBOX_DEPTH: &str = "burrow_outbox_depth";
const OUTBOX_OLDEST: &str = "burrow_outbox_oldest_unpublished_seconds";
const ORDERS_ACCEPTED: &str = "burrow_orders_accepted_total";
const OUTBOX_RELAYED: &str = "burrow_outbox_relayed_total";
