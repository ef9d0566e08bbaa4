//! burrow: work queues and event streams for an online shop, over RabbitMQ.
//!
//! # Layout
//! - [`settings`]: typed, layered configuration; secrets never printed.
//! - [`broker`]: the connection pool and clear connection errors; [`backoff`] for reconnects.
//! - [`topology`]: exchanges, queues and bindings as data (`topology/shop.toml`).
//! - [`management`]: a typed client of the management HTTP API.
//! - [`message`]: orders and activity events, their rules and headers.
//! - [`publisher`]: confirmed, mandatory publishing, one by one or windowed.
//! - [`worker`]: the runtime every service runs on (consume, settle, retry, dead-letter).
//! - [`fulfillment`]: the order fulfillment service (carrier, store, `order.fulfilled`).
//! - [`notifications`], [`analytics`], [`recommendations`]: the activity services (mail,
//!   counts, a model built from the stream); [`sqlite`] is their store plumbing.
//! - [`producer`]: the order service and other publishers.
//! - [`service`]: runs one service as a worker process; [`http`] and [`metrics`] serve it.
//! - [`status`]: `burrow status`; [`dlq`]: `burrow dlq list|show|replay|purge`.
//! - [`cli`]: errors as one line and an exit code, shared by the binaries.
//! - [`telemetry`]: the one tracing setup; [`shutdown`]: SIGINT/SIGTERM.

pub mod analytics;
pub mod backoff;
pub mod broker;
pub mod broker_version;
pub mod children;
pub mod cli;
pub mod demo;
pub mod dlq;
pub mod fulfillment;
pub mod http;
pub mod management;
pub mod message;
pub mod metrics;
pub mod notifications;
pub mod producer;
pub mod publisher;
pub mod recommendations;
pub mod service;
pub mod settings;
pub mod shutdown;
pub mod sqlite;
pub mod status;
pub mod telemetry;
pub mod topology;
pub mod worker;
