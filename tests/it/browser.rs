//! The console in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven over WebDriver. The overview renders the shop's queues, a dead
//! letter's reason is reached by clicking, and a replay through the page (with its
//! confirmation step) moves the message back to its source queue.
//!
//! Without `chromium` and `chromedriver` on PATH the test says why and passes, unless `CI` is
//! set (`scripts/ensure-tools` installs them there): then it fails.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::console::TestConsole;
use crate::helpers::{dead_letter, wait_for, TestVhost};

const LONG: Duration = Duration::from_secs(60);

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| Path::new(&dir).join(program).is_file())
    })
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Whether the browser test can run; when it cannot, says why (past the harness's output
/// capture) or, in CI, fails.
fn browser_available() -> bool {
    let missing: Vec<&str> = ["chromium", "chromedriver"]
        .into_iter()
        .filter(|p| !on_path(p))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "the browser test needs {} on PATH (Debian: apt-get install chromium chromium-driver; \
         scripts/ensure-tools does)",
        missing.join(" and ")
    );
    assert!(!in_ci(), "{why} (CI is set, so this fails)");
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
    false
}

/// A chromedriver on a free port and a headless Chromium session; both end when dropped.
struct Browser {
    client: Option<Client>,
    /// chromedriver, leader of a process group of its own that the browser it starts joins.
    driver: burrow::children::Process,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let port = burrow::children::free_port().expect("free port").port();
        let mut command = tokio::process::Command::new("chromedriver");
        command
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own process group, so that dropping the Browser ends the browser processes
            // too, also when a failed assertion leaves the session open.
            .process_group(0);
        let driver =
            burrow::children::Process::spawn("chromedriver", command).expect("chromedriver");
        let status = format!("http://127.0.0.1:{port}/status");
        wait_for("chromedriver to answer", LONG, || async {
            reqwest::get(&status)
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        })
        .await;
        let profile = tempfile::tempdir().expect("profile dir");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "args": [
                    "--headless=new",
                    // Root (CI containers) cannot use Chromium's sandbox.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-breakpad",
                    format!("--user-data-dir={}", profile.path().display()),
                    "--window-size=1400,1000",
                ]
            }),
        );
        // chromedriver speaks plain HTTP on loopback: no TLS stack needed.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Self {
            client: Some(client),
            driver,
            _profile: profile,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("session open")
    }

    /// Waits until the element at `css` shows text containing `wanted`; returns the text.
    async fn text_of(&self, css: &str, wanted: &str) -> String {
        wait_for(&format!("'{wanted}' in {css}"), LONG, || async {
            let text = self
                .client()
                .find(Locator::Css(css))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains(wanted).then_some(text)
        })
        .await
    }

    async fn click(&self, css: &str) {
        let element = self
            .client()
            .wait()
            .at_most(LONG)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        element
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    /// Ends the session (the browser quits); dropping the Browser then ends chromedriver.
    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and every browser process it started (the group it leads).
        let group = nix::unistd::Pid::from_raw(self.driver.pid() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
}

#[tokio::test]
async fn in_a_browser_the_overview_shows_the_queues_and_a_dead_letter_is_replayed_after_confirming()
{
    if !browser_available() {
        return;
    }
    let t = TestVhost::new("console-browser")
        .await
        .with_fast_topology()
        .await;
    let reason = "still failing after 4 attempts: carrier lost the parcel";
    let (id, letter) = dead_letter(reason, 4);
    t.publish_messages(vec![letter]).await;
    let console = TestConsole::start(&t).await;
    let browser = Browser::start().await;

    browser
        .client()
        .goto(&format!("{}/", console.base))
        .await
        .expect("opening the console");
    for queue in ["orders.fulfillment", "activity.analytics", "orders.dead"] {
        browser
            .text_of(&format!(r#"#queues tr[data-queue="{queue}"]"#), queue)
            .await;
    }
    // orders.dead holds one message: its row is a link to the dead letters.
    browser
        .text_of(r#"#queues tr[data-queue="orders.dead"] td.ready"#, "1")
        .await;
    // No order service runs in this vhost: the outbox panel says so (the page rendered it).
    browser.text_of("#outbox", "No order service found").await;

    browser.click(r#"a[data-tab="dead-letters"]"#).await;
    let row = format!(r#"#letters tr[data-id="{id}"]"#);
    browser.text_of(&row, "carrier lost the parcel").await;
    browser.click(&format!("{row} button.show")).await;
    browser.text_of("#letter-reason", reason).await;
    browser.text_of("#letter-body", &id).await;

    browser
        .click(&format!(r#"{row} input[type="checkbox"]"#))
        .await;
    browser.click("#replay-selected").await;
    // The confirmation step: nothing moves before it is confirmed.
    browser
        .text_of("#confirm-text", "1 of the 1 selected")
        .await;
    assert_eq!(t.ready("orders.dead").await, 1, "not before confirming");
    browser.click("#confirm-yes").await;
    browser.text_of("#result", "replayed 1 of 1 selected").await;
    let moved = t.drain("orders.fulfillment").await;
    let ids: Vec<_> = moved
        .iter()
        .filter_map(|m| m.delivery.properties.message_id().as_ref())
        .map(|s| s.as_str().to_owned())
        .collect();
    assert_eq!(
        ids,
        vec![id.clone()],
        "the message is back in its source queue"
    );
    assert_eq!(t.ready("orders.dead").await, 0);
    browser.text_of("#letters-summary", "0 of 0").await;
    browser.close().await;
}
