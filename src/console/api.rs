//! The console's JSON endpoints, each a call into the library:
//!
//! - `GET /api/overview`: [`crate::status`]'s report, the workers, the dead-letter queues;
//! - `GET /api/dead-letters/{queue}?limit=N`: [`dlq::listing`];
//! - `GET /api/dead-letters/{queue}/messages/{id}`: [`dlq::letter`], headers and body;
//! - `POST /api/dead-letters/{queue}/replay` and `…/purge` with `{"ids": [..], "dry_run"}`:
//!   [`dlq::replay_queue`] and [`dlq::purge_queue`] over exactly those messages;
//! - `GET /api/topology` and `/api/topology.svg`: the topology with its drift.
//!
//! Only the dead-letter queues of the topology can be read, replayed or purged here.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::picture::{topology_svg, TopologyView};
use super::workers::{find_workers, probe_all, WorkerStatus};
use super::Console;
use crate::dlq::{self, DeadLetter, Selection};
use crate::orders::metrics::OutboxStatus;
use crate::status::{dead_letter_queues, StatusReport};
use crate::topology::verify;

/// Most dead letters one listing reads (each is held unacknowledged while it is read).
const MAX_LIST: usize = 1000;
/// Dead letters a listing reads unless `limit` says otherwise.
const DEFAULT_LIST: usize = 200;

pub(super) fn routes(console: Arc<Console>) -> Router {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/dead-letters/{queue}", get(list))
        .route("/api/dead-letters/{queue}/messages/{id}", get(show))
        .route("/api/dead-letters/{queue}/replay", post(replay))
        .route("/api/dead-letters/{queue}/purge", post(purge))
        .route("/api/topology", get(topology))
        .route("/api/topology.svg", get(svg))
        .with_state(console)
}

/// An error as JSON `{"error": …}`, passwords redacted.
struct ApiError(StatusCode, String);

impl ApiError {
    fn upstream(e: &anyhow::Error) -> Self {
        Self(
            StatusCode::BAD_GATEWAY,
            crate::settings::redact_url(&format!("{e:#}")),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// What the Overview tab shows.
#[derive(Debug, Serialize)]
struct Overview {
    at: DateTime<Utc>,
    /// Every queue of the topology: depth, rates, consumers; the drift.
    status: StatusReport,
    /// The workers found, with their health and counters.
    workers: Vec<WorkerStatus>,
    /// Why the workers could not be listed, if they could not.
    workers_error: Option<String>,
    /// The dead-letter queues of the topology.
    dead_letter_queues: Vec<String>,
    /// The order services' outbox, when one of them was found.
    outbox: Option<OutboxView>,
}

/// The outbox panel: the order services found and their outbox together.
#[derive(Debug, Serialize)]
struct OutboxView {
    /// Order-service processes found.
    services: usize,
    #[serde(flatten)]
    outbox: OutboxStatus,
}

async fn overview(State(c): State<Arc<Console>>) -> ApiResult<Overview> {
    let (status, workers) = tokio::join!(
        c.status.read(),
        find_workers(&c.management, &c.vhost, &c.settings.console.workers)
    );
    let status = status.map_err(|e| ApiError::upstream(&e))?;
    let (workers, workers_error) = match workers {
        Ok(endpoints) => (probe_all(&c.http, endpoints).await, None),
        Err(e) => (
            Vec::new(),
            Some(crate::settings::redact_url(&e.to_string())),
        ),
    };
    let services = workers.iter().filter(|w| w.outbox.is_some()).count();
    let outbox = OutboxStatus::combined(workers.iter().filter_map(|w| w.outbox))
        .map(|outbox| OutboxView { services, outbox });
    Ok(Json(Overview {
        at: Utc::now(),
        status,
        workers,
        workers_error,
        dead_letter_queues: dead_queues(&c),
        outbox,
    }))
}

fn dead_queues(c: &Console) -> Vec<String> {
    let mut queues: Vec<String> = dead_letter_queues(&c.topology).into_iter().collect();
    queues.sort();
    queues
}

/// `queue` when it is a dead-letter queue of the topology.
fn dead_queue(c: &Console, queue: &str) -> Result<(), ApiError> {
    if dead_queues(c).iter().any(|q| q == queue) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("'{queue}' is not a dead-letter queue of {}", c.source),
        ))
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

/// A dead letter as a row of the list.
#[derive(Debug, Serialize)]
struct Row {
    #[serde(flatten)]
    letter: DeadLetter,
    /// Seconds since it failed, when known.
    age_secs: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Listing {
    queue: String,
    letters: Vec<Row>,
    limit: usize,
}

async fn list(
    State(c): State<Arc<Console>>,
    Path(queue): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Listing> {
    dead_queue(&c, &queue)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIST).clamp(1, MAX_LIST);
    let _one_at_a_time = c.passes.lock().await;
    let listing = dlq::listing(&c.settings, &queue, limit)
        .await
        .map_err(|e| ApiError::upstream(&e))?;
    let now = Utc::now();
    Ok(Json(Listing {
        queue: listing.queue,
        letters: listing
            .letters
            .into_iter()
            .map(|letter| Row {
                age_secs: letter.age(now).map(|a| a.as_secs()),
                letter,
            })
            .collect(),
        limit,
    }))
}

/// One dead letter in full.
#[derive(Debug, Serialize)]
struct Letter {
    #[serde(flatten)]
    letter: DeadLetter,
    age_secs: Option<u64>,
    /// Every header as `[name, text]`.
    headers: Vec<(String, String)>,
    /// The body, pretty-printed when it is JSON.
    body: String,
}

async fn show(
    State(c): State<Arc<Console>>,
    Path((queue, id)): Path<(String, String)>,
) -> ApiResult<Letter> {
    dead_queue(&c, &queue)?;
    let _one_at_a_time = c.passes.lock().await;
    let letter = dlq::letter(&c.settings, &queue, &id)
        .await
        .map_err(|e| ApiError::upstream(&e))?
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no message with id '{id}' in '{queue}'"),
            )
        })?;
    Ok(Json(Letter {
        age_secs: letter.age(Utc::now()).map(|a| a.as_secs()),
        headers: letter.header_texts(),
        body: letter.body_text(),
        letter,
    }))
}

/// Which dead letters a replay or purge takes: exactly these ids.
#[derive(Debug, Deserialize)]
struct Picked {
    ids: Vec<String>,
    #[serde(default)]
    dry_run: bool,
}

impl Picked {
    fn selection(self) -> Result<Selection, ApiError> {
        let ids: BTreeSet<String> = self.ids.into_iter().collect();
        if ids.is_empty() {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "select at least one dead letter".into(),
            ));
        }
        Ok(Selection {
            filter: None,
            limit: Some(ids.len()),
            ids: Some(ids),
            dry_run: self.dry_run,
            rate: None,
        })
    }
}

/// Runs a pass to its end in a task of its own, so a browser that goes away mid-pass does not
/// cut it short (cut short it would still lose nothing, but might leave duplicates).
async fn pass<T: Send + 'static>(
    c: &Arc<Console>,
    run: impl FnOnce(Arc<Console>) -> futures::future::BoxFuture<'static, anyhow::Result<T>>
        + Send
        + 'static,
) -> Result<T, ApiError> {
    let c = c.clone();
    tokio::spawn(async move {
        let _one_at_a_time = c.passes.lock().await;
        run(c.clone()).await
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::upstream(&e))
}

async fn replay(
    State(c): State<Arc<Console>>,
    Path(queue): Path<String>,
    Json(picked): Json<Picked>,
) -> ApiResult<dlq::ReplayReport> {
    dead_queue(&c, &queue)?;
    let selection = picked.selection()?;
    let report = pass(&c, move |c| {
        Box::pin(async move { dlq::replay_queue(&c.settings, &queue, &selection, |_| {}).await })
    })
    .await?;
    Ok(Json(report))
}

async fn purge(
    State(c): State<Arc<Console>>,
    Path(queue): Path<String>,
    Json(picked): Json<Picked>,
) -> ApiResult<dlq::Counts> {
    dead_queue(&c, &queue)?;
    let selection = picked.selection()?;
    let counts = pass(&c, move |c| {
        Box::pin(async move { dlq::purge_queue(&c.settings, &queue, &selection, |_| {}).await })
    })
    .await?;
    Ok(Json(counts))
}

async fn topology_view(c: &Console) -> Result<TopologyView, ApiError> {
    let drift = verify::verify(&c.management, &c.vhost, &c.topology)
        .await
        .map_err(|e| ApiError::upstream(&e.into()))?;
    Ok(TopologyView::new(&c.topology, &drift, &c.source))
}

async fn topology(State(c): State<Arc<Console>>) -> ApiResult<TopologyView> {
    Ok(Json(topology_view(&c).await?))
}

async fn svg(State(c): State<Arc<Console>>) -> Result<Response, ApiError> {
    let view = topology_view(&c).await?;
    Ok((
        [(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")],
        topology_svg(&view),
    )
        .into_response())
}
