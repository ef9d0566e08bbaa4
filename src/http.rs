//! The HTTP endpoint every worker serves on `--http`: `/healthz` (alive), `/readyz` (broker and
//! store reachable), Prometheus `/metrics`, plus whatever routes the service adds (analytics
//! `/stats`, recommendations …).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::metrics::WorkerMetrics;

/// A `/metrics` answer: `text` in the OpenMetrics format prometheus-client writes.
pub fn openmetrics(text: String) -> impl axum::response::IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// How long one readiness check may take before it counts as failed: a probe must answer
/// well within a load balancer's or Kubernetes' default timeout.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

type Check = Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// What `/readyz` checks: named dependencies (`broker`, `store`) that must answer, and ones
/// that are only reported (the order service stays ready while its broker is down).
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check, bool)>,
}

/// The answer of `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReadinessReport {
    /// Whether every check passed.
    pub ready: bool,
    /// Each check's result: `ok`, or why it failed.
    pub checks: BTreeMap<&'static str, String>,
}

impl Readiness {
    /// Adds a check named `name`: ready when `check` returns `Ok` within a few seconds.
    #[must_use]
    pub fn check<F, Fut>(self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.with(name, check, true)
    }

    /// Adds a check whose result `/readyz` shows without depending on it.
    #[must_use]
    pub fn report_only<F, Fut>(self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.with(name, check, false)
    }

    /// Adds a check; `gates` says whether `/readyz` depends on it.
    fn with<F, Fut>(mut self, name: &'static str, check: F, gates: bool) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.checks.push((
            name,
            Arc::new(move || Box::pin(check()) as BoxFuture<_>),
            gates,
        ));
        self
    }

    /// The broker check: a live connection can be had from `pool`.
    #[must_use]
    pub fn broker(self, pool: crate::broker::Pool) -> Self {
        self.check("broker", move || {
            let pool = pool.clone();
            async move { pool.connection().await.map(|_| ()).map_err(Into::into) }
        })
    }

    /// Runs every check at once.
    pub async fn report(&self) -> ReadinessReport {
        let results =
            futures::future::join_all(self.checks.iter().map(|(name, check, required)| {
                let check = check();
                let required = *required;
                async move {
                    let result = match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(crate::settings::redact_url(&format!("{e:#}"))),
                        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
                    };
                    (*name, required, result)
                }
            }))
            .await;
        ReadinessReport {
            ready: results
                .iter()
                .all(|(_, required, r)| !required || r.is_ok()),
            checks: results
                .into_iter()
                .map(|(name, _, r)| (name, r.err().unwrap_or_else(|| "ok".to_owned())))
                .collect(),
        }
    }
}

/// The routes every worker has: `/healthz` answers while the process runs; `/readyz` answers
/// 200 when every check of `readiness` passes, else 503, with each check's result as JSON.
pub fn base_router(metrics: Arc<WorkerMetrics>, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    let report = readiness.report().await;
                    let status = if report.ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, Json(report))
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { crate::http::openmetrics(metrics.render()) }
            }),
        )
}

/// Binds `addr` (port 0 picks a free one), logs `http listening on ADDR`, and serves `router`
/// until `shutdown`.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP endpoint to {addr}"))?;
    let local = listener.local_addr()?;
    info!(addr = %local, "http listening on {local}");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(local)
}
