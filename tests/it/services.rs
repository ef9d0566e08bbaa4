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

/// A minimal SMTP server for tests: accepts every mail, optionally holding the final `250`
/// of each for `delay` (a slow relay), and records the `Message-ID` of every mail it accepted.
/// A mail whose client goes away before the `250` is not accepted (as a real server drops it).
pub struct FakeSmtp {
    pub port: u16,
    /// Message-IDs of accepted mails, in order.
    pub accepted: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Mails whose data arrived and whose answer is being held.
    pub holding: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// How long the answer to each mail's data is held.
    pub delay: std::sync::Arc<std::sync::Mutex<Duration>>,
}

impl FakeSmtp {
    pub async fn start(delay: Duration) -> Self {
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let holding = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let delay = Arc::new(Mutex::new(delay));
        let (acc, hold, del) = (accepted.clone(), holding.clone(), delay.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (acc, hold, del) = (acc.clone(), hold.clone(), del.clone());
                tokio::spawn(async move {
                    let (r, mut w) = sock.into_split();
                    let mut r = BufReader::new(r);
                    let _ = w.write_all(b"220 fake ESMTP\r\n").await;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let cmd = line.to_ascii_uppercase();
                        let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                            b"250 fake\r\n"
                        } else if cmd.starts_with("DATA") {
                            let _ = w.write_all(b"354 go ahead\r\n").await;
                            let mut id = String::new();
                            loop {
                                line.clear();
                                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                if line == ".\r\n" {
                                    break;
                                }
                                if line.to_ascii_lowercase().starts_with("message-id:") {
                                    id = line[11..].trim().to_owned();
                                }
                            }
                            let wait = *del.lock().unwrap();
                            hold.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let mut probe = [0u8; 1];
                            let gone = tokio::select! {
                                () = tokio::time::sleep(wait) => false,
                                n = r.read(&mut probe) => matches!(n, Ok(0) | Err(_)),
                            };
                            hold.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                            if gone {
                                return;
                            }
                            acc.lock().unwrap().push(id);
                            b"250 accepted\r\n"
                        } else if cmd.starts_with("QUIT") {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        } else {
                            b"250 ok\r\n"
                        };
                        if w.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            port,
            accepted,
            holding,
            delay,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn accepted(&self) -> Vec<String> {
        self.accepted.lock().unwrap().clone()
    }

    pub fn holding(&self) -> usize {
        self.holding.load(std::sync::atomic::Ordering::SeqCst)
    }
}
