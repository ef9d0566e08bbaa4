//! The order service (`producer serve`): an HTTP API that accepts orders under idempotency
//! keys and stores each with its messages in one transaction (a transactional outbox), a relay
//! that publishes the outbox with confirms, and the status of each order.
//!
//! - [`api`]: `POST /orders`, `GET /orders/{order_id}`;
//! - [`store`]: orders, idempotency keys and the outbox, in SQLite or PostgreSQL;
//! - [`outbox`]: one outbox row, the producer's message as stored;
//! - [`relay`]: publishes the outbox in order, marks rows published on their confirm;
//! - [`feed`]: the status feeds (`orders.status`, `orders.status.dead-letters`);
//! - [`status`]: `accepted` → `published` → `fulfilled` or `dead_lettered`;
//! - [`metrics`]: outbox depth, oldest unpublished age, relay rate.

pub mod api;
pub mod feed;
pub mod metrics;
pub mod outbox;
pub mod relay;
pub mod status;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use api::{Api, OrderRequest, OrderView};
pub use status::OrderStatus;
pub use store::OrderStore;

use crate::settings::Settings;

/// The default address of `producer serve`.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";

/// Per-process options of `producer serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where the API listens (port 0 picks a free one).
    pub http: SocketAddr,
    /// Whether each order also gets its `order.placed` activity event.
    pub events: bool,
    /// Whether the API's address goes into this process's connections for `burrow console`
    /// to find ([`crate::broker::announce_http`], process-wide: the `producer serve` binary
    /// announces, a test running services in its own process does not).
    pub announce: bool,
}

/// Runs the order service until `shutdown`: the API, the relay, the purge of published outbox
/// rows past `store.retention_secs`, and the outbox metrics. Returns once the API stopped
/// and the relay finished its round.
///
/// # Errors
/// The store cannot be opened, the address cannot be bound, or the AMQP URL is malformed.
pub async fn run(
    settings: Settings,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let running = start(settings, options, shutdown).await?;
    let _ = running.relay.await;
    Ok(())
}

/// A started order service.
#[derive(Debug)]
pub struct Running {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// The relay; it ends after `shutdown`, once its round is recorded.
    pub relay: tokio::task::JoinHandle<()>,
}

/// Starts the order service (see [`run`]) and returns where it listens.
///
/// # Errors
/// As [`run`].
pub async fn start(
    settings: Settings,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    crate::sqlite::set_synchronous(settings.store.synchronous);
    let store = Arc::new(OrderStore::open(&settings.store).await?);
    let pool = crate::broker::pool(&settings.amqp, "producer")?;
    let worker_metrics = crate::metrics::WorkerMetrics::new();
    let metrics = metrics::OrderMetrics::register(&worker_metrics);
    let wake = Arc::new(Notify::new());
    let readiness = crate::http::Readiness::default()
        .check("store", {
            let store = store.clone();
            move || {
                let store = store.clone();
                async move { store.ping().await }
            }
        })
        .report_only("broker", {
            let pool = pool.clone();
            move || {
                let pool = pool.clone();
                async move { pool.connection().await.map(|_| ()).map_err(Into::into) }
            }
        });
    let router = crate::http::base_router(worker_metrics.clone(), readiness)
        .merge(Api::new(store.clone(), metrics.clone(), wake.clone(), options.events).router());
    let addr = crate::http::serve(options.http, router, shutdown.clone()).await?;
    if options.announce {
        // Before the first connection: `burrow console` finds the service (and its outbox)
        // by it.
        crate::broker::announce_http(addr);
    }
    let window = settings.store.retention();
    tokio::spawn(crate::sqlite::run_purges(
        "orders",
        crate::sqlite::purge_interval(window),
        shutdown.clone(),
        {
            let store = store.clone();
            move || {
                let store = store.clone();
                async move { store.purge(window).await }
            }
        },
    ));
    tokio::spawn(relay::observe(
        store.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let config = relay::RelayConfig {
        // Unique per start, also for two services in one process (the tests').
        owner: format!(
            "{}/{}",
            crate::broker::connection_name("producer serve"),
            ulid::Ulid::new()
        ),
        batch: settings.orders.relay_batch.max(1),
        window: settings.producer.confirm_window,
        confirm_timeout: Duration::from_millis(settings.producer.confirm_timeout_ms),
        lease: Duration::from_millis(settings.orders.relay_lease_ms),
        poll: Duration::from_millis(settings.orders.relay_poll_ms.max(1)),
        grace: settings.worker.grace(),
    };
    let topology = Arc::new(
        crate::topology::Topology::load(&settings.topology)
            .with_context(|| format!("loading {}", settings.topology.display()))?,
    );
    for (queue, feed) in [
        (
            feed::STATUS_QUEUE,
            feed::StatusFeed::fulfilled(store.clone()),
        ),
        (
            feed::DEAD_LETTERS_QUEUE,
            feed::StatusFeed::dead_lettered(store.clone()),
        ),
    ] {
        let config = crate::worker::WorkerConfig {
            policy: crate::service::settle_policy(&topology, queue)?,
            concurrency: settings.worker.concurrency,
            prefetch: settings.worker.prefetch(),
            grace: settings.worker.grace(),
            confirm_timeout: Duration::from_millis(settings.producer.confirm_timeout_ms),
            consume_arguments: lapin::types::FieldTable::default(),
            stream: false,
            breaker: settings.worker.breaker(),
        };
        let worker = crate::worker::Worker::new(
            config,
            Arc::new(feed),
            pool.clone(),
            worker_metrics.clone(),
        )
        .declare(topology.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = worker.run(shutdown).await {
                tracing::error!(queue, error = %format!("{e:#}"), "the status feed stopped");
            }
        });
    }
    let relay = tokio::spawn(relay::Relay::new(store, pool, config, metrics, wake).run(shutdown));
    Ok(Running { addr, relay })
}
