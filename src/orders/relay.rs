//! The outbox relay: takes unpublished rows oldest first, publishes them through the
//! [`BulkPublisher`] (confirms, `mandatory`, re-sent on a new channel after a lost connection),
//! and marks a row published only once its confirm arrived. While the broker is down it keeps
//! trying with back-off; the API keeps accepting, and the outbox grows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::metrics::OrderMetrics;
use super::outbox::OutboxMessage;
use super::store::OrderStore;
use crate::backoff::Backoff;
use crate::publisher::{BulkPublisher, Confirm};

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
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let round = self.round();
            tokio::pin!(round);
            let outcome = tokio::select! {
                outcome = &mut round => outcome,
                () = shutdown.cancelled() => {
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

    /// Publishes one batch of rows and records which were confirmed.
    async fn round(&self) -> anyhow::Result<Round> {
        let rows = self
            .store
            .claim(&self.config.owner, self.config.batch, self.config.lease)
            .await?;
        if rows.is_empty() {
            return Ok(Round::default());
        }
        #[cfg(feature = "test-hooks")]
        test_hooks::abort_if_asked(&rows);
        // Confirms are told apart by message id: each names its row and its order (for the log).
        let by_message: HashMap<String, (i64, String)> = rows
            .iter()
            .map(|r| (r.message_id.clone(), (r.id, r.order_id.clone())))
            .collect();
        let mut ids = Vec::with_capacity(rows.len());
        let publisher = BulkPublisher::new(self.pool.clone(), self.config.window, None)
            .confirm_timeout(self.config.confirm_timeout);
        let taken = rows.len();
        let report = publisher
            .run(
                rows.into_iter().map(OutboxMessage::into_outgoing),
                |msg, fate| {
                    let Some((row, order_id)) = msg
                        .properties
                        .message_id()
                        .as_ref()
                        .and_then(|m| by_message.get(m.as_str()))
                    else {
                        return;
                    };
                    let order_id = order_id.as_str();
                    match fate {
                        Confirm::Confirmed => ids.push(*row),
                        Confirm::Nacked => {
                            warn!(order_id, "the broker nacked an outbox message")
                        }
                        Confirm::Returned(reason) => warn!(
                            order_id,
                            %reason,
                            "an outbox message was unroutable; run `burrow topology apply`"
                        ),
                    }
                },
            )
            .await;
        let confirmed = ids.len();
        // Whatever was confirmed is recorded, even when the broker went away part-way.
        if confirmed > 0 {
            self.store.published(ids).await?;
            self.metrics.relayed.inc_by(confirmed as u64);
        }
        match report {
            Ok(r) if r.resent > 0 => info!(
                resent = r.resent,
                "relay re-sent messages after a lost connection"
            ),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Round { taken, confirmed })
    }
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
    //! `BURROW_TEST_ABORT_RELAY_SKUS=SKU,…`: the relay aborts the process when it takes the
    //! row of an order with one of these SKUs, after the commit and before the publish (fault
    //! tests only; release builds have no such hook).

    use crate::orders::outbox::OutboxMessage;

    pub(super) fn abort_if_asked(rows: &[OutboxMessage]) {
        let Ok(skus) = std::env::var("BURROW_TEST_ABORT_RELAY_SKUS") else {
            return;
        };
        for row in rows.iter().filter(|r| r.is_order()) {
            let Ok(order) = serde_json::from_slice::<crate::message::Order>(&row.body) else {
                continue;
            };
            if order
                .items
                .iter()
                .any(|i| skus.split(',').any(|s| s == i.sku))
            {
                tracing::error!(order_id = %order.order_id, "test hook: aborting the relay before it publishes");
                std::process::abort();
            }
        }
    }
}
