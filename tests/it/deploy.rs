//! `deploy/k8s`, checked without a cluster: every document validates against the strict schema
//! of its kind vendored in `deploy/k8s/schemas` (Kubernetes' Deployment and Secret, KEDA's
//! ScaledObject and TriggerAuthentication CRDs; `scripts/vendor-k8s-schemas` made them), a
//! misspelled field fails, and the manifests agree with burrow: each worker logs in as its own
//! least-privilege user of `topology/shop.toml`, each ScaledObject watches its service's queue.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use burrow::service::Service;
use serde::Deserialize;
use serde_json::Value;

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s")
}

/// Every YAML document of every `deploy/k8s/*.yaml`, with its file name.
fn manifests() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(k8s_dir())
        .expect("deploy/k8s")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("manifest");
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: not valid YAML: {e}"));
            if !value.is_null() {
                docs.push((name.clone(), value));
            }
        }
    }
    docs
}

/// The validators by `apiVersion` and `kind`.
struct Schemas(BTreeMap<(&'static str, &'static str), jsonschema::Validator>);

impl Schemas {
    fn load() -> Self {
        let mut map = BTreeMap::new();
        for (api, kind, file) in [
            ("apps/v1", "Deployment", "deployment-apps-v1.json"),
            ("v1", "Secret", "secret-v1.json"),
            (
                "keda.sh/v1alpha1",
                "ScaledObject",
                "scaledobject-keda-v1alpha1.json",
            ),
            (
                "keda.sh/v1alpha1",
                "TriggerAuthentication",
                "triggerauthentication-keda-v1alpha1.json",
            ),
        ] {
            let text = std::fs::read_to_string(k8s_dir().join("schemas").join(file))
                .unwrap_or_else(|e| panic!("schema {file}: {e}"));
            let schema: Value = serde_json::from_str(&text).expect("schema JSON");
            let validator = jsonschema::validator_for(&schema)
                .unwrap_or_else(|e| panic!("schema {file} compiles: {e}"));
            map.insert((api, kind), validator);
        }
        Self(map)
    }

    /// What is wrong with `doc`, one line each; empty when it is valid.
    fn problems(&self, doc: &Value) -> Vec<String> {
        let api = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        let Some((_, validator)) = self.0.iter().find(|((a, k), _)| *a == api && *k == kind) else {
            return vec![format!("no schema for {api} {kind}")];
        };
        validator
            .iter_errors(doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect()
    }
}

fn of_kind<'a>(docs: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .map(|(_, d)| d)
        .filter(|d| d["kind"] == kind)
        .collect()
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    of_kind(docs, kind)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The value of `key` in the Secret `secret` (`stringData`).
fn secret_value<'a>(docs: &'a [(String, Value)], secret: &str, key: &str) -> &'a str {
    find(docs, "Secret", secret)["stringData"][key]
        .as_str()
        .unwrap_or_else(|| panic!("secret {secret} has no key {key}"))
}

fn url_user(url: &str) -> String {
    url::Url::parse(url).expect("URL").username().to_owned()
}

/// The parameters KEDA's rabbitmq scaler reads from a trigger's metadata.
const RABBITMQ_TRIGGER_KEYS: [&str; 13] = [
    "host",
    "hostFromEnv",
    "protocol",
    "mode",
    "value",
    "activationValue",
    "queueName",
    "vhostName",
    "useRegex",
    "excludeUnacknowledged",
    "pageSize",
    "operation",
    "timeout",
];

#[test]
fn every_manifest_in_deploy_k8s_is_valid_against_the_schema_of_its_kind() {
    let schemas = Schemas::load();
    let docs = manifests();
    assert!(docs.len() >= 9, "found {} documents", docs.len());
    for (file, doc) in &docs {
        let problems = schemas.problems(doc);
        assert!(
            problems.is_empty(),
            "{file}: {} {}: {problems:#?}",
            doc["kind"],
            doc["metadata"]["name"]
        );
    }
}

#[test]
fn a_misspelled_or_mistyped_field_fails_the_schema_check() {
    let schemas = Schemas::load();
    let docs = manifests();
    let deployment = find(&docs, "Deployment", "burrow-fulfillment").clone();
    assert!(schemas.problems(&deployment).is_empty());

    let mut misspelled = deployment.clone();
    let container = &mut misspelled["spec"]["template"]["spec"]["containers"][0];
    let image = container["image"].take();
    container
        .as_object_mut()
        .expect("container")
        .remove("image");
    container["imagee"] = image;
    assert!(
        !schemas.problems(&misspelled).is_empty(),
        "`imagee` is not a container field"
    );
    let mut mistyped = deployment;
    mistyped["spec"]["replicas"] = Value::from("two");
    assert!(
        !schemas.problems(&mistyped).is_empty(),
        "replicas is a number"
    );

    let scaled = find(&docs, "ScaledObject", "burrow-fulfillment").clone();
    assert!(schemas.problems(&scaled).is_empty());
    let mut misspelled = scaled.clone();
    let spec = misspelled["spec"].as_object_mut().expect("spec");
    let max = spec.remove("maxReplicaCount").expect("maxReplicaCount");
    spec.insert("maxReplicas".into(), max);
    assert!(
        !schemas.problems(&misspelled).is_empty(),
        "`maxReplicas` is not a ScaledObject field"
    );
    let mut no_trigger = scaled;
    no_trigger["spec"]["triggers"] = Value::Array(Vec::new());
    assert!(
        !schemas.problems(&no_trigger).is_empty(),
        "a trigger is required"
    );
}

#[test]
fn each_service_runs_as_its_own_user_and_keda_watches_its_queue_as_the_read_only_scaler() {
    let docs = manifests();
    let topology = burrow::topology::Topology::load(Path::new(crate::common::SHOP_TOPOLOGY))
        .expect("topology");
    let users: HashSet<&str> = topology.users.iter().map(|u| u.name.as_str()).collect();

    let deployments = of_kind(&docs, "Deployment");
    let services = [
        Service::Fulfillment,
        Service::Notifications,
        Service::Analytics,
        Service::Recommendations,
        Service::Inventory,
    ];
    // (Deployment, command, user, whether its pods share a PostgreSQL store): every worker
    // service, and the order service, which publishes as the producer.
    let mut programs: Vec<(String, [&str; 2], String, bool)> = services
        .iter()
        .map(|s| {
            let name = format!("burrow-{}", s.name());
            let shared = matches!(s, Service::Fulfillment | Service::Inventory);
            (name.clone(), ["worker", s.name()], name, shared)
        })
        .collect();
    programs.push((
        "burrow-orders".into(),
        ["producer", "serve"],
        "burrow-producer".into(),
        true,
    ));
    assert_eq!(
        deployments.len(),
        programs.len(),
        "a Deployment per service"
    );
    for (name, command, user, shared) in &programs {
        let deployment = find(&docs, "Deployment", name);
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            [&container["command"][0], &container["command"][1]],
            [command[0], command[1]],
            "{name} runs its service"
        );
        let env = |var: &str| {
            container["env"]
                .as_array()
                .expect("env")
                .iter()
                .find(|e| e["name"] == var)
                .map(|e| {
                    let secret = &e["valueFrom"]["secretKeyRef"];
                    secret_value(
                        &docs,
                        secret["name"].as_str().expect("secret"),
                        secret["key"].as_str().expect("key"),
                    )
                })
        };
        let url = env("AMQP_URL").unwrap_or_else(|| panic!("{name} sets AMQP_URL"));
        assert_eq!(&url_user(url), user, "{name} logs in as its own user");
        assert!(
            users.contains(user.as_str()),
            "{user} is a user of the topology"
        );
        let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
        let store = env("BURROW__STORE__URL");
        assert_eq!(
            store.is_some_and(|u| u.starts_with("postgres://")),
            *shared,
            "{name}: pods that share state across hosts share PostgreSQL"
        );
        assert!(
            *shared || (replicas <= 1 && deployment["spec"]["strategy"]["type"] == "Recreate"),
            "{name} keeps local state: at most one pod, never two at once"
        );
    }

    let scaled = of_kind(&docs, "ScaledObject");
    assert!(!scaled.is_empty());
    for so in scaled {
        let target = so["spec"]["scaleTargetRef"]["name"]
            .as_str()
            .expect("target");
        let deployment = find(&docs, "Deployment", target);
        let service_name = deployment["spec"]["template"]["spec"]["containers"][0]["command"][1]
            .as_str()
            .expect("service");
        let service = services
            .into_iter()
            .find(|s| s.name() == service_name)
            .expect("a known service");
        assert_ne!(
            service,
            Service::Recommendations,
            "the stream reader is never autoscaled"
        );
        for trigger in so["spec"]["triggers"].as_array().expect("triggers") {
            assert_eq!(trigger["type"], "rabbitmq");
            let meta = trigger["metadata"].as_object().expect("metadata");
            for key in meta.keys() {
                assert!(
                    RABBITMQ_TRIGGER_KEYS.contains(&key.as_str()),
                    "{target}: `{key}` is not a parameter of KEDA's rabbitmq scaler"
                );
            }
            assert_eq!(
                meta["protocol"], "http",
                "{target}: over the management API"
            );
            assert!(
                ["QueueLength", "MessageRate"].contains(&meta["mode"].as_str().unwrap_or("")),
                "{target}: mode {}",
                meta["mode"]
            );
            assert_eq!(
                meta["queueName"],
                service.queue(),
                "{target} watches its queue"
            );
            assert!(
                meta["value"]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v > 0.0),
                "{target}: value is a positive number in a string"
            );
            let auth = trigger["authenticationRef"]["name"].as_str().expect("auth");
            let auth = find(&docs, "TriggerAuthentication", auth);
            let reference = auth["spec"]["secretTargetRef"]
                .as_array()
                .expect("secretTargetRef")
                .iter()
                .find(|r| r["parameter"] == "host")
                .expect("a host parameter");
            let host = secret_value(
                &docs,
                reference["name"].as_str().expect("secret"),
                reference["key"].as_str().expect("key"),
            );
            let scaler = url_user(host);
            let user = topology
                .users
                .iter()
                .find(|u| u.name == scaler)
                .unwrap_or_else(|| panic!("KEDA's user {scaler} is in the topology"));
            assert_eq!(
                (
                    user.permissions.configure.as_str(),
                    user.permissions.write.as_str(),
                    user.permissions.read.as_str()
                ),
                ("^$", "^$", "^$"),
                "KEDA's user may not configure, publish or consume"
            );
        }
    }
}

#[test]
fn every_deployment_takes_the_trace_settings_from_an_optional_config_map() {
    let docs = manifests();
    let deployments = of_kind(&docs, "Deployment");
    assert!(!deployments.is_empty(), "Deployments in deploy/k8s");
    for deployment in deployments {
        let name = deployment["metadata"]["name"].as_str().unwrap_or("?");
        for container in deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
        {
            let from = container["envFrom"]
                .as_array()
                .unwrap_or_else(|| panic!("{name}: no envFrom"));
            assert!(
                from.iter().any(|f| f["configMapRef"]["name"] == "burrow-telemetry"
                    && f["configMapRef"]["optional"] == true),
                "{name}: the OTEL_* variables come from the optional ConfigMap burrow-telemetry: {from:?}"
            );
        }
    }
}
