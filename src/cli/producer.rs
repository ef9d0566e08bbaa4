//! `producer order|orders|serve|activity|inventory`: prints the id of what was published, or the
//! tally of a bulk publish behind a progress bar, and picks the exit code (1 when something
//! was not confirmed, 65 when an input line was skipped; a [`PublishError`] goes to
//! [`super::exit_code`]).
//!
//! [`PublishError`]: crate::producer::PublishError

use std::process::ExitCode;
use std::sync::OnceLock;

use indicatif::{ProgressBar, ProgressStyle};

use super::Exit;
use crate::message::{ActivityEvent, Order};
use crate::producer::activity::{self, ActivityTally};
use crate::producer::{self, OrderSource, PublishProgress, PublishTally};
use crate::settings::Settings;

/// `producer order`: prints the order id once the broker confirmed the order.
///
/// # Errors
/// As [`producer::place_order`], or the failure it reports.
pub async fn order(settings: &Settings, order: Order, events: bool) -> anyhow::Result<ExitCode> {
    let placed = producer::place_order(settings, order, events).await?;
    if placed.order_confirmed {
        println!("{}", placed.order_id);
    }
    match placed.failure {
        Some(e) => Err(e.into()),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// `producer serve`: runs the order service until SIGINT or SIGTERM.
///
/// # Errors
/// As [`crate::orders::run`].
pub async fn serve(
    settings: Settings,
    options: crate::orders::ServeOptions,
) -> anyhow::Result<ExitCode> {
    crate::orders::run(settings, options, crate::shutdown::on_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `producer activity --kind …` and `producer inventory`: prints the event id once confirmed.
///
/// # Errors
/// As [`activity::publish_event`].
pub async fn event(settings: &Settings, event: &ActivityEvent) -> anyhow::Result<ExitCode> {
    activity::publish_event(settings, event).await?;
    println!("{}", event.event_id);
    Ok(ExitCode::SUCCESS)
}

/// A progress bar that appears when the publish starts (not when the broker is unreachable).
struct Bar {
    noun: &'static str,
    bar: OnceLock<ProgressBar>,
}

impl Bar {
    fn new(noun: &'static str) -> Self {
        Self {
            noun,
            bar: OnceLock::new(),
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.get() {
            bar.finish_and_clear();
        }
    }
}

impl PublishProgress for Bar {
    fn start(&self, total: Option<u64>) {
        let bar = match total {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{{spinner}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {} confirmed ({{per_sec}}) {{msg}}",
                self.noun
            ))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let _ = self.bar.set(bar);
    }

    fn confirmed(&self) {
        if let Some(bar) = self.bar.get() {
            bar.inc(1);
        }
    }

    fn skipped(&self, reason: &str) {
        match self.bar.get() {
            Some(bar) => bar.suspend(|| eprintln!("skipped {reason}")),
            None => eprintln!("skipped {reason}"),
        }
    }
}

/// `producer orders`: the tally line, and exit code 1 if any order was not confirmed, else 65
/// if any input line was skipped.
///
/// # Errors
/// As [`producer::publish_orders`].
pub async fn orders(
    settings: &Settings,
    source: OrderSource,
    rate: Option<f64>,
    events: bool,
) -> anyhow::Result<ExitCode> {
    let bar = Bar::new("orders");
    let tally = producer::publish_orders(settings, source, rate, events, &bar).await;
    bar.finish();
    let tally = tally?;
    println!("{}", orders_line(&tally));
    if tally.returned > 0 {
        eprintln!(
            "error: {} orders were unroutable: run `burrow topology apply`",
            tally.returned
        );
    }
    Ok(if tally.nacked > 0 || tally.returned > 0 {
        Exit::Failure
    } else if tally.skipped_lines > 0 {
        Exit::DataErr
    } else {
        Exit::Success
    }
    .into())
}

/// The summary line of `producer orders` (`burrow demo` reads it).
pub fn orders_line(t: &PublishTally) -> String {
    format!(
        "orders: {} confirmed, {} nacked, {} returned; events: {} confirmed, {} failed; {} lines skipped; {} re-sent; {:.0} orders/s over {:.1}s",
        t.confirmed,
        t.nacked,
        t.returned,
        t.events_confirmed,
        t.events_failed,
        t.skipped_lines,
        t.resent,
        t.confirmed as f64 / t.seconds.max(1e-9),
        t.seconds
    )
}

/// `producer activity --count N`: the tally line, and exit code 1 if any event was not
/// confirmed.
///
/// # Errors
/// As [`activity::publish_activity`].
pub async fn activity(
    settings: &Settings,
    count: u64,
    rate: Option<f64>,
    orders: bool,
) -> anyhow::Result<ExitCode> {
    let bar = Bar::new("events");
    let tally = activity::publish_activity(settings, count, rate, orders, &bar).await;
    bar.finish();
    let t: ActivityTally = tally?;
    println!(
        "events: {} confirmed, {} failed ({} nacked, {} returned); {} re-sent; {:.0} events/s over {:.1}s",
        t.confirmed,
        t.nacked + t.returned,
        t.nacked,
        t.returned,
        t.resent,
        t.confirmed as f64 / t.seconds.max(1e-9),
        t.seconds
    );
    if t.returned > 0 {
        eprintln!(
            "error: {} events were unroutable: run `burrow topology apply`",
            t.returned
        );
    }
    Ok(if t.confirmed == t.count {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
