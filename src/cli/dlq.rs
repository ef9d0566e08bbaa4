//! `burrow dlq list|show|replay|purge`: prints what [`crate::dlq`] returns: a table of dead
//! letters, one letter in full, the counts of a replay or purge (behind a progress bar while it
//! scans) and every refused message.

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use indicatif::{ProgressBar, ProgressStyle};

use crate::dlq::{self, DeadLetter, DlqListing, Progress, Refusal, Selection};
use crate::settings::Settings;

/// `burrow dlq list`: a table of up to `limit` dead letters (id, source queue, reason,
/// attempts, age).
///
/// # Errors
/// As [`dlq::listing`].
pub async fn list(settings: &Settings, queue: &str, limit: usize) -> anyhow::Result<ExitCode> {
    let listing = dlq::listing(settings, queue, limit).await?;
    print!("{}", render_listing(&listing, Utc::now()));
    Ok(ExitCode::SUCCESS)
}

/// The table of `dlq list` and its count line.
pub fn render_listing(listing: &DlqListing, now: DateTime<Utc>) -> String {
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_header(vec!["id", "source", "reason", "attempts", "age"]);
    for m in &listing.letters {
        let mut reason = m.reason.clone().unwrap_or_else(|| "-".into());
        if reason.chars().count() > 70 {
            reason = reason.chars().take(69).collect::<String>() + "…";
        }
        table.add_row(vec![
            m.id.clone(),
            m.source_queue.clone().unwrap_or_else(|| "-".into()),
            reason,
            m.attempts.map_or_else(|| "-".into(), |a| a.to_string()),
            age(m, now),
        ]);
    }
    format!(
        "{table}\n{} dead letter(s) shown from '{}'\n",
        listing.letters.len(),
        listing.queue
    )
}

/// `burrow dlq show ID`: headers and body of one dead letter. Exit code 1 when not found.
///
/// # Errors
/// As [`dlq::letter`].
pub async fn show(settings: &Settings, queue: &str, id: &str) -> anyhow::Result<ExitCode> {
    match dlq::letter(settings, queue, id).await? {
        Some(m) => {
            print!("{}", describe(&m));
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("error: no message with id '{id}' in '{queue}'");
            Ok(ExitCode::from(1))
        }
    }
}

/// A bar for a pass over a dead-letter queue, sized when the pass reports the queue's depth.
fn scan_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} scanned  {msg}  {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn show_progress(bar: &ProgressBar, p: &Progress) {
    bar.set_length(p.depth);
    bar.set_position(p.counts.scanned);
}

/// `burrow dlq replay`: moves the selected dead letters back to their source queues and prints
/// the counts and every refused message. Exit code 1 when some matching message could not be
/// moved.
///
/// # Errors
/// As [`dlq::replay_queue`].
pub async fn replay(
    settings: &Settings,
    queue: &str,
    selection: &Selection,
) -> anyhow::Result<ExitCode> {
    let bar = scan_bar();
    let report = dlq::replay_queue(settings, queue, selection, |p| {
        show_progress(&bar, &p);
        bar.set_message(format!("{} replayed", p.counts.done));
    })
    .await;
    bar.finish_and_clear();
    let report = report?;
    let c = report.counts;
    for r in &report.refused {
        eprintln!("{}", refusal_text(r, queue, &report.allowed));
    }
    if c.refused > report.refused.len() as u64 {
        eprintln!(
            "… and {} more refused for their source queue",
            c.refused - report.refused.len() as u64
        );
    }
    let verb = if selection.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    println!(
        "{verb} {} of {} scanned in '{queue}' ({} matched, {} not matching left, {} failed and left, {} of them refused)",
        if selection.dry_run { c.matched - c.failed } else { c.done },
        c.scanned,
        c.matched,
        c.skipped,
        c.failed,
        c.refused,
    );
    Ok(if c.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The line `dlq replay` prints for a message it refused to send.
pub fn refusal_text(r: &Refusal, queue: &str, allowed: &BTreeSet<String>) -> String {
    let allowed = if allowed.is_empty() {
        format!("no queue of the topology dead-letters into '{queue}'")
    } else {
        format!(
            "only {} may receive replays from '{queue}'",
            allowed
                .iter()
                .map(|q| format!("'{q}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    match &r.source_queue {
        Some(source) => format!(
            "refused to replay {}: its source queue '{source}' is not a queue of the topology \
             that dead-letters into '{queue}' ({allowed}); it stays in '{queue}'",
            r.id
        ),
        None => format!(
            "refused to replay {}: its source queue is unknown ({allowed}); it stays in '{queue}'",
            r.id
        ),
    }
}

/// `burrow dlq purge`: deletes the selected dead letters; refuses unless `yes`.
///
/// # Errors
/// `yes` is false (and not a dry run), or as [`dlq::purge_queue`].
pub async fn purge(
    settings: &Settings,
    queue: &str,
    selection: &Selection,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        yes || selection.dry_run,
        "purge deletes dead letters for good: add --yes to confirm (or --dry-run to count them)"
    );
    let bar = scan_bar();
    let c = dlq::purge_queue(settings, queue, selection, |p| show_progress(&bar, &p)).await;
    bar.finish_and_clear();
    let c = c?;
    let verb = if selection.dry_run {
        "would purge"
    } else {
        "purged"
    };
    println!(
        "{verb} {} of {} scanned in '{queue}' ({} not matching left)",
        if selection.dry_run { c.matched } else { c.done },
        c.scanned,
        c.skipped
    );
    Ok(ExitCode::SUCCESS)
}

/// `dlq show`: every header and the body, pretty-printed when it is JSON.
pub fn describe(letter: &DeadLetter) -> String {
    let p = &letter.properties;
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<16} {v}\n"));
    line("message_id", letter.id.clone());
    line(
        "type",
        p.kind().as_ref().map_or("-".into(), |s| s.to_string()),
    );
    line(
        "content_type",
        p.content_type()
            .as_ref()
            .map_or("-".into(), |s| s.to_string()),
    );
    line(
        "timestamp",
        p.timestamp()
            .and_then(|t| DateTime::from_timestamp(i64::try_from(t).ok()?, 0))
            .map_or("-".into(), |t| t.to_rfc3339()),
    );
    line("exchange", format!("'{}'", letter.exchange));
    line("routing_key", letter.routing_key.clone());
    line(
        "source_queue",
        letter.source_queue.clone().unwrap_or("-".into()),
    );
    line("reason", letter.reason.clone().unwrap_or("-".into()));
    line("age", age(letter, Utc::now()));
    out.push_str("headers:\n");
    for (k, v) in letter.header_texts() {
        out.push_str(&format!("  {k}: {v}\n"));
    }
    out.push_str("body:\n");
    out.push_str(&letter.body_text());
    out.push('\n');
    out
}

/// How long ago `letter` failed, e.g. `3m12s`; `-` when not known.
fn age(letter: &DeadLetter, now: DateTime<Utc>) -> String {
    letter
        .age(now)
        .map_or_else(|| "-".to_owned(), human_duration)
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_claimed_and_the_allowed_queues() {
        let allowed = BTreeSet::from(["orders.fulfillment".to_owned()]);
        let r = Refusal {
            id: "ord_1".into(),
            source_queue: Some("some.other".into()),
        };
        let text = refusal_text(&r, "orders.dead", &allowed);
        assert!(
            text.contains("ord_1") && text.contains("'some.other'"),
            "{text}"
        );
        assert!(text.contains("only 'orders.fulfillment'"), "{text}");
        assert!(text.contains("stays in 'orders.dead'"), "{text}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_secs(192)), "3m12s");
        assert_eq!(human_duration(Duration::from_secs(7300)), "2h01m");
    }
}
