//! `worker SERVICE`: run one service of the shop; start as many processes as you like.

use std::net::SocketAddr;
use std::process::ExitCode;

use burrow::service::{Service, WorkerOptions};
use burrow::settings::Settings;
use burrow::telemetry::LogFormat;
use clap::Parser;

#[derive(Parser)]
#[command(name = "worker", version, about = "Run a burrow service")]
struct Cli {
    /// The service to run.
    #[arg(value_enum)]
    service: Service,
    /// Handlers running at once in this process (default: the worker.concurrency setting).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Deliveries the broker may send ahead of acks (default: the worker.prefetch setting, else
    /// 4 per handler).
    #[arg(long)]
    prefetch: Option<u16>,
    /// Serve /healthz and /metrics (and the service's routes) on this address, e.g. 127.0.0.1:9101.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Simulated carrier latency in milliseconds (fulfillment).
    #[arg(long)]
    carrier_latency_ms: Option<u64>,
    /// Share of simulated carrier bookings that fail transiently, 0.0..=1.0 (fulfillment).
    #[arg(long, value_parser = burrow::cli::args::share)]
    carrier_failure_rate: Option<f64>,
    /// Do not publish events (order.fulfilled).
    #[arg(long)]
    no_events: bool,
    /// Build a fresh model from the stream messages stored at or after this RFC 3339 time,
    /// e.g. 2026-11-28T05:00:00Z; implies --rebuild (recommendations).
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Forget the stored model and offset and re-read the stream from the start
    /// (recommendations).
    #[arg(long)]
    rebuild: bool,
    /// How log lines (on stderr) are written.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match burrow::cli::parse::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let telemetry = burrow::telemetry::init(
        cli.log_format,
        &format!("burrow-worker-{}", cli.service.name()),
    );
    let code = match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => burrow::cli::exit_code(&e),
    };
    // After the graceful shutdown: the spans of the last deliveries go out too.
    telemetry.shutdown();
    code
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load()?;
    if let Some(n) = cli.concurrency {
        settings.worker.concurrency = n;
    }
    if let Some(n) = cli.prefetch {
        settings.worker.prefetch = Some(n);
    }
    if let Some(ms) = cli.carrier_latency_ms {
        settings.carrier.latency_ms = ms;
    }
    if let Some(rate) = cli.carrier_failure_rate {
        settings.carrier.failure_rate = rate;
    }
    let options = WorkerOptions {
        http: cli.http,
        events: !cli.no_events,
        since: cli.since,
        rebuild: cli.rebuild,
    };
    burrow::service::run(
        settings,
        cli.service,
        options,
        burrow::shutdown::on_signal(),
    )
    .await
}
