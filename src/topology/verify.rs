//! Checking a live broker against the topology through the management API: missing entities,
//! other types, other arguments, missing bindings, and bindings the file does not want. Nothing
//! is changed on the broker.

use serde_json::Value;

use super::definition::{Arguments, BindingDefinition, DestinationType, Topology};
use super::drift::{show, Drift, Entity};
use crate::management::{BindingInfo, Management, ManagementError};

/// Every difference between `vhost` on the broker and `topology`. Entities the topology does
/// not mention (other applications' queues) are not drift, nor are bindings to or from them.
/// A binding between two entities of the file that the file does not declare is
/// ([`Drift::unexpected`]): it is what an upgrade leaves behind when the file moved a binding
/// (the old one would deliver a second copy), or a hand-made change. Those the file lists
/// under `[[removed_bindings]]` are reported as [`Drift::removed`], whatever their endpoints.
///
/// # Errors
/// [`ManagementError`] when the management API cannot be read.
pub async fn verify(
    management: &Management,
    vhost: &str,
    topology: &Topology,
) -> Result<Vec<Drift>, ManagementError> {
    let exchanges = management.exchanges(vhost).await?;
    let queues = management.queues(vhost).await?;
    let bindings = management.bindings(vhost).await?;
    let mut drift = Vec::new();

    for expected in &topology.exchanges {
        let entity = Entity::Exchange(expected.name.clone());
        let Some(actual) = exchanges.iter().find(|e| e.name == expected.name) else {
            drift.push(Drift::missing(entity));
            continue;
        };
        compare_kind_and_durability(
            &entity,
            (expected.kind.as_str(), expected.durable),
            (&actual.kind, actual.durable),
            &mut drift,
        );
        compare_arguments(&entity, &expected.arguments, &actual.arguments, &mut drift);
    }

    for expected in &topology.queues {
        let entity = Entity::Queue(expected.name.clone());
        let Some(actual) = queues.iter().find(|q| q.name == expected.name) else {
            drift.push(Drift::missing(entity));
            continue;
        };
        compare_kind_and_durability(
            &entity,
            (expected.kind.as_str(), expected.durable),
            (&actual.kind, actual.durable),
            &mut drift,
        );
        // The type is compared above; `x-queue-type` may or may not be among the arguments
        // depending on how the queue was declared.
        let mut actual_args = actual.arguments.clone();
        actual_args.remove("x-queue-type");
        compare_arguments(&entity, &expected.arguments, &actual_args, &mut drift);
    }

    for expected in &topology.bindings {
        if !bindings.iter().any(|b| same_binding(b, expected)) {
            drift.push(Drift::missing(expected.entity()));
        }
    }
    for removed in &topology.removed_bindings {
        if bindings.iter().any(|b| same_binding(b, removed)) {
            drift.push(Drift::removed(removed.entity()));
        }
    }
    drift.extend(unexpected_bindings(topology, &bindings));
    Ok(drift)
}

/// Whether the broker's binding `actual` is `expected` (arguments aside, as when it is
/// declared: the file's bindings carry none).
fn same_binding(actual: &BindingInfo, expected: &BindingDefinition) -> bool {
    actual.source == expected.source
        && actual.destination == expected.destination
        && actual.destination_type == expected.destination_type.as_str()
        && actual.routing_key == expected.routing_key
}

/// The broker's bindings from an exchange of the file to a queue or exchange of the file that
/// the file neither declares nor lists as removed.
fn unexpected_bindings(topology: &Topology, actual: &[BindingInfo]) -> Vec<Drift> {
    actual
        .iter()
        .filter_map(|b| {
            topology.exchange(&b.source)?;
            let destination_type = match b.destination_type.as_str() {
                "queue" => {
                    topology.queue(&b.destination)?;
                    DestinationType::Queue
                }
                "exchange" => {
                    topology.exchange(&b.destination)?;
                    DestinationType::Exchange
                }
                _ => return None,
            };
            let wanted = |d: &BindingDefinition| same_binding(b, d);
            if topology.bindings.iter().any(wanted) || topology.removed_bindings.iter().any(wanted)
            {
                return None;
            }
            Some(Drift::unexpected(Entity::Binding {
                source: b.source.clone(),
                destination: b.destination.clone(),
                destination_type,
                routing_key: b.routing_key.clone(),
            }))
        })
        .collect()
}

/// Drift in the type or the durability of an exchange or a queue, given as (type, durable).
fn compare_kind_and_durability(
    entity: &Entity,
    expected: (&str, bool),
    actual: (&str, bool),
    drift: &mut Vec<Drift>,
) {
    if actual.0 != expected.0 {
        drift.push(differs(entity, "type", expected.0, actual.0));
    }
    if actual.1 != expected.1 {
        drift.push(differs(
            entity,
            "durable",
            &expected.1.to_string(),
            &actual.1.to_string(),
        ));
    }
}

fn differs(entity: &Entity, what: &str, expected: &str, actual: &str) -> Drift {
    Drift {
        entity: entity.clone(),
        what: what.into(),
        expected: Some(expected.into()),
        actual: Some(actual.into()),
    }
}

fn compare_arguments(
    entity: &Entity,
    expected: &Arguments,
    actual: &serde_json::Map<String, Value>,
    drift: &mut Vec<Drift>,
) {
    for (key, want) in expected {
        let have = actual.get(key);
        if !have.is_some_and(|have| same_value(want, have)) {
            drift.push(Drift {
                entity: entity.clone(),
                what: format!("argument {key}"),
                expected: Some(show(want)),
                actual: have.map(show),
            });
        }
    }
    for (key, have) in actual {
        if !expected.contains_key(key) {
            drift.push(Drift {
                entity: entity.clone(),
                what: format!("argument {key}"),
                expected: None,
                actual: Some(show(have)),
            });
        }
    }
}

/// Numbers compare by value (`5` and `5.0` are the same argument to RabbitMQ).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_differences_are_reported_both_ways() {
        let entity = Entity::Queue("q".into());
        let expected: Arguments = [("x-delivery-limit".to_owned(), Value::from(5))].into();
        let mut actual = serde_json::Map::new();
        actual.insert("x-delivery-limit".into(), Value::from(9));
        actual.insert("x-max-length".into(), Value::from(10));
        let mut drift = Vec::new();
        compare_arguments(&entity, &expected, &actual, &mut drift);
        assert_eq!(drift.len(), 2);
        assert_eq!(
            drift[0].describe("shop.toml"),
            "queue 'q': argument x-delivery-limit: broker has 9, shop.toml says 5"
        );
        assert_eq!(drift[1].expected, None);
        assert!(same_value(&Value::from(5), &serde_json::json!(5.0)));
    }

    fn binding(source: &str, destination: &str, destination_type: &str, key: &str) -> BindingInfo {
        BindingInfo {
            source: source.into(),
            vhost: "/".into(),
            destination: destination.into(),
            destination_type: destination_type.into(),
            routing_key: key.into(),
            arguments: serde_json::Map::new(),
        }
    }

    #[test]
    fn bindings_between_the_files_entities_that_it_does_not_declare_are_reported() {
        let shop = Topology::parse(include_str!("../../topology/shop.toml")).expect("valid");
        let actual = [
            // In the file.
            binding("activity", "activity.by-kind", "exchange", ""),
            binding(
                "activity.by-kind",
                "orders.status",
                "queue",
                "order.fulfilled",
            ),
            // Listed under [[removed_bindings]]: verify reports those from the list.
            binding("activity", "orders.status", "queue", ""),
            // Not in the file, between its entities: by hand, or an older file.
            binding(
                "activity.by-kind",
                "orders.inventory",
                "queue",
                "product.viewed",
            ),
            binding("orders", "activity.by-kind", "exchange", "order.placed"),
            // Another application's queue, and the default exchange: none of the file's business.
            binding("activity", "audit", "queue", ""),
            binding("", "orders.status", "queue", "orders.status"),
        ];
        let drift = unexpected_bindings(&shop, &actual);
        let lines: Vec<String> = drift.iter().map(|d| d.describe("shop.toml")).collect();
        assert_eq!(
            lines,
            [
                "binding 'activity.by-kind' -> 'orders.inventory' ('product.viewed'): on the \
                 broker, not in shop.toml; to remove it, list it under [[removed_bindings]] \
                 there and run `burrow topology apply` (or unbind it in the management UI)",
                "binding 'orders' -> exchange 'activity.by-kind' ('order.placed'): on the \
                 broker, not in shop.toml; to remove it, list it under [[removed_bindings]] \
                 there and run `burrow topology apply` (or unbind it in the management UI)",
            ]
        );
        assert!(drift.iter().all(Drift::is_extra));
        assert!(same_binding(
            &actual[0],
            shop.bindings
                .iter()
                .find(|b| b.destination == "activity.by-kind")
                .expect("e2e")
        ));
        assert!(!same_binding(
            &binding("activity", "activity.by-kind", "queue", ""),
            shop.bindings
                .iter()
                .find(|b| b.destination == "activity.by-kind")
                .expect("e2e")
        ));
    }
}
