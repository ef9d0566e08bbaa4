//! What a service implements: a [`Handler`] turns one [`Incoming`] message into an [`Outcome`];
//! the runtime does the rest.

use std::future::Future;

use lapin::types::FieldTable;
use lapin::BasicProperties;

use crate::message::{header_str, header_u32, HEADER_ATTEMPTS};

/// How a handler finished with a message; the runtime settles it accordingly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: ack.
    Success,
    /// Might work later (a carrier timeout): retry through the back-off ladder, then dead-letter.
    Transient(String),
    /// Will never work (bad JSON, a broken rule): dead-letter now, with the reason.
    Permanent(String),
}

/// One delivery, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The body.
    pub body: Vec<u8>,
    /// AMQP properties and headers.
    pub properties: BasicProperties,
    /// The exchange it was published to.
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Whether the broker delivered it before (to this or another consumer).
    pub redelivered: bool,
}

impl Incoming {
    /// Attempts made before this one (`x-burrow-attempts`, 0 when absent).
    pub fn attempts(&self) -> u32 {
        header_u32(self.headers(), HEADER_ATTEMPTS).unwrap_or(0)
    }

    /// The headers, if any.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.properties.headers().as_ref()
    }

    /// A string header.
    pub fn header(&self, name: &str) -> Option<String> {
        header_str(self.headers(), name)
    }

    /// The `message_id` property.
    pub fn message_id(&self) -> Option<&str> {
        self.properties.message_id().as_ref().map(|s| s.as_str())
    }
}

/// A service's message handler. It must be idempotent: a message can arrive more than once.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. A panic is caught by the runtime and counts as a transient failure.
    fn handle(&self, msg: &Incoming) -> impl Future<Output = Outcome> + Send;

    /// The `basic.consume` arguments of the next session, asked before every consume (the first
    /// and every one after a reconnect); `None` keeps `WorkerConfig::consume_arguments`. A stream
    /// reader answers with the offset right after the last one it applied, so a reconnect
    /// resumes where the reader stopped, not where the process started.
    ///
    /// # Errors
    /// The handler's store cannot say where it stopped; the session is retried with back-off.
    fn consume_arguments(&self) -> impl Future<Output = anyhow::Result<Option<FieldTable>>> + Send {
        async { Ok(None) }
    }
}
