//! burrow: work queues and event streams for an online shop, over RabbitMQ.
//!
//! # Layout
//! - [`settings`]: typed, layered configuration; secrets never printed.
//! - [`broker`]: the connection pool and clear connection errors.
//! - [`topology`]: exchanges, queues and bindings as data (`topology/shop.toml`).
//! - [`telemetry`]: the one tracing setup.

pub mod backoff;
pub mod broker;
pub mod fulfillment;
pub mod http;
pub mod message;
pub mod metrics;
pub mod producer;
pub mod publisher;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod worker;
