//! docker-compose.yml is validated without a Docker engine: by `docker-compose config` (which
//! checks it against the Compose schema) and by reading what it declares.

use std::process::Command;

fn compose(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("docker-compose")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("docker-compose is installed by scripts/ensure-tools");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn compose_file_is_valid_and_loads_the_topology_into_rabbitmq_with_a_healthcheck() {
    let (ok, config, err) = compose(&["config"]);
    assert!(ok, "docker-compose config failed: {err}");
    for needle in [
        "rabbitmq:3.13-management",
        "target: 15672",
        "definitions.json",
        "healthcheck",
        "condition: service_healthy",
    ] {
        assert!(config.contains(needle), "compose config lacks {needle}");
    }
    let (ok, services, err) = compose(&["config", "--services"]);
    assert!(ok, "{err}");
    for s in [
        "rabbitmq",
        "fulfillment",
        "notifications",
        "analytics",
        "recommendations",
        "inventory",
    ] {
        assert!(services.lines().any(|l| l == s), "service {s} missing");
    }
}

#[test]
fn cluster_profile_has_three_rabbitmq_nodes() {
    let (ok, services, err) = compose(&["--profile", "cluster", "config", "--services"]);
    assert!(ok, "{err}");
    for s in ["rabbit1", "rabbit2", "rabbit3"] {
        assert!(services.lines().any(|l| l == s), "cluster node {s} missing");
    }
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/rabbitmq-cluster.conf"
    ))
    .unwrap();
    assert!(
        conf.contains("rabbit@rabbit3") && conf.contains("quorum_queue.initial_cluster_size = 3")
    );
}

#[test]
fn definitions_file_mounted_by_compose_exists() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/topology/definitions.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(v["queues"].as_array().is_some_and(|q| !q.is_empty()));
}
