//! The `burrow` binary as an operator runs it.

use std::process::Command;

use crate::helpers::ONE_ORDER;

/// Runs `binary` with `args` and `env` (RUST_LOG off); returns (exit code, stdout, stderr).
fn run(binary: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(binary)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "off")
        .envs(env.iter().copied())
        .output()
        .expect("running the binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BURROW: &str = env!("CARGO_BIN_EXE_burrow");
const PRODUCER: &str = env!("CARGO_BIN_EXE_producer");
const WORKER: &str = env!("CARGO_BIN_EXE_worker");

#[test]
fn a_malformed_command_line_exits_64_and_help_exits_0() {
    for (binary, args) in [
        (BURROW, &["topology", "--no-such-flag"][..]),
        (BURROW, &["status", "--interval", "0"]),
        (
            PRODUCER,
            &["orders", "--count", "1", "--invalid-ratio", "2"],
        ),
        (PRODUCER, &["order", "--customer", "cus_1"]),
        (WORKER, &["no-such-service"]),
        (WORKER, &["fulfillment", "--carrier-failure-rate", "1.5"]),
    ] {
        let (code, stdout, stderr) = run(binary, args, &[]);
        assert_eq!(code, Some(64), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.starts_with("error: "),
            "{args:?}: clap says why: {stderr}"
        );
    }
    let (code, stdout, _) = run(BURROW, &["--help"], &[]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("Usage:"), "{stdout}");
}

#[test]
fn an_invalid_order_exits_65_before_anything_is_sent() {
    // Nothing listens on port 1: the order is refused before any connection is tried.
    let (code, stdout, stderr) = run(
        PRODUCER,
        &[
            "order",
            "--customer",
            "cus_1",
            "--email",
            "not-an-address",
            "--item",
            "SKU-1:1:100",
        ],
        &[("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")],
    );
    assert_eq!(code, Some(65), "{stdout}{stderr}");
    assert!(stderr.contains("email"), "{stderr}");
}

#[test]
fn a_malformed_setting_exits_78() {
    let (code, stdout, stderr) = run(
        BURROW,
        &["topology", "export", "--out", "/dev/null"],
        &[("BURROW__WORKER__CONCURRENCY", "many")],
    );
    assert_eq!(code, Some(78), "{stdout}{stderr}");
    assert!(stderr.contains("reading settings"), "{stderr}");
}

#[test]
fn refused_credentials_exit_77_without_the_password() {
    let (code, stdout, stderr) = run(
        PRODUCER,
        &ONE_ORDER,
        &[("AMQP_URL", "amqp://nobody:wrong-s3cret@127.0.0.1:5672/%2f")],
    );
    assert_eq!(code, Some(77), "broker: {stdout}{stderr}");
    assert!(!stderr.contains("wrong-s3cret"), "{stderr}");
    let (code, stdout, stderr) = run(
        BURROW,
        &["status"],
        &[(
            "RABBITMQ_MANAGEMENT_URL",
            "http://nobody:wrong-s3cret@127.0.0.1:15672",
        )],
    );
    assert_eq!(code, Some(77), "management API: {stdout}{stderr}");
    assert!(!stderr.contains("wrong-s3cret"), "{stderr}");
}

/// Something else failed: here drift, an empty vhost against the topology.
#[tokio::test]
async fn drift_exits_1() {
    let t = crate::helpers::TestVhost::new("exit-drift").await;
    let (code, stdout, stderr) = t.burrow(&["topology", "verify"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.contains("drift:"), "{stdout}");
}

/// The line of `stderr` that states the error (empty when there is none).
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default()
}

/// A vhost without the topology: the order is refused with the broker's reason and the fix.
#[tokio::test]
async fn an_order_to_a_vhost_without_the_topology_names_the_fix() {
    let t = crate::helpers::TestVhost::new("no-topology").await;
    let args = ["order", "--customer", "cus_1", "--email", "a@example.com"];
    let (code, stdout, stderr) =
        t.producer(&[&args[..], &["--item", "SKU-1:1:100"]].concat(), None);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let error = error_line(&stderr);
    assert!(
        error.contains("no exchange 'orders'") && error.ends_with("run `burrow topology apply`"),
        "{stderr}"
    );
    assert_eq!(error.matches("NOT_FOUND").count(), 1, "said once: {stderr}");
}

/// The bulk commands against a vhost without the topology stop at once with the broker's reason
/// and the fix, instead of re-sending into the missing exchange until interrupted.
#[tokio::test]
async fn bulk_publishing_to_a_vhost_without_the_topology_stops_and_names_the_fix() {
    let t = crate::helpers::TestVhost::new("no-topology-bulk").await;
    for (args, exchange) in [
        (&["orders", "--count", "5"][..], "orders"),
        (&["orders", "--count", "5", "--no-events"][..], "orders"),
        (&["activity", "--count", "5"][..], "activity"),
    ] {
        let (code, stdout, stderr) = t.producer(args, None);
        assert_eq!(code, 1, "{args:?}: {stdout}{stderr}");
        let error = error_line(&stderr);
        assert!(
            error.contains(&format!("no exchange '{exchange}'"))
                && error.ends_with("run `burrow topology apply`"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn topology_apply_against_an_unreachable_broker_says_so_in_one_line_and_exits_69() {
    let output = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["topology", "apply"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("AMQP_URL", "amqp://ann:s3cret@127.0.0.1:1/%2f")
        .env_remove("RUST_LOG")
        .output()
        .expect("running burrow");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(69),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr: {stderr}");
    assert!(
        lines[0].contains(
            "cannot reach RabbitMQ at amqp://ann:***@127.0.0.1:1/%2f: connection refused"
        ),
        "{stderr}"
    );
    assert!(!stdout.contains("s3cret") && !stderr.contains("s3cret"));
}

#[test]
fn topology_export_writes_the_committed_definitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("definitions.json");
    let status = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["topology", "export", "--out"])
        .arg(&out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("running burrow");
    assert!(status.success());
    let written = std::fs::read_to_string(out).expect("written");
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/topology/definitions.json"
    ))
    .expect("committed");
    assert_eq!(written, committed);
}

/// A binary copied to a host runs with nothing but `AMQP_URL`: from a directory without
/// `topology/`, with no other setting, it applies and verifies the built-in topology.
#[tokio::test]
async fn the_binaries_run_from_any_directory_with_nothing_but_amqp_url() {
    let t = crate::helpers::TestVhost::new("anywhere").await;
    let home = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_burrow"))
            .args(args)
            .current_dir(home.path())
            .env_clear()
            .env("HOME", home.path())
            .env("AMQP_URL", t.amqp_url().expose())
            .env(
                "RABBITMQ_MANAGEMENT_URL",
                t.settings.management.url.expose(),
            )
            .output()
            .expect("running burrow");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run(&["topology", "apply"]);
    assert_eq!(code, Some(0), "apply: {stdout}{stderr}");
    let (code, stdout, stderr) = run(&["topology", "verify"]);
    assert_eq!(code, Some(0), "verify: {stdout}{stderr}");
    assert!(!home.path().join("topology").exists());
}

/// `burrow status` pointed at a closed AMQP port never reports on the local broker instead.
#[test]
fn status_for_an_amqp_url_whose_broker_is_not_the_management_apis_says_so() {
    let output = Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["status"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env_remove("RABBITMQ_MANAGEMENT_URL")
        .env_remove("RUST_LOG")
        .output()
        .expect("running burrow");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.trim().is_empty(), "no report: {stdout}");
    assert!(stderr.contains("not on port 1"), "{stderr}");
    assert!(stderr.contains("guest:***@"), "{stderr}");
}
