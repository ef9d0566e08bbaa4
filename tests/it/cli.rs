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
