//! Runs one service of the shop as a worker process: builds its handler, its settlement policy
//! from the topology, its HTTP endpoint, and runs the worker runtime until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::analytics::{self, Analytics, AnalyticsStore};
use crate::fulfillment::{self, Announcer, Fulfillment, FulfillmentStore, SimulatedCarrier};
use crate::inventory::{self, Inventory, InventoryStore};
use crate::metrics::WorkerMetrics;
use crate::notifications::{self, Mailer, NotificationStore, Notifications};
use crate::recommendations::{self, Model, Recommendations, StartAt};
use crate::settings::Settings;
use crate::topology::Topology;
use crate::worker::{Handler, SettlePolicy, Worker, WorkerConfig};

/// The services a worker process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// Books shipments for orders (`orders.fulfillment`).
    Fulfillment,
    /// Mails customers on registration, order and shipment (`activity.notifications`).
    Notifications,
    /// Counts activity and serves `/stats` (`activity.analytics`).
    Analytics,
    /// Builds a recommendation model from the stream `activity.log` and serves it.
    Recommendations,
    /// Keeps the stock per SKU, reserves it for orders, announces `inventory.changed`
    /// (`orders.inventory`).
    Inventory,
}

impl Service {
    /// The queue (or stream) the service consumes.
    pub fn queue(self) -> &'static str {
        match self {
            Service::Fulfillment => fulfillment::QUEUE,
            Service::Notifications => notifications::QUEUE,
            Service::Analytics => analytics::QUEUE,
            Service::Recommendations => recommendations::STREAM,
            Service::Inventory => inventory::QUEUE,
        }
    }

    /// The name in connection names and logs.
    pub fn name(self) -> &'static str {
        match self {
            Service::Fulfillment => "fulfillment",
            Service::Notifications => "notifications",
            Service::Analytics => "analytics",
            Service::Recommendations => "recommendations",
            Service::Inventory => "inventory",
        }
    }
}

/// Per-process options of `worker`.
#[derive(Debug, Clone, Default)]
pub struct WorkerOptions {
    /// Where to serve `/healthz` and `/metrics` (and the service's own routes).
    pub http: Option<SocketAddr>,
    /// Whether to publish events (`order.fulfilled`, `inventory.changed`).
    pub events: bool,
    /// Recommendations: build a fresh model from the stream messages stored at or after this
    /// time (implies `rebuild`).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Recommendations: forget the stored model and offset and re-read the stream.
    pub rebuild: bool,
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
    crate::sqlite::set_synchronous(settings.store.synchronous);
    let metrics = WorkerMetrics::new();
    let role = format!("worker {}", service.name());
    // Where the console finds this worker's /healthz and /metrics (a port picked by the system,
    // `--http …:0`, is known only once bound, after the first connection: not announced).
    if let Some(addr) = options.http.filter(|a| a.port() != 0) {
        crate::broker::announce_http(addr);
    }
    let pool = crate::broker::pool(&settings.amqp, &role)?;
    // In the background, once the broker took the login (a refused login stays one line): a
    // management API that is slow or closed to this user delays nothing.
    tokio::spawn({
        let (settings, role, pool) = (settings.clone(), role.clone(), pool.clone());
        async move {
            if pool.connection().await.is_ok() {
                crate::broker_version::log(&settings, &role).await;
            }
        }
    });
    let readiness = crate::http::Readiness::default().broker(pool.clone());
    let ctx = Runner {
        settings: &settings,
        topology,
        pool,
        metrics,
        readiness,
        http: options.http,
        shutdown,
    };
    let window = settings.store.retention();
    // Purges de-duplication records past the retention window, in small batches, until shutdown.
    macro_rules! purge {
        ($what:literal, $store:expr) => {{
            let store = $store.clone();
            tokio::spawn(crate::sqlite::run_purges(
                $what,
                crate::sqlite::purge_interval(window),
                ctx.shutdown.clone(),
                move || {
                    let store = store.clone();
                    async move { store.purge(window).await }
                },
            ));
        }};
    }
    match service {
        Service::Fulfillment => {
            let store = Arc::new(FulfillmentStore::open(&settings.store).await?);
            purge!("fulfillment", store);
            let probe = store.clone();
            let router = ctx.router(|r| {
                r.check("store", move || {
                    let store = probe.clone();
                    async move { store.ping().await }
                })
            });
            let announcer = options.events.then(|| {
                Arc::new(Announcer::new(
                    ctx.pool.clone(),
                    Duration::from_millis(settings.producer.confirm_timeout_ms),
                ))
            });
            let handler = Fulfillment::new(
                SimulatedCarrier::new(settings.carrier.clone()).with_metrics(&ctx.metrics),
                store,
                announcer,
            );
            let config = ctx.queue_config(service.queue())?;
            ctx.serve_and_run(router, handler, config).await
        }
        Service::Notifications => {
            let store = Arc::new(NotificationStore::open(
                &settings.store.dir,
                Duration::from_millis(settings.mail.claim_lease_ms),
            )?);
            purge!("notifications", store);
            let mailer = Mailer::from_settings(&settings.mail)?;
            let handler = Notifications::new(mailer, settings.mail.from.clone(), store);
            let config = ctx.queue_config(service.queue())?;
            let router = ctx.router(|r| r);
            ctx.serve_and_run(router, handler, config).await
        }
        Service::Analytics => {
            let store = Arc::new(AnalyticsStore::open(&settings.store.dir)?);
            purge!("analytics", store);
            let handler = Analytics::new(store, &ctx.metrics);
            let config = ctx.queue_config(service.queue())?;
            let router = ctx.router(|r| r);
            ctx.serve_and_run(router.merge(handler.router()), handler, config)
                .await
        }
        Service::Inventory => {
            let store = Arc::new(InventoryStore::open(&settings.store).await?);
            purge!("inventory", store);
            let announcer = options.events.then(|| {
                Arc::new(
                    Announcer::new(
                        ctx.pool.clone(),
                        Duration::from_millis(settings.producer.confirm_timeout_ms),
                    )
                    .with_origin(inventory::ORIGIN),
                )
            });
            let handler = Inventory::new(store, announcer, &ctx.metrics);
            let config = ctx.queue_config(service.queue())?;
            let router = ctx.router(|r| r);
            ctx.serve_and_run(router.merge(handler.router()), handler, config)
                .await
        }
        Service::Recommendations => {
            let rebuild = options.rebuild || options.since.is_some();
            let model = Arc::new(Model::open(&settings.store.dir, rebuild).await?);
            purge!("recommendations", model);
            let state = model.state().await?;
            let start = StartAt::resume(&state, options.since);
            tracing::info!(
                ?start,
                events = state.events,
                rebuild,
                "recommendations model loaded"
            );
            let handler = Recommendations::new(model, options.since);
            let queued = handler.clone();
            let mut config = ctx.queue_config_with(recommendations::settle_policy());
            // One handler at a time: the model applies events in stream order (each handler queues
            // its change and returns, so consecutive events still commit together). Streams require
            // a prefetch; acks only release the broker's credit. The start offset is asked of
            // the model before every session (`Handler::consume_arguments`), not fixed here.
            config.concurrency = 1;
            config.stream = true;
            let router = ctx.router(|r| r);
            let result = ctx
                .serve_and_run(router.merge(handler.router()), handler, config)
                .await;
            // The handler returns before its change is committed: commit the rest before exit.
            queued.flush().await;
            result
        }
    }
}

/// What every service's worker needs besides its handler.
struct Runner<'a> {
    settings: &'a Settings,
    topology: Arc<Topology>,
    pool: crate::broker::Pool,
    metrics: Arc<WorkerMetrics>,
    readiness: crate::http::Readiness,
    http: Option<SocketAddr>,
    shutdown: CancellationToken,
}

impl Runner<'_> {
    /// `/healthz`, `/readyz` (the broker, plus what `checks` adds) and `/metrics`. The SQLite
    /// stores of the activity services are local files, so only the broker decides their
    /// readiness.
    fn router(
        &self,
        checks: impl FnOnce(crate::http::Readiness) -> crate::http::Readiness,
    ) -> axum::Router {
        crate::http::base_router(self.metrics.clone(), checks(self.readiness.clone()))
    }

    fn queue_config(&self, queue: &str) -> anyhow::Result<WorkerConfig> {
        Ok(self.queue_config_with(settle_policy(&self.topology, queue)?))
    }

    fn queue_config_with(&self, policy: SettlePolicy) -> WorkerConfig {
        WorkerConfig {
            policy,
            concurrency: self.settings.worker.concurrency,
            prefetch: self.settings.worker.prefetch(),
            grace: self.settings.worker.grace(),
            confirm_timeout: Duration::from_millis(self.settings.producer.confirm_timeout_ms),
            consume_arguments: lapin::types::FieldTable::default(),
            stream: false,
            breaker: self.settings.worker.breaker(),
        }
    }

    async fn serve_and_run<H: Handler>(
        self,
        router: axum::Router,
        handler: H,
        config: WorkerConfig,
    ) -> anyhow::Result<()> {
        if let Some(addr) = self.http {
            crate::http::serve(addr, router, self.shutdown.clone()).await?;
        }
        Worker::new(config, Arc::new(handler), self.pool, self.metrics)
            .declare(self.topology)
            .run(self.shutdown)
            .await
    }
}
