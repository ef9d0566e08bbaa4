//! `burrow demo`: the whole shop on one machine. Applies the topology, starts the order service
//! (`producer serve`), runs fulfillment under the supervisor of `burrow run` (1..4 workers, a
//! slow carrier, short targets: the burst of orders visibly scales it up and, once drained, back
//! down) and one of each activity service as child processes. Simulated customers place orders
//! through the order service's API ([`customers`]; some invalid, some clicking twice, some
//! hitting transient carrier failures); a third of the way through, the order service's link to
//! the broker is cut for a few seconds ([`link`]) while the customers keep ordering. Activity
//! events go out with the real `producer`. The demo waits until every accepted order is settled,
//! its status final and fulfillment back to one worker, measures a summary and stops the
//! children cleanly. The steps return data; `burrow demo` ([`crate::cli::demo`]) prints it.

mod customers;
pub mod link;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use self::customers::{Customers, Placed};
use self::link::BrokerLink;
use crate::children::{metric_sum, sibling_binary, ChildWorker};
use crate::fulfillment::FulfillmentStore;
use crate::settings::Settings;
use crate::supervisor::state::SupervisorState;
use crate::supervisor::{RunOptions, RunReport, ServiceSpec};
use crate::topology::{ApplyReport, Topology};

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Orders the customers place through the API.
    pub orders: u64,
    /// Orders per second the customers place.
    pub rate: f64,
    /// How long the order service's link to the broker is cut (zero: no outage).
    pub outage: Duration,
    /// Activity events to publish.
    pub events: u64,
    /// Share of invalid orders.
    pub invalid_ratio: f64,
    /// Share of carrier bookings that fail transiently.
    pub failure_rate: f64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            orders: 400,
            rate: 50.0,
            outage: Duration::from_secs(5),
            events: 2000,
            invalid_ratio: 0.03,
            failure_rate: 0.05,
        }
    }
}

/// How long the demo waits for the order service's outbox to empty after the outage.
const DRAIN_WAIT: Duration = Duration::from_secs(60);

const SERVICES: [&str; 4] = ["notifications", "analytics", "recommendations", "inventory"];

/// Where the settling of the accepted orders is: fulfilled plus dead-lettered, of those
/// accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settling {
    /// Orders fulfilled or dead-lettered so far.
    pub settled: u64,
    /// Orders the order service accepted.
    pub accepted: u64,
    /// Where the wait is.
    pub phase: SettlingPhase,
}

/// What the demo is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettlingPhase {
    /// Orders are being handled.
    Handling,
    /// The last few orders wait for their retries (1 s / 10 s / 60 s back-off).
    Retrying,
    /// 180 s passed; the demo stops waiting.
    GaveUp,
}

/// One worker's counts at the end of the demo.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerCounts {
    /// `fulfillment#1` etc.
    pub name: String,
    /// Messages handled successfully.
    pub handled: f64,
    /// Messages dead-lettered.
    pub dead_lettered: f64,
}

/// The broker outage of the demo, as the order service lived it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outage {
    /// From the cut to the link's return.
    pub lasted: Duration,
    /// Orders accepted by the API meanwhile.
    pub accepted_during: u64,
    /// The outbox's depth (messages) when the link came back.
    pub outbox_peak: u64,
    /// From the link's return until the outbox was empty (`None`: not within a minute).
    pub drained_after: Option<Duration>,
    /// `/readyz` answers during the outage: (checks, how many were not 200).
    pub readyz: (u64, u64),
}

/// What the demo measured, for its summary.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoSummary {
    /// What the customers got from the API.
    pub placed: Placed,
    /// The customers' rate, orders per second.
    pub rate: f64,
    /// The outage, if there was one.
    pub outage: Option<Outage>,
    /// `producer activity`' summary, after `events: `.
    pub events: String,
    /// Orders the order service accepted.
    pub accepted: u64,
    /// The accepted orders by their final status (`GET /orders/{id}`).
    pub statuses: BTreeMap<String, u64>,
    /// Orders fulfilled by this run.
    pub fulfilled: u64,
    /// Orders dead-lettered (`orders.dead`) by this run.
    pub dead: u64,
    /// Retries, summed over the workers.
    pub retried: f64,
    /// From the first order until every order was settled (or the demo gave up).
    pub settled_after: Duration,
    /// How long placing the orders and publishing the events took.
    pub publish_took: Duration,
    /// Per worker.
    pub workers: Vec<WorkerCounts>,
    /// Mails sent by this run.
    pub mails: usize,
    /// The file they are in.
    pub outbox_file: PathBuf,
    /// The recommendations service's answer for `cus_7`, if it answered.
    pub sample_recommendation: Option<String>,
    /// The analytics funnel of this run, if the service answered.
    pub funnel: Option<RunFunnel>,
    /// The supervisor's scaling decisions for fulfillment, as logged.
    pub scaling: Vec<String>,
}

/// The order funnel of one demo run: analytics' counters after the run minus before it, so
/// earlier runs (or orders sent with `--no-events`, whose `order.fulfilled` has no
/// `order.placed`) do not count. The demo drains what earlier runs left in the order queues
/// before it takes the first reading, so every order fulfilled in between was placed by this
/// run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunFunnel {
    /// `product.viewed` events of this run.
    pub views: u64,
    /// `order.placed` events of this run.
    pub orders_placed: u64,
    /// `order.fulfilled` events of this run.
    pub orders_fulfilled: u64,
}

impl RunFunnel {
    /// Reads the counters from analytics' `/stats` JSON (its `funnel` object).
    pub fn from_stats(stats: &serde_json::Value) -> Option<Self> {
        let f = stats.get("funnel")?;
        let n = |key: &str| f.get(key).and_then(serde_json::Value::as_u64);
        Some(Self {
            views: n("views")?,
            orders_placed: n("orders_placed")?,
            orders_fulfilled: n("orders_fulfilled")?,
        })
    }

    /// What was counted between `before` and `self`.
    #[must_use]
    pub fn since(self, before: Self) -> Self {
        Self {
            views: self.views.saturating_sub(before.views),
            orders_placed: self.orders_placed.saturating_sub(before.orders_placed),
            orders_fulfilled: self
                .orders_fulfilled
                .saturating_sub(before.orders_fulfilled),
        }
    }

    /// `orders_placed / views`; `None` without views.
    pub fn view_to_order(&self) -> Option<f64> {
        (self.views > 0).then(|| self.orders_placed as f64 / self.views as f64)
    }

    /// `orders_fulfilled / orders_placed`; `None` without orders.
    pub fn order_to_fulfillment(&self) -> Option<f64> {
        (self.orders_placed > 0).then(|| self.orders_fulfilled as f64 / self.orders_placed as f64)
    }
}

impl DemoSummary {
    /// Whether every accepted order was fulfilled or dead-lettered, and every customer got the
    /// answer they should have.
    pub fn all_settled(&self) -> bool {
        self.fulfilled + self.dead >= self.accepted
            && self.placed.failed == 0
            && self.placed.repeats_wrong == 0
    }
}

/// Applies the topology of `settings` (the demo's first step).
///
/// # Errors
/// The topology cannot be loaded, the broker is unreachable, or a declaration failed.
pub async fn apply_topology(settings: &Settings) -> anyhow::Result<ApplyReport> {
    let topology = Topology::load(&settings.topology)
        .with_context(|| format!("loading {}", settings.topology.display()))?;
    let conn = crate::broker::connect(&settings.amqp, "demo").await?;
    let report = crate::topology::apply(&conn, &topology).await;
    crate::broker::close(&conn, "done").await;
    Ok(report?)
}

/// The carrier latency and handlers per process of the demo's fulfillment workers: one worker
/// books about 20 orders/s, so the burst of orders builds a backlog the supervisor scales for
/// (the management API refreshes queue depths every 5 s).
const DEMO_CARRIER_LATENCY_MS: &str = "200";
const DEMO_CONCURRENCY: &str = "4";

/// Fulfillment's bounds under the demo's supervisor.
const DEMO_FULFILLMENT: ServiceSpec = ServiceSpec {
    service: crate::service::Service::Fulfillment,
    min: 1,
    max: 4,
};

/// The supervisor running fulfillment in the demo.
struct Supervised {
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<RunReport>>,
    state_file: PathBuf,
}

/// A running demo: its workers (child processes) and what it needs to measure them.
pub struct Demo {
    settings: Settings,
    options: DemoOptions,
    /// `producer serve`, reaching the broker through `link`.
    order_service: ChildWorker,
    link: Option<BrokerLink>,
    workers: Vec<ChildWorker>,
    supervisor: Supervised,
    store: FulfillmentStore,
    probe: lapin::Connection,
    fulfilled_before: u64,
    dead_before: u64,
    mails_before: usize,
    /// Orders earlier runs left queued (ready in the order queue and its retry queues before
    /// any worker of this run started): handled before this run is measured.
    earlier_backlog: u64,
    /// The queues holding such orders.
    earlier_queues: Vec<String>,
    /// Where the workers' logs go.
    pub logs: PathBuf,
}

impl Demo {
    /// Starts fulfillment under a supervisor (1..4 workers) and one worker of each activity
    /// service, and waits until every activity worker is healthy.
    ///
    /// # Errors
    /// The broker or the store is unreachable, a binary is missing, or a child failed to
    /// start.
    pub async fn start(settings: &Settings, options: DemoOptions) -> anyhow::Result<Self> {
        let logs = settings.store.dir.join("demo-logs");
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        let store = FulfillmentStore::open(&settings.store).await?;
        let fulfilled_before = store.counts().await?.fulfilled;
        // One connection for every depth check of the run.
        let probe = crate::broker::connect(&settings.amqp, "demo").await?;
        let dead_before = queue_depth(&probe, "orders.dead").await?;
        let mails_before = count_mails(&settings.mail.outbox);
        let topology = Topology::load(&settings.topology)
            .with_context(|| format!("loading {}", settings.topology.display()))?;
        let mut earlier_queues: Vec<String> = topology
            .retry_ladder(crate::fulfillment::QUEUE)
            .into_iter()
            .map(|step| step.queue)
            .collect();
        earlier_queues.push(crate::fulfillment::QUEUE.to_owned());
        let mut earlier_backlog = 0;
        for q in &earlier_queues {
            earlier_backlog += queue_depth(&probe, q).await?;
        }

        let link = if options.outage.is_zero() || settings.amqp.url.expose().starts_with("amqps:") {
            // A TLS connection through the link would not match the broker's certificate.
            None
        } else {
            Some(BrokerLink::to(&settings.amqp.url).await?)
        };
        let mut order_service = start_order_service(settings, link.as_ref(), &logs)?;
        wait_healthy(std::slice::from_mut(&mut order_service)).await?;

        let supervisor = supervise_fulfillment(settings, &options, &logs)?;
        let mut workers = Vec::new();
        for service in SERVICES {
            workers.push(ChildWorker::spawn(
                service,
                service,
                &[],
                &[],
                &logs.join(format!("{service}.log")),
            )?);
        }
        wait_healthy(&mut workers).await?;
        Ok(Self {
            settings: settings.clone(),
            options,
            order_service,
            link,
            workers,
            supervisor,
            store,
            probe,
            fulfilled_before,
            dead_before,
            mails_before,
            earlier_backlog,
            earlier_queues,
            logs,
        })
    }

    /// Where the order service's API listens.
    pub fn order_service(&self) -> std::net::SocketAddr {
        self.order_service.http
    }

    /// Whether the order service's link to the broker will be cut.
    pub fn has_outage(&self) -> bool {
        self.link.is_some()
    }

    /// How many workers run (fulfillment's as its supervisor last counted them).
    pub fn worker_count(&self) -> usize {
        let fulfillment = self
            .fulfillment_state()
            .map_or(DEMO_FULFILLMENT.min, |s| s.desired) as usize;
        self.workers.len() + fulfillment
    }

    fn fulfillment_state(&self) -> Option<crate::supervisor::state::ServiceState> {
        SupervisorState::read(&self.supervisor.state_file)
            .ok()
            .flatten()?
            .services
            .into_iter()
            .find(|s| s.service == DEMO_FULFILLMENT.service.name())
    }

    /// Places the orders through the API (cutting the broker link a third of the way through),
    /// publishes the events with the real `producer` (its progress bar on stderr), waits until
    /// every accepted order is fulfilled or dead-lettered (at most 180 s), telling `progress`,
    /// and collects the summary.
    ///
    /// # Errors
    /// `producer` failed, or the store or the broker cannot be read.
    pub async fn run(&mut self, mut progress: impl FnMut(Settling)) -> anyhow::Result<DemoSummary> {
        // What earlier runs left (orders still queued or waiting for a retry) is handled
        // before this run is measured, so the counts below are this run's alone: every one of
        // those orders fulfilled or dead-lettered (the longest back-off step is 60 s), then
        // analytics' counters at rest.
        let deadline = Instant::now() + Duration::from_secs(75);
        while Instant::now() < deadline {
            let fulfilled =
                (self.store.counts().await?.fulfilled).saturating_sub(self.fulfilled_before);
            let dead = queue_depth(&self.probe, "orders.dead")
                .await?
                .saturating_sub(self.dead_before);
            let queues: Vec<&str> = self.earlier_queues.iter().map(String::as_str).collect();
            if fulfilled + dead >= self.earlier_backlog && queues_empty(&self.probe, &queues).await
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.wait_analytics_at_rest().await;
        self.fulfilled_before = self.store.counts().await?.fulfilled;
        self.dead_before = queue_depth(&self.probe, "orders.dead").await?;
        let client = reqwest::Client::new();
        let funnel_before = self.funnel(&client).await;
        let publish_started = Instant::now();
        let base = format!("http://{}", self.order_service.http);
        let customers = Arc::new(Customers::new(
            &base,
            self.options.rate,
            self.options.invalid_ratio,
        ));
        let third = self.options.orders / 3;
        let mut placed = customers.place(third).await;
        let outage = match &self.link {
            Some(link) => {
                let (during, outage) =
                    outage(link, &customers, third, self.options.outage, &base).await;
                placed.absorb(during);
                Some(outage)
            }
            None => {
                placed.absorb(customers.place(third).await);
                None
            }
        };
        placed.absorb(customers.place(self.options.orders - 2 * third).await);
        let accepted = placed.accepted.len() as u64;
        // Browsing only: the orders of this run are the customers', placed through the API.
        let event_line = run_producer(&[
            "activity",
            "--count",
            &self.options.events.to_string(),
            "--no-orders",
        ])?;
        let publish_took = publish_started.elapsed();

        let deadline = Instant::now() + Duration::from_secs(180);
        let (fulfilled, dead) = loop {
            let fulfilled = self
                .store
                .counts()
                .await?
                .fulfilled
                .saturating_sub(self.fulfilled_before);
            let dead = queue_depth(&self.probe, "orders.dead")
                .await?
                .saturating_sub(self.dead_before);
            let settled = fulfilled + dead;
            let phase = if settled >= accepted {
                SettlingPhase::Handling
            } else if Instant::now() > deadline {
                SettlingPhase::GaveUp
            } else if settled + 10 > accepted {
                SettlingPhase::Retrying
            } else {
                SettlingPhase::Handling
            };
            progress(Settling {
                settled,
                accepted,
                phase,
            });
            if settled >= accepted || phase == SettlingPhase::GaveUp {
                break (fulfilled, dead);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let settled_after = publish_started.elapsed();
        let statuses = final_statuses(&client, &base, &placed.accepted).await;

        // The backlog is gone: wait (at most 60 s) for the supervisor to scale fulfillment back
        // down to its minimum, so that the summary shows the way up and the way down.
        let back_down = |s: &crate::supervisor::state::ServiceState| {
            let at_min = s.desired == DEMO_FULFILLMENT.min && s.running == s.desired;
            let down = format!("→{}:", DEMO_FULFILLMENT.min);
            at_min && s.recent_scalings.last().is_none_or(|l| l.contains(&down))
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && !self.fulfillment_state().is_some_and(|s| back_down(&s))
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let scaling = self
            .fulfillment_state()
            .map(|s| s.recent_scalings)
            .unwrap_or_default();

        // Let the activity services drain their queues before reading their numbers.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && !queues_empty(
                &self.probe,
                &["activity.analytics", "activity.notifications"],
            )
            .await
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut metrics = Vec::new();
        for w in &self.workers {
            let text = get_text(&client, &format!("http://{}/metrics", w.http))
                .await
                .unwrap_or_default();
            metrics.push((w.name.clone(), text));
        }
        // Fulfillment's workers come and go with the backlog: its retries are counted by the
        // broker (messages published into its retry queues), the others' by their workers.
        let retried: f64 = metrics
            .iter()
            .map(|(_, m)| metric_sum(m, "burrow_messages_total", &[("outcome", "retried")]))
            .sum::<f64>()
            + fulfillment_retries(&self.settings).await as f64;
        let workers = metrics
            .iter()
            .map(|(name, text)| WorkerCounts {
                name: name.clone(),
                handled: metric_sum(text, "burrow_messages_total", &[("outcome", "success")]),
                dead_lettered: metric_sum(
                    text,
                    "burrow_messages_total",
                    &[("outcome", "dead_lettered")],
                ),
            })
            .collect();
        let outbox = &self.settings.mail.outbox;
        let mut sample_recommendation = None;
        if let Some(w) = self.workers.iter().find(|w| w.name == "recommendations") {
            let sample = get_text(&client, &format!("http://{}/recommendations/cus_7", w.http))
                .await
                .unwrap_or_default();
            sample_recommendation = Some(sample.trim().to_owned());
        }
        let funnel = match (funnel_before, self.funnel(&client).await) {
            (Some(before), Some(after)) => Some(after.since(before)),
            _ => None,
        };
        Ok(DemoSummary {
            placed,
            rate: self.options.rate,
            outage,
            events: event_line.trim().trim_start_matches("events: ").to_owned(),
            accepted,
            statuses,
            fulfilled,
            dead,
            retried,
            settled_after,
            publish_took,
            workers,
            mails: count_mails(outbox).saturating_sub(self.mails_before),
            outbox_file: crate::notifications::outbox_file(outbox),
            sample_recommendation,
            funnel,
            scaling,
        })
    }

    /// The analytics service's funnel counters now, if it answers.
    /// Waits (at most 10 s) until `activity.analytics` has nothing ready and analytics' funnel
    /// reads the same twice, half a second apart: the events of earlier orders are counted.
    async fn wait_analytics_at_rest(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = self.funnel(&client).await;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.funnel(&client).await;
            if now == last && queues_empty(&self.probe, &[crate::analytics::QUEUE]).await {
                return;
            }
            last = now;
        }
    }

    async fn funnel(&self, client: &reqwest::Client) -> Option<RunFunnel> {
        let w = self.workers.iter().find(|w| w.name == "analytics")?;
        let stats = get_text(client, &format!("http://{}/stats", w.http)).await?;
        RunFunnel::from_stats(&serde_json::from_str(&stats).ok()?)
    }

    /// Stops every worker (SIGTERM, then a kill after 15 s), calling `stopped` with each name
    /// and exit code (`None`: killed). Returns whether every one exited 0.
    pub async fn stop(mut self, mut stopped: impl FnMut(&str, Option<i32>)) -> bool {
        crate::broker::close(&self.probe, "done").await;
        let code = self.order_service.stop(Duration::from_secs(15)).await;
        let mut clean = code == Some(0);
        stopped(&self.order_service.name, code);
        self.supervisor.shutdown.cancel();
        match self.supervisor.task.await {
            Ok(Ok(report)) => {
                for service in &report.services {
                    for (pid, end) in &service.workers {
                        clean &= end.clean();
                        let code = match end {
                            crate::supervisor::workers::WorkerEnd::Exited(c) => Some(*c),
                            _ => None,
                        };
                        stopped(&format!("{}#{pid}", service.service.name()), code);
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "the fulfillment supervisor failed");
                clean = false;
            }
            Err(e) => {
                tracing::error!(error = %e, "the fulfillment supervisor panicked");
                clean = false;
            }
        }
        for w in &mut self.workers {
            let code = w.stop(Duration::from_secs(15)).await;
            clean &= code == Some(0);
            stopped(&w.name, code);
        }
        clean
    }
}

/// Starts the order service (`producer serve` on a free port), reaching the broker through
/// `link` when there is one.
fn start_order_service(
    settings: &Settings,
    link: Option<&BrokerLink>,
    logs: &Path,
) -> anyhow::Result<ChildWorker> {
    // The management API stays the broker's own, whatever host the link has.
    let mut envs = vec![(
        "BURROW__MANAGEMENT__URL".to_owned(),
        settings.management.url.expose().to_owned(),
    )];
    if let Some(link) = link {
        let url = link.url_for(&settings.amqp.url)?;
        envs.push(("AMQP_URL".into(), url.expose().to_owned()));
        // Every connection goes through the link, or the outage would be no outage.
        envs.push(("AMQP_FAILOVER_URLS".into(), String::new()));
    }
    ChildWorker::spawn_binary(
        &sibling_binary("producer")?,
        "orders",
        "serve",
        &[],
        &envs,
        &logs.join("orders.log"),
    )
}

/// Cuts `link` for `lasting` while the customers place `count` orders, watching the order
/// service's `/readyz`; restores it and waits (at most [`DRAIN_WAIT`]) until the outbox is
/// empty.
async fn outage(
    link: &BrokerLink,
    customers: &Arc<Customers>,
    count: u64,
    lasting: Duration,
    base: &str,
) -> (Placed, Outage) {
    let client = reqwest::Client::new();
    link.cut();
    let cut_at = Instant::now();
    let watching = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(watch_ready(
        client.clone(),
        format!("{base}/readyz"),
        watching.clone(),
    ));
    let during = customers.place(count).await;
    tokio::time::sleep_until((cut_at + lasting).into()).await;
    let outbox_peak = outbox_depth(&client, base).await.unwrap_or(0);
    watching.cancel();
    let readyz = watcher.await.unwrap_or_default();
    link.restore();
    let restored = Instant::now();
    let mut drained_after = None;
    while restored.elapsed() < DRAIN_WAIT {
        if outbox_depth(&client, base).await == Some(0) {
            drained_after = Some(restored.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let outage = Outage {
        lasted: restored - cut_at,
        accepted_during: during.accepted.len() as u64,
        outbox_peak,
        drained_after,
        readyz,
    };
    (during, outage)
}

/// Asks `url` every 250 ms until `stop`: (answers, answers other than 200).
async fn watch_ready(
    client: reqwest::Client,
    url: String,
    stop: tokio_util::sync::CancellationToken,
) -> (u64, u64) {
    let (mut checks, mut not_ready) = (0, 0);
    while !stop.is_cancelled() {
        let status = client
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map(|r| r.status());
        checks += 1;
        if !matches!(status, Ok(s) if s == reqwest::StatusCode::OK) {
            not_ready += 1;
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    (checks, not_ready)
}

/// The order service's outbox depth, from its `/metrics`.
async fn outbox_depth(client: &reqwest::Client, base: &str) -> Option<u64> {
    let text = get_text(client, &format!("{base}/metrics")).await?;
    crate::orders::metrics::OutboxStatus::from_metrics(&text).map(|o| o.depth as u64)
}

/// The accepted orders by status, once every one is `fulfilled` or `dead_lettered` (or after
/// 30 s: the status follows the order's events, a moment after the store).
async fn final_statuses(
    client: &reqwest::Client,
    base: &str,
    orders: &[String],
) -> BTreeMap<String, u64> {
    let mut statuses: BTreeMap<&str, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for id in orders {
            let settled = statuses
                .get(id.as_str())
                .is_some_and(|s| s == "fulfilled" || s == "dead_lettered");
            if settled {
                continue;
            }
            let status = get_text(client, &format!("{base}/orders/{id}"))
                .await
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v.get("status")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| "unknown".to_owned());
            statuses.insert(id, status);
        }
        let open = statuses
            .values()
            .any(|s| s != "fulfilled" && s != "dead_lettered");
        if !open || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut counts = BTreeMap::new();
    for status in statuses.into_values() {
        *counts.entry(status).or_insert(0) += 1;
    }
    counts
}

/// Runs fulfillment under the supervisor of `burrow run`, in this process, with short targets
/// and cooldowns so that a burst of a few hundred orders scales it.
fn supervise_fulfillment(
    settings: &Settings,
    options: &DemoOptions,
    logs: &Path,
) -> anyhow::Result<Supervised> {
    let mut settings = settings.clone();
    let s = &mut settings.supervisor;
    s.interval_ms = 500;
    s.target_drain_secs = 2.0;
    s.idle_secs = 3.0;
    s.scale_up_cooldown_secs = 2.0;
    s.scale_down_cooldown_secs = 3.0;
    let run = RunOptions {
        services: vec![DEMO_FULFILLMENT],
        http: None,
        launcher: crate::supervisor::workers::Launcher {
            binary: sibling_binary("worker")?,
            envs: vec![
                (
                    "BURROW__CARRIER__FAILURE_RATE".into(),
                    options.failure_rate.to_string(),
                ),
                (
                    "BURROW__CARRIER__LATENCY_MS".into(),
                    DEMO_CARRIER_LATENCY_MS.into(),
                ),
                (
                    "BURROW__WORKER__CONCURRENCY".into(),
                    DEMO_CONCURRENCY.into(),
                ),
            ],
            log_dir: Some(logs.to_owned()),
        },
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let state_file = crate::supervisor::state::state_path(&settings.store.dir);
    let token = shutdown.clone();
    let task = tokio::spawn(async move { crate::supervisor::run(&settings, run, token).await });
    Ok(Supervised {
        shutdown,
        task,
        state_file,
    })
}

/// Messages published into fulfillment's retry queues, as the management API counts them
/// (0 when it cannot be read).
async fn fulfillment_retries(settings: &Settings) -> u64 {
    let Ok(management) = crate::management::Management::new(&settings.management, &settings.amqp)
    else {
        return 0;
    };
    let Ok(topology) = Topology::load(&settings.topology) else {
        return 0;
    };
    let retry_queues: Vec<String> = topology
        .retry_ladder(crate::fulfillment::QUEUE)
        .into_iter()
        .map(|step| step.queue)
        .collect();
    management
        .queues(&settings.amqp.url.vhost())
        .await
        .unwrap_or_default()
        .iter()
        .filter(|q| retry_queues.contains(&q.name))
        .filter_map(|q| q.message_stats.as_ref()?.get("publish")?.as_u64())
        .sum()
}

async fn wait_healthy(workers: &mut [ChildWorker]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for w in workers.iter_mut() {
        loop {
            anyhow::ensure!(
                w.running(),
                "worker {} exited at start-up; see its log",
                w.name
            );
            if get_text(&client, &format!("http://{}/healthz", w.http))
                .await
                .is_some()
            {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "worker {} did not become healthy in 30 s",
                w.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Whether no message is ready in any of `queues` (an unreadable queue counts as empty).
async fn queues_empty(probe: &lapin::Connection, queues: &[&str]) -> bool {
    for q in queues {
        if queue_depth(probe, q).await.unwrap_or(0) > 0 {
            return false;
        }
    }
    true
}

async fn get_text(client: &reqwest::Client, url: &str) -> Option<String> {
    let r = client
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    r.status().is_success().then_some(())?;
    r.text().await.ok()
}

async fn queue_depth(probe: &lapin::Connection, queue: &str) -> anyhow::Result<u64> {
    let state = crate::broker::queue_state(probe, queue)
        .await
        .with_context(|| format!("reading the depth of {queue}"))?;
    Ok(state.message_count().into())
}

/// Runs `producer ARGS`, showing its progress bar, and returns its summary line.
fn run_producer(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(sibling_binary("producer")?)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running producer")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "producer {} failed: {}",
        args.join(" "),
        stdout.trim()
    );
    Ok(stdout.lines().last().unwrap_or_default().to_owned())
}

fn count_mails(outbox: &Path) -> usize {
    crate::notifications::read_outbox(outbox).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_funnel_is_the_difference_of_two_readings() {
        let reading = |views, placed, fulfilled| {
            RunFunnel::from_stats(&serde_json::json!({"funnel": {
                "views": views, "orders_placed": placed, "orders_fulfilled": fulfilled,
                "view_to_order": null, "order_to_fulfillment": null}}))
            .expect("a funnel")
        };
        // Before: 20 fulfilled orders that were sent with --no-events (no order.placed).
        let before = reading(0, 0, 20);
        let run = reading(400, 30, 50).since(before);
        assert_eq!(
            (run.views, run.orders_placed, run.orders_fulfilled),
            (400, 30, 30)
        );
        assert_eq!(run.order_to_fulfillment(), Some(1.0));
        assert_eq!(run.view_to_order(), Some(0.075));
        assert_eq!(RunFunnel::default().order_to_fulfillment(), None);
        assert_eq!(RunFunnel::from_stats(&serde_json::json!({})), None);
    }
}
