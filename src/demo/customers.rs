//! The demo's customers: they place orders through the order service's API (`POST /orders`
//! under an idempotency key), paced, several at once, as a shop's checkout would. A share of
//! them submit an invalid order (refused at the door with 422, never queued) and a share click
//! twice (the same key again, answered with the same order id). A request that fails (the
//! service is busy or unreachable) is retried with the same key, which is what the key is for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::orders::OrderRequest;
use crate::producer::{Generated, OrderGenerator};

/// How many requests are in flight at once.
const CUSTOMERS_AT_ONCE: usize = 8;
/// Attempts of one request (the first and the retries) before the order counts as failed.
const ATTEMPTS: u32 = 5;
/// Share of customers who click "buy" twice.
const DOUBLE_CLICK: f64 = 0.05;

/// What a batch of customers got from the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placed {
    /// The ids of the orders accepted (202), in no particular order.
    pub accepted: Vec<String>,
    /// Invalid orders refused (400/422).
    pub refused: u64,
    /// Second clicks answered with the first click's order id.
    pub repeats_same_id: u64,
    /// Second clicks answered with another id or an error (never expected).
    pub repeats_wrong: u64,
    /// Orders that got no answer after every attempt.
    pub failed: u64,
}

impl Placed {
    /// Adds `other`'s counts to these.
    pub fn absorb(&mut self, other: Self) {
        self.accepted.extend(other.accepted);
        self.refused += other.refused;
        self.repeats_same_id += other.repeats_same_id;
        self.repeats_wrong += other.repeats_wrong;
        self.failed += other.failed;
    }
}

/// Simulated customers of one order service.
pub struct Customers {
    client: reqwest::Client,
    orders_url: String,
    generator: Mutex<OrderGenerator>,
    /// Orders per second over all customers.
    rate: f64,
}

impl Customers {
    /// Customers of the API at `base` (`http://host:port`), placing `rate` orders per second,
    /// `invalid_ratio` of them invalid.
    pub fn new(base: &str, rate: f64, invalid_ratio: f64) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            orders_url: format!("{base}/orders"),
            generator: Mutex::new(OrderGenerator::new(invalid_ratio)),
            rate: rate.max(1.0),
        }
    }

    /// Places `count` orders, paced at the customers' rate, and returns what the API answered.
    pub async fn place(self: &Arc<Self>, count: u64) -> Placed {
        let started = Instant::now();
        let gate = Arc::new(tokio::sync::Semaphore::new(CUSTOMERS_AT_ONCE));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..count {
            let due = started + Duration::from_secs_f64(i as f64 / self.rate);
            tokio::time::sleep_until(due.into()).await;
            let Ok(permit) = gate.clone().acquire_owned().await else {
                break;
            };
            let me = self.clone();
            tasks.spawn(async move {
                let placed = me.one().await;
                drop(permit);
                placed
            });
        }
        let mut placed = Placed::default();
        while let Some(done) = tasks.join_next().await {
            if let Ok(one) = done {
                placed.absorb(one);
            }
        }
        placed
    }

    /// One customer's checkout.
    async fn one(&self) -> Placed {
        let (body, twice) = {
            let mut generator = self.generator.lock().await;
            let body = match generator.next_order() {
                Generated::Valid(order) => serde_json::to_vec(&OrderRequest {
                    customer_id: order.customer_id,
                    email: order.email,
                    items: order.items,
                    currency: order.currency,
                }),
                Generated::Invalid(_, mut raw) => {
                    if let Some(fields) = raw.as_object_mut() {
                        fields.remove("order_id");
                        fields.remove("placed_at");
                    }
                    serde_json::to_vec(&raw)
                }
            }
            .unwrap_or_default();
            (body, rand::random_bool(DOUBLE_CLICK))
        };
        let key = crate::message::new_id("chk");
        let mut placed = Placed::default();
        match self.post(&key, &body).await {
            Answer::Accepted(order_id) => {
                if twice {
                    match self.post(&key, &body).await {
                        Answer::Accepted(again) | Answer::Repeated(again) if again == order_id => {
                            placed.repeats_same_id += 1;
                        }
                        _ => placed.repeats_wrong += 1,
                    }
                }
                placed.accepted.push(order_id);
            }
            // A retry of a request whose first answer was lost: the order is in.
            Answer::Repeated(order_id) => placed.accepted.push(order_id),
            Answer::Refused => placed.refused += 1,
            Answer::Failed => placed.failed += 1,
        }
        placed
    }

    /// `POST /orders`, retried with the same key while the service does not answer.
    async fn post(&self, key: &str, body: &[u8]) -> Answer {
        let mut pause = Duration::from_millis(100);
        for _ in 0..ATTEMPTS {
            let response = self
                .client
                .post(&self.orders_url)
                .header(crate::orders::api::IDEMPOTENCY_KEY, key)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec())
                .send()
                .await;
            if let Ok(r) = response {
                let status = r.status();
                if status.is_client_error() {
                    return Answer::Refused;
                }
                if status.is_success() {
                    return match r.json::<View>().await {
                        Ok(View { order_id }) if status == reqwest::StatusCode::ACCEPTED => {
                            Answer::Accepted(order_id)
                        }
                        Ok(View { order_id }) => Answer::Repeated(order_id),
                        Err(_) => Answer::Failed,
                    };
                }
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        Answer::Failed
    }
}

#[derive(serde::Deserialize)]
struct View {
    order_id: String,
}

enum Answer {
    /// 202: a new order, its id.
    Accepted(String),
    /// 200: the order stored under this key before, its id.
    Repeated(String),
    /// 4xx: the order is invalid.
    Refused,
    /// No answer after every attempt.
    Failed,
}
