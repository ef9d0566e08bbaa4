//! The shop as it runs in production: `worker` child processes (fulfillment with its SQLite store
//! and `order.fulfilled` events, and every activity service that `worker` knows), fed with orders
//! through the real topology. End to end means every order is in the store and every activity
//! service has settled every event. Also the I/O curve (a slow carrier, many handlers).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::ValueEnum;

use crate::latency::{stamp, wall_us, Latencies};
use crate::memory::{cpu_seconds, rss};
use crate::report::Row;
use crate::runtime::PaddedOrders;
use crate::vhost::BenchVhost;
use burrow::children::{metric_sum, ChildWorker};
use burrow::fulfillment::FulfillmentStore;
use burrow::producer::order_messages;
use burrow::publisher::{BulkPublisher, Confirm};
use burrow::service::Service;
use burrow::settings::{Settings, StoreSettings};
use burrow::topology::Topology;

/// Header carrying the send time between processes: wall-clock microseconds since the epoch.
pub const HEADER_SENT_US: &str = "x-bench-sent-us";

const LABEL_ORDER: u8 = 0;

/// What to start and publish.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// Row name.
    pub mode: String,
    /// Orders to publish.
    pub orders: u64,
    /// Confirm window of the publisher.
    pub window: usize,
    /// `worker fulfillment` processes.
    pub fulfillment: usize,
    /// Their extra arguments.
    pub fulfillment_args: Vec<String>,
    /// Whether to start the activity services and publish `order.placed` events.
    pub events: bool,
}

/// What a pipeline run found beyond its row.
#[derive(Debug, Clone, Default)]
pub struct PipelineResult {
    /// The table row.
    pub row: Row,
    /// Peak RSS of the busiest fulfillment process, MiB.
    pub fulfillment_peak_mib: Option<f64>,
    /// Whether every started service settled everything in time.
    pub kept_up: bool,
    /// The activity services started (empty when `worker` knows none yet).
    pub activity_services: Vec<&'static str>,
    /// CPU microseconds per order of each service (all its processes), in start order.
    pub cpu_us_per_order: Vec<(Service, f64)>,
}

/// The activity services `worker` can run (every service but fulfillment).
pub fn activity_services() -> Vec<Service> {
    Service::value_variants()
        .iter()
        .copied()
        .filter(|s| *s != Service::Fulfillment)
        .collect()
}

/// A fresh store directory for `mode` under the configured store directory.
fn store_dir(settings: &Settings, mode: &str) -> anyhow::Result<PathBuf> {
    let dir = settings
        .store
        .dir
        .join("bench")
        .join(mode.replace(' ', "-"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Child workers of one run.
pub struct Fleet {
    /// The processes, fulfillment first.
    pub workers: Vec<(Service, ChildWorker)>,
    http: reqwest::Client,
}

impl Fleet {
    /// Starts `count` processes of `service` against `settings`' vhost with `store` as state.
    ///
    /// # Errors
    /// A binary is missing or did not start.
    pub fn spawn(
        &mut self,
        settings: &Settings,
        store: &Path,
        service: Service,
        count: usize,
        args: &[String],
    ) -> anyhow::Result<()> {
        let envs = vec![
            ("AMQP_URL".to_owned(), settings.amqp.url.expose().to_owned()),
            ("BURROW__STORE__DIR".to_owned(), store.display().to_string()),
            (
                "BURROW__MAIL__OUTBOX".to_owned(),
                store.join("outbox").display().to_string(),
            ),
        ];
        // Built by cargo, with this benchmark's profile, before it runs the benchmark.
        let worker = Path::new(env!("CARGO_BIN_EXE_worker"));
        for i in 1..=count {
            let name = format!("{}#{i}", service.name());
            let log = store.join(format!("{}-{i}.log", service.name()));
            let child =
                ChildWorker::spawn_binary(worker, &name, service.name(), args, &envs, &log)?;
            self.workers.push((service, child));
        }
        Ok(())
    }

    /// An empty fleet.
    pub fn new() -> Self {
        Self {
            workers: Vec::new(),
            http: reqwest::Client::new(),
        }
    }

    /// Waits until every process answers `/healthz` and every queue has its consumers.
    ///
    /// # Errors
    /// A process exited, or did not get ready in 60 s.
    pub async fn ready(&mut self, settings: &Settings) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        for (_, w) in &mut self.workers {
            loop {
                anyhow::ensure!(w.running(), "worker {} exited at start-up", w.name);
                if self
                    .http
                    .get(format!("http://{}/healthz", w.http))
                    .send()
                    .await
                    .is_ok()
                {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "{} not healthy in 60 s", w.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let mut wanted: HashMap<&'static str, u32> = HashMap::new();
        for (s, _) in &self.workers {
            // A stream's declare-ok reports no consumers on 3.10; its worker's health is enough.
            if *s != Service::Recommendations {
                *wanted.entry(s.queue()).or_default() += 1;
            }
        }
        let conn = burrow::broker::connect(&settings.amqp, "bench probe").await?;
        for (queue, consumers) in wanted {
            loop {
                let q = burrow::broker::queue_state(&conn, queue).await;
                if q.is_ok_and(|q| q.consumer_count() >= consumers) {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{queue} did not get {consumers} consumers in 60 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    }

    /// Messages settled (any outcome) by the processes of `service`, from their `/metrics`.
    pub async fn settled(&self, service: Service) -> f64 {
        let mut total = 0.0;
        for (s, w) in &self.workers {
            if *s == service {
                if let Ok(r) = self
                    .http
                    .get(format!("http://{}/metrics", w.http))
                    .send()
                    .await
                {
                    let text = r.text().await.unwrap_or_default();
                    total += metric_sum(&text, "burrow_messages_total", &[]);
                }
            }
        }
        total
    }

    /// Stops every process (SIGTERM, then SIGKILL after 15 s).
    pub async fn stop(&mut self) {
        for (_, w) in &mut self.workers {
            w.stop(Duration::from_secs(15)).await;
        }
        self.workers.clear();
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs one pipeline in `vhost` and measures it.
///
/// # Errors
/// A child failed, the broker is unreachable, or orders were not all stored in time.
pub async fn run(vhost: &BenchVhost, spec: &PipelineSpec) -> anyhow::Result<PipelineResult> {
    let settings = &vhost.settings;
    // The workers would write to the database too, shared by every run: the benchmark
    // measures fresh SQLite stores.
    anyhow::ensure!(
        settings.store.url.is_none(),
        "the benchmark measures the SQLite store: unset the store URL (BURROW__STORE__URL)"
    );
    let store = store_dir(settings, &spec.mode)?;
    let topology = Topology::load(&settings.topology)
        .with_context(|| format!("loading {}", settings.topology.display()))?;
    let conn = burrow::broker::connect(&settings.amqp, "bench setup").await?;
    burrow::topology::apply(&conn, &topology).await?;
    let _ = conn.close(200, "done".into()).await;

    let mut fleet = Fleet::new();
    let activity = if spec.events {
        activity_services()
    } else {
        Vec::new()
    };
    fleet.spawn(
        settings,
        &store,
        Service::Fulfillment,
        spec.fulfillment,
        &spec.fulfillment_args,
    )?;
    for s in &activity {
        fleet.spawn(settings, &store, *s, 1, &[])?;
    }
    let activity: Vec<(Service, u64)> = activity
        .into_iter()
        .map(|s| (s, messages_per_order(&topology, s.queue())))
        .collect();
    let result = measure(vhost, spec, &mut fleet, &store, &activity).await;
    fleet.stop().await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&store);
    }
    result
}

/// How many messages of one order reach `queue` through `topology`: the order itself, and
/// its `order.placed` and `order.fulfilled` events, each where the topology routes it (every
/// event reaches the fanout's queues and the stream; orders.inventory gets the order but
/// neither event, since activity.by-kind sends it only `inventory.changed`).
fn messages_per_order(topology: &Topology, queue: &str) -> u64 {
    use burrow::message::EventKind;
    use burrow::producer::{ACTIVITY_EXCHANGE, ORDERS_EXCHANGE};
    let order = topology
        .route(ORDERS_EXCHANGE, burrow::message::ORDER_PLACED)
        .contains(queue);
    let events = [EventKind::OrderPlaced, EventKind::OrderFulfilled]
        .into_iter()
        .filter(|k| {
            topology
                .route(ACTIVITY_EXCHANGE, k.as_str())
                .contains(queue)
        })
        .count();
    u64::from(order) + events as u64
}

/// Runs the orders through the started `fleet`; `activity` holds each activity service with the
/// messages per order its queue gets ([`messages_per_order`]).
async fn measure(
    vhost: &BenchVhost,
    spec: &PipelineSpec,
    fleet: &mut Fleet,
    store: &Path,
    activity: &[(Service, u64)],
) -> anyhow::Result<PipelineResult> {
    let settings = &vhost.settings;
    fleet.ready(settings).await?;

    let sent: Arc<Mutex<HashMap<String, u64>>> = Arc::new(Mutex::new(HashMap::new()));
    let sent_in = sent.clone();
    let mut generator = PaddedOrders::new();
    let events = spec.events;
    let messages = (0..spec.orders).flat_map(move |_| {
        let order = generator.next_order();
        let now = wall_us();
        sent_in
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(order.order_id.clone(), now);
        let mut msgs = order_messages(&order, events);
        let headers = msgs[0].properties.headers().clone();
        msgs[0].properties =
            msgs[0]
                .properties
                .clone()
                .with_headers(stamp(headers, HEADER_SENT_US, now));
        msgs
    });
    let publisher = BulkPublisher::new(
        burrow::broker::pool(&settings.amqp, "bench producer")?,
        spec.window,
        None,
    );
    let pids: Vec<u32> = fleet.workers.iter().map(|(_, w)| w.pid()).collect();
    let cpu_share = crate::memory::CpuShare::start(&pids);
    let started = Instant::now();
    let started_us = wall_us();
    let (mut orders, mut events_confirmed, mut failed) = (0u64, 0u64, 0u64);
    publisher
        .run(messages, |msg, fate| match (msg.label, fate) {
            (LABEL_ORDER, Confirm::Confirmed) => orders += 1,
            (_, Confirm::Confirmed) => events_confirmed += 1,
            _ => failed += 1,
        })
        .await?;
    let publish_secs = started.elapsed().as_secs_f64();

    let fulfillments = FulfillmentStore::open(&StoreSettings {
        dir: store.to_owned(),
        url: None,
        ..settings.store.clone()
    })
    .await?;
    let deadline = started + Duration::from_secs(120 + spec.orders / 100);
    let mut kept_up = true;
    let finished = loop {
        let stored = fulfillments.counts().await?.fulfilled;
        let mut done = stored >= orders;
        if done {
            for (s, per_order) in activity {
                done &= fleet.settled(*s).await >= (per_order * orders) as f64;
            }
        }
        if done {
            break Instant::now();
        }
        if Instant::now() > deadline {
            kept_up = false;
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut e2e_secs = finished.duration_since(started).as_secs_f64();
    let cores = cpu_share.cores();

    let mut peak: Option<f64> = None;
    let mut others = Vec::new();
    // CPU seconds by service, in the order the services were started.
    let mut cpu: Vec<(Service, f64)> = Vec::new();
    for (s, w) in &fleet.workers {
        let secs = cpu_seconds(w.pid()).unwrap_or(0.0);
        match cpu.iter_mut().find(|(c, _)| c == s) {
            Some((_, total)) => *total += secs,
            None => cpu.push((*s, secs)),
        }
        let Some(m) = rss(w.pid()) else { continue };
        if *s == Service::Fulfillment {
            peak = Some(peak.map_or(m.peak_mib, |p: f64| p.max(m.peak_mib)));
        } else {
            others.push(format!("{} {:.0}", s.name(), m.peak_mib));
        }
    }

    let mut latencies = Latencies::with_capacity(usize::try_from(orders).unwrap_or(0));
    let sent = sent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let records = fulfillments.fulfillments().await?;
    let mut last_stored_us = 0;
    for record in &records {
        if let Some(sent_us) = sent.get(&record.order_id) {
            let stored_us = u64::try_from(record.fulfilled_at.timestamp_micros()).unwrap_or(0);
            latencies.record_us(stored_us.saturating_sub(*sent_us));
            last_stored_us = last_stored_us.max(stored_us);
        }
    }
    // Without activity services the run ends when the last order is stored: its own time
    // (ms clock of SQLite) rather than the poll that saw it, up to 50 ms later.
    if activity.is_empty() && kept_up && last_stored_us > started_us {
        e2e_secs = e2e_secs.min((last_stored_us - started_us) as f64 / 1e6);
    }

    let mut row = Row::new(spec.mode.clone(), orders);
    row.publish_rate = Some(orders as f64 / publish_secs.max(1e-9));
    row.e2e_rate = Some(orders as f64 / e2e_secs.max(1e-9));
    row.latency = latencies.percentiles();
    row.peak_rss_mib = peak;
    let mut notes = vec![format!(
        "{}x fulfillment {}",
        spec.fulfillment,
        spec.fulfillment_args.join(" ")
    )];
    if spec.events {
        let services: Vec<_> = activity.iter().map(|(s, _)| s.name()).collect();
        notes.push(if services.is_empty() {
            "no activity services in `worker` yet".to_owned()
        } else {
            format!("+ {}", services.join(", "))
        });
        // Publishes: orders and order.placed by the bench, order.fulfilled by fulfillment
        // (one per announced order). Deliveries: every message settled by any worker.
        let announced = records.iter().filter(|r| r.announced).count() as u64;
        let mut deliveries = 0.0;
        for s in std::iter::once(Service::Fulfillment).chain(activity.iter().map(|(s, _)| *s)) {
            deliveries += fleet.settled(s).await;
        }
        let per_order = |x: f64| x / orders.max(1) as f64;
        notes.push(format!(
            "per order: {:.2} publishes, {:.2} deliveries",
            per_order((orders + events_confirmed + announced) as f64),
            per_order(deliveries)
        ));
    }
    let cpu_us_per_order: Vec<(Service, f64)> = cpu
        .iter()
        .map(|(s, secs)| (*s, 1e6 * secs / orders.max(1) as f64))
        .collect();
    let cpu: Vec<String> = cpu
        .iter()
        .map(|(s, secs)| format!("{} {:.0}", s.name(), 1e6 * secs / orders.max(1) as f64))
        .collect();
    notes.push(format!("CPU us/order: {}", cpu.join(", ")));
    if let Some(c) = cores {
        notes.push(format!("from the first publish to the end: {c}"));
    }
    if !others.is_empty() {
        notes.push(format!("peak MiB {}", others.join(", ")));
    }
    if !kept_up {
        notes.push("DID NOT KEEP UP (timed out)".to_owned());
    }
    if failed > 0 {
        notes.push(format!("{failed} publishes not confirmed"));
    }
    notes.push("latency publish->stored (ms clock of SQLite)".to_owned());
    row.note = notes.join("; ");
    Ok(PipelineResult {
        row,
        fulfillment_peak_mib: peak,
        kept_up,
        activity_services: activity.iter().map(|(s, _)| s.name()).collect(),
        cpu_us_per_order,
    })
}

/// Starts one fresh `worker fulfillment` in `vhost`, waits until it consumes, lets it idle for
/// `idle`, and reads its memory.
///
/// # Errors
/// The worker did not start.
pub async fn idle_worker_rss(
    vhost: &BenchVhost,
    idle: Duration,
) -> anyhow::Result<Option<crate::memory::Rss>> {
    let settings = &vhost.settings;
    let store = store_dir(settings, "memory")?;
    let mut fleet = Fleet::new();
    fleet.spawn(settings, &store, Service::Fulfillment, 1, &[])?;
    let ready = fleet.ready(settings).await;
    if ready.is_ok() {
        tokio::time::sleep(idle).await;
    }
    let memory = fleet.workers.first().and_then(|(_, w)| rss(w.pid()));
    fleet.stop().await;
    ready?;
    let _ = std::fs::remove_dir_all(&store);
    Ok(memory)
}
