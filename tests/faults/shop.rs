//! The shop under test, pointed at private nodes: a directory with the fulfillment store and a
//! fast topology, the real `worker`, `producer` and `burrow` binaries as child processes, an
//! in-process confirmed publisher, queue inspection, and the end-of-scenario tally.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use burrow::children::{Process, Signal};

use crate::harness::{self, Node};
use burrow::publisher::{BulkPublisher, Confirm, Outgoing};
use burrow::settings::{AmqpSettings, SecretUrl};

pub use crate::common::{fast_topology_text, order_body as order, wait_for};

/// Scenario deadlines: generous for a slow 2-core machine; conditions end waits early.
pub const LONG: Duration = Duration::from_secs(180);

/// A scenario's stage: the suite's serial lock, held for the scenario, its private nodes and the
/// shop on them with the topology applied. Keep it in a local for the whole scenario: dropping
/// it removes the shop, then the nodes, then lets the next scenario run.
pub struct Stage {
    pub shop: Shop,
    pub nodes: Vec<Node>,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Stage {
    /// One node, `burrowf1`.
    pub async fn single() -> Stage {
        let serial = harness::SERIAL.lock().await;
        Stage::on(vec![Node::start(1)], serial)
    }

    /// A 3-node cluster; clients get node 1 first.
    pub async fn cluster() -> Stage {
        let serial = harness::SERIAL.lock().await;
        Stage::on(harness::cluster(3), serial)
    }

    fn on(nodes: Vec<Node>, serial: tokio::sync::MutexGuard<'static, ()>) -> Stage {
        let shop = Shop::new(nodes.iter().map(Node::url).collect());
        shop.apply_topology_ok();
        Stage {
            shop,
            nodes,
            _serial: serial,
        }
    }
}

/// One scenario's shop: clients get `urls[0]` and the rest as failover URLs.
pub struct Shop {
    pub dir: tempfile::TempDir,
    pub urls: Vec<String>,
    pub amqp: AmqpSettings,
    workers: std::sync::atomic::AtomicU32,
}

impl Shop {
    pub fn new(urls: Vec<String>) -> Shop {
        let dir = tempfile::Builder::new()
            .prefix("burrow-faults-shop-")
            .tempdir()
            .expect("temp dir");
        std::fs::write(dir.path().join("shop.toml"), fast_topology_text()).expect("topology");
        let amqp = AmqpSettings {
            url: SecretUrl::new(urls[0].clone()),
            heartbeat_secs: 10,
            frame_max: 131072,
            connect_timeout_ms: 5000,
            failover_urls: urls[1..].iter().cloned().map(SecretUrl::new).collect(),
            tls_ca_file: None,
        };
        Shop {
            dir,
            urls,
            amqp,
            workers: Default::default(),
        }
    }

    /// The same shop with another order of nodes (a client whose primary is another node).
    pub fn urls_from(&self, first: usize) -> Vec<String> {
        let n = self.urls.len();
        (0..n).map(|i| self.urls[(first + i) % n].clone()).collect()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Environment pointing a burrow binary at the nodes (in the order of `urls`) and this shop.
    pub fn env_for(&self, urls: &[String]) -> Vec<(String, String)> {
        vec![
            ("AMQP_URL".into(), urls[0].clone()),
            ("AMQP_FAILOVER_URLS".into(), urls[1..].join(",")),
            (
                "BURROW__TOPOLOGY".into(),
                self.path("shop.toml").display().to_string(),
            ),
            (
                "BURROW__STORE__DIR".into(),
                self.dir.path().display().to_string(),
            ),
            (
                "BURROW__MAIL__OUTBOX".into(),
                self.path("outbox").display().to_string(),
            ),
            ("BURROW__AMQP__HEARTBEAT_SECS".into(), "10".into()),
            ("BURROW__PRODUCER__CONFIRM_TIMEOUT_MS".into(), "5000".into()),
            (
                "RUST_LOG".into(),
                std::env::var("TEST_LOG").unwrap_or_else(|_| {
                    "info,lapin=warn,lapin::channel=off,lapin::io_loop=off".into()
                }),
            ),
        ]
    }

    /// `burrow topology apply`; returns (exit code, stdout + stderr).
    pub fn apply_topology(&self) -> (i32, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
            .args(["topology", "apply"])
            .envs(self.env_for(&self.urls))
            .output()
            .expect("burrow topology apply");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// `burrow topology apply`, which must succeed without drift.
    pub fn apply_topology_ok(&self) {
        let (code, text) = self.apply_topology();
        assert_eq!(code, 0, "topology apply: {text}");
    }

    /// Starts `worker fulfillment` with `args` and `env`, primary node `urls[first]`; its log
    /// goes to `worker-<n>.log` in the shop directory.
    pub fn spawn_worker(&self, first: usize, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut all = vec!["--no-events", "--carrier-latency-ms", "1"];
        all.extend_from_slice(args);
        self.spawn_service("fulfillment", first, &all, env)
    }

    /// Starts `worker <service>` with `args` and `env`, primary node `urls[first]`; its log
    /// goes to `worker-<n>.log` in the shop directory.
    pub fn spawn_service(
        &self,
        service: &str,
        first: usize,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let n = 1 + self
            .workers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.path(&format!("worker-{n}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_worker"));
        cmd.arg(service)
            .args(args)
            .envs(self.env_for(&self.urls_from(first)));
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn(cmd, log, None)
    }

    /// Starts `producer orders --file - --no-events` with `lines` on stdin and `args`, primary
    /// node `urls[first]`; its stdout and stderr go to `producer.out` / `producer.log`.
    pub fn spawn_producer(&self, first: usize, lines: String, args: &[&str]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_producer"));
        cmd.args(["orders", "--file", "-", "--no-events"])
            .args(args)
            .envs(self.env_for(&self.urls_from(first)));
        Proc::spawn(cmd, self.path("producer.log"), Some(lines))
    }

    /// Starts `producer orders --file - --no-events` fed by a thread that writes one valid order
    /// after another to its stdin until [`Feed::stop`]: orders flow for as long as a scenario
    /// lasts. The pipe's buffer and `--rate` pace the thread.
    pub fn spawn_producer_feed(&self, first: usize, args: &[&str]) -> (Proc, Feed) {
        let mut all = vec!["--no-events"];
        all.extend_from_slice(args);
        self.spawn_orders_feed(first, &all)
    }

    /// Like [`Shop::spawn_producer_feed`], without `--no-events` unless `args` say so (each
    /// order then also publishes its `order.placed` activity event).
    pub fn spawn_orders_feed(&self, first: usize, args: &[&str]) -> (Proc, Feed) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_producer"));
        cmd.args(["orders", "--file", "-"])
            .args(args)
            .envs(self.env_for(&self.urls_from(first)));
        let mut proc = Proc::spawn_piped(cmd, self.path("producer.log"));
        let mut input = proc.process.take_stdin().expect("stdin is piped");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut written = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let (id, mut body) = order("SKU-1");
                body.push(b'\n');
                if input.write_all(&body).await.is_err() {
                    break; // the producer is gone; the test says so
                }
                written.push(id);
            }
            written // dropping `input` closes stdin: the producer publishes the rest and exits
        });
        (
            proc,
            Feed {
                stop,
                writer: Some(writer),
            },
        )
    }

    /// Publishes `(message_id, body)` pairs to `orders` in-process, confirmed; returns the ids
    /// confirmed.
    pub async fn publish(&self, bodies: Vec<(String, Vec<u8>)>) -> Vec<String> {
        let pool = burrow::broker::pool(&self.amqp, "fault test").expect("pool");
        let msgs = bodies.into_iter().map(|(id, body)| Outgoing {
            exchange: "orders".into(),
            routing_key: "order.placed".into(),
            body,
            properties: burrow::message::properties("order", &id),
            label: 0,
        });
        let mut confirmed = Vec::new();
        BulkPublisher::new(pool.clone(), 256, None)
            .run(msgs, |msg, fate| {
                if *fate == Confirm::Confirmed {
                    let id = msg.properties.message_id().as_ref().map(|s| s.to_string());
                    confirmed.push(id.unwrap_or_default());
                }
            })
            .await
            .expect("publish");
        pool.close();
        confirmed
    }

    /// Messages ready in `queue`.
    pub async fn ready(&self, queue: &str) -> u32 {
        // A node the scenario restarted may take a passive declare or a close and never answer
        // (a chaos run hung for minutes once after its faults): 0 after 20 s, like no answer.
        let ask = async {
            let Ok(conn) = burrow::broker::connect(&self.amqp, "fault test").await else {
                return 0;
            };
            let count = burrow::broker::queue_state(&conn, queue)
                .await
                .map_or(0, |q| q.message_count());
            let _ =
                tokio::time::timeout(Duration::from_secs(5), conn.close(200, "done".into())).await;
            count
        };
        tokio::time::timeout(Duration::from_secs(20), ask)
            .await
            .unwrap_or(0)
    }

    /// Takes every message out of `queue`.
    pub async fn drain(&self, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
        let conn = burrow::broker::connect(&self.amqp, "fault test")
            .await
            .expect("connect");
        let out = crate::common::drain_queue(&conn, queue).await;
        let _ = conn.close(200, "done".into()).await;
        out
    }

    /// (fulfilled, duplicates suppressed) in the store.
    pub fn store_counts(&self) -> (u64, u64) {
        let path = self.path("fulfillment.db");
        if !path.exists() {
            return (0, 0);
        }
        let Ok(conn) = rusqlite::Connection::open(path) else {
            return (0, 0);
        };
        conn.busy_timeout(Duration::from_secs(10)).ok();
        conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(duplicates),0) FROM fulfillments",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .unwrap_or((0, 0))
    }

    /// Every order id in the store.
    pub fn fulfilled_ids(&self) -> HashSet<String> {
        let conn = rusqlite::Connection::open(self.path("fulfillment.db")).expect("store");
        conn.busy_timeout(Duration::from_secs(10)).ok();
        let mut stmt = conn
            .prepare("SELECT order_id FROM fulfillments")
            .expect("query");
        let ids = stmt
            .query_map([], |r| r.get(0))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect();
        ids
    }

    /// Waits until the store holds `n` orders.
    pub async fn wait_fulfilled(&self, n: u64) {
        wait_for(&format!("{n} orders fulfilled"), LONG, || async {
            (self.store_counts().0 >= n).then_some(())
        })
        .await;
    }

    /// How long after now the fulfilled count first grows past its current value.
    pub async fn time_to_progress(&self, total: usize) -> Duration {
        let start = Instant::now();
        let before = self.store_counts().0;
        // On a slow machine the survivors may finish every order before this is first read:
        // then there is nothing left to make progress on, and the final tally still checks that
        // nothing was lost.
        wait_for("fulfilment to resume", LONG, || async {
            let now = self.store_counts().0;
            (now > before || now >= total as u64).then_some(())
        })
        .await;
        start.elapsed()
    }
}

impl Drop for Shop {
    /// On a failed scenario, keeps the processes' logs (the temp dir goes away) and says where.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let keep = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fault-logs-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&keep);
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log" || x == "out") {
                    let _ = std::fs::copy(&p, keep.join(e.file_name()));
                }
            }
        }
        eprintln!("logs of the failed scenario kept in {}", keep.display());
    }
}

pub use tokio::process::Command;

/// A burrow binary as a [`Process`] whose stderr goes to a log file (and stdout to the same
/// name with `.out`), so a scenario can read what it said; killed on drop.
pub struct Proc {
    pub process: Process,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd`, writing `stdin` (when given) to its standard input on a task of its own.
    pub fn spawn(cmd: Command, log: PathBuf, stdin: Option<String>) -> Proc {
        let Some(text) = stdin else {
            let mut cmd = cmd;
            cmd.stdin(Stdio::null());
            return Proc::with_output(cmd, log);
        };
        let mut proc = Proc::spawn_piped(cmd, log);
        let mut input = proc.process.take_stdin().expect("stdin is piped");
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = input.write_all(text.as_bytes()).await;
        });
        proc
    }

    /// Starts `cmd` with a piped stdin, taken with `process.take_stdin()`.
    fn spawn_piped(mut cmd: Command, log: PathBuf) -> Proc {
        cmd.stdin(Stdio::piped());
        Proc::with_output(cmd, log)
    }

    fn with_output(mut cmd: Command, log: PathBuf) -> Proc {
        let err = std::fs::File::create(&log).expect("log file");
        let out = std::fs::File::create(log.with_extension("out")).expect("out file");
        cmd.stdout(out).stderr(err);
        let name = log.file_stem().map(|s| s.to_string_lossy().into_owned());
        let process =
            Process::spawn(name.unwrap_or_default(), cmd).expect("spawning a burrow binary");
        Proc { process, log }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends the signal named like `kill -NAME` does (`TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let signal: Signal = format!("SIG{name}").parse().expect("a signal name");
        self.process.signal(signal);
    }

    pub fn running(&mut self) -> bool {
        self.process.running()
    }

    /// Waits for the exit, up to `timeout` (and panics past it); returns the exit code (`None`
    /// for a signal).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let status = self.process.wait_exit(timeout).await;
        let status = status.unwrap_or_else(|| {
            panic!(
                "{} still runs after {timeout:?}: {}",
                self.process.name(),
                self.stderr()
            )
        });
        status.code()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.log.with_extension("out")).unwrap_or_default()
    }
}

/// The task feeding a producer's stdin (see [`Shop::spawn_producer_feed`]).
pub struct Feed {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writer: Option<tokio::task::JoinHandle<Vec<String>>>,
}

impl Feed {
    /// Stops writing and closes the producer's stdin; returns the ids of every order written
    /// (the producer publishes all of them before it exits).
    pub async fn stop(mut self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.writer
            .take()
            .expect("stopped once")
            .await
            .expect("feeder task")
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `n` valid orders as JSON lines for `producer orders --file -`, with their ids.
pub fn order_lines(n: usize) -> (Vec<String>, String) {
    let orders: Vec<_> = (0..n).map(|_| order("SKU-1")).collect();
    let mut text = String::new();
    for (_, body) in &orders {
        text.push_str(std::str::from_utf8(body).expect("utf-8"));
        text.push('\n');
    }
    (orders.into_iter().map(|(id, _)| id).collect(), text)
}

/// The numbers of one scenario.
#[derive(Debug, Default)]
pub struct Tally {
    pub published: usize,
    pub confirmed: usize,
    pub fulfilled: u64,
    pub duplicates: u64,
    pub dead_lettered: usize,
    pub lost: usize,
    pub recovery: Option<Duration>,
}

/// Checks that every id of `confirmed` is in the store or among `dead` (message ids of
/// `orders.dead`), fills the tally and prints (and appends to `faults-report.txt`) one line.
pub fn settle_accounts(
    scenario: &str,
    shop: &Shop,
    published: usize,
    confirmed: &[String],
    dead: &HashSet<String>,
    recovery: Option<Duration>,
) -> Tally {
    let fulfilled = shop.fulfilled_ids();
    let (count, duplicates) = shop.store_counts();
    let lost: Vec<&String> = confirmed
        .iter()
        .filter(|id| !fulfilled.contains(*id) && !dead.contains(*id))
        .collect();
    let tally = Tally {
        published,
        confirmed: confirmed.len(),
        fulfilled: count,
        duplicates,
        dead_lettered: dead.len(),
        lost: lost.len(),
        recovery,
    };
    let line = format!(
        "scenario={scenario} published={} confirmed={} fulfilled={} duplicates_suppressed={} \
         dead_lettered={} lost={} recovery={}",
        tally.published,
        tally.confirmed,
        tally.fulfilled,
        tally.duplicates,
        tally.dead_lettered,
        tally.lost,
        tally
            .recovery
            .map_or_else(|| "-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()))
    );
    println!("{line}");
    let report = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults-report.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(report)
    {
        let _ = writeln!(f, "{line}");
    }
    assert!(lost.is_empty(), "{scenario}: lost orders: {lost:?}");
    tally
}

/// Message ids of dead letters.
pub fn ids_of(dead: &[lapin::message::BasicGetMessage]) -> HashSet<String> {
    dead.iter()
        .filter_map(|m| m.delivery.properties.message_id().as_ref())
        .map(|s| s.to_string())
        .collect()
}
