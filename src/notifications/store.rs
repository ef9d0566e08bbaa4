//! Who sent which mail: one row per `event_id` in `<store.dir>/notifications.db`, shared by every
//! notifications process of a host. A worker *claims* an event before sending (an insert that
//! only one writer can win), marks it sent afterwards, or releases the claim when sending
//! failed, so two workers never both send the mail of one event.
//!
//! A claim names its owner: the process (pid, its start time, its pid namespace and the boot
//! id, so a reused pid or another container is never mistaken for it) and a token unique to
//! the claim. The owner renews the claim ([`NotificationStore::renew`]) before every retry and
//! while a send runs, so a slow send never outlasts its lease; renewing, marking sent and
//! releasing all require the exact owner, so an owner that lost its claim (fenced) learns it
//! before it sends again. A claim is taken over when its owner is a process of this host that
//! is gone (at once, not after the lease) or when it was not renewed for a whole lease.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, OptionalExtension};

use crate::sqlite::{now_ms, GroupCommit};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS notifications (
    event_id   TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('sending', 'sent')),
    owner      TEXT NOT NULL,
    claimed_at INTEGER NOT NULL,
    sent_at    INTEGER
);";

/// What claiming an event found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The caller owns the event now and must send its mail, then [`NotificationStore::sent`]
    /// or [`NotificationStore::release`].
    Won,
    /// Its mail was sent before: a redelivery or a duplicate publish.
    AlreadySent,
    /// Another live worker is sending it right now.
    Busy,
}

/// This process, as claims name it: `pid/start time/pid namespace/boot id`.
fn this_process() -> &'static str {
    static ME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ME.get_or_init(|| {
        let pid = std::process::id();
        format!(
            "{pid}/{}/{}/{}",
            start_time(pid).unwrap_or_default(),
            pid_namespace().unwrap_or_default(),
            boot_id().unwrap_or_default()
        )
    })
}

/// The start time of process `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the
    // last `)`, at field 3.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn pid_namespace() -> Option<String> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(
        link.to_string_lossy()
            .chars()
            .filter(char::is_ascii_digit)
            .collect(),
    )
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// A new owner for one claim: this process and a fresh token.
pub fn new_owner() -> String {
    format!("{}/{}", this_process(), crate::message::new_id("claim"))
}

/// Whether the process named by `owner` is gone: `Some(true)` only when it was a process of
/// this host and pid namespace that no longer runs (its pid is free or belongs to a process
/// started later). `None` when that cannot be told (another namespace or host, an old claim).
pub fn owner_gone(owner: &str) -> Option<bool> {
    let mut parts = owner.splitn(5, '/');
    let (pid, start, ns, boot) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let mut mine = this_process().splitn(4, '/').skip(2);
    let (my_ns, my_boot) = (mine.next()?, mine.next()?);
    if ns.is_empty() || boot.is_empty() || ns != my_ns {
        return None;
    }
    if boot != my_boot {
        // Same namespace id, another boot: the host restarted since the claim.
        return Some(true);
    }
    let pid: u32 = pid.parse().ok()?;
    let start: u64 = start.parse().ok()?;
    Some(start_time(pid) != Some(start))
}

/// Counts read back from the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NotificationCounts {
    /// Mails sent.
    pub sent: u64,
    /// Claims held by a worker that is sending.
    pub sending: u64,
}

/// The claim table.
#[derive(Debug, Clone)]
pub struct NotificationStore {
    db: GroupCommit,
    lease: Duration,
}

impl NotificationStore {
    /// Opens `<dir>/notifications.db`. A claim older than `lease` is taken over: its worker died
    /// between claiming and finishing (the broker then redelivered its message).
    ///
    /// # Errors
    /// The database cannot be opened.
    pub fn open(dir: &Path, lease: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            db: GroupCommit::open(&dir.join("notifications.db"), SCHEMA)?,
            lease,
        })
    }

    /// Tries to claim `event_id` for `owner` (unique per attempt).
    ///
    /// # Errors
    /// The database failed.
    pub async fn claim(
        &self,
        event_id: &str,
        kind: &str,
        recipient: &str,
        owner: &str,
    ) -> anyhow::Result<Claim> {
        let (event_id, kind, recipient, owner) = (
            event_id.to_owned(),
            kind.to_owned(),
            recipient.to_owned(),
            owner.to_owned(),
        );
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        self.db
            .call(move |conn| {
                let now = now_ms();
                let inserted = conn
                    .prepare_cached(
                        "INSERT INTO notifications (event_id, kind, recipient, status, owner, claimed_at)
                         VALUES (?1, ?2, ?3, 'sending', ?4, ?5) ON CONFLICT(event_id) DO NOTHING",
                    )?
                    .execute(params![event_id, kind, recipient, owner, now])?;
                let claim = if inserted == 1 {
                    Claim::Won
                } else {
                    let row: Option<(String, String, i64)> = conn
                        .query_row(
                            "SELECT status, owner, claimed_at FROM notifications WHERE event_id = ?1",
                            [&event_id],
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                        )
                        .optional()?;
                    match row {
                        Some((status, _, _)) if status == "sent" => Claim::AlreadySent,
                        Some((_, held_by, claimed_at))
                            if owner_gone(&held_by) == Some(true)
                                || now.saturating_sub(claimed_at) > lease_ms =>
                        {
                            let taken = conn.execute(
                                "UPDATE notifications SET owner = ?2, claimed_at = ?3
                                 WHERE event_id = ?1 AND owner = ?4 AND status = 'sending'",
                                params![event_id, owner, now, held_by],
                            )?;
                            if taken == 1 {
                                Claim::Won
                            } else {
                                Claim::Busy
                            }
                        }
                        // Released between the insert and the read: try again.
                        None => Claim::Busy,
                        _ => Claim::Busy,
                    }
                };
                Ok(claim)
            })
            .await
    }

    /// Renews `owner`'s claim on `event_id` for another lease; `false` when the claim is no
    /// longer `owner`'s (it was taken over: the caller must not send).
    ///
    /// # Errors
    /// The database failed.
    pub async fn renew(&self, event_id: &str, owner: &str) -> anyhow::Result<bool> {
        let (event_id, owner) = (event_id.to_owned(), owner.to_owned());
        self.db
            .call_one_statement(move |conn| {
                conn.prepare_cached(
                    "UPDATE notifications SET claimed_at = ?3
                     WHERE event_id = ?1 AND owner = ?2 AND status = 'sending'",
                )?
                .execute(params![event_id, owner, now_ms()])
                .map(|n| n == 1)
            })
            .await
    }

    /// Marks the mail of `event_id` as sent; `false` when the claim was no longer `owner`'s.
    ///
    /// # Errors
    /// The database failed.
    pub async fn sent(&self, event_id: &str, owner: &str) -> anyhow::Result<bool> {
        let (event_id, owner) = (event_id.to_owned(), owner.to_owned());
        self.db
            .call_one_statement(move |conn| {
                conn.prepare_cached(
                    "UPDATE notifications SET status = 'sent', sent_at = ?3
                     WHERE event_id = ?1 AND owner = ?2",
                )?
                .execute(params![event_id, owner, now_ms()])
                .map(|n| n == 1)
            })
            .await
    }

    /// Forgets the events claimed (and, for sent ones, last renewed) longer than `window` ago,
    /// in batches; returns how many. A redelivery after the window mails again.
    ///
    /// # Errors
    /// The database failed.
    pub async fn purge(&self, window: Duration) -> anyhow::Result<u64> {
        let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let cutoff = rusqlite::types::Value::Integer(now_ms().saturating_sub(window));
        self.db
            .purge_older(
                "notifications",
                "claimed_at",
                cutoff,
                crate::sqlite::PURGE_BATCH,
            )
            .await
    }

    /// The lease of a claim.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Gives up the claim of `event_id` after a failed send, so a later delivery may send it.
    ///
    /// # Errors
    /// The database failed.
    pub async fn release(&self, event_id: &str, owner: &str) -> anyhow::Result<()> {
        let (event_id, owner) = (event_id.to_owned(), owner.to_owned());
        self.db
            .call(move |conn| {
                conn.execute(
                    "DELETE FROM notifications WHERE event_id = ?1 AND owner = ?2 AND status = 'sending'",
                    params![event_id, owner],
                )
                .map(|_| ())
            })
            .await
    }

    /// Mails sent and claims in progress.
    ///
    /// # Errors
    /// The database failed.
    pub async fn counts(&self) -> anyhow::Result<NotificationCounts> {
        self.db
            .call(|conn| {
                conn.query_row(
                    "SELECT COALESCE(SUM(status = 'sent'), 0), COALESCE(SUM(status = 'sending'), 0) FROM notifications",
                    [],
                    |r| {
                        Ok(NotificationCounts {
                            sent: r.get::<_, i64>(0)?.try_into().unwrap_or(0),
                            sending: r.get::<_, i64>(1)?.try_into().unwrap_or(0),
                        })
                    },
                )
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_one_of_two_stores_on_one_file_wins_a_claim() {
        let dir = tempfile::tempdir().unwrap();
        let a = NotificationStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let b = NotificationStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        let mut won = 0;
        for i in 0..50 {
            let id = format!("evt_{i}");
            let (x, y) = tokio::join!(
                a.claim(&id, "user.registered", "a@x", "a"),
                b.claim(&id, "user.registered", "a@x", "b")
            );
            let claims = [x.unwrap(), y.unwrap()];
            assert!(claims.contains(&Claim::Busy), "{claims:?}");
            won += claims.iter().filter(|c| **c == Claim::Won).count();
        }
        assert_eq!(won, 50);
    }

    #[tokio::test]
    async fn sent_is_final_and_release_lets_another_worker_claim() {
        let dir = tempfile::tempdir().unwrap();
        let s = NotificationStore::open(dir.path(), Duration::from_secs(60)).unwrap();
        assert_eq!(s.claim("e1", "k", "r", "w1").await.unwrap(), Claim::Won);
        s.release("e1", "w1").await.unwrap();
        assert_eq!(s.claim("e1", "k", "r", "w2").await.unwrap(), Claim::Won);
        s.sent("e1", "w2").await.unwrap();
        assert_eq!(
            s.claim("e1", "k", "r", "w3").await.unwrap(),
            Claim::AlreadySent
        );
        assert_eq!(s.counts().await.unwrap().sent, 1);
    }

    #[tokio::test]
    async fn a_stale_claim_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let s = NotificationStore::open(dir.path(), Duration::from_millis(0)).unwrap();
        assert_eq!(s.claim("e1", "k", "r", "w1").await.unwrap(), Claim::Won);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(s.claim("e1", "k", "r", "w2").await.unwrap(), Claim::Won);
        // The first owner is fenced: it can neither renew nor mark it sent.
        assert!(!s.renew("e1", "w1").await.unwrap());
        assert!(!s.sent("e1", "w1").await.unwrap());
        assert_eq!(s.counts().await.unwrap().sent, 0);
        assert!(s.sent("e1", "w2").await.unwrap());
    }

    #[tokio::test]
    async fn a_renewed_claim_outlives_its_lease_and_a_gone_owner_is_taken_over_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = NotificationStore::open(dir.path(), Duration::from_millis(300)).unwrap();
        let me = new_owner();
        assert_eq!(owner_gone(&me), Some(false));
        assert_eq!(s.claim("e1", "k", "r", &me).await.unwrap(), Claim::Won);
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(s.renew("e1", &me).await.unwrap());
            assert_eq!(
                s.claim("e1", "k", "r", &new_owner()).await.unwrap(),
                Claim::Busy,
                "a live, renewing owner keeps its claim past the lease"
            );
        }
        assert!(s.sent("e1", &me).await.unwrap());

        // A claim of a process that has exited: the same host and namespace, its pid gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid);
        child.wait().unwrap();
        let mut parts = this_process().splitn(4, '/').skip(2);
        let dead = format!(
            "{pid}/{}/{}/{}/claim_x",
            start.unwrap_or(1),
            parts.next().unwrap(),
            parts.next().unwrap()
        );
        assert_eq!(owner_gone(&dead), Some(true));
        let s = NotificationStore::open(dir.path(), Duration::from_secs(3600)).unwrap();
        assert_eq!(s.claim("e2", "k", "r", &dead).await.unwrap(), Claim::Won);
        assert_eq!(s.claim("e2", "k", "r", &me).await.unwrap(), Claim::Won);
        // An owner that cannot be judged (another host, an old claim) keeps it for the lease.
        assert_eq!(owner_gone("claim_old"), None);
        assert_eq!(
            s.claim("e3", "k", "r", "claim_old").await.unwrap(),
            Claim::Won
        );
        assert_eq!(s.claim("e3", "k", "r", &me).await.unwrap(), Claim::Busy);
    }
}
