//! The outbox relay: takes unpublished rows oldest first, publishes them through the
//! [`BulkPublisher`] (confirms, `mandatory`, re-sent on a new channel after a lost connection),
//! and marks a row published only once its confirm arrived. While the broker is down it keeps
//! trying with back-off; the API keeps accepting, and the outbox grows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::metrics::OrderMetrics;
use super::outbox::OutboxMessage;
use super::store::OrderStore;
use crate::backoff::Backoff;
use crate::publisher::{BulkPublisher, Confirm, Outgoing};

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Who this relay is (host and process), for the lease and the claims.
    pub owner: String,
    /// Rows taken per round.
    pub batch: usize,
    /// Unconfirmed publishes in flight at once.
    pub window: usize,
    /// How long to wait for one confirm before re-sending.
    pub confirm_timeout: Duration,
    /// How long a lease (SQLite) or a claim (PostgreSQL) lasts without renewal.
    pub lease: Duration,
    /// How often an idle relay looks for rows another process stored (its own are signalled).
    pub poll: Duration,
    /// How long a round may go on after shutdown began (the broker may be down meanwhile).
    pub grace: Duration,
}

/// While a batch is being sent, the confirmed rows are marked published when the next row is
/// taken this long after the last marking. Without it a batch's first rows waited for its last
/// to be sent (4,096 rows take half a second at 8,000/s), and their orders' status and the
/// outbox's age with them.
const MARK_EVERY: Duration = Duration::from_millis(100);

/// The relay of one order-service process.
pub struct Relay {
    store: Arc<OrderStore>,
    pool: crate::broker::Pool,
    config: RelayConfig,
    metrics: OrderMetrics,
    wake: Arc<Notify>,
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Round {
    taken: usize,
    confirmed: usize,
}

impl Relay {
    /// A relay over `store`, publishing through `pool`; `wake` is signalled when the API
    /// stored an order.
    pub fn new(
        store: Arc<OrderStore>,
        pool: crate::broker::Pool,
        config: RelayConfig,
        metrics: OrderMetrics,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            pool,
            config,
            metrics,
            wake,
        }
    }

    /// Relays until `shutdown`; a round in progress gets `grace` to finish (its confirms are
    /// awaited and recorded). A round cut short leaves its rows unpublished: the next relay
    /// sends them again, with the same message ids.
    pub async fn run(self, shutdown: CancellationToken) {
        // One channel for every round while it lasts: a round ends whenever the outbox is
        // empty, which at a steady trickle of orders is every few orders.
        let publisher = BulkPublisher::new(self.pool.clone(), self.config.window, None)
            .confirm_timeout(self.config.confirm_timeout)
            .keep_channel();
        self.relay(&publisher, &shutdown).await;
        publisher.close().await;
    }

    async fn relay(&self, publisher: &BulkPublisher, shutdown: &CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let round = self.round(publisher, shutdown);
            tokio::pin!(round);
            let outcome = tokio::select! {
                outcome = &mut round => outcome,
                () = shutdown.cancelled() => {
                    // The round reads no more rows; the ones in flight get `grace`.
                    if tokio::time::timeout(self.config.grace, &mut round).await.is_err() {
                        warn!(grace = ?self.config.grace, "relay round cut short at shutdown; its rows are sent again by the next relay");
                    }
                    return;
                }
            };
            match outcome {
                Ok(round) if round.taken > 0 && round.confirmed == round.taken => {
                    backoff.reset();
                    continue;
                }
                Ok(round) if round.taken == 0 => {
                    backoff.reset();
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(self.config.poll) => {}
                    }
                    continue;
                }
                Ok(round) => warn!(
                    taken = round.taken,
                    confirmed = round.confirmed,
                    "outbox messages not confirmed (nacked or unroutable); sending them again"
                ),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "relaying the outbox failed; trying again")
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Publishes the outbox until it is empty, on one channel (so in order), and records
    /// which rows were confirmed. Rows are read `batch` at a time, each read started as soon as
    /// the rows before it are in hand, so the window stays full while the store answers, and
    /// the rows confirmed so far are marked before each read. A round ends when the outbox is
    /// empty or `shutdown` begins: no new rows are read, and the ones in flight are confirmed.
    async fn round(
        &self,
        publisher: &BulkPublisher,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Round> {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let rows = self.rows(ledger.clone(), shutdown.clone());
        let report = publisher
            .run_stream(rows, |msg, fate| {
                let mut ledger = ledger.lock().expect("relay ledger");
                let Some((row, order_id)) = msg
                    .properties
                    .message_id()
                    .as_ref()
                    .and_then(|m| ledger.sent.remove(m.as_str()))
                else {
                    return;
                };
                let order_id = order_id.as_str();
                match fate {
                    Confirm::Confirmed => ledger.confirmed.push(row),
                    Confirm::Nacked => {
                        warn!(order_id, "the broker nacked an outbox message")
                    }
                    Confirm::Returned(reason) => warn!(
                        order_id,
                        %reason,
                        "an outbox message was unroutable; run `burrow topology apply`"
                    ),
                }
            })
            .await;
        // Whatever was confirmed is recorded, even when the broker went away part-way.
        mark(&self.store, &self.metrics, &ledger).await?;
        let mut ledger = ledger.lock().expect("relay ledger");
        #[cfg(feature = "test-hooks")]
        if ledger.abort {
            tracing::error!("test hook: aborting the relay before it publishes");
            std::process::abort();
        }
        if let Some(e) = ledger.failure.take() {
            return Err(e);
        }
        match report {
            Ok(r) if r.resent > 0 => info!(
                resent = r.resent,
                "relay re-sent messages after a lost connection"
            ),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Round {
            taken: ledger.taken,
            confirmed: ledger.marked,
        })
    }

    /// The outbox's rows from the oldest unpublished one on, as messages, `batch` at a time:
    /// the next batch is read while this one is sent. Ends when a read finds no more rows,
    /// when `shutdown` begins, or when the store fails (the error is left in the ledger).
    fn rows(
        &self,
        ledger: Arc<Mutex<Ledger>>,
        shutdown: CancellationToken,
    ) -> impl futures::Stream<Item = Outgoing> + Send + 'static {
        let mut reader = Reader {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            owner: self.config.owner.clone(),
            batch: self.config.batch,
            lease: self.config.lease,
            ledger,
            shutdown,
            rows: Vec::new().into_iter(),
            next: None,
            after: 0,
            marked_at: Instant::now(),
        };
        reader.next = Some(reader.read(0));
        // The reader moves from row to row: nothing is cloned per row.
        futures::stream::unfold(reader, |mut reader| async move {
            let row = reader.next_row().await?;
            Some((row, reader))
        })
    }
}

/// Reads a round's rows, a batch ahead of the one being sent.
struct Reader {
    store: Arc<OrderStore>,
    metrics: OrderMetrics,
    owner: String,
    batch: usize,
    lease: Duration,
    ledger: Arc<Mutex<Ledger>>,
    shutdown: CancellationToken,
    /// The batch being sent.
    rows: std::vec::IntoIter<OutboxMessage>,
    /// The read of the next batch.
    next: Option<tokio::task::JoinHandle<anyhow::Result<Vec<OutboxMessage>>>>,
    /// The last row read.
    after: i64,
    /// When confirmed rows were last marked published.
    marked_at: Instant,
}

impl Reader {
    /// Starts reading the batch after row `after`.
    fn read(&self, after: i64) -> tokio::task::JoinHandle<anyhow::Result<Vec<OutboxMessage>>> {
        let (store, owner) = (self.store.clone(), self.owner.clone());
        let (batch, lease) = (self.batch, self.lease);
        tokio::spawn(async move { store.claim(&owner, after, batch, lease).await })
    }

    /// The next message to send, or `None` when the round ends.
    async fn next_row(&mut self) -> Option<Outgoing> {
        loop {
            if self.shutdown.is_cancelled() {
                return None;
            }
            if let Some(row) = self.rows.next() {
                if self.marked_at.elapsed() >= MARK_EVERY {
                    // Marked while the window is still full: the sending does not wait for
                    // the commit any longer than the confirms in flight take.
                    if let Err(e) = self.mark().await {
                        return self.fail(e);
                    }
                }
                let mut ledger = self.ledger.lock().expect("relay ledger");
                ledger.taken += 1;
                ledger
                    .sent
                    .insert(row.message_id.clone(), (row.id, row.order_id.clone()));
                return Some(row.into_outgoing());
            }
            let pending = self.next.take()?;
            if let Err(e) = self.mark().await {
                return self.fail(e);
            }
            let mut rows = match joined(pending).await {
                Ok(rows) => rows,
                Err(e) => return self.fail(e),
            };
            if rows.is_empty() && self.after > 0 {
                // Read ahead while the rows before were sent: look once more.
                rows = match joined(self.read(self.after)).await {
                    Ok(rows) => rows,
                    Err(e) => return self.fail(e),
                };
            }
            let last = rows.last()?.id;
            #[cfg(feature = "test-hooks")]
            if test_hooks::abort_asked(&rows) {
                // The round ends with the rows before confirmed and marked; then the process
                // aborts (see `Relay::round`).
                self.ledger.lock().expect("relay ledger").abort = true;
                return None;
            }
            self.after = last;
            self.next = Some(self.read(last));
            self.rows = rows.into_iter();
        }
    }

    /// Marks the rows confirmed so far published.
    async fn mark(&mut self) -> anyhow::Result<()> {
        self.marked_at = Instant::now();
        mark(&self.store, &self.metrics, &self.ledger).await
    }

    /// Ends the round, leaving why in the ledger.
    fn fail(&self, e: anyhow::Error) -> Option<Outgoing> {
        self.ledger.lock().expect("relay ledger").failure = Some(e);
        None
    }
}

/// The rows of a read, or why there are none (the store failed, or the read's task did).
async fn joined(
    read: tokio::task::JoinHandle<anyhow::Result<Vec<OutboxMessage>>>,
) -> anyhow::Result<Vec<OutboxMessage>> {
    read.await
        .map_err(|e| anyhow::anyhow!("reading the outbox: {e}"))?
}

/// What a round's reader and its confirms share.
#[derive(Default)]
struct Ledger {
    /// Rows sent and not yet confirmed, by message id: the row and its order (for the log).
    sent: HashMap<String, (i64, String)>,
    /// Rows confirmed and not yet marked published.
    confirmed: Vec<i64>,
    /// Rows read.
    taken: usize,
    /// Rows marked published.
    marked: usize,
    /// Why reading or marking stopped.
    failure: Option<anyhow::Error>,
    /// The test hook asks the process to abort once the round is done.
    #[cfg(feature = "test-hooks")]
    abort: bool,
}

/// Marks the rows confirmed so far published.
async fn mark(
    store: &OrderStore,
    metrics: &OrderMetrics,
    ledger: &Mutex<Ledger>,
) -> anyhow::Result<()> {
    let ids = std::mem::take(&mut ledger.lock().expect("relay ledger").confirmed);
    if ids.is_empty() {
        return Ok(());
    }
    let n = ids.len();
    store.published(ids).await?;
    metrics.relayed.inc_by(n as u64);
    ledger.lock().expect("relay ledger").marked += n;
    Ok(())
}

/// Runs `store`'s outbox statistics into `metrics` every second until `shutdown`.
pub async fn observe(store: Arc<OrderStore>, metrics: OrderMetrics, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(stats) = store.stats().await {
            metrics.observe(stats);
        }
    }
}

#[cfg(feature = "test-hooks")]
mod test_hooks {
    //! `BURROW_TEST_ABORT_RELAY_SKUS=SKU,…`: the relay aborts the process when it reads the row
    //! of an order with one of these SKUs, after the commit and before the publish, once the
    //! rows before it are confirmed (fault tests only; release builds have no such hook).

    use crate::orders::outbox::OutboxMessage;

    /// Whether `rows` hold an order the hook names.
    pub(super) fn abort_asked(rows: &[OutboxMessage]) -> bool {
        let Ok(skus) = std::env::var("BURROW_TEST_ABORT_RELAY_SKUS") else {
            return false;
        };
        rows.iter().filter(|r| r.is_order()).any(|row| {
            serde_json::from_slice::<crate::message::Order>(&row.body).is_ok_and(|order| {
                order
                    .items
                    .iter()
                    .any(|i| skus.split(',').any(|s| s == i.sku))
            })
        })
    }
}
