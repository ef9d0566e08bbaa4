//! Integration tests against the real RabbitMQ at `AMQP_URL` (default the local node), each in a
//! vhost of its own that is deleted afterwards.

mod activity;
mod breaker;
mod browser;
mod cli;
#[path = "../common/mod.rs"]
mod common;
mod compose;
mod console;
mod demo;
mod deploy;
mod dlq;
mod helpers;
mod inventory;
mod observability;
mod operations;
mod orders;
mod pg_outage;
mod pipeline;
mod postgres;
mod publisher;
mod recommendations;
mod security;
mod services;
mod silent_broker;
mod status;
mod supervisor;
mod topology;
mod traces;
