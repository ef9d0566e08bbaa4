//! The order store on PostgreSQL, shared by order-service processes on several hosts: an order
//! and its outbox rows in one transaction; relays claim outbox rows with `FOR UPDATE SKIP
//! LOCKED` for a lease, so that each row is published by one relay, and a relay that died
//! leaves its rows to the others once the lease ends.

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Object;
use tokio_postgres::Row;

use super::{from_clause, Acceptance, NewOrder, OutboxStats};
use crate::orders::outbox::{OutboxMessage, ORDER_KIND};
use crate::orders::status::OrderStatus;
use crate::postgres::{query_error, Database};
use crate::settings::SecretUrl;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS orders (
    order_id        TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    request_hash    TEXT NOT NULL,
    status          TEXT NOT NULL,
    accepted_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS outbox (
    id            BIGSERIAL PRIMARY KEY,
    order_id      TEXT NOT NULL,
    exchange      TEXT NOT NULL,
    routing_key   TEXT NOT NULL,
    kind          TEXT NOT NULL,
    message_id    TEXT NOT NULL,
    traceparent   TEXT,
    body          BYTEA NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ,
    claimed_by    TEXT,
    claimed_until TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published_at ON outbox (published_at)";

/// The advisory lock key taken while the schema is created ("orders" in ASCII).
const SCHEMA_LOCK: i64 = 0x6f72_6465_7273;
/// Connections per process: the API's transactions and the relay's claims are short.
const POOL_SIZE: usize = 16;

/// The PostgreSQL order store.
pub struct PostgresOrders {
    db: Database,
}

impl PostgresOrders {
    /// Builds the pool and creates the schema if the server answers; an unreachable server is
    /// logged, and the API answers 503 until it answers.
    ///
    /// # Errors
    /// A malformed URL, or a server that refuses the login.
    pub async fn connect(url: &SecretUrl) -> anyhow::Result<Self> {
        Ok(Self {
            db: Database::connect(
                url,
                "burrow orders",
                POOL_SIZE,
                (SCHEMA_LOCK, SCHEMA),
                "orders are refused until it is",
            )
            .await?,
        })
    }

    async fn client(&self) -> anyhow::Result<Object> {
        self.db.client().await
    }

    async fn query(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> anyhow::Result<Vec<Row>> {
        self.db.query(what, sql, params).await
    }

    pub(super) async fn accept(&self, order: NewOrder) -> anyhow::Result<Acceptance> {
        let mut client = self.client().await.context("storing an order")?;
        let result = async {
            let tx = client.transaction().await?;
            // A concurrent request with the same key waits here for the first one's commit,
            // then finds its row.
            let inserted = tx
                .execute(
                    "INSERT INTO orders (order_id, idempotency_key, request_hash, status)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (idempotency_key) DO NOTHING",
                    &[
                        &order.order_id,
                        &order.key,
                        &order.request_hash,
                        &OrderStatus::Accepted.as_str(),
                    ],
                )
                .await?;
            if inserted == 0 {
                let row = tx
                    .query_one(
                        "SELECT order_id, request_hash, status FROM orders
                         WHERE idempotency_key = $1",
                        &[&order.key],
                    )
                    .await?;
                tx.rollback().await?;
                return Ok(Some((row.get(0), row.get(1), row.get(2))));
            }
            let insert = tx
                .prepare_cached(
                    "INSERT INTO outbox (order_id, exchange, routing_key, kind, message_id,
                                         traceparent, body)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .await?;
            for m in &order.messages {
                tx.execute(
                    &insert,
                    &[
                        &m.order_id,
                        &m.exchange,
                        &m.routing_key,
                        &m.kind,
                        &m.message_id,
                        &m.traceparent,
                        &m.body,
                    ],
                )
                .await?;
            }
            tx.commit().await?;
            Ok::<Option<(String, String, String)>, tokio_postgres::Error>(None)
        }
        .await;
        match result {
            Ok(None) => Ok(Acceptance::New),
            Ok(Some((order_id, hash, status))) if hash == order.request_hash => {
                Ok(Acceptance::Existing {
                    order_id,
                    status: OrderStatus::parse(&status).map_err(|e| anyhow::anyhow!(e))?,
                })
            }
            Ok(Some((order_id, _, _))) => Ok(Acceptance::KeyConflict { order_id }),
            Err(e) => {
                // Not back into the pool: it may be inside the failed transaction, or dead.
                drop(Object::take(client));
                Err(query_error(&e)).context("storing an order")
            }
        }
    }

    pub(super) async fn status(&self, order_id: &str) -> anyhow::Result<Option<OrderStatus>> {
        let rows = self
            .query(
                "reading an order's status",
                "SELECT status FROM orders WHERE order_id = $1",
                &[&order_id],
            )
            .await?;
        rows.first()
            .map(|r| OrderStatus::parse(r.get(0)).map_err(|e| anyhow::anyhow!(e)))
            .transpose()
    }

    pub(super) async fn advance(
        &self,
        order_id: &str,
        status: OrderStatus,
    ) -> anyhow::Result<bool> {
        let sql = format!(
            "UPDATE orders SET status = $2, updated_at = now() WHERE order_id = $1 AND {}
             RETURNING 1",
            from_clause(status)
        );
        let rows = self
            .query(
                "moving an order's status",
                &sql,
                &[&order_id, &status.as_str()],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    pub(super) async fn claim(
        &self,
        owner: &str,
        after: i64,
        limit: usize,
        lease: Duration,
    ) -> anyhow::Result<Vec<OutboxMessage>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "claiming outbox rows",
                "UPDATE outbox SET claimed_by = $1,
                                   claimed_until = now() + make_interval(secs => $2)
                 WHERE id IN (
                     SELECT id FROM outbox
                     WHERE published_at IS NULL AND id > $4
                       AND (claimed_until IS NULL OR claimed_until < now() OR claimed_by = $1)
                     ORDER BY id LIMIT $3
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id, order_id, exchange, routing_key, kind, message_id, traceparent,
                           body",
                &[&owner, &lease.as_secs_f64(), &limit, &after],
            )
            .await?;
        let mut messages: Vec<OutboxMessage> = rows
            .iter()
            .map(|r| OutboxMessage {
                id: r.get(0),
                order_id: r.get(1),
                exchange: r.get(2),
                routing_key: r.get(3),
                kind: r.get(4),
                message_id: r.get(5),
                traceparent: r.get(6),
                body: r.get(7),
            })
            .collect();
        // RETURNING follows no order.
        messages.sort_by_key(|m| m.id);
        Ok(messages)
    }

    pub(super) async fn published(&self, ids: Vec<i64>) -> anyhow::Result<()> {
        // One statement, so the rows and their orders are marked together or not at all.
        let sql = format!(
            "WITH marked AS (
                 UPDATE outbox SET published_at = now() WHERE id = ANY($1)
                 RETURNING order_id, kind)
             UPDATE orders SET status = $2, updated_at = now()
             WHERE order_id IN (SELECT order_id FROM marked WHERE kind = $3) AND {}",
            from_clause(OrderStatus::Published)
        );
        self.query(
            "marking outbox rows and their orders published",
            &sql,
            &[&ids, &OrderStatus::Published.as_str(), &ORDER_KIND],
        )
        .await?;
        Ok(())
    }

    pub(super) async fn stats(&self) -> anyhow::Result<OutboxStats> {
        let rows = self
            .query(
                "reading the outbox depth",
                "SELECT COUNT(*),
                        COALESCE(EXTRACT(EPOCH FROM now() - MIN(created_at))::FLOAT8, 0)
                 FROM outbox WHERE published_at IS NULL",
                &[],
            )
            .await?;
        let row = rows.first().context("reading the outbox depth: no row")?;
        let (depth, age): (i64, f64) = (row.get(0), row.get(1));
        Ok(OutboxStats {
            depth: u64::try_from(depth).unwrap_or(0),
            oldest_age_secs: age.max(0.0),
        })
    }

    pub(super) async fn purge(&self, window: Duration) -> anyhow::Result<u64> {
        self.db
            .purge_older(
                "deleting published outbox rows",
                ("outbox", "id", "published_at"),
                window,
            )
            .await
    }

    pub(super) async fn ping(&self) -> anyhow::Result<()> {
        self.db.ping().await
    }
}
