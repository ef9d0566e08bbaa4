//! The order service's store: orders with their idempotency keys and statuses, and the outbox
//! of messages the relay publishes. A SQLite file in WAL mode (`<store.dir>/orders.db`, one
//! relay at a time holds a lease), or PostgreSQL when `store.url` is set (several processes
//! share the database and claim outbox rows with `FOR UPDATE SKIP LOCKED`). The types both
//! speak live here; each backend imports only this module.

mod postgres;
mod sqlite;

use std::time::Duration;

pub use postgres::PostgresOrders;
pub use sqlite::SqliteOrders;

use super::outbox::OutboxMessage;
use super::status::OrderStatus;

/// What storing an order under an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acceptance {
    /// A new order: it and its outbox rows are committed.
    New,
    /// The key was used before with the same request: that order, as it stands now.
    Existing {
        /// The order stored under the key.
        order_id: String,
        /// Its status now.
        status: OrderStatus,
    },
    /// The key was used before with another request; nothing was stored.
    KeyConflict {
        /// The order stored under the key.
        order_id: String,
    },
}

/// A new order as the API stores it.
#[derive(Debug, Clone)]
pub struct NewOrder {
    /// The `Idempotency-Key` header.
    pub key: String,
    /// A digest of the request body, to tell a retry from a different request.
    pub request_hash: String,
    /// The id the service assigned.
    pub order_id: String,
    /// Its messages, in publishing order.
    pub messages: Vec<OutboxMessage>,
}

/// The outbox as `/metrics` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OutboxStats {
    /// Rows not yet published.
    pub depth: u64,
    /// Age of the oldest row not yet published, in seconds (0 when none).
    pub oldest_age_secs: f64,
}

/// The order service's store.
pub enum OrderStore {
    /// A SQLite file on this host.
    Sqlite(SqliteOrders),
    /// A PostgreSQL database shared by every host.
    Postgres(PostgresOrders),
}

impl OrderStore {
    /// Opens the store the settings name: PostgreSQL when `url` is set, else
    /// `<dir>/orders.db`.
    ///
    /// # Errors
    /// The database cannot be opened or its schema created.
    pub async fn open(settings: &crate::settings::StoreSettings) -> anyhow::Result<Self> {
        match &settings.url {
            Some(url) => Ok(Self::Postgres(PostgresOrders::connect(url).await?)),
            None => Ok(Self::Sqlite(SqliteOrders::open(
                &settings.dir.join("orders.db"),
            )?)),
        }
    }

    /// Stores `order` with its key and outbox rows in one transaction, unless the key was used
    /// before.
    ///
    /// # Errors
    /// The database failed; nothing was stored.
    pub async fn accept(&self, order: NewOrder) -> anyhow::Result<Acceptance> {
        match self {
            Self::Sqlite(s) => s.accept(order).await,
            Self::Postgres(p) => p.accept(order).await,
        }
    }

    /// The status of `order_id`, or `None` when unknown.
    ///
    /// # Errors
    /// The database failed.
    pub async fn status(&self, order_id: &str) -> anyhow::Result<Option<OrderStatus>> {
        match self {
            Self::Sqlite(s) => s.status(order_id).await,
            Self::Postgres(p) => p.status(order_id).await,
        }
    }

    /// Moves `order_id` to `status` if that is forward from where it stands; returns whether
    /// it moved.
    ///
    /// # Errors
    /// The database failed.
    pub async fn advance(&self, order_id: &str, status: OrderStatus) -> anyhow::Result<bool> {
        match self {
            Self::Sqlite(s) => s.advance(order_id, status).await,
            Self::Postgres(p) => p.advance(order_id, status).await,
        }
    }

    /// The next unpublished rows for relay `owner` after the row `after` (0: from the oldest),
    /// oldest first, at most `limit`. With SQLite
    /// only the holder of the relay lease gets rows (the call takes or renews the lease for
    /// `lease`); with PostgreSQL the rows are claimed for `lease`, and rows claimed by another
    /// live relay are skipped.
    ///
    /// # Errors
    /// The database failed.
    pub async fn claim(
        &self,
        owner: &str,
        after: i64,
        limit: usize,
        lease: Duration,
    ) -> anyhow::Result<Vec<OutboxMessage>> {
        match self {
            Self::Sqlite(s) => s.claim(owner, after, limit, lease).await,
            Self::Postgres(p) => p.claim(owner, after, limit, lease).await,
        }
    }

    /// Marks the rows `ids` published (their confirms arrived), and with them the orders whose
    /// order message was among them: PostgreSQL writes `published` into the order in the same
    /// statement, SQLite reads it from the row (see `schema_v3` in its backend).
    ///
    /// # Errors
    /// The database failed; the rows stay unpublished and are sent again.
    pub async fn published(&self, ids: Vec<i64>) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(s) => s.published(ids).await,
            Self::Postgres(p) => p.published(ids).await,
        }
    }

    /// The outbox's depth and the age of its oldest unpublished row.
    ///
    /// # Errors
    /// The database failed.
    pub async fn stats(&self) -> anyhow::Result<OutboxStats> {
        match self {
            Self::Sqlite(s) => s.stats().await,
            Self::Postgres(p) => p.stats().await,
        }
    }

    /// Deletes outbox rows published longer than `window` ago; returns how many.
    ///
    /// # Errors
    /// The database failed; what was deleted stays deleted.
    pub async fn purge(&self, window: Duration) -> anyhow::Result<u64> {
        match self {
            Self::Sqlite(s) => s.purge(window).await,
            Self::Postgres(p) => p.purge(window).await,
        }
    }

    /// Whether the store answers now (for `/readyz`).
    ///
    /// # Errors
    /// It does not.
    pub async fn ping(&self) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(s) => s.ping().await,
            Self::Postgres(p) => p.ping().await,
        }
    }
}

/// `status IN ('a', 'b')` for the statuses `status` may be reached from (static names only).
fn from_clause(status: OrderStatus) -> String {
    if status.predecessors().is_empty() {
        return "FALSE".to_owned();
    }
    let names: Vec<String> = status
        .predecessors()
        .iter()
        .map(|s| format!("'{s}'"))
        .collect();
    format!("status IN ({})", names.join(", "))
}
