//! burrow's own path in one process: orders made by the real producer code (`OrderGenerator`,
//! `order_messages`, padded to about 512 bytes) published by [`BulkPublisher`], consumed by the
//! real [`Worker`] runtime with a handler that decodes and validates each `Order` and succeeds
//! (no store, no events), on a fresh quorum queue. `rate` limits the publisher (half-rate mode).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::latency::{now_ns, read_stamp, stamp, Latencies, HEADER_SENT_NS};
use crate::raw::fresh_quorum_queue;
use crate::report::Row;
use burrow::message::{Order, OrderItem};
use burrow::metrics::WorkerMetrics;
use burrow::producer::{order_messages, Generated, OrderGenerator};
use burrow::publisher::{BulkPublisher, Fate, Outgoing};
use burrow::settings::Settings;
use burrow::worker::{Handler, Incoming, Outcome, SettlePolicy, Worker, WorkerConfig};

/// Orders are padded with catalogue lines until their JSON reaches about this size.
const TARGET_BYTES: usize = 512;

/// Generated, valid orders whose JSON body is about 512 bytes (±40): catalogue lines are added,
/// so the consumer decodes and validates a realistic, larger order. How many lines an order
/// needs is measured on the first one, so that the publisher's loop serializes each order once
/// (in `order_messages`, as the producer does), not once more to measure it.
pub struct PaddedOrders {
    generator: OrderGenerator,
    lines: Option<usize>,
}

impl PaddedOrders {
    /// Valid orders only.
    pub fn new() -> Self {
        Self {
            generator: OrderGenerator::new(0.0),
            lines: None,
        }
    }

    /// The next padded order.
    pub fn next_order(&mut self) -> Order {
        let mut order = loop {
            if let Generated::Valid(o) = self.generator.next_order() {
                break o;
            }
        };
        let lines = *self.lines.get_or_insert_with(|| {
            let mut one = order.clone();
            one.items.truncate(1);
            let len = serde_json::to_vec(&one).map_or(0, |b| b.len());
            // `{"sku":"SKU-1","quantity":1,"unit_price_cents":1999},` is 53 bytes.
            1 + TARGET_BYTES.saturating_sub(len).div_ceil(53)
        });
        let extra = lines.saturating_sub(order.items.len());
        order.items.extend((0..extra).map(|_| OrderItem {
            sku: "SKU-1".into(),
            quantity: 1,
            unit_price_cents: 1999,
        }));
        order
    }
}

impl Default for PaddedOrders {
    fn default() -> Self {
        Self::new()
    }
}

/// Decodes and validates, records the latency, counts, succeeds.
struct BenchHandler {
    latencies: Mutex<Latencies>,
    handled: AtomicU64,
    invalid: AtomicU64,
    last_ns: AtomicU64,
    target: u64,
    done: Notify,
}

impl Handler for BenchHandler {
    async fn handle(&self, msg: &Incoming) -> Outcome {
        if let Err(e) = Order::decode(&msg.body) {
            self.invalid.fetch_add(1, Ordering::Relaxed);
            return Outcome::Permanent(e.to_string());
        }
        // Measured when the handler returns Success; the settle loop sends the ack on its next
        // turn (one task hop later, batched with whatever else finished meanwhile).
        let now = now_ns();
        if let Some(sent) = read_stamp(msg.headers(), HEADER_SENT_NS) {
            self.latencies
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record_us(now.saturating_sub(sent) / 1000);
        }
        self.last_ns.fetch_max(now, Ordering::Relaxed);
        if self.handled.fetch_add(1, Ordering::Relaxed) + 1 >= self.target {
            self.done.notify_one();
        }
        Outcome::Success
    }
}

/// Worker and publisher parameters of the in-process burrow modes.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeParams {
    /// Unconfirmed publishes at most.
    pub window: usize,
    /// Worker prefetch.
    pub prefetch: u16,
    /// Worker handlers at once.
    pub concurrency: usize,
    /// Publisher rate limit in messages per second.
    pub rate: Option<f64>,
}

/// Publishes and consumes `messages` orders through burrow's producer path and worker runtime.
///
/// # Errors
/// The broker is unreachable, or the worker did not handle every order in time.
pub async fn run(
    settings: &Settings,
    mode: &str,
    messages: u64,
    params: RuntimeParams,
) -> anyhow::Result<Row> {
    let setup = burrow::broker::connect(&settings.amqp, "bench setup").await?;
    let queue = fresh_quorum_queue(&setup.create_channel().await?, mode).await?;
    let _ = setup.close(200, "done".into()).await;

    let handler = Arc::new(BenchHandler {
        latencies: Mutex::new(Latencies::with_capacity(
            usize::try_from(messages).unwrap_or(0),
        )),
        handled: AtomicU64::new(0),
        invalid: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
        target: messages,
        done: Notify::new(),
    });
    let config = WorkerConfig {
        policy: SettlePolicy {
            queue: queue.clone(),
            retry_queues: Vec::new(),
            dead_letter_exchange: String::new(),
        },
        concurrency: params.concurrency,
        prefetch: params.prefetch,
        grace: Duration::from_secs(5),
        confirm_timeout: Duration::from_secs(5),
        consume_arguments: lapin::types::FieldTable::default(),
        stream: false,
    };
    let worker_pool = burrow::broker::pool(&settings.amqp, "bench worker")?;
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(
        Worker::new(config, handler.clone(), worker_pool, WorkerMetrics::new())
            .run(shutdown.clone()),
    );

    let mut generator = PaddedOrders::new();
    let to_queue = queue.clone();
    let orders = (0..messages).flat_map(move |_| {
        let order = generator.next_order();
        order_messages(&order, false)
            .into_iter()
            .map(|mut m: Outgoing| {
                // The real order message, sent straight to this mode's queue.
                m.exchange = String::new();
                m.routing_key.clone_from(&to_queue);
                let headers = m.properties.headers().clone();
                m.properties = m
                    .properties
                    .with_headers(stamp(headers, HEADER_SENT_NS, now_ns()));
                m
            })
            .collect::<Vec<_>>()
    });
    let publisher_pool = burrow::broker::pool(&settings.amqp, "bench producer")?;
    let publisher = BulkPublisher::new(publisher_pool, params.window, params.rate);
    let started_ns = now_ns();
    let started = Instant::now();
    let (mut confirmed, mut failed) = (0u64, 0u64);
    publisher
        .run(orders, |_, fate| {
            if *fate == Fate::Confirmed {
                confirmed += 1;
            } else {
                failed += 1;
            }
        })
        .await?;
    let publish_secs = started.elapsed().as_secs_f64();

    let deadline = Duration::from_secs(60 + messages / 500);
    let waited = tokio::time::timeout(deadline, async {
        while handler.handled.load(Ordering::Relaxed) < messages {
            handler.done.notified().await;
        }
    })
    .await;
    shutdown.cancel();
    let _ = worker.await;
    waited.with_context(|| {
        format!(
            "{mode}: the worker handled {} of {messages} orders in {deadline:?}",
            handler.handled.load(Ordering::Relaxed)
        )
    })?;

    let e2e_secs = (handler.last_ns.load(Ordering::Relaxed) - started_ns) as f64 / 1e9;
    let mut row = Row::new(mode, messages);
    row.publish_rate = Some(confirmed as f64 / publish_secs.max(1e-9));
    row.e2e_rate = Some(messages as f64 / e2e_secs.max(1e-9));
    row.latency = handler
        .latencies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .percentiles();
    row.note = format!(
        "BulkPublisher W={} + Worker P={} C={}{}",
        params.window,
        params.prefetch,
        params.concurrency,
        params
            .rate
            .map_or_else(String::new, |r| format!(", rate {r:.0}/s"))
    );
    let invalid = handler.invalid.load(Ordering::Relaxed);
    if failed + invalid > 0 {
        row.note
            .push_str(&format!(", {failed} not confirmed, {invalid} invalid"));
    }
    Ok(row)
}

/// Checks that need no broker, run by `cargo test` (see [`crate::CHECKS`]).
pub mod checks {
    use super::*;

    pub fn padded_orders_are_valid_and_about_512_bytes() {
        let mut g = PaddedOrders::new();
        for _ in 0..200 {
            let o = g.next_order();
            let body = serde_json::to_vec(&o).unwrap();
            assert!((480..=580).contains(&body.len()), "{}", body.len());
            Order::decode(&body).unwrap();
        }
    }
}
