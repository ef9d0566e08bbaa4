//! The topology as typed data: exchanges, queues and bindings parsed from `topology/shop.toml`
//! and validated, so that every later step (declare, verify, export, the worker's retry ladder)
//! works on a topology that is known to be consistent.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::drift::Entity;

/// The smallest `x-delivery-limit` a quorum dead-letter queue may declare (see
/// [`TopologyError::DeadLetterQueueDeliveryLimit`]).
pub const MIN_DEAD_LETTER_DELIVERY_LIMIT: i64 = 1_000_000;

/// Queue or exchange arguments (`x-…`), as JSON values: strings, integers, booleans.
pub type Arguments = BTreeMap<String, serde_json::Value>;

/// Why a topology file could not be used. Every variant names the entry at fault.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("cannot read topology file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown or missing field.
    #[error("topology file is not valid")]
    Syntax(#[from] toml::de::Error),
    /// Two exchanges share a name.
    #[error("exchange '{0}' is declared twice")]
    DuplicateExchange(String),
    /// Two queues share a name.
    #[error("queue '{0}' is declared twice")]
    DuplicateQueue(String),
    /// An exchange type that is not direct, fanout, topic or headers.
    #[error("exchange '{exchange}' has unknown type '{value}' (expected direct, fanout, topic or headers)")]
    BadExchangeType {
        exchange: String,
        /// The type given.
        value: String,
    },
    /// A queue type that is not classic, quorum or stream.
    #[error("queue '{queue}' has unknown type '{value}' (expected classic, quorum or stream)")]
    BadQueueType {
        queue: String,
        /// The type given.
        value: String,
    },
    /// `x-queue-type` in the arguments says something else than `type`.
    #[error("queue '{queue}' has type '{kind}' but argument x-queue-type '{argument}'")]
    QueueTypeConflict {
        queue: String,
        /// The `type` field.
        kind: QueueType,
        /// The `x-queue-type` argument.
        argument: String,
    },
    /// A binding whose source exchange is not declared.
    #[error("binding {binding} names exchange '{exchange}', which is not declared")]
    UnknownExchange {
        /// The binding, e.g. `'orders' -> 'orders.fulfillment' ('order.placed')`.
        binding: String,
        /// The missing exchange.
        exchange: String,
    },
    /// A binding whose destination queue is not declared.
    #[error("binding {binding} names queue '{queue}', which is not declared")]
    UnknownQueue {
        binding: String,
        /// The missing queue.
        queue: String,
    },
    /// A binding whose destination is neither a declared queue nor a declared exchange.
    #[error(
        "binding {binding} names destination '{destination}', which is neither a declared queue \
         nor a declared exchange"
    )]
    UnknownDestination {
        binding: String,
        /// The destination given.
        destination: String,
    },
    /// A binding whose destination is declared both as a queue and as an exchange (RabbitMQ
    /// allows both to share a name), without `destination_type` to say which.
    #[error(
        "binding {binding} names '{destination}', which is both a queue and an exchange: set \
         destination_type = \"queue\" or \"exchange\""
    )]
    AmbiguousDestination {
        binding: String,
        /// The destination given.
        destination: String,
    },
    /// A `destination_type` that is not `queue` or `exchange`.
    #[error("binding {binding} has destination_type '{value}' (expected queue or exchange)")]
    BadDestinationType {
        binding: String,
        /// The type given.
        value: String,
    },
    /// A binding listed both under `[[bindings]]` and `[[removed_bindings]]`.
    #[error("binding {binding} is both in [[bindings]] and in [[removed_bindings]]")]
    RemovedBindingDeclared {
        /// The binding.
        binding: String,
    },
    /// A queue whose `x-dead-letter-exchange` is not declared (the default exchange `""` is
    /// always allowed).
    #[error("queue '{queue}' dead-letters to exchange '{exchange}', which is not declared")]
    UnknownDeadLetterExchange {
        queue: String,
        /// The missing exchange.
        exchange: String,
    },
    /// A retry step with neither `delay` nor `x-message-ttl`.
    #[error(
        "retry queue '{queue}' has no delay: set `delay` (e.g. \"10s\") or argument x-message-ttl"
    )]
    RetryWithoutDelay {
        /// The retry queue.
        queue: String,
    },
    /// A `delay` that is not a duration like `200ms`, `10s`, `1m`.
    #[error("queue '{queue}' has delay '{value}', which is not a duration like 200ms, 10s or 1m")]
    BadDelay {
        queue: String,
        /// The value given.
        value: String,
    },
    /// `delay` and `x-message-ttl` disagree.
    #[error("retry queue '{queue}' has delay {delay_ms} ms but x-message-ttl {ttl_ms} ms")]
    RetryDelayMismatch {
        queue: String,
        /// `delay` in milliseconds.
        delay_ms: u64,
        /// `x-message-ttl`.
        ttl_ms: u64,
    },
    /// A retry step for a queue that is not declared.
    #[error("retry queue '{queue}' retries for queue '{target}', which is not declared")]
    RetryForUnknownQueue {
        /// The retry queue.
        queue: String,
        /// The missing queue it names in `retry_for`.
        target: String,
    },
    /// `delay` on a queue that is not a retry step.
    #[error("queue '{queue}' has a delay but no `retry_for`")]
    DelayWithoutRetryFor { queue: String },
    /// Two users share a name.
    #[error("user '{0}' is declared twice")]
    DuplicateUser(String),
    /// A user without a name or password.
    #[error("user '{0}' needs a non-empty name and password")]
    BadUser(String),
    /// A quorum queue that receives dead letters without a delivery limit no inspection
    /// reaches: RabbitMQ 4.0+ gives it a limit of 20, and `-1` (no limit on 4.0+) makes 3.10
    /// drop a message the first time it is handed back.
    #[error(
        "dead-letter queue '{queue}' needs x-delivery-limit of at least {MIN_DEAD_LETTER_DELIVERY_LIMIT} \
         (got {value}): RabbitMQ 4.0+ defaults a quorum queue to 20 and then drops what \
         `burrow dlq` has read that often, and 3.10 drops a message at once with -1"
    )]
    DeadLetterQueueDeliveryLimit {
        /// The dead-letter queue.
        queue: String,
        /// What it has (`none` when missing).
        value: String,
    },
    /// A stream without `x-max-age` or `x-max-length-bytes` would grow until the disk is full.
    #[error("stream '{queue}' is unbounded: set x-max-age or x-max-length-bytes")]
    UnboundedStream {
        /// The stream.
        queue: String,
    },
}

/// The type of an exchange, spelled as RabbitMQ spells it (`topic`) by `Display` and `FromStr`.
///
/// Not `lapin::ExchangeKind`: that one accepts any plugin type (`Custom`), so a typo would reach
/// the broker, and it has no public name or `Display`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::Display, strum::EnumString, strum::IntoStaticStr,
)]
#[strum(serialize_all = "lowercase")]
pub enum ExchangeType {
    /// Routes on the exact routing key.
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes on routing-key patterns.
    Topic,
    /// Routes on headers.
    Headers,
}

impl ExchangeType {
    /// The name RabbitMQ uses, e.g. `topic`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The type of a queue (`x-queue-type`), spelled as RabbitMQ spells it (`quorum`) by `Display`
/// and `FromStr`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::Display, strum::EnumString, strum::IntoStaticStr,
)]
#[strum(serialize_all = "lowercase")]
pub enum QueueType {
    /// A classic queue.
    Classic,
    /// A replicated, Raft-based quorum queue.
    Quorum,
    /// An append-only, replayable stream.
    Stream,
}

impl QueueType {
    /// The name RabbitMQ uses, e.g. `quorum`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A durable exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDefinition {
    pub name: String,
    pub kind: ExchangeType,
    /// Whether it survives a broker restart (default `true`).
    pub durable: bool,
    /// Extra arguments (usually none).
    pub arguments: Arguments,
}

/// A queue or stream.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDefinition {
    pub name: String,
    /// Classic, quorum or stream.
    pub kind: QueueType,
    /// Whether it survives a broker restart (default `true`).
    pub durable: bool,
    /// Its `x-…` arguments, without `x-queue-type` (see [`QueueDefinition::declared_arguments`]).
    /// For a retry step, `x-message-ttl` is always present.
    pub arguments: Arguments,
    /// Set when this queue is a back-off step of another queue.
    pub retry: Option<RetryOf>,
}

/// What makes a queue a retry step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOf {
    /// The queue the message returns to after the delay.
    pub queue: String,
    /// How long the message waits.
    pub delay: Duration,
}

impl QueueDefinition {
    /// The arguments as declared on the broker: [`QueueDefinition::arguments`] plus
    /// `x-queue-type` for quorum queues and streams. Classic queues carry no `x-queue-type`, so
    /// a classic queue declared by older code without it is not reported as drift.
    pub fn declared_arguments(&self) -> Arguments {
        let mut args = self.arguments.clone();
        if self.kind != QueueType::Classic {
            args.insert("x-queue-type".into(), self.kind.as_str().into());
        }
        args
    }
}

/// What a binding delivers to, spelled as the management API spells it (`destination_type`)
/// by `Display` and `FromStr`.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    strum::Display,
    strum::EnumString,
    strum::IntoStaticStr,
    serde::Serialize,
)]
#[strum(serialize_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum DestinationType {
    /// A queue (`queue.bind`).
    #[default]
    Queue,
    /// Another exchange (`exchange.bind`, RabbitMQ's exchange-to-exchange binding): what the
    /// source routes to it, it routes on by its own type and bindings.
    Exchange,
}

impl DestinationType {
    /// The name the management API uses, e.g. `exchange`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A binding of a queue, or of another exchange, to an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingDefinition {
    /// The exchange messages come from.
    pub source: String,
    /// The queue or exchange they go to.
    pub destination: String,
    /// Whether [`BindingDefinition::destination`] is a queue or an exchange.
    pub destination_type: DestinationType,
    /// The binding key (empty for fanout exchanges).
    pub routing_key: String,
    /// Binding arguments (usually none).
    pub arguments: Arguments,
}

impl BindingDefinition {
    /// The binding as drift and reports name it.
    pub fn entity(&self) -> Entity {
        Entity::Binding {
            source: self.source.clone(),
            destination: self.destination.clone(),
            destination_type: self.destination_type,
            routing_key: self.routing_key.clone(),
        }
    }
}

impl fmt::Display for BindingDefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_binding(
            f,
            &self.source,
            &self.destination,
            self.destination_type,
            &self.routing_key,
        )
    }
}

/// `'orders' -> 'orders.fulfillment' ('order.placed')`, or with `exchange` before the
/// destination when it is an exchange: `'activity' -> exchange 'activity.by-kind'`.
pub(crate) fn fmt_binding(
    f: &mut fmt::Formatter<'_>,
    source: &str,
    destination: &str,
    destination_type: DestinationType,
    routing_key: &str,
) -> fmt::Result {
    match destination_type {
        DestinationType::Queue => write!(f, "'{source}' -> '{destination}'")?,
        DestinationType::Exchange => write!(f, "'{source}' -> exchange '{destination}'")?,
    }
    if !routing_key.is_empty() {
        write!(f, " ('{routing_key}')")?;
    }
    Ok(())
}

/// One step of a queue's back-off ladder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryStep {
    /// The retry queue to publish to.
    pub queue: String,
    /// How long the message waits there before it returns.
    pub delay: Duration,
}

/// A password from the topology file: for demos and development only (see
/// [`UserDefinition`]). Never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    /// The password itself, for hashing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// What a user may do in the vhost: three regular expressions over resource names, as
/// RabbitMQ checks them (`configure`: declare/delete, `write`: publish to an exchange or bind
/// a queue, `read`: consume from a queue or bind from an exchange). The default exchange is
/// named `amq.default` in these checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Entities the user may declare and delete.
    pub configure: String,
    /// Exchanges the user may publish to.
    pub write: String,
    /// Queues the user may consume from.
    pub read: String,
}

/// A RabbitMQ user of one burrow program, with its permissions in the topology's vhost.
///
/// Passwords in the topology file are for demos only: production sets real ones with
/// `rabbitmqctl change_password` (or a secrets store) after import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDefinition {
    pub name: String,
    /// The demo password.
    pub password: Password,
    /// Management tags, e.g. `administrator`, `monitoring`.
    pub tags: Vec<String>,
    pub permissions: Permissions,
    /// Only in the exported definitions (the admin a fresh docker-compose broker boots with),
    /// never created by `burrow topology apply --users`.
    pub export_only: bool,
}

/// A validated topology: exchanges, then queues, then bindings, in file order, and the users of
/// the programs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Topology {
    pub exchanges: Vec<ExchangeDefinition>,
    /// The queues and streams.
    pub queues: Vec<QueueDefinition>,
    /// The bindings; their endpoints are all declared above.
    pub bindings: Vec<BindingDefinition>,
    /// Bindings an earlier version of the file declared and the broker should no longer have
    /// (`[[removed_bindings]]`): [`super::apply`] removes them after declaring
    /// [`Topology::bindings`], and [`super::verify`] reports them while they are there. Their
    /// endpoints need not be declared any more.
    pub removed_bindings: Vec<BindingDefinition>,
    /// The users and their permissions.
    pub users: Vec<UserDefinition>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    #[serde(default)]
    exchanges: Vec<RawExchange>,
    #[serde(default)]
    queues: Vec<RawQueue>,
    #[serde(default)]
    bindings: Vec<RawBinding>,
    #[serde(default)]
    removed_bindings: Vec<RawBinding>,
    #[serde(default)]
    users: Vec<RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password: Password,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    export_only: bool,
    configure: String,
    write: String,
    read: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExchange {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    arguments: Arguments,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    name: String,
    #[serde(rename = "type", default = "classic")]
    kind: String,
    #[serde(default = "yes")]
    durable: bool,
    #[serde(default)]
    arguments: Arguments,
    retry_for: Option<String>,
    delay: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBinding {
    source: String,
    destination: String,
    /// `queue` or `exchange`; inferred from the names declared in the file when left out.
    destination_type: Option<String>,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Arguments,
}

fn yes() -> bool {
    true
}

fn classic() -> String {
    "classic".into()
}

/// Parses `200ms`, `10s`, `1m`, `2h` (a whole number and a unit).
pub fn parse_delay(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().ok()?;
    Some(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

/// The topology file the settings name by default, relative to the working directory.
pub const DEFAULT_FILE: &str = "topology/shop.toml";

/// The shop's topology as built into the binaries: what [`Topology::load`] reads when the
/// default file is not there.
pub const BUILT_IN: &str = include_str!("../../topology/shop.toml");

impl Topology {
    /// Reads and validates a topology file; the default file ([`DEFAULT_FILE`]) falls back to
    /// the built-in topology ([`BUILT_IN`]) when it does not exist.
    ///
    /// # Errors
    /// [`TopologyError::Read`] when the file cannot be read, otherwise as [`Topology::parse`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TopologyError> {
        let path = path.as_ref();
        if path == Path::new(DEFAULT_FILE) && !path.exists() {
            // A binary copied to a host, or started from another directory, runs on the shop's
            // topology built into it; a file, `BURROW__TOPOLOGY` or `--file` overrides it.
            return Self::parse(BUILT_IN);
        }
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and validates a topology written in TOML.
    ///
    /// # Errors
    /// A [`TopologyError`] naming the first entry at fault: unknown fields, bad types,
    /// duplicates, bindings or dead-letter exchanges naming undeclared entities, a binding
    /// destination that is neither a declared queue nor exchange (or both, without
    /// `destination_type`), a removed binding that is still declared, retry steps without a
    /// delay, unbounded streams.
    pub fn parse(text: &str) -> Result<Self, TopologyError> {
        let raw: RawTopology = toml::from_str(text)?;

        let mut exchanges = Vec::with_capacity(raw.exchanges.len());
        let mut exchange_names = HashSet::new();
        for e in raw.exchanges {
            if !exchange_names.insert(e.name.clone()) {
                return Err(TopologyError::DuplicateExchange(e.name));
            }
            let kind =
                e.kind
                    .parse::<ExchangeType>()
                    .map_err(|_| TopologyError::BadExchangeType {
                        exchange: e.name.clone(),
                        value: e.kind.clone(),
                    })?;
            exchanges.push(ExchangeDefinition {
                name: e.name,
                kind,
                durable: e.durable,
                arguments: e.arguments,
            });
        }

        let mut queues = Vec::with_capacity(raw.queues.len());
        let mut queue_names = HashSet::new();
        for q in &raw.queues {
            if !queue_names.insert(q.name.clone()) {
                return Err(TopologyError::DuplicateQueue(q.name.clone()));
            }
        }
        for q in raw.queues {
            queues.push(queue_definition(q, &exchange_names, &queue_names)?);
        }

        let names = Names {
            exchanges: &exchange_names,
            queues: &queue_names,
        };
        let bindings = raw
            .bindings
            .into_iter()
            .map(|b| names.binding(b, Declared::Required))
            .collect::<Result<Vec<_>, _>>()?;
        let removed_bindings = raw
            .removed_bindings
            .into_iter()
            .map(|b| names.binding(b, Declared::Optional))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(both) = removed_bindings.iter().find(|r| bindings.contains(r)) {
            return Err(TopologyError::RemovedBindingDeclared {
                binding: both.to_string(),
            });
        }
        check_dead_letter_queues(&queues, &bindings)?;

        let mut users = Vec::with_capacity(raw.users.len());
        let mut user_names = HashSet::new();
        for u in raw.users {
            if u.name.trim().is_empty() || u.password.expose().is_empty() {
                return Err(TopologyError::BadUser(u.name));
            }
            if !user_names.insert(u.name.clone()) {
                return Err(TopologyError::DuplicateUser(u.name));
            }
            users.push(UserDefinition {
                name: u.name,
                password: u.password,
                tags: u.tags,
                permissions: Permissions {
                    configure: u.configure,
                    write: u.write,
                    read: u.read,
                },
                export_only: u.export_only,
            });
        }

        Ok(Self {
            exchanges,
            queues,
            bindings,
            removed_bindings,
            users,
        })
    }

    /// The queue named `name`, if declared.
    pub fn queue(&self, name: &str) -> Option<&QueueDefinition> {
        self.queues.iter().find(|q| q.name == name)
    }

    /// The exchange named `name`, if declared.
    pub fn exchange(&self, name: &str) -> Option<&ExchangeDefinition> {
        self.exchanges.iter().find(|e| e.name == name)
    }

    /// The back-off ladder of `queue`: its retry steps, shortest delay first. Empty when the
    /// queue has none.
    pub fn retry_ladder(&self, queue: &str) -> Vec<RetryStep> {
        let mut steps: Vec<RetryStep> = self
            .queues
            .iter()
            .filter_map(|q| {
                let retry = q.retry.as_ref()?;
                (retry.queue == queue).then(|| RetryStep {
                    queue: q.name.clone(),
                    delay: retry.delay,
                })
            })
            .collect();
        steps.sort_by_key(|s| s.delay);
        steps
    }

    /// The queues whose dead letters land in `dead_letter_queue`: every queue whose
    /// `x-dead-letter-exchange` is bound to it (directly or through exchange-to-exchange
    /// bindings). These are the only queues a replay from that dead-letter queue may send a
    /// message to.
    pub fn dead_letter_sources(&self, dead_letter_queue: &str) -> BTreeSet<String> {
        self.queues
            .iter()
            .filter(|q| {
                q.name != dead_letter_queue
                    && self.dead_letter_exchange(&q.name).is_some_and(|x| {
                        reachable_queues(&self.bindings, x).contains(dead_letter_queue)
                    })
            })
            .map(|q| q.name.clone())
            .collect()
    }

    /// The queues a message published to `exchange` with `routing_key` reaches, as RabbitMQ
    /// routes it: a fanout exchange to every binding, a direct one to the bindings of that key,
    /// a topic one to the bindings whose pattern matches it (`*` one word, `#` any number), and
    /// on through exchange-to-exchange bindings with the same routing key. A headers exchange
    /// routes on headers this does not know: every one of its bindings counts.
    pub fn route(&self, exchange: &str, routing_key: &str) -> BTreeSet<String> {
        walk(&self.bindings, exchange, |b| {
            self.exchange(&b.source).is_some_and(|e| match e.kind {
                ExchangeType::Fanout | ExchangeType::Headers => true,
                ExchangeType::Direct => b.routing_key == routing_key,
                ExchangeType::Topic => topic_matches(&b.routing_key, routing_key),
            })
        })
    }

    /// Every queue a message published to `exchange` may reach, whatever its routing key:
    /// the queues bound to it and, through exchange-to-exchange bindings, to the exchanges it
    /// feeds.
    pub fn reachable_queues(&self, exchange: &str) -> BTreeSet<String> {
        reachable_queues(&self.bindings, exchange)
    }

    /// The `x-dead-letter-exchange` of `queue`, if it has one.
    pub fn dead_letter_exchange(&self, queue: &str) -> Option<&str> {
        self.queue(queue)?
            .arguments
            .get("x-dead-letter-exchange")?
            .as_str()
    }
}

/// The queues reachable from `exchange` over `bindings`, following exchange-to-exchange
/// bindings (a cycle of them is allowed by RabbitMQ and visited once here).
fn reachable_queues(bindings: &[BindingDefinition], exchange: &str) -> BTreeSet<String> {
    walk(bindings, exchange, |_| true)
}

/// The queues reached from `exchange` over the `bindings` that `follows` lets a message take,
/// on through exchange-to-exchange bindings, each exchange visited once.
fn walk<'a>(
    bindings: &'a [BindingDefinition],
    exchange: &'a str,
    follows: impl Fn(&BindingDefinition) -> bool,
) -> BTreeSet<String> {
    let mut queues = BTreeSet::new();
    let mut seen = HashSet::from([exchange]);
    let mut next = vec![exchange];
    while let Some(x) = next.pop() {
        for b in bindings.iter().filter(|b| b.source == x && follows(b)) {
            match b.destination_type {
                DestinationType::Queue => {
                    queues.insert(b.destination.clone());
                }
                DestinationType::Exchange => {
                    if seen.insert(b.destination.as_str()) {
                        next.push(b.destination.as_str());
                    }
                }
            }
        }
    }
    queues
}

/// Whether a topic exchange's binding `pattern` matches `key`: words are separated by dots, `*`
/// stands for exactly one word and `#` for zero or more.
fn topic_matches(pattern: &str, key: &str) -> bool {
    fn words(p: &[&str], k: &[&str]) -> bool {
        match (p.split_first(), k.split_first()) {
            (None, None) => true,
            (Some((&"#", rest)), _) => words(rest, k) || (!k.is_empty() && words(p, &k[1..])),
            (Some((&"*", rest)), Some((_, k_rest))) => words(rest, k_rest),
            (Some((w, rest)), Some((kw, k_rest))) => w == kw && words(rest, k_rest),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    words(&p, &k)
}

/// Whether the endpoints of a binding must be declared in the file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Declared {
    /// `[[bindings]]`: the source is a declared exchange, the destination a declared queue or
    /// exchange.
    Required,
    /// `[[removed_bindings]]`: what it names may be gone from the file; a destination that is
    /// not declared then needs `destination_type`.
    Optional,
}

/// The names declared in the file, to check and type a binding's endpoints.
struct Names<'a> {
    exchanges: &'a HashSet<String>,
    queues: &'a HashSet<String>,
}

impl Names<'_> {
    /// The binding, its destination type given or inferred from the declared names: a name
    /// declared only as a queue is a queue, only as an exchange an exchange. A name declared as
    /// both, or (in `[[bindings]]`) as neither, is an error naming the binding.
    fn binding(
        &self,
        b: RawBinding,
        declared: Declared,
    ) -> Result<BindingDefinition, TopologyError> {
        let binding = format!("'{}' -> '{}'", b.source, b.destination);
        if declared == Declared::Required && !self.exchanges.contains(&b.source) {
            return Err(TopologyError::UnknownExchange {
                binding,
                exchange: b.source,
            });
        }
        let is_queue = self.queues.contains(&b.destination);
        let is_exchange = self.exchanges.contains(&b.destination);
        let destination_type = match b.destination_type.as_deref() {
            Some(given) => {
                let kind = given.parse::<DestinationType>().map_err(|_| {
                    TopologyError::BadDestinationType {
                        binding: binding.clone(),
                        value: given.to_owned(),
                    }
                })?;
                if declared == Declared::Required {
                    match kind {
                        DestinationType::Queue if !is_queue => {
                            return Err(TopologyError::UnknownQueue {
                                binding,
                                queue: b.destination,
                            })
                        }
                        DestinationType::Exchange if !is_exchange => {
                            return Err(TopologyError::UnknownExchange {
                                binding,
                                exchange: b.destination,
                            })
                        }
                        _ => {}
                    }
                }
                kind
            }
            None => match (is_queue, is_exchange) {
                (true, false) => DestinationType::Queue,
                (false, true) => DestinationType::Exchange,
                (true, true) => {
                    return Err(TopologyError::AmbiguousDestination {
                        binding,
                        destination: b.destination,
                    })
                }
                (false, false) => {
                    return Err(TopologyError::UnknownDestination {
                        binding,
                        destination: b.destination,
                    })
                }
            },
        };
        Ok(BindingDefinition {
            source: b.source,
            destination: b.destination,
            destination_type,
            routing_key: b.routing_key,
            arguments: b.arguments,
        })
    }
}

/// Every quorum queue bound to an exchange that some queue dead-letters to (directly or through
/// exchange-to-exchange bindings) must carry a delivery limit of at least
/// [`MIN_DEAD_LETTER_DELIVERY_LIMIT`], unless it dead-letters itself: then it is a consumer's
/// queue fed by a dead-letter exchange (the order service's `orders.status.dead-letters`), not
/// a dead-letter queue that `burrow dlq` inspects.
fn check_dead_letter_queues(
    queues: &[QueueDefinition],
    bindings: &[BindingDefinition],
) -> Result<(), TopologyError> {
    let dead_letter_exchanges: BTreeSet<&str> = queues
        .iter()
        .filter_map(|q| q.arguments.get("x-dead-letter-exchange")?.as_str())
        .filter(|x| !x.is_empty())
        .collect();
    let reached: BTreeSet<String> = dead_letter_exchanges
        .iter()
        .flat_map(|x| reachable_queues(bindings, x))
        .collect();
    for name in &reached {
        let Some(q) = queues.iter().find(|q| &q.name == name) else {
            continue;
        };
        let dead_letters_itself = q
            .arguments
            .get("x-dead-letter-exchange")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|x| !x.is_empty());
        if q.kind != QueueType::Quorum || dead_letters_itself {
            continue;
        }
        let limit = q.arguments.get("x-delivery-limit");
        if limit
            .and_then(serde_json::Value::as_i64)
            .is_none_or(|l| l < MIN_DEAD_LETTER_DELIVERY_LIMIT)
        {
            return Err(TopologyError::DeadLetterQueueDeliveryLimit {
                queue: q.name.clone(),
                value: limit.map_or_else(|| "none".to_owned(), ToString::to_string),
            });
        }
    }
    Ok(())
}

fn queue_definition(
    q: RawQueue,
    exchanges: &HashSet<String>,
    queues: &HashSet<String>,
) -> Result<QueueDefinition, TopologyError> {
    let kind = q
        .kind
        .parse::<QueueType>()
        .map_err(|_| TopologyError::BadQueueType {
            queue: q.name.clone(),
            value: q.kind.clone(),
        })?;
    let mut arguments = q.arguments;
    if let Some(arg) = arguments.remove("x-queue-type") {
        let argument = arg
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| arg.to_string());
        if argument != kind.as_str() {
            return Err(TopologyError::QueueTypeConflict {
                queue: q.name,
                kind,
                argument,
            });
        }
    }
    if let Some(dlx) = arguments
        .get("x-dead-letter-exchange")
        .and_then(|v| v.as_str())
    {
        if !dlx.is_empty() && !exchanges.contains(dlx) {
            return Err(TopologyError::UnknownDeadLetterExchange {
                queue: q.name,
                exchange: dlx.to_owned(),
            });
        }
    }
    if kind == QueueType::Stream
        && !arguments.contains_key("x-max-age")
        && !arguments.contains_key("x-max-length-bytes")
    {
        return Err(TopologyError::UnboundedStream { queue: q.name });
    }

    let delay = match &q.delay {
        Some(text) => Some(parse_delay(text).ok_or_else(|| TopologyError::BadDelay {
            queue: q.name.clone(),
            value: text.clone(),
        })?),
        None => None,
    };
    let ttl = arguments.get("x-message-ttl").and_then(|v| v.as_u64());
    let retry = match q.retry_for {
        None if delay.is_some() => {
            return Err(TopologyError::DelayWithoutRetryFor { queue: q.name });
        }
        None => None,
        Some(target) => {
            if !queues.contains(&target) {
                return Err(TopologyError::RetryForUnknownQueue {
                    queue: q.name,
                    target,
                });
            }
            let delay = match (delay, ttl) {
                (None, None) => return Err(TopologyError::RetryWithoutDelay { queue: q.name }),
                (Some(d), Some(ttl)) if d.as_millis() != u128::from(ttl) => {
                    return Err(TopologyError::RetryDelayMismatch {
                        queue: q.name,
                        delay_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                        ttl_ms: ttl,
                    });
                }
                (Some(d), _) => d,
                (None, Some(ttl)) => Duration::from_millis(ttl),
            };
            // The TTL is what the broker enforces; keep it in the arguments either way.
            let ttl_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
            arguments.insert("x-message-ttl".into(), ttl_ms.into());
            Some(RetryOf {
                queue: target,
                delay,
            })
        }
    };

    Ok(QueueDefinition {
        name: q.name,
        kind,
        durable: q.durable,
        arguments,
        retry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = include_str!("../../topology/shop.toml");

    /// The error with its sources, as the CLI prints it.
    fn err(text: &str) -> String {
        let e = Topology::parse(text).expect_err("should be rejected");
        format!("{:#}", anyhow::Error::from(e))
    }

    #[test]
    fn shop_topology_parses_with_every_design_entity() {
        let t = Topology::parse(SHOP).expect("shop.toml is valid");
        for name in ["orders", "orders.dlx", "activity", "activity.dlx"] {
            assert!(t.exchange(name).is_some(), "{name}");
        }
        assert_eq!(
            t.exchange("orders").map(|e| e.kind),
            Some(ExchangeType::Topic)
        );
        let fulfillment = t.queue("orders.fulfillment").expect("queue");
        assert_eq!(fulfillment.kind, QueueType::Quorum);
        assert_eq!(fulfillment.arguments["x-delivery-limit"], 5);
        assert_eq!(
            t.queue("activity.log").map(|q| q.kind),
            Some(QueueType::Stream)
        );
        assert_eq!(
            t.dead_letter_exchange("orders.fulfillment"),
            Some("orders.dlx")
        );
        assert_eq!(
            t.dead_letter_exchange("activity.notifications"),
            Some("activity.dlx")
        );
        assert_eq!(t.dead_letter_exchange("orders.dead"), None);
    }

    #[test]
    fn dead_letter_sources_are_the_queues_that_dead_letter_into_it() {
        let t = Topology::parse(SHOP).expect("valid");
        assert_eq!(
            t.dead_letter_sources("orders.dead"),
            BTreeSet::from([
                "orders.fulfillment".to_owned(),
                "orders.inventory".to_owned()
            ])
        );
        assert_eq!(
            t.dead_letter_sources("activity.dead"),
            BTreeSet::from([
                "activity.analytics".to_owned(),
                "activity.notifications".to_owned(),
                "orders.status".to_owned(),
                "orders.status.dead-letters".to_owned()
            ])
        );
        assert!(t.dead_letter_sources("some.other").is_empty());
    }

    #[test]
    fn dead_letter_queues_need_a_delivery_limit_no_inspection_reaches() {
        let t = Topology::parse(SHOP).expect("valid");
        for q in ["orders.dead", "activity.dead"] {
            let limit = t.queue(q).expect(q).arguments["x-delivery-limit"].as_i64();
            assert!(
                limit.is_some_and(|l| l >= MIN_DEAD_LETTER_DELIVERY_LIMIT),
                "{q}"
            );
        }
        let topology = |args: &str| {
            format!(
                r#"
                [[exchanges]]
                name = "work.dlx"
                type = "fanout"
                [[queues]]
                name = "work"
                type = "quorum"
                arguments = {{ x-dead-letter-exchange = "work.dlx" }}
                [[queues]]
                name = "work.dead"
                type = "quorum"
                {args}
                [[bindings]]
                source = "work.dlx"
                destination = "work.dead"
                "#
            )
        };
        let e = err(&topology(""));
        assert!(e.contains("'work.dead'") && e.contains("got none"), "{e}");
        let e = err(&topology("arguments = { x-delivery-limit = -1 }"));
        assert!(e.contains("got -1") && e.contains("3.10"), "{e}");
        let e = err(&topology("arguments = { x-delivery-limit = 20 }"));
        assert!(e.contains("got 20"), "{e}");
        Topology::parse(&topology(
            "arguments = { x-delivery-limit = 1_000_000_000 }",
        ))
        .expect("a limit no inspection reaches is fine");
    }

    #[test]
    fn retry_ladder_is_sorted_by_delay() {
        let t = Topology::parse(SHOP).expect("valid");
        let ladder = t.retry_ladder("orders.fulfillment");
        let delays: Vec<u64> = ladder.iter().map(|s| s.delay.as_secs()).collect();
        assert_eq!(delays, vec![1, 10, 60]);
        assert_eq!(ladder[0].queue, "orders.fulfillment.retry.1s");
        let activity: Vec<String> = t
            .retry_ladder("activity.notifications")
            .into_iter()
            .map(|s| s.queue)
            .collect();
        assert_eq!(
            activity,
            [
                "activity.notifications.retry.1s",
                "activity.notifications.retry.10s",
                "activity.notifications.retry.60s"
            ]
        );
        assert_eq!(t.retry_ladder("activity.analytics").len(), 3);
        assert!(t.retry_ladder("activity.recommendations").is_empty());
        assert!(t.retry_ladder("activity.log").is_empty());
    }

    #[test]
    fn delay_alone_sets_the_ttl() {
        let t = Topology::parse(
            r#"
            [[queues]]
            name = "work"
            [[queues]]
            name = "work.retry"
            retry_for = "work"
            delay = "200ms"
            "#,
        )
        .expect("valid");
        assert_eq!(
            t.queue("work.retry").expect("q").arguments["x-message-ttl"],
            200
        );
        assert_eq!(t.retry_ladder("work")[0].delay, Duration::from_millis(200));
    }

    #[test]
    fn binding_to_undeclared_exchange_names_it() {
        let e = err(r#"
            [[queues]]
            name = "q"
            [[bindings]]
            source = "nowhere"
            destination = "q"
        "#);
        assert!(e.contains("exchange 'nowhere'"), "{e}");
    }

    #[test]
    fn binding_to_an_undeclared_destination_names_it() {
        let e = err(r#"
            [[exchanges]]
            name = "x"
            type = "fanout"
            [[bindings]]
            source = "x"
            destination = "ghost"
        "#);
        assert_eq!(
            e,
            "binding 'x' -> 'ghost' names destination 'ghost', which is neither a declared queue \
             nor a declared exchange"
        );
        let e = err(r#"
            [[exchanges]]
            name = "x"
            type = "fanout"
            [[queues]]
            name = "ghost"
            [[bindings]]
            source = "x"
            destination = "ghost"
            destination_type = "exchange"
        "#);
        assert!(
            e.contains("binding 'x' -> 'ghost'") && e.contains("exchange 'ghost'"),
            "{e}"
        );
        let e = err(r#"
            [[exchanges]]
            name = "x"
            type = "fanout"
            [[exchanges]]
            name = "ghost"
            type = "topic"
            [[bindings]]
            source = "x"
            destination = "ghost"
            destination_type = "queue"
        "#);
        assert!(e.contains("queue 'ghost'"), "{e}");
    }

    /// The shape of `topology/shop.toml`'s activity.by-kind, in small.
    const E2E: &str = r#"
        [[exchanges]]
        name = "events"
        type = "fanout"
        [[exchanges]]
        name = "events.by-kind"
        type = "topic"
        [[queues]]
        name = "stock"
        [[bindings]]
        source = "events"
        destination = "events.by-kind"
        [[bindings]]
        source = "events.by-kind"
        destination = "stock"
        routing_key = "inventory.changed"
    "#;

    #[test]
    fn a_binding_to_an_exchange_is_told_apart_by_the_declared_names() {
        let t = Topology::parse(E2E).expect("valid");
        assert_eq!(t.bindings[0].destination_type, DestinationType::Exchange);
        assert_eq!(t.bindings[1].destination_type, DestinationType::Queue);
        assert_eq!(
            t.bindings[0].to_string(),
            "'events' -> exchange 'events.by-kind'"
        );
        assert_eq!(
            t.bindings[1].entity().to_string(),
            "binding 'events.by-kind' -> 'stock' ('inventory.changed')"
        );
        assert_eq!(
            t.reachable_queues("events"),
            BTreeSet::from(["stock".to_owned()])
        );
        let given = E2E.replace(
            "destination = \"events.by-kind\"",
            "destination = \"events.by-kind\"\n        destination_type = \"exchange\"",
        );
        assert_eq!(Topology::parse(&given).expect("valid"), t);
        let e = err(&E2E.replace(
            "destination = \"events.by-kind\"",
            "destination = \"events.by-kind\"\n        destination_type = \"topic\"",
        ));
        assert!(
            e.contains("binding 'events' -> 'events.by-kind'") && e.contains("'topic'"),
            "{e}"
        );
    }

    #[test]
    fn a_name_that_is_a_queue_and_an_exchange_needs_a_destination_type() {
        let both = format!("{E2E}\n[[queues]]\nname = \"events.by-kind\"\n");
        let e = err(&both);
        assert!(
            e.contains("binding 'events' -> 'events.by-kind'")
                && e.contains("both a queue and an exchange")
                && e.contains("destination_type"),
            "{e}"
        );
        let said = both.replace(
            "destination = \"events.by-kind\"",
            "destination = \"events.by-kind\"\ndestination_type = \"queue\"",
        );
        let t = Topology::parse(&said).expect("valid with destination_type");
        assert_eq!(t.bindings[0].destination_type, DestinationType::Queue);
    }

    #[test]
    fn removed_bindings_may_name_what_is_gone_but_not_what_is_still_bound() {
        let removed = format!(
            r#"{E2E}
            [[removed_bindings]]
            source = "events"
            destination = "stock"
            [[removed_bindings]]
            source = "old.exchange"
            destination = "old.queue"
            destination_type = "queue"
            "#
        );
        let t = Topology::parse(&removed).expect("valid");
        assert_eq!(t.removed_bindings.len(), 2);
        assert_eq!(
            t.removed_bindings[0].destination_type,
            DestinationType::Queue
        );
        assert_eq!(t.removed_bindings[1].source, "old.exchange");
        let e = err(&format!(
            "{E2E}\n[[removed_bindings]]\nsource = \"old\"\ndestination = \"gone\"\n"
        ));
        assert!(e.contains("destination 'gone'"), "{e}");
        let e = err(&format!(
            "{E2E}\n[[removed_bindings]]\nsource = \"events\"\ndestination = \"events.by-kind\"\n"
        ));
        assert_eq!(
            e,
            "binding 'events' -> exchange 'events.by-kind' is both in [[bindings]] and in \
             [[removed_bindings]]"
        );
    }

    #[test]
    fn the_shop_routes_only_the_kinds_inventory_and_order_status_need() {
        let t = Topology::parse(SHOP).expect("valid");
        let by_kind = |queue: &str| -> Vec<(String, String)> {
            t.bindings
                .iter()
                .filter(|b| b.destination == queue)
                .map(|b| (b.source.clone(), b.routing_key.clone()))
                .collect()
        };
        assert_eq!(
            by_kind("orders.inventory"),
            [
                ("orders".to_owned(), "order.placed".to_owned()),
                (
                    "activity.by-kind".to_owned(),
                    "inventory.changed".to_owned()
                )
            ]
        );
        assert_eq!(
            by_kind("orders.status"),
            [("activity.by-kind".to_owned(), "order.fulfilled".to_owned())]
        );
        assert!(t.reachable_queues("activity").contains("orders.inventory"));
        assert!(t
            .removed_bindings
            .iter()
            .all(|b| b.source == "activity" && b.destination_type == DestinationType::Queue));
        assert_eq!(t.removed_bindings.len(), 2);
    }

    #[test]
    fn topic_patterns_match_as_rabbitmq_matches_them() {
        for (pattern, key, hit) in [
            ("inventory.changed", "inventory.changed", true),
            ("inventory.changed", "order.placed", false),
            ("order.*", "order.placed", true),
            ("order.*", "order.placed.late", false),
            ("order.#", "order", true),
            ("order.#", "order.placed.late", true),
            ("#", "anything.at.all", true),
            ("#.late", "order.placed.late", true),
            ("*.placed", "placed", false),
            ("", "", true),
        ] {
            assert_eq!(topic_matches(pattern, key), hit, "{pattern} ~ {key}");
        }
    }

    #[test]
    fn the_shop_routes_each_activity_event_by_its_kind() {
        let t = Topology::parse(SHOP).expect("valid");
        let everyone = [
            "activity.analytics",
            "activity.log",
            "activity.notifications",
            "activity.recommendations",
        ];
        for (kind, also) in [
            ("product.viewed", None),
            ("order.placed", None),
            ("inventory.changed", Some("orders.inventory")),
            ("order.fulfilled", Some("orders.status")),
        ] {
            let mut expected: BTreeSet<String> = everyone.map(str::to_owned).into();
            expected.extend(also.map(str::to_owned));
            assert_eq!(t.route("activity", kind), expected, "{kind}");
        }
        assert_eq!(
            t.route("orders", "order.placed"),
            BTreeSet::from([
                "orders.fulfillment".to_owned(),
                "orders.inventory".to_owned()
            ])
        );
        assert!(t.route("nowhere", "order.placed").is_empty());
    }

    #[test]
    fn a_dead_letter_queue_behind_an_exchange_binding_needs_its_delivery_limit() {
        let e = err(r#"
            [[exchanges]]
            name = "work.dlx"
            type = "fanout"
            [[exchanges]]
            name = "work.dlx.all"
            type = "fanout"
            [[queues]]
            name = "work"
            type = "quorum"
            arguments = { x-dead-letter-exchange = "work.dlx" }
            [[queues]]
            name = "work.dead"
            type = "quorum"
            [[bindings]]
            source = "work.dlx"
            destination = "work.dlx.all"
            [[bindings]]
            source = "work.dlx.all"
            destination = "work.dead"
        "#);
        assert!(e.contains("'work.dead'") && e.contains("got none"), "{e}");
    }

    #[test]
    fn retry_step_without_delay_is_rejected() {
        let e = err(r#"
            [[queues]]
            name = "work"
            [[queues]]
            name = "work.retry"
            retry_for = "work"
        "#);
        assert!(e.contains("retry queue 'work.retry' has no delay"), "{e}");
    }

    #[test]
    fn retry_step_whose_ttl_disagrees_with_delay_is_rejected() {
        let e = err(r#"
            [[queues]]
            name = "work"
            [[queues]]
            name = "work.retry"
            retry_for = "work"
            delay = "1s"
            arguments = { x-message-ttl = 2000 }
        "#);
        assert!(e.contains("'work.retry'") && e.contains("2000"), "{e}");
    }

    #[test]
    fn bad_delay_and_unknown_retry_target_are_rejected() {
        let e = err(r#"
            [[queues]]
            name = "work"
            [[queues]]
            name = "work.retry"
            retry_for = "work"
            delay = "soon"
        "#);
        assert!(e.contains("'work.retry'") && e.contains("soon"), "{e}");
        let e = err(r#"
            [[queues]]
            name = "work.retry"
            retry_for = "work"
            delay = "1s"
        "#);
        assert!(e.contains("queue 'work'"), "{e}");
    }

    #[test]
    fn bad_queue_type_is_rejected() {
        let e = err(r#"
            [[queues]]
            name = "q"
            type = "quorom"
        "#);
        assert!(e.contains("queue 'q'") && e.contains("quorom"), "{e}");
    }

    #[test]
    fn conflicting_x_queue_type_is_rejected() {
        let e = err(r#"
            [[queues]]
            name = "q"
            type = "quorum"
            arguments = { x-queue-type = "classic" }
        "#);
        assert!(e.contains("queue 'q'"), "{e}");
    }

    #[test]
    fn bad_exchange_type_is_rejected() {
        let e = err(r#"
            [[exchanges]]
            name = "x"
            type = "broadcast"
        "#);
        assert!(e.contains("exchange 'x'") && e.contains("broadcast"), "{e}");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let e = err(r#"
            [[queues]]
            name = "q"
            [[queues]]
            name = "q"
        "#);
        assert!(e.contains("queue 'q' is declared twice"), "{e}");
        let e = err(r#"
            [[exchanges]]
            name = "x"
            type = "topic"
            [[exchanges]]
            name = "x"
            type = "fanout"
        "#);
        assert!(e.contains("exchange 'x' is declared twice"), "{e}");
    }

    #[test]
    fn dead_letter_exchange_must_be_declared() {
        let e = err(r#"
            [[queues]]
            name = "q"
            type = "quorum"
            arguments = { x-dead-letter-exchange = "q.dlx" }
        "#);
        assert!(
            e.contains("queue 'q'") && e.contains("exchange 'q.dlx'"),
            "{e}"
        );
    }

    #[test]
    fn unbounded_stream_is_rejected() {
        let e = err(r#"
            [[queues]]
            name = "log"
            type = "stream"
        "#);
        assert!(e.contains("stream 'log' is unbounded"), "{e}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = err(r#"
            [[queues]]
            name = "q"
            durability = true
        "#);
        assert!(e.contains("durability"), "{e}");
    }

    #[test]
    fn users_parse_with_permissions_and_reject_unknown_fields() {
        let t = Topology::parse(SHOP).expect("valid");
        let producer = t
            .users
            .iter()
            .find(|u| u.name == "burrow-producer")
            .expect("producer user");
        assert_eq!(
            producer.permissions.write,
            r"^(orders|activity|activity\.dlx)$"
        );
        assert_eq!(
            producer.permissions.read,
            r"^orders\.status(\.dead-letters)?$"
        );
        assert_eq!(producer.permissions.configure, "^$");
        assert!(!format!("{producer:?}").contains("producer-demo"));
        assert!(t.users.iter().any(|u| u.name == "guest" && u.export_only));
        let e = err(r#"
            [[users]]
            name = "u"
            password = "p"
            configure = "^$"
            write = "^$"
            read = "^$"
            admin = true
        "#);
        assert!(e.contains("admin"), "{e}");
        let e = err(r#"
            [[users]]
            name = "u"
            password = ""
            configure = "^$"
            write = "^$"
            read = "^$"
        "#);
        assert!(e.contains("user 'u'"), "{e}");
    }

    #[test]
    fn delays_parse() {
        assert_eq!(parse_delay("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(parse_delay("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_delay("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_delay("1.5s"), None);
        assert_eq!(parse_delay("s"), None);
    }
}
