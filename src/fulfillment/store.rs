//! The fulfillment record, keyed by `order_id` and shared by every fulfillment process: a SQLite
//! file in WAL mode on one host, or PostgreSQL when workers span hosts.
//!
//! SQLite writes go through the process's [`Db`] thread, which commits whatever calls have
//! queued up in one transaction (group commit): one commit for many orders, and no mutex held
//! across an await on the hot path.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::sqlite::Db;

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

/// The fulfillment store.
pub enum FulfillmentStore {
    /// A SQLite file shared by the processes of one host.
    Sqlite(SqliteStore),
    /// A PostgreSQL database shared by every host.
    Postgres(super::postgres::PostgresStore),
}

impl FulfillmentStore {
    /// Opens the store the settings name: PostgreSQL when `url` is set, else
    /// `<dir>/fulfillment.db`.
    ///
    /// # Errors
    /// The database cannot be opened or its schema created.
    pub async fn open(settings: &crate::settings::StoreSettings) -> anyhow::Result<Self> {
        match &settings.url {
            Some(url) => Ok(Self::Postgres(
                super::postgres::PostgresStore::connect(url).await?,
            )),
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
}

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    db: Db,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fulfillments (
    order_id     TEXT PRIMARY KEY,
    shipment_id  TEXT NOT NULL,
    fulfilled_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
    announced    INTEGER NOT NULL DEFAULT 0,
    duplicates   INTEGER NOT NULL DEFAULT 0
);";

fn open_connection(path: &Path) -> anyhow::Result<Connection> {
    crate::sqlite::open_wal(path)
}

impl SqliteStore {
    /// Opens (and creates) the store at `path`, starting its database thread.
    ///
    /// # Errors
    /// The file cannot be opened or the schema created.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            db: Db::open(path, SCHEMA)?,
        })
    }

    async fn record(&self, order_id: &str, shipment_id: &str) -> anyhow::Result<Recorded> {
        let (order_id, shipment_id) = (order_id.to_owned(), shipment_id.to_owned());
        self.db
            .call_one_statement(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO fulfillments (order_id, shipment_id) VALUES (?1, ?2)
                     ON CONFLICT(order_id) DO UPDATE SET duplicates = duplicates + 1
                     RETURNING duplicates, announced",
                )?
                .query_row(params![order_id, shipment_id], |r| {
                    let dups: i64 = r.get(0)?;
                    let announced: i64 = r.get(1)?;
                    Ok(if dups == 0 {
                        Recorded::New
                    } else {
                        Recorded::Duplicate {
                            announced: announced != 0,
                        }
                    })
                })
            })
            .await
    }

    async fn mark_announced(&self, order_id: &str) -> anyhow::Result<()> {
        let order_id = order_id.to_owned();
        self.db
            .call_one_statement(move |conn| {
                conn.prepare_cached("UPDATE fulfillments SET announced = 1 WHERE order_id = ?1")?
                    .execute([order_id])
                    .map(|_| ())
            })
            .await
    }

    fn counts(&self) -> anyhow::Result<StoreCounts> {
        let conn = open_connection(&self.path)?;
        let (fulfilled, duplicates): (i64, i64) = conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(duplicates), 0) FROM fulfillments",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(StoreCounts {
            fulfilled: fulfilled.try_into().unwrap_or(0),
            duplicates: duplicates.try_into().unwrap_or(0),
        })
    }

    fn contains(&self, order_id: &str) -> anyhow::Result<bool> {
        let conn = open_connection(&self.path)?;
        Ok(conn
            .query_row(
                "SELECT 1 FROM fulfillments WHERE order_id = ?1",
                [order_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_order_is_recorded_once_and_duplicates_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("f.db")).unwrap();
        assert_eq!(store.record("ord_1", "shp_1").await.unwrap(), Recorded::New);
        assert_eq!(
            store.record("ord_1", "shp_1").await.unwrap(),
            Recorded::Duplicate { announced: false }
        );
        store.mark_announced("ord_1").await.unwrap();
        assert_eq!(
            store.record("ord_1", "shp_1").await.unwrap(),
            Recorded::Duplicate { announced: true }
        );
        assert_eq!(
            store.counts().unwrap(),
            StoreCounts {
                fulfilled: 1,
                duplicates: 2
            }
        );
        assert!(store.contains("ord_1").unwrap());
        assert!(!store.contains("ord_2").unwrap());
    }

    /// CPU seconds this process has used (user + system), from `/proc/self/stat`.
    fn cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    /// What `synchronous=FULL` costs against `NORMAL`: 16 handlers recording and marking
    /// orders as the fulfillment handler does. A measurement, run by hand:
    /// `cargo test --release --lib -- --ignored --nocapture synchronous_cost`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check"]
    async fn synchronous_cost() {
        use crate::sqlite::{set_synchronous, Synchronous};
        const ORDERS: usize = 40_000;
        const HANDLERS: usize = 16;
        for mode in [Synchronous::Normal, Synchronous::Full].repeat(3) {
            set_synchronous(mode);
            let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
            let store = std::sync::Arc::new(SqliteStore::open(&dir.path().join("f.db")).unwrap());
            let (cpu, started) = (cpu_seconds(), std::time::Instant::now());
            let tasks: Vec<_> = (0..HANDLERS)
                .map(|h| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        for i in (h..ORDERS).step_by(HANDLERS) {
                            let id = format!("ord_{i}");
                            store.record(&id, "shp").await.unwrap();
                            store.mark_announced(&id).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let (secs, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
            println!(
                "synchronous={mode:?}: {ORDERS} orders in {secs:.2} s = {:.0} orders/s, CPU {cpu:.2} s = {:.1} µs/order",
                ORDERS as f64 / secs,
                cpu * 1e6 / ORDERS as f64
            );
        }
        set_synchronous(Synchronous::default());
    }

    #[tokio::test]
    async fn two_stores_on_one_file_share_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let (a, b) = (
            SqliteStore::open(&path).unwrap(),
            SqliteStore::open(&path).unwrap(),
        );
        let ids: Vec<String> = (0..200).map(|i| format!("ord_{}", i / 2)).collect();
        let mut handles = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let store = if i % 2 == 0 { &a } else { &b };
            handles.push(store.record(id, "shp"));
        }
        let results = futures::future::join_all(handles).await;
        let new = results
            .iter()
            .filter(|r| matches!(r, Ok(Recorded::New)))
            .count();
        assert_eq!(new, 100);
    }
}
