//! Who sent which mail: one row per `event_id` in `<store.dir>/notifications.db`, shared by every
//! notifications process of a host. A worker *claims* an event before sending (an insert that
//! only one writer can win), marks it sent afterwards, or releases the claim when sending
//! failed, so two workers never both send the mail of one event.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, OptionalExtension};

use crate::sqlite::{now_ms, Db};

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
    /// Another worker is sending it right now.
    Busy,
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
    db: Db,
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
            db: Db::open(&dir.join("notifications.db"), SCHEMA)?,
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
                    let row: Option<(String, i64)> = conn
                        .query_row(
                            "SELECT status, claimed_at FROM notifications WHERE event_id = ?1",
                            [&event_id],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                        .optional()?;
                    match row {
                        Some((status, _)) if status == "sent" => Claim::AlreadySent,
                        Some((_, claimed_at)) if now.saturating_sub(claimed_at) > lease_ms => {
                            conn.execute(
                                "UPDATE notifications SET owner = ?2, claimed_at = ?3 WHERE event_id = ?1",
                                params![event_id, owner, now],
                            )?;
                            Claim::Won
                        }
                        _ => Claim::Busy,
                    }
                };
                Ok(claim)
            })
            .await
    }

    /// Marks the mail of `event_id` as sent.
    ///
    /// # Errors
    /// The database failed.
    pub async fn sent(&self, event_id: &str, owner: &str) -> anyhow::Result<()> {
        let (event_id, owner) = (event_id.to_owned(), owner.to_owned());
        self.db
            .call_one_statement(move |conn| {
                conn.prepare_cached(
                    "UPDATE notifications SET status = 'sent', sent_at = ?3
                     WHERE event_id = ?1 AND owner = ?2",
                )?
                .execute(params![event_id, owner, now_ms()])
                .map(|_| ())
            })
            .await
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
        // The first owner can no longer mark it sent.
        s.sent("e1", "w1").await.unwrap();
        assert_eq!(s.counts().await.unwrap().sent, 0);
    }
}
