//! Shipment booking: the [`Carrier`] trait and a simulated carrier with configurable latency and
//! failure rate, so demos and benchmarks have real I/O waits and real retries.
//!
//! Every booking carries an idempotency key (the order id): a carrier that sees a key again
//! returns the earlier booking instead of booking a second shipment, as real carrier APIs do.
//! That is what keeps a redelivered order, or one retried after the store failed behind a
//! successful booking, from shipping twice.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rand::Rng;

use crate::message::Order;
use crate::metrics::WorkerMetrics;
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

/// Books shipments.
pub trait Carrier: Send + Sync + 'static {
    /// Books the shipment of `order` and returns the shipment id. A second call with the same
    /// `idempotency_key` must return the first booking, not book again (an order can be
    /// delivered, and so booked, more than once).
    fn book(
        &self,
        idempotency_key: &str,
        order: &Order,
    ) -> impl Future<Output = Result<String, CarrierError>> + Send;
}

/// How many idempotency keys the simulated carrier remembers. Real carriers keep keys for a
/// day or so; the simulation keeps the newest 100,000 (about 2 MB: only a hash of each key is
/// kept, since its shipment id follows from the order id), so a long soak does not grow.
const REMEMBERED_KEYS: usize = 100_000;

/// A local stand-in for a carrier's API.
#[derive(Debug, Clone)]
pub struct SimulatedCarrier {
    settings: CarrierSettings,
    bookings: Arc<Mutex<Bookings>>,
    booked: Counter,
    duplicates: Counter,
}

#[derive(Debug, Default)]
struct Bookings {
    keys: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Bookings {
    /// Remembers `key`; false when it was already known.
    fn insert(&mut self, key: u64) -> bool {
        if !self.keys.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > REMEMBERED_KEYS {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        true
    }
}

fn key_hash(key: &str) -> u64 {
    // SipHash with fixed keys: the same key hashes the same within the process.
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl SimulatedCarrier {
    /// A carrier that behaves as `settings` say.
    pub fn new(settings: CarrierSettings) -> Self {
        Self {
            settings,
            bookings: Arc::default(),
            booked: Counter::default(),
            duplicates: Counter::default(),
        }
    }

    /// Exposes `burrow_carrier_bookings_total` and `burrow_carrier_duplicate_bookings_total` on
    /// the worker's `/metrics`.
    #[must_use]
    pub fn with_metrics(self, metrics: &WorkerMetrics) -> Self {
        metrics.with_registry(|r| {
            r.register(
                "carrier_bookings",
                "Shipments booked with the carrier",
                self.booked.clone(),
            );
            r.register(
                "carrier_duplicate_bookings",
                "Bookings whose idempotency key the carrier had seen: answered with the earlier booking, not booked again",
                self.duplicates.clone(),
            );
        });
        self
    }

    /// Shipments booked (each idempotency key once).
    pub fn bookings(&self) -> u64 {
        self.booked.get()
    }

    /// Bookings answered with an earlier booking because their key was seen before.
    pub fn duplicate_bookings(&self) -> u64 {
        self.duplicates.get()
    }

    fn fail_or_crash(&self, order: &Order) -> Result<(), CarrierError> {
        #[cfg(feature = "test-hooks")]
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
        Ok(())
    }
}

impl Carrier for SimulatedCarrier {
    async fn book(&self, idempotency_key: &str, order: &Order) -> Result<String, CarrierError> {
        if self.settings.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.settings.latency_ms)).await;
        }
        self.fail_or_crash(order)?;
        let shipment = format!("shp_{}", idempotency_key.trim_start_matches("ord_"));
        let new = self
            .bookings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key_hash(idempotency_key));
        if new {
            self.booked.inc();
        } else {
            let duplicates = self.duplicates.inc() + 1;
            tracing::info!(
                idempotency_key,
                %shipment,
                duplicates,
                "carrier: key seen before; returning the earlier booking"
            );
        }
        Ok(shipment)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn settings() -> CarrierSettings {
        CarrierSettings {
            latency_ms: 0,
            failure_rate: 0.0,
            always_fail_skus: Vec::new(),
            panic_skus: Vec::new(),
            #[cfg(feature = "test-hooks")]
            abort_skus: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_key_seen_before_returns_the_earlier_booking_and_counts_a_duplicate() {
        let carrier = SimulatedCarrier::new(settings());
        let order = crate::message::tests_support::order("ord_1");
        let first = carrier.book("ord_1", &order).await.unwrap();
        let again = carrier.book("ord_1", &order).await.unwrap();
        assert_eq!(first, again);
        carrier.book("ord_2", &order).await.unwrap();
        assert_eq!(carrier.bookings(), 2);
        assert_eq!(carrier.duplicate_bookings(), 1);
    }

    #[test]
    fn the_remembered_keys_are_bounded() {
        let mut b = Bookings::default();
        for k in 0..(REMEMBERED_KEYS as u64 + 10) {
            assert!(b.insert(k));
        }
        assert_eq!(b.keys.len(), REMEMBERED_KEYS);
        assert!(b.insert(0), "the oldest keys are forgotten");
        assert!(!b.insert(REMEMBERED_KEYS as u64 + 9));
    }
}
