//! The PostgreSQL connection pool of the stores that live in PostgreSQL when `store.url` is
//! set (fulfillment's, the order service's and inventory's): deadpool-postgres, a connect
//! timeout, the application name shown in `pg_stat_activity`, and errors without the password.
//!
//! A connection that dies (a restarted or failed-over server, `pg_terminate_backend`, a network
//! cut) is replaced instead of failing every later call: a statement run through
//! [`Database::query`] that fails because its connection died runs again on a fresh one.

use std::error::Error as _;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::settings::{redact_url, SecretUrl};

/// How long making one connection may take (unless the URL sets `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a free connection.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Rows deleted per statement when purging.
const PURGE_BATCH: i64 = 500;

/// A pool of at most `size` connections to `url`, named `application` on the server. No
/// connection is made yet.
///
/// # Errors
/// A malformed URL (the password is not shown).
pub fn pool(url: &SecretUrl, application: &str, size: usize) -> anyhow::Result<Pool> {
    let mut config: tokio_postgres::Config = url
        .expose()
        .parse()
        .map_err(|e: tokio_postgres::Error| anyhow::anyhow!(redact_url(&e.to_string())))
        .with_context(|| format!("parsing the PostgreSQL URL {url}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name(application);
    }
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            // A closed connection is dropped when handed out; a dead one that looks open is
            // found by the statement that fails on it (the stores then use a fresh one).
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(WAIT_TIMEOUT))
        .build()
        .context("building the PostgreSQL pool")
}

/// A pool error as one line without the password, and whether the server refused the login
/// (SQLSTATE class 28: waiting will not help).
pub fn pool_error(url: &SecretUrl, error: &PoolError) -> (String, bool) {
    let (reason, refused) = match error {
        PoolError::Backend(e) => (
            redact_url(&e.to_string()),
            e.code().is_some_and(|c| c.code().starts_with("28")),
        ),
        PoolError::Timeout(_) => ("timed out waiting for a connection".to_owned(), false),
        other => (redact_url(&other.to_string()), false),
    };
    (
        format!("cannot connect to PostgreSQL at {url}: {reason}"),
        refused,
    )
}

/// A statement's error as one line without the password.
pub fn query_error(e: &tokio_postgres::Error) -> anyhow::Error {
    anyhow::anyhow!(redact_url(&e.to_string()))
}

/// Runs `schema` (idempotent DDL) on `client` in one transaction, under the transaction-scoped
/// advisory lock `lock`: processes started together on an empty database would otherwise race
/// on `CREATE TABLE IF NOT EXISTS` (PostgreSQL answers one of them with a unique violation on
/// `pg_type`), and the lock makes them take turns. A client whose transaction failed is not
/// handed back to the pool.
///
/// # Errors
/// The statement failed.
pub async fn create_schema(
    client: Object,
    lock: i64,
    schema: &str,
) -> Result<(), tokio_postgres::Error> {
    let created = client
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({lock}); {schema}; COMMIT;"
        ))
        .await;
    if created.is_err() {
        // Not back into the pool: it may be inside the failed transaction.
        drop(Object::take(client));
    }
    created
}

/// The server refused the login (SQLSTATE class 28): waiting will not help.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

/// One store's PostgreSQL database: the pool, and its schema created once per process on the
/// first connection that works. The fulfillment, order and inventory stores build on it.
pub struct Database {
    pool: Pool,
    /// Tries of one statement: the first, then one on a fresh connection per dead one found.
    /// After a server restart every idle connection of the pool is dead, and the pool only
    /// notices when one is handed out, so up to a pool's worth of tries are needed before a new
    /// connection is made.
    tries: usize,
    url: SecretUrl,
    schema: &'static str,
    lock: i64,
    created: tokio::sync::OnceCell<()>,
}

impl Database {
    /// Builds the pool (`size` connections named `application`) and creates `schema` (under
    /// the advisory lock `lock`) if the server answers. An unreachable server is logged with
    /// `meanwhile` (what the service does until it answers) and is not fatal.
    ///
    /// # Errors
    /// A malformed URL, or a server that refuses the login ([`Refused`]); the password is not
    /// shown.
    pub async fn connect(
        url: &SecretUrl,
        application: &str,
        size: usize,
        (lock, schema): (i64, &'static str),
        meanwhile: &str,
    ) -> anyhow::Result<Self> {
        let db = Self {
            pool: pool(url, application, size)?,
            tries: size + 1,
            url: url.clone(),
            schema,
            lock,
            created: tokio::sync::OnceCell::new(),
        };
        if let Err(e) = db.create().await {
            if e.downcast_ref::<Refused>().is_some() {
                return Err(e);
            }
            tracing::warn!(url = %db.url, error = %format!("{e:#}"), "PostgreSQL is not reachable yet; {meanwhile}");
        }
        Ok(db)
    }

    async fn create(&self) -> anyhow::Result<()> {
        self.created
            .get_or_try_init(|| async {
                let client = self.raw_client().await?;
                create_schema(client, self.lock, self.schema)
                    .await
                    .map_err(|e| query_error(&e))
                    .context("creating the schema")
            })
            .await
            .map(|_| ())
    }

    async fn raw_client(&self) -> anyhow::Result<Object> {
        self.pool.get().await.map_err(|e| {
            let (line, refused) = pool_error(&self.url, &e);
            if refused {
                anyhow::Error::new(Refused(line))
            } else {
                anyhow::anyhow!(line)
            }
        })
    }

    /// A connection, once the schema exists.
    ///
    /// # Errors
    /// No connection could be had, or the schema could not be created.
    pub async fn client(&self) -> anyhow::Result<Object> {
        self.create().await?;
        self.raw_client().await
    }

    /// Runs one statement (`what` names it in errors) and returns its rows; again on a fresh
    /// connection each time the one it ran on turns out dead. So every statement run through
    /// here must be safe to run twice: one that committed just before its connection died runs
    /// again (an upsert that counts duplicates counts one more, an idempotent update changes
    /// nothing). A transaction of several statements takes a [`Database::client`] instead.
    ///
    /// # Errors
    /// No connection, or the statement failed.
    pub async fn query(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> anyhow::Result<Vec<tokio_postgres::Row>> {
        let mut tries = 0;
        loop {
            tries += 1;
            let client = self.client().await.context(what)?;
            let result = match client.prepare_cached(sql).await {
                Ok(statement) => client.query(&statement, params).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(rows) => return Ok(rows),
                Err(e) if connection_lost(&e) && tries < self.tries => {
                    tracing::warn!(tries, error = %e, "{what}: the PostgreSQL connection died; running it again on a fresh one");
                    // Not back into the pool: the connection is dead.
                    drop(Object::take(client));
                }
                Err(e) => return Err(query_error(&e)).context(what),
            }
        }
    }

    /// Runs one statement and returns its first row, if any; see [`Database::query`].
    ///
    /// # Errors
    /// As [`Database::query`].
    pub async fn query_opt(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> anyhow::Result<Option<tokio_postgres::Row>> {
        Ok(self.query(what, sql, params).await?.into_iter().next())
    }

    /// Deletes the rows of `table` whose `at` is older than `window`, `PURGE_BATCH` per
    /// statement so no statement holds many locks; `key` is the primary key (`id`,
    /// `(kind, id)`). Returns how many.
    ///
    /// # Errors
    /// No connection, or a statement failed (the batches before it stay deleted).
    pub async fn purge_older(
        &self,
        what: &'static str,
        (table, key, at): (&str, &str, &str),
        window: Duration,
    ) -> anyhow::Result<u64> {
        let columns = key.trim_start_matches('(').trim_end_matches(')');
        let sql = format!(
            "DELETE FROM {table} WHERE {key} IN (
                 SELECT {columns} FROM {table} WHERE {at} < now() - make_interval(secs => $1)
                 LIMIT $2)
             RETURNING 1"
        );
        let secs = window.as_secs_f64();
        let mut purged = 0u64;
        loop {
            let rows = self.query(what, &sql, &[&secs, &PURGE_BATCH]).await?;
            purged += rows.len() as u64;
            if (rows.len() as i64) < PURGE_BATCH {
                return Ok(purged);
            }
        }
    }

    /// One round trip: whether the database answers.
    ///
    /// # Errors
    /// No connection, or the statement failed.
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.query("checking the store", "SELECT 1", &[])
            .await
            .map(|_| ())
    }
}

/// Whether `e` says the connection is gone (closed, cut, or ended by the server: SQLSTATE
/// classes 08 "connection exception" and 57P "operator intervention", which
/// `pg_terminate_backend` and a server shutdown send), so the statement may run on another.
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || e.code()
            .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
        || e.source().is_some_and(|s| s.is::<std::io::Error>())
}
