//! The analytics service (`activity.analytics`): counts events per kind, per product, per minute
//! and the order funnel, persisted in SQLite with per-event dedup (see [`store`]). Serves
//! `GET /stats` (JSON, service-wide, read from the shared store) and Prometheus counters of this
//! process on `/metrics` (`burrow_analytics_events_total{kind}`,
//! `burrow_analytics_duplicates_total`).

pub mod store;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tracing::{debug, error};

pub use store::{AnalyticsStore, Funnel, Minute, Stats};

use crate::message::ActivityEvent;
use crate::metrics::WorkerMetrics;
use crate::worker::{Handler, Incoming, Outcome};

/// The queue the service consumes.
pub const QUEUE: &str = "activity.analytics";

/// Label of the per-kind counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The event kind.
    pub kind: String,
}

/// The analytics handler.
#[derive(Debug, Clone)]
pub struct Analytics {
    store: Arc<AnalyticsStore>,
    events: Family<KindLabels, Counter>,
    duplicates: Counter,
}

impl Analytics {
    /// Counts into `store`, registering this process's counters in `metrics`.
    pub fn new(store: Arc<AnalyticsStore>, metrics: &WorkerMetrics) -> Self {
        let events = Family::<KindLabels, Counter>::default();
        let duplicates = Counter::default();
        metrics.with_registry(|r| {
            r.register(
                "analytics_events",
                "Distinct activity events counted by this process, by kind",
                events.clone(),
            );
            r.register(
                "analytics_duplicates",
                "Deliveries of an already counted event (not counted again) seen by this process",
                duplicates.clone(),
            );
        });
        Self {
            store,
            events,
            duplicates,
        }
    }

    /// `GET /stats`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/stats", get(stats))
            .with_state(self.store.clone())
    }
}

async fn stats(State(store): State<Arc<AnalyticsStore>>) -> Response {
    match store.stats().await {
        Ok(s) => Json(s).into_response(),
        Err(e) => {
            error!(error = %format!("{e:#}"), "reading the analytics store");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "analytics store unavailable\n",
            )
                .into_response()
        }
    }
}

impl Handler for Analytics {
    async fn handle(&self, msg: &Incoming) -> Outcome {
        let event = match ActivityEvent::decode(&msg.body) {
            Ok(e) => e,
            Err(e) => return Outcome::Permanent(e.to_string()),
        };
        match self.store.record(&event).await {
            Ok(true) => {
                self.events
                    .get_or_create(&KindLabels {
                        kind: event.kind.as_str().to_owned(),
                    })
                    .inc();
                Outcome::Success
            }
            Ok(false) => {
                debug!(event_id = %event.event_id, "already counted");
                self.duplicates.inc();
                Outcome::Success
            }
            Err(e) => Outcome::Transient(format!("analytics store: {e:#}")),
        }
    }
}
