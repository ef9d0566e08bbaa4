//! `burrow dlq list|show|replay|purge` against the real broker: reading leaves every message in
//! place, replay moves messages back to their source queue with clean headers, purge needs
//! `--yes`, and a replay killed half-way loses nothing.

use std::collections::HashSet;
use std::time::Duration;

use burrow::dlq::HEADER_REPLAYED;
use burrow::message::{header_str, header_u32, HEADER_ATTEMPTS, HEADER_ERROR};

use crate::helpers::{dead_letter, wait_for, TestVhost};

const LONG: Duration = Duration::from_secs(120);

/// Three dead letters: two carrier failures and one invalid order. Returns their ids.
async fn three_dead_letters(t: &TestVhost) -> (Vec<String>, String) {
    let a = dead_letter("still failing after 4 attempts: simulated timeout", 4);
    let b = dead_letter("still failing after 4 attempts: simulated timeout", 4);
    let c = dead_letter(
        "invalid field `items[0].quantity`: must be 1..=1000, got 0",
        1,
    );
    let ids = vec![a.0.clone(), b.0.clone()];
    let invalid = c.0.clone();
    t.publish_messages(vec![a.1, b.1, c.1]).await;
    (ids, invalid)
}

fn ids_of(messages: &[lapin::message::BasicGetMessage]) -> HashSet<String> {
    messages
        .iter()
        .filter_map(|m| m.delivery.properties.message_id().as_ref())
        .map(|s| s.as_str().to_owned())
        .collect()
}

#[tokio::test]
async fn list_shows_id_source_reason_attempts_and_age_and_removes_nothing() {
    let t = TestVhost::new("dlq-list").await.with_fast_topology().await;
    let (carrier, invalid) = three_dead_letters(&t).await;
    for _ in 0..2 {
        let (code, out, err) = t.burrow(&["dlq", "list"]);
        assert_eq!(code, 0, "{err}");
        for id in carrier.iter().chain([&invalid]) {
            assert!(out.contains(id.as_str()), "{id} listed: {out}");
        }
        assert!(out.contains("orders.fulfillment"), "{out}");
        assert!(out.contains("simulated timeout"), "{out}");
        assert!(out.contains("items[0].quantity"), "{out}");
        assert!(out.contains("3 dead letter(s) shown"), "{out}");
        assert_eq!(t.ready("orders.dead").await, 3, "list leaves them");
    }
    let (code, out, _) = t.burrow(&["dlq", "list", "--limit", "1"]);
    assert_eq!(code, 0);
    assert!(out.contains("1 dead letter(s) shown"), "{out}");
    assert_eq!(t.ready("orders.dead").await, 3);
    // Another queue, e.g. the activity services' dead letters.
    let (code, out, _) = t.burrow(&["dlq", "--queue", "activity.dead", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("0 dead letter(s) shown"), "{out}");
}

#[tokio::test]
async fn show_prints_headers_and_pretty_json_body_or_raw_text() {
    let t = TestVhost::new("dlq-show").await.with_fast_topology().await;
    let (carrier, _) = three_dead_letters(&t).await;
    let mut raw = dead_letter("malformed JSON: expected value at line 1 column 1", 1);
    raw.1.body = b"this is not json".to_vec();
    t.publish_messages(vec![raw.1]).await;

    let (code, out, err) = t.burrow(&["dlq", "show", &carrier[0]]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("message_id       {}", carrier[0])),
        "{out}"
    );
    assert!(
        out.contains("x-burrow-error: still failing after 4 attempts"),
        "{out}"
    );
    assert!(out.contains("x-burrow-attempts: 4"), "{out}");
    assert!(
        out.contains("x-burrow-source-queue: orders.fulfillment"),
        "{out}"
    );
    assert!(
        out.contains(&format!("  \"order_id\": \"{}\"", carrier[0])),
        "body pretty-printed: {out}"
    );

    let (code, out, _) = t.burrow(&["dlq", "show", &raw.0]);
    assert_eq!(code, 0);
    assert!(out.contains("body:\nthis is not json"), "{out}");

    let (code, _, err) = t.burrow(&["dlq", "show", "ord_nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no message with id 'ord_nope'"), "{err}");
    assert_eq!(t.ready("orders.dead").await, 4, "show leaves them");
}

#[tokio::test]
async fn replay_moves_matching_dead_letters_back_with_clean_headers() {
    let t = TestVhost::new("dlq-replay")
        .await
        .with_fast_topology()
        .await;
    let (carrier, invalid) = three_dead_letters(&t).await;

    let (code, out, err) = t.burrow(&["dlq", "replay", "--filter", "TIMEOUT", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would replay 2 of 3"), "{out}");
    assert_eq!(t.ready("orders.dead").await, 3);
    assert_eq!(t.ready("orders.fulfillment").await, 0);

    let (code, out, err) = t.burrow(&["dlq", "replay", "--filter", "timeout"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 2 of 3"), "{out}");
    assert!(out.contains("1 not matching left"), "{out}");

    let replayed = t.drain("orders.fulfillment").await;
    assert_eq!(ids_of(&replayed), carrier.iter().cloned().collect());
    for m in &replayed {
        let h = m.delivery.properties.headers().as_ref();
        assert_eq!(header_u32(h, HEADER_ATTEMPTS), Some(0));
        assert_eq!(header_u32(h, HEADER_REPLAYED), Some(1));
        assert_eq!(header_str(h, HEADER_ERROR), None);
        assert_eq!(m.delivery.properties.delivery_mode(), &Some(2));
    }
    let left = t.drain("orders.dead").await;
    assert_eq!(ids_of(&left), HashSet::from([invalid]));
}

#[tokio::test]
async fn replay_by_id_moves_exactly_the_named_messages() {
    let t = TestVhost::new("dlq-replay-id")
        .await
        .with_fast_topology()
        .await;
    let (carrier, invalid) = three_dead_letters(&t).await;

    let (code, out, err) = t.burrow(&["dlq", "replay", "--id", &carrier[1], "--id", &invalid]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 2 of 3"), "{out}");
    let replayed = t.drain("orders.fulfillment").await;
    assert_eq!(
        ids_of(&replayed),
        HashSet::from([carrier[1].clone(), invalid])
    );
    let left = t.drain("orders.dead").await;
    assert_eq!(ids_of(&left), HashSet::from([carrier[0].clone()]));
}

#[tokio::test]
async fn purge_refuses_without_yes_and_deletes_only_matching_with_it() {
    let t = TestVhost::new("dlq-purge").await.with_fast_topology().await;
    let (carrier, _) = three_dead_letters(&t).await;

    let (code, _, err) = t.burrow(&["dlq", "purge"]);
    assert_eq!(code, 1);
    assert!(err.contains("add --yes to confirm"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert_eq!(t.ready("orders.dead").await, 3);

    let (code, out, err) = t.burrow(&["dlq", "purge", "--filter", "items[0]", "--yes"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("purged 1 of 3"), "{out}");
    let left = t.drain("orders.dead").await;
    assert_eq!(ids_of(&left), carrier.into_iter().collect());
}

#[tokio::test]
async fn replay_killed_half_way_loses_no_message() {
    let t = TestVhost::new("dlq-kill").await.with_fast_topology().await;
    let letters: Vec<_> = (0..2000)
        .map(|_| dead_letter("still failing after 4 attempts: simulated timeout", 4))
        .collect();
    let ids: HashSet<String> = letters.iter().map(|(id, _)| id.clone()).collect();
    t.publish_messages(letters.into_iter().map(|(_, m)| m).collect())
        .await;
    assert_eq!(t.ready("orders.dead").await, 2000);

    // 500 per second: about four seconds for all, killed after a few hundred.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["dlq", "replay", "--rate", "500"])
        .envs(t.env())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn replay");
    wait_for("some replayed", LONG, || async {
        (t.ready("orders.fulfillment").await >= 300).then_some(())
    })
    .await;
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");

    // Held messages return to orders.dead when the broker sees the connection die.
    let (moved, dead) = wait_for("every message back in a queue", LONG, || async {
        let moved = t.ready("orders.fulfillment").await;
        let dead = t.ready("orders.dead").await;
        (moved + dead >= 2000).then_some((moved, dead))
    })
    .await;
    assert!(
        (300..2000).contains(&moved),
        "killed half-way: {moved} moved, {dead} left"
    );
    let mut seen = ids_of(&t.drain("orders.fulfillment").await);
    seen.extend(ids_of(&t.drain("orders.dead").await));
    let lost: Vec<_> = ids.difference(&seen).collect();
    assert!(
        lost.is_empty(),
        "{} lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
}

#[tokio::test]
async fn replay_of_ten_among_twenty_thousand_at_a_rate_finishes_in_seconds_and_loses_nothing() {
    let t = TestVhost::new("dlq-large").await.with_fast_topology().await;
    let mut letters: Vec<_> = (0..19_990)
        .map(|_| dead_letter("invalid field `email`: must contain '@'", 1))
        .collect();
    let wanted: Vec<_> = (0..10)
        .map(|_| dead_letter("still failing after 4 attempts: carrier unreachable", 4))
        .collect();
    let wanted_ids: HashSet<String> = wanted.iter().map(|(id, _)| id.clone()).collect();
    let kept_ids: Vec<String> = letters.iter().map(|(id, _)| id.clone()).collect();
    // Spread the ten through the queue: one every 2,000 messages.
    for (i, w) in wanted.into_iter().enumerate() {
        letters.insert(i * 2000 + 1000, w);
    }
    t.publish_messages(letters.into_iter().map(|(_, m)| m).collect())
        .await;
    assert_eq!(t.ready("orders.dead").await, 20_000);

    // Before, the rate paced every scanned message (20,000 at 5/s: over an hour) and every
    // non-matching message was held unacked until the end.
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["dlq", "replay", "--filter", "carrier", "--rate", "5"])
        .envs(t.env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn replay");
    let code = wait_for("replay to finish", Duration::from_secs(180), || {
        let r = child.try_wait().expect("try_wait");
        async move { r }
    })
    .await;
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        code.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "replayed 10 of 20,000 at --rate 5 in {:?}",
        started.elapsed()
    );
    assert!(stdout.contains("replayed 10 of 20000"), "{stdout}");

    assert_eq!(t.ready("orders.fulfillment").await, 10);
    assert_eq!(t.ready("orders.dead").await, 19_990);
    let replayed = t.drain("orders.fulfillment").await;
    assert_eq!(ids_of(&replayed), wanted_ids);
    let left = t.drain("orders.dead").await;
    assert_eq!(left.len(), 19_990, "no duplicates");
    assert_eq!(
        ids_of(&left),
        kept_ids.into_iter().collect(),
        "every kept message"
    );
    let h = left[0].delivery.properties.headers().as_ref();
    assert!(
        header_str(h, HEADER_ERROR).is_some_and(|e| e.contains("email")),
        "kept unchanged"
    );
}

#[tokio::test]
async fn replay_refuses_a_source_queue_outside_the_topology_and_keeps_the_message() {
    use burrow::message::{string_value, HEADER_SOURCE_QUEUE};
    let t = TestVhost::new("dlq-steer").await.with_fast_topology().await;
    let mut letters = Vec::new();
    let mut claims = Vec::new();
    for source in ["orders.dead", "some.other"] {
        let (id, mut m) = dead_letter("still failing after 4 attempts: simulated timeout", 4);
        let mut h = m.properties.headers().clone().unwrap_or_default();
        h.insert(HEADER_SOURCE_QUEUE.into(), string_value(source));
        m.properties = m.properties.with_headers(h);
        claims.push((id, source));
        letters.push(m);
    }
    let (good, m) = dead_letter("still failing after 4 attempts: simulated timeout", 4);
    letters.push(m);
    t.publish_messages(letters).await;
    // A queue that exists, so that before the check the replay would have succeeded.
    let conn = t.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "some.other".into(),
        lapin::options::QueueDeclareOptions::default(),
        lapin::types::FieldTable::default(),
    )
    .await
    .expect("declare some.other");

    let (code, out, err) = t.burrow(&["dlq", "replay", "--filter", "timeout"]);
    assert_eq!(code, 1, "{out} {err}");
    for (id, source) in &claims {
        assert!(
            err.contains(&format!(
                "refused to replay {id}: its source queue '{source}' is not a queue of the topology"
            )),
            "{err}"
        );
    }
    assert!(err.contains("only 'orders.fulfillment'"), "{err}");
    assert!(out.contains("replayed 1 of 3"), "{out}");
    assert!(out.contains("2 of them refused"), "{out}");

    assert_eq!(t.ready("some.other").await, 0);
    assert_eq!(
        ids_of(&t.drain("orders.fulfillment").await),
        HashSet::from([good])
    );
    let left = ids_of(&t.drain("orders.dead").await);
    assert_eq!(
        left,
        claims.iter().map(|(id, _)| id.clone()).collect(),
        "refused messages stay, once"
    );
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn list_returns_what_it_read_with_nack_and_the_dead_letter_queue_has_a_delivery_limit_no_reading_reaches(
) {
    let t = TestVhost::new("dlq-limit").await.with_fast_topology().await;
    three_dead_letters(&t).await;
    let q = t.queue_info("orders.dead").await;
    let limit = q.arguments["x-delivery-limit"]
        .as_i64()
        .expect("orders.dead declares x-delivery-limit");
    assert!(limit >= 1_000_000_000, "{limit}");
    for _ in 0..25 {
        // What a listing hands back is back in the queue a moment later.
        wait_for("every dead letter back", LONG, || async {
            (t.ready("orders.dead").await == 3).then_some(())
        })
        .await;
        let (code, out, err) = t.burrow(&["dlq", "list"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("3 dead letter(s) shown"), "{out}");
    }
    assert_eq!(t.ready("orders.dead").await, 3, "25 listings drop nothing");
}
