//! Exporting a topology as a RabbitMQ definitions document, the format the management UI
//! imports (Overview → Import definitions) and `load_definitions` reads at boot.

use serde_json::{json, Value};

use super::definition::Topology;

/// The RabbitMQ version the export is written for and tested against (the oldest supported).
pub const RABBIT_VERSION: &str = "3.10.8";

/// The definitions document of `topology`, with every entity in vhost `/`.
///
/// The document also carries vhost `/`, the topology's users (password hashes only, see
/// [`super::users::password_hash`]) and their permissions on `/`, so that a fresh broker that
/// loads it at boot (docker-compose) is usable: a node that imports definitions at boot does
/// not create its default `guest` user, so the file declares an administrator itself.
/// Importing into one vhost (`POST /api/definitions/{vhost}`, as the tests do) ignores users,
/// vhosts and permissions and the `vhost` fields.
pub fn definitions(topology: &Topology) -> Value {
    let exchanges: Vec<Value> = topology
        .exchanges
        .iter()
        .map(|e| {
            json!({
                "name": e.name,
                "vhost": "/",
                "type": e.kind.as_str(),
                "durable": e.durable,
                "auto_delete": false,
                "internal": false,
                "arguments": e.arguments,
            })
        })
        .collect();
    let queues: Vec<Value> = topology
        .queues
        .iter()
        .map(|q| {
            json!({
                "name": q.name,
                "vhost": "/",
                "durable": q.durable,
                "auto_delete": false,
                "arguments": q.declared_arguments(),
            })
        })
        .collect();
    let bindings: Vec<Value> = topology
        .bindings
        .iter()
        .map(|b| {
            json!({
                "source": b.source,
                "vhost": "/",
                "destination": b.destination,
                "destination_type": b.destination_type.as_str(),
                "routing_key": b.routing_key,
                "arguments": b.arguments,
            })
        })
        .collect();
    let users: Vec<Value> = topology
        .users
        .iter()
        .map(|u| {
            json!({
                "name": u.name,
                "password_hash": super::users::password_hash(&u.name, u.password.expose()),
                "hashing_algorithm": super::users::HASHING_ALGORITHM,
                "tags": u.tags,
                "limits": {},
            })
        })
        .collect();
    let permissions: Vec<Value> = topology
        .users
        .iter()
        .map(|u| {
            json!({
                "user": u.name,
                "vhost": "/",
                "configure": u.permissions.configure,
                "write": u.permissions.write,
                "read": u.permissions.read,
            })
        })
        .collect();
    json!({
        "rabbit_version": RABBIT_VERSION,
        "users": users,
        "vhosts": [{"name": "/"}],
        "permissions": permissions,
        "parameters": [],
        "policies": [],
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    })
}

/// The document as the committed file holds it: pretty JSON ending in a newline.
pub fn to_pretty_json(definitions: &Value) -> String {
    let mut text = serde_json::to_string_pretty(definitions).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_definitions_match_shop_toml() {
        let topology = Topology::parse(include_str!("../../topology/shop.toml")).expect("valid");
        let committed: Value =
            serde_json::from_str(include_str!("../../topology/definitions.json")).expect("json");
        assert!(
            committed == definitions(&topology),
            "topology/definitions.json is stale: run `cargo run --bin burrow -- topology export`"
        );
    }

    #[test]
    fn exchange_to_exchange_bindings_are_exported_as_such() {
        let topology = Topology::parse(include_str!("../../topology/shop.toml")).expect("valid");
        let defs = definitions(&topology);
        let bindings = defs["bindings"].as_array().expect("bindings");
        let e2e = bindings
            .iter()
            .find(|b| b["source"] == "activity" && b["destination"] == "activity.by-kind")
            .expect("activity -> activity.by-kind exported");
        assert_eq!(e2e["destination_type"], "exchange");
        let restocks = bindings
            .iter()
            .find(|b| b["destination"] == "orders.inventory" && b["source"] == "activity.by-kind")
            .expect("activity.by-kind -> orders.inventory exported");
        assert_eq!(restocks["destination_type"], "queue");
        assert_eq!(restocks["routing_key"], "inventory.changed");
        // Removed bindings are not in the export: a broker that loads it never had them.
        assert!(!bindings
            .iter()
            .any(|b| b["source"] == "activity" && b["destination"] == "orders.inventory"));
    }

    #[test]
    fn queues_carry_their_type_and_arguments() {
        let topology = Topology::parse(include_str!("../../topology/shop.toml")).expect("valid");
        let defs = definitions(&topology);
        let fulfillment = defs["queues"]
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["name"] == "orders.fulfillment"))
            .expect("queue exported");
        assert_eq!(fulfillment["arguments"]["x-queue-type"], "quorum");
        assert_eq!(fulfillment["arguments"]["x-delivery-limit"], 5);
        assert_eq!(fulfillment["vhost"], "/");
    }
}
