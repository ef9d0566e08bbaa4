//! burrow: work queues and event streams for an online shop, over RabbitMQ.
//!
//! # Layout
//! - [`settings`]: typed, layered configuration; secrets never printed.
//! - [`broker`]: the connection pool and clear connection errors; [`backoff`] for reconnects;
//!   [`broker_version`]: what differs between RabbitMQ versions.
//! - [`topology`]: exchanges, queues and bindings as data (`topology/shop.toml`).
//! - [`management`]: a typed client of the management HTTP API.
//! - [`message`]: orders and activity events, their rules; every header name (`headers.rs`).
//! - [`publisher`]: confirmed, mandatory publishing, one by one or windowed; the library every
//!   sender uses.
//! - [`worker`]: the runtime every service runs on (consume, settle, retry, dead-letter).
//! - [`fulfillment`]: the order fulfillment service (carrier, store, `order.fulfilled`).
//! - [`notifications`], [`analytics`], [`recommendations`]: the activity services (mail,
//!   counts, a model built from the stream); [`sqlite`] is their store plumbing (a group-commit
//!   thread per file).
//! - [`inventory`]: the stock per SKU, reserved for orders, announced as `inventory.changed`.
//! - [`producer`]: the library of the `producer` binary: the order service and the activity and
//!   inventory publishers of the shop, all sending through [`publisher`].
//! - [`orders`]: the order service (`producer serve`): HTTP API, idempotency keys, the
//!   transactional outbox and its relay, order status; [`postgres`] is the PostgreSQL pool.
//! - [`service`]: runs one service as a worker process; [`http`] and [`metrics`] serve it.
//! - [`status`]: the status of a vhost; [`dlq`]: dead letters (list, show, replay, purge);
//!   [`demo`]: the whole shop on one machine; [`console`]: the web console over them.
//! - [`cli`]: the command layer, the only module that prints: tables, JSON, progress bars and
//!   exit codes over what the library returns, shared by the binaries.
//! - [`supervisor`]: `burrow run`, worker processes scaled between MIN and MAX by the backlog
//!   (a pure policy, the process groups, the state file `burrow status` reads).
//! - [`telemetry`]: the one tracing setup (logs, and OTLP export of spans when configured);
//!   [`trace`]: the W3C trace context of messages and the spans of publish, delivery and
//!   handler; [`shutdown`]: SIGINT/SIGTERM; [`children`]: child
//!   processes (the demo's workers, the tests').

pub mod analytics;
pub mod backoff;
pub mod broker;
pub mod broker_version;
pub mod children;
pub mod cli;
pub mod console;
pub mod demo;
pub mod dlq;
pub mod fulfillment;
pub mod http;
pub mod inventory;
pub mod management;
pub mod message;
pub mod metrics;
pub mod notifications;
pub mod orders;
pub mod postgres;
pub mod producer;
pub mod publisher;
pub mod recommendations;
pub mod service;
pub mod settings;
pub mod shutdown;
pub mod sqlite;
pub mod status;
pub mod supervisor;
pub mod telemetry;
pub mod topology;
pub mod trace;
pub mod worker;
