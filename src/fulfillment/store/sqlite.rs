//! The fulfillment store on a SQLite file in WAL mode, shared by the fulfillment processes of
//! one host.
//!
//! Writes go through the process's [`GroupCommit`] thread, which commits whatever calls have
//! queued up in one transaction (group commit): one commit for many orders, and no mutex held
//! across an await on the hot path.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension};

use super::{FulfillmentRecord, Recorded, StoreCounts};
use crate::sqlite::GroupCommit;

/// The SQLite store.
pub struct SqliteStore {
    path: PathBuf,
    db: GroupCommit,
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
            db: GroupCommit::open(path, SCHEMA)?,
        })
    }

    pub(super) async fn record(
        &self,
        order_id: &str,
        shipment_id: &str,
    ) -> anyhow::Result<Recorded> {
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

    pub(super) async fn purge(&self, window: std::time::Duration) -> anyhow::Result<u64> {
        let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
        let cutoff = chrono::Utc::now()
            .checked_sub_signed(window)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        self.db
            .purge_older(
                "fulfillments",
                "fulfilled_at",
                rusqlite::types::Value::Text(cutoff),
                crate::sqlite::PURGE_BATCH,
            )
            .await
    }

    pub(super) async fn mark_announced(&self, order_id: &str) -> anyhow::Result<()> {
        let order_id = order_id.to_owned();
        self.db
            .call_one_statement(move |conn| {
                conn.prepare_cached("UPDATE fulfillments SET announced = 1 WHERE order_id = ?1")?
                    .execute([&order_id])
                    .map(|_| ())
            })
            .await
    }

    pub(super) fn counts(&self) -> anyhow::Result<StoreCounts> {
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

    pub(super) fn contains(&self, order_id: &str) -> anyhow::Result<bool> {
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

    pub(super) fn fulfillments(&self) -> anyhow::Result<Vec<FulfillmentRecord>> {
        let conn = open_connection(&self.path)?;
        let mut stmt =
            conn.prepare("SELECT order_id, fulfilled_at, announced FROM fulfillments")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        rows.map(|row| {
            let (order_id, at, announced) = row?;
            let fulfilled_at = chrono::DateTime::parse_from_rfc3339(&at)
                .with_context(|| format!("fulfilled_at of {order_id}: {at}"))?
                .to_utc();
            Ok(FulfillmentRecord {
                order_id,
                fulfilled_at,
                announced: announced != 0,
            })
        })
        .collect()
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
        let records = store.fulfillments().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].order_id, "ord_1");
        assert!(records[0].announced);
        let age = chrono::Utc::now() - records[0].fulfilled_at;
        assert!(age >= chrono::TimeDelta::zero() && age < chrono::TimeDelta::minutes(1));
    }

    #[tokio::test]
    async fn records_past_the_window_are_purged_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("f.db")).unwrap();
        for i in 0..1200 {
            store.record(&format!("old_{i}"), "shp").await.unwrap();
        }
        store
            .db
            .call(|c| {
                c.execute(
                    "UPDATE fulfillments SET fulfilled_at = '2020-01-01T00:00:00.000Z'",
                    [],
                )
            })
            .await
            .unwrap();
        store.record("fresh", "shp").await.unwrap();
        let purged = store
            .purge(std::time::Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(purged, 1200);
        assert!(store.contains("fresh").unwrap());
        assert!(!store.contains("old_7").unwrap());
        assert_eq!(store.counts().unwrap().fulfilled, 1);
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
