//! PostgreSQL: its history DDL, its lock (a session-level advisory lock the server releases when the session
//! ends), its fencing upsert, and its schema dump.

mod schema;

use std::time::Duration;

use sqlx::AnyConnection;
use sqlx::Row;

pub(super) use schema::dump;

use super::shared::{db_error, fetch_unprepared, run_on, Dialect, CREATE_FENCE};
use super::DriverError;

/// Key of the PostgreSQL advisory lock: "flotilla" in ASCII. Advisory locks are scoped to the current database.
const PG_LOCK_KEY: i64 = 0x666c_6f74_696c_6c61;

pub(super) const DIALECT: Dialect = Dialect {
    create_history: "CREATE TABLE IF NOT EXISTS flotilla_schema_history (
        version NUMERIC(38) PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, state TEXT NOT NULL, direction TEXT,
        statements_done BIGINT NOT NULL DEFAULT 0, statements_total BIGINT NOT NULL DEFAULT 0, error TEXT,
        applied_at TIMESTAMPTZ NOT NULL, duration_ms BIGINT NOT NULL, applied_by TEXT NOT NULL, plan_id TEXT)",
    // pg_attribute and to_regclass resolve names as the queries that follow do, and cost a fresh backend far less
    // than information_schema's views.
    inspect: "SELECT count(to_regclass('flotilla_schema_history')),
        count(*) FILTER (WHERE a.atttypid = 'int8'::regtype)
        FROM pg_attribute a WHERE a.attrelid = to_regclass('flotilla_schema_history') AND a.attname = 'version'",
    upgrade_history: &[
        "ALTER TABLE flotilla_schema_history ALTER COLUMN version TYPE NUMERIC(38)",
        "ALTER TABLE IF EXISTS flotilla_backfill ALTER COLUMN version TYPE NUMERIC(38)",
    ],
    select_history: "SELECT version::text, name, checksum, state, direction, statements_done, statements_total, error,
        to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), duration_ms, applied_by, plan_id
        FROM flotilla_schema_history",
    upsert: concat!(
        "INSERT INTO flotilla_schema_history (version, name, checksum, state, direction, statements_done,
        statements_total, error, applied_at, duration_ms, applied_by, plan_id)
        VALUES (CAST($1 AS NUMERIC), $2, $3, $4, $5, $6, $7, $8, CAST($9 AS TIMESTAMPTZ), $10, $11, $12) ",
        on_conflict_update!()
    ),
    set_progress: "UPDATE flotilla_schema_history SET statements_done = $1 WHERE version = CAST($2 AS NUMERIC)",
    delete: "DELETE FROM flotilla_schema_history WHERE version = CAST($1 AS NUMERIC)",
    timestamp_format: "%Y-%m-%dT%H:%M:%S%.6fZ",
    create_repeatables: "CREATE TABLE IF NOT EXISTS flotilla_repeatable (name TEXT PRIMARY KEY, checksum TEXT NOT NULL,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), applied_by TEXT NOT NULL)",
    repeatables_exist: "SELECT count(to_regclass('flotilla_repeatable'))",
    select_repeatables: "SELECT name, checksum FROM flotilla_repeatable",
    upsert_repeatable: "INSERT INTO flotilla_repeatable (name, checksum, applied_by) VALUES ($1, $2, $3)
        ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, applied_at = now(), applied_by = excluded.applied_by",
    create_cursors: "CREATE TABLE IF NOT EXISTS flotilla_backfill (
        version NUMERIC(38) NOT NULL, direction VARCHAR(8) NOT NULL, checksum VARCHAR(64) NOT NULL,
        last_key BIGINT NOT NULL, batches BIGINT NOT NULL, rows_done BIGINT NOT NULL, PRIMARY KEY (version, direction))",
    save_cursor: "INSERT INTO flotilla_backfill (version, direction, checksum, last_key, batches, rows_done)
        VALUES (CAST($1 AS NUMERIC), $2, $3, $4, $5, $6) ON CONFLICT (version, direction) DO UPDATE SET
        checksum = excluded.checksum, last_key = excluded.last_key, batches = excluded.batches,
        rows_done = excluded.rows_done",
    select_cursor: "SELECT checksum, last_key, batches, rows_done FROM flotilla_backfill
        WHERE version = CAST($1 AS NUMERIC) AND direction = $2",
    clear_cursor: "DELETE FROM flotilla_backfill WHERE version = CAST($1 AS NUMERIC) AND direction = $2",
    bigint: "BIGINT",
};

/// PostgreSQL 14+ checks for a vanished client during long statements, so a killed runner's transaction and
/// advisory lock go within a second, not when its statement ends. Older servers lack it.
pub(super) async fn on_connect(conn: &mut AnyConnection) {
    let _ = run_on(conn, "SET client_connection_check_interval = 1000").await;
}

/// What `DISCARD ALL` does, but keeping the connection's prepared statements (sqlx caches them): one round trip.
pub(super) async fn reset_session(conn: &mut AnyConnection) -> Result<(), DriverError> {
    run_on(
        conn,
        "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); \
         DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES; SET client_connection_check_interval = 1000",
    )
    .await
    .map(drop)
}

/// `lock_timeout` and `statement_timeout` for the session, in milliseconds; `None` back to the server's default.
/// One simple query: both in one round trip.
pub(super) fn timeouts(lock: Option<Duration>, statement: Option<Duration>) -> String {
    let set = |name: &str, d: Option<Duration>| match d {
        Some(d) => format!("SET {name} = {}", d.as_millis().max(1)),
        None => format!("RESET {name}"),
    };
    format!("{}; {}", set("lock_timeout", lock), set("statement_timeout", statement))
}

pub(super) async fn lock(conn: &mut AnyConnection, timeout: Duration) -> Result<(), DriverError> {
    // The common case, a free lock, in one round trip.
    let rows = fetch_unprepared(conn, &format!("SELECT pg_try_advisory_lock({PG_LOCK_KEY})")).await?;
    if rows.first().and_then(|r| r.try_get::<bool, _>(0).ok()) == Some(true) {
        return Ok(());
    }
    // Otherwise wait, bounded by lock_timeout; a lock held by a dead session is released by the server.
    run_on(conn, &format!("SET lock_timeout = {}", timeout.as_millis().max(1))).await?;
    let got = sqlx::query("SELECT pg_advisory_lock($1)").bind(PG_LOCK_KEY).execute(&mut *conn).await;
    run_on(conn, "RESET lock_timeout").await?;
    match got {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("55P03") => {
            let holder: Option<String> = sqlx::query_scalar(
                "SELECT 'pid ' || pid::text FROM pg_locks WHERE locktype = 'advisory' AND granted
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND ((classid::bigint << 32) | objid::bigint) = $1 LIMIT 1",
            )
            .bind(PG_LOCK_KEY)
            .fetch_optional(conn)
            .await
            .ok()
            .flatten();
            Err(DriverError::LockTimeout { waited: timeout, holder })
        }
        Err(e) => Err(db_error(e)),
    }
}

pub(super) async fn unlock(conn: &mut AnyConnection) -> Result<(), DriverError> {
    run_on(conn, &format!("SELECT pg_advisory_unlock({PG_LOCK_KEY})")).await.map(drop)
}

/// Raises the fence only from at or below `token` (no row touched otherwise), in one round trip.
pub(super) async fn fence(conn: &mut AnyConnection, token: i64) -> Result<bool, DriverError> {
    let upsert = format!(
        "INSERT INTO flotilla_fence (id, token) VALUES (1, {token})
         ON CONFLICT (id) DO UPDATE SET token = excluded.token WHERE flotilla_fence.token <= excluded.token"
    );
    Ok(run_on(conn, &format!("{CREATE_FENCE}; {upsert}")).await? == 1)
}
