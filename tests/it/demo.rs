//! `burrow demo` as a newcomer runs it, after other work on the same vhost.

use crate::helpers::TestVhost;

/// Orders sent earlier with `--no-events` and left in the queue are fulfilled during the demo
/// and publish `order.fulfilled` without an `order.placed`: the demo's funnel counts this run
/// only, so fulfillment never exceeds 100% of the orders placed.
#[tokio::test]
async fn the_demo_funnel_counts_this_run_only() {
    let t = TestVhost::new("demo-funnel")
        .await
        .with_fast_topology()
        .await;
    let (code, _, stderr) = t.producer(&["orders", "--count", "20", "--no-events"], None);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        t.ready("orders.fulfillment").await,
        20,
        "an earlier backlog"
    );
    let (code, stdout, stderr) = t.burrow(&[
        "demo",
        "--orders",
        "30",
        "--events",
        "100",
        "--invalid-ratio",
        "0",
        "--failure-rate",
        "0",
        "--outage",
        "3",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let funnel = stdout
        .lines()
        .find(|l| l.starts_with("funnel (this run):"))
        .unwrap_or_else(|| panic!("a funnel line: {stdout}"));
    assert!(
        funnel.contains("30 orders placed") && funnel.contains("30 fulfilled (100.0%)"),
        "{funnel}"
    );
    let settled = stdout
        .lines()
        .find(|l| l.starts_with("settled:"))
        .expect("a settled line");
    assert!(
        settled.contains("30 fulfilled"),
        "this run's orders: {settled}"
    );
    // The earlier 20 were fulfilled too, before the run was measured.
    assert_eq!(t.store_counts().0, 50);

    // The orders came through the order service's API, a third of them while its link to the
    // broker was cut: accepted all the same, and every one reached its final status.
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("a line {prefix}: {stdout}"))
            .to_owned()
    };
    let orders = line("orders:");
    assert!(orders.contains("30 accepted by POST /orders"), "{orders}");
    assert!(
        !orders.contains("WRONG") && !orders.contains("no answer"),
        "{orders}"
    );
    let outage = line("outage:");
    assert!(outage.contains("10 orders accepted meanwhile"), "{outage}");
    assert!(outage.contains("ready throughout"), "{outage}");
    assert!(outage.contains("s later"), "the outbox emptied: {outage}");
    let peak: u64 = outage
        .split("outbox at ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("an outbox depth: {outage}"));
    // Each order and its order.placed event wait in the outbox while the link is cut.
    assert!(peak >= 20, "{outage}");
    let status = line("status:");
    assert!(status.contains("30 fulfilled"), "{status}");
}
