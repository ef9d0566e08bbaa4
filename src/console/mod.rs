//! `burrow console`: a web console for what the RabbitMQ management UI does not show, as Flower
//! is for Celery: the shop's queues with their depth, rates and consumers, the workers and
//! their `/healthz`, live charts of throughput and handler latency, the dead letters (list,
//! one in full, replay and purge of a selection), and the topology as a picture with its drift.
//!
//! It is a view over the library: the overview is [`crate::status`]'s report, dead letters are
//! read, replayed and purged by [`crate::dlq`] (the same functions as `burrow dlq`, with the same
//! guarantee: a replay publishes and is confirmed before the dead copy is acked), and drift is
//! [`crate::topology::verify`]'s. Nothing here prints; [`crate::cli::console`] does.
//!
//! Files: `api.rs` (the JSON endpoints), `pages.rs` (the page and its embedded assets),
//! `security.rs` (the request token, same-origin checks, basic auth), `workers.rs` (finding
//! workers and probing their `/healthz` and `/metrics`), `picture.rs` (the topology as SVG).

mod api;
mod pages;
mod picture;
mod security;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::management::Management;
use crate::settings::Settings;
use crate::status::StatusProbe;
use crate::topology::Topology;

pub use picture::topology_svg;
pub use security::TOKEN_HEADER;
pub use workers::{find_workers, WorkerStatus};

/// Where the console listens unless `--http` says otherwise: loopback, next to the management
/// UI's 15672.
pub const DEFAULT_ADDR: &str = "127.0.0.1:15680";

/// Why the console refused to start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// A non-loopback address without a password.
    #[error(
        "refusing to serve the console on {addr} without a password: anyone who can reach it \
         could replay and purge dead letters. Set BURROW__CONSOLE__PASSWORD (HTTP basic auth) \
         or bind a loopback address (--http {DEFAULT_ADDR})"
    )]
    PasswordRequired {
        /// The address asked for.
        addr: SocketAddr,
    },
}

/// What every request handler shares.
pub(crate) struct Console {
    pub settings: Settings,
    pub status: StatusProbe,
    pub management: Management,
    pub vhost: String,
    pub topology: Topology,
    /// The topology file's name, for drift lines.
    pub source: String,
    /// Probes the workers' HTTP endpoints.
    pub http: reqwest::Client,
    /// One replay, purge or read of the dead-letter queues at a time: a message another pass
    /// or listing holds unacknowledged is invisible to a pass, which would then leave a ticked
    /// message where it is.
    pub passes: tokio::sync::Mutex<()>,
}

/// A console that is serving.
#[derive(Debug, Clone, Copy)]
pub struct Running {
    /// The address it listens on (the port the system picked for port 0).
    pub addr: SocketAddr,
}

/// Starts the console on `addr` until `shutdown`: refuses a non-loopback address without
/// `console.password`, loads the topology, and serves the page and its API.
///
/// # Errors
/// [`ConsoleError::PasswordRequired`], an invalid topology or management settings, or an
/// address that cannot be bound.
pub async fn start(
    settings: Settings,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    if !addr.ip().is_loopback() && settings.console.password.is_none() {
        return Err(ConsoleError::PasswordRequired { addr }.into());
    }
    let topology = Topology::load(&settings.topology)
        .with_context(|| format!("loading topology {}", settings.topology.display()))?;
    let console = Console {
        status: StatusProbe::new(&settings, &settings.topology)?,
        management: Management::new(&settings.management, &settings.amqp)?,
        vhost: settings.amqp.url.vhost(),
        source: settings.topology.display().to_string(),
        topology,
        http: reqwest::Client::builder()
            .timeout(workers::PROBE_TIMEOUT)
            .build()
            .context("building the HTTP client")?,
        passes: tokio::sync::Mutex::new(()),
        settings,
    };
    let security = security::Security::new(console.settings.console.password.clone());
    let router = router(Arc::new(console), Arc::new(security));
    let addr = crate::http::serve(addr, router, shutdown).await?;
    Ok(Running { addr })
}

fn router(console: Arc<Console>, security: Arc<security::Security>) -> Router {
    Router::new()
        .merge(pages::routes(security.token().to_owned()))
        .merge(api::routes(console))
        .layer(axum::middleware::from_fn_with_state(
            security,
            security::guard,
        ))
}
