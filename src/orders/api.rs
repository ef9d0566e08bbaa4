//! The HTTP API of the order service: `POST /orders` (an order under an `Idempotency-Key`,
//! answered once it and its outbox rows are committed) and `GET /orders/{order_id}` (its
//! status). Every refusal is JSON with an `error`; an invalid order also names the `field`
//! and the `rule`, as the producer reports them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tracing::Instrument;

use super::metrics::OrderMetrics;
use super::outbox::OutboxMessage;
use super::status::OrderStatus;
use super::store::{Acceptance, NewOrder, OrderStore};
use crate::message::{new_id, InvalidMessage, Order, OrderItem};

/// The header that makes `POST /orders` safe to retry.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The largest request body accepted (64 KiB); a larger one is answered `413`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest idempotency key accepted.
const MAX_KEY_BYTES: usize = 255;

/// An order as a customer submits it: the service assigns `order_id` and `placed_at`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderRequest {
    /// The customer.
    pub customer_id: String,
    /// Where confirmations go.
    pub email: String,
    /// The lines.
    pub items: Vec<OrderItem>,
    /// Three upper-case letters.
    pub currency: String,
}

/// The answer about one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderView {
    pub order_id: String,
    pub status: OrderStatus,
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No usable `Idempotency-Key` header (400).
    #[error("{0}")]
    MissingKey(String),
    /// The body is not the JSON of an order (400); serde's message says where.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// The order breaks a rule (422).
    #[error("invalid field `{field}`: {rule}")]
    Invalid {
        /// The field, e.g. `items[0].quantity`.
        field: String,
        /// The rule it breaks.
        rule: String,
    },
    /// The key was used with another body (422).
    #[error("the Idempotency-Key was used for order {order_id} with another body")]
    KeyReused {
        /// The order stored under the key.
        order_id: String,
    },
    /// No such order (404).
    #[error("no order {0}")]
    NotFound(String),
    /// The store failed (503); a retry with the same key is safe.
    #[error("the order store failed: {0}")]
    Store(String),
}

impl ApiError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingKey(_) | Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::Invalid { .. } | Self::KeyReused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = serde_json::json!({ "error": self.to_string() });
        match &self {
            Self::Invalid { field, rule } => {
                body["field"] = field.clone().into();
                body["rule"] = rule.clone().into();
            }
            Self::KeyReused { order_id } => body["order_id"] = order_id.clone().into(),
            _ => {}
        }
        (status, Json(body)).into_response()
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    store: Arc<OrderStore>,
    metrics: OrderMetrics,
    relay: Arc<Notify>,
    events: bool,
}

impl Api {
    /// The API over `store`; `relay` is woken for each new order; with `events` each order
    /// also gets its `order.placed` activity event.
    pub fn new(
        store: Arc<OrderStore>,
        metrics: OrderMetrics,
        relay: Arc<Notify>,
        events: bool,
    ) -> Self {
        Self {
            store,
            metrics,
            relay,
            events,
        }
    }

    /// `POST /orders` and `GET /orders/{order_id}`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/orders", post(place))
            .route("/orders/{order_id}", get(show))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self)
    }

    /// Stores the order of `body` under `key` with its outbox rows, in one transaction.
    ///
    /// # Errors
    /// As [`ApiError`].
    pub async fn place(&self, key: &str, body: &[u8]) -> Result<(bool, OrderView), ApiError> {
        let request: OrderRequest =
            serde_json::from_slice(body).map_err(|e| ApiError::Malformed(e.to_string()))?;
        let order = Order {
            order_id: new_id("ord"),
            customer_id: request.customer_id,
            email: request.email,
            items: request.items,
            currency: request.currency,
            placed_at: chrono::Utc::now(),
        };
        order.validate().map_err(|e| match e {
            InvalidMessage::Rule { field, rule } => ApiError::Invalid { field, rule },
            InvalidMessage::Malformed(m) => ApiError::Malformed(m),
        })?;
        let messages = crate::producer::order_messages(&order, self.events)
            .into_iter()
            .map(|m| OutboxMessage::from_outgoing(&order.order_id, m))
            .collect();
        let accepted = self
            .store
            .accept(NewOrder {
                key: key.to_owned(),
                request_hash: format!("{:x}", Sha256::digest(body)),
                order_id: order.order_id.clone(),
                messages,
            })
            .await
            .map_err(|e| ApiError::Store(format!("{e:#}")))?;
        match accepted {
            Acceptance::New => {
                self.metrics.accepted.inc();
                self.relay.notify_one();
                Ok((
                    true,
                    OrderView {
                        order_id: order.order_id,
                        status: OrderStatus::Accepted,
                    },
                ))
            }
            Acceptance::Existing { order_id, status } => {
                Ok((false, OrderView { order_id, status }))
            }
            Acceptance::KeyConflict { order_id } => Err(ApiError::KeyReused { order_id }),
        }
    }
}

async fn place(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<OrderView>), ApiError> {
    // The order's trace starts here (or in the caller's, given a `traceparent`): the outbox
    // rows keep this span's context, and the relay's publishes continue it.
    let span = crate::trace::request_span("POST", "/orders", &headers);
    let key = idempotency_key(&headers)?;
    let placed = api.place(key, &body).instrument(span.clone()).await;
    let (new, view) = match placed {
        Ok(placed) => placed,
        Err(e) => {
            span.record("http.response.status_code", e.status().as_u16());
            return Err(e);
        }
    };
    let status = if new {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    span.record("order_id", view.order_id.as_str());
    span.record("http.response.status_code", status.as_u16());
    Ok((status, Json(view)))
}

async fn show(
    State(api): State<Api>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<OrderView>, ApiError> {
    let span = crate::trace::request_span("GET", "/orders/{order_id}", &headers);
    span.record("order_id", order_id.as_str());
    let found = api.store.status(&order_id).instrument(span.clone()).await;
    let shown = match found {
        Ok(Some(status)) => Ok(Json(OrderView { order_id, status })),
        Ok(None) => Err(ApiError::NotFound(order_id)),
        Err(e) => Err(ApiError::Store(format!("{e:#}"))),
    };
    let status = shown
        .as_ref()
        .map_or_else(ApiError::status, |_| StatusCode::OK);
    span.record("http.response.status_code", status.as_u16());
    shown
}

/// The `Idempotency-Key` header: present, printable, at most 255 bytes.
fn idempotency_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(IDEMPOTENCY_KEY)
        .ok_or_else(|| ApiError::MissingKey("the Idempotency-Key header is required".into()))?;
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_BYTES)
        .ok_or_else(|| {
            ApiError::MissingKey(format!(
                "the Idempotency-Key header must be 1 to {MAX_KEY_BYTES} printable characters"
            ))
        })?;
    Ok(key)
}
