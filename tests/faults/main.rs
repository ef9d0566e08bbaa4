//! Fault tests: the shop against private RabbitMQ nodes that are killed, restarted, cut off,
//! alarmed and clustered, counting at the end that every confirmed order was fulfilled once in
//! effect or dead-lettered, none lost. Run with `cargo test --test faults -- --nocapture` to see
//! one line of numbers per scenario (also appended to `target/tmp/faults-report.txt`).
//!
//! Needs root (nodes run as the `rabbitmq` user via `runuser`) and the RabbitMQ Debian package.
//! Scenarios run one at a time ([`harness::SERIAL`]); each starts and removes its own nodes.

mod chaos;
#[path = "../common/mod.rs"]
mod common;
mod fake_node;
mod harness;
mod orders;
mod requires;
mod scenarios;
mod shop;
mod tls;
