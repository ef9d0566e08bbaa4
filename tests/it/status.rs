//! `burrow status`: the queues of the topology with depth, consumers and rates from the
//! management API, dead letters counted, drift and missing queues shown, JSON and watch mode.

use std::io::Read;
use std::time::Duration;

use crate::helpers::{dead_letter, wait_for, TestVhost};

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn status_json_counts_dead_letters_and_reports_no_drift() {
    let t = TestVhost::new("status").await.with_fast_topology().await;
    let dead: Vec<_> = (0..3)
        .map(|_| dead_letter("invalid field `email`", 1).1)
        .collect();
    t.publish_messages(dead).await;
    // The management API refreshes queue statistics every few seconds.
    let report = wait_for("status to show 3 dead letters", LONG, || async {
        let (code, out, err) = t.burrow(&["status", "--json"]);
        assert_eq!(code, 0, "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
        (v["dead_letters"] == 3).then_some(v)
    })
    .await;
    assert_eq!(report["vhost"], t.name.as_str());
    assert_eq!(report["drift"], serde_json::json!([]));
    let queues = report["queues"].as_array().expect("queues");
    assert_eq!(queues.len(), 22, "every queue of the topology");
    let dead = queues
        .iter()
        .find(|q| q["name"] == "orders.dead")
        .expect("orders.dead listed");
    assert_eq!(dead["ready"], 3);
    assert_eq!(dead["dead_letter"], true);
    assert_eq!(dead["present"], true);
    for key in [
        "type",
        "unacked",
        "consumers",
        "publish_rate",
        "deliver_rate",
        "ack_rate",
    ] {
        assert!(dead.get(key).is_some(), "field {key} in {dead}");
    }

    let (code, table, _) = t.burrow(&["status"]);
    assert_eq!(code, 0);
    assert!(table.contains("orders.fulfillment"), "{table}");
    assert!(
        table.contains("dead letters: 3 waiting in orders.dead"),
        "{table}"
    );
}

#[tokio::test]
async fn missing_queue_is_shown_as_missing_and_is_drift() {
    let t = TestVhost::new("status-missing")
        .await
        .with_fast_topology()
        .await;
    t.delete_queue("activity.recommendations").await;
    let (code, out, err) = t.burrow(&["status", "--json"]);
    assert_eq!(code, 1, "drift exits 1: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let q = v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "activity.recommendations")
        .expect("still listed")
        .clone();
    assert_eq!(q["present"], false);
    assert_eq!(q["ready"], serde_json::Value::Null);
    let drift = v["drift"].to_string();
    assert!(drift.contains("activity.recommendations"), "{drift}");

    let (code, table, _) = t.burrow(&["status"]);
    assert_eq!(code, 1);
    assert!(
        table.contains("activity.recommendations (missing)"),
        "{table}"
    );
    assert!(table.contains("drift: queue 'activity.recommendations'"));
}

#[tokio::test]
async fn watch_redraws_until_interrupted() {
    let t = TestVhost::new("status-watch")
        .await
        .with_fast_topology()
        .await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["status", "--watch", "--interval", "0.3"])
        .envs(t.env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn burrow status --watch");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let code = child.wait().expect("wait").code();
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    assert_eq!(code, Some(0), "{out}");
    let redraws = out.matches("\x1b[2J\x1b[H").count();
    assert!(redraws >= 2, "redrawn {redraws} times: {out}");
    assert!(out.contains("orders.fulfillment"));
}
