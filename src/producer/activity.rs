//! The activity publishers: one event (`producer activity --kind …`), a realistic generated mix
//! (`producer activity --count N`), and the inventory service (`producer inventory`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{event_message, publish_confirmed, PublishProgress, CATALOGUE};
use crate::broker;
use crate::message::{new_id, ActivityEvent, EventKind};
use crate::publisher::{self, BulkPublisher, Confirm};
use crate::settings::Settings;

const FIRST_NAMES: [&str; 8] = ["ann", "bob", "chen", "dara", "eli", "fatima", "gus", "hana"];

/// Generates a realistic mix of activity: customers register on their first visit, view
/// products (popular ones far more often, with a long tail), sometimes review what they viewed,
/// and some views lead to an order (`order.placed` with the viewed SKU, `data.email` and total).
pub struct ActivityGenerator {
    rng: StdRng,
    customers: u32,
    registered: HashSet<u32>,
    last_viewed: std::collections::HashMap<u32, &'static str>,
    /// Whether a view may lead to an `order.placed` of the mix's own.
    orders: bool,
}

impl Default for ActivityGenerator {
    fn default() -> Self {
        Self::new(300)
    }
}

impl ActivityGenerator {
    /// A generator over `customers` customers.
    pub fn new(customers: u32) -> Self {
        Self {
            rng: StdRng::from_os_rng(),
            customers: customers.max(1),
            registered: HashSet::new(),
            last_viewed: std::collections::HashMap::new(),
            orders: true,
        }
    }

    /// No `order.placed` in the mix: the orders come from elsewhere (the order service), and
    /// the funnel counts only theirs.
    #[must_use]
    pub fn without_orders(mut self) -> Self {
        self.orders = false;
        self
    }

    fn email(customer: u32) -> (String, String) {
        let name = FIRST_NAMES[customer as usize % FIRST_NAMES.len()];
        (name.to_owned(), format!("{name}.{customer}@example.com"))
    }

    /// A skewed pick over the catalogue: the first SKUs are popular, the rest a long tail.
    fn product(&mut self) -> (&'static str, i64) {
        let r: f64 = self.rng.random();
        let idx = ((r * r * r) * CATALOGUE.len() as f64) as usize;
        CATALOGUE[idx.min(CATALOGUE.len() - 1)]
    }

    /// The next event.
    pub fn next_event(&mut self) -> ActivityEvent {
        let customer = self.rng.random_range(1..=self.customers);
        let user = format!("cus_{customer}");
        let (name, email) = Self::email(customer);
        if self.registered.insert(customer) {
            let mut e = ActivityEvent::new(EventKind::UserRegistered, user);
            e.data = serde_json::json!({"email": email, "name": name});
            return e;
        }
        let roll = self.rng.random_range(0..100);
        match (roll, self.last_viewed.get(&customer).copied()) {
            (0..=9, Some(sku)) if self.orders => {
                // A view that leads to an order.
                let price = CATALOGUE
                    .iter()
                    .find(|(s, _)| *s == sku)
                    .map_or(0, |(_, p)| *p);
                let quantity = if self.rng.random_bool(0.8) { 1 } else { 2 };
                let mut e = ActivityEvent::new(EventKind::OrderPlaced, user);
                e.order_id = Some(new_id("ord"));
                e.product_id = Some(sku.to_owned());
                e.data = serde_json::json!({
                    "email": email,
                    "skus": [sku],
                    "total_cents": price * quantity,
                    "currency": "EUR",
                });
                self.last_viewed.remove(&customer);
                e
            }
            (10..=14, Some(sku)) => {
                let mut e = ActivityEvent::new(EventKind::ReviewPosted, user);
                e.product_id = Some(sku.to_owned());
                e.data = serde_json::json!({"rating": self.rng.random_range(1..=5)});
                e
            }
            _ => {
                let (sku, _) = self.product();
                let mut e = ActivityEvent::new(EventKind::ProductViewed, user);
                e.product_id = Some(sku.to_owned());
                self.last_viewed.insert(customer, sku);
                e
            }
        }
    }
}

/// What `producer activity --kind …` publishes.
#[derive(Debug, Clone, Default)]
pub struct EventSpec {
    /// The kind (use [`EventKind::parse`] for a clear error).
    pub kind: Option<EventKind>,
    /// `user_id`.
    pub user: String,
    /// `product_id`.
    pub product: Option<String>,
    /// `order_id`.
    pub order: Option<String>,
    /// `data.email`.
    pub email: Option<String>,
    /// `data.name` (registrations).
    pub name: Option<String>,
    /// The `event_id` (default: a fresh `evt_<ULID>`); a repeated id is a duplicate publish.
    pub event_id: Option<String>,
}

impl EventSpec {
    /// The event, validated.
    ///
    /// # Errors
    /// The kind is missing or a rule of docs/CONTRACT.md is broken.
    pub fn event(&self) -> Result<ActivityEvent, String> {
        let kind = self.kind.ok_or("--kind is required")?;
        let mut e = ActivityEvent::new(kind, &self.user);
        if let Some(id) = &self.event_id {
            e.event_id.clone_from(id);
        }
        e.product_id.clone_from(&self.product);
        e.order_id.clone_from(&self.order);
        let mut data = serde_json::Map::new();
        if let Some(email) = &self.email {
            data.insert("email".into(), email.clone().into());
        }
        if let Some(name) = &self.name {
            data.insert("name".into(), name.clone().into());
        }
        e.data = data.into();
        if kind == EventKind::InventoryChanged {
            return Err("use `producer inventory --sku S --stock N` for inventory.changed".into());
        }
        e.validate().map_err(|e| e.to_string())?;
        Ok(e)
    }
}

/// Publishes `event` confirmed and mandatory.
///
/// # Errors
/// The broker is unreachable, or it did not confirm the event (a
/// [`PublishError`](super::PublishError)).
pub async fn publish_event(settings: &Settings, event: &ActivityEvent) -> anyhow::Result<()> {
    let conn = broker::connect(&settings.amqp, "producer").await?;
    let channel = publisher::confirm_channel(&conn)
        .await
        .context("opening a confirm channel")?;
    let timeout = Duration::from_millis(settings.producer.confirm_timeout_ms);
    let msg = event_message(
        event,
        Some(&crate::trace::new_traceparent(
            event.kind.as_str(),
            &event.event_id,
        )),
    );
    let destination = format!("'{}'", msg.exchange);
    let result = publish_confirmed(
        &channel,
        &msg,
        timeout,
        "event",
        &event.event_id,
        destination,
    )
    .await;
    crate::broker::close(&conn, "done").await;
    Ok(result?)
}

/// Counts of one bulk publish of generated events.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ActivityTally {
    /// Events planned.
    pub count: u64,
    /// Events confirmed.
    pub confirmed: u64,
    /// Events nacked.
    pub nacked: u64,
    /// Events returned unroutable.
    pub returned: u64,
    /// Messages re-sent after a lost connection.
    pub resent: u64,
    /// Seconds the publish took.
    pub seconds: f64,
}

/// Publishes `count` generated events through a window of pipelined confirms, telling
/// `progress` as events are confirmed, and returns the tally.
///
/// # Errors
/// The broker is unreachable.
pub async fn publish_activity(
    settings: &Settings,
    count: u64,
    rate: Option<f64>,
    orders: bool,
    progress: &dyn PublishProgress,
) -> anyhow::Result<ActivityTally> {
    let pool = broker::pool(&settings.amqp, "producer")?;
    super::require_exchanges(&pool, &[super::ACTIVITY_EXCHANGE]).await?;
    progress.start(Some(count));
    let mut generator = ActivityGenerator::default();
    if !orders {
        generator = generator.without_orders();
    }
    let messages = (0..count).map(move |_| event_message(&generator.next_event(), None));
    let started = Instant::now();
    let mut tally = ActivityTally {
        count,
        ..ActivityTally::default()
    };
    let report = BulkPublisher::new(pool, settings.producer.confirm_window, rate)
        .run(messages, |_, fate| match fate {
            Confirm::Confirmed => {
                tally.confirmed += 1;
                progress.confirmed();
            }
            Confirm::Nacked => tally.nacked += 1,
            Confirm::Returned(_) => tally.returned += 1,
        })
        .await?;
    tally.resent = report.resent;
    tally.seconds = started.elapsed().as_secs_f64();
    Ok(tally)
}

/// The `inventory.changed` event of `sku` now at `stock`, `delta` units up or down from before.
///
/// For a restock (`producer inventory`), `delta` is what the caller says (`--delta`) and 0
/// ("not known") otherwise; `worker inventory` announces its levels with the change since its
/// previous announcement. Consumers rely on `stock` only.
pub fn inventory_event(sku: &str, stock: i64, delta: i64) -> ActivityEvent {
    let mut e = ActivityEvent::new(EventKind::InventoryChanged, "inventory");
    e.product_id = Some(sku.to_owned());
    e.data = serde_json::json!({"stock": stock, "delta": delta});
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_events_are_valid_and_mixed() {
        let mut g = ActivityGenerator::new(50);
        let mut kinds = std::collections::BTreeMap::new();
        for _ in 0..3000 {
            let e = g.next_event();
            e.validate().unwrap();
            if matches!(e.kind, EventKind::UserRegistered | EventKind::OrderPlaced) {
                assert!(e.email().is_some(), "{e:?}");
            }
            *kinds.entry(e.kind).or_insert(0) += 1;
        }
        assert_eq!(kinds[&EventKind::UserRegistered], 50);
        assert!(kinds[&EventKind::ProductViewed] > 1500, "{kinds:?}");
        assert!(kinds[&EventKind::OrderPlaced] > 50, "{kinds:?}");
        assert!(kinds[&EventKind::ReviewPosted] > 20, "{kinds:?}");
    }

    #[test]
    fn a_mix_without_orders_has_none() {
        let mut g = ActivityGenerator::new(50).without_orders();
        let orders = (0..3000)
            .filter(|_| g.next_event().kind == EventKind::OrderPlaced)
            .count();
        assert_eq!(orders, 0);
    }

    #[test]
    fn one_event_is_validated() {
        let spec = EventSpec {
            kind: Some(EventKind::ProductViewed),
            user: "cus_1".into(),
            ..EventSpec::default()
        };
        assert!(spec.event().unwrap_err().contains("product_id"));
        let spec = EventSpec {
            product: Some("SKU-1".into()),
            event_id: Some("evt_x".into()),
            ..spec
        };
        assert_eq!(spec.event().unwrap().event_id, "evt_x");
        let e = inventory_event("SKU-1", 0, -4);
        e.validate().unwrap();
    }
}
