//! The stock per SKU in `<store.dir>/inventory.db`, shared by the inventory processes of a host
//! (SQLite, WAL, `BEGIN IMMEDIATE` through [`GroupCommit`], so processes serialize their
//! read-modify-write of a level on the write lock).
//!
//! An order's reservations and a restock are each applied in the same transaction that records
//! its id (`order_id`, or the restock's `event_id`) in `seen`: a redelivery or a duplicate
//! publish changes nothing the second time.
//!
//! Every change of a SKU's level bumps its `version`; `announced` is the version last published
//! as `inventory.changed` (see [`super::Inventory`] for how it is announced).

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::stock::{reserve, restock_level};
use crate::sqlite::{now_ms, GroupCommit};

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

/// One SKU as `GET /stock` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkuStock {
    /// Units in stock now.
    pub stock: i64,
    /// Units reserved by orders since the SKU was first stocked.
    pub reserved_units: i64,
    /// Units ordered beyond the stock (fulfilled as back-orders).
    pub backordered_units: i64,
    /// Bumped by every change of `stock`.
    pub version: i64,
    /// The version last published as `inventory.changed`.
    pub announced_version: i64,
}

/// What `GET /stock` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StockReport {
    /// Every SKU with a level, by SKU.
    pub skus: BTreeMap<String, SkuStock>,
    /// Back-ordered units over every SKU.
    pub backordered_units: i64,
}

/// What reserving one line of an order did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The SKU.
    pub sku: String,
    /// Units taken from stock.
    pub reserved: i64,
    /// Units back-ordered.
    pub backordered: i64,
}

/// What [`InventoryStore::reserve`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// The order was seen for the first time: its lines on SKUs with a level (a SKU that was
    /// never stocked has no level, and its lines change nothing).
    New(Vec<Line>),
    /// The order was reserved before: nothing changed. Carries its SKUs that have a level.
    Duplicate(Vec<String>),
}

impl Reserved {
    /// The SKUs with a level the order touches.
    pub fn skus(&self) -> Vec<String> {
        match self {
            Self::New(lines) => lines.iter().map(|l| l.sku.clone()).collect(),
            Self::Duplicate(skus) => skus.clone(),
        }
    }
}

/// A SKU's level and how far it was announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// Units in stock.
    pub stock: i64,
    /// Bumped by every change of `stock`.
    pub version: i64,
    /// The version last published.
    pub announced: i64,
    /// The stock last published, if any.
    pub announced_stock: Option<i64>,
}

impl Level {
    /// Whether a change is not yet announced.
    pub fn pending(&self) -> bool {
        self.announced < self.version
    }
}

/// The inventory store.
#[derive(Debug, Clone)]
pub struct InventoryStore {
    db: GroupCommit,
}

impl InventoryStore {
    /// Opens `<dir>/inventory.db`.
    ///
    /// # Errors
    /// The database cannot be opened.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            db: GroupCommit::open(&dir.join("inventory.db"), SCHEMA)?,
        })
    }

    /// Reserves `lines` (units per SKU) of order `order_id`, once per `order_id`.
    ///
    /// # Errors
    /// The database failed; nothing was reserved.
    pub async fn reserve(
        &self,
        order_id: &str,
        lines: Vec<(String, i64)>,
    ) -> anyhow::Result<Reserved> {
        let order_id = order_id.to_owned();
        self.db
            .call(move |conn| {
                let new = conn
                    .prepare_cached(
                        "INSERT INTO seen (kind, id, seen_at) VALUES (?1, ?2, ?3)
                         ON CONFLICT DO NOTHING",
                    )?
                    .execute(params![ORDER, order_id, now_ms()])?
                    == 1;
                let mut level = conn.prepare_cached("SELECT stock FROM stock WHERE sku = ?1")?;
                if !new {
                    let mut skus = Vec::new();
                    for (sku, _) in lines {
                        if level.query_row([&sku], |_| Ok(())).optional()?.is_some() {
                            skus.push(sku);
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
                for (sku, quantity) in lines {
                    let Some(stock) = level.query_row([&sku], |r| r.get::<_, i64>(0)).optional()?
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
                        sku,
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
    pub async fn restock(&self, event_id: &str, sku: &str, stock: i64) -> anyhow::Result<bool> {
        let (event_id, sku) = (event_id.to_owned(), sku.to_owned());
        let stock = restock_level(stock);
        self.db
            .call(move |conn| {
                let new = conn
                    .prepare_cached(
                        "INSERT INTO seen (kind, id, seen_at) VALUES (?1, ?2, ?3)
                         ON CONFLICT DO NOTHING",
                    )?
                    .execute(params![RESTOCK, event_id, now_ms()])?
                    == 1;
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
    pub async fn level(&self, sku: &str) -> anyhow::Result<Option<Level>> {
        let sku = sku.to_owned();
        self.db
            .call(move |conn| {
                conn.prepare_cached(
                    "SELECT stock, version, announced, announced_stock FROM stock WHERE sku = ?1",
                )?
                .query_row([sku], |r| {
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
    pub async fn mark_announced(&self, sku: &str, version: i64, stock: i64) -> anyhow::Result<i64> {
        let sku = sku.to_owned();
        self.db
            .call(move |conn| {
                conn.prepare_cached(
                    "UPDATE stock SET announced = ?2, announced_stock = ?3
                     WHERE sku = ?1 AND announced < ?2",
                )?
                .execute(params![sku, version, stock])?;
                conn.prepare_cached("SELECT version FROM stock WHERE sku = ?1")?
                    .query_row([sku], |r| r.get(0))
            })
            .await
    }

    /// Every SKU's level and counts.
    ///
    /// # Errors
    /// The database failed.
    pub async fn report(&self) -> anyhow::Result<StockReport> {
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
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.db
            .call(|conn| conn.query_row("SELECT count(*) FROM stock", [], |_| Ok(())))
            .await
    }

    /// Forgets the order and restock ids recorded longer than `window` ago (the levels stay),
    /// in batches; returns how many. A redelivery after the window would be applied again.
    ///
    /// # Errors
    /// The database failed.
    pub async fn purge(&self, window: std::time::Duration) -> anyhow::Result<u64> {
        let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let cutoff = rusqlite::types::Value::Integer(now_ms().saturating_sub(window));
        self.db
            .purge_older("seen", "seen_at", cutoff, crate::sqlite::PURGE_BATCH)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, reserved: i64, backordered: i64) -> Line {
        Line {
            sku: sku.into(),
            reserved,
            backordered,
        }
    }

    #[tokio::test]
    async fn reservations_and_restocks_apply_once_and_floor_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let store = InventoryStore::open(dir.path()).unwrap();
        assert!(store.restock("evt_1", "SKU-1", 3).await.unwrap());
        assert!(!store.restock("evt_1", "SKU-1", 3).await.unwrap());
        let level = store.level("SKU-1").await.unwrap().unwrap();
        assert_eq!((level.stock, level.version, level.pending()), (3, 1, true));

        let lines = vec![("SKU-1".to_owned(), 2), ("SKU-9".to_owned(), 1)];
        assert_eq!(
            store.reserve("ord_1", lines.clone()).await.unwrap(),
            Reserved::New(vec![line("SKU-1", 2, 0)]),
            "a SKU never stocked has no level"
        );
        assert_eq!(
            store.reserve("ord_1", lines).await.unwrap(),
            Reserved::Duplicate(vec!["SKU-1".into()])
        );
        assert_eq!(
            store
                .reserve("ord_2", vec![("SKU-1".to_owned(), 4)])
                .await
                .unwrap(),
            Reserved::New(vec![line("SKU-1", 1, 3)])
        );
        // At 0, a back-order changes no level.
        store
            .reserve("ord_3", vec![("SKU-1".to_owned(), 1)])
            .await
            .unwrap();
        let level = store.level("SKU-1").await.unwrap().unwrap();
        assert_eq!((level.stock, level.version), (0, 3));

        assert_eq!(store.mark_announced("SKU-1", 2, 1).await.unwrap(), 3);
        assert_eq!(store.mark_announced("SKU-1", 3, 0).await.unwrap(), 3);
        assert_eq!(store.mark_announced("SKU-1", 2, 1).await.unwrap(), 3);
        let level = store.level("SKU-1").await.unwrap().unwrap();
        assert_eq!((level.announced, level.announced_stock), (3, Some(0)));
        assert!(!level.pending());

        // A restock to the same level is no change; another one is.
        assert!(store.restock("evt_2", "SKU-1", 0).await.unwrap());
        assert_eq!(store.level("SKU-1").await.unwrap().unwrap().version, 3);
        assert!(store.restock("evt_3", "SKU-1", -5).await.unwrap());
        assert!(store.restock("evt_4", "SKU-1", 10).await.unwrap());
        assert_eq!(store.level("SKU-1").await.unwrap().unwrap().version, 4);

        let report = store.report().await.unwrap();
        assert_eq!(report.backordered_units, 4);
        assert_eq!(
            report.skus["SKU-1"],
            SkuStock {
                stock: 10,
                reserved_units: 3,
                backordered_units: 4,
                version: 4,
                announced_version: 3,
            }
        );
        drop(store);
        let reopened = InventoryStore::open(dir.path()).unwrap();
        assert_eq!(reopened.report().await.unwrap(), report);
        // Past the records' millisecond, a zero window forgets all 3 orders and 4 restocks.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        assert_eq!(reopened.purge(std::time::Duration::ZERO).await.unwrap(), 7);
    }
}
