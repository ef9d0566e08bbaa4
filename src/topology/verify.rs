//! Checking a live broker against the topology through the management API: missing entities,
//! other types, other arguments, missing bindings. Nothing is changed on the broker.

use serde_json::Value;

use super::definition::{Arguments, Topology};
use super::drift::{show, Drift, Entity};
use crate::management::{Management, ManagementError};

/// Every difference between `vhost` on the broker and `topology`. Entities the topology does
/// not mention (other applications' queues) are not drift.
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
        let found = bindings.iter().any(|b| {
            b.source == expected.source
                && b.destination == expected.destination
                && b.destination_type == "queue"
                && b.routing_key == expected.routing_key
        });
        if !found {
            drift.push(Drift::missing(Entity::Binding {
                source: expected.source.clone(),
                destination: expected.destination.clone(),
                routing_key: expected.routing_key.clone(),
            }));
        }
    }
    Ok(drift)
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
}
