//! A dependency outage pauses a worker; it does not dead-letter: the notifications service
//! against a real SMTP server (aiosmtpd, installed by scripts/ensure-tools) that is down while
//! users register.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use burrow::children::Signal;
use burrow::message::{ActivityEvent, EventKind};

use crate::helpers::{wait_for, TestVhost};
use crate::services::ServiceProcess;

const LONG: Duration = Duration::from_secs(120);

/// How long the mail server stays down: far longer than the (fast) retry ladder of the test
/// topology (0.6 s), after which every mail used to be dead-lettered.
fn outage() -> Duration {
    std::env::var("BREAKER_TEST_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs)
}

/// `python3 -m aiosmtpd` writing every mail it accepts into a maildir; killed on drop.
struct SmtpServer {
    child: std::process::Child,
}

impl SmtpServer {
    async fn start(port: u16, maildir: &Path) -> Self {
        let child = std::process::Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd (pip install aiosmtpd; scripts/ensure-tools does)");
        let server = Self { child };
        wait_for(
            "the SMTP server to listen",
            Duration::from_secs(30),
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
        server
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Mails in the maildir, counted by `Message-ID`.
fn delivered(maildir: &Path) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(maildir.join("new")) else {
        return ids;
    };
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let id = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("Message-ID: ")
                    .or_else(|| l.strip_prefix("Message-Id: "))
            })
            .unwrap_or("-")
            .trim()
            .to_owned();
        *ids.entry(id).or_insert(0) += 1;
    }
    ids
}

/// The `/metrics` series of the notifications worker's breaker on `mail` (0 closed, 2 open).
const MAIL_BREAKER_STATE: &str =
    r#"burrow_breaker_state{queue="activity.notifications",dependency="mail"}"#;

/// `n` users registering (`cus_0`…), each with an address, so each needs a welcome mail.
fn registrations(n: usize) -> Vec<ActivityEvent> {
    (0..n)
        .map(|i| {
            let user = format!("cus_{i}");
            let mut e = ActivityEvent::new(EventKind::UserRegistered, &user);
            e.data = serde_json::json!({"email": format!("{user}@example.com"), "name": user});
            e
        })
        .collect()
}

/// The value of the series of `/metrics` whose line starts with `series`.
async fn metric(service: &ServiceProcess, series: &str) -> Option<f64> {
    let text = service.text("/metrics").await;
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn a_mail_server_outage_pauses_notifications_and_dead_letters_nothing() {
    let t = TestVhost::new("breaker-smtp")
        .await
        .with_fast_topology()
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let maildir: PathBuf = dir.path().join("maildir");
    let port = free_port();
    let smtp_url = format!("smtp://127.0.0.1:{port}");
    // The mail server is down from the start.
    let notifications = t
        .spawn_service(
            "notifications",
            &[],
            &[
                ("BURROW__MAIL__SMTP_URL", smtp_url.as_str()),
                ("BURROW__WORKER__BREAKER_PROBE_MS", "200"),
                ("BURROW__WORKER__BREAKER_PROBE_MAX_MS", "2000"),
            ],
        )
        .await;

    let events = registrations(100);
    t.publish_events(&events).await;

    let open = MAIL_BREAKER_STATE;
    // Without a breaker the mails would be dead-lettered instead: the assertions below say so.
    wait_for(
        "the breaker to open on mail (or a dead letter)",
        LONG,
        || async {
            (metric(&notifications, open).await == Some(2.0) || t.ready("activity.dead").await > 0)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(outage()).await;
    assert_eq!(
        t.ready("activity.dead").await,
        0,
        "nothing dead-lettered while the mail server was down"
    );
    assert!(delivered(&maildir).is_empty());
    assert_eq!(
        metric(&notifications, open).await,
        Some(2.0),
        "still open while the server is down (probes fail)"
    );

    let _server = SmtpServer::start(port, &maildir).await;
    wait_for("100 mails at the SMTP server", LONG, || async {
        (delivered(&maildir).values().sum::<usize>() >= 100).then_some(())
    })
    .await;
    wait_for("every event settled", LONG, || async {
        let mut left = 0;
        for q in [
            "activity.notifications",
            "activity.notifications.retry.1s",
            "activity.notifications.retry.10s",
            "activity.notifications.retry.60s",
        ] {
            left += t.ready(q).await;
        }
        (left == 0 && metric(&notifications, open).await == Some(0.0)).then_some(())
    })
    .await;

    let mails = delivered(&maildir);
    let expected: BTreeMap<String, usize> = events
        .iter()
        .map(|e| (format!("<{}@burrow>", e.event_id), 1))
        .collect();
    assert_eq!(mails, expected, "every welcome mail delivered exactly once");
    assert_eq!(t.ready("activity.dead").await, 0, "activity.dead is empty");
    let dead = r#"burrow_messages_total{queue="activity.notifications",outcome="dead_lettered"}"#;
    assert_eq!(metric(&notifications, dead).await, None);
    let opened = r#"burrow_breaker_opened_total{queue="activity.notifications",dependency="mail"}"#;
    assert!(metric(&notifications, opened).await >= Some(1.0));
    notifications.stop().await;
}

#[tokio::test]
async fn sigterm_while_the_breaker_is_open_exits_promptly_and_keeps_every_event() {
    let t = TestVhost::new("breaker-stop")
        .await
        .with_fast_topology()
        .await;
    let smtp_url = format!("smtp://127.0.0.1:{}", free_port());
    let notifications = t
        .spawn_service(
            "notifications",
            &["--concurrency", "2", "--prefetch", "20"],
            &[
                ("BURROW__MAIL__SMTP_URL", smtp_url.as_str()),
                ("BURROW__WORKER__BREAKER_WINDOW", "4"),
                ("BURROW__WORKER__BREAKER_THRESHOLD", "3"),
            ],
        )
        .await;
    let events = registrations(40);
    t.publish_events(&events).await;
    let open = MAIL_BREAKER_STATE;
    wait_for("the breaker to open on mail", LONG, || async {
        (metric(&notifications, open).await == Some(2.0)).then_some(())
    })
    .await;

    let started = std::time::Instant::now();
    let mut worker = notifications.worker;
    worker.signal(Signal::SIGTERM);
    assert_eq!(
        worker
            .wait_exit(Duration::from_secs(30))
            .await
            .and_then(|status| status.code()),
        Some(0),
        "clean exit"
    );
    // The held deliveries are released at once, not handled for the grace period (10 s).
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stopped in {:?}",
        started.elapsed()
    );
    // Everything is back in the queue (the few that took a retry step return from it).
    wait_for(
        "all 40 events back in activity.notifications",
        LONG,
        || async { (t.ready("activity.notifications").await == 40).then_some(()) },
    )
    .await;
    assert_eq!(t.ready("activity.dead").await, 0);
}
