//! Helpers for the activity services: spawning a worker with an HTTP endpoint and learning its
//! port from its log, publishing activity events, reading the outbox and the endpoints.

#![allow(dead_code)]

use std::io::BufRead;
use std::time::Duration;

use burrow::message::ActivityEvent;
use burrow::publisher::Outgoing;

use crate::helpers::{TestVhost, Worker};

/// A worker process with its HTTP endpoint.
pub struct ServiceProcess {
    pub worker: Worker,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl ServiceProcess {
    /// GET `path` as JSON.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        let text = self.text(path).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
    }

    /// GET `path` as text.
    pub async fn text(&self, path: &str) -> String {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .text()
            .await
            .expect("text")
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(mut self) {
        self.worker.signal("TERM");
        let code = self.worker.wait_exit(Duration::from_secs(30)).await;
        assert_eq!(code, Some(0), "worker exits cleanly on SIGTERM");
    }
}

/// Reads `http listening on ADDR` from a worker's log line.
fn listening_addr(line: &str) -> Option<String> {
    let rest = line.split("http listening on ").nth(1)?;
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    (!addr.is_empty()).then_some(addr)
}

impl TestVhost {
    /// Starts `worker <service> --http 127.0.0.1:0 <args>` and waits for its HTTP address.
    pub fn spawn_service(
        &self,
        service: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ServiceProcess {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_worker"));
        let test_log = std::env::var("TEST_LOG").ok();
        cmd.arg(service)
            .args(["--http", "127.0.0.1:0"])
            .args(args)
            .envs(self.env())
            .env(
                "RUST_LOG",
                format!(
                    "{},burrow::http=info",
                    test_log.as_deref().unwrap_or("warn")
                ),
            )
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning worker");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let label = service.to_owned();
        // Keeps reading so the worker never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = listening_addr(&line) {
                    let _ = tx.send(addr);
                }
                if test_log.is_some() {
                    eprintln!("[{label}] {line}");
                }
            }
        });
        let worker = Worker { child };
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("worker {service} did not log its HTTP address"));
        ServiceProcess {
            worker,
            base: format!("http://{addr}"),
        }
    }

    /// Publishes messages to the `activity` exchange, confirmed; panics unless all are.
    pub async fn publish_activity(&self, messages: Vec<Outgoing>) {
        self.publish_messages(messages).await;
    }

    /// Publishes events to `activity`, confirmed.
    pub async fn publish_events(&self, events: &[ActivityEvent]) {
        self.publish_activity(
            events
                .iter()
                .map(|e| burrow::producer::event_message(e, None))
                .collect(),
        )
        .await;
    }

    /// Mails in the outbox.
    pub fn outbox_count(&self) -> usize {
        self.outbox().len()
    }

    /// The mails in the outbox, as written.
    pub fn outbox(&self) -> Vec<String> {
        burrow::notifications::read_outbox(&self.settings.mail.outbox).unwrap_or_default()
    }

    /// Messages in `queue`, ready and unacked, from the management API (refreshed every few
    /// seconds by the broker).
    pub async fn queue_messages(&self, queue: &str) -> u64 {
        self.api_get(&format!("/api/queues/{{vhost}}/{queue}"))
            .await
            .get("messages")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(u64::MAX)
    }
}

/// A `product.viewed` event.
pub fn viewed(user: &str, sku: &str) -> ActivityEvent {
    let mut e = ActivityEvent::new(burrow::message::EventKind::ProductViewed, user);
    e.product_id = Some(sku.into());
    e
}

/// An `inventory.changed` event.
pub fn stock(sku: &str, stock: i64) -> ActivityEvent {
    burrow::producer::activity::inventory_event(sku, stock, 0)
}
