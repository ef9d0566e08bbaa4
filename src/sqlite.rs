//! A SQLite connection owned by one thread, driven from async code: [`Db::call`] sends a closure
//! to the thread and awaits its result, so no blocking call and no mutex runs on the runtime.
//!
//! Every service store that is shared by the processes of one host (notifications, analytics,
//! recommendations) uses WAL mode and a busy timeout, and writes in `BEGIN IMMEDIATE`
//! transactions, so two processes serialize on the write lock instead of failing.

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use anyhow::Context;
use rusqlite::Connection;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A SQLite database file served by its own thread.
#[derive(Clone)]
pub struct Db {
    jobs: std_mpsc::Sender<Job>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

/// Opens `path` in WAL mode with a 30 s busy timeout, for a file that other processes may open
/// at the same moment. Switching a fresh file to WAL takes a lock without waiting on the busy
/// handler, so two workers started together can see `database is locked` here: that is retried
/// with a short back-off for up to 30 s.
///
/// # Errors
/// The file cannot be opened, or stays locked for 30 s.
pub fn open_wal(path: &Path) -> anyhow::Result<Connection> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut pause = Duration::from_millis(5);
    loop {
        let attempt = (|| {
            let conn = Connection::open(path)?;
            conn.busy_timeout(Duration::from_secs(30))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            Ok::<_, rusqlite::Error>(conn)
        })();
        match attempt {
            Ok(conn) => return Ok(conn),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        }
    }
}

impl Db {
    /// Opens (and creates) `path` in WAL mode, runs `schema`, and starts the thread.
    ///
    /// # Errors
    /// The directory or file cannot be created, or the schema is refused.
    pub fn open(path: &Path, schema: &str) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let conn = open_wal(path)?;
        conn.execute_batch(schema)
            .with_context(|| format!("creating the schema of {}", path.display()))?;
        let (tx, rx) = std_mpsc::channel::<Job>();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "db".into());
        std::thread::Builder::new()
            .name(format!("{name}-db"))
            .spawn(move || {
                let mut conn = conn;
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .context("starting the database thread")?;
        Ok(Self { jobs: tx })
    }

    /// Runs `f` on the database thread and returns its result.
    ///
    /// # Errors
    /// `f` failed, or the database thread is gone.
    pub async fn call<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = reply.send(f(conn));
            }))
            .map_err(|_| anyhow::anyhow!("database thread stopped"))?;
        Ok(rx.await.context("database thread stopped")??)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_opening_a_fresh_file_at_once_all_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.db");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || open_wal(&path).map(|_| ()))
            })
            .collect();
        for t in threads {
            t.join().unwrap().expect("every opener succeeds");
        }
    }
}
