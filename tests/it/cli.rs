//! The `burrow` binary as an operator runs it.

use std::process::Command;

#[test]
fn topology_apply_against_an_unreachable_broker_says_so_in_one_line_and_exits_2() {
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
        Some(2),
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
