//! A PostgreSQL outage pauses fulfillment; it does not dead-letter. The store is a private
//! PostgreSQL server the test starts (initdb + pg_ctl as the `postgres` user, on a port of its
//! own), stops for longer than the whole retry ladder, and starts again; the system server on
//! 5432 is never touched. Needs root and the PostgreSQL server package: without them the test
//! says so and passes, unless `CI` is set.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::helpers::{order_body, wait_for, TestVhost};

const LONG: Duration = Duration::from_secs(180);

/// A PostgreSQL server of the test's own, stopped and removed on drop.
struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    /// Why it cannot run here, if it cannot.
    fn missing() -> Option<String> {
        if !crate::common::is_root() {
            return Some("root (the server runs as the postgres user via runuser)".into());
        }
        if Self::bin_dir().is_none() {
            return Some("the PostgreSQL server package (/usr/lib/postgresql/*/bin/initdb)".into());
        }
        None
    }

    fn bin_dir() -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .collect();
        dirs.sort();
        dirs.pop()
    }

    fn start_new() -> Self {
        let bin = Self::bin_dir().expect("initdb");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown")
            .success();
        assert!(ok, "chown the server's directory to postgres");
        let pg = Self { bin, dir, port };
        pg.run(
            "initdb",
            &["-D", &pg.data(), "-A", "trust", "-U", "postgres"],
        );
        pg.start();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .output()
            .expect("runuser");
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn fulfilled(&self) -> Option<HashSet<String>> {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .ok()?;
        tokio::spawn(conn);
        let rows = client
            .query("SELECT order_id FROM fulfillments", &[])
            .await
            .ok()?;
        Some(rows.iter().map(|r| r.get(0)).collect())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn skip_unless_possible(test: &str) -> bool {
    let Some(why) = PrivatePostgres::missing() else {
        return false;
    };
    assert!(std::env::var_os("CI").is_none(), "{test} needs {why}");
    eprintln!("skipping {test}: needs {why}");
    true
}

#[tokio::test]
async fn a_postgres_outage_longer_than_the_retry_ladder_pauses_fulfillment_and_dead_letters_nothing(
) {
    if skip_unless_possible("a_postgres_outage_longer_than_the_retry_ladder_…") {
        return;
    }
    const N: usize = 300;
    const OUTAGE: Duration = Duration::from_secs(20);
    // The tests' retry ladder is 0.1/0.2/0.3 s: an outage of 20 s outlasts it many times over.
    let t = TestVhost::new("pg-outage").await.with_fast_topology().await;
    let pg = PrivatePostgres::start_new();
    let url = pg.url();
    let worker = t
        .spawn_service(
            "fulfillment",
            &["--no-events"],
            &[
                ("BURROW__STORE__URL", url.as_str()),
                ("BURROW__WORKER__BREAKER_PROBE_MS", "200"),
                ("BURROW__WORKER__BREAKER_PROBE_MAX_MS", "2000"),
                ("BURROW__CARRIER__LATENCY_MS", "5"),
            ],
        )
        .await;
    let orders: Vec<_> = (0..N).map(|_| order_body("SKU-1")).collect();
    let ids: HashSet<String> = orders.iter().map(|(id, _)| id.clone()).collect();
    let (first, rest) = orders.split_at(N / 3);
    t.publish_raw(first.to_vec()).await;
    wait_for("the first third fulfilled", LONG, || async {
        pg.fulfilled().await.filter(|f| f.len() >= N / 3)
    })
    .await;

    // The outage: the server stops, the rest of the orders arrive meanwhile.
    pg.stop();
    t.publish_raw(rest.to_vec()).await;
    tokio::time::sleep(OUTAGE).await;
    assert_eq!(
        t.ready("orders.dead").await,
        0,
        "nothing dead-lettered during the outage"
    );
    pg.start();

    let fulfilled = wait_for("every order fulfilled after the outage", LONG, || async {
        pg.fulfilled().await.filter(|f| f.len() >= N)
    })
    .await;
    assert_eq!(fulfilled, ids, "each order fulfilled (order_id is the key)");
    assert_eq!(t.ready("orders.dead").await, 0, "nothing dead-lettered");
    let metrics = worker.text("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("burrow_breaker_opened_total") && !l.ends_with(" 0")),
        "the breaker opened during the outage"
    );
    worker.stop().await;
}
