//! burrow: work queues and event streams for an online shop, over RabbitMQ.
//!
//! # Layout
//! - [`settings`]: typed, layered configuration; secrets never printed.
//! - [`broker`]: the connection pool and clear connection errors.
//! - [`topology`]: exchanges, queues and bindings as data (`topology/shop.toml`).
//! - [`management`]: a typed client of the management HTTP API.
//! - [`cli`]: errors as one line and an exit code, shared by the `burrow` commands.
//! - [`telemetry`]: the one tracing setup.

pub mod broker;
pub mod cli;
pub mod management;
pub mod settings;
pub mod telemetry;
pub mod topology;
