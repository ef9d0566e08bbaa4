//! The analytics counts in `<store.dir>/analytics.db`, shared by every analytics process of a
//! host: per kind, per product and kind, per minute and kind. An event is counted in the same
//! transaction that records its `event_id`, so a redelivery or a duplicate publish is never
//! counted twice, and the counts survive a restart.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::params;
use serde::Serialize;

use crate::message::{ActivityEvent, EventKind};
use crate::sqlite::{now_ms, GroupCommit};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS seen (
    event_id   TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    counted_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS by_kind (kind TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS by_product (
    sku TEXT NOT NULL, kind TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (sku, kind)
);
CREATE TABLE IF NOT EXISTS by_minute (
    minute TEXT NOT NULL, kind TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (minute, kind)
);
CREATE TABLE IF NOT EXISTS duplicates (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL);
";

/// Minutes shown by [`Stats::per_minute`].
pub const MINUTES_SHOWN: usize = 60;

/// The products an event is about: an order's `data.skus` (every line), else `product_id`.
pub fn products_of(event: &ActivityEvent) -> Vec<String> {
    let skus: Vec<String> = event
        .data
        .get("skus")
        .and_then(serde_json::Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(serde_json::Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let mut out = if skus.is_empty() {
        event.product_id.iter().cloned().collect()
    } else {
        skus
    };
    out.sort();
    out.dedup();
    out
}

/// Views → orders placed → orders fulfilled.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Funnel {
    /// `product.viewed` events.
    pub views: u64,
    /// `order.placed` events.
    pub orders_placed: u64,
    /// `order.fulfilled` events.
    pub orders_fulfilled: u64,
    /// `orders_placed / views`, `null` without views.
    pub view_to_order: Option<f64>,
    /// `orders_fulfilled / orders_placed`, `null` without orders.
    pub order_to_fulfillment: Option<f64>,
}

/// Events of one minute.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Minute {
    /// `YYYY-MM-DDTHH:MMZ`, of `occurred_at`.
    pub minute: String,
    /// Events in it.
    pub events: u64,
    pub by_kind: BTreeMap<String, u64>,
}

/// What `GET /stats` returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Distinct events counted.
    pub events_total: u64,
    /// Deliveries of an event counted before (not counted again).
    pub duplicates: u64,
    /// Per kind; every kind is present.
    pub by_kind: BTreeMap<String, u64>,
    /// Per product, per kind.
    pub by_product: BTreeMap<String, BTreeMap<String, u64>>,
    /// The latest [`MINUTES_SHOWN`] minutes with events, oldest first.
    pub per_minute: Vec<Minute>,
    /// The order funnel.
    pub funnel: Funnel,
}

/// The analytics store.
#[derive(Debug, Clone)]
pub struct AnalyticsStore {
    db: GroupCommit,
}

fn n(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl AnalyticsStore {
    /// Opens `<dir>/analytics.db`.
    ///
    /// # Errors
    /// The database cannot be opened.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            db: GroupCommit::open(&dir.join("analytics.db"), SCHEMA)?,
        })
    }

    /// Forgets the `event_id`s counted longer than `window` ago (the counts stay), in batches;
    /// returns how many. A redelivery after the window is counted again.
    ///
    /// # Errors
    /// The database failed.
    pub async fn purge(&self, window: std::time::Duration) -> anyhow::Result<u64> {
        let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let cutoff = rusqlite::types::Value::Integer(now_ms().saturating_sub(window));
        self.db
            .purge_older("seen", "counted_at", cutoff, crate::sqlite::PURGE_BATCH)
            .await
    }

    /// Counts `event` unless its `event_id` was counted before; returns whether it was new.
    ///
    /// # Errors
    /// The database failed; nothing was counted.
    pub async fn record(&self, event: &ActivityEvent) -> anyhow::Result<bool> {
        let kind = event.kind.as_str();
        let event_id = event.event_id.clone();
        let minute = event.occurred_at.format("%Y-%m-%dT%H:%MZ").to_string();
        let products = products_of(event);
        self.db
            .call(move |conn| {
                let new = conn
                    .prepare_cached(
                        "INSERT INTO seen (event_id, kind, counted_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(event_id) DO NOTHING",
                    )?
                    .execute(params![event_id, kind, now_ms()])?
                    == 1;
                if new {
                    conn.prepare_cached(
                        "INSERT INTO by_kind (kind, n) VALUES (?1, 1)
                         ON CONFLICT(kind) DO UPDATE SET n = n + 1",
                    )?
                    .execute([kind])?;
                    conn.prepare_cached(
                        "INSERT INTO by_minute (minute, kind, n) VALUES (?1, ?2, 1)
                         ON CONFLICT(minute, kind) DO UPDATE SET n = n + 1",
                    )?
                    .execute([&minute, kind])?;
                    let mut by_product = conn.prepare_cached(
                        "INSERT INTO by_product (sku, kind, n) VALUES (?1, ?2, 1)
                         ON CONFLICT(sku, kind) DO UPDATE SET n = n + 1",
                    )?;
                    for sku in &products {
                        by_product.execute([sku, kind])?;
                    }
                } else {
                    conn.prepare_cached(
                        "INSERT INTO duplicates (id, n) VALUES (0, 1)
                         ON CONFLICT(id) DO UPDATE SET n = n + 1",
                    )?
                    .execute([])?;
                }
                Ok(new)
            })
            .await
    }

    /// Every count, service-wide (all processes sharing the file).
    ///
    /// # Errors
    /// The database failed.
    pub async fn stats(&self) -> anyhow::Result<Stats> {
        self.db
            .call(|conn| {
                let mut s = Stats::default();
                for k in EventKind::ALL.iter() {
                    s.by_kind.insert(k.as_str().to_owned(), 0);
                }
                let mut q = conn.prepare("SELECT kind, n FROM by_kind")?;
                for row in q.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                    let (kind, count) = row?;
                    s.events_total += n(count);
                    s.by_kind.insert(kind, n(count));
                }
                let mut q = conn.prepare("SELECT sku, kind, n FROM by_product")?;
                for row in q.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })? {
                    let (sku, kind, count) = row?;
                    s.by_product.entry(sku).or_default().insert(kind, n(count));
                }
                let mut q = conn.prepare(
                    "SELECT minute, kind, n FROM by_minute WHERE minute IN
                     (SELECT DISTINCT minute FROM by_minute ORDER BY minute DESC LIMIT ?1)
                     ORDER BY minute, kind",
                )?;
                for row in q.query_map([MINUTES_SHOWN as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })? {
                    let (minute, kind, count) = row?;
                    if s.per_minute.last().is_none_or(|m| m.minute != minute) {
                        s.per_minute.push(Minute {
                            minute,
                            ..Minute::default()
                        });
                    }
                    let m = s.per_minute.last_mut().expect("pushed above");
                    m.events += n(count);
                    m.by_kind.insert(kind, n(count));
                }
                s.duplicates = n(conn.query_row(
                    "SELECT COALESCE(SUM(n), 0) FROM duplicates",
                    [],
                    |r| r.get(0),
                )?);
                let views = s.by_kind[EventKind::ProductViewed.as_str()];
                let placed = s.by_kind[EventKind::OrderPlaced.as_str()];
                let fulfilled = s.by_kind[EventKind::OrderFulfilled.as_str()];
                s.funnel = Funnel {
                    views,
                    orders_placed: placed,
                    orders_fulfilled: fulfilled,
                    view_to_order: (views > 0).then(|| placed as f64 / views as f64),
                    order_to_fulfillment: (placed > 0).then(|| fulfilled as f64 / placed as f64),
                };
                Ok(s)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_event_is_counted_once_and_the_funnel_follows() {
        let dir = tempfile::tempdir().unwrap();
        let store = AnalyticsStore::open(dir.path()).unwrap();
        let mut view = ActivityEvent::new(EventKind::ProductViewed, "cus_1");
        view.product_id = Some("SKU-1".into());
        let mut view2 = view.clone();
        view2.event_id = "evt_other".into();
        let mut placed = ActivityEvent::new(EventKind::OrderPlaced, "cus_1");
        placed.order_id = Some("ord_1".into());
        placed.data = serde_json::json!({"skus": ["SKU-2", "SKU-1"]});
        assert!(store.record(&view).await.unwrap());
        assert!(!store.record(&view).await.unwrap());
        assert!(store.record(&view2).await.unwrap());
        assert!(store.record(&placed).await.unwrap());
        let s = store.stats().await.unwrap();
        assert_eq!(s.events_total, 3);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.by_kind["product.viewed"], 2);
        assert_eq!(s.by_kind["user.registered"], 0);
        assert_eq!(s.by_product["SKU-1"]["order.placed"], 1);
        assert_eq!(s.by_product["SKU-2"]["order.placed"], 1);
        assert_eq!(s.funnel.view_to_order, Some(0.5));
        assert_eq!(s.funnel.order_to_fulfillment, Some(0.0));
        assert_eq!(s.per_minute.iter().map(|m| m.events).sum::<u64>(), 3);
        drop(store);
        let reopened = AnalyticsStore::open(dir.path()).unwrap();
        assert_eq!(reopened.stats().await.unwrap().events_total, 3);
    }
}
