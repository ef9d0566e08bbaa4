//! Prometheus metrics of `burrow run` (served at `/metrics` on its `--http`): per service the
//! wanted and running worker counts, restarts and scaling decisions.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of per-service metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// `fulfillment` etc.
    pub service: String,
}

/// Labels of scaling decisions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScalingLabels {
    /// `fulfillment` etc.
    pub service: String,
    /// `up` or `down`.
    pub direction: String,
}

/// The supervisor's metrics.
pub struct SupervisorMetrics {
    registry: Mutex<Registry>,
    /// Workers wanted per service.
    pub desired: Family<ServiceLabels, Gauge>,
    /// Workers running per service.
    pub running: Family<ServiceLabels, Gauge>,
    /// Workers restarted after exiting on their own.
    pub restarts: Family<ServiceLabels, Counter>,
    /// Scaling decisions that changed the count.
    pub scalings: Family<ScalingLabels, Counter>,
}

impl std::fmt::Debug for SupervisorMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorMetrics").finish_non_exhaustive()
    }
}

impl Default for SupervisorMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("burrow_supervisor");
        let desired = Family::<ServiceLabels, Gauge>::default();
        let running = Family::<ServiceLabels, Gauge>::default();
        let restarts = Family::<ServiceLabels, Counter>::default();
        let scalings = Family::<ScalingLabels, Counter>::default();
        registry.register(
            "desired_workers",
            "Workers the supervisor wants per service",
            desired.clone(),
        );
        registry.register(
            "running_workers",
            "Workers running per service",
            running.clone(),
        );
        registry.register(
            "restarts",
            "Workers restarted after exiting on their own",
            restarts.clone(),
        );
        registry.register(
            "scalings",
            "Scaling decisions that changed a service's worker count",
            scalings.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            desired,
            running,
            restarts,
            scalings,
        }
    }
}

impl SupervisorMetrics {
    /// Sets the counts of `service`.
    pub fn set_counts(&self, service: &str, desired: u32, running: u32) {
        let labels = ServiceLabels {
            service: service.to_owned(),
        };
        self.desired.get_or_create(&labels).set(i64::from(desired));
        self.running.get_or_create(&labels).set(i64::from(running));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_per_service() {
        let m = SupervisorMetrics::default();
        m.set_counts("fulfillment", 4, 3);
        let text = m.render();
        assert!(
            text.contains("burrow_supervisor_desired_workers{service=\"fulfillment\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("burrow_supervisor_running_workers{service=\"fulfillment\"} 3"),
            "{text}"
        );
    }
}
