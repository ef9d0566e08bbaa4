//! `burrow demo`: the whole shop on one machine. Applies the topology, starts two fulfillment
//! workers and one of each activity service as child processes, publishes orders (some invalid,
//! some hitting transient carrier failures) and activity events with the real `producer`, waits
//! until every order is settled, prints a summary and stops the children cleanly.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::children::{metric_sum, sibling_binary, ChildWorker};
use crate::fulfillment::FulfillmentStore;
use crate::settings::Settings;
use crate::topology::Topology;

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Orders to publish.
    pub orders: u64,
    /// Activity events to publish.
    pub events: u64,
    /// Share of invalid orders.
    pub invalid_ratio: f64,
    /// Share of carrier bookings that fail transiently.
    pub failure_rate: f64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            orders: 400,
            events: 2000,
            invalid_ratio: 0.03,
            failure_rate: 0.05,
        }
    }
}

const SERVICES: [&str; 3] = ["notifications", "analytics", "recommendations"];

/// Runs the demo.
///
/// # Errors
/// The broker is unreachable, a binary is missing, or a child failed to start.
pub async fn run(
    settings: &Settings,
    options: DemoOptions,
) -> anyhow::Result<std::process::ExitCode> {
    let topology = Topology::load(&settings.topology)
        .with_context(|| format!("loading {}", settings.topology.display()))?;
    let conn = crate::broker::connect(&settings.amqp, "demo").await?;
    let report = crate::topology::apply(&conn, &topology).await?;
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
    let _ = conn.close(200, "done".into()).await;

    let logs = settings.store.dir.join("demo-logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let store = FulfillmentStore::open(&settings.store).await?;
    let fulfilled_before = store.counts().await?.fulfilled;
    // One connection for every depth check of the run.
    let probe = crate::broker::connect(&settings.amqp, "demo").await?;
    let dead_before = queue_depth(&probe, "orders.dead").await?;
    let mails_before = count_mails(&settings.mail.outbox);

    let mut workers = Vec::new();
    for i in 1..=2 {
        let args = vec![
            "--carrier-failure-rate".to_owned(),
            options.failure_rate.to_string(),
        ];
        workers.push(ChildWorker::spawn(
            &format!("fulfillment#{i}"),
            "fulfillment",
            &args,
            &[],
            &logs.join(format!("fulfillment-{i}.log")),
        )?);
    }
    for service in SERVICES {
        workers.push(ChildWorker::spawn(
            service,
            service,
            &[],
            &[],
            &logs.join(format!("{service}.log")),
        )?);
    }
    println!(
        "started {} workers (logs in {})",
        workers.len(),
        logs.display()
    );
    wait_healthy(&mut workers).await?;
    let publish_started = Instant::now();

    let order_line = run_producer(&[
        "orders",
        "--count",
        &options.orders.to_string(),
        "--invalid-ratio",
        &options.invalid_ratio.to_string(),
    ])?;
    let confirmed = first_number_before(&order_line, " confirmed").unwrap_or(0);
    let event_line = run_producer(&["activity", "--count", &options.events.to_string()])?;
    let publish_done = publish_started.elapsed();

    let bar = ProgressBar::new(confirmed);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} settling orders {bar:30} {pos}/{len} ({elapsed}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let (fulfilled, dead) = loop {
        let fulfilled = store
            .counts()
            .await?
            .fulfilled
            .saturating_sub(fulfilled_before);
        let dead = queue_depth(&probe, "orders.dead")
            .await?
            .saturating_sub(dead_before);
        bar.set_position(fulfilled + dead);
        if fulfilled + dead >= confirmed {
            break (fulfilled, dead);
        }
        if Instant::now() > deadline {
            bar.abandon_with_message("gave up waiting after 180 s");
            break (fulfilled, dead);
        }
        bar.set_message(if fulfilled + dead + 10 > confirmed {
            "waiting for retries (1 s / 10 s / 60 s back-off)"
        } else {
            ""
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    let settled_after = publish_started.elapsed();

    // Let the activity services drain their queues before reading their numbers.
    wait_queues_empty(&probe, &["activity.analytics", "activity.notifications"]).await;
    let _ = probe.close(200, "done".into()).await;
    let client = reqwest::Client::new();
    let mut metrics = Vec::new();
    for w in &workers {
        let text = get_text(&client, &format!("http://{}/metrics", w.http))
            .await
            .unwrap_or_default();
        metrics.push((w.name.clone(), text));
    }
    let retried: f64 = metrics
        .iter()
        .map(|(_, m)| metric_sum(m, "burrow_messages_total", &[("outcome", "retried")]))
        .sum();
    println!();
    println!("== burrow demo summary ==");
    println!(
        "orders:   {}",
        order_line.trim().trim_start_matches("orders: ")
    );
    println!(
        "events:   {}",
        event_line.trim().trim_start_matches("events: ")
    );
    println!(
        "settled:  {fulfilled} fulfilled, {dead} dead-lettered (orders.dead), {retried:.0} retries; all settled {:.1} s after the first publish ({:.0} orders/s end to end)",
        settled_after.as_secs_f64(),
        confirmed as f64 / settled_after.as_secs_f64().max(1e-9)
    );
    println!("publishing took {:.1} s", publish_done.as_secs_f64());
    for (name, text) in &metrics {
        let ok = metric_sum(text, "burrow_messages_total", &[("outcome", "success")]);
        let failed = metric_sum(
            text,
            "burrow_messages_total",
            &[("outcome", "dead_lettered")],
        );
        println!("  {name:<16} {ok:>6.0} handled, {failed:>4.0} dead-lettered");
    }
    let outbox = settings.mail.outbox.clone();
    let mails = count_mails(&outbox).saturating_sub(mails_before);
    println!(
        "emails:   {mails} sent by this run, into {}",
        crate::notifications::outbox_file(&outbox).display()
    );
    println!(
        "UI:       {} (guest/guest) → Queues",
        settings.management.url
    );
    if let Some(w) = workers.iter().find(|w| w.name == "recommendations") {
        let sample = get_text(&client, &format!("http://{}/recommendations/cus_7", w.http))
            .await
            .unwrap_or_default();
        println!("sample recommendation for cus_7: {}", sample.trim());
    }
    if let Some(w) = workers.iter().find(|w| w.name == "analytics") {
        let stats = get_text(&client, &format!("http://{}/stats", w.http))
            .await
            .unwrap_or_default();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&stats) {
            println!(
                "funnel (all runs, persisted): {}",
                v.get("funnel").map(ToString::to_string).unwrap_or_default()
            );
        }
    }
    println!("inspect:  burrow status · burrow dlq list");

    let mut clean = true;
    for w in &mut workers {
        let code = w.stop(Duration::from_secs(15)).await;
        clean &= code == Some(0);
        println!(
            "stopped {:<16} exit {}",
            w.name,
            code.map_or("killed".to_owned(), |c| c.to_string())
        );
    }
    Ok(if clean && fulfilled + dead >= confirmed {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

async fn wait_healthy(workers: &mut [ChildWorker]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for w in workers.iter_mut() {
        loop {
            anyhow::ensure!(
                w.running(),
                "worker {} exited at start-up; see its log",
                w.name
            );
            if get_text(&client, &format!("http://{}/healthz", w.http))
                .await
                .is_some()
            {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "worker {} did not become healthy in 30 s",
                w.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn wait_queues_empty(probe: &lapin::Connection, queues: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut total = 0;
        for q in queues {
            total += queue_depth(probe, q).await.unwrap_or(0);
        }
        if total == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get_text(client: &reqwest::Client, url: &str) -> Option<String> {
    let r = client
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    r.status().is_success().then_some(())?;
    r.text().await.ok()
}

async fn queue_depth(probe: &lapin::Connection, queue: &str) -> anyhow::Result<u64> {
    let state = crate::broker::queue_state(probe, queue)
        .await
        .with_context(|| format!("reading the depth of {queue}"))?;
    Ok(state.message_count().into())
}

/// Runs `producer ARGS`, showing its progress bar, and returns its summary line.
fn run_producer(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(sibling_binary("producer")?)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running producer")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "producer {} failed: {}",
        args.join(" "),
        stdout.trim()
    );
    Ok(stdout.lines().last().unwrap_or_default().to_owned())
}

fn first_number_before(text: &str, marker: &str) -> Option<u64> {
    let end = text.find(marker)?;
    text[..end]
        .split(|c: char| !c.is_ascii_digit())
        .rfind(|s| !s.is_empty())?
        .parse()
        .ok()
}

fn count_mails(outbox: &Path) -> usize {
    crate::notifications::read_outbox(outbox).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_numbers_are_read_from_the_producer_line() {
        let line = "orders: 400 confirmed, 0 nacked, 0 returned; events: 388 confirmed";
        assert_eq!(first_number_before(line, " confirmed"), Some(400));
        assert_eq!(first_number_before("nothing", " confirmed"), None);
    }
}
