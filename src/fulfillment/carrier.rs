//! Shipment booking: the [`Carrier`] trait and a simulated carrier with configurable latency and
//! failure rate, so demos and benchmarks have real I/O waits and real retries.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::message::Order;
use crate::settings::CarrierSettings;

/// Why a booking failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarrierError {
    /// Try again later (timeout, 503).
    #[error("carrier unavailable: {0}")]
    Unavailable(String),
    /// The carrier will never accept this shipment.
    #[error("carrier refused the shipment: {0}")]
    Refused(String),
}

/// Books shipments. Implementations must be idempotent per `order_id` (real carriers take an
/// idempotency key), since an order can be delivered twice.
pub trait Carrier: Send + Sync + 'static {
    /// Books the shipment of `order` and returns the shipment id.
    fn book(&self, order: &Order) -> impl Future<Output = Result<String, CarrierError>> + Send;
}

/// A local stand-in for a carrier's API.
#[derive(Debug, Clone)]
pub struct SimulatedCarrier {
    settings: CarrierSettings,
}

impl SimulatedCarrier {
    /// A carrier that behaves as `settings` say.
    pub fn new(settings: CarrierSettings) -> Self {
        Self { settings }
    }
}

impl Carrier for SimulatedCarrier {
    async fn book(&self, order: &Order) -> Result<String, CarrierError> {
        if self.settings.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.settings.latency_ms)).await;
        }
        if let Some(item) = order
            .items
            .iter()
            .find(|i| self.settings.abort_skus.contains(&i.sku))
        {
            // Fault tests: a message that kills the process, not just the handler.
            tracing::error!(sku = %item.sku, "simulated carrier aborts the process");
            std::process::abort();
        }
        if let Some(item) = order
            .items
            .iter()
            .find(|i| self.settings.panic_skus.contains(&i.sku))
        {
            panic!("simulated carrier crashed on SKU {}", item.sku);
        }
        if let Some(item) = order
            .items
            .iter()
            .find(|i| self.settings.always_fail_skus.contains(&i.sku))
        {
            return Err(CarrierError::Unavailable(format!(
                "no capacity for SKU {}",
                item.sku
            )));
        }
        if self.settings.failure_rate > 0.0
            && rand::rng().random_bool(self.settings.failure_rate.clamp(0.0, 1.0))
        {
            return Err(CarrierError::Unavailable("simulated timeout".into()));
        }
        Ok(format!("shp_{}", order.order_id.trim_start_matches("ord_")))
    }
}
