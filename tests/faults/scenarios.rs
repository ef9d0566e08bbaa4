//! The scenarios of issue 6. Each starts its own private node(s), runs the real binaries, injects
//! one kind of fault mid-stream, waits on conditions (never on luck) and settles the accounts.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use burrow::message::{header_str, header_u32, HEADER_ATTEMPTS, HEADER_ERROR};
use burrow::settings::{AmqpSettings, SecretUrl};
use tokio_util::sync::CancellationToken;

use crate::fake_node::{Failure, FakeNode};
use crate::harness::{self, Node};
use crate::shop::{ids_of, order, order_lines, settle_accounts, wait_for, Shop, Stage, LONG};

/// A free local port for a worker's `--http`.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// `burrow_reconnects_total` of a worker's `/metrics` (0 when absent).
async fn reconnects(addr: &str) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with("burrow_reconnects_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The `reason` of the first `x-death` entry, e.g. `delivery_limit`.
fn x_death_reason(headers: Option<&lapin::types::FieldTable>) -> Option<String> {
    use lapin::types::AMQPValue;
    let AMQPValue::FieldArray(deaths) = headers?.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    match first.inner().get("reason")? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// The number in `orders: N confirmed` of the producer's summary.
pub(crate) fn producer_confirmed(stdout: &str) -> usize {
    stdout
        .split("orders: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary in producer output: {stdout}"))
}

/// Waits until `n` orders are fulfilled or dead-lettered, then drains `orders.dead`.
async fn settle(shop: &Shop, n: usize) -> Vec<lapin::message::BasicGetMessage> {
    wait_for(&format!("{n} orders settled"), LONG, || async {
        let done = shop.store_counts().0 + u64::from(shop.ready("orders.dead").await);
        (done >= n as u64).then_some(())
    })
    .await;
    shop.drain("orders.dead").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigkilled_mid_stream_loses_nothing() {
    crate::requires::skip_unless_fault_env!();
    let stage = Stage::single().await;
    let shop = &stage.shop;
    let a = shop.spawn_worker(0, &[], &[]);
    let _b = shop.spawn_worker(0, &[], &[]);
    let orders: Vec<_> = (0..4000).map(|_| order("SKU-1")).collect();
    let published = orders.len();
    let (confirmed, recovery) = tokio::join!(shop.publish(orders), async {
        shop.wait_fulfilled(500).await;
        a.signal("KILL");
        shop.time_to_progress(published).await
    });
    // The killed worker is restarted, as a supervisor would.
    let _a2 = shop.spawn_worker(0, &[], &[]);
    let dead = settle(shop, confirmed.len()).await;
    let t = settle_accounts(
        "1-worker-sigkill",
        shop,
        published,
        &confirmed,
        &ids_of(&dead),
        Some(recovery),
    );
    assert_eq!(t.confirmed, published);
    assert_eq!(t.dead_lettered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_then_node_restarted_loses_nothing() {
    crate::requires::skip_unless_fault_env!();
    let stage = Stage::single().await;
    let (node, shop) = (&stage.nodes[0], &stage.shop);
    let w1 = shop.spawn_worker(0, &[], &[]);
    let w2 = shop.spawn_worker(0, &[], &[]);
    let (ids, lines) = order_lines(3000);
    let mut producer = shop.spawn_producer(0, lines, &["--rate", "200"]);

    shop.wait_fulfilled(300).await;
    let started = Instant::now();
    node.close_all_connections();
    shop.time_to_progress(ids.len()).await;
    // Each worker is consuming again on a connection of its own, a new one.
    wait_for(
        "both workers reconnected",
        Duration::from_secs(60),
        || async {
            let names = node.ctl_ok(&["list_connections", "-q", "client_properties"]);
            let ok = [&w1, &w2]
                .iter()
                .all(|w| names.contains(&format!("#{}", w.pid())));
            if !ok {
                eprintln!("connections: {names}");
            }
            ok.then_some(())
        },
    )
    .await;
    let after_close = started.elapsed();

    // Restart once the workers are fulfilling again (on a slow machine the producer may be
    // done by now: then the restart comes after the last order, and the tally still holds).
    let done = shop.store_counts().0;
    shop.wait_fulfilled((done + 200).min(ids.len() as u64))
        .await;
    let started = Instant::now();
    node.restart();
    let downtime = started.elapsed();
    let after_restart = shop.time_to_progress(ids.len()).await;

    let code = producer.wait_exit(LONG).await;
    assert_eq!(code, Some(0), "producer: {}", producer.stderr());
    assert_eq!(producer_confirmed(&producer.stdout()), ids.len());
    let dead = settle(shop, ids.len()).await;
    let t = settle_accounts(
        "2-close-all-then-restart",
        shop,
        ids.len(),
        &ids,
        &ids_of(&dead),
        Some(after_close.max(after_restart)),
    );
    println!(
        "  (recovery after close_all_connections {:.1}s; node down for {:.1}s, recovery once it was back {:.1}s; producer: {})",
        after_close.as_secs_f64(),
        downtime.as_secs_f64(),
        after_restart.as_secs_f64(),
        producer.stdout().trim()
    );
    assert_eq!(t.dead_lettered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_leader_sigkilled_in_a_3_node_cluster_loses_nothing() {
    crate::requires::skip_unless_fault_env!();
    let stage = Stage::cluster().await;
    let (nodes, shop) = (&stage.nodes, &stage.shop);
    let leader = wait_for("a leader of orders.fulfillment", LONG, || async {
        nodes[0].quorum_leader("orders.fulfillment")
    })
    .await;
    let l = nodes
        .iter()
        .position(|n| n.name == leader)
        .unwrap_or_else(|| panic!("leader {leader} is not one of ours"));
    let other = (l + 1) % 3;
    // One worker and the producer talk to the leader's node, one worker to another node.
    let _w1 = shop.spawn_worker(l, &[], &[]);
    let _w2 = shop.spawn_worker(other, &[], &[]);
    let (ids, lines) = order_lines(3000);
    let mut producer = shop.spawn_producer(l, lines, &["--rate", "300"]);

    shop.wait_fulfilled(300).await;
    let started = Instant::now();
    nodes[l].kill();
    let new_leader = wait_for("a new leader", LONG, || async {
        nodes[other]
            .quorum_leader("orders.fulfillment")
            .filter(|n| *n != leader && !n.is_empty())
    })
    .await;
    shop.time_to_progress(ids.len()).await;
    let recovery = started.elapsed();

    let code = producer.wait_exit(LONG).await;
    assert_eq!(code, Some(0), "producer: {}", producer.stderr());
    assert_eq!(producer_confirmed(&producer.stdout()), ids.len());
    let dead = settle(shop, ids.len()).await;
    // The killed node comes back and rejoins.
    nodes[l].boot();
    let back = nodes[l].ctl_ok(&["cluster_status"]);
    let t = settle_accounts(
        "3-quorum-leader-sigkill",
        shop,
        ids.len(),
        &ids,
        &ids_of(&dead),
        Some(recovery),
    );
    println!(
        "  (leader {leader} killed, {new_leader} took over; rejoined: {}; producer: {})",
        back.contains(&leader),
        producer.stdout().trim()
    );
    assert_eq!(t.dead_lettered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_alarm_mid_publish_pauses_and_resumes_losing_nothing() {
    crate::requires::skip_unless_fault_env!();
    let stage = Stage::single().await;
    let (node, shop) = (&stage.nodes[0], &stage.shop);
    let _w1 = shop.spawn_worker(0, &[], &[]);
    let _w2 = shop.spawn_worker(0, &[], &[]);
    // Fed until the alarm is over, so the alarm always lands mid-publish however slow the
    // machine is (a fixed list could be published before the first 300 are fulfilled).
    let (mut producer, feed) = shop.spawn_producer_feed(0, &["--rate", "400"]);

    shop.wait_fulfilled(300).await;
    node.set_vm_memory_high_watermark("0.0000001");
    wait_for("the producer to log the block", LONG, || async {
        producer
            .stderr()
            .contains("blocked publishing")
            .then_some(())
    })
    .await;
    // Hold the alarm a moment (shorter than the confirm timeout), then clear it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    node.set_vm_memory_high_watermark("0.4");
    wait_for("the producer to log the unblock", LONG, || async {
        producer
            .stderr()
            .contains("unblocked publishing")
            .then_some(())
    })
    .await;
    let recovery = started.elapsed();

    let ids = feed.stop().await;
    let code = producer.wait_exit(LONG).await;
    assert_eq!(code, Some(0), "producer: {}", producer.stderr());
    assert_eq!(producer_confirmed(&producer.stdout()), ids.len());
    let dead = settle(shop, ids.len()).await;
    let t = settle_accounts(
        "4-memory-alarm",
        shop,
        ids.len(),
        &ids,
        &ids_of(&dead),
        Some(recovery),
    );
    assert_eq!(t.dead_lettered, 0);
}

/// Ten kinds of malformed order bodies.
fn malformed(kind: usize) -> Vec<u8> {
    let id = burrow::message::new_id("ord");
    match kind % 10 {
        0 => b"this is not json".to_vec(),
        1 => serde_json::json!({"order_id": id, "customer_id": "cus_1", "email": "a@example.com",
            "items": [{"sku": "SKU-1", "quantity": "two", "unit_price_cents": 1}],
            "currency": "EUR", "placed_at": "2026-11-28T05:00:00Z"})
        .to_string()
        .into_bytes(),
        2 => serde_json::json!({"order_id": id, "customer_id": "cus_1",
            "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": 1}]})
        .to_string()
        .into_bytes(),
        3 => serde_json::json!({"order_id": id, "padding": "x".repeat(1_000_000)})
            .to_string()
            .into_bytes(),
        4 => vec![0xff, 0xfe, b'{', 0xc3, 0x28, b'}'],
        5 => Vec::new(),
        6 => b"[1, 2, 3]".to_vec(),
        7 => b"null".to_vec(),
        8 => serde_json::json!({"order_id": id, "customer_id": "cus_1", "email": "a@example.com",
            "items": [{"sku": "SKU-1", "quantity": 0, "unit_price_cents": 1}],
            "currency": "EUR", "placed_at": "2026-11-28T05:00:00Z"})
        .to_string()
        .into_bytes(),
        _ => br#"{"order_id": 42, "items": null}"#.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_storm_dead_letters_every_malformed_order_without_a_restart() {
    crate::requires::skip_unless_fault_env!();
    let stage = Stage::single().await;
    let shop = &stage.shop;
    let http = free_addr();
    let mut w = shop.spawn_worker(0, &["--http", &http], &[]);
    let pid = w.pid();
    let mut bodies = Vec::new();
    let mut bad = HashSet::new();
    for i in 0..1000 {
        if i % 10 == 9 {
            let id = format!("bad-{i}");
            bad.insert(id.clone());
            bodies.push((id, malformed(i / 10)));
        } else {
            bodies.push(order("SKU-1"));
        }
    }
    let published = bodies.len();
    let confirmed = shop.publish(bodies).await;
    let dead = settle(shop, confirmed.len()).await;
    let dead_ids = ids_of(&dead);
    assert_eq!(dead_ids, bad, "exactly the malformed orders are dead");
    for m in &dead {
        let h = m.delivery.properties.headers().as_ref();
        let reason = header_str(h, HEADER_ERROR).unwrap_or_default();
        assert!(!reason.is_empty(), "a reason on every dead letter");
        assert_eq!(header_u32(h, HEADER_ATTEMPTS), Some(1));
    }
    assert!(w.running(), "the worker survived the storm");
    assert_eq!(w.pid(), pid);
    assert_eq!(reconnects(&http).await, 0, "the worker never reconnected");
    let t = settle_accounts(
        "5-poison-storm",
        shop,
        published,
        &confirmed,
        &dead_ids,
        None,
    );
    assert_eq!(t.fulfilled, 900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_and_process_killing_orders_are_dead_lettered() {
    crate::requires::skip_unless_fault_env!();
    let stage = Stage::single().await;
    let shop = &stage.shop;

    // A handler panic is a transient failure: retried down the ladder, then dead-lettered.
    let mut w = shop.spawn_worker(0, &[], &[("BURROW__CARRIER__PANIC_SKUS", "SKU-PANIC")]);
    let panicking = order("SKU-PANIC");
    let mut bodies = vec![panicking.clone()];
    bodies.extend((0..50).map(|_| order("SKU-1")));
    let mut published = bodies.len();
    let mut confirmed = shop.publish(bodies).await;
    let dead = settle(shop, confirmed.len()).await;
    assert_eq!(ids_of(&dead), HashSet::from([panicking.0.clone()]));
    let h = dead[0].delivery.properties.headers().as_ref();
    assert_eq!(header_u32(h, HEADER_ATTEMPTS), Some(4));
    let reason = header_str(h, HEADER_ERROR).unwrap_or_default();
    assert!(reason.contains("panicked"), "{reason}");
    assert!(w.running(), "a panic never takes the worker down");
    w.signal("TERM");
    assert_eq!(w.wait_exit(LONG).await, Some(0));
    let mut dead_ids = ids_of(&dead);

    // A message that aborts the process every time: workers are restarted (as a supervisor
    // would) until the broker's x-delivery-limit dead-letters it.
    if !cfg!(feature = "test-hooks") {
        panic!("the abort hook needs the test-hooks feature: cargo test --features test-hooks (scripts/test)");
    }
    let killer = order("SKU-ABORT");
    published += 1;
    confirmed.extend(shop.publish(vec![killer.clone()]).await);
    let env = [("BURROW__CARRIER__ABORT_SKUS", "SKU-ABORT")];
    let mut crashes = 0;
    let started = Instant::now();
    let shop_ref = &shop;
    let mut w = loop {
        let mut w = shop.spawn_worker(0, &[], &env);
        let dead_now = wait_for("a crash or the dead letter", LONG, || {
            let crashed = !w.running();
            let shop = shop_ref;
            async move {
                if shop.ready("orders.dead").await > 0 {
                    Some(true)
                } else {
                    crashed.then_some(false)
                }
            }
        })
        .await;
        if dead_now && w.running() {
            break w;
        }
        crashes += 1;
        if dead_now {
            // It died on its way out: the dead letter came with this crash.
            break shop.spawn_worker(0, &[], &env);
        }
        assert!(
            crashes < 20,
            "still not dead-lettered after {crashes} crashes"
        );
    };
    let recovery = started.elapsed();
    let dead = shop.drain("orders.dead").await;
    assert_eq!(ids_of(&dead), HashSet::from([killer.0.clone()]));
    let reason = x_death_reason(dead[0].delivery.properties.headers().as_ref());
    assert_eq!(reason.as_deref(), Some("delivery_limit"));
    dead_ids.extend(ids_of(&dead));
    // The worker left running is healthy.
    let more: Vec<_> = (0..20).map(|_| order("SKU-1")).collect();
    published += more.len();
    confirmed.extend(shop.publish(more).await);
    shop.wait_fulfilled(70).await;
    assert!(w.running());
    println!("  (worker processes aborted by the killer order: {crashes})");
    let t = settle_accounts(
        "6-panic-and-abort",
        shop,
        published,
        &confirmed,
        &dead_ids,
        Some(recovery),
    );
    assert_eq!(t.dead_lettered, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_queue_is_reported_as_drift_and_the_worker_keeps_running() {
    crate::requires::skip_unless_fault_env!();
    let _serial = harness::SERIAL.lock().await;
    let node = Node::start(1);
    let shop = Shop::new(vec![node.url()]);
    {
        // Someone declared orders.fulfillment by hand: classic, with a length limit.
        let conn = burrow::broker::connect(&shop.amqp, "fault test")
            .await
            .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        let mut args = lapin::types::FieldTable::default();
        args.insert(
            "x-max-length".into(),
            lapin::types::AMQPValue::LongInt(100_000),
        );
        ch.queue_declare(
            "orders.fulfillment".into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("declare the conflicting queue");
        let _ = conn.close(200, "done".into()).await;
    }
    let (code, text) = shop.apply_topology();
    assert_eq!(code, 1, "drift exits 1: {text}");
    let drift: Vec<&str> = text.lines().filter(|l| l.starts_with("drift:")).collect();
    assert!(
        drift
            .iter()
            .any(|l| l.contains("orders.fulfillment") && l.contains("x-")),
        "a drift line names the queue and the argument: {text}"
    );

    let http = free_addr();
    let mut w = shop.spawn_worker(0, &["--http", &http], &[]);
    let orders: Vec<_> = (0..50).map(|_| order("SKU-1")).collect();
    let published = orders.len();
    let confirmed = shop.publish(orders).await;
    let dead = settle(&shop, confirmed.len()).await;
    assert!(w.running(), "the worker runs over the drifted queue");
    assert_eq!(
        reconnects(&http).await,
        0,
        "and does not reconnect in a loop"
    );
    assert!(
        w.stderr().contains("topology drift"),
        "the worker logs the drift: {}",
        w.stderr()
    );

    // A refused login is one line and a non-zero exit, not a retry loop.
    let bad_url = shop.urls[0].replace("guest:guest", "guest:wrong");
    let mut refused = shop.spawn_worker(
        0,
        &[],
        &[
            ("AMQP_URL", bad_url.as_str()),
            ("AMQP_FAILOVER_URLS", ""),
            // The binaries' default filter (RUST_LOG unset).
            (
                "RUST_LOG",
                "info,lapin=warn,lapin::channel=off,lapin::io_loop=off,amq_protocol=warn",
            ),
        ],
    );
    let code = refused.wait_exit(Duration::from_secs(60)).await;
    let stderr = refused.stderr();
    assert!(matches!(code, Some(c) if c != 0), "exit code {code:?}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(!stderr.contains("wrong"), "no password in errors: {stderr}");

    // The queue is deleted under the worker: the broker cancels its consumer; the worker says so,
    // reconnects, re-declares the topology (now as the file says) and consumes again.
    {
        let conn = burrow::broker::connect(&shop.amqp, "fault test")
            .await
            .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_delete("orders.fulfillment".into(), Default::default())
            .await
            .expect("delete orders.fulfillment");
        let _ = conn.close(200, "done".into()).await;
    }
    let started = Instant::now();
    wait_for("the worker to consume again", LONG, || async {
        (reconnects(&http).await >= 1).then_some(())
    })
    .await;
    let recovery = started.elapsed();
    assert!(
        w.stderr().contains("cancelled the consumer"),
        "{}",
        w.stderr()
    );
    let more: Vec<_> = (0..50).map(|_| order("SKU-1")).collect();
    let published = published + more.len();
    let mut confirmed = confirmed;
    confirmed.extend(shop.publish(more).await);
    shop.wait_fulfilled(confirmed.len() as u64).await;
    assert!(w.running());
    let (code, text) = shop.apply_topology();
    assert_eq!(code, 0, "the re-declared queue matches the file: {text}");

    let t = settle_accounts(
        "7-topology-drift",
        &shop,
        published,
        &confirmed,
        &ids_of(&dead),
        Some(recovery),
    );
    assert_eq!(t.fulfilled as usize, confirmed.len());
}

/// What a client met connecting to a node while it stopped and started: each error, as burrow
/// reports it, with how often, and whether burrow retries it.
#[derive(Default)]
pub(crate) struct Handshakes {
    pub ok: usize,
    pub errors: std::collections::BTreeMap<(bool, String), usize>,
}

/// Connects to `url` (and only there) again and again until `stop`, recording each outcome.
async fn probe(amqp: AmqpSettings, url: String, stop: CancellationToken) -> Handshakes {
    let settings = AmqpSettings {
        url: SecretUrl::new(url),
        failover_urls: Vec::new(),
        tls_ca_file: None,
        connect_timeout_ms: 2000,
        ..amqp.clone()
    };
    let mut seen = Handshakes::default();
    while !stop.is_cancelled() {
        match burrow::broker::connect(&settings, "fault test probe").await {
            Ok(conn) => {
                seen.ok += 1;
                let _ = conn.close(200, "probe".into()).await;
            }
            Err(e) => {
                // The node's port differs per node; the reason is what matters.
                let reason = e.to_string().replace(&settings.url.redacted(), "<node>");
                *seen.errors.entry((e.is_transient(), reason)).or_default() += 1;
            }
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(25)) => {}
        }
    }
    seen
}

/// Restarts `node` gracefully (as an operator rolling a cluster would: only once no quorum
/// queue depends on it) and waits until `witness` sees all `size` nodes running again. A probe
/// connects to the node all the while.
pub(crate) async fn roll(
    shop: &Shop,
    node: &Node,
    witness: &Node,
    size: usize,
) -> (Duration, Handshakes) {
    wait_for(
        &format!("{} no longer quorum-critical", node.name),
        LONG,
        || async { (!node.quorum_critical()).then_some(()) },
    )
    .await;
    let started = Instant::now();
    let stop = CancellationToken::new();
    // A task of its own: the restart below blocks this one.
    let prober = tokio::spawn(probe(shop.amqp.clone(), node.url(), stop.clone()));
    tokio::task::block_in_place(|| node.restart());
    wait_for(&format!("{} to rejoin", node.name), LONG, || async {
        (witness.running_nodes().len() == size).then_some(())
    })
    .await;
    stop.cancel();
    let seen = prober.await.expect("probe task");
    (started.elapsed(), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_the_3_node_cluster_under_load_loses_nothing() {
    crate::requires::skip_unless_fault_env!();
    let stage = Stage::cluster().await;
    let (nodes, shop) = (&stage.nodes, &stage.shop);
    // One worker per node as its primary, each with the other two as failover URLs; the
    // producer's primary is the first node restarted.
    let mut workers: Vec<_> = (0..3).map(|i| shop.spawn_worker(i, &[], &[])).collect();
    let (mut producer, feed) = shop.spawn_producer_feed(0, &["--rate", "150"]);
    shop.wait_fulfilled(200).await;

    let started = Instant::now();
    let mut downtimes = Vec::new();
    let mut handshakes = Handshakes::default();
    for (i, node) in nodes.iter().enumerate() {
        let witness = &nodes[(i + 1) % nodes.len()];
        let (downtime, seen) = roll(shop, node, witness, nodes.len()).await;
        downtimes.push(downtime);
        handshakes.ok += seen.ok;
        for (k, n) in seen.errors {
            *handshakes.errors.entry(k).or_default() += n;
        }
        // Orders flow again after each step, and no process gave up.
        let done = shop.store_counts().0;
        wait_for(
            &format!("fulfilment after restarting {}", node.name),
            LONG,
            || async { (shop.store_counts().0 >= done + 100).then_some(()) },
        )
        .await;
        for w in &mut workers {
            assert!(w.running(), "a worker exited: {}", w.stderr());
        }
        assert!(
            producer.running(),
            "the producer exited: {}",
            producer.stderr()
        );
    }
    let rolled = started.elapsed();

    let written = feed.stop().await;
    let code = producer.wait_exit(LONG).await;
    assert_eq!(code, Some(0), "producer: {}", producer.stderr());
    assert_eq!(producer_confirmed(&producer.stdout()), written.len());
    let dead = settle(shop, written.len()).await;
    for w in &mut workers {
        assert!(w.running(), "a worker exited: {}", w.stderr());
    }
    let reconnects: usize = workers
        .iter()
        .map(|w| {
            w.stderr()
                .matches("reconnected and consuming again")
                .count()
        })
        .sum();
    let t = settle_accounts(
        "8-rolling-restart",
        shop,
        written.len(),
        &written,
        &ids_of(&dead),
        Some(rolled),
    );
    println!(
        "  (3 nodes restarted one after another in {:.1}s, each down and back in {}; worker \
         reconnects {reconnects}; producer: {})",
        rolled.as_secs_f64(),
        downtimes
            .iter()
            .map(|d| format!("{:.1}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join("/"),
        producer.stdout().trim()
    );
    println!(
        "  (a probe connecting to each node while it restarted: {} connected",
        handshakes.ok
    );
    for ((transient, reason), n) in &handshakes.errors {
        let verdict = if *transient { "retried" } else { "FATAL" };
        println!("     {n:>5} x {verdict}: {reason}");
    }
    println!("  )");
    assert_eq!(t.dead_lettered, 0, "healthy orders dead-lettered");
    assert_eq!(t.fulfilled as usize, written.len());
    // Every error a rolling restart causes at the handshake is retried, not fatal.
    let fatal: Vec<_> = handshakes.errors.keys().filter(|(t, _)| !t).collect();
    assert!(
        fatal.is_empty(),
        "fatal handshake errors during a rolling restart: {fatal:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_failures_of_a_stopping_node_fail_over_and_end_no_worker_or_producer() {
    crate::requires::skip_unless_fault_env!();
    let _serial = harness::SERIAL.lock().await;
    let node = Node::start(1);
    // Every client's primary node fails each handshake as a node that stops or boots does; the
    // real node is its failover.
    let fake = FakeNode::start();
    let shop = Shop::new(vec![fake.url(), node.url()]);
    // The topology straight on the real node, so that this test is about the processes below.
    Shop::new(vec![node.url()]).apply_topology_ok();
    let http = free_addr();
    let mut w = shop.spawn_worker(0, &["--http", &http], &[]);
    let (ids, lines) = order_lines(1500);
    let mut producer = shop.spawn_producer(0, lines, &["--rate", "150"]);
    shop.wait_fulfilled(100).await;

    // Each time the real node drops its connections, every client reconnects: the fake first,
    // then the real node. Three rounds meet each kind of failure at least once.
    let started = Instant::now();
    for round in 1..=3u64 {
        let done = shop.store_counts().0;
        node.close_all_connections();
        wait_for("the worker to consume again", LONG, || async {
            (reconnects(&http).await >= round).then_some(())
        })
        .await;
        shop.wait_fulfilled((done + 50).min(ids.len() as u64)).await;
        assert!(w.running(), "the worker exited: {}", w.stderr());
    }
    let recovery = started.elapsed();
    let code = producer.wait_exit(LONG).await;
    assert_eq!(code, Some(0), "producer: {}", producer.stderr());
    assert_eq!(producer_confirmed(&producer.stdout()), ids.len());
    let dead = settle(&shop, ids.len()).await;
    assert!(w.running(), "the worker exited: {}", w.stderr());
    let served = [
        Failure::ConnectionForced,
        Failure::VhostDown,
        Failure::Dropped,
    ]
    .map(|f| fake.served(f));
    let t = settle_accounts(
        "9-handshake-failover",
        &shop,
        ids.len(),
        &ids,
        &ids_of(&dead),
        Some(recovery),
    );
    println!(
        "  (handshakes failed by the fake primary: {} x 320 CONNECTION_FORCED, {} x 530 vhost \
         down, {} x closed mid-handshake; worker reconnects {})",
        served[0],
        served[1],
        served[2],
        reconnects(&http).await
    );
    assert!(
        served.iter().all(|n| *n > 0),
        "each kind of failure was met: {served:?}"
    );
    assert_eq!(t.dead_lettered, 0);
    assert_eq!(t.fulfilled as usize, ids.len());
}
