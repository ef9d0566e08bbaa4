//! The order store in a SQLite file (WAL, group commit): orders, their idempotency keys, the
//! outbox, and the relay lease (one row: owner and expiry), so that one relay publishes at a
//! time and in order, whichever order-service processes of the host share the file.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, OptionalExtension};
use rusqlite_migration::{Migrations, M};

use super::{from_clause, Acceptance, NewOrder, OutboxStats};
use crate::orders::outbox::OutboxMessage;
use crate::orders::status::OrderStatus;
use crate::sqlite::{now_ms, GroupCommit, PURGE_BATCH};

/// The schema as it was first released (0.x): kept as the first migration, so that a file of
/// that time and a new file follow the same path.
const SCHEMA_V1: &str = "
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

/// Fewer B-trees written per order: `orders` is keyed by `order_id` itself (`WITHOUT ROWID`:
/// no rowid table beside the primary-key index), and the outbox takes the next rowid without
/// `AUTOINCREMENT` (no `sqlite_sequence` row updated per insert). A row id may come back after
/// the rows above it were purged; ids only order the unpublished rows, which are never purged.
/// Both tables are copied into fresh ones, so the step can run twice (see
/// [`GroupCommit::open_migrated`]).
const SCHEMA_V2: &str = "
DROP TABLE IF EXISTS orders_v2;
CREATE TABLE orders_v2 (
    order_id        TEXT PRIMARY KEY,
    idempotency_key TEXT NOT NULL UNIQUE,
    request_hash    TEXT NOT NULL,
    status          TEXT NOT NULL,
    accepted_at     INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO orders_v2 (order_id, idempotency_key, request_hash, status, accepted_at, updated_at)
    SELECT order_id, idempotency_key, request_hash, status, accepted_at, updated_at FROM orders;
DROP TABLE orders;
ALTER TABLE orders_v2 RENAME TO orders;
DROP TABLE IF EXISTS outbox_v2;
CREATE TABLE outbox_v2 (
    id           INTEGER PRIMARY KEY,
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
INSERT INTO outbox_v2 (id, order_id, exchange, routing_key, kind, message_id, traceparent, body,
                       created_at, published_at)
    SELECT id, order_id, exchange, routing_key, kind, message_id, traceparent, body,
           created_at, published_at FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v2 RENAME TO outbox;
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;";

/// An order points at its order message's outbox row (`outbox_id`), and `published` is read
/// from that row instead of written into the order: an order is `published` while its stored
/// status is `accepted` and that row is no longer waiting (published, or purged after the
/// retention window). So a confirm marks only the outbox rows, one run of ids per statement,
/// and not each order as well. Orders accepted before this version get the id of their waiting
/// row. The column is added only when missing, so the step can run twice.
fn schema_v3(tx: &rusqlite::Transaction<'_>) -> rusqlite_migration::HookResult {
    let has_column: bool = tx.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('orders') WHERE name = 'outbox_id'",
        [],
        |r| r.get(0),
    )?;
    if !has_column {
        tx.execute_batch(
            "ALTER TABLE orders ADD COLUMN outbox_id INTEGER;
             UPDATE orders SET outbox_id = waiting.id
               FROM (SELECT id, order_id FROM outbox
                     WHERE published_at IS NULL AND kind = 'order') AS waiting
              WHERE orders.order_id = waiting.order_id AND orders.status = 'accepted';",
        )?;
    }
    Ok(())
}

/// The schema's versions, oldest first (`PRAGMA user_version` counts those applied).
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(SCHEMA_V1),
        M::up(SCHEMA_V2),
        M::up_with_hook("", schema_v3),
    ])
}

/// An order's status as the service tells it, for `orders AS o` (see [`schema_v3`]): `accepted`
/// turns `published` once the order's outbox row no longer waits. The row must still be the
/// order's own (ids of purged rows can come back).
const STATUS: &str = "CASE WHEN o.status = 'accepted' AND o.outbox_id IS NOT NULL
     AND NOT EXISTS (SELECT 1 FROM outbox b WHERE b.id = o.outbox_id
                     AND b.order_id = o.order_id AND b.published_at IS NULL)
     THEN 'published' ELSE o.status END";

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
            db: GroupCommit::open_migrated(path, &migrations())?,
        })
    }

    pub(super) async fn accept(&self, order: NewOrder) -> anyhow::Result<Acceptance> {
        self.db
            .call(move |c| {
                let now = now_ms();
                // The outbox rows first, so that the order can point at its own; a reused key
                // (rare: a client's retry) takes them out again.
                let mut insert = c.prepare_cached(
                    "INSERT INTO outbox (order_id, exchange, routing_key, kind, message_id,
                                         traceparent, body, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?;
                let (mut first, mut order_row) = (None, None);
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
                    let id = c.last_insert_rowid();
                    first.get_or_insert(id);
                    if m.is_order() {
                        order_row = Some(id);
                    }
                }
                // One index probe for a new key: the insert itself tells whether it was used.
                let inserted = c
                    .prepare_cached(
                        "INSERT INTO orders (order_id, idempotency_key, request_hash, status,
                                             accepted_at, updated_at, outbox_id)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)
                         ON CONFLICT (idempotency_key) DO NOTHING",
                    )?
                    .execute(params![
                        order.order_id,
                        order.key,
                        order.request_hash,
                        OrderStatus::Accepted.as_str(),
                        now,
                        order_row
                    ])?;
                if inserted == 1 {
                    return Ok(Acceptance::New);
                }
                if let Some(first) = first {
                    c.prepare_cached("DELETE FROM outbox WHERE id >= ?1")?
                        .execute([first])?;
                }
                let (order_id, hash, status): (String, String, String) = c
                    .prepare_cached(&format!(
                        "SELECT o.order_id, o.request_hash, {STATUS} FROM orders AS o
                         WHERE o.idempotency_key = ?1"
                    ))?
                    .query_row([&order.key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                Ok(if hash == order.request_hash {
                    Acceptance::Existing {
                        order_id,
                        status: parse_status(&status)?,
                    }
                } else {
                    Acceptance::KeyConflict { order_id }
                })
            })
            .await
    }

    pub(super) async fn status(&self, order_id: &str) -> anyhow::Result<Option<OrderStatus>> {
        let order_id = order_id.to_owned();
        self.db
            .call_one_statement(move |c| {
                let status: Option<String> = c
                    .prepare_cached(&format!(
                        "SELECT {STATUS} FROM orders AS o WHERE o.order_id = ?1"
                    ))?
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
        after: i64,
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
                     FROM outbox WHERE published_at IS NULL AND id > ?2 ORDER BY id LIMIT ?1",
                )?;
                let rows = q
                    .query_map([limit, after], |r| {
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

    pub(super) async fn published(&self, ids: Vec<i64>) -> anyhow::Result<()> {
        let runs = runs(ids);
        self.db
            .call(move |c| {
                let now = now_ms();
                // The relay takes rows in id order, so the confirmed ones come in long runs:
                // one statement per run. The orders follow their rows (see `STATUS`).
                let mut run = c.prepare_cached(
                    "UPDATE outbox SET published_at = ?3 WHERE id BETWEEN ?1 AND ?2",
                )?;
                for &(first, last) in &runs {
                    run.execute(params![first, last, now])?;
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

/// `ids` as runs of consecutive ids, `(first, last)`, in ascending order.
fn runs(mut ids: Vec<i64>) -> Vec<(i64, i64)> {
    ids.sort_unstable();
    ids.dedup();
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for id in ids {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == id => *last = id,
            _ => runs.push((id, id)),
        }
    }
    runs
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(order_id: &str) -> OutboxMessage {
        OutboxMessage {
            id: 0,
            order_id: order_id.to_owned(),
            exchange: "orders".into(),
            routing_key: "order.placed".into(),
            kind: crate::orders::outbox::ORDER_KIND.into(),
            message_id: format!("msg_{order_id}"),
            traceparent: None,
            body: br#"{"order_id":"x"}"#.to_vec(),
        }
    }

    fn order(key: &str, hash: &str, order_id: &str) -> NewOrder {
        NewOrder {
            key: key.into(),
            request_hash: hash.into(),
            order_id: order_id.into(),
            messages: vec![message(order_id)],
        }
    }

    /// A file as the first release wrote it: `ord_1` published (its row kept for the
    /// retention window), `ord_2` accepted with its row waiting.
    fn first_release_file(path: &Path) {
        let c = rusqlite::Connection::open(path).unwrap();
        c.execute_batch(SCHEMA_V1).unwrap();
        c.execute_batch(
            "INSERT INTO orders VALUES ('ord_1', 'key-1', 'h1', 'published', 1, 2);
             INSERT INTO orders VALUES ('ord_2', 'key-2', 'h2', 'accepted', 3, 3);
             INSERT INTO outbox (order_id, exchange, routing_key, kind, message_id, body,
                                 created_at, published_at)
                 VALUES ('ord_1', 'orders', 'order.placed', 'order', 'msg_1', x'7b7d', 1, 2);
             INSERT INTO outbox (order_id, exchange, routing_key, kind, message_id, body,
                                 created_at)
                 VALUES ('ord_2', 'orders', 'order.placed', 'order', 'msg_2', x'7b7d', 3);",
        )
        .unwrap();
    }

    async fn check_migrated(path: &Path) {
        let store = SqliteOrders::open(path).unwrap();
        assert_eq!(
            store.status("ord_1").await.unwrap(),
            Some(OrderStatus::Published)
        );
        assert_eq!(
            store.accept(order("key-2", "h2", "ord_new")).await.unwrap(),
            Acceptance::Existing {
                order_id: "ord_2".into(),
                status: OrderStatus::Accepted
            }
        );
        let rows = store
            .claim("me", 0, 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "only ord_2's row waits: {rows:?}");
        assert_eq!((rows[0].id, rows[0].message_id.as_str()), (2, "msg_2"));
        let c = rusqlite::Connection::open(path).unwrap();
        let version: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3);
        // The waiting order points at its row; the published one needs no row.
        let pointers: Vec<(String, Option<i64>)> = c
            .prepare("SELECT order_id, outbox_id FROM orders ORDER BY order_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            pointers,
            vec![("ord_1".into(), None), ("ord_2".into(), Some(2))]
        );
        let sql: String = c
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'orders'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(sql.contains("WITHOUT ROWID"), "{sql}");
        let (orders, outbox): (i64, i64) = c
            .query_row(
                "SELECT (SELECT COUNT(*) FROM orders), (SELECT COUNT(*) FROM outbox)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((orders, outbox), (2, 2));
    }

    #[tokio::test]
    async fn a_file_of_the_first_release_keeps_its_orders_and_waiting_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders.db");
        first_release_file(&path);
        check_migrated(&path).await;
        // Opening again finds the file up to date.
        check_migrated(&path).await;
        // The order accepted before the migration is published with its row.
        let store = SqliteOrders::open(&path).unwrap();
        store.published(vec![2]).await.unwrap();
        assert_eq!(
            store.status("ord_2").await.unwrap(),
            Some(OrderStatus::Published)
        );
    }

    #[tokio::test]
    async fn a_file_of_version_2_gets_pointers_for_its_waiting_orders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders.db");
        {
            let mut c = rusqlite::Connection::open(&path).unwrap();
            migrations().to_version(&mut c, 2).unwrap();
            // ord_a published (row 1) with its event (row 2); ord_b waiting (rows 3 and 4).
            c.execute_batch(
                "INSERT INTO orders VALUES ('ord_a', 'key-a', 'h', 'published', 1, 2);
                 INSERT INTO orders VALUES ('ord_b', 'key-b', 'h', 'accepted', 3, 3);
                 INSERT INTO outbox (order_id, exchange, routing_key, kind, message_id, body,
                                     created_at, published_at) VALUES
                     ('ord_a', 'orders', 'order.placed', 'order', 'ord_a', x'7b7d', 1, 2),
                     ('ord_a', 'activity', 'order.placed', 'order.placed', 'evt_a', x'7b7d', 1, 2);
                 INSERT INTO outbox (order_id, exchange, routing_key, kind, message_id, body,
                                     created_at) VALUES
                     ('ord_b', 'orders', 'order.placed', 'order', 'ord_b', x'7b7d', 3),
                     ('ord_b', 'activity', 'order.placed', 'order.placed', 'evt_b', x'7b7d', 3);",
            )
            .unwrap();
        }
        let store = SqliteOrders::open(&path).unwrap();
        let c = rusqlite::Connection::open(&path).unwrap();
        let pointer: Option<i64> = c
            .query_row(
                "SELECT outbox_id FROM orders WHERE order_id = 'ord_b'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(pointer, Some(3), "the order message's row, not its event's");
        assert_eq!(
            store.status("ord_b").await.unwrap(),
            Some(OrderStatus::Accepted)
        );
        // Its event confirmed first changes nothing; its own row does.
        store.published(vec![4]).await.unwrap();
        assert_eq!(
            store.status("ord_b").await.unwrap(),
            Some(OrderStatus::Accepted)
        );
        store.published(vec![3]).await.unwrap();
        assert_eq!(
            store.status("ord_b").await.unwrap(),
            Some(OrderStatus::Published)
        );
        assert_eq!(
            store.status("ord_a").await.unwrap(),
            Some(OrderStatus::Published)
        );
    }

    #[tokio::test]
    async fn processes_migrating_one_file_at_once_all_open_it_and_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders.db");
        first_release_file(&path);
        let openers: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || SqliteOrders::open(&path).map(|_| ()))
            })
            .collect();
        for o in openers {
            o.join().unwrap().expect("every opener gets the file");
        }
        check_migrated(&path).await;
    }

    #[tokio::test]
    async fn keys_orders_and_published_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteOrders::open(&dir.path().join("orders.db")).unwrap();
        for i in 0..5 {
            let key = format!("k{i}");
            let id = format!("ord_{i}");
            assert_eq!(
                store.accept(order(&key, "h", &id)).await.unwrap(),
                Acceptance::New
            );
        }
        assert_eq!(
            store.accept(order("k1", "other", "ord_x")).await.unwrap(),
            Acceptance::KeyConflict {
                order_id: "ord_1".into()
            }
        );
        // A retry with the same request: the same order, and no second outbox row.
        assert_eq!(
            store.accept(order("k1", "h", "ord_y")).await.unwrap(),
            Acceptance::Existing {
                order_id: "ord_1".into(),
                status: OrderStatus::Accepted
            }
        );
        let rows = store
            .claim("me", 0, 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(rows.len(), 5);
        // Confirms for all but the middle row, out of order.
        let ids = vec![rows[4].id, rows[0].id, rows[1].id, rows[3].id];
        store.published(ids).await.unwrap();
        let left = store
            .claim("me", 0, 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].order_id, "ord_2");
        assert_eq!(store.stats().await.unwrap().depth, 1);
        assert_eq!(
            store.status("ord_4").await.unwrap(),
            Some(OrderStatus::Published)
        );
        assert_eq!(
            store.status("ord_2").await.unwrap(),
            Some(OrderStatus::Accepted)
        );
        // A retry of a published order tells it so.
        assert_eq!(
            store.accept(order("k4", "h", "ord_z")).await.unwrap(),
            Acceptance::Existing {
                order_id: "ord_4".into(),
                status: OrderStatus::Published
            }
        );
        // A final status stays: the row's state no longer matters.
        assert!(store
            .advance("ord_2", OrderStatus::Fulfilled)
            .await
            .unwrap());
        assert_eq!(
            store.status("ord_2").await.unwrap(),
            Some(OrderStatus::Fulfilled)
        );
    }

    #[test]
    fn confirmed_ids_become_runs() {
        assert_eq!(runs(vec![]), vec![]);
        assert_eq!(runs(vec![7]), vec![(7, 7)]);
        assert_eq!(
            runs(vec![5, 3, 4, 9, 10, 12, 4]),
            vec![(3, 5), (9, 10), (12, 12)]
        );
    }
}
