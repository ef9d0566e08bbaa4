//! The PostgreSQL connection pool of the stores that live in PostgreSQL when `store.url` is
//! set (fulfillment's and the order service's): deadpool-postgres, a connect timeout, the
//! application name shown in `pg_stat_activity`, and errors without the password.

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::settings::{redact_url, SecretUrl};

/// How long making one connection may take (unless the URL sets `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a free connection.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

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
