//! MySQL and MariaDB: history DDL, the lock (a named lock, `GET_LOCK`, held by the session), the fencing upsert,
//! and the schema dump. DDL commits implicitly here, so a migration runs statement by statement unless it holds row
//! changes only (`SqlDriver::can_run_atomically`).

mod schema;

use std::time::Duration;

use sqlx::AnyConnection;

pub(super) use schema::dump;

use super::shared::{db_error, run_on, Dialect, CREATE_FENCE};
use super::DriverError;

pub(super) const DIALECT: Dialect = Dialect {
    create_history: "CREATE TABLE IF NOT EXISTS flotilla_schema_history (
        version DECIMAL(38,0) NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, checksum CHAR(64) NOT NULL,
        state VARCHAR(16) NOT NULL, direction VARCHAR(8) NULL, statements_done BIGINT NOT NULL DEFAULT 0,
        statements_total BIGINT NOT NULL DEFAULT 0, error TEXT NULL, applied_at DATETIME(6) NOT NULL,
        duration_ms BIGINT NOT NULL, applied_by VARCHAR(255) NOT NULL, plan_id VARCHAR(64) NULL) ENGINE=InnoDB",
    inspect: "SELECT count(*), CAST(coalesce(sum(data_type = 'bigint'), 0) AS SIGNED) FROM information_schema.columns
        WHERE table_schema = DATABASE() AND table_name = 'flotilla_schema_history' AND column_name = 'version'",
    upgrade_history: &["ALTER TABLE flotilla_schema_history MODIFY version DECIMAL(38,0) NOT NULL"],
    // MariaDB reports TEXT columns as BLOB; read `error` as characters.
    select_history: "SELECT CAST(version AS CHAR), name, checksum, state, direction, statements_done,
        statements_total, CAST(error AS CHAR(4000)), DATE_FORMAT(applied_at, '%Y-%m-%dT%H:%i:%s.%fZ'), duration_ms,
        applied_by, plan_id FROM flotilla_schema_history",
    // A version is bound as text and cast: compared with a string, MySQL would turn both sides into doubles.
    upsert: "INSERT INTO flotilla_schema_history (version, name, checksum, state, direction, statements_done,
        statements_total, error, applied_at, duration_ms, applied_by, plan_id)
        VALUES (CAST(? AS DECIMAL(38,0)), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON DUPLICATE KEY UPDATE name = VALUES(name), checksum = VALUES(checksum), state = VALUES(state),
        direction = VALUES(direction), statements_done = VALUES(statements_done),
        statements_total = VALUES(statements_total), error = VALUES(error), applied_at = VALUES(applied_at),
        duration_ms = VALUES(duration_ms), applied_by = VALUES(applied_by), plan_id = VALUES(plan_id)",
    set_progress: "UPDATE flotilla_schema_history SET statements_done = ? WHERE version = CAST(? AS DECIMAL(38,0))",
    delete: "DELETE FROM flotilla_schema_history WHERE version = CAST(? AS DECIMAL(38,0))",
    timestamp_format: "%Y-%m-%d %H:%M:%S%.6f",
    create_repeatables: "CREATE TABLE IF NOT EXISTS flotilla_repeatable (name VARCHAR(255) NOT NULL PRIMARY KEY,
        checksum CHAR(64) NOT NULL, applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        applied_by VARCHAR(255) NOT NULL) ENGINE=InnoDB",
    repeatables_exist: "SELECT count(*) FROM information_schema.tables
        WHERE table_schema = DATABASE() AND table_name = 'flotilla_repeatable'",
    select_repeatables: "SELECT name, checksum FROM flotilla_repeatable",
    upsert_repeatable: "INSERT INTO flotilla_repeatable (name, checksum, applied_by) VALUES (?, ?, ?)
        ON DUPLICATE KEY UPDATE checksum = VALUES(checksum), applied_at = CURRENT_TIMESTAMP(6),
        applied_by = VALUES(applied_by)",
    create_cursors:
        "CREATE TABLE IF NOT EXISTS flotilla_backfill (
        version DECIMAL(38,0) NOT NULL, direction VARCHAR(8) NOT NULL, checksum VARCHAR(64) NOT NULL,
        last_key BIGINT NOT NULL, batches BIGINT NOT NULL, rows_done BIGINT NOT NULL, PRIMARY KEY (version, direction))",
    save_cursor: "INSERT INTO flotilla_backfill (version, direction, checksum, last_key, batches, rows_done)
        VALUES (CAST(? AS DECIMAL(38,0)), ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE checksum = VALUES(checksum),
        last_key = VALUES(last_key), batches = VALUES(batches), rows_done = VALUES(rows_done)",
    select_cursor: "SELECT checksum, last_key, batches, rows_done FROM flotilla_backfill
        WHERE version = CAST(? AS DECIMAL(38,0)) AND direction = ?",
    clear_cursor: "DELETE FROM flotilla_backfill WHERE version = CAST(? AS DECIMAL(38,0)) AND direction = ?",
    bigint: "SIGNED",
};

/// `lock_wait_timeout` (whole seconds, at least 1: what metadata locks, the ones DDL waits for, obey) and MariaDB's
/// `max_statement_time` (seconds) for the session; `None` back to the server's default.
/// One statement: both in one round trip.
pub(super) fn timeouts(lock: Option<Duration>, statement: Option<Duration>) -> String {
    let lock = match lock {
        Some(d) => (d.as_millis().div_ceil(1000).max(1)).to_string(),
        None => "DEFAULT".to_string(),
    };
    let statement = match statement {
        Some(d) => format!("{:.3}", d.as_secs_f64()),
        None => "DEFAULT".to_string(),
    };
    format!("SET SESSION lock_wait_timeout = {lock}, SESSION max_statement_time = {statement}")
}

pub(super) async fn lock(conn: &mut AnyConnection, timeout: Duration) -> Result<(), DriverError> {
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(CONCAT('flotilla:', DATABASE()), ?)")
        .bind(timeout.as_secs_f64())
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
    if got == Some(1) {
        return Ok(());
    }
    let holder: Option<i64> =
        sqlx::query_scalar("SELECT IS_USED_LOCK(CONCAT('flotilla:', DATABASE()))").fetch_one(conn).await.ok().flatten();
    Err(DriverError::LockTimeout { waited: timeout, holder: holder.map(|id| format!("connection {id}")) })
}

pub(super) async fn unlock(conn: &mut AnyConnection) -> Result<(), DriverError> {
    run_on(conn, "DO RELEASE_LOCK(CONCAT('flotilla:', DATABASE()))").await.map(drop)
}

/// MySQL reports an unchanged row as 0 affected: keep the higher token, then read which it is.
pub(super) async fn fence(conn: &mut AnyConnection, token: i64) -> Result<bool, DriverError> {
    run_on(conn, CREATE_FENCE).await?;
    run_on(
        conn,
        &format!(
            "INSERT INTO flotilla_fence (id, token) VALUES (1, {token})
             ON DUPLICATE KEY UPDATE token = GREATEST(token, VALUES(token))"
        ),
    )
    .await?;
    let seen: i64 =
        sqlx::query_scalar("SELECT token FROM flotilla_fence WHERE id = 1").fetch_one(conn).await.map_err(db_error)?;
    Ok(seen == token)
}
