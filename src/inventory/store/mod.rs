//! The stock per SKU, shared by every inventory process: `<store.dir>/inventory.db` on one host
//! (SQLite, [`sqlite`]), or PostgreSQL when `store.url` is set and inventory processes span
//! hosts ([`postgres`]). The types both speak live here.
//!
//! An order's reservations and a restock are each applied in the same transaction that records
//! its id (`order_id`, or the restock's `event_id`) as seen: a redelivery or a duplicate
//! publish changes nothing the second time.
//!
//! Every change of a SKU's level bumps its `version`; `announced` is the version last published
//! as `inventory.changed` (see [`super::Inventory`] for how it is announced).

mod postgres;
mod sqlite;

use std::collections::BTreeMap;

use serde::Serialize;

use self::postgres::PostgresInventory;
use self::sqlite::SqliteInventory;
use crate::settings::StoreSettings;

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
pub enum InventoryStore {
    /// A SQLite file shared by the processes of one host.
    Sqlite(SqliteInventory),
    /// A PostgreSQL database shared by every host.
    Postgres(PostgresInventory),
}

impl InventoryStore {
    /// Opens the store the settings name: PostgreSQL when `url` is set, else
    /// `<dir>/inventory.db`.
    ///
    /// # Errors
    /// The database cannot be opened, or PostgreSQL refuses the login.
    pub async fn open(settings: &StoreSettings) -> anyhow::Result<Self> {
        Ok(match &settings.url {
            Some(url) => Self::Postgres(PostgresInventory::connect(url).await?),
            None => Self::Sqlite(SqliteInventory::open(&settings.dir)?),
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
        match self {
            Self::Sqlite(s) => s.reserve(order_id, lines).await,
            Self::Postgres(s) => s.reserve(order_id, lines).await,
        }
    }

    /// Sets the level of `sku` to `stock` (floored at 0) for the restock `event_id`, once per
    /// `event_id`; returns whether the restock was new.
    ///
    /// # Errors
    /// The database failed; nothing changed.
    pub async fn restock(&self, event_id: &str, sku: &str, stock: i64) -> anyhow::Result<bool> {
        let stock = super::stock::restock_level(stock);
        match self {
            Self::Sqlite(s) => s.restock(event_id, sku, stock).await,
            Self::Postgres(s) => s.restock(event_id, sku, stock).await,
        }
    }

    /// The level of `sku`, if it has one.
    ///
    /// # Errors
    /// The database failed.
    pub async fn level(&self, sku: &str) -> anyhow::Result<Option<Level>> {
        match self {
            Self::Sqlite(s) => s.level(sku).await,
            Self::Postgres(s) => s.level(sku).await,
        }
    }

    /// Records that `version` of `sku` (at `stock`) was published, unless a later version was
    /// recorded already; returns the SKU's version now.
    ///
    /// # Errors
    /// The database failed.
    pub async fn mark_announced(&self, sku: &str, version: i64, stock: i64) -> anyhow::Result<i64> {
        match self {
            Self::Sqlite(s) => s.mark_announced(sku, version, stock).await,
            Self::Postgres(s) => s.mark_announced(sku, version, stock).await,
        }
    }

    /// Every SKU's level and counts.
    ///
    /// # Errors
    /// The database failed.
    pub async fn report(&self) -> anyhow::Result<StockReport> {
        match self {
            Self::Sqlite(s) => s.report().await,
            Self::Postgres(s) => s.report().await,
        }
    }

    /// One read: whether the database answers.
    ///
    /// # Errors
    /// The database failed.
    pub async fn ping(&self) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(s) => s.ping().await,
            Self::Postgres(s) => s.ping().await,
        }
    }

    /// Forgets the order and restock ids recorded longer than `window` ago (the levels stay),
    /// in batches; returns how many. A redelivery after the window would be applied again.
    ///
    /// # Errors
    /// The database failed.
    pub async fn purge(&self, window: std::time::Duration) -> anyhow::Result<u64> {
        match self {
            Self::Sqlite(s) => s.purge(window).await,
            Self::Postgres(s) => s.purge(window).await,
        }
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
        let store = InventoryStore::Sqlite(SqliteInventory::open(dir.path()).unwrap());
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
        let reopened = InventoryStore::Sqlite(SqliteInventory::open(dir.path()).unwrap());
        assert_eq!(reopened.report().await.unwrap(), report);
        // Past the records' millisecond, a zero window forgets all 3 orders and 4 restocks.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        assert_eq!(reopened.purge(std::time::Duration::ZERO).await.unwrap(), 7);
    }
}
