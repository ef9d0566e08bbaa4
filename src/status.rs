//! `burrow status`: every queue of the topology as the management API sees it — depth (ready and
//! unacked), consumers, publish/deliver/ack rates — with dead letters highlighted and drift
//! between the topology file and the broker listed below the table. Once, `--watch`ed, or as
//! JSON.
//!
//! The JSON document (`--json`) is a stable interface for scripts:
//! `{"vhost", "queues": [{"name", "type", "present", "ready", "unacked", "consumers",
//! "publish_rate", "deliver_rate", "ack_rate", "dead_letter"}], "dead_letters", "drift": [..]}`.
//! Counts and rates of a queue missing on the broker are `null`.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Color, Table};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::management::{Management, QueueInfo};
use crate::settings::Settings;
use crate::topology::{verify, Topology};

/// One queue of the topology, as the broker reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueStatus {
    /// Its name.
    pub name: String,
    /// `classic`, `quorum` or `stream` (from the topology file).
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether the broker has it.
    pub present: bool,
    /// Messages ready for delivery.
    pub ready: Option<u64>,
    /// Messages delivered and not yet acknowledged.
    pub unacked: Option<u64>,
    /// Consumers attached.
    pub consumers: Option<u64>,
    /// Messages published into it per second.
    pub publish_rate: Option<f64>,
    /// Messages delivered (or fetched) per second.
    pub deliver_rate: Option<f64>,
    /// Messages acknowledged per second.
    pub ack_rate: Option<f64>,
    /// Whether it collects dead letters (bound to some queue's dead-letter exchange).
    pub dead_letter: bool,
}

/// The whole status of one vhost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// The vhost inspected.
    pub vhost: String,
    /// Every queue of the topology, in file order.
    pub queues: Vec<QueueStatus>,
    /// Messages waiting in dead-letter queues (ready and unacked).
    pub dead_letters: u64,
    /// Differences between the topology file and the broker, one line each.
    pub drift: Vec<String>,
}

/// Options of `burrow status`.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// Redraw every `interval` until interrupted.
    pub watch: bool,
    /// The refresh interval of `watch`.
    pub interval: Duration,
    /// Print JSON instead of a table.
    pub json: bool,
}

/// The queues that collect dead letters: those bound to an exchange that some queue of the
/// topology names as its `x-dead-letter-exchange`.
pub fn dead_letter_queues(topology: &Topology) -> HashSet<String> {
    let dlx: HashSet<&str> = topology
        .queues
        .iter()
        .filter_map(|q| q.arguments.get("x-dead-letter-exchange")?.as_str())
        .filter(|x| !x.is_empty())
        .collect();
    topology
        .bindings
        .iter()
        .filter(|b| dlx.contains(b.source.as_str()))
        .map(|b| b.destination.clone())
        .collect()
}

/// Reads the status of `vhost` through `management`.
///
/// # Errors
/// The management API cannot be read.
pub async fn collect(
    management: &Management,
    vhost: &str,
    topology: &Topology,
    source: &str,
) -> anyhow::Result<StatusReport> {
    let (queues, drift) = tokio::try_join!(management.queues(vhost), async {
        verify::verify(management, vhost, topology).await
    })
    .context("reading the broker's queues")?;
    let dead = dead_letter_queues(topology);
    let mut report = StatusReport {
        vhost: vhost.to_owned(),
        queues: Vec::with_capacity(topology.queues.len()),
        dead_letters: 0,
        drift: drift.iter().map(|d| d.describe(source)).collect(),
    };
    for q in &topology.queues {
        let info = queues.iter().find(|i| i.name == q.name);
        let status = queue_status(&q.name, q.kind.as_str(), dead.contains(&q.name), info);
        if status.dead_letter {
            report.dead_letters += status.ready.unwrap_or(0) + status.unacked.unwrap_or(0);
        }
        report.queues.push(status);
    }
    Ok(report)
}

fn queue_status(
    name: &str,
    kind: &str,
    dead_letter: bool,
    info: Option<&QueueInfo>,
) -> QueueStatus {
    let rate = |key: &str| {
        info.and_then(|i| i.message_stats.as_ref())
            .and_then(|s| s.get(key)?.get("rate")?.as_f64())
            .or(info.map(|_| 0.0))
    };
    QueueStatus {
        name: name.to_owned(),
        kind: kind.to_owned(),
        present: info.is_some(),
        // Stats appear a few seconds after a queue is declared; until then it is empty.
        ready: info.map(|i| i.messages_ready.unwrap_or(0)),
        unacked: info.map(|i| i.messages_unacknowledged.unwrap_or(0)),
        consumers: info.map(|i| i.consumers.unwrap_or(0)),
        publish_rate: rate("publish_details"),
        deliver_rate: rate("deliver_get_details"),
        ack_rate: rate("ack_details"),
        dead_letter,
    }
}

/// The report as a table for a terminal, dead letters in red, drift listed below.
pub fn render(report: &StatusReport) -> String {
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header(vec![
        "queue",
        "type",
        "ready",
        "unacked",
        "consumers",
        "publish/s",
        "deliver/s",
        "ack/s",
    ]);
    for q in &report.queues {
        let count = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
        let rate = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
        let name = if q.present {
            Cell::new(&q.name)
        } else {
            Cell::new(format!("{} (missing)", q.name)).fg(Color::Yellow)
        };
        let mut ready = Cell::new(count(q.ready)).set_alignment(CellAlignment::Right);
        if q.dead_letter && q.ready.unwrap_or(0) > 0 {
            ready = ready.fg(Color::Red);
        }
        table.add_row(vec![
            name,
            Cell::new(&q.kind),
            ready,
            Cell::new(count(q.unacked)).set_alignment(CellAlignment::Right),
            Cell::new(count(q.consumers)).set_alignment(CellAlignment::Right),
            Cell::new(rate(q.publish_rate)).set_alignment(CellAlignment::Right),
            Cell::new(rate(q.deliver_rate)).set_alignment(CellAlignment::Right),
            Cell::new(rate(q.ack_rate)).set_alignment(CellAlignment::Right),
        ]);
    }
    let mut out = format!("vhost '{}'\n{table}\n", report.vhost);
    if report.dead_letters > 0 {
        let queues: Vec<&str> = report
            .queues
            .iter()
            .filter(|q| q.dead_letter && q.ready.unwrap_or(0) + q.unacked.unwrap_or(0) > 0)
            .map(|q| q.name.as_str())
            .collect();
        out.push_str(&format!(
            "dead letters: {} waiting in {} (see `burrow dlq list`)\n",
            report.dead_letters,
            queues.join(", ")
        ));
    } else {
        out.push_str("dead letters: none\n");
    }
    if report.drift.is_empty() {
        out.push_str("drift: none\n");
    } else {
        for d in &report.drift {
            out.push_str(&format!("drift: {d}\n"));
        }
    }
    out
}

/// Runs `burrow status` against the topology file `file`. Exit code 1 when the broker drifted
/// from the file (as `burrow topology verify`), 0 otherwise; `--watch` runs until `shutdown`.
///
/// # Errors
/// An invalid topology file or an unreadable management API.
pub async fn run(
    settings: &Settings,
    file: &Path,
    options: &StatusOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let topology =
        Topology::load(file).with_context(|| format!("loading topology {}", file.display()))?;
    let management = Management::new(&settings.management, &settings.amqp)?;
    let vhost = settings.amqp.url.vhost();
    let source = file.display().to_string();
    loop {
        let report = collect(&management, &vhost, &topology, &source).await?;
        let text = if options.json {
            let mut t = serde_json::to_string_pretty(&report)?;
            t.push('\n');
            t
        } else {
            render(&report)
        };
        let mut stdout = std::io::stdout().lock();
        if options.watch && !options.json {
            // Clear the screen and home the cursor, then redraw.
            write!(stdout, "\x1b[2J\x1b[H")?;
            writeln!(
                stdout,
                "burrow status — every {}s, Ctrl-C to stop — {}",
                options.interval.as_secs_f64(),
                chrono::Local::now().format("%H:%M:%S")
            )?;
        }
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
        drop(stdout);
        if !options.watch {
            return Ok(if report.drift.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
            () = tokio::time::sleep(options.interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shop() -> Topology {
        Topology::parse(include_str!("../topology/shop.toml")).expect("valid")
    }

    #[test]
    fn dead_letter_queues_are_found_from_the_topology() {
        let dead = dead_letter_queues(&shop());
        let mut names: Vec<_> = dead.into_iter().collect();
        names.sort();
        assert_eq!(names, vec!["activity.dead", "orders.dead"]);
    }

    #[test]
    fn missing_queue_renders_as_missing_with_null_counts() {
        let s = queue_status("orders.dead", "quorum", true, None);
        assert!(!s.present);
        assert_eq!(s.ready, None);
        let report = StatusReport {
            vhost: "/".into(),
            queues: vec![s],
            dead_letters: 0,
            drift: vec!["queue 'orders.dead': missing".into()],
        };
        let text = render(&report);
        assert!(text.contains("orders.dead (missing)"), "{text}");
        assert!(text.contains("drift: queue 'orders.dead'"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["queues"][0]["ready"], serde_json::Value::Null);
        assert_eq!(json["queues"][0]["present"], false);
    }
}
