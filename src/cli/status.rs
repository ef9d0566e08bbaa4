//! `burrow status`: prints the [`StatusReport`] of the vhost as a table (dead letters in red,
//! drift listed below) or as JSON, once or `--watch`ed; exit code 1 on drift.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Color, Table};
use tokio_util::sync::CancellationToken;

use crate::settings::Settings;
use crate::status::{StatusProbe, StatusReport, SupervisorStatus};

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
    if let Some(supervisor) = &report.supervisor {
        out.push_str(&render_supervisor(supervisor));
    }
    out
}

/// The `burrow run` block: per service running/wanted workers, bounds, the last decision.
fn render_supervisor(s: &SupervisorStatus) -> String {
    let state = &s.state;
    let when = state
        .updated_at
        .with_timezone(&chrono::Local)
        .format("%H:%M:%S");
    if !s.alive {
        return format!(
            "supervisor: not running (pid {} last wrote its state at {when})\n",
            state.pid
        );
    }
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED).set_header(vec![
        "service",
        "workers",
        "wanted",
        "bounds",
        "restarts",
        "last decision",
    ]);
    for svc in &state.services {
        table.add_row(vec![
            Cell::new(&svc.service),
            Cell::new(svc.running).set_alignment(CellAlignment::Right),
            Cell::new(svc.desired).set_alignment(CellAlignment::Right),
            Cell::new(format!("{}..{}", svc.min, svc.max)),
            Cell::new(svc.restarts).set_alignment(CellAlignment::Right),
            Cell::new(svc.last_decision.as_deref().unwrap_or("-")),
        ]);
    }
    format!(
        "supervisor: burrow run, pid {}, state of {when}\n{table}\n",
        state.pid
    )
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
    let probe = StatusProbe::new(settings, file)?;
    loop {
        let report = probe.read().await?;
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
    use crate::status::queue_status;

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
            supervisor: None,
        };
        let text = render(&report);
        assert!(text.contains("orders.dead (missing)"), "{text}");
        assert!(text.contains("drift: queue 'orders.dead'"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["queues"][0]["ready"], serde_json::Value::Null);
        assert_eq!(json["queues"][0]["present"], false);
    }
}
