//! The notifications service (`activity.notifications`): a welcome mail on `user.registered`, an
//! order confirmation on `order.placed`, a shipping notice on `order.fulfilled`; every other kind
//! is acked without mail. Each event's mail is sent at most once per claim (see [`store`]): a
//! redelivery or a duplicate publish with the same `event_id` sends nothing.
//!
//! The claim is renewed before every retry and every third of a lease while a send runs, so
//! a send slower than the lease is not sent again by another worker; a worker that finds its
//! claim taken over does not send. A worker that finds the event claimed by a live worker
//! waits for that worker's outcome (sent, released, or its process gone), checking every
//! 100 ms: a claim left by a killed process is taken over within that, not after a lease.

mod mail;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, warn};

pub use mail::{outbox_file, read_outbox, Mail, MailError, Mailer};
pub use store::{Claim, NotificationCounts, NotificationStore};

use crate::message::{ActivityEvent, EventKind};
use crate::worker::{Handler, Incoming, Outcome};

/// The queue the service consumes.
pub const QUEUE: &str = "activity.notifications";

/// How long a worker waits on a claim held by another live worker before it hands its
/// delivery back as a transient failure. The owner renews its claim while it sends, so this
/// bounds the wait on a send that hangs (lettre's SMTP timeout is 60 s per attempt).
pub const BUSY_WAIT: Duration = Duration::from_secs(300);

/// The dependency name of the mail transport (SMTP server or outbox) in the circuit breaker.
pub const MAIL: &str = "mail";

/// Attempts at sending one mail before the event is handed back as a transient failure.
const SEND_ATTEMPTS: u32 = 3;

/// The mail an event asks for, if any; `Err` names the event's missing address.
///
/// # Errors
/// The event needs a mail but carries no `data.email`.
pub fn mail_for(event: &ActivityEvent) -> Result<Option<Mail>, String> {
    let order = event.order_id.as_deref().unwrap_or("-");
    let (subject, body) = match event.kind {
        EventKind::UserRegistered => {
            let name = event
                .data
                .get("name")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("there");
            (
                format!("Welcome to the shop, {name}!"),
                format!("Hello {name},\n\nthank you for signing up.\n\nThe shop\n"),
            )
        }
        EventKind::OrderPlaced => {
            let total = event
                .data
                .get("total_cents")
                .and_then(serde_json::Value::as_i64)
                .map(|c| {
                    let currency = event
                        .data
                        .get("currency")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("EUR");
                    format!(" Total: {}.{:02} {currency}.", c / 100, c % 100)
                })
                .unwrap_or_default();
            (
                format!("Your order {order} is confirmed"),
                format!("We received your order {order}.{total}\n\nThe shop\n"),
            )
        }
        EventKind::OrderFulfilled => {
            let shipment = event
                .data
                .get("shipment_id")
                .and_then(serde_json::Value::as_str)
                .map(|s| format!(" Shipment: {s}."))
                .unwrap_or_default();
            (
                format!("Your order {order} has shipped"),
                format!("Your order {order} is on its way.{shipment}\n\nThe shop\n"),
            )
        }
        EventKind::ProductViewed | EventKind::ReviewPosted | EventKind::InventoryChanged => {
            return Ok(None)
        }
    };
    let to = event
        .email()
        .ok_or_else(|| format!("{} {} has no data.email", event.kind, event.event_id))?;
    Ok(Some(Mail {
        to: to.to_owned(),
        subject,
        body,
        message_id: format!("<{}@burrow>", event.event_id),
    }))
}

/// The notifications handler.
#[derive(Debug, Clone)]
pub struct Notifications {
    mailer: Mailer,
    from: String,
    store: Arc<NotificationStore>,
}

impl Notifications {
    /// Sends through `mailer` as `from`, deduplicating on `store`.
    pub fn new(mailer: Mailer, from: String, store: Arc<NotificationStore>) -> Self {
        Self {
            mailer,
            from,
            store,
        }
    }

    async fn claim(&self, event: &ActivityEvent, to: &str, owner: &str) -> Result<bool, Outcome> {
        let started = Instant::now();
        loop {
            match self
                .store
                .claim(&event.event_id, event.kind.as_str(), to, owner)
                .await
            {
                Ok(Claim::Won) => return Ok(true),
                Ok(Claim::AlreadySent) => return Ok(false),
                // Another live worker holds the claim: wait until it is sent or released, its
                // process is gone, or it stops renewing. Acking now could lose the mail: that
                // worker's own delivery may be this one, requeued after its channel closed.
                Ok(Claim::Busy) if started.elapsed() <= BUSY_WAIT => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Claim::Busy) => {
                    return Err(Outcome::Transient(format!(
                        "event {} still claimed by another worker",
                        event.event_id
                    )))
                }
                Err(e) => return Err(Outcome::Transient(format!("notifications store: {e:#}"))),
            }
        }
    }

    /// Whether `owner` still holds the claim; a store error counts as "still held" (the send
    /// goes ahead as before renewals existed, and marking it sent checks the owner again).
    async fn still_mine(&self, event: &ActivityEvent, owner: &str) -> bool {
        match self.store.renew(&event.event_id, owner).await {
            Ok(mine) => mine,
            Err(e) => {
                warn!(event_id = %event.event_id, error = %format!("{e:#}"), "could not renew the claim");
                true
            }
        }
    }

    /// Sends `mail`, renewing `owner`'s claim every third of a lease while the send runs.
    async fn send_renewing(
        &self,
        event: &ActivityEvent,
        mail: &Mail,
        owner: &str,
    ) -> Result<(), MailError> {
        let every = (self.store.lease() / 3).max(Duration::from_millis(10));
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let send = self.mailer.send(&self.from, mail);
        tokio::pin!(send);
        loop {
            tokio::select! {
                result = &mut send => return result,
                _ = renew.tick() => {
                    if !self.still_mine(event, owner).await {
                        error!(event_id = %event.event_id, "claim taken over while sending");
                    }
                }
            }
        }
    }

    async fn send(&self, event: &ActivityEvent, mail: &Mail) -> Outcome {
        let owner = store::new_owner();
        match self.claim(event, &mail.to, &owner).await {
            Ok(true) => {}
            Ok(false) => {
                debug!(event_id = %event.event_id, "mail already sent; duplicate ignored");
                return Outcome::Success;
            }
            Err(outcome) => return outcome,
        }
        let mut attempt = 0;
        let failure = loop {
            attempt += 1;
            // Fenced: another worker took the claim over (this one was judged gone or stopped
            // renewing); that worker sends the mail, and its own delivery stays unacked until
            // it does. Not before the first attempt: the claim was won (stamped) just now.
            if attempt > 1 && !self.still_mine(event, &owner).await {
                warn!(event_id = %event.event_id, "claim taken over by another worker; not sending");
                return Outcome::Success;
            }
            match self.send_renewing(event, mail, &owner).await {
                Ok(()) => break None,
                Err(MailError::Invalid(reason)) => break Some(Outcome::Permanent(reason)),
                Err(MailError::Transport(reason)) if attempt >= SEND_ATTEMPTS => {
                    break Some(Outcome::Unavailable {
                        dependency: MAIL,
                        reason,
                    })
                }
                Err(MailError::Transport(reason)) => {
                    warn!(event_id = %event.event_id, attempt, %reason, "sending failed; trying again");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
            }
        };
        match failure {
            None => {
                match self.store.sent(&event.event_id, &owner).await {
                    Ok(true) => {}
                    Ok(false) => {
                        error!(event_id = %event.event_id, "mail sent after the claim was taken over");
                    }
                    // The mail is out; only the record is missing. Retrying would send it again.
                    Err(e) => {
                        error!(event_id = %event.event_id, error = %format!("{e:#}"), "mail sent but not recorded");
                    }
                }
                // debug: one line per mail is hot-path cost; sent mails are counted in
                // `burrow_messages_total` and recorded in the notifications store.
                debug!(event_id = %event.event_id, kind = %event.kind, "mail sent");
                Outcome::Success
            }
            Some(outcome) => {
                if let Err(e) = self.store.release(&event.event_id, &owner).await {
                    error!(event_id = %event.event_id, error = %format!("{e:#}"), "could not release the claim; it expires after the lease");
                }
                outcome
            }
        }
    }
}

impl Handler for Notifications {
    async fn probe(&self, dependency: &str) -> Result<(), String> {
        if dependency == MAIL {
            self.mailer.probe().await
        } else {
            Ok(())
        }
    }

    async fn handle(&self, msg: &Incoming) -> Outcome {
        let event = match ActivityEvent::decode(&msg.body) {
            Ok(e) => e,
            Err(e) => return Outcome::Permanent(e.to_string()),
        };
        match mail_for(&event) {
            Ok(Some(mail)) => self.send(&event, &mail).await,
            Ok(None) => Outcome::Success,
            Err(why) => {
                warn!(event_id = %event.event_id, kind = %event.kind, reason = %why, "no address to mail; event settled without mail");
                Outcome::Success
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mails_follow_the_kind() {
        let mut e = ActivityEvent::new(EventKind::UserRegistered, "cus_1");
        e.data = serde_json::json!({"email": "ann@example.com", "name": "Ann"});
        let m = mail_for(&e).unwrap().unwrap();
        assert_eq!(m.to, "ann@example.com");
        assert!(m.subject.contains("Ann"));
        assert_eq!(m.message_id, format!("<{}@burrow>", e.event_id));

        e.kind = EventKind::ProductViewed;
        assert_eq!(mail_for(&e).unwrap(), None);

        let mut placed = ActivityEvent::new(EventKind::OrderPlaced, "cus_1");
        placed.order_id = Some("ord_1".into());
        assert!(mail_for(&placed).unwrap_err().contains("no data.email"));
        placed.data = serde_json::json!({"email": "a@b", "total_cents": 1999, "currency": "EUR"});
        assert!(mail_for(&placed)
            .unwrap()
            .unwrap()
            .body
            .contains("19.99 EUR"));
    }
}
