//! A SQLite connection owned by one thread, driven from async code: [`GroupCommit::call`]
//! sends a closure to the thread and awaits its result, so no blocking call and no mutex runs
//! on the runtime.
//!
//! Every service store that is shared by the processes of one host (notifications, analytics,
//! recommendations) uses WAL mode and a busy timeout, and writes in `BEGIN IMMEDIATE`
//! transactions, so two processes serialize on the write lock instead of failing.
//!
//! Group commit: the thread runs every call queued at the moment in one `BEGIN IMMEDIATE`
//! transaction and answers the calls once the transaction is committed. A call is atomic and
//! its answer means it is durable, as with a transaction per call, at one commit per batch.
//!
//! The calls of a batch first run one after the other with no savepoint between them. When one
//! fails, the whole transaction is rolled back and the batch runs again with each call in a
//! savepoint of its own, so that the failing call rolls back only its own writes and the others
//! commit. A savepoint copies every page a call touches first into its journal (with 64 calls
//! per batch that was a quarter of the order store's SQLite instructions), and calls rarely
//! fail, so only a batch with a failure pays for them. A call may therefore run twice: it must
//! only read and write the database (and read what it captured), never move a captured value
//! out or count its runs.

use std::future::Future;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use rusqlite::Connection;
use tokio::sync::oneshot;

/// How long a SQLite commit waits for the disk: `PRAGMA synchronous` in WAL mode. Set per
/// process with `store.synchronous` (`BURROW__STORE__SYNCHRONOUS`).
///
/// `normal` is the default because `full` was measured to cost too much for what it buys here
/// (`burrow bench --modes burrow-full`, notes of issue 11: fulfillment CPU per order +35-40 %,
/// end-to-end rate 931-1058 → 611-689 orders/s, below the 1,000/s target on this machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// The WAL is synced only at checkpoints. A commit survives the process crashing or being
    /// killed, and the file is never corrupted, but a power failure or OS crash can roll back
    /// the last commits, whose messages were already acked and will not be redelivered: a
    /// fulfillment record (the shipment was booked and announced, but a later duplicate of the
    /// order is no longer recognised; the carrier's idempotency key still prevents a second
    /// booking), a notification claim (a redelivered or republished event could be mailed
    /// again), analytics counts (events counted once are missing).
    #[default]
    Normal,
    /// The WAL is synced at every commit: a committed record, and so the ack it allowed,
    /// survives a power failure or OS crash. With group commit that is one fsync per batch of
    /// calls, not per call.
    Full,
}

static SYNCHRONOUS_FULL: AtomicBool = AtomicBool::new(false);

/// Sets how every SQLite store opened afterwards by this process commits.
pub fn set_synchronous(mode: Synchronous) {
    SYNCHRONOUS_FULL.store(mode == Synchronous::Full, Ordering::Relaxed);
}

fn synchronous() -> &'static str {
    if SYNCHRONOUS_FULL.load(Ordering::Relaxed) {
        "FULL"
    } else {
        "NORMAL"
    }
}

/// One call queued for the database thread.
trait Call: Send {
    /// Runs the call (in a savepoint of its own when `isolated`), keeps its result for the
    /// answer, and returns whether it succeeded. May run again after a failed batch.
    fn run(&mut self, conn: &Connection, isolated: bool) -> bool;
    /// Answers with the call's last result when the batch committed, else with why not.
    fn answer(self: Box<Self>, committed: Result<(), String>);
}

type Job = Box<dyn Call>;

struct Pending<T, F> {
    f: F,
    /// The call writes with one statement at most, which SQLite undoes by itself when it
    /// fails: no savepoint needed.
    one_statement: bool,
    result: Option<rusqlite::Result<T>>,
    reply: oneshot::Sender<anyhow::Result<T>>,
}

impl<T, F> Pending<T, F> {
    fn new(f: F, one_statement: bool, reply: oneshot::Sender<anyhow::Result<T>>) -> Self {
        Self {
            f,
            one_statement,
            result: None,
            reply,
        }
    }
}

impl<T, F> Call for Pending<T, F>
where
    T: Send + 'static,
    F: FnMut(&Connection) -> rusqlite::Result<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection, isolated: bool) -> bool {
        let result = if isolated && !self.one_statement {
            in_savepoint(conn, &mut self.f)
        } else {
            (self.f)(conn)
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, committed: Result<(), String>) {
        let answer = match (committed, self.result) {
            (Ok(()), Some(result)) => result.map_err(anyhow::Error::from),
            (Ok(()), None) => Err(anyhow::anyhow!("the call did not run")),
            (Err(why), _) => Err(anyhow::anyhow!(why)),
        };
        let _ = self.reply.send(answer);
    }
}

/// Calls committed together at most.
const MAX_BATCH: usize = 256;

/// A SQLite database file served by its own thread, which commits the calls queued at the
/// moment in one transaction (group commit, see the module documentation).
#[derive(Clone)]
pub struct GroupCommit {
    jobs: std_mpsc::Sender<Job>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

/// The page cache of a connection, in KiB, as `PRAGMA cache_size` takes it (negative): SQLite's
/// default, 2 MiB. It holds the pages a transaction writes; the pages it only reads come from
/// the memory map ([`MMAP_BYTES`]).
///
/// A larger cache costs more than it saves. When a B-tree page splits, SQLite renumbers pages
/// through a scratch number past the 1 GiB mark, and at the end of every write transaction it
/// then walks its whole cache to drop the pages past the end of the file: with a 32 MiB cache
/// (8,192 pages) that walk was 15% of the CPU of `examples/store_cost` at 262,144 orders
/// (`pcache1TruncateUnsafe`, under `perf record`), and 10% of `producer serve`'s samples under
/// the benchmark's load. With 2 MiB and the map, the example spent 6.7–6.8 s of CPU instead of
/// 8.5–8.9 s (2 MiB without the map: 7.1–7.2 s, reading pages back with `pread(2)`).
const CACHE_KIB: i64 = -2_048;

/// How much of a database file a connection reads through a memory map (`PRAGMA mmap_size`)
/// instead of copying each page it reads into its cache. Writes still go through `write(2)`
/// into the WAL. The map's pages count in the process's resident memory while they are mapped
/// in, and the kernel can drop them at any time (they are the file's own pages).
const MMAP_BYTES: i64 = 256 << 20;

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
            conn.pragma_update(None, "synchronous", synchronous())?;
            // A batch with a failing call runs again with each call in a savepoint, whose
            // journal SQLite otherwise keeps in a temporary file: in memory it costs no
            // write(2) per page touched.
            conn.pragma_update(None, "temp_store", "MEMORY")?;
            conn.pragma_update(None, "cache_size", CACHE_KIB)?;
            conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
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

impl GroupCommit {
    /// Opens (and creates) `path` in WAL mode, runs `schema`, and starts the thread.
    ///
    /// # Errors
    /// The directory or file cannot be created, or the schema is refused.
    pub fn open(path: &Path, schema: &str) -> anyhow::Result<Self> {
        Self::start(path, |conn| {
            conn.execute_batch(schema)
                .with_context(|| format!("creating the schema of {}", path.display()))
        })
    }

    /// Opens (and creates) `path` in WAL mode, brings its schema to the last of `migrations`
    /// (`PRAGMA user_version` counts those applied), and starts the thread.
    ///
    /// The migrations run in one `BEGIN IMMEDIATE` transaction, so a process that opens the
    /// file at the same moment waits for them. That process read the version before it waited
    /// and runs them again: each must be idempotent (`IF NOT EXISTS`, a copy into a fresh
    /// table).
    ///
    /// # Errors
    /// The directory or file cannot be created, or a migration failed (none is kept).
    pub fn open_migrated(
        path: &Path,
        migrations: &rusqlite_migration::Migrations<'_>,
    ) -> anyhow::Result<Self> {
        Self::start(path, |conn| {
            conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
            let migrated = migrations
                .to_latest(conn)
                .with_context(|| format!("migrating the schema of {}", path.display()));
            conn.set_transaction_behavior(rusqlite::TransactionBehavior::Deferred);
            migrated
        })
    }

    fn start(
        path: &Path,
        init: impl FnOnce(&mut Connection) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut conn = open_wal(path)?;
        init(&mut conn)?;
        let (tx, rx) = std_mpsc::channel::<Job>();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "db".into());
        std::thread::Builder::new()
            .name(format!("{name}-db"))
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    run_batch(&conn, batch);
                }
            })
            .context("starting the database thread")?;
        Ok(Self { jobs: tx })
    }

    /// Runs `f` on the database thread, atomically (in a write transaction), and returns its
    /// result once it is committed.
    ///
    /// # Errors
    /// `f` failed (its writes are rolled back), the commit failed, or the database thread is
    /// gone.
    pub async fn call<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.enqueue(f, false).await
    }

    /// [`GroupCommit::call`] for a call that writes with one statement at most: it skips the
    /// savepoint (SQLite undoes a failing statement by itself), which keeps the write lock,
    /// shared with the other processes of the host, for less time.
    ///
    /// # Errors
    /// As [`GroupCommit::call`].
    pub async fn call_one_statement<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.enqueue(f, true).await
    }

    /// [`GroupCommit::call`], but queued for the database thread now, when this is called,
    /// rather than when the returned future is first polled: calls queued one after the other
    /// run (and commit) in that order, and the caller may go on before the answer comes. The
    /// future answers once the call's batch is committed.
    pub fn queue<T, F>(&self, f: F) -> impl Future<Output = anyhow::Result<T>> + Send + 'static
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.enqueue(f, false)
    }

    /// Sends `f` to the database thread now; the future answers once its batch is committed.
    fn enqueue<T, F>(
        &self,
        f: F,
        one_statement: bool,
    ) -> impl Future<Output = anyhow::Result<T>> + Send + 'static
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .jobs
            .send(Box::new(Pending::new(f, one_statement, reply)));
        async move {
            sent.map_err(|_| anyhow::anyhow!("database thread stopped"))?;
            rx.await.context("database thread stopped")?
        }
    }
}

impl GroupCommit {
    /// Deletes the rows of `table` whose `column` is below `cutoff`, oldest first (by rowid,
    /// i.e. by insertion), `batch` rows per call, each call committed through the group-commit
    /// thread like any handler's call, so a purge never holds the write lock for long and
    /// handlers' calls interleave with it. Stops at the first batch that is not full. Returns
    /// the rows deleted.
    ///
    /// Only the oldest `batch` rows are looked at per call, so the purge needs no index on
    /// `column`: rows are inserted in time order.
    ///
    /// # Errors
    /// The database failed; what was deleted before stays deleted.
    pub async fn purge_older(
        &self,
        table: &'static str,
        column: &'static str,
        cutoff: rusqlite::types::Value,
        batch: usize,
    ) -> anyhow::Result<u64> {
        let mut total = 0u64;
        loop {
            let cutoff = cutoff.clone();
            let limit = i64::try_from(batch).unwrap_or(i64::MAX);
            let deleted = self
                .call_one_statement(move |conn| {
                    conn.prepare_cached(&format!(
                        "DELETE FROM {table} WHERE rowid IN
                           (SELECT rowid FROM {table} ORDER BY rowid LIMIT ?2)
                         AND {column} < ?1"
                    ))?
                    .execute(rusqlite::params![cutoff, limit])
                })
                .await?;
            total += deleted as u64;
            if deleted < batch {
                return Ok(total);
            }
            // Let the handlers' calls in between two batches.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Rows deleted per transaction by a retention purge.
pub const PURGE_BATCH: usize = 500;

/// Runs `purge` every `every` until `shutdown`, logging what it deleted. `purge` deletes what
/// is older than the retention window and returns how many rows.
pub async fn run_purges<F, Fut>(
    what: &'static str,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
    mut purge: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match purge().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                store = what,
                deleted = n,
                "purged records past the retention window"
            ),
            Err(e) => {
                tracing::warn!(store = what, error = %format!("{e:#}"), "retention purge failed")
            }
        }
    }
}

/// How often a store with retention `window` is purged: a tenth of it, between 1 s and 60 s.
pub fn purge_interval(window: Duration) -> Duration {
    (window / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Runs `f` in a savepoint: released when `f` succeeds, rolled back when it fails.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    sql(conn, "SAVEPOINT call")?;
    let result = f(conn);
    let end = if result.is_ok() {
        sql(conn, "RELEASE call")
    } else {
        sql(conn, "ROLLBACK TO call").and_then(|()| sql(conn, "RELEASE call"))
    };
    match (result, end) {
        (Ok(v), Ok(())) => Ok(v),
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
    }
}

/// Runs a statement without parameters, prepared once per connection.
fn sql(conn: &Connection, statement: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(statement)?.execute([]).map(|_| ())
}

/// Runs `batch` in one `BEGIN IMMEDIATE` transaction and answers every call after the commit:
/// first without savepoints, and again with a savepoint per call when one of them failed (see
/// the module documentation). A call alone in its batch needs no savepoint: when it fails, the
/// transaction is rolled back and its own error is its answer.
fn run_batch(conn: &Connection, mut batch: Vec<Job>) {
    let committed = match begin(conn) {
        Err(why) => Err(why),
        // Stops at the first failure: the calls after it run in the second pass.
        Ok(()) if batch.iter_mut().all(|job| job.run(conn, false)) => commit(conn),
        Ok(()) => {
            let _ = sql(conn, "ROLLBACK");
            if batch.len() == 1 {
                Ok(())
            } else {
                begin(conn).and_then(|()| {
                    for job in &mut batch {
                        job.run(conn, true);
                    }
                    commit(conn)
                })
            }
        }
    };
    for job in batch {
        job.answer(committed.clone());
    }
}

fn begin(conn: &Connection) -> Result<(), String> {
    sql(conn, "BEGIN IMMEDIATE").map_err(|e| format!("starting a transaction: {e}"))
}

fn commit(conn: &Connection) -> Result<(), String> {
    sql(conn, "COMMIT").map_err(|e| {
        let _ = sql(conn, "ROLLBACK");
        format!("committing: {e}")
    })
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

    #[test]
    fn a_store_reads_through_a_memory_map_beside_a_small_cache() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_wal(&dir.path().join("store.db")).unwrap();
        let pragma =
            |name: &str| -> i64 { conn.pragma_query_value(None, name, |r| r.get(0)).unwrap() };
        assert_eq!(pragma("cache_size"), CACHE_KIB);
        assert_eq!(pragma("mmap_size"), MMAP_BYTES);
    }

    #[test]
    fn sqlite_is_built_without_process_wide_memory_accounting() {
        // `.cargo/config.toml` passes these to the bundled SQLite's build.
        let c = Connection::open_in_memory().unwrap();
        let mut q = c.prepare("PRAGMA compile_options").unwrap();
        let options: Vec<String> = q
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
    }

    fn counter_db(dir: &Path) -> GroupCommit {
        GroupCommit::open(
            &dir.join("t.db"),
            "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, n INTEGER NOT NULL);",
        )
        .unwrap()
    }

    async fn rows(db: &GroupCommit) -> Vec<String> {
        db.call(|c| {
            let mut q = c.prepare("SELECT k FROM t ORDER BY k")?;
            let keys = q.query_map([], |r| r.get(0))?.collect();
            keys
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_purge_deletes_old_rows_in_batches_and_keeps_fresh_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = counter_db(dir.path());
        db.call(|c| {
            for i in 0..1234 {
                c.execute(
                    "INSERT INTO t VALUES (?1, ?2)",
                    rusqlite::params![format!("old{i:04}"), i],
                )?;
            }
            for i in 0..10 {
                c.execute("INSERT INTO t VALUES (?1, 5000)", [format!("new{i}")])?;
            }
            Ok(())
        })
        .await
        .unwrap();
        // Batches of 100: 13 calls, the last one not full.
        let deleted = db
            .purge_older("t", "n", rusqlite::types::Value::Integer(4000), 100)
            .await
            .unwrap();
        assert_eq!(deleted, 1234);
        let left = rows(&db).await;
        assert_eq!(left.len(), 10);
        assert!(left.iter().all(|k| k.starts_with("new")));
        assert_eq!(
            db.purge_older("t", "n", rusqlite::types::Value::Integer(4000), 100)
                .await
                .unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn a_failing_call_alone_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let db = counter_db(dir.path());
        let err = db
            .call(|c| {
                c.execute("INSERT INTO t VALUES ('half', 1)", [])?;
                c.execute("INSERT INTO t VALUES ('half', 2)", [])?; // duplicate key
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("UNIQUE"), "{err:#}");
        assert!(rows(&db).await.is_empty());
    }

    /// Queues `calls` while the database thread is busy with another call, so that they run
    /// as one batch; returns each call's result and how often it ran.
    async fn one_batch(
        db: &GroupCommit,
        calls: usize,
        failing: Option<usize>,
    ) -> Vec<(anyhow::Result<usize>, usize)> {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Arc;
        let (started_tx, started) = std_mpsc::channel::<()>();
        let (release, gate) = std_mpsc::channel::<()>();
        let blocker = db.queue(move |_| {
            let _ = started_tx.send(());
            let _ = gate.recv();
            Ok(())
        });
        started.recv().unwrap();
        let runs: Vec<Arc<AtomicUsize>> = (0..calls).map(|_| Arc::default()).collect();
        let queued: Vec<_> = (0..calls)
            .map(|i| {
                let runs = runs[i].clone();
                db.queue(move |c| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    c.execute("INSERT INTO t VALUES (?1, 1)", [format!("k{i:02}")])?;
                    if failing == Some(i) {
                        c.execute("INSERT INTO t VALUES (?1, 1)", [format!("k{i:02}")])?;
                    }
                    Ok(i)
                })
            })
            .collect();
        drop(release);
        blocker.await.unwrap();
        let results = futures::future::join_all(queued).await;
        results
            .into_iter()
            .zip(runs)
            .map(|(r, n)| (r, n.load(Ordering::SeqCst)))
            .collect()
    }

    #[tokio::test]
    async fn a_batch_runs_once_without_savepoints_when_every_call_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let db = counter_db(dir.path());
        let results = one_batch(&db, 20, None).await;
        for (i, (r, runs)) in results.iter().enumerate() {
            assert_eq!(r.as_ref().ok(), Some(&i), "call {i}: {r:?}");
            assert_eq!(*runs, 1, "call {i} ran {runs} times");
        }
        assert_eq!(rows(&db).await.len(), 20);
    }

    #[tokio::test]
    async fn a_batch_with_a_failing_call_runs_again_in_savepoints_and_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let db = counter_db(dir.path());
        let results = one_batch(&db, 20, Some(7)).await;
        for (i, (r, runs)) in results.iter().enumerate() {
            assert_eq!(r.is_err(), i == 7, "call {i}: {r:?}");
            // The first pass stops at the failure; the second runs every call.
            assert_eq!(*runs, if i <= 7 { 2 } else { 1 }, "call {i}");
        }
        let expected: Vec<String> = (0..20)
            .filter(|i| *i != 7)
            .map(|i| format!("k{i:02}"))
            .collect();
        // Each surviving call's row once: the rolled-back first pass left nothing.
        assert_eq!(rows(&db).await, expected);
    }

    #[tokio::test]
    async fn calls_committed_together_keep_their_own_atomicity() {
        let dir = tempfile::tempdir().unwrap();
        let db = counter_db(dir.path());
        // Queued at once, so the thread runs them as one batch (or several; either way each
        // call must be all-or-nothing and answered with its own result).
        let calls = (0..50).map(|i| {
            let db = db.clone();
            async move {
                db.call(move |c| {
                    c.execute("INSERT INTO t VALUES (?1, 1)", [format!("k{i:02}")])?;
                    if i % 10 == 3 {
                        c.execute("INSERT INTO t VALUES (?1, 1)", [format!("k{i:02}")])?;
                    }
                    Ok(i)
                })
                .await
            }
        });
        let results = futures::future::join_all(calls).await;
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.is_err(), i % 10 == 3, "call {i}: {r:?}");
        }
        let expected: Vec<String> = (0..50)
            .filter(|i| i % 10 != 3)
            .map(|i| format!("k{i:02}"))
            .collect();
        assert_eq!(rows(&db).await, expected);
    }
}
