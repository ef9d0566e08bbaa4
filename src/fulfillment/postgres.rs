//! The fulfillment store on PostgreSQL, for fulfillment workers on several hosts.

use anyhow::Context;
use tokio_postgres::{Client, NoTls};

use super::store::{FulfillmentRecord, Recorded, StoreCounts};
use crate::settings::{redact_url, SecretUrl};

/// A PostgreSQL-backed fulfillment record.
pub struct PostgresStore {
    client: Client,
}

impl PostgresStore {
    /// Connects and creates the schema if needed.
    ///
    /// # Errors
    /// The database is unreachable or refuses the login (the password is not shown).
    pub async fn connect(url: &SecretUrl) -> anyhow::Result<Self> {
        let (client, connection) = tokio_postgres::connect(url.expose(), NoTls)
            .await
            .map_err(|e| anyhow::anyhow!(redact_url(&e.to_string())))
            .with_context(|| format!("connecting to PostgreSQL at {url}"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::error!(error = %e, "PostgreSQL connection failed");
            }
        });
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS fulfillments (
                    order_id     TEXT PRIMARY KEY,
                    shipment_id  TEXT NOT NULL,
                    fulfilled_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                    announced    BOOLEAN NOT NULL DEFAULT false,
                    duplicates   BIGINT NOT NULL DEFAULT 0
                )",
            )
            .await
            .context("creating the fulfillment schema")?;
        Ok(Self { client })
    }

    pub(super) async fn record(
        &self,
        order_id: &str,
        shipment_id: &str,
    ) -> anyhow::Result<Recorded> {
        let row = self
            .client
            .query_one(
                "INSERT INTO fulfillments (order_id, shipment_id) VALUES ($1, $2)
                 ON CONFLICT (order_id) DO UPDATE SET duplicates = fulfillments.duplicates + 1
                 RETURNING duplicates, announced",
                &[&order_id, &shipment_id],
            )
            .await
            .context("recording a fulfillment")?;
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
        self.client
            .execute(
                "UPDATE fulfillments SET announced = true WHERE order_id = $1",
                &[&order_id],
            )
            .await
            .context("marking a fulfillment announced")?;
        Ok(())
    }

    pub(super) async fn counts(&self) -> anyhow::Result<StoreCounts> {
        let row = self
            .client
            .query_one(
                "SELECT COUNT(*), COALESCE(SUM(duplicates), 0)::BIGINT FROM fulfillments",
                &[],
            )
            .await?;
        let (f, d): (i64, i64) = (row.get(0), row.get(1));
        Ok(StoreCounts {
            fulfilled: f.try_into().unwrap_or(0),
            duplicates: d.try_into().unwrap_or(0),
        })
    }

    pub(super) async fn contains(&self, order_id: &str) -> anyhow::Result<bool> {
        Ok(self
            .client
            .query_opt(
                "SELECT 1 FROM fulfillments WHERE order_id = $1",
                &[&order_id],
            )
            .await?
            .is_some())
    }

    pub(super) async fn fulfillments(&self) -> anyhow::Result<Vec<FulfillmentRecord>> {
        let rows = self
            .client
            .query(
                "SELECT order_id, (EXTRACT(EPOCH FROM fulfilled_at) * 1000000)::BIGINT, announced
                 FROM fulfillments",
                &[],
            )
            .await
            .context("reading the fulfillments")?;
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
}
