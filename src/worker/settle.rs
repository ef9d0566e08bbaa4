//! The settlement rules of docs/CONTRACT.md as a pure function: given a handler's outcome, ack, or
//! forward a copy (to the next retry queue, or to the dead-letter exchange with the reason) and
//! ack once the copy is confirmed.

use chrono::Utc;
use lapin::types::{AMQPValue, FieldTable};

use super::handler::{Incoming, Outcome};
use crate::message::{
    string_value, HEADER_ATTEMPTS, HEADER_ERROR, HEADER_FAILED_AT, HEADER_LAST_ERROR,
    HEADER_SOURCE_QUEUE,
};
use crate::publisher::Outgoing;

/// Where failed messages of one queue go.
#[derive(Debug, Clone)]
pub struct SettlePolicy {
    /// The queue consumed.
    pub queue: String,
    /// Retry queues in order of their delay; a message's n-th retry goes to the n-th.
    pub retry_queues: Vec<String>,
    /// The dead-letter exchange of the queue.
    pub dead_letter_exchange: String,
}

/// What the runtime does with a finished delivery.
#[derive(Debug)]
pub enum Decision {
    /// Ack it.
    Ack,
    /// Publish this copy (confirmed), then ack. `outcome` names it in metrics and logs.
    Forward {
        /// The copy.
        copy: Box<Outgoing>,
        /// `retried` or `dead_lettered`.
        outcome: &'static str,
        /// The reason, for the log.
        reason: String,
    },
}

impl SettlePolicy {
    /// Decides how to settle `msg` after `outcome`.
    pub fn decide(&self, msg: &Incoming, outcome: Outcome) -> Decision {
        let attempts = msg.attempts().saturating_add(1);
        match outcome {
            Outcome::Success => Decision::Ack,
            Outcome::Transient(reason) => self.retry(msg, attempts, reason),
            Outcome::Unavailable { dependency, reason } => {
                self.retry(msg, attempts, format!("{dependency} unavailable: {reason}"))
            }
            Outcome::Permanent(reason) => self.dead_letter(msg, attempts, reason),
        }
    }

    /// The next step of the ladder for attempt number `attempts`, or the dead-letter exchange
    /// past the last step.
    fn retry(&self, msg: &Incoming, attempts: u32, reason: String) -> Decision {
        match self.retry_queues.get(attempts as usize - 1) {
            Some(retry_queue) => {
                let mut headers = msg.headers().cloned().unwrap_or_default();
                headers.insert(
                    HEADER_ATTEMPTS.into(),
                    AMQPValue::LongLongInt(attempts.into()),
                );
                headers.insert(HEADER_LAST_ERROR.into(), string_value(&reason));
                Decision::Forward {
                    copy: Box::new(copy_of(msg, "", retry_queue, headers)),
                    outcome: "retried",
                    reason,
                }
            }
            None => self.dead_letter(
                msg,
                attempts,
                format!("still failing after {attempts} attempts: {reason}"),
            ),
        }
    }

    fn dead_letter(&self, msg: &Incoming, attempts: u32, reason: String) -> Decision {
        let mut headers = msg.headers().cloned().unwrap_or_default();
        headers.insert(HEADER_ERROR.into(), string_value(&reason));
        headers.insert(
            HEADER_ATTEMPTS.into(),
            AMQPValue::LongLongInt(attempts.into()),
        );
        headers.insert(HEADER_SOURCE_QUEUE.into(), string_value(&self.queue));
        headers.insert(
            HEADER_FAILED_AT.into(),
            string_value(&Utc::now().to_rfc3339()),
        );
        Decision::Forward {
            copy: Box::new(copy_of(
                msg,
                &self.dead_letter_exchange,
                &msg.routing_key,
                headers,
            )),
            outcome: "dead_lettered",
            reason,
        }
    }
}

fn copy_of(msg: &Incoming, exchange: &str, routing_key: &str, headers: FieldTable) -> Outgoing {
    Outgoing {
        exchange: exchange.to_owned(),
        routing_key: routing_key.to_owned(),
        body: msg.body.clone(),
        properties: msg
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2),
        label: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{header_str, header_u32};
    use lapin::BasicProperties;

    fn policy() -> SettlePolicy {
        SettlePolicy {
            queue: "orders.fulfillment".into(),
            retry_queues: vec!["q.retry.1s".into(), "q.retry.10s".into()],
            dead_letter_exchange: "orders.dlx".into(),
        }
    }

    fn msg(attempts: Option<i64>) -> Incoming {
        let mut headers = FieldTable::default();
        if let Some(a) = attempts {
            headers.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongLongInt(a));
        }
        Incoming {
            body: b"{}".to_vec(),
            properties: BasicProperties::default().with_headers(headers),
            exchange: "orders".into(),
            routing_key: "order.placed".into(),
            redelivered: false,
        }
    }

    fn forwarded(d: Decision) -> (Outgoing, &'static str) {
        match d {
            Decision::Forward { copy, outcome, .. } => (*copy, outcome),
            Decision::Ack => panic!("expected a forward"),
        }
    }

    #[test]
    fn success_acks() {
        assert!(matches!(
            policy().decide(&msg(None), Outcome::Success),
            Decision::Ack
        ));
    }

    #[test]
    fn transient_failures_climb_the_ladder_then_dead_letter() {
        let (copy, outcome) =
            forwarded(policy().decide(&msg(None), Outcome::Transient("x".into())));
        assert_eq!(
            (copy.exchange.as_str(), copy.routing_key.as_str(), outcome),
            ("", "q.retry.1s", "retried")
        );
        let h = copy.properties.headers().as_ref();
        assert_eq!(header_u32(h, HEADER_ATTEMPTS), Some(1));

        let (copy, _) = forwarded(policy().decide(&msg(Some(1)), Outcome::Transient("x".into())));
        assert_eq!(copy.routing_key, "q.retry.10s");

        let (copy, outcome) =
            forwarded(policy().decide(&msg(Some(2)), Outcome::Transient("carrier down".into())));
        assert_eq!(
            (copy.exchange.as_str(), outcome),
            ("orders.dlx", "dead_lettered")
        );
        let h = copy.properties.headers().as_ref();
        assert_eq!(header_u32(h, HEADER_ATTEMPTS), Some(3));
        assert!(header_str(h, HEADER_ERROR)
            .unwrap()
            .contains("carrier down"));
    }

    #[test]
    fn an_unavailable_dependency_climbs_the_ladder_like_a_transient_failure() {
        let down = || Outcome::Unavailable {
            dependency: "mail",
            reason: "connection refused".into(),
        };
        let (copy, outcome) = forwarded(policy().decide(&msg(None), down()));
        assert_eq!(
            (copy.routing_key.as_str(), outcome),
            ("q.retry.1s", "retried")
        );
        let (copy, outcome) = forwarded(policy().decide(&msg(Some(2)), down()));
        assert_eq!(outcome, "dead_lettered");
        let h = copy.properties.headers().as_ref();
        assert_eq!(
            header_str(h, HEADER_ERROR).as_deref(),
            Some("still failing after 3 attempts: mail unavailable: connection refused")
        );
    }

    #[test]
    fn permanent_failure_dead_letters_with_every_header() {
        let (copy, _) = forwarded(policy().decide(
            &msg(None),
            Outcome::Permanent("invalid field `email`".into()),
        ));
        let h = copy.properties.headers().as_ref();
        assert_eq!(
            header_str(h, HEADER_ERROR).as_deref(),
            Some("invalid field `email`")
        );
        assert_eq!(
            header_str(h, HEADER_SOURCE_QUEUE).as_deref(),
            Some("orders.fulfillment")
        );
        assert_eq!(header_u32(h, HEADER_ATTEMPTS), Some(1));
        assert!(header_str(h, HEADER_FAILED_AT).is_some());
        assert_eq!(copy.routing_key, "order.placed");
        assert_eq!(copy.properties.delivery_mode(), &Some(2));
    }
}
