//! The inventory service (`orders.inventory`): keeps the stock per SKU (see [`store`]),
//! reserves it for every order placed, takes restocks (`producer inventory`), and publishes
//! `inventory.changed` whenever a level changes, so that the recommendations service stops
//! recommending a sold-out product by itself. Serves `GET /stock` (JSON, service-wide, read from
//! the shared store) and Prometheus counters of this process on `/metrics`
//! (`burrow_inventory_reserved_units_total`, `burrow_inventory_backordered_units_total`, ...).
//!
//! Its queue is bound to `orders` with `order.placed` (the order carries the quantities; the
//! `order.placed` activity event only names the SKUs) and to `activity.by-kind` with
//! `inventory.changed` (restocks), the topic exchange that the `activity` fanout feeds. Any
//! other event an operator binds it to is acked unread. One queue for both keeps orders and
//! restocks in the order the broker routed them.
//!
//! # What holds, and what does not
//! - An order is reserved at most once per `order_id`, a restock applied at most once per
//!   `event_id`: the id is recorded in the transaction that changes the level.
//! - A restock sets the level as of the moment the service applies it: reservations applied
//!   before it are overwritten, those applied after it count down from it. An order placed just
//!   before a restock but handled after it is taken from the new level. The queue holds orders
//!   and restocks in routing order, but handlers run concurrently (`--concurrency`) and
//!   processes compete, so two deliveries close together may be applied in either order; each
//!   is applied atomically (SQLite `BEGIN IMMEDIATE` serializes them, also across processes).
//! - The service's own `inventory.changed` events come back through its binding marked
//!   `x-burrow-origin: inventory` and are ignored: their level is already in the store, and
//!   applying a stale one (published before later reservations) would raise the level again.
//! - Announcements publish the level *current when published*, not the one a handler saw, and
//!   one at a time per process. Every change bumps the SKU's version; after a confirmed publish
//!   of version `v` the SKU is re-read, and if its version moved past `v` meanwhile (another
//!   process changed it), the current level is published again. So once the service is idle,
//!   the last `inventory.changed` of a SKU in the stream carries its level in the store, also
//!   with several inventory processes on one store. In between, consumers may briefly see a
//!   level that is already out of date.
//! - A publish that is not confirmed fails the delivery (`events`, via the circuit breaker);
//!   its redelivery is a duplicate that reserves nothing and publishes what is still
//!   unannounced. A crash between commit and publish leaves the change unannounced until the
//!   SKU's next delivery.
//! - A SKU that was never stocked has no level: orders for it reserve and announce nothing
//!   (without this, every product of a shop that does not track stock would be announced sold
//!   out). A level starts with the first restock.

pub mod stock;
pub mod store;

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Mutex;
use tracing::{debug, error, warn};

pub use stock::{Input, Reservation, ORIGIN};
pub use store::{InventoryStore, Level, Line, Reserved, SkuStock, StockReport};

use crate::fulfillment::Announcer;
use crate::message::HEADER_TRACEPARENT;
use crate::metrics::WorkerMetrics;
use crate::worker::{Handler, Incoming, Outcome};

/// The queue the service consumes.
pub const QUEUE: &str = "orders.inventory";
/// The dependency name of the inventory store in the circuit breaker.
pub const STORE: &str = "store";
/// The dependency an `inventory.changed` announcement needs: the broker taking events.
pub const EVENTS: &str = "events";

/// This process's counters.
#[derive(Debug, Clone, Default)]
struct Counters {
    reserved: Counter,
    backordered: Counter,
    restocks: Counter,
    duplicates: Counter,
    echoes: Counter,
    skipped: Counter,
    announced: Counter,
}

/// The inventory handler.
pub struct Inventory {
    store: Arc<InventoryStore>,
    announcer: Option<Arc<Announcer>>,
    /// One announcement at a time in this process, so its publishes follow its commits.
    turn: Mutex<()>,
    counters: Counters,
}

fn store_down(e: &anyhow::Error) -> Outcome {
    Outcome::Unavailable {
        dependency: STORE,
        reason: format!("{e:#}"),
    }
}

impl Inventory {
    /// Keeps the stock in `store`; when `announcer` is set (it must mark its events with
    /// [`ORIGIN`]), publishes `inventory.changed`. Registers this process's counters in
    /// `metrics`.
    pub fn new(
        store: Arc<InventoryStore>,
        announcer: Option<Arc<Announcer>>,
        metrics: &WorkerMetrics,
    ) -> Self {
        let counters = Counters::default();
        metrics.with_registry(|r| {
            for (name, help, c) in [
                (
                    "inventory_reserved_units",
                    "Units reserved from stock by this process",
                    &counters.reserved,
                ),
                (
                    "inventory_backordered_units",
                    "Units ordered beyond the stock (fulfilled as back-orders), by this process",
                    &counters.backordered,
                ),
                (
                    "inventory_restocks",
                    "Restocks (inventory.changed from others) applied by this process",
                    &counters.restocks,
                ),
                (
                    "inventory_duplicates",
                    "Deliveries of an order or restock applied before (not applied again)",
                    &counters.duplicates,
                ),
                (
                    "inventory_echoes",
                    "The service's own inventory.changed events back through its binding, ignored",
                    &counters.echoes,
                ),
                (
                    "inventory_skipped",
                    "Invalid orders or events skipped (dead-lettered by the services that own them)",
                    &counters.skipped,
                ),
                (
                    "inventory_announcements",
                    "inventory.changed events published (confirmed) by this process",
                    &counters.announced,
                ),
            ] {
                r.register(name, help, c.clone());
            }
        });
        Self {
            store,
            announcer,
            turn: Mutex::new(()),
            counters,
        }
    }

    /// `GET /stock`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/stock", get(stock_report))
            .with_state(self.store.clone())
    }

    /// Publishes the current level of each of `skus` that has a change not yet announced (see
    /// the module documentation for the ordering this gives).
    async fn announce(&self, skus: &[String], traceparent: Option<&str>) -> Result<(), Outcome> {
        let Some(announcer) = &self.announcer else {
            return Ok(());
        };
        if skus.is_empty() {
            return Ok(());
        }
        let _turn = self.turn.lock().await;
        for sku in skus {
            let mut overtaken = false;
            loop {
                let level = match self.store.level(sku).await {
                    Ok(Some(level)) => level,
                    Ok(None) => break,
                    Err(e) => return Err(store_down(&e)),
                };
                if !level.pending() && !overtaken {
                    break;
                }
                let delta = level.stock - level.announced_stock.unwrap_or(0);
                let event = crate::producer::activity::inventory_event(sku, level.stock, delta);
                if let Err(e) = announcer.announce(&event, traceparent).await {
                    return Err(Outcome::Unavailable {
                        dependency: EVENTS,
                        reason: format!("announcing inventory.changed: {e:#}"),
                    });
                }
                self.counters.announced.inc();
                debug!(%sku, stock = level.stock, version = level.version, "announced");
                match self
                    .store
                    .mark_announced(sku, level.version, level.stock)
                    .await
                {
                    // Changed while this publish was under way, possibly by another process
                    // whose announcement of the newer level the broker routed before this one:
                    // publish the current level again, so the last word is the newest.
                    Ok(now) => overtaken = now > level.version,
                    Err(e) => return Err(store_down(&e)),
                }
            }
        }
        Ok(())
    }
}

async fn stock_report(State(store): State<Arc<InventoryStore>>) -> Response {
    match store.report().await {
        Ok(r) => Json(r).into_response(),
        Err(e) => {
            error!(error = %format!("{e:#}"), "reading the inventory store");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "inventory store unavailable\n",
            )
                .into_response()
        }
    }
}

impl Handler for Inventory {
    /// The store: one read.
    async fn probe(&self, dependency: &str) -> Result<(), String> {
        if dependency != STORE {
            return Ok(());
        }
        self.store.ping().await.map_err(|e| format!("{e:#}"))
    }

    async fn handle(&self, msg: &Incoming) -> Outcome {
        let traceparent = msg.header(HEADER_TRACEPARENT);
        let skus = match Input::of(msg) {
            Input::Order(order) => {
                let lines = stock::order_lines(&order);
                let reserved = match self.store.reserve(&order.order_id, lines).await {
                    Ok(r) => r,
                    Err(e) => return store_down(&e),
                };
                match &reserved {
                    Reserved::New(lines) => {
                        for line in lines {
                            self.counters.reserved.inc_by(unsigned(line.reserved));
                            self.counters.backordered.inc_by(unsigned(line.backordered));
                            if line.backordered > 0 {
                                debug!(order_id = %order.order_id, sku = %line.sku, units = line.backordered, "back-ordered");
                            }
                        }
                    }
                    Reserved::Duplicate(_) => {
                        debug!(order_id = %order.order_id, "duplicate delivery; already reserved");
                        self.counters.duplicates.inc();
                    }
                }
                // Also for a duplicate: the first attempt may have failed to announce.
                reserved.skus()
            }
            Input::Restock {
                event_id,
                sku,
                stock,
            } => {
                match self.store.restock(&event_id, &sku, stock).await {
                    Ok(true) => {
                        self.counters.restocks.inc();
                    }
                    Ok(false) => {
                        self.counters.duplicates.inc();
                    }
                    Err(e) => return store_down(&e),
                }
                vec![sku]
            }
            Input::Echo => {
                self.counters.echoes.inc();
                return Outcome::Success;
            }
            Input::Other(_) => return Outcome::Success,
            Input::Invalid(reason) => {
                warn!(message_id = msg.message_id().unwrap_or("-"), %reason, "invalid order or event; skipped (its own service dead-letters it)");
                self.counters.skipped.inc();
                return Outcome::Success;
            }
        };
        match self.announce(&skus, traceparent.as_deref()).await {
            Ok(()) => Outcome::Success,
            Err(outcome) => outcome,
        }
    }
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
