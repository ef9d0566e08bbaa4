//! `burrow run`: a backlog scales fulfillment up and, once drained, back down with nothing
//! lost, duplicated or dead-lettered; a killed worker is replaced; SIGTERM leaves no worker
//! behind; a bad `--service` is a usage error naming the flag.

use std::collections::HashSet;
use std::time::Duration;

use burrow::children::{Lines, Process, Signal};
use burrow::supervisor::state::{state_path, ServiceState, SupervisorState};

use crate::helpers::{order_body, wait_for, TestVhost};

const LONG: Duration = Duration::from_secs(180);

/// Small targets and cooldowns, so that a test sees a whole scale-up and scale-down in a minute.
const FAST_SUPERVISOR: [(&str, &str); 7] = [
    ("BURROW__SUPERVISOR__INTERVAL_MS", "500"),
    ("BURROW__SUPERVISOR__TARGET_DRAIN_SECS", "2"),
    ("BURROW__SUPERVISOR__IDLE_SECS", "3"),
    ("BURROW__SUPERVISOR__SCALE_UP_COOLDOWN_SECS", "3"),
    ("BURROW__SUPERVISOR__SCALE_DOWN_COOLDOWN_SECS", "3"),
    ("BURROW__SUPERVISOR__RESTART_BACKOFF_MS", "200"),
    ("BURROW__SUPERVISOR__RESTART_BACKOFF_MAX_MS", "2000"),
];

/// A running `burrow run`, its log lines and the state it writes.
struct Supervisor {
    process: Process,
    lines: Lines,
    state_file: std::path::PathBuf,
}

impl Supervisor {
    /// Starts `burrow run <args>` against `t`'s vhost with the fast settings and `env`.
    fn start(t: &TestVhost, args: &[&str], env: &[(&str, &str)]) -> Self {
        let test_log = std::env::var("TEST_LOG").ok();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_burrow"));
        cmd.arg("run")
            .args(args)
            .envs(t.env())
            .envs(FAST_SUPERVISOR)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                format!(
                    "{},burrow::supervisor=info,burrow::http=info",
                    test_log.as_deref().unwrap_or("warn")
                ),
            )
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut process = Process::spawn("burrow run", cmd).expect("spawning burrow run");
        let lines = process.stderr_lines(test_log.map(|_| "burrow run".to_owned()));
        Self {
            process,
            lines,
            state_file: state_path(&t.settings.store.dir),
        }
    }

    /// The state it last wrote, if any.
    fn state(&self) -> Option<SupervisorState> {
        SupervisorState::read(&self.state_file).expect("a readable state file")
    }

    /// Its state of `service`, once it wrote one.
    fn service(&self, service: &str) -> Option<ServiceState> {
        self.state()?
            .services
            .into_iter()
            .find(|s| s.service == service)
    }

    /// Waits until `service` runs `n` workers as wanted; returns their pids.
    async fn wait_running(&self, service: &str, n: u32) -> Vec<u32> {
        wait_for(
            &format!("{n} {service} worker(s) running"),
            LONG,
            || async {
                self.service(service)
                    .filter(|s| s.running == n && s.desired == n)
                    .map(|s| s.pids)
            },
        )
        .await
    }

    /// SIGTERM, then the exit code.
    async fn terminate(mut self) -> (Option<i32>, Vec<String>) {
        self.process.signal(Signal::SIGTERM);
        let status = self.process.wait_exit(LONG).await;
        (status.and_then(|s| s.code()), self.lines.drain())
    }
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn a_slow_backlog_scales_fulfillment_up_and_back_down_fulfilling_every_order_once() {
    let t = TestVhost::new("sup-scale").await.with_fast_topology().await;
    let orders: Vec<_> = (0..3000).map(|_| order_body("SKU-1")).collect();
    let ids: HashSet<String> = orders.iter().map(|(id, _)| id.clone()).collect();
    t.publish_raw(orders).await;

    // A slow carrier and few handlers per worker: one worker would need about 75 s.
    let sup = Supervisor::start(
        &t,
        &["--service", "fulfillment=1..4"],
        &[
            ("BURROW__CARRIER__LATENCY_MS", "100"),
            ("BURROW__WORKER__CONCURRENCY", "4"),
            ("BURROW__WORKER__PREFETCH", "8"),
        ],
    );
    let most = wait_for(
        "fulfillment to scale to 3 workers or more",
        LONG,
        || async {
            sup.service("fulfillment")
                .filter(|s| s.running >= 3)
                .map(|s| s.running)
        },
    )
    .await;
    wait_for("all 3000 orders fulfilled", LONG, || async {
        (t.store_counts().0 >= 3000).then_some(())
    })
    .await;
    sup.wait_running("fulfillment", 1).await;

    assert_eq!(
        t.fulfilled_ids().into_iter().collect::<HashSet<_>>(),
        ids,
        "every order fulfilled"
    );
    assert_eq!(
        t.store_counts(),
        (3000, 0),
        "each order fulfilled once, no duplicate delivery reached the store"
    );
    assert_eq!(t.ready("orders.dead").await, 0, "orders.dead is empty");
    let state = sup.service("fulfillment").expect("state");
    assert!(
        state
            .last_decision
            .as_deref()
            .is_some_and(|d| d.contains("→1: queue empty and idle")),
        "the last change was a scale-down to 1 because the queue is idle: {state:?}"
    );
    let (code, lines) = sup.terminate().await;
    assert_eq!(code, Some(0), "burrow run exits 0 on SIGTERM");
    let ups: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("scale fulfillment") && l.contains("ready, draining in"))
        .collect();
    assert!(
        !ups.is_empty(),
        "scale-ups are logged with the backlog and drain time (reached {most}): {lines:#?}"
    );
}

#[tokio::test]
async fn a_worker_killed_with_sigkill_is_replaced() {
    let t = TestVhost::new("sup-kill").await.with_fast_topology().await;
    let sup = Supervisor::start(&t, &["--service", "fulfillment=2"], &[]);
    let pids = sup.wait_running("fulfillment", 2).await;
    let victim = pids[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(victim).expect("pid")),
        Signal::SIGKILL,
    )
    .expect("kill -9");
    let replaced = wait_for("the killed worker to be replaced", LONG, || async {
        sup.service("fulfillment")
            .filter(|s| s.running == 2 && !s.pids.contains(&victim) && s.restarts >= 1)
            .map(|s| s.pids)
    })
    .await;
    assert!(replaced.contains(&pids[1]), "the other worker kept running");
    assert!(!process_exists(victim), "the killed worker was reaped");

    // The replacement works: an order is fulfilled.
    let (id, body) = order_body("SKU-1");
    t.publish_raw(vec![(id.clone(), body)]).await;
    wait_for("the order fulfilled", LONG, || async {
        t.fulfilled_ids().contains(&id).then_some(())
    })
    .await;
    let (code, lines) = sup.terminate().await;
    assert_eq!(code, Some(0));
    assert!(
        lines.iter().any(|l| l.contains(&format!(
            "fulfillment worker {victim} exited on its own (killed by a signal)"
        ))),
        "the exit is logged: {lines:#?}"
    );
}

#[tokio::test]
async fn sigterm_to_burrow_run_stops_every_worker_and_exits_0() {
    let t = TestVhost::new("sup-term").await.with_fast_topology().await;
    let mut sup = Supervisor::start(
        &t,
        &[
            "--service",
            "fulfillment=1..3",
            "--service",
            "notifications=1..2",
            "--service",
            "analytics=1",
            "--service",
            "recommendations=1",
            "--http",
            "127.0.0.1:0",
        ],
        &[],
    );
    let addr = sup
        .lines
        .find(LONG, crate::services::listening_addr)
        .await
        .expect("burrow run logs its HTTP address");
    let mut pids = Vec::new();
    for service in [
        "fulfillment",
        "notifications",
        "analytics",
        "recommendations",
    ] {
        pids.extend(sup.wait_running(service, 1).await);
    }
    assert_eq!(pids.len(), 4);

    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    for service in [
        "fulfillment",
        "notifications",
        "analytics",
        "recommendations",
    ] {
        for metric in ["desired_workers", "running_workers"] {
            let series = format!("burrow_supervisor_{metric}{{service=\"{service}\"}} 1");
            assert!(metrics.contains(&series), "{series} in {metrics}");
        }
    }
    let (code, stdout, stderr) = t.burrow(&["status"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("supervisor: burrow run") && stdout.contains("fulfillment"),
        "burrow status shows the supervisor's services: {stdout}"
    );

    let (code, _) = sup.terminate().await;
    assert_eq!(code, Some(0), "burrow run exits 0 on SIGTERM");
    for pid in pids {
        assert!(!process_exists(pid), "worker {pid} is gone");
    }
    let state = SupervisorState::read(&state_path(&t.settings.store.dir))
        .expect("state")
        .expect("present");
    assert!(state.stopped && !state.alive());
    let (_, stdout, _) = t.burrow(&["status"]);
    assert!(stdout.contains("supervisor: not running"), "{stdout}");
}

#[tokio::test]
async fn a_management_api_that_does_not_answer_freezes_the_counts_and_says_so() {
    let t = TestVhost::new("sup-blind").await.with_fast_topology().await;
    let sup = Supervisor::start(
        &t,
        &["--service", "fulfillment=2..4"],
        &[("RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:1")],
    );
    let state = wait_for("a frozen decision", LONG, || async {
        sup.service("fulfillment").filter(|s| {
            s.running == 2
                && s.last_decision
                    .as_deref()
                    .is_some_and(|d| d.contains("counts frozen"))
        })
    })
    .await;
    assert_eq!((state.desired, state.running), (2, 2), "{state:?}");
    let (code, lines) = sup.terminate().await;
    assert_eq!(code, Some(0));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("no data from the broker, counts frozen")),
        "{lines:#?}"
    );
}

#[test]
fn bad_service_values_are_usage_errors_naming_the_flag() {
    for (value, why) in [
        ("billing=1..2", "unknown service 'billing'"),
        ("fulfillment=5..2", "MIN 5 is greater than MAX 2"),
        ("fulfillment=0..0", "MAX is 0"),
        ("fulfillment", "expected NAME=MIN..MAX"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
            .args(["run", "--service", value])
            .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
            .output()
            .expect("running burrow");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{value}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "invalid value '{value}' for '--service <NAME=MIN..MAX>'"
            )),
            "{value}: {stderr}"
        );
        assert!(stderr.contains(why), "{value}: {stderr}");
    }
}
