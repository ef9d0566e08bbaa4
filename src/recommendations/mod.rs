//! The recommendations service: reads the **stream** `activity.log` (not a queue) so that a new
//! instance can rebuild its model from the whole history, then follows live events.
//!
//! It consumes with `x-stream-offset`: `first` for a fresh model, a timestamp for `--since`, and
//! the stored offset + 1 when its model (see [`model`]) already holds events. The offset is
//! chosen again from the store before every session ([`Handler::consume_arguments`]), so a
//! restart and a reconnect both resume right after the last message applied: nothing is read
//! twice and nothing skipped. Each message's `x-stream-offset` header is stored with the model
//! change in one transaction; an offset at or below the stored one is still skipped, as a guard.
//!
//! The runtime settles the stream as a stream (`WorkerConfig::stream`): never `basic.nack` or
//! `basic.reject`, which close a stream consumer's channel before RabbitMQ 3.13. A model store
//! failure is retried here, with back-off, rather than handed to the runtime: the model applies
//! the stream in order and may not step over a message.
//!
//! Stream consumers do not compete: every instance gets every message, so each replica holds the
//! full model, and scaling out means more replicas answering HTTP, not shared work. Handlers run
//! one at a time so the model applies events in stream order; each queues its change and returns
//! before the commit, so consecutive messages commit together (see [`Recommendations`]).
//!
//! A stream has no dead-letter exchange: an invalid event is logged and skipped (counted in
//! `GET /state` as `skipped`); it was already dead-lettered with its reason by the queue-based
//! services (`activity.analytics`, `activity.notifications`), so copying it again on every
//! replay would only add duplicates to `activity.dead`.

pub mod model;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use lapin::types::{AMQPValue, FieldTable};
use serde::Deserialize;
use tracing::{error, info, warn};

pub use model::{Applied, Model, ModelState, Scored};

use crate::backoff::Backoff;
use crate::message::{ActivityEvent, HEADER_STREAM_OFFSET};
use crate::worker::{Handler, Incoming, Outcome, SettlePolicy};

/// The stream the service reads.
pub const STREAM: &str = "activity.log";
/// Where a stream message that cannot be settled otherwise goes (a store failure).
pub const DEAD_LETTER_EXCHANGE: &str = "activity.dlx";
/// Products per answer unless `?limit=` says otherwise.
pub const DEFAULT_LIMIT: usize = 10;

/// Where to start reading the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest message kept.
    First,
    /// The first message stored at or after this time (`--since`).
    Since(DateTime<Utc>),
    /// Right after the offset the stored model ends at.
    After(i64),
}

impl StartAt {
    /// Where a model in `state` resumes: after its offset, else `since`, else `first`.
    pub fn resume(state: &ModelState, since: Option<DateTime<Utc>>) -> Self {
        match (state.offset, since) {
            (Some(offset), _) => Self::After(offset),
            (None, Some(t)) => Self::Since(t),
            (None, None) => Self::First,
        }
    }

    /// The `basic.consume` arguments.
    pub fn consume_arguments(self) -> FieldTable {
        let value = match self {
            Self::First => AMQPValue::LongString("first".as_bytes().to_vec().into()),
            Self::Since(t) => AMQPValue::Timestamp(u64::try_from(t.timestamp()).unwrap_or(0)),
            Self::After(offset) => AMQPValue::LongLongInt(offset.saturating_add(1)),
        };
        let mut args = FieldTable::default();
        args.insert(HEADER_STREAM_OFFSET.into(), value);
        args
    }
}

/// The settlement policy of the stream: no retry ladder; what cannot be applied because the
/// store failed goes to `activity.dlx` with the reason.
pub fn settle_policy() -> SettlePolicy {
    SettlePolicy {
        queue: STREAM.to_owned(),
        retry_queues: Vec::new(),
        dead_letter_exchange: DEAD_LETTER_EXCHANGE.to_owned(),
    }
}

/// The offset of a stream delivery.
pub fn stream_offset(msg: &Incoming) -> Option<i64> {
    match msg.headers()?.inner().get(HEADER_STREAM_OFFSET)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some((*v).into()),
        AMQPValue::LongUInt(v) => Some((*v).into()),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

/// The recommendations handler.
///
/// Messages are handled one at a time, in stream order, but not one commit each: the handler
/// queues a message's change for the model ([`Model::queue_apply`]) and returns without
/// waiting for the commit, so the model's database thread commits whatever is queued in one
/// transaction (group commit). On a stream an ack only returns credit: what is acked but not
/// yet committed when the process dies is read again from the stored offset at the next
/// start. The answers are collected before the next message is queued; a failed one (and every
/// one after it, which the model refuses so as not to step over it) is queued again, with
/// back-off, before anything new. At most [`MAX_QUEUED`] are in the air.
#[derive(Clone)]
pub struct Recommendations {
    model: Arc<Model>,
    since: Option<DateTime<Utc>>,
    queued: Arc<tokio::sync::Mutex<Queued>>,
}

impl std::fmt::Debug for Recommendations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recommendations")
            .field("since", &self.since)
            .finish_non_exhaustive()
    }
}

/// Messages queued for the model and not yet answered, at most this many.
pub const MAX_QUEUED: usize = 512;

type Answer = Pin<Box<dyn Future<Output = anyhow::Result<Option<Applied>>> + Send>>;

/// One message queued for the model, with what it takes to queue it again.
struct Entry {
    offset: i64,
    event: Arc<Result<ActivityEvent, String>>,
    answer: Answer,
}

/// The messages in the air, in stream order.
#[derive(Default)]
struct Queued {
    entries: VecDeque<Entry>,
    /// The offset of the message queued last in this session.
    last: Option<i64>,
}

impl Recommendations {
    /// Feeds `model`; while the model holds no offset yet, reads from `since` (else `first`).
    pub fn new(model: Arc<Model>, since: Option<DateTime<Utc>>) -> Self {
        Self {
            model,
            since,
            queued: Arc::default(),
        }
    }

    /// Collects the answers that came: applied ones leave the queue; a failure is queued
    /// again with everything after it (see [`Self::requeue`]).
    async fn collect(&self, queued: &mut Queued) {
        while let Some(front) = queued.entries.front_mut() {
            let Some(answer) = (&mut front.answer).now_or_never() else {
                return;
            };
            match answer {
                Ok(Some(applied)) => {
                    if applied == Applied::AlreadyApplied {
                        info!(
                            offset = front.offset,
                            "skipping an offset already in the model"
                        );
                    }
                    queued.entries.pop_front();
                }
                Ok(None) => return self.requeue(queued, None).await,
                Err(e) => return self.requeue(queued, Some(e)).await,
            }
        }
    }

    /// After a failure at the front: waits until everything queued after it is answered (the
    /// model refuses what follows a failure), then queues it all again, in order, with
    /// back-off, until every message is applied. The model store is a local file: a failure (a
    /// full disk, a lock held too long) is waited out, since the model may not skip a message.
    /// On shutdown the runtime gives up after its grace period; the rest is read again from the
    /// stored offset by the next start.
    async fn requeue(&self, queued: &mut Queued, mut error: Option<anyhow::Error>) {
        let mut backoff = Backoff::default();
        loop {
            for entry in queued.entries.iter_mut().skip(1) {
                if let (None, Err(e)) = (&error, (&mut entry.answer).await) {
                    error = Some(e);
                }
            }
            let delay = backoff.next_delay();
            let offset = queued.entries.front().map(|e| e.offset);
            let reason = error.take().map_or_else(
                || "an earlier message was not applied".to_owned(),
                |e| format!("{e:#}"),
            );
            error!(offset, error = %reason, ?delay, "recommendations model failed; trying again");
            tokio::time::sleep(delay).await;
            let mut after = None;
            for entry in &mut queued.entries {
                entry.answer = Box::pin(self.model.queue_apply(
                    entry.offset,
                    after,
                    entry.event.clone(),
                ));
                after = Some(entry.offset);
            }
            loop {
                let Some(front) = queued.entries.front_mut() else {
                    return;
                };
                match (&mut front.answer).await {
                    Ok(Some(_)) => {
                        queued.entries.pop_front();
                    }
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
        }
    }

    /// Waits for the answer of every queued message and forgets them; what failed is logged
    /// and read again from the stream, after the stored offset, by the next session or start.
    /// Called before a session reads where to start, and once the worker stopped (so that a
    /// clean stop leaves nothing to read again).
    pub async fn flush(&self) {
        let mut queued = self.queued.lock().await;
        queued.last = None;
        let mut failed = None;
        for entry in queued.entries.drain(..) {
            match entry.answer.await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    failed.get_or_insert((
                        entry.offset,
                        "an earlier message was not applied".to_owned(),
                    ));
                }
                Err(e) => {
                    failed.get_or_insert((entry.offset, format!("{e:#}")));
                }
            }
        }
        if let Some((offset, reason)) = failed {
            error!(offset, error = %reason, "recommendations model failed; the stream is read again from the stored offset");
        }
    }
}

impl Recommendations {
    /// Where the next session starts: right after the offset stored in the model.
    ///
    /// # Errors
    /// The model cannot be read.
    pub async fn start(&self) -> anyhow::Result<StartAt> {
        Ok(StartAt::resume(&self.model.state().await?, self.since))
    }

    /// `GET /recommendations/{user_id}`, `GET /products/{sku}/related` (both `?limit=N`) and
    /// `GET /state`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/recommendations/{user_id}", get(for_user))
            .route("/products/{sku}/related", get(related))
            .route("/state", get(state))
            .with_state(self.model.clone())
    }
}

#[derive(Debug, Deserialize)]
struct Limit {
    limit: Option<usize>,
}

fn unavailable(e: &anyhow::Error) -> Response {
    error!(error = %format!("{e:#}"), "reading the recommendations model");
    (StatusCode::SERVICE_UNAVAILABLE, "model unavailable\n").into_response()
}

async fn for_user(
    State(model): State<Arc<Model>>,
    Path(user_id): Path<String>,
    Query(q): Query<Limit>,
) -> Response {
    match model
        .for_user(&user_id, q.limit.unwrap_or(DEFAULT_LIMIT))
        .await
    {
        Ok(recs) => {
            Json(serde_json::json!({"user_id": user_id, "recommendations": recs})).into_response()
        }
        Err(e) => unavailable(&e),
    }
}

async fn related(
    State(model): State<Arc<Model>>,
    Path(sku): Path<String>,
    Query(q): Query<Limit>,
) -> Response {
    match model.related(&sku, q.limit.unwrap_or(DEFAULT_LIMIT)).await {
        Ok(recs) => Json(serde_json::json!({"sku": sku, "related": recs})).into_response(),
        Err(e) => unavailable(&e),
    }
}

async fn state(State(model): State<Arc<Model>>) -> Response {
    match model.state().await {
        Ok(s) => Json(s).into_response(),
        Err(e) => unavailable(&e),
    }
}

impl Handler for Recommendations {
    async fn handle(&self, msg: &Incoming) -> Outcome {
        let Some(offset) = stream_offset(msg) else {
            return Outcome::Permanent(format!(
                "no {HEADER_STREAM_OFFSET} header: not a delivery from the stream {STREAM}"
            ));
        };
        let event = ActivityEvent::decode(&msg.body).map_err(|e| e.to_string());
        if let Err(reason) = &event {
            warn!(offset, message_id = msg.message_id().unwrap_or("-"), %reason, "invalid event in the stream; skipped");
        }
        let mut queued = self.queued.lock().await;
        // Earlier answers first: a failure is applied again before anything new.
        self.collect(&mut queued).await;
        if queued.entries.len() >= MAX_QUEUED {
            // Wait for the oldest one's batch.
            if let Some(front) = queued.entries.front_mut() {
                let answer = (&mut front.answer).await;
                front.answer = Box::pin(std::future::ready(answer));
            }
            self.collect(&mut queued).await;
        }
        let event = Arc::new(event);
        let answer = self.model.queue_apply(offset, queued.last, event.clone());
        queued.last = Some(offset);
        queued.entries.push_back(Entry {
            offset,
            event,
            answer: Box::pin(answer),
        });
        Outcome::Success
    }

    async fn consume_arguments(&self) -> anyhow::Result<Option<FieldTable>> {
        // What an earlier session queued is committed (or failed, and is read again) before
        // the stored offset is read; the new session's first message follows that offset.
        self.flush().await;
        let start = self.start().await?;
        info!(?start, "reading the stream");
        Ok(Some(start.consume_arguments()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_offsets() {
        let mut state = ModelState::default();
        assert_eq!(StartAt::resume(&state, None), StartAt::First);
        let t = Utc::now();
        assert_eq!(StartAt::resume(&state, Some(t)), StartAt::Since(t));
        state.offset = Some(41);
        assert_eq!(StartAt::resume(&state, Some(t)), StartAt::After(41));
        let args = StartAt::After(41).consume_arguments();
        assert_eq!(
            args.inner().get(HEADER_STREAM_OFFSET),
            Some(&AMQPValue::LongLongInt(42))
        );
    }
}
