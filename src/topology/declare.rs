//! Declaring a topology on a live broker, idempotently: exchanges, then queues, then bindings
//! (of queues and of exchanges), then removing the bindings the file lists as removed. What
//! exists is left alone; what differs is reported as [`Drift`] and the rest is still declared.

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeUnbindOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use tracing::{debug, info, warn};

use super::definition::{Arguments, BindingDefinition, DestinationType, ExchangeType, Topology};
use super::drift::{parse_precondition_failed, Drift, Entity};

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Exchanges and queues that did not exist and were declared.
    pub created: Vec<Entity>,
    /// Exchanges and queues that existed with the same properties.
    pub unchanged: Vec<Entity>,
    /// Exchanges and queues that exist with other properties; left as they are.
    pub drift: Vec<Drift>,
    /// Bindings declared (binding is idempotent, so existing ones count too).
    pub bindings: usize,
    /// Bindings of `[[removed_bindings]]` removed (unbinding is idempotent, so ones already
    /// gone count too).
    pub unbound: usize,
    /// Existing entities and bindings the user may not (re)declare: ACCESS_REFUSED. A
    /// least-privilege worker re-declares on connect; what exists is left to the operator.
    pub refused: Vec<Entity>,
}

/// A declaration failed for a reason other than drift (lost connection, access refused…).
#[derive(Debug, thiserror::Error)]
#[error("declaring {entity}")]
pub struct ApplyError {
    /// What was being declared.
    pub entity: Entity,
    /// The broker's or client's error.
    #[source]
    pub source: lapin::Error,
}

/// AMQP reply codes that matter here.
const NOT_FOUND: u16 = 404;
const PRECONDITION_FAILED: u16 = 406;
const ACCESS_REFUSED: u16 = 403;

/// Declares every exchange, queue and binding of `topology`.
///
/// Each exchange and queue is first checked with a passive declare, then declared. A failed
/// declare closes its channel, so every check and every declaration that can fail gets a fresh
/// channel. A 406 PRECONDITION_FAILED is drift: it is recorded and the other declarations go on.
/// Bindings are declared next, when their endpoints exist (a queue's with `queue.bind`, an
/// exchange's with `exchange.bind`), and the file's `[[removed_bindings]]` are removed last. A
/// 403 ACCESS_REFUSED on an entity that exists (or on a binding, or on removing one) is recorded
/// in [`ApplyReport::refused`] and skipped, so a user without configure permission can still
/// run this over an applied topology; on an entity that does not exist it is an error.
///
/// # Errors
/// [`ApplyError`] when a declaration fails for another reason than drift.
pub async fn apply(
    conn: &lapin::Connection,
    topology: &Topology,
) -> Result<ApplyReport, ApplyError> {
    let mut report = ApplyReport::default();

    for exchange in &topology.exchanges {
        let entity = Entity::Exchange(exchange.name.clone());
        let fail = |source| ApplyError {
            entity: entity.clone(),
            source,
        };
        let existed = exchange_exists(conn, &exchange.name).await.map_err(fail)?;
        let channel = conn.create_channel().await.map_err(fail)?;
        let options = ExchangeDeclareOptions {
            durable: exchange.durable,
            ..Default::default()
        };
        let result = channel
            .exchange_declare(
                exchange.name.as_str().into(),
                exchange_kind(exchange.kind),
                options,
                field_table(&exchange.arguments),
            )
            .await;
        settle(
            &mut report,
            entity.clone(),
            existed,
            result.map(drop),
            &channel,
        )
        .await
        .map_err(fail)?;
    }

    for queue in &topology.queues {
        let entity = Entity::Queue(queue.name.clone());
        let fail = |source| ApplyError {
            entity: entity.clone(),
            source,
        };
        let existed = queue_exists(conn, &queue.name).await.map_err(fail)?;
        let channel = conn.create_channel().await.map_err(fail)?;
        let options = QueueDeclareOptions {
            durable: queue.durable,
            ..Default::default()
        };
        let result = channel
            .queue_declare(
                queue.name.as_str().into(),
                options,
                field_table(&queue.declared_arguments()),
            )
            .await;
        settle(
            &mut report,
            entity.clone(),
            existed,
            result.map(drop),
            &channel,
        )
        .await
        .map_err(fail)?;
    }

    let mut channel: Option<Channel> = None;
    for binding in &topology.bindings {
        let entity = binding.entity();
        let ch = reuse_or_open(&mut channel, conn, &entity).await?;
        match bind(&ch, binding).await {
            Ok(()) => {
                debug!(%entity, "bound");
                report.bindings += 1;
                channel = Some(ch);
            }
            // The broker closed the channel; the next binding opens another.
            Err(e) if matches!(reply(&e), Some((ACCESS_REFUSED, _))) => {
                debug!(%entity, "not permitted to bind; left as it is");
                report.refused.push(entity);
            }
            Err(source) => return Err(ApplyError { entity, source }),
        }
    }

    // Obsolete bindings go last, after the bindings that replace them: while both exist an
    // event may arrive twice (the consumers are idempotent); the other order would leave a
    // moment in which it reaches neither.
    //
    // Only what the file lists under [[removed_bindings]] is removed, never "every binding the
    // file does not mention": a binding on the shop's exchanges may be another application's
    // (an audit queue on `activity`), AMQP cannot list bindings (pruning would need the
    // management API, here and in every worker that re-declares on connect), and removing a
    // binding changes where messages go, so it should be a reviewed line in the file rather
    // than a side effect. `verify` reports the others between the file's own entities, with how
    // to remove them.
    for binding in &topology.removed_bindings {
        let entity = binding.entity();
        let ch = reuse_or_open(&mut channel, conn, &entity).await?;
        match unbind(&ch, binding).await {
            Ok(()) => {
                debug!(%entity, "unbound");
                report.unbound += 1;
                channel = Some(ch);
            }
            // 404: the queue or an exchange is gone, and the binding with it.
            Err(e) if matches!(reply(&e), Some((NOT_FOUND, _))) => {
                debug!(%entity, "already gone");
                report.unbound += 1;
            }
            Err(e) if matches!(reply(&e), Some((ACCESS_REFUSED, _))) => {
                debug!(%entity, "not permitted to unbind; left as it is");
                report.refused.push(entity);
            }
            Err(source) => return Err(ApplyError { entity, source }),
        }
    }
    if let Some(ch) = channel {
        close(&ch).await;
    }

    info!(
        created = report.created.len(),
        unchanged = report.unchanged.len(),
        drifted = report.drift.len(),
        bindings = report.bindings,
        unbound = report.unbound,
        refused = report.refused.len(),
        "topology applied"
    );
    Ok(report)
}

/// Declares `binding`: `queue.bind` or `exchange.bind`.
/// The channel a previous binding left open, or a new one (a refused binding closes its
/// channel, and the next one opens another).
async fn reuse_or_open(
    channel: &mut Option<Channel>,
    conn: &lapin::Connection,
    entity: &Entity,
) -> Result<Channel, ApplyError> {
    match channel.take() {
        Some(ch) => Ok(ch),
        None => conn.create_channel().await.map_err(|source| ApplyError {
            entity: entity.clone(),
            source,
        }),
    }
}

async fn bind(channel: &Channel, binding: &BindingDefinition) -> lapin::Result<()> {
    let (destination, source, key, args) = (
        binding.destination.as_str().into(),
        binding.source.as_str().into(),
        binding.routing_key.as_str().into(),
        field_table(&binding.arguments),
    );
    match binding.destination_type {
        DestinationType::Queue => {
            channel
                .queue_bind(destination, source, key, QueueBindOptions::default(), args)
                .await
        }
        DestinationType::Exchange => {
            channel
                .exchange_bind(
                    destination,
                    source,
                    key,
                    ExchangeBindOptions::default(),
                    args,
                )
                .await
        }
    }
}

/// Removes `binding`: `queue.unbind` or `exchange.unbind`.
async fn unbind(channel: &Channel, binding: &BindingDefinition) -> lapin::Result<()> {
    let (destination, source, key, args) = (
        binding.destination.as_str().into(),
        binding.source.as_str().into(),
        binding.routing_key.as_str().into(),
        field_table(&binding.arguments),
    );
    match binding.destination_type {
        DestinationType::Queue => channel.queue_unbind(destination, source, key, args).await,
        DestinationType::Exchange => {
            channel
                .exchange_unbind(
                    destination,
                    source,
                    key,
                    ExchangeUnbindOptions::default(),
                    args,
                )
                .await
        }
    }
}

/// Records the outcome of one declaration; only errors other than drift are returned.
async fn settle(
    report: &mut ApplyReport,
    entity: Entity,
    existed: bool,
    result: lapin::Result<()>,
    channel: &Channel,
) -> lapin::Result<()> {
    match result {
        Ok(()) if existed => {
            debug!(%entity, "unchanged");
            report.unchanged.push(entity);
        }
        Ok(()) => {
            debug!(%entity, "created");
            report.created.push(entity);
        }
        Err(e) => match reply(&e) {
            Some((PRECONDITION_FAILED, text)) => {
                let drift = parse_precondition_failed(&entity, &text);
                warn!(%entity, what = %drift.what, expected = ?drift.expected, actual = ?drift.actual, "drift");
                report.drift.push(drift);
                // The broker closed this channel; nothing to close.
                return Ok(());
            }
            Some((ACCESS_REFUSED, _)) if existed => {
                debug!(%entity, "exists; not permitted to declare it, left as it is");
                report.refused.push(entity);
                return Ok(());
            }
            _ => return Err(e),
        },
    }
    close(channel).await;
    Ok(())
}

async fn close(channel: &Channel) {
    crate::broker::close_channel(channel, "done").await;
}

/// The AMQP reply code and text of a channel error, if it is one.
fn reply(error: &lapin::Error) -> Option<(u16, String)> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            Some((amqp.get_id(), amqp.get_message().as_str().to_owned()))
        }
        _ => None,
    }
}

async fn queue_exists(conn: &lapin::Connection, name: &str) -> lapin::Result<bool> {
    let channel = conn.create_channel().await?;
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let result = channel
        .queue_declare(name.into(), options, FieldTable::default())
        .await;
    passive_outcome(&channel, result.map(drop)).await
}

async fn exchange_exists(conn: &lapin::Connection, name: &str) -> lapin::Result<bool> {
    let channel = conn.create_channel().await?;
    let options = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let result = channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            options,
            FieldTable::default(),
        )
        .await;
    passive_outcome(&channel, result.map(drop)).await
}

async fn passive_outcome(channel: &Channel, result: lapin::Result<()>) -> lapin::Result<bool> {
    match result {
        Ok(()) => {
            close(channel).await;
            Ok(true)
        }
        Err(e) if matches!(reply(&e), Some((NOT_FOUND, _))) => Ok(false),
        Err(e) => Err(e),
    }
}

fn exchange_kind(kind: ExchangeType) -> ExchangeKind {
    match kind {
        ExchangeType::Direct => ExchangeKind::Direct,
        ExchangeType::Fanout => ExchangeKind::Fanout,
        ExchangeType::Topic => ExchangeKind::Topic,
        ExchangeType::Headers => ExchangeKind::Headers,
    }
}

/// Converts topology arguments to an AMQP table: strings become long strings, integers signed
/// 64-bit (RabbitMQ compares numeric arguments by value, whatever their width).
pub fn field_table(arguments: &Arguments) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in arguments {
        table.insert(key.as_str().into(), amqp_value(value));
    }
    table
}

fn amqp_value(value: &serde_json::Value) -> AMQPValue {
    use serde_json::Value;
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => {
            AMQPValue::FieldArray(items.iter().map(amqp_value).collect::<Vec<_>>().into())
        }
        Value::Object(map) => {
            let args: Arguments = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            AMQPValue::FieldTable(field_table(&args))
        }
    }
}
