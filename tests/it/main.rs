//! Integration tests against the real RabbitMQ at `AMQP_URL` (default the local node), each in a
//! vhost of its own that is deleted afterwards.

mod cli;
mod compose;
mod dlq;
mod helpers;
mod observability;
mod pipeline;
mod postgres;
mod security;
mod status;
mod topology;
