//! The fulfillment record, keyed by `order_id` and shared by every fulfillment process: a SQLite
//! file in WAL mode on one host (`sqlite.rs`), or PostgreSQL when workers span hosts
//! (`postgres.rs`). The types both speak live here; each backend imports only this module.

mod postgres;
mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// What recording an order found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// First time: the order is now fulfilled.
    New,
    /// Recorded before (a redelivery or a duplicate publish); `announced` tells whether its
    /// `order.fulfilled` event was confirmed.
    Duplicate {
        /// Whether the fulfilment event went out.
        announced: bool,
    },
}

/// Counts read back from a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreCounts {
    /// Orders fulfilled.
    pub fulfilled: u64,
    /// Deliveries of an order already fulfilled.
    pub duplicates: u64,
}

/// One recorded order, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FulfillmentRecord {
    pub order_id: String,
    /// When it was first recorded (millisecond precision on SQLite).
    pub fulfilled_at: chrono::DateTime<chrono::Utc>,
    /// Whether its `order.fulfilled` event was confirmed.
    pub announced: bool,
}

/// The fulfillment store.
pub enum FulfillmentStore {
    /// A SQLite file shared by the processes of one host.
    Sqlite(SqliteStore),
    /// A PostgreSQL database shared by every host.
    Postgres(PostgresStore),
}

impl FulfillmentStore {
    /// Opens the store the settings name: PostgreSQL when `url` is set, else
    /// `<dir>/fulfillment.db`.
    ///
    /// # Errors
    /// The database cannot be opened or its schema created.
    pub async fn open(settings: &crate::settings::StoreSettings) -> anyhow::Result<Self> {
        match &settings.url {
            Some(url) => Ok(Self::Postgres(PostgresStore::connect(url).await?)),
            None => Ok(Self::Sqlite(SqliteStore::open(
                &settings.dir.join("fulfillment.db"),
            )?)),
        }
    }

    /// Records `order_id` as fulfilled unless it already is.
    ///
    /// # Errors
    /// The database failed.
    pub async fn record(&self, order_id: &str, shipment_id: &str) -> anyhow::Result<Recorded> {
        match self {
            Self::Sqlite(s) => s.record(order_id, shipment_id).await,
            Self::Postgres(p) => p.record(order_id, shipment_id).await,
        }
    }

    /// Notes that the `order.fulfilled` event of `order_id` was confirmed.
    ///
    /// # Errors
    /// The database failed.
    pub async fn mark_announced(&self, order_id: &str) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(s) => s.mark_announced(order_id).await,
            Self::Postgres(p) => p.mark_announced(order_id).await,
        }
    }

    /// Counts of fulfilled orders and suppressed duplicates.
    ///
    /// # Errors
    /// The database failed.
    pub async fn counts(&self) -> anyhow::Result<StoreCounts> {
        match self {
            Self::Sqlite(s) => s.counts(),
            Self::Postgres(p) => p.counts().await,
        }
    }

    /// Forgets the orders fulfilled longer than `window` ago, in batches; returns how many. A
    /// redelivery after the window is fulfilled again.
    ///
    /// # Errors
    /// The database failed.
    pub async fn purge(&self, window: std::time::Duration) -> anyhow::Result<u64> {
        match self {
            Self::Sqlite(s) => s.purge(window).await,
            Self::Postgres(p) => p.purge(window).await,
        }
    }

    /// Whether the store answers now (for `/readyz`).
    ///
    /// # Errors
    /// The database cannot be reached or read.
    pub async fn ping(&self) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(s) => s.contains("").map(|_| ()),
            Self::Postgres(p) => p.ping().await,
        }
    }

    /// Whether `order_id` is recorded.
    ///
    /// # Errors
    /// The database failed.
    pub async fn contains(&self, order_id: &str) -> anyhow::Result<bool> {
        match self {
            Self::Sqlite(s) => s.contains(order_id),
            Self::Postgres(p) => p.contains(order_id).await,
        }
    }

    /// Every recorded order: when it was fulfilled and whether it was announced.
    ///
    /// # Errors
    /// The database failed.
    pub async fn fulfillments(&self) -> anyhow::Result<Vec<FulfillmentRecord>> {
        match self {
            Self::Sqlite(s) => s.fulfillments(),
            Self::Postgres(p) => p.fulfillments().await,
        }
    }
}
