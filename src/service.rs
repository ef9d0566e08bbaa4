//! Runs one service of the shop as a worker process: builds its handler, its settlement policy
//! from the topology, its HTTP endpoint, and runs the worker runtime until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::fulfillment::{self, Announcer, Fulfillment, FulfillmentStore, SimulatedCarrier};
use crate::metrics::WorkerMetrics;
use crate::settings::Settings;
use crate::topology::Topology;
use crate::worker::{Handler, SettlePolicy, Worker, WorkerConfig};

/// The services a worker process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// Books shipments for orders (`orders.fulfillment`).
    Fulfillment,
}

impl Service {
    /// The queue the service consumes.
    pub fn queue(self) -> &'static str {
        match self {
            Service::Fulfillment => fulfillment::QUEUE,
        }
    }

    /// The name in connection names and logs.
    pub fn name(self) -> &'static str {
        match self {
            Service::Fulfillment => "fulfillment",
        }
    }
}

/// Per-process options of `worker`.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// Where to serve `/healthz` and `/metrics` (and the service's own routes).
    pub http: Option<SocketAddr>,
    /// Whether to publish events (`order.fulfilled`).
    pub events: bool,
}

/// The settlement policy of `queue` from the topology: its retry ladder and dead-letter exchange.
///
/// # Errors
/// The queue is not in the topology or has no dead-letter exchange.
pub fn settle_policy(topology: &Topology, queue: &str) -> anyhow::Result<SettlePolicy> {
    anyhow::ensure!(
        topology.queue(queue).is_some(),
        "queue {queue} is not in the topology"
    );
    let dead_letter_exchange = topology
        .dead_letter_exchange(queue)
        .with_context(|| format!("queue {queue} has no x-dead-letter-exchange in the topology"))?
        .to_owned();
    Ok(SettlePolicy {
        queue: queue.to_owned(),
        retry_queues: topology
            .retry_ladder(queue)
            .into_iter()
            .map(|s| s.queue)
            .collect(),
        dead_letter_exchange,
    })
}

/// Runs `service` until `shutdown` is cancelled.
///
/// # Errors
/// Bad topology or settings, a refused login, or an HTTP address that cannot be bound.
pub async fn run(
    settings: Settings,
    service: Service,
    options: WorkerOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let topology = Arc::new(
        Topology::load(&settings.topology)
            .with_context(|| format!("loading {}", settings.topology.display()))?,
    );
    let metrics = WorkerMetrics::new();
    let role = format!("worker {}", service.name());
    let pool = crate::broker::pool(&settings.amqp, &role)?;
    let router = crate::http::base_router(metrics.clone());
    match service {
        Service::Fulfillment => {
            let store = Arc::new(FulfillmentStore::open(&settings.store).await?);
            let announcer = options.events.then(|| {
                Arc::new(Announcer::new(
                    pool.clone(),
                    settings.amqp.clone(),
                    Duration::from_millis(settings.producer.confirm_timeout_ms),
                ))
            });
            let handler = Fulfillment::new(
                SimulatedCarrier::new(settings.carrier.clone()),
                store,
                announcer,
            );
            serve_and_run(
                &settings, service, options, router, handler, topology, pool, metrics, shutdown,
            )
            .await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_and_run<H: Handler>(
    settings: &Settings,
    service: Service,
    options: WorkerOptions,
    router: axum::Router,
    handler: H,
    topology: Arc<Topology>,
    pool: deadpool_lapin::Pool,
    metrics: Arc<WorkerMetrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let Some(addr) = options.http {
        crate::http::serve(addr, router, shutdown.clone()).await?;
    }
    let config = WorkerConfig {
        policy: settle_policy(&topology, service.queue())?,
        concurrency: settings.worker.concurrency,
        prefetch: settings.worker.prefetch,
        grace: settings.worker.grace(),
        confirm_timeout: Duration::from_millis(settings.producer.confirm_timeout_ms),
        consume_arguments: lapin::types::FieldTable::default(),
    };
    Worker::new(
        config,
        Arc::new(handler),
        pool,
        settings.amqp.clone(),
        metrics,
    )
    .declare(topology)
    .run(shutdown)
    .await
}
