//! SQLite: history DDL, the lock (a lease row that expires, since no server releases a session lock for a dead
//! process), the fencing upsert, the URL sqlx wants, and the schema dump.

mod schema;

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::AnyConnection;

pub(super) use schema::dump;

use super::shared::{db_error, run_on, ttl_ms, Dialect, CREATE_FENCE};
use super::DriverError;

pub(super) const DIALECT: Dialect = Dialect {
    create_history: "CREATE TABLE IF NOT EXISTS flotilla_schema_history (
        version TEXT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, state TEXT NOT NULL, direction TEXT,
        statements_done INTEGER NOT NULL DEFAULT 0, statements_total INTEGER NOT NULL DEFAULT 0, error TEXT,
        applied_at TEXT NOT NULL, duration_ms INTEGER NOT NULL, applied_by TEXT NOT NULL, plan_id TEXT)",
    inspect: "SELECT count(*), coalesce(sum(upper(type) = 'INTEGER'), 0)
        FROM pragma_table_info('flotilla_schema_history') WHERE name = 'version'",
    // SQLite cannot change a column's type: the table is rebuilt, every row kept (the executor holds the lock and
    // runs these in one transaction).
    upgrade_history: &[
        "ALTER TABLE flotilla_schema_history RENAME TO flotilla_schema_history_i64",
        "CREATE TABLE flotilla_schema_history (
        version TEXT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, state TEXT NOT NULL, direction TEXT,
        statements_done INTEGER NOT NULL DEFAULT 0, statements_total INTEGER NOT NULL DEFAULT 0, error TEXT,
        applied_at TEXT NOT NULL, duration_ms INTEGER NOT NULL, applied_by TEXT NOT NULL, plan_id TEXT)",
        "INSERT INTO flotilla_schema_history SELECT CAST(version AS TEXT), name, checksum, state, direction,
        statements_done, statements_total, error, applied_at, duration_ms, applied_by, plan_id
        FROM flotilla_schema_history_i64",
        "DROP TABLE flotilla_schema_history_i64",
    ],
    // Versions are text here: ordered as numbers once read.
    select_history: "SELECT CAST(version AS TEXT), name, checksum, state, direction, statements_done,
        statements_total, error, applied_at, duration_ms, applied_by, plan_id FROM flotilla_schema_history",
    upsert: concat!(
        "INSERT INTO flotilla_schema_history (version, name, checksum, state, direction, statements_done,
        statements_total, error, applied_at, duration_ms, applied_by, plan_id)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ",
        on_conflict_update!()
    ),
    set_progress: "UPDATE flotilla_schema_history SET statements_done = ? WHERE version = ?",
    delete: "DELETE FROM flotilla_schema_history WHERE version = ?",
    timestamp_format: "%Y-%m-%dT%H:%M:%S%.6fZ",
    create_repeatables: "CREATE TABLE IF NOT EXISTS flotilla_repeatable (name TEXT PRIMARY KEY, checksum TEXT NOT NULL,
        applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), applied_by TEXT NOT NULL)",
    repeatables_exist: "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'flotilla_repeatable'",
    select_repeatables: "SELECT name, checksum FROM flotilla_repeatable",
    upsert_repeatable: "INSERT INTO flotilla_repeatable (name, checksum, applied_by) VALUES (?, ?, ?)
        ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum,
        applied_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), applied_by = excluded.applied_by",
    create_cursors: "CREATE TABLE IF NOT EXISTS flotilla_backfill (
        version TEXT NOT NULL, direction TEXT NOT NULL, checksum TEXT NOT NULL, last_key INTEGER NOT NULL,
        batches INTEGER NOT NULL, rows_done INTEGER NOT NULL, PRIMARY KEY (version, direction))",
    save_cursor: "INSERT INTO flotilla_backfill (version, direction, checksum, last_key, batches, rows_done)
        VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (version, direction) DO UPDATE SET checksum = excluded.checksum,
        last_key = excluded.last_key, batches = excluded.batches, rows_done = excluded.rows_done",
    select_cursor:
        "SELECT checksum, last_key, batches, rows_done FROM flotilla_backfill WHERE version = ? AND direction = ?",
    clear_cursor: "DELETE FROM flotilla_backfill WHERE version = ? AND direction = ?",
    bigint: "INTEGER",
};

/// SQLite has no server to release a session lock, so its lock is a lease row that expires.
const LEASE_TABLE: &str = "CREATE TABLE IF NOT EXISTS flotilla_lock (
    id INTEGER PRIMARY KEY CHECK (id = 1), owner TEXT NOT NULL, expires_at_ms INTEGER NOT NULL)";

/// A held lease.
pub(super) struct Lease {
    owner: String,
    renewed: Instant,
}

impl Lease {
    /// Whether a third of the lease's length has passed since it was last renewed.
    pub(super) fn due(&self, ttl: Duration) -> bool {
        self.renewed.elapsed() >= ttl / 3
    }
}

/// Waits for a busy database instead of failing at once.
pub(super) async fn on_connect(conn: &mut AnyConnection) -> Result<(), DriverError> {
    run_on(conn, "PRAGMA busy_timeout = 30000").await.map(drop)
}

/// Takes the lease for `owner`, waiting up to `timeout` for one held by another to expire or be released.
pub(super) async fn lease(
    conn: &mut AnyConnection,
    owner: &str,
    ttl: Duration,
    timeout: Duration,
) -> Result<Lease, DriverError> {
    run_on(conn, LEASE_TABLE).await?;
    let started = Instant::now();
    let mut pause = Duration::from_millis(20);
    loop {
        let now = Utc::now().timestamp_millis();
        let taken = sqlx::query(
            "INSERT INTO flotilla_lock (id, owner, expires_at_ms) VALUES (1, ?, ?)
             ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, expires_at_ms = excluded.expires_at_ms
             WHERE flotilla_lock.expires_at_ms < ? OR flotilla_lock.owner = excluded.owner",
        )
        .bind(owner.to_string())
        .bind(now + ttl_ms(ttl))
        .bind(now)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected();
        if taken == 1 {
            return Ok(Lease { owner: owner.to_string(), renewed: Instant::now() });
        }
        if started.elapsed() >= timeout {
            return Err(DriverError::LockTimeout { waited: timeout, holder: holder(conn).await? });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

async fn holder(conn: &mut AnyConnection) -> Result<Option<String>, DriverError> {
    sqlx::query_scalar("SELECT owner FROM flotilla_lock WHERE id = 1").fetch_optional(conn).await.map_err(db_error)
}

/// Extends the lease; fails with `LockLost` when another runner holds it now.
pub(super) async fn renew(conn: &mut AnyConnection, lease: Lease, ttl: Duration) -> Result<Lease, DriverError> {
    let renewed = sqlx::query("UPDATE flotilla_lock SET expires_at_ms = ? WHERE id = 1 AND owner = ?")
        .bind(Utc::now().timestamp_millis() + ttl_ms(ttl))
        .bind(lease.owner.clone())
        .execute(conn)
        .await
        .map_err(db_error)?
        .rows_affected();
    if renewed == 1 {
        Ok(Lease { owner: lease.owner, renewed: Instant::now() })
    } else {
        Err(DriverError::LockLost)
    }
}

pub(super) async fn release(conn: &mut AnyConnection, lease: Lease) -> Result<(), DriverError> {
    sqlx::query("DELETE FROM flotilla_lock WHERE id = 1 AND owner = ?")
        .bind(lease.owner)
        .execute(conn)
        .await
        .map(drop)
        .map_err(db_error)
}

/// Opens a transaction under the lease. BEGIN IMMEDIATE takes SQLite's write lock first, so from here on nobody
/// can take the lease until we commit; then the lease must still name us (it may have expired, but nobody took it).
/// Renewing it is `check_lock`'s job, so the fence is a read and costs no page write per migration.
pub(super) async fn begin_under(conn: &mut AnyConnection, lease: &Lease) -> Result<(), DriverError> {
    run_on(conn, "BEGIN IMMEDIATE").await?;
    if holder(conn).await?.as_deref() != Some(lease.owner.as_str()) {
        return Err(DriverError::LockLost);
    }
    Ok(())
}

/// Raises the fence only from at or below `token`. SQLite, in process, counts only the last statement's rows.
pub(super) async fn fence(conn: &mut AnyConnection, token: i64) -> Result<bool, DriverError> {
    run_on(conn, CREATE_FENCE).await?;
    let upsert = format!(
        "INSERT INTO flotilla_fence (id, token) VALUES (1, {token})
         ON CONFLICT (id) DO UPDATE SET token = excluded.token WHERE flotilla_fence.token <= excluded.token"
    );
    Ok(run_on(conn, &upsert).await? == 1)
}

/// Builds the sqlx URL for a SQLite database. Without `create`, a missing file is read as an empty database,
/// so `status` and dry runs never create files.
pub(super) fn url(url: &str, create: bool) -> Result<String, DriverError> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() {
        return Err(DriverError::BadUrl(
            "sqlite URL has no file path (sqlite:///abs/path.db or sqlite://rel/path.db)".into(),
        ));
    }
    if path == ":memory:" {
        return Ok("sqlite::memory:".into());
    }
    if !create && !Path::new(path).exists() {
        return Ok("sqlite::memory:".into());
    }
    let mode = if create { "rwc" } else { "rw" };
    let extra = if query.is_empty() { String::new() } else { format!("&{query}") };
    Ok(format!("sqlite://{path}?mode={mode}{extra}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls() {
        assert_eq!(url("sqlite:///tmp/a.db", true).unwrap(), "sqlite:///tmp/a.db?mode=rwc");
        assert_eq!(url("sqlite://rel.db?cache=shared", true).unwrap(), "sqlite://rel.db?mode=rwc&cache=shared");
        assert_eq!(url("sqlite:///definitely/not/here.db", false).unwrap(), "sqlite::memory:");
        assert!(url("sqlite://", true).is_err());
    }
}
