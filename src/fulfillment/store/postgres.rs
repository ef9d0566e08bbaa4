//! The fulfillment store on PostgreSQL, for fulfillment workers on several hosts, on the shared
//! [`Database`] (pool, schema, statements run again on a fresh connection when theirs died).
//! When no connection can be had, the error reaches the handler as a transient failure and the
//! order goes to the retry ladder.

use anyhow::Context;

use super::{FulfillmentRecord, Recorded, StoreCounts};
use crate::postgres::Database;
use crate::settings::SecretUrl;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS fulfillments (
    order_id     TEXT PRIMARY KEY,
    shipment_id  TEXT NOT NULL,
    fulfilled_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    announced    BOOLEAN NOT NULL DEFAULT false,
    duplicates   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS fulfillments_fulfilled_at ON fulfillments (fulfilled_at)";

/// The advisory lock key taken while the schema is created ("burrow" in ASCII).
const SCHEMA_LOCK: i64 = 0x6275_7272_6f77;

/// Connections per process: the handlers' two short statements each hold a connection for a
/// round trip only.
const POOL_SIZE: usize = 8;

/// A PostgreSQL-backed fulfillment record. Every statement may run twice (see
/// [`Database::query`]): a recording that committed just before its connection died is found
/// again by the second run, which counts it as a duplicate delivery of a fulfilled order.
pub struct PostgresStore {
    db: Database,
}

impl PostgresStore {
    /// Builds the pool and creates the schema if the server answers. An unreachable server is
    /// logged and not fatal: the worker starts, `/readyz` says the store is unreachable, and
    /// orders are retried until it answers.
    ///
    /// # Errors
    /// A malformed URL, or a server that refuses the login (the password is not shown).
    pub async fn connect(url: &SecretUrl) -> anyhow::Result<Self> {
        let db = Database::connect(
            url,
            "burrow fulfillment",
            POOL_SIZE,
            (SCHEMA_LOCK, SCHEMA),
            "orders are retried until it is",
        )
        .await?;
        Ok(Self { db })
    }

    pub(super) async fn record(
        &self,
        order_id: &str,
        shipment_id: &str,
    ) -> anyhow::Result<Recorded> {
        let row = self
            .db
            .query_opt(
                "recording a fulfillment",
                "INSERT INTO fulfillments (order_id, shipment_id) VALUES ($1, $2)
                 ON CONFLICT (order_id) DO UPDATE SET duplicates = fulfillments.duplicates + 1
                 RETURNING duplicates, announced",
                &[&order_id, &shipment_id],
            )
            .await?
            .context("recording a fulfillment returned no row")?;
        let duplicates: i64 = row.get(0);
        Ok(if duplicates == 0 {
            Recorded::New
        } else {
            Recorded::Duplicate {
                announced: row.get(1),
            }
        })
    }

    pub(super) async fn mark_announced(&self, order_id: &str) -> anyhow::Result<()> {
        self.db
            .query_opt(
                "marking a fulfillment announced",
                "UPDATE fulfillments SET announced = true WHERE order_id = $1",
                &[&order_id],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn counts(&self) -> anyhow::Result<StoreCounts> {
        let row = self
            .db
            .query_opt(
                "counting fulfillments",
                "SELECT COUNT(*), COALESCE(SUM(duplicates), 0)::BIGINT FROM fulfillments",
                &[],
            )
            .await?
            .context("counting fulfillments returned no row")?;
        let (f, d): (i64, i64) = (row.get(0), row.get(1));
        Ok(StoreCounts {
            fulfilled: f.try_into().unwrap_or(0),
            duplicates: d.try_into().unwrap_or(0),
        })
    }

    pub(super) async fn contains(&self, order_id: &str) -> anyhow::Result<bool> {
        Ok(self
            .db
            .query_opt(
                "reading a fulfillment",
                "SELECT 1 FROM fulfillments WHERE order_id = $1",
                &[&order_id],
            )
            .await?
            .is_some())
    }

    pub(super) async fn fulfillments(&self) -> anyhow::Result<Vec<FulfillmentRecord>> {
        let rows = self
            .db
            .query(
                "reading the fulfillments",
                "SELECT order_id, (EXTRACT(EPOCH FROM fulfilled_at) * 1000000)::BIGINT, announced
                 FROM fulfillments",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let (order_id, micros): (String, i64) = (row.get(0), row.get(1));
                let fulfilled_at = chrono::DateTime::from_timestamp_micros(micros)
                    .with_context(|| format!("fulfilled_at of {order_id}: {micros} µs"))?;
                Ok(FulfillmentRecord {
                    order_id,
                    fulfilled_at,
                    announced: row.get(2),
                })
            })
            .collect()
    }

    /// Forgets the orders fulfilled longer than `window` ago, in batches; returns how many.
    pub(super) async fn purge(&self, window: std::time::Duration) -> anyhow::Result<u64> {
        self.db
            .purge_older(
                "forgetting old fulfillments",
                ("fulfillments", "order_id", "fulfilled_at"),
                window,
            )
            .await
    }

    /// Whether the server answers a query now (for `/readyz`).
    ///
    /// # Errors
    /// No connection can be made, or the query fails.
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.db.ping().await
    }
}
