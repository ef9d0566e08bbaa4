//! `burrow demo`: prints each step of [`crate::demo`] (topology applied, workers started, a
//! progress bar while the orders settle, the summary, the workers stopping); exit code 1
//! unless every order settled and every worker stopped cleanly.

use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};

use crate::demo::{self, Demo, DemoOptions, DemoSummary, SettlingPhase};
use crate::settings::Settings;

/// Runs the demo.
///
/// # Errors
/// As [`demo::apply_topology`], [`Demo::start`] and [`Demo::run`].
pub async fn run(settings: &Settings, options: DemoOptions) -> anyhow::Result<ExitCode> {
    let report = demo::apply_topology(settings).await?;
    println!(
        "topology applied: {} created, {} unchanged, {} drifted",
        report.created.len(),
        report.unchanged.len(),
        report.drift.len()
    );
    for drift in &report.drift {
        println!(
            "  drift: {}",
            drift.describe(&settings.topology.display().to_string())
        );
    }
    let outage = options.outage;
    let mut running = Demo::start(settings, options).await?;
    println!(
        "started the order service on http://{} and {} workers (logs in {})",
        running.order_service(),
        running.worker_count(),
        running.logs.display()
    );
    if running.has_outage() {
        println!(
            "the order service's link to the broker will be cut for {:.0} s a third of the way through the orders",
            outage.as_secs_f64()
        );
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} settling orders {bar:30} {pos}/{len} ({elapsed}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let summary = running
        .run(|s| {
            bar.set_length(s.accepted);
            bar.set_position(s.settled);
            match s.phase {
                SettlingPhase::Handling => bar.set_message(""),
                SettlingPhase::Retrying => {
                    bar.set_message("waiting for retries (1 s / 10 s / 60 s back-off)");
                }
                SettlingPhase::GaveUp => bar.abandon_with_message("gave up waiting after 180 s"),
            }
        })
        .await;
    bar.finish_and_clear();
    let summary = summary?;
    print!("{}", render_summary(&summary, settings));
    let clean = running
        .stop(|name, code| {
            println!(
                "stopped {name:<16} exit {}",
                code.map_or("killed".to_owned(), |c| c.to_string())
            );
        })
        .await;
    Ok(if clean && summary.all_settled() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The summary block, from the blank line before `== burrow demo summary ==` to `inspect:`.
pub fn render_summary(s: &DemoSummary, settings: &Settings) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(String::new());
    line("== burrow demo summary ==".into());
    let p = &s.placed;
    line(format!(
        "orders:   {} accepted by POST /orders ({:.0}/s from simulated customers), {} invalid refused (422), {} double clicks answered with the same order id{}{}",
        s.accepted,
        s.rate,
        p.refused,
        p.repeats_same_id,
        if p.repeats_wrong > 0 { format!(", {} double clicks answered WRONG", p.repeats_wrong) } else { String::new() },
        if p.failed > 0 { format!(", {} got no answer", p.failed) } else { String::new() },
    ));
    if let Some(o) = &s.outage {
        line(format!(
            "outage:   broker link cut for {:.1} s: {} orders accepted meanwhile, outbox at {} messages when it came back, {}; /readyz {}",
            o.lasted.as_secs_f64(),
            o.accepted_during,
            o.outbox_peak,
            o.drained_after.map_or("NOT empty a minute later".to_owned(), |d| format!(
                "empty {:.1} s later",
                d.as_secs_f64()
            )),
            if o.readyz.1 == 0 {
                format!("ready throughout ({} checks)", o.readyz.0)
            } else {
                format!("NOT ready {} of {} checks", o.readyz.1, o.readyz.0)
            }
        ));
    }
    line(format!("events:   {}", s.events));
    line(format!(
        "settled:  {} fulfilled, {} dead-lettered (orders.dead), {:.0} retries; all settled {:.1} s after the first order ({:.0} orders/s end to end)",
        s.fulfilled,
        s.dead,
        s.retried,
        s.settled_after.as_secs_f64(),
        s.accepted as f64 / s.settled_after.as_secs_f64().max(1e-9)
    ));
    let statuses: Vec<String> = s.statuses.iter().map(|(k, v)| format!("{v} {k}")).collect();
    line(format!(
        "status:   GET /orders/{{id}}: {}",
        statuses.join(", ")
    ));
    line(format!(
        "ordering and publishing the events took {:.1} s",
        s.publish_took.as_secs_f64()
    ));
    for w in &s.workers {
        line(format!(
            "  {:<16} {:>6.0} handled, {:>4.0} dead-lettered",
            w.name, w.handled, w.dead_lettered
        ));
    }
    for scaling in &s.scaling {
        line(format!("  {scaling}"));
    }
    line(format!(
        "emails:   {} sent by this run, into {}",
        s.mails,
        s.outbox_file.display()
    ));
    line(format!(
        "UI:       {} (guest/guest) → Queues",
        settings.management.url
    ));
    if let Some(sample) = &s.sample_recommendation {
        line(format!("sample recommendation for cus_7: {sample}"));
    }
    if let Some(f) = &s.funnel {
        let percent =
            |share: Option<f64>| share.map_or("-".to_owned(), |r| format!("{:.1}%", 100.0 * r));
        line(format!(
            "funnel (this run): {} views → {} orders placed ({}) → {} fulfilled ({})",
            f.views,
            f.orders_placed,
            percent(f.view_to_order()),
            f.orders_fulfilled,
            percent(f.order_to_fulfillment())
        ));
    }
    line("inspect:  burrow status · burrow dlq list".into());
    out
}
