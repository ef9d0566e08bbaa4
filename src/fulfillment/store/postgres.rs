//! The fulfillment store on PostgreSQL, for fulfillment workers on several hosts.
//!
//! Connections come from a deadpool-postgres pool, so a connection that dies (a restarted or
//! failed-over server, `pg_terminate_backend`, a network cut) is replaced instead of failing
//! every later order. A statement that fails because its connection died is run again on a
//! fresh connection; when none can be had, the error reaches the handler as a transient
//! failure and the order goes to the retry ladder.

use std::error::Error as _;

use anyhow::Context;
use deadpool_postgres::{Object, Pool, PoolError};
use tokio::sync::OnceCell;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use tracing::warn;

use super::{FulfillmentRecord, Recorded, StoreCounts};
use crate::settings::{redact_url, SecretUrl};

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

/// Connections per process: enough for the default 16 handlers, whose two short statements
/// each hold a connection for a round trip only.
const POOL_SIZE: usize = 8;
/// Old records deleted per statement when purging.
const PURGE_BATCH: usize = 500;
/// Tries of one statement: the first, then one on a fresh connection per dead one found.
/// After a server restart every idle connection of the pool is dead, and the pool only notices
/// when one is handed out, so a few tries are needed before a new connection is made.
const TRIES: usize = POOL_SIZE + 1;

/// A PostgreSQL-backed fulfillment record.
pub struct PostgresStore {
    pool: Pool,
    url: String,
    schema: OnceCell<()>,
}

impl PostgresStore {
    /// Builds the pool and creates the schema if the server answers. An unreachable server is
    /// logged and not fatal: the worker starts, `/readyz` says the store is unreachable, and
    /// orders are retried until it answers.
    ///
    /// # Errors
    /// A malformed URL, or a server that refuses the login (the password is not shown).
    pub async fn connect(url: &SecretUrl) -> anyhow::Result<Self> {
        let pool = crate::postgres::pool(url, "burrow fulfillment", POOL_SIZE)?;
        let store = Self {
            pool,
            url: url.redacted(),
            schema: OnceCell::new(),
        };
        if let Err(e) = store.schema().await {
            if e.downcast_ref::<StoreError>()
                .is_some_and(StoreError::is_refused)
            {
                return Err(e);
            }
            warn!(url = %store.url, error = %format!("{e:#}"), "PostgreSQL is not reachable yet; orders are retried until it is");
        }
        Ok(store)
    }

    /// Creates the schema once per process, on the first connection that works.
    async fn schema(&self) -> anyhow::Result<()> {
        self.schema
            .get_or_try_init(|| async {
                let client = self.client().await?;
                crate::postgres::create_schema(client, SCHEMA_LOCK, SCHEMA)
                    .await
                    .map_err(|e| StoreError::Query(redact_url(&e.to_string())))
                    .context("creating the fulfillment schema")
            })
            .await
            .map(|_| ())
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::from_pool(&self.url, e))
    }

    /// Runs one statement (at most one row back), again on a fresh connection each time the
    /// connection it ran on turns out dead. Every statement of this store may run twice: a
    /// recording that committed just before its connection died is found again by the second
    /// run, which counts it as a duplicate delivery of a fulfilled order.
    async fn query_opt(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> anyhow::Result<Option<Row>> {
        Ok(self.query(what, sql, params).await?.into_iter().next())
    }

    /// Runs one statement and returns its rows; see [`Self::query_opt`] for the retries.
    async fn query(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> anyhow::Result<Vec<Row>> {
        self.schema().await?;
        let mut tries = 0;
        loop {
            tries += 1;
            let client = self.client().await.context(what)?;
            let result = match client.prepare_cached(sql).await {
                Ok(statement) => client.query(&statement, params).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(rows) => return Ok(rows),
                Err(e) if connection_lost(&e) && tries < TRIES => {
                    warn!(tries, error = %e, "{what}: the PostgreSQL connection died; running it again on a fresh one");
                    // Not back into the pool: the connection is dead.
                    drop(Object::take(client));
                }
                Err(e) => return Err(StoreError::Query(redact_url(&e.to_string()))).context(what),
            }
        }
    }

    pub(super) async fn record(
        &self,
        order_id: &str,
        shipment_id: &str,
    ) -> anyhow::Result<Recorded> {
        let row = self
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
        self.query_opt(
            "marking a fulfillment announced",
            "UPDATE fulfillments SET announced = true WHERE order_id = $1",
            &[&order_id],
        )
        .await?;
        Ok(())
    }

    pub(super) async fn counts(&self) -> anyhow::Result<StoreCounts> {
        let row = self
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

    /// Forgets the orders fulfilled longer than `window` ago, [`PURGE_BATCH`] rows per statement
    /// so that no statement holds locks long; returns how many.
    pub(super) async fn purge(&self, window: std::time::Duration) -> anyhow::Result<u64> {
        let secs = window.as_secs_f64();
        let mut purged = 0;
        loop {
            let rows = self
                .query(
                    "forgetting old fulfillments",
                    "DELETE FROM fulfillments WHERE order_id IN (
                         SELECT order_id FROM fulfillments
                         WHERE fulfilled_at < now() - make_interval(secs => $1)
                         LIMIT $2)
                     RETURNING 1",
                    &[&secs, &(PURGE_BATCH as i64)],
                )
                .await?;
            purged += rows.len() as u64;
            if rows.len() < PURGE_BATCH {
                return Ok(purged);
            }
        }
    }

    /// Whether the server answers a query now (for `/readyz`).
    ///
    /// # Errors
    /// No connection can be made, or the query fails.
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.query_opt("checking the store", "SELECT 1", &[])
            .await
            .map(|_| ())
    }
}

/// Why the store could not be used, without the password.
#[derive(Debug, thiserror::Error)]
enum StoreError {
    /// No connection: the server is down, unreachable, or refused the login.
    #[error("cannot connect to PostgreSQL at {url}: {reason}")]
    Connect {
        url: String,
        reason: String,
        refused: bool,
    },
    /// A statement failed.
    #[error("{0}")]
    Query(String),
}

impl StoreError {
    fn from_pool(url: &str, error: PoolError) -> Self {
        let (reason, refused) = match &error {
            PoolError::Backend(e) => (
                redact_url(&e.to_string()),
                e.code().is_some_and(|c| c.code().starts_with("28")),
            ),
            PoolError::Timeout(_) => ("timed out waiting for a connection".to_owned(), false),
            other => (redact_url(&other.to_string()), false),
        };
        Self::Connect {
            url: url.to_owned(),
            reason,
            refused,
        }
    }

    /// The server refused the login (SQLSTATE class 28): waiting will not help.
    fn is_refused(&self) -> bool {
        matches!(self, Self::Connect { refused: true, .. })
    }
}

/// Whether `e` says the connection is gone (closed, cut, or ended by the server: SQLSTATE
/// classes 08 "connection exception" and 57P "operator intervention", which
/// `pg_terminate_backend` and a server shutdown send), so the statement may run on another.
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.code()
            .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
        || e.source().is_some_and(|s| s.is::<std::io::Error>())
}
