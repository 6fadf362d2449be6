//! What the SQL engines share: the shape of a [`Dialect`], sqlx helpers, Flotilla's side tables, and the catalog
//! helpers each engine's schema dump uses (a handful of catalog queries, one per kind of object, never one per
//! table, so a dump costs a few round trips).

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_core::schema::{Kind, Object};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::driver::DriverError;

/// The upsert tail PostgreSQL and SQLite share (MySQL says ON DUPLICATE KEY UPDATE).
macro_rules! on_conflict_update {
    () => {
        "ON CONFLICT (version) DO UPDATE SET name = excluded.name, checksum = excluded.checksum, state = excluded.state,
        direction = excluded.direction, statements_done = excluded.statements_done,
        statements_total = excluded.statements_total, error = excluded.error, applied_at = excluded.applied_at,
        duration_ms = excluded.duration_ms, applied_by = excluded.applied_by, plan_id = excluded.plan_id"
    };
}

/// What differs between the SQL engines.
pub(crate) struct Dialect {
    /// The history table, its version a decimal of 38 digits (text on SQLite).
    pub create_history: &'static str,
    /// One row: whether the history table exists (0 or 1), and whether its version column is still a 64-bit integer
    /// (a table from before 38-digit versions, 0 or 1).
    pub inspect: &'static str,
    /// Turns such a table into today's, keeping every row.
    pub upgrade_history: &'static [&'static str],
    /// Selects every history column, the version as text and `applied_at` as RFC 3339 text.
    pub select_history: &'static str,
    pub upsert: &'static str,
    pub set_progress: &'static str,
    pub delete: &'static str,
    /// How `applied_at` is bound.
    pub timestamp_format: &'static str,
    /// Repeatable migrations: created when a set first has one; whether it exists (0 or 1); its rows; an upsert.
    pub create_repeatables: &'static str,
    pub repeatables_exist: &'static str,
    pub select_repeatables: &'static str,
    pub upsert_repeatable: &'static str,
    /// Backfill cursors, created when a backfill first runs.
    pub create_cursors: &'static str,
    pub save_cursor: &'static str,
    pub select_cursor: &'static str,
    pub clear_cursor: &'static str,
    /// Type name that makes any integer a 64-bit one in CAST.
    pub bigint: &'static str,
}

/// The fencing token: the highest this database has seen.
pub(crate) const CREATE_FENCE: &str =
    "CREATE TABLE IF NOT EXISTS flotilla_fence (id INT PRIMARY KEY, token BIGINT NOT NULL)";

/// Runs one statement as written (PostgreSQL's simple query protocol, MySQL's text protocol: no preparing).
pub(crate) async fn run_on(conn: &mut AnyConnection, sql: &str) -> Result<u64, DriverError> {
    sqlx::Executor::execute(conn, sql).await.map(|r| r.rows_affected()).map_err(db_error)
}

/// Runs a query without parameters as written and returns its rows: one round trip on a fresh connection, where a
/// prepared statement would first need one of its own to be prepared.
pub(crate) async fn fetch_unprepared(conn: &mut AnyConnection, sql: &str) -> Result<Vec<AnyRow>, DriverError> {
    sqlx::Executor::fetch_all(conn, sql).await.map_err(db_error)
}

pub(crate) fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

/// PostgreSQL's `lock_not_available` (from `lock_timeout`), MySQL's and MariaDB's `ER_LOCK_WAIT_TIMEOUT` (1205, from
/// `lock_wait_timeout` or `innodb_lock_wait_timeout`).
fn is_lock_timeout(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.code().as_deref() == Some("55P03") || db.message().starts_with("Lock wait timeout exceeded")
}

pub(crate) fn db_error(e: sqlx::Error) -> DriverError {
    match e {
        sqlx::Error::Database(db) if is_lock_timeout(&*db) => DriverError::LockNotAvailable(db.message().to_string()),
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => DriverError::Database(format!("{} (code {code})", db.message())),
            None => DriverError::Database(db.message().to_string()),
        },
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            DriverError::Connect(e.to_string())
        }
        other => DriverError::Database(other.to_string()),
    }
}

/// Rows of a catalog query, every column read as text (NULL as empty).
pub(crate) async fn rows(conn: &mut AnyConnection, sql: &str) -> Result<Vec<Vec<String>>, DriverError> {
    // Not kept as a prepared statement: the census reads the catalog on every warm connection, and a thousand
    // connections each caching a dozen catalog queries (with their column metadata) cost the agent megabytes.
    let rows: Vec<AnyRow> = sqlx::query(sql)
        .persistent(false)
        .fetch_all(conn)
        .await
        .map_err(|e| DriverError::Database(format!("reading the catalog: {e}")))?;
    rows.iter()
        .map(|r| {
            (0..r.len())
                .map(|i| {
                    r.try_get::<Option<String>, _>(i)
                        .map(Option::unwrap_or_default)
                        .map_err(|e| DriverError::Database(format!("reading the catalog: {e}")))
                })
                .collect()
        })
        .collect()
}

pub(crate) fn object(kind: Kind, name: impl Into<String>, ddl: impl Into<String>) -> Object {
    Object { kind, name: name.into(), parts: BTreeMap::new(), ddl: ddl.into() }
}
