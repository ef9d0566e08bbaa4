//! Integration tests against the real RabbitMQ at `AMQP_URL` (default the local node), each in a
//! vhost of its own that is deleted afterwards.

mod activity;
mod cli;
mod compose;
mod helpers;
mod pipeline;
mod recommendations;
mod services;
mod topology;
