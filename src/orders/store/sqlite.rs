//! The order store in a SQLite file (WAL, group commit): orders, their idempotency keys, the
//! outbox, and the relay lease (one row: owner and expiry), so that one relay publishes at a
//! time and in order, whichever order-service processes of the host share the file.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, OptionalExtension};

use super::{from_clause, Acceptance, NewOrder, OutboxStats};
use crate::orders::outbox::OutboxMessage;
use crate::orders::status::OrderStatus;
use crate::sqlite::{now_ms, GroupCommit, PURGE_BATCH};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    order_id        TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    request_hash    TEXT NOT NULL,
    status          TEXT NOT NULL,
    accepted_at     INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id     TEXT NOT NULL,
    exchange     TEXT NOT NULL,
    routing_key  TEXT NOT NULL,
    kind         TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    traceparent  TEXT,
    body         BLOB NOT NULL,
    created_at   INTEGER NOT NULL,
    published_at INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE TABLE IF NOT EXISTS relay_lease (
    name       TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);";

/// The SQLite order store.
pub struct SqliteOrders {
    db: GroupCommit,
}

impl SqliteOrders {
    /// Opens (and creates) `path`.
    ///
    /// # Errors
    /// The file cannot be opened or its schema created.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            db: GroupCommit::open(path, SCHEMA)?,
        })
    }

    pub(super) async fn accept(&self, order: NewOrder) -> anyhow::Result<Acceptance> {
        self.db
            .call(move |c| {
                let found: Option<(String, String, String)> = c
                    .prepare_cached(
                        "SELECT order_id, request_hash, status FROM orders
                         WHERE idempotency_key = ?1",
                    )?
                    .query_row([&order.key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                if let Some((order_id, hash, status)) = found {
                    return Ok(if hash == order.request_hash {
                        Acceptance::Existing {
                            order_id,
                            status: parse_status(&status)?,
                        }
                    } else {
                        Acceptance::KeyConflict { order_id }
                    });
                }
                let now = now_ms();
                c.prepare_cached(
                    "INSERT INTO orders
                       (order_id, idempotency_key, request_hash, status, accepted_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                )?
                .execute(params![
                    order.order_id,
                    order.key,
                    order.request_hash,
                    OrderStatus::Accepted.as_str(),
                    now
                ])?;
                let mut insert = c.prepare_cached(
                    "INSERT INTO outbox (order_id, exchange, routing_key, kind, message_id,
                                         traceparent, body, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                for m in &order.messages {
                    insert.execute(params![
                        m.order_id,
                        m.exchange,
                        m.routing_key,
                        m.kind,
                        m.message_id,
                        m.traceparent,
                        m.body,
                        now
                    ])?;
                }
                Ok(Acceptance::New)
            })
            .await
    }

    pub(super) async fn status(&self, order_id: &str) -> anyhow::Result<Option<OrderStatus>> {
        let order_id = order_id.to_owned();
        self.db
            .call_one_statement(move |c| {
                let status: Option<String> = c
                    .prepare_cached("SELECT status FROM orders WHERE order_id = ?1")?
                    .query_row([&order_id], |r| r.get(0))
                    .optional()?;
                status.map(|s| parse_status(&s)).transpose()
            })
            .await
    }

    pub(super) async fn advance(
        &self,
        order_id: &str,
        status: OrderStatus,
    ) -> anyhow::Result<bool> {
        let order_id = order_id.to_owned();
        let sql = format!(
            "UPDATE orders SET status = ?2, updated_at = ?3 WHERE order_id = ?1 AND {}",
            from_clause(status)
        );
        self.db
            .call_one_statement(move |c| {
                c.prepare_cached(&sql)?
                    .execute(params![order_id, status.as_str(), now_ms()])
                    .map(|n| n > 0)
            })
            .await
    }

    pub(super) async fn claim(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> anyhow::Result<Vec<OutboxMessage>> {
        let owner = owner.to_owned();
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .call(move |c| {
                let now = now_ms();
                // Taken when free, expired, or already ours; renewed by every claim.
                let holder = c
                    .prepare_cached(
                        "INSERT INTO relay_lease (name, owner, expires_at) VALUES ('relay', ?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,
                                                          expires_at = excluded.expires_at
                         WHERE relay_lease.owner = excluded.owner OR relay_lease.expires_at < ?3",
                    )?
                    .execute(params![owner, now.saturating_add(lease_ms), now])?;
                if holder == 0 {
                    return Ok(Vec::new());
                }
                let mut q = c.prepare_cached(
                    "SELECT id, order_id, exchange, routing_key, kind, message_id, traceparent, body
                     FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT ?1",
                )?;
                let rows = q
                    .query_map([limit], |r| {
                        Ok(OutboxMessage {
                            id: r.get(0)?,
                            order_id: r.get(1)?,
                            exchange: r.get(2)?,
                            routing_key: r.get(3)?,
                            kind: r.get(4)?,
                            message_id: r.get(5)?,
                            traceparent: r.get(6)?,
                            body: r.get(7)?,
                        })
                    })?
                    .collect();
                rows
            })
            .await
    }

    pub(super) async fn published(&self, ids: Vec<i64>, orders: Vec<String>) -> anyhow::Result<()> {
        self.db
            .call(move |c| {
                let now = now_ms();
                let mut row =
                    c.prepare_cached("UPDATE outbox SET published_at = ?2 WHERE id = ?1")?;
                for id in ids {
                    row.execute(params![id, now])?;
                }
                let sql = format!(
                    "UPDATE orders SET status = ?2, updated_at = ?3 WHERE order_id = ?1 AND {}",
                    from_clause(OrderStatus::Published)
                );
                let mut order = c.prepare_cached(&sql)?;
                for id in orders {
                    order.execute(params![id, OrderStatus::Published.as_str(), now])?;
                }
                Ok(())
            })
            .await
    }

    pub(super) async fn stats(&self) -> anyhow::Result<OutboxStats> {
        let (depth, oldest): (i64, Option<i64>) = self
            .db
            .call_one_statement(|c| {
                c.prepare_cached(
                    "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE published_at IS NULL",
                )?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            })
            .await?;
        Ok(OutboxStats {
            depth: u64::try_from(depth).unwrap_or(0),
            oldest_age_secs: oldest.map_or(0.0, |t| (now_ms() - t).max(0) as f64 / 1000.0),
        })
    }

    pub(super) async fn purge(&self, window: Duration) -> anyhow::Result<u64> {
        let cutoff = now_ms() - i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        // Unpublished rows have no `published_at` and never compare below the cutoff.
        self.db
            .purge_older(
                "outbox",
                "published_at",
                rusqlite::types::Value::Integer(cutoff),
                PURGE_BATCH,
            )
            .await
    }

    pub(super) async fn ping(&self) -> anyhow::Result<()> {
        self.db
            .call_one_statement(|c| c.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }
}

fn parse_status(s: &str) -> rusqlite::Result<OrderStatus> {
    OrderStatus::parse(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            Box::<dyn std::error::Error + Send + Sync>::from(e),
        )
    })
}
