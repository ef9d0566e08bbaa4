//! The stock per SKU in `<store.dir>/inventory.db`, shared by the inventory processes of a host
//! (SQLite, WAL, `BEGIN IMMEDIATE` through [`GroupCommit`], so processes serialize their
//! read-modify-write of a level on the write lock).

use std::path::Path;

use super::{Level, Line, Reserved, SkuStock, StockReport};
use crate::inventory::stock::reserve;
use crate::sqlite::{now_ms, GroupCommit};
use rusqlite::{params, OptionalExtension};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS seen (
    kind    TEXT NOT NULL,
    id      TEXT NOT NULL,
    seen_at INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS stock (
    sku             TEXT PRIMARY KEY,
    stock           INTEGER NOT NULL,
    reserved        INTEGER NOT NULL DEFAULT 0,
    backordered     INTEGER NOT NULL DEFAULT 0,
    version         INTEGER NOT NULL DEFAULT 1,
    announced       INTEGER NOT NULL DEFAULT 0,
    announced_stock INTEGER,
    updated_at      INTEGER NOT NULL
);
";

const ORDER: &str = "order";
const RESTOCK: &str = "restock";

/// The SQLite inventory store.
#[derive(Debug, Clone)]
pub struct SqliteInventory {
    db: GroupCommit,
}

impl SqliteInventory {
    /// Opens `<dir>/inventory.db`.
    ///
    /// # Errors
    /// The database cannot be opened.
    pub(super) fn open(dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            db: GroupCommit::open(&dir.join("inventory.db"), SCHEMA)?,
        })
    }

    /// Reserves `lines` (units per SKU) of order `order_id`, once per `order_id`.
    ///
    /// # Errors
    /// The database failed; nothing was reserved.
    pub(super) async fn reserve(
        &self,
        order_id: &str,
        lines: Vec<(String, i64)>,
    ) -> anyhow::Result<Reserved> {
        let order_id = order_id.to_owned();
        self.db
            .call(move |conn| {
                let new = mark_seen(conn, ORDER, &order_id)?;
                let mut level = conn.prepare_cached("SELECT stock FROM stock WHERE sku = ?1")?;
                if !new {
                    let mut skus = Vec::new();
                    for (sku, _) in &lines {
                        if level.query_row([sku], |_| Ok(())).optional()?.is_some() {
                            skus.push(sku.clone());
                        }
                    }
                    return Ok(Reserved::Duplicate(skus));
                }
                let mut update = conn.prepare_cached(
                    "UPDATE stock SET stock = ?2, reserved = reserved + ?3,
                     backordered = backordered + ?4, version = version + ?5, updated_at = ?6
                     WHERE sku = ?1",
                )?;
                let mut out = Vec::new();
                for &(ref sku, quantity) in &lines {
                    let Some(stock) = level.query_row([sku], |r| r.get::<_, i64>(0)).optional()?
                    else {
                        continue;
                    };
                    let r = reserve(stock, quantity);
                    let changed = i64::from(r.stock != stock);
                    update.execute(params![
                        sku,
                        r.stock,
                        r.reserved,
                        r.backordered,
                        changed,
                        now_ms()
                    ])?;
                    out.push(Line {
                        sku: sku.clone(),
                        reserved: r.reserved,
                        backordered: r.backordered,
                    });
                }
                Ok(Reserved::New(out))
            })
            .await
    }

    /// Sets the level of `sku` to `stock` (floored at 0) for the restock `event_id`, once per
    /// `event_id`; returns whether the restock was new.
    ///
    /// # Errors
    /// The database failed; nothing changed.
    pub(super) async fn restock(
        &self,
        event_id: &str,
        sku: &str,
        stock: i64,
    ) -> anyhow::Result<bool> {
        let (event_id, sku) = (event_id.to_owned(), sku.to_owned());
        self.db
            .call(move |conn| {
                let new = mark_seen(conn, RESTOCK, &event_id)?;
                if new {
                    // A new SKU starts at version 1, not yet announced; a level that stays
                    // the same is no change.
                    conn.prepare_cached(
                        "INSERT INTO stock (sku, stock, updated_at) VALUES (?1, ?2, ?3)
                         ON CONFLICT(sku) DO UPDATE SET stock = ?2, version = version + 1,
                         updated_at = ?3 WHERE stock <> ?2",
                    )?
                    .execute(params![sku, stock, now_ms()])?;
                }
                Ok(new)
            })
            .await
    }

    /// The level of `sku`, if it has one.
    ///
    /// # Errors
    /// The database failed.
    pub(super) async fn level(&self, sku: &str) -> anyhow::Result<Option<Level>> {
        let sku = sku.to_owned();
        self.db
            .call(move |conn| {
                conn.prepare_cached(
                    "SELECT stock, version, announced, announced_stock FROM stock WHERE sku = ?1",
                )?
                .query_row([&sku], |r| {
                    Ok(Level {
                        stock: r.get(0)?,
                        version: r.get(1)?,
                        announced: r.get(2)?,
                        announced_stock: r.get(3)?,
                    })
                })
                .optional()
            })
            .await
    }

    /// Records that `version` of `sku` (at `stock`) was published, unless a later version was
    /// recorded already; returns the SKU's version now.
    ///
    /// # Errors
    /// The database failed.
    pub(super) async fn mark_announced(
        &self,
        sku: &str,
        version: i64,
        stock: i64,
    ) -> anyhow::Result<i64> {
        let sku = sku.to_owned();
        self.db
            .call(move |conn| {
                conn.prepare_cached(
                    "UPDATE stock SET announced = ?2, announced_stock = ?3
                     WHERE sku = ?1 AND announced < ?2",
                )?
                .execute(params![sku, version, stock])?;
                conn.prepare_cached("SELECT version FROM stock WHERE sku = ?1")?
                    .query_row([&sku], |r| r.get(0))
            })
            .await
    }

    /// Every SKU's level and counts.
    ///
    /// # Errors
    /// The database failed.
    pub(super) async fn report(&self) -> anyhow::Result<StockReport> {
        self.db
            .call(|conn| {
                let mut report = StockReport::default();
                let mut q = conn.prepare(
                    "SELECT sku, stock, reserved, backordered, version, announced FROM stock",
                )?;
                for row in q.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        SkuStock {
                            stock: r.get(1)?,
                            reserved_units: r.get(2)?,
                            backordered_units: r.get(3)?,
                            version: r.get(4)?,
                            announced_version: r.get(5)?,
                        },
                    ))
                })? {
                    let (sku, s) = row?;
                    report.backordered_units += s.backordered_units;
                    report.skus.insert(sku, s);
                }
                Ok(report)
            })
            .await
    }

    /// One read: whether the database answers.
    ///
    /// # Errors
    /// The database failed.
    pub(super) async fn ping(&self) -> anyhow::Result<()> {
        self.db
            .call(|conn| conn.query_row("SELECT count(*) FROM stock", [], |_| Ok(())))
            .await
    }

    /// Forgets the order and restock ids recorded longer than `window` ago (the levels stay),
    /// in batches; returns how many. A redelivery after the window would be applied again.
    ///
    /// # Errors
    /// The database failed.
    pub(super) async fn purge(&self, window: std::time::Duration) -> anyhow::Result<u64> {
        let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let cutoff = rusqlite::types::Value::Integer(now_ms().saturating_sub(window));
        self.db
            .purge_older("seen", "seen_at", cutoff, crate::sqlite::PURGE_BATCH)
            .await
    }
}

/// Records `id` of `kind` as seen, in the caller's transaction; returns whether it was new.
fn mark_seen(conn: &rusqlite::Connection, kind: &str, id: &str) -> rusqlite::Result<bool> {
    Ok(conn
        .prepare_cached(
            "INSERT INTO seen (kind, id, seen_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        )?
        .execute(params![kind, id, now_ms()])?
        == 1)
}
