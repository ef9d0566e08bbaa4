//! The recommendation model and the stream offset it was built up to, together in
//! `<store.dir>/recommendations.db` (each event's changes and its offset in one
//! transaction, so the offset never runs ahead of or behind the model; events queued together
//! commit together).
//!
//! - `interest(user, sku)`: how much a customer cared about a product (view 1, review 2,
//!   order 3) and the stream offset of the latest interaction (recency).
//! - `related(a, b)`: how many customers interacted with both `a` and `b` ("customers who
//!   viewed/bought a also viewed/bought b"), kept symmetric and updated when a customer touches
//!   a product for the first time, so it does not depend on the order of events.
//! - `stock(sku)`: the stock of the last `inventory.changed`; a product at 0 is never
//!   recommended.
//!
//! Scores are integers and ties break on the SKU, so two models built from the same events give
//! byte-identical answers.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::message::{ActivityEvent, EventKind};
use crate::sqlite::GroupCommit;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS state (
    id      INTEGER PRIMARY KEY CHECK (id = 0),
    stream_offset INTEGER,
    events  INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO state (id) VALUES (0);
CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, seen_at INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS interest (
    user_id TEXT NOT NULL, sku TEXT NOT NULL, weight INTEGER NOT NULL, last_offset INTEGER NOT NULL,
    PRIMARY KEY (user_id, sku)
);
CREATE TABLE IF NOT EXISTS related (
    sku TEXT NOT NULL, other TEXT NOT NULL, users INTEGER NOT NULL, PRIMARY KEY (sku, other)
);
CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, stock INTEGER NOT NULL);
";

/// How many of a customer's latest products make up their recent interest.
pub const RECENT_PRODUCTS: i64 = 20;

/// What applying one stream message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The event changed (or was counted by) the model.
    Event,
    /// Its offset was applied before (re-read after a reconnect): nothing changed.
    AlreadyApplied,
    /// An event with the same `event_id` was applied before: only the offset moved.
    Duplicate,
    /// Not a valid event: logged and skipped, only the offset moved.
    Skipped,
}

/// The model's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ModelState {
    /// The last stream offset applied, `null` for a fresh model.
    pub offset: Option<i64>,
    /// Events applied (each distinct event once).
    pub events: u64,
    /// Stream messages skipped as invalid.
    pub skipped: u64,
    /// Customers with at least one interaction.
    pub users: u64,
    /// Products with at least one interaction.
    pub products: u64,
}

/// One recommended product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scored {
    /// The product.
    pub sku: String,
    /// Higher is better; ties are ordered by `sku`.
    pub score: i64,
}

impl Scored {
    /// Reads a `(sku, score)` row.
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            sku: r.get(0)?,
            score: r.get(1)?,
        })
    }
}

/// The model store.
#[derive(Debug, Clone)]
pub struct Model {
    db: GroupCommit,
}

fn weight(kind: EventKind) -> i64 {
    match kind {
        EventKind::ProductViewed => 1,
        EventKind::ReviewPosted => 2,
        EventKind::OrderPlaced => 3,
        _ => 0,
    }
}

fn touch(conn: &Connection, user: &str, sku: &str, w: i64, offset: i64) -> rusqlite::Result<()> {
    let known: bool = conn
        .prepare_cached("SELECT 1 FROM interest WHERE user_id = ?1 AND sku = ?2")?
        .query_row([user, sku], |_| Ok(()))
        .optional()?
        .is_some();
    if !known {
        conn.prepare_cached(
            "INSERT INTO related (sku, other, users)
             SELECT ?2, sku, 1 FROM interest WHERE user_id = ?1
             ON CONFLICT(sku, other) DO UPDATE SET users = users + 1",
        )?
        .execute([user, sku])?;
        conn.prepare_cached(
            "INSERT INTO related (sku, other, users)
             SELECT sku, ?2, 1 FROM interest WHERE user_id = ?1
             ON CONFLICT(sku, other) DO UPDATE SET users = users + 1",
        )?
        .execute([user, sku])?;
    }
    conn.prepare_cached(
        "INSERT INTO interest (user_id, sku, weight, last_offset) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(user_id, sku) DO UPDATE SET weight = weight + ?3, last_offset = ?4",
    )?
    .execute(params![user, sku, w, offset])?;
    Ok(())
}

impl Model {
    /// Opens `<dir>/recommendations.db`; with `rebuild`, forgets the model and its offset first.
    ///
    /// # Errors
    /// The database cannot be opened or cleared.
    pub async fn open(dir: &Path, rebuild: bool) -> anyhow::Result<Self> {
        let db = GroupCommit::open(&dir.join("recommendations.db"), SCHEMA)?;
        // Models made before `seen_at` existed: add it (their rows count as old).
        db.call(|conn| {
            let has: bool = conn
                .prepare("SELECT 1 FROM pragma_table_info('seen') WHERE name = 'seen_at'")?
                .exists([])?;
            if !has {
                conn.execute_batch(
                    "ALTER TABLE seen ADD COLUMN seen_at INTEGER NOT NULL DEFAULT 0",
                )?;
            }
            Ok(())
        })
        .await?;
        if rebuild {
            db.call(|conn| {
                conn.execute_batch(
                    "DELETE FROM seen; DELETE FROM interest; DELETE FROM related; DELETE FROM stock;
                     UPDATE state SET stream_offset = NULL, events = 0, skipped = 0;",
                )
            })
            .await?;
        }
        Ok(Self { db })
    }

    /// Applies the stream message at `offset` (`Err` = it is not a valid event, with the
    /// reason), unless that offset was applied before.
    ///
    /// # Errors
    /// The database failed; nothing was applied.
    pub async fn apply(
        &self,
        offset: i64,
        event: Result<ActivityEvent, String>,
    ) -> anyhow::Result<Applied> {
        self.queue_apply(offset, None, Arc::new(event))
            .await?
            .ok_or_else(|| anyhow::anyhow!("unreachable: no predecessor to check"))
    }

    /// Queues the stream message at `offset` for the model now, in call order, and answers
    /// once its batch is committed (see [`GroupCommit::queue`]): a reader queues message after
    /// message without waiting, and the database thread commits what is queued together.
    ///
    /// `after` is the offset of the message queued just before this one (`None` for the first
    /// of a session). Unless the model then ends exactly at `after`, nothing is applied and
    /// the answer is `Ok(None)`: the message before failed, and applying this one would step
    /// over it. So a failure is never stepped over, and the reader queues again from the first
    /// message not applied. An offset at or below the model's is `AlreadyApplied` in any case.
    ///
    /// # Errors
    /// The database failed; nothing was applied.
    pub fn queue_apply(
        &self,
        offset: i64,
        after: Option<i64>,
        event: Arc<Result<ActivityEvent, String>>,
    ) -> impl std::future::Future<Output = anyhow::Result<Option<Applied>>> + Send + 'static {
        self.db.queue(move |conn| {
            let last: Option<i64> = conn
                .prepare_cached("SELECT stream_offset FROM state WHERE id = 0")?
                .query_row([], |r| r.get(0))?;
            if last.is_some_and(|l| offset <= l) {
                return Ok(Some(Applied::AlreadyApplied));
            }
            if after.is_some() && last != after {
                return Ok(None);
            }
            let applied = match event.as_ref() {
                Err(_) => {
                    conn.prepare_cached("UPDATE state SET skipped = skipped + 1 WHERE id = 0")?
                        .execute([])?;
                    Applied::Skipped
                }
                Ok(e) => {
                    let new = conn
                        .prepare_cached(
                            "INSERT INTO seen (event_id, seen_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                        )?
                        .execute(params![&e.event_id, crate::sqlite::now_ms()])?
                        == 1;
                    if new {
                        let w = weight(e.kind);
                        if w > 0 {
                            for sku in crate::analytics::store::products_of(e) {
                                touch(conn, &e.user_id, &sku, w, offset)?;
                            }
                        }
                        if e.kind == EventKind::InventoryChanged {
                            let stock = e.data.get("stock").and_then(serde_json::Value::as_i64);
                            if let (Some(sku), Some(stock)) = (&e.product_id, stock) {
                                conn.prepare_cached(
                                    "INSERT INTO stock (sku, stock) VALUES (?1, ?2)
                                     ON CONFLICT(sku) DO UPDATE SET stock = ?2",
                                )?
                                .execute(params![sku, stock])?;
                            }
                        }
                        conn.prepare_cached("UPDATE state SET events = events + 1 WHERE id = 0")?
                            .execute([])?;
                        Applied::Event
                    } else {
                        Applied::Duplicate
                    }
                }
            };
            conn.prepare_cached("UPDATE state SET stream_offset = ?1 WHERE id = 0")?
                .execute([offset])?;
            Ok(Some(applied))
        })
    }

    /// Forgets the `event_id`s applied longer than `window` ago (the model stays), in batches;
    /// returns how many. Stream offsets, not these ids, keep a re-read out of the model; the ids
    /// only catch an event published twice, which happens within seconds.
    ///
    /// # Errors
    /// The database failed.
    pub async fn purge(&self, window: std::time::Duration) -> anyhow::Result<u64> {
        let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let cutoff =
            rusqlite::types::Value::Integer(crate::sqlite::now_ms().saturating_sub(window));
        self.db
            .purge_older("seen", "seen_at", cutoff, crate::sqlite::PURGE_BATCH)
            .await
    }

    /// The model's progress.
    ///
    /// # Errors
    /// The database failed.
    pub async fn state(&self) -> anyhow::Result<ModelState> {
        self.db
            .call(|conn| {
                let (offset, events, skipped): (Option<i64>, i64, i64) = conn.query_row(
                    "SELECT stream_offset, events, skipped FROM state WHERE id = 0",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                let (users, products): (i64, i64) = conn.query_row(
                    "SELECT COUNT(DISTINCT user_id), COUNT(DISTINCT sku) FROM interest",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                let n = |v: i64| u64::try_from(v).unwrap_or(0);
                Ok(ModelState {
                    offset,
                    events: n(events),
                    skipped: n(skipped),
                    users: n(users),
                    products: n(products),
                })
            })
            .await
    }

    /// Products for `user_id`: related to their [`RECENT_PRODUCTS`] latest products, weighted by
    /// their interest, excluding what they already know and what is out of stock. A customer
    /// without history gets the most popular products in stock.
    ///
    /// # Errors
    /// The database failed.
    pub async fn for_user(&self, user_id: &str, limit: usize) -> anyhow::Result<Vec<Scored>> {
        let user_id = user_id.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .call(move |conn| {
                let mut q = conn.prepare_cached(
                    "WITH recent AS (
                         SELECT sku, weight FROM interest WHERE user_id = ?1
                         ORDER BY last_offset DESC, sku LIMIT ?2)
                     SELECT r.other, SUM(r.users * recent.weight) AS score
                     FROM recent JOIN related r ON r.sku = recent.sku
                     WHERE r.other NOT IN (SELECT sku FROM interest WHERE user_id = ?1)
                       AND r.other NOT IN (SELECT sku FROM stock WHERE stock <= 0)
                     GROUP BY r.other ORDER BY score DESC, r.other LIMIT ?3",
                )?;
                let mut out: Vec<Scored> = q
                    .query_map(params![user_id, RECENT_PRODUCTS, limit], Scored::from_row)?
                    .collect::<rusqlite::Result<_>>()?;
                if out.is_empty() {
                    let mut q = conn.prepare_cached(
                        "SELECT sku, COUNT(*) AS score FROM interest
                         WHERE sku NOT IN (SELECT sku FROM interest WHERE user_id = ?1)
                           AND sku NOT IN (SELECT sku FROM stock WHERE stock <= 0)
                         GROUP BY sku ORDER BY score DESC, sku LIMIT ?2",
                    )?;
                    out = q
                        .query_map(params![user_id, limit], Scored::from_row)?
                        .collect::<rusqlite::Result<_>>()?;
                }
                Ok(out)
            })
            .await
    }

    /// Products that customers of `sku` also viewed or bought, by how many customers did,
    /// excluding what is out of stock.
    ///
    /// # Errors
    /// The database failed.
    pub async fn related(&self, sku: &str, limit: usize) -> anyhow::Result<Vec<Scored>> {
        let sku = sku.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .call(move |conn| {
                let mut q = conn.prepare_cached(
                    "SELECT other, users FROM related WHERE sku = ?1
                       AND other NOT IN (SELECT sku FROM stock WHERE stock <= 0)
                     ORDER BY users DESC, other LIMIT ?2",
                )?;
                let out = q
                    .query_map(params![sku, limit], Scored::from_row)?
                    .collect::<rusqlite::Result<_>>()?;
                Ok(out)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, user: &str, sku: &str) -> ActivityEvent {
        let mut e = ActivityEvent::new(kind, user);
        e.product_id = Some(sku.into());
        if kind == EventKind::OrderPlaced {
            e.order_id = Some("ord_1".into());
        }
        e
    }

    #[tokio::test]
    async fn queued_changes_commit_in_order_and_never_step_over_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let m = Model::open(dir.path(), false).await.unwrap();
        let ok = |user: &str| Arc::new(Ok(ev(EventKind::ProductViewed, user, "A")));
        // Queued one after the other without waiting: applied in that order.
        let first = m.queue_apply(10, None, ok("u1"));
        let second = m.queue_apply(11, Some(10), ok("u2"));
        // Its predecessor (12) was never applied: refused, nothing written.
        let gap = m.queue_apply(13, Some(12), ok("u3"));
        assert_eq!(first.await.unwrap(), Some(Applied::Event));
        assert_eq!(second.await.unwrap(), Some(Applied::Event));
        assert_eq!(gap.await.unwrap(), None);
        let state = m.state().await.unwrap();
        assert_eq!((state.offset, state.events, state.users), (Some(11), 2, 2));
        // Queued again after its predecessor: applied; an offset already in the model is not.
        assert_eq!(
            m.queue_apply(12, Some(11), ok("u4")).await.unwrap(),
            Some(Applied::Event)
        );
        assert_eq!(
            m.queue_apply(13, Some(12), ok("u3")).await.unwrap(),
            Some(Applied::Event)
        );
        assert_eq!(
            m.queue_apply(11, None, ok("u2")).await.unwrap(),
            Some(Applied::AlreadyApplied)
        );
        let state = m.state().await.unwrap();
        assert_eq!((state.offset, state.events, state.users), (Some(13), 4, 4));
    }

    #[tokio::test]
    async fn co_occurrence_recommends_and_stock_zero_excludes() {
        let dir = tempfile::tempdir().unwrap();
        let m = Model::open(dir.path(), false).await.unwrap();
        let events = [
            ev(EventKind::ProductViewed, "u1", "A"),
            ev(EventKind::ProductViewed, "u1", "B"),
            ev(EventKind::OrderPlaced, "u2", "A"),
            ev(EventKind::ProductViewed, "u2", "B"),
            ev(EventKind::ProductViewed, "u2", "C"),
            ev(EventKind::ProductViewed, "u3", "A"),
        ];
        for (i, e) in events.into_iter().enumerate() {
            assert_eq!(m.apply(i as i64, Ok(e)).await.unwrap(), Applied::Event);
        }
        let related: Vec<_> = m.related("A", 10).await.unwrap();
        assert_eq!(
            related,
            vec![
                Scored {
                    sku: "B".into(),
                    score: 2
                },
                Scored {
                    sku: "C".into(),
                    score: 1
                }
            ]
        );
        let recs = m.for_user("u3", 10).await.unwrap();
        assert_eq!(recs[0].sku, "B");
        // Re-reading an offset changes nothing.
        assert_eq!(
            m.apply(2, Ok(ev(EventKind::ProductViewed, "u9", "Z")))
                .await
                .unwrap(),
            Applied::AlreadyApplied
        );
        let mut out = ActivityEvent::new(EventKind::InventoryChanged, "inventory");
        out.product_id = Some("B".into());
        out.data = serde_json::json!({"stock": 0, "delta": -3});
        m.apply(6, Ok(out)).await.unwrap();
        assert!(m
            .for_user("u3", 10)
            .await
            .unwrap()
            .iter()
            .all(|s| s.sku != "B"));
        assert!(m
            .related("A", 10)
            .await
            .unwrap()
            .iter()
            .all(|s| s.sku != "B"));
        assert_eq!(
            m.apply(7, Err("bad".into())).await.unwrap(),
            Applied::Skipped
        );
        let st = m.state().await.unwrap();
        assert_eq!((st.offset, st.events, st.skipped), (Some(7), 7, 1));
        drop(m);
        let fresh = Model::open(dir.path(), true).await.unwrap();
        assert_eq!(fresh.state().await.unwrap().offset, None);
    }
}
