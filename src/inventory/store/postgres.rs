//! The stock per SKU on PostgreSQL, for inventory processes on several hosts. A reservation
//! locks the order's SKU rows (`SELECT … FOR UPDATE`, in SKU order so two orders never wait on
//! each other in a circle) for its read-modify-write; the order's id is recorded as seen in the
//! same transaction. Table names carry an `inventory_` prefix: the database may hold the other
//! stores' tables too.

use std::collections::HashMap;

use anyhow::Context;
use deadpool_postgres::Object;

use super::{Level, Line, Reserved, SkuStock, StockReport};
use crate::inventory::stock::reserve;
use crate::postgres::{query_error, Database};
use crate::settings::SecretUrl;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS inventory_seen (
    kind    TEXT NOT NULL,
    id      TEXT NOT NULL,
    seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS inventory_seen_at ON inventory_seen (seen_at);
CREATE TABLE IF NOT EXISTS inventory_stock (
    sku             TEXT PRIMARY KEY,
    stock           BIGINT NOT NULL,
    reserved        BIGINT NOT NULL DEFAULT 0,
    backordered     BIGINT NOT NULL DEFAULT 0,
    version         BIGINT NOT NULL DEFAULT 1,
    announced       BIGINT NOT NULL DEFAULT 0,
    announced_stock BIGINT,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// The advisory lock key taken while the schema is created ("invent" in ASCII).
const SCHEMA_LOCK: i64 = 0x696e_7665_6e74;
/// Connections per process: each handler's transaction is a few round trips.
const POOL_SIZE: usize = 8;

const ORDER: &str = "order";
const RESTOCK: &str = "restock";

/// The PostgreSQL inventory store.
pub struct PostgresInventory {
    db: Database,
}

impl PostgresInventory {
    /// Builds the pool and creates the schema if the server answers; an unreachable server is
    /// logged, and reservations are retried until it answers.
    ///
    /// # Errors
    /// A malformed URL, or a server that refuses the login.
    pub(super) async fn connect(url: &SecretUrl) -> anyhow::Result<Self> {
        Ok(Self {
            db: Database::connect(
                url,
                "burrow inventory",
                POOL_SIZE,
                (SCHEMA_LOCK, SCHEMA),
                "reservations are retried until it is",
            )
            .await?,
        })
    }

    pub(super) async fn reserve(
        &self,
        order_id: &str,
        lines: Vec<(String, i64)>,
    ) -> anyhow::Result<Reserved> {
        const WHAT: &str = "reserving stock";
        let mut client = self.db.client().await.context(WHAT)?;
        let result = reserve_in(&mut client, order_id, lines).await;
        settled(client, result, WHAT)
    }

    pub(super) async fn restock(
        &self,
        event_id: &str,
        sku: &str,
        stock: i64,
    ) -> anyhow::Result<bool> {
        const WHAT: &str = "restocking";
        let mut client = self.db.client().await.context(WHAT)?;
        let result = restock_in(&mut client, event_id, sku, stock).await;
        settled(client, result, WHAT)
    }

    pub(super) async fn level(&self, sku: &str) -> anyhow::Result<Option<Level>> {
        let rows = self
            .db
            .query(
                "reading a level",
                "SELECT stock, version, announced, announced_stock FROM inventory_stock
                 WHERE sku = $1",
                &[&sku],
            )
            .await?;
        Ok(rows.first().map(|r| Level {
            stock: r.get(0),
            version: r.get(1),
            announced: r.get(2),
            announced_stock: r.get(3),
        }))
    }

    pub(super) async fn mark_announced(
        &self,
        sku: &str,
        version: i64,
        stock: i64,
    ) -> anyhow::Result<i64> {
        self.db
            .query(
                "marking a level announced",
                "UPDATE inventory_stock SET announced = $2, announced_stock = $3
                 WHERE sku = $1 AND announced < $2",
                &[&sku, &version, &stock],
            )
            .await?;
        let rows = self
            .db
            .query(
                "reading a level's version",
                "SELECT version FROM inventory_stock WHERE sku = $1",
                &[&sku],
            )
            .await?;
        rows.first()
            .map(|r| r.get(0))
            .with_context(|| format!("no level of {sku}"))
    }

    pub(super) async fn report(&self) -> anyhow::Result<StockReport> {
        let rows = self
            .db
            .query(
                "reading the levels",
                "SELECT sku, stock, reserved, backordered, version, announced
                 FROM inventory_stock",
                &[],
            )
            .await?;
        let mut report = StockReport::default();
        for r in rows {
            let s = SkuStock {
                stock: r.get(1),
                reserved_units: r.get(2),
                backordered_units: r.get(3),
                version: r.get(4),
                announced_version: r.get(5),
            };
            report.backordered_units += s.backordered_units;
            report.skus.insert(r.get(0), s);
        }
        Ok(report)
    }

    pub(super) async fn ping(&self) -> anyhow::Result<()> {
        self.db.ping().await
    }

    pub(super) async fn purge(&self, window: std::time::Duration) -> anyhow::Result<u64> {
        self.db
            .purge_older(
                "forgetting seen ids",
                ("inventory_seen", "(kind, id)", "seen_at"),
                window,
            )
            .await
    }
}

/// The result of a transaction on `client`; a client whose transaction failed is dropped, not
/// pooled (it may be inside the failed transaction, or dead).
fn settled<T>(
    client: Object,
    result: Result<T, tokio_postgres::Error>,
    what: &'static str,
) -> anyhow::Result<T> {
    result.map_err(|e| {
        drop(Object::take(client));
        query_error(&e).context(what)
    })
}

/// Records `order_id` as seen and reserves its `lines`, in one transaction.
async fn reserve_in(
    client: &mut Object,
    order_id: &str,
    lines: Vec<(String, i64)>,
) -> Result<Reserved, tokio_postgres::Error> {
    let mut skus: Vec<&str> = lines.iter().map(|(sku, _)| sku.as_str()).collect();
    skus.sort_unstable();
    skus.dedup();
    let tx = client.transaction().await?;
    let new = mark_seen(&tx, ORDER, order_id).await?;
    let rows = tx
        .query(
            "SELECT sku, stock FROM inventory_stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
            &[&skus],
        )
        .await?;
    let mut levels: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    if !new {
        tx.commit().await?;
        let known = lines
            .into_iter()
            .map(|(sku, _)| sku)
            .filter(|sku| levels.contains_key(sku))
            .collect();
        return Ok(Reserved::Duplicate(known));
    }
    let update = tx
        .prepare_cached(
            "UPDATE inventory_stock SET stock = $2, reserved = reserved + $3,
             backordered = backordered + $4, version = version + $5, updated_at = now()
             WHERE sku = $1",
        )
        .await?;
    let mut out = Vec::new();
    for (sku, quantity) in lines {
        let Some(stock) = levels.get_mut(&sku) else {
            continue;
        };
        let r = reserve(*stock, quantity);
        let changed = i64::from(r.stock != *stock);
        tx.execute(
            &update,
            &[&sku, &r.stock, &r.reserved, &r.backordered, &changed],
        )
        .await?;
        *stock = r.stock;
        out.push(Line {
            sku,
            reserved: r.reserved,
            backordered: r.backordered,
        });
    }
    tx.commit().await?;
    Ok(Reserved::New(out))
}

/// Records the restock `event_id` as seen and sets the level of `sku`, in one transaction.
async fn restock_in(
    client: &mut Object,
    event_id: &str,
    sku: &str,
    stock: i64,
) -> Result<bool, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let new = mark_seen(&tx, RESTOCK, event_id).await?;
    if new {
        // A new SKU starts at version 1, not yet announced; a level that stays the same is no
        // change.
        tx.execute(
            "INSERT INTO inventory_stock (sku, stock) VALUES ($1, $2)
             ON CONFLICT (sku) DO UPDATE SET stock = $2,
                 version = inventory_stock.version + 1, updated_at = now()
             WHERE inventory_stock.stock <> $2",
            &[&sku, &stock],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(new)
}

/// Records `id` of `kind` as seen, in `tx`; returns whether it was new.
async fn mark_seen(
    tx: &deadpool_postgres::Transaction<'_>,
    kind: &str,
    id: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(tx
        .execute(
            "INSERT INTO inventory_seen (kind, id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&kind, &id],
        )
        .await?
        == 1)
}
