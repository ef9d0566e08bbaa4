//! The forwarding channel of a session: copies of failed messages (retries, dead letters) are
//! published on a confirm channel that is opened lazily and reopened, with back-off, after the
//! broker closed it (publishing to a deleted exchange closes a channel with 404 NOT_FOUND).

use std::time::Duration;

use lapin::{Channel, Connection};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::info;

use crate::backoff::Backoff;
use crate::publisher::{self, Confirm, Outgoing};

/// Publishes forwarded copies for one session, on a channel of the session's connection.
pub struct Forwarder<'a> {
    conn: &'a Connection,
    confirm_timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    channel: Option<Channel>,
    /// Paces the opening of channels; reset by a confirmed forward, so a channel that opens
    /// but is closed by every publish is not reopened in a tight loop either.
    backoff: Backoff,
    not_before: Option<Instant>,
    opened: u64,
}

impl<'a> Forwarder<'a> {
    /// Forwards on channels of `conn`, each copy waiting at most `confirm_timeout`.
    pub fn new(conn: &'a Connection, confirm_timeout: Duration) -> Self {
        Self {
            conn,
            confirm_timeout,
            state: Mutex::new(State::default()),
        }
    }

    /// Publishes `copy` and waits for its confirm.
    ///
    /// # Errors
    /// No channel could be opened (or the back-off does not allow a new one yet), the channel
    /// failed, or the confirm did not come in time.
    pub async fn forward(&self, copy: &Outgoing) -> anyhow::Result<Confirm> {
        let channel = self.channel().await?;
        let fate = publisher::publish_one(&channel, copy, self.confirm_timeout).await;
        if matches!(fate, Ok(Confirm::Confirmed)) {
            self.state.lock().await.backoff.reset();
        }
        fate
    }

    /// Closes the current channel, if any.
    pub async fn close(&self, reason: &str) {
        let channel = self.state.lock().await.channel.take();
        if let Some(channel) = channel {
            if channel.status().connected() {
                crate::broker::close_channel(&channel, reason).await;
            }
        }
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        let mut state = self.state.lock().await;
        if let Some(channel) = &state.channel {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        state.channel = None;
        let now = Instant::now();
        if let Some(at) = state.not_before.filter(|at| *at > now) {
            anyhow::bail!(
                "the forwarding channel is closed; the next one opens in {:?}",
                at - now
            );
        }
        state.not_before = Some(now + state.backoff.next_delay());
        let channel = publisher::confirm_channel(self.conn).await?;
        state.opened += 1;
        if state.opened > 1 {
            info!(
                opened = state.opened,
                "forwarding channel was closed; opened a new one"
            );
        }
        state.channel = Some(channel.clone());
        Ok(channel)
    }
}
