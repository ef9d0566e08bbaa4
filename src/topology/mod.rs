//! The topology: exchanges, queues and bindings as data (`topology/shop.toml`), validated,
//! declared idempotently, verified against a live broker, and exported as a RabbitMQ
//! definitions file.
//!
//! - [`definition`]: the typed data, parsing and validation.
//! - [`drift`]: what differs between the file and the broker.
//! - [`declare`]: declaring on a broker over AMQP, reporting drift.
//! - [`verify`]: checking a broker through the management API.
//! - [`export`]: the definitions document (users with salted SHA-256 password hashes).
//! - [`users`]: creating the users and permissions through the management API.
//! - [`actions`]: apply, verify or export a topology file against the configured broker.

pub mod actions;
pub mod declare;
pub mod definition;
pub mod drift;
pub mod export;
pub mod users;
pub mod verify;

pub use declare::{apply, ApplyError, ApplyReport};
pub use definition::{
    Arguments, BindingDefinition, DestinationType, ExchangeDefinition, ExchangeType, Password,
    Permissions, QueueDefinition, QueueType, RetryOf, RetryStep, Topology, TopologyError,
    UserDefinition, MIN_DEAD_LETTER_DELIVERY_LIMIT,
};
pub use drift::{Drift, Entity};
