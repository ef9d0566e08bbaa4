//! The `producer` binary as users run it: `producer orders --count N --no-events` as a child
//! process, timed from spawn to exit (start-up, connection and all), next to a raw-lapin
//! publish-only run on the same vhost so the two rates compare like for like (nobody consumes
//! in either).

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;

use crate::raw::{self, AckStyle};
use crate::report::Row;
use crate::vhost::BenchVhost;
use burrow::topology::Topology;

/// Rows: the raw publish-only reference, then the CLI.
///
/// # Errors
/// The broker is unreachable, or `producer` is missing or failed.
pub async fn run(vhost: &BenchVhost, messages: u64, window: usize) -> anyhow::Result<Vec<Row>> {
    let settings = &vhost.settings;
    let reference = raw::run(
        settings,
        "publish-only",
        messages,
        window,
        1,
        AckStyle::NoConsumer,
    )
    .await?;

    let topology = Topology::load(&settings.topology)
        .with_context(|| format!("loading {}", settings.topology.display()))?;
    let conn = burrow::broker::connect(&settings.amqp, "bench setup").await?;
    burrow::topology::apply(&conn, &topology).await?;
    let _ = conn.close(200, "done".into()).await;
    vhost.purge_queues().await?;

    let count = messages.to_string();
    let args = ["orders", "--count", count.as_str(), "--no-events"];
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_producer"))
        .args(args)
        .env("AMQP_URL", settings.amqp.url.expose())
        .env("BURROW__PRODUCER__CONFIRM_WINDOW", window.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("running producer")?;
    let secs = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "producer {} failed: {}",
        args.join(" "),
        stdout.trim()
    );
    let own_rate = stdout
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[1] == "orders/s")
        .and_then(|w| w[0].parse::<f64>().ok());

    let mut row = Row::new("producer-cli", messages);
    let rate = messages as f64 / secs.max(1e-9);
    row.publish_rate = Some(rate);
    let reference_rate = reference.publish_rate.unwrap_or(0.0);
    row.note = format!(
        "`producer {}`, spawn to exit; own count {}/s; {:.0}% of publish-only",
        args.join(" "),
        own_rate.map_or_else(|| "?".to_owned(), |r| format!("{r:.0}")),
        100.0 * rate / reference_rate.max(1e-9)
    );
    Ok(vec![reference, row])
}
