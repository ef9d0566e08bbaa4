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

/// The `tracing` profile runs Jaeger with its OTLP/HTTP port, and every worker exports to the
/// endpoint given where compose runs (none when it is not given).
#[test]
fn tracing_profile_runs_jaeger_and_workers_export_where_they_are_told() {
    let (ok, services, err) = compose(&["--profile", "tracing", "config", "--services"]);
    assert!(ok, "{err}");
    assert!(services.lines().any(|l| l == "jaeger"), "jaeger missing");
    assert_eq!(
        compose_json()["services"]["jaeger"]["profiles"],
        serde_json::json!(["tracing"]),
        "jaeger runs only with the tracing profile"
    );
    let endpoint = |value: Option<&str>| {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["--profile", "tracing", "config"]);
        match value {
            Some(v) => cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", v),
            None => cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT"),
        };
        let out = cmd.output().expect("docker-compose");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let told = endpoint(Some("http://jaeger:4318"));
    assert!(told.contains("target: 4318"), "{told}");
    let exporting = told
        .matches("OTEL_EXPORTER_OTLP_ENDPOINT: http://jaeger:4318")
        .count();
    // Every burrow program: the workers and the order service.
    assert_eq!(exporting, WORKERS.len(), "{told}");
    assert!(!endpoint(None).contains("http://jaeger:4318"));
}

#[test]
fn definitions_file_mounted_by_compose_exists() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/topology/definitions.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(v["queues"].as_array().is_some_and(|q| !q.is_empty()));
}

/// `docker-compose config` as JSON (through PyYAML, which docker-compose itself runs on).
fn compose_json() -> serde_json::Value {
    let (ok, yaml, err) = compose(&["config"]);
    assert!(ok, "docker-compose config failed: {err}");
    let mut python = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with PyYAML (a dependency of docker-compose)");
    std::io::Write::write_all(&mut python.stdin.take().expect("stdin"), yaml.as_bytes())
        .expect("writing the config");
    let out = python.wait_with_output().expect("python3");
    assert!(out.status.success(), "converting the config to JSON");
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Each long-running service of the compose file and the user of topology/shop.toml it logs in
/// as.
const WORKERS: [(&str, &str); 6] = [
    ("fulfillment", "burrow-fulfillment"),
    ("notifications", "burrow-notifications"),
    ("analytics", "burrow-analytics"),
    ("recommendations", "burrow-recommendations"),
    ("inventory", "burrow-inventory"),
    ("orders", "burrow-producer"),
];

/// Every worker logs in as its own user of topology/shop.toml, with that user's password (the
/// one whose hash RabbitMQ loads from definitions.json at boot), never as guest.
#[test]
fn compose_workers_connect_as_their_least_privilege_users() {
    let (ok, _, err) = compose(&["config", "-q"]);
    assert!(ok, "docker-compose config -q: {err}");
    let config = compose_json();
    let topology = burrow::topology::Topology::parse(&repo_file("topology/shop.toml"))
        .expect("the topology parses");
    let definitions: serde_json::Value =
        serde_json::from_str(&repo_file("topology/definitions.json")).expect("definitions");
    for (worker, user_name) in WORKERS {
        let service = &config["services"][worker];
        let amqp = service["environment"]["AMQP_URL"]
            .as_str()
            .unwrap_or_else(|| panic!("{worker} has an AMQP_URL"));
        let url = url::Url::parse(amqp).expect("a URL");
        assert_eq!(url.username(), user_name, "{worker}");
        let user = topology
            .users
            .iter()
            .find(|u| u.name == user_name)
            .unwrap_or_else(|| panic!("{user_name} is in topology/shop.toml"));
        assert_eq!(url.password(), Some(user.password.expose()), "{worker}");
        assert!(
            user.permissions.configure == "^$" && !user.tags.iter().any(|t| t == "administrator"),
            "{user_name} is a least-privilege user"
        );
        let exported = definitions["users"]
            .as_array()
            .and_then(|users| users.iter().find(|u| u["name"] == user_name))
            .unwrap_or_else(|| panic!("{user_name} is in definitions.json"));
        assert_eq!(
            exported["password_hash"],
            burrow::topology::users::password_hash(user_name, user.password.expose()).as_str(),
            "the broker boots with {user_name}'s password"
        );
    }
}

/// A worker is healthy when its `/readyz` answers, on the port its `--http` serves.
#[test]
fn compose_workers_have_healthchecks_on_readyz() {
    let config = compose_json();
    for (worker, _) in WORKERS {
        let service = &config["services"][worker];
        let command: Vec<&str> = service["command"]
            .as_array()
            .expect("command")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let http = command
            .windows(2)
            .find(|w| w[0] == "--http")
            .map(|w| w[1])
            .unwrap_or_else(|| panic!("{worker} serves --http"));
        let port = http.rsplit(':').next().expect("a port");
        let test: Vec<&str> = service["healthcheck"]["test"]
            .as_array()
            .unwrap_or_else(|| panic!("{worker} has a healthcheck"))
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            test.contains(&format!("http://127.0.0.1:{port}/readyz").as_str()),
            "{worker}: {test:?}"
        );
    }
}

/// What matters in the image build: a small build context, dependencies cached in their own
/// layer, and CA certificates in the runtime image (amqps://).
#[test]
fn the_image_build_ignores_target_caches_dependencies_and_trusts_public_cas() {
    let ignored: Vec<String> = repo_file(".dockerignore")
        .lines()
        .map(|l| l.trim().trim_end_matches('/').to_owned())
        .collect();
    for entry in ["target", ".git", "var"] {
        assert!(
            ignored.iter().any(|l| l == entry),
            ".dockerignore lacks {entry}"
        );
    }
    let dockerfile = repo_file("Dockerfile");
    let stages: Vec<&str> = dockerfile.split("\nFROM ").collect();
    let build = stages
        .iter()
        .find(|s| s.contains("cargo build --release"))
        .expect("a build stage");
    let cook = build
        .find("cargo chef cook")
        .expect("dependencies are cooked");
    let sources = build.find("COPY . .").expect("the sources are copied");
    assert!(
        cook < sources,
        "dependencies are built before the sources arrive"
    );
    let runtime = stages.last().expect("a runtime stage");
    assert!(runtime.contains("ca-certificates"), "{runtime}");
    assert!(runtime.contains("/readyz"), "the image's own healthcheck");
}
