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
}
