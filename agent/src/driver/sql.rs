//! PostgreSQL, MySQL and SQLite through sqlx's `AnyConnection`: one driver, with what differs per dialect
//! (DDL, placeholders, timestamps, the lock) kept in [`Dialect`].

use std::path::Path;
use std::sync::Once;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_core::{AppliedMigration, Backfill, Checksum, Direction, Engine, Statement};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Connection, Row};

use super::{AtomicError, BackfillCursor, ConnectOptions, Driver, DriverError, HistoryChange};

/// Key of the PostgreSQL advisory lock: "flotilla" in ASCII. Advisory locks are scoped to the current database.
const PG_LOCK_KEY: i64 = 0x666c_6f74_696c_6c61;

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
struct Dialect {
    create_history: &'static str,
    /// Counts the history table and the backfill cursor table (0 or 1 each), in one row.
    tables_exist: &'static str,
    /// Selects every history column, with `applied_at` rendered as RFC 3339 text.
    select_history: &'static str,
    upsert: &'static str,
    set_progress: &'static str,
    delete: &'static str,
    /// How `applied_at` is bound.
    timestamp_format: &'static str,
    save_cursor: &'static str,
    select_cursor: &'static str,
    clear_cursor: &'static str,
    /// Type name that makes any integer a 64-bit one in CAST.
    bigint: &'static str,
}

/// Backfill cursors: the same table on every SQL engine.
const CREATE_CURSORS: &str = "CREATE TABLE IF NOT EXISTS flotilla_backfill (
    version BIGINT NOT NULL, direction VARCHAR(8) NOT NULL, checksum VARCHAR(64) NOT NULL, last_key BIGINT NOT NULL,
    batches BIGINT NOT NULL, rows_done BIGINT NOT NULL, PRIMARY KEY (version, direction))";
const CURSOR_COLUMNS_ON_CONFLICT: &str =
    "INSERT INTO flotilla_backfill (version, direction, checksum, last_key, batches, rows_done)
    VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (version, direction) DO UPDATE SET checksum = excluded.checksum,
    last_key = excluded.last_key, batches = excluded.batches, rows_done = excluded.rows_done";

const POSTGRES: Dialect = Dialect {
    create_history: "CREATE TABLE IF NOT EXISTS flotilla_schema_history (
        version BIGINT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, state TEXT NOT NULL, direction TEXT,
        statements_done BIGINT NOT NULL DEFAULT 0, statements_total BIGINT NOT NULL DEFAULT 0, error TEXT,
        applied_at TIMESTAMPTZ NOT NULL, duration_ms BIGINT NOT NULL, applied_by TEXT NOT NULL, plan_id TEXT)",
    // to_regclass resolves names as the queries that follow do, and costs a fresh backend far less than
    // information_schema's views.
    tables_exist: "SELECT count(to_regclass('flotilla_schema_history')), count(to_regclass('flotilla_backfill'))",
    select_history: "SELECT version, name, checksum, state, direction, statements_done, statements_total, error,
        to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), duration_ms, applied_by, plan_id
        FROM flotilla_schema_history ORDER BY version",
    upsert: concat!(
        "INSERT INTO flotilla_schema_history (version, name, checksum, state, direction, statements_done,
        statements_total, error, applied_at, duration_ms, applied_by, plan_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CAST($9 AS TIMESTAMPTZ), $10, $11, $12) ",
        on_conflict_update!()
    ),
    set_progress: "UPDATE flotilla_schema_history SET statements_done = $1 WHERE version = $2",
    delete: "DELETE FROM flotilla_schema_history WHERE version = $1",
    timestamp_format: "%Y-%m-%dT%H:%M:%S%.6fZ",
    save_cursor: "INSERT INTO flotilla_backfill (version, direction, checksum, last_key, batches, rows_done)
        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (version, direction) DO UPDATE SET checksum = excluded.checksum,
        last_key = excluded.last_key, batches = excluded.batches, rows_done = excluded.rows_done",
    select_cursor:
        "SELECT checksum, last_key, batches, rows_done FROM flotilla_backfill WHERE version = $1 AND direction = $2",
    clear_cursor: "DELETE FROM flotilla_backfill WHERE version = $1 AND direction = $2",
    bigint: "BIGINT",
};

const MYSQL: Dialect = Dialect {
    create_history: "CREATE TABLE IF NOT EXISTS flotilla_schema_history (
        version BIGINT NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, checksum CHAR(64) NOT NULL,
        state VARCHAR(16) NOT NULL, direction VARCHAR(8) NULL, statements_done BIGINT NOT NULL DEFAULT 0,
        statements_total BIGINT NOT NULL DEFAULT 0, error TEXT NULL, applied_at DATETIME(6) NOT NULL,
        duration_ms BIGINT NOT NULL, applied_by VARCHAR(255) NOT NULL, plan_id VARCHAR(64) NULL) ENGINE=InnoDB",
    tables_exist: "SELECT
        (SELECT count(*) FROM information_schema.tables
         WHERE table_schema = DATABASE() AND table_name = 'flotilla_schema_history'),
        (SELECT count(*) FROM information_schema.tables
         WHERE table_schema = DATABASE() AND table_name = 'flotilla_backfill')",
    // MariaDB reports TEXT columns as BLOB; read `error` as characters.
    select_history: "SELECT version, name, checksum, state, direction, statements_done, statements_total,
        CAST(error AS CHAR(4000)), DATE_FORMAT(applied_at, '%Y-%m-%dT%H:%i:%s.%fZ'), duration_ms, applied_by, plan_id
        FROM flotilla_schema_history ORDER BY version",
    upsert: "INSERT INTO flotilla_schema_history (version, name, checksum, state, direction, statements_done,
        statements_total, error, applied_at, duration_ms, applied_by, plan_id)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON DUPLICATE KEY UPDATE name = VALUES(name), checksum = VALUES(checksum), state = VALUES(state),
        direction = VALUES(direction), statements_done = VALUES(statements_done),
        statements_total = VALUES(statements_total), error = VALUES(error), applied_at = VALUES(applied_at),
        duration_ms = VALUES(duration_ms), applied_by = VALUES(applied_by), plan_id = VALUES(plan_id)",
    set_progress: "UPDATE flotilla_schema_history SET statements_done = ? WHERE version = ?",
    delete: "DELETE FROM flotilla_schema_history WHERE version = ?",
    timestamp_format: "%Y-%m-%d %H:%M:%S%.6f",
    save_cursor: "INSERT INTO flotilla_backfill (version, direction, checksum, last_key, batches, rows_done)
        VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE checksum = VALUES(checksum), last_key = VALUES(last_key),
        batches = VALUES(batches), rows_done = VALUES(rows_done)",
    select_cursor:
        "SELECT checksum, last_key, batches, rows_done FROM flotilla_backfill WHERE version = ? AND direction = ?",
    clear_cursor: "DELETE FROM flotilla_backfill WHERE version = ? AND direction = ?",
    bigint: "SIGNED",
};

const SQLITE: Dialect = Dialect {
    create_history: "CREATE TABLE IF NOT EXISTS flotilla_schema_history (
        version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, state TEXT NOT NULL, direction TEXT,
        statements_done INTEGER NOT NULL DEFAULT 0, statements_total INTEGER NOT NULL DEFAULT 0, error TEXT,
        applied_at TEXT NOT NULL, duration_ms INTEGER NOT NULL, applied_by TEXT NOT NULL, plan_id TEXT)",
    tables_exist: "SELECT
        (SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'flotilla_schema_history'),
        (SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'flotilla_backfill')",
    select_history: "SELECT version, name, checksum, state, direction, statements_done, statements_total, error,
        applied_at, duration_ms, applied_by, plan_id FROM flotilla_schema_history ORDER BY version",
    upsert: concat!(
        "INSERT INTO flotilla_schema_history (version, name, checksum, state, direction, statements_done,
        statements_total, error, applied_at, duration_ms, applied_by, plan_id)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ",
        on_conflict_update!()
    ),
    set_progress: "UPDATE flotilla_schema_history SET statements_done = ? WHERE version = ?",
    delete: "DELETE FROM flotilla_schema_history WHERE version = ?",
    timestamp_format: "%Y-%m-%dT%H:%M:%S%.6fZ",
    save_cursor: CURSOR_COLUMNS_ON_CONFLICT,
    select_cursor:
        "SELECT checksum, last_key, batches, rows_done FROM flotilla_backfill WHERE version = ? AND direction = ?",
    clear_cursor: "DELETE FROM flotilla_backfill WHERE version = ? AND direction = ?",
    bigint: "INTEGER",
};

/// SQLite has no server to release a session lock, so its lock is a lease row that expires.
const SQLITE_LEASE_TABLE: &str = "CREATE TABLE IF NOT EXISTS flotilla_lock (
    id INTEGER PRIMARY KEY CHECK (id = 1), owner TEXT NOT NULL, expires_at_ms INTEGER NOT NULL)";

pub struct SqlDriver {
    engine: Engine,
    dialect: &'static Dialect,
    conn: AnyConnection,
    lease: Option<Lease>,
    ttl: Duration,
    /// Flotilla's tables are known to exist on this connection's database: no need to look or create again.
    tables_known: bool,
}

/// A held SQLite lease.
struct Lease {
    owner: String,
    renewed: Instant,
}

impl SqlDriver {
    pub async fn connect(engine: Engine, url: &str, options: &ConnectOptions) -> Result<Self, DriverError> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let dialect = match engine {
            Engine::Postgres => &POSTGRES,
            Engine::Mysql => &MYSQL,
            Engine::Sqlite => &SQLITE,
            Engine::Mongodb => unreachable!("MongoDB has its own driver"),
        };
        let url = match engine {
            Engine::Sqlite => sqlite_url(url, options.create)?,
            _ => url.to_string(),
        };
        let conn = tokio::time::timeout(options.connect_timeout, AnyConnection::connect(&url))
            .await
            .map_err(|_| DriverError::Connect(format!("no answer within {:?}", options.connect_timeout)))?
            .map_err(|e| DriverError::Connect(e.to_string()))?;
        let mut driver = SqlDriver { engine, dialect, conn, lease: None, ttl: options.lock_ttl, tables_known: false };
        match engine {
            // Wait for a busy database instead of failing at once.
            Engine::Sqlite => driver.run("PRAGMA busy_timeout = 30000").await.map(drop)?,
            // PostgreSQL 14+ checks for a vanished client during long statements, so a killed runner's
            // transaction and advisory lock go within a second, not when its statement ends. Older servers lack it.
            Engine::Postgres => {
                let _ = driver.run("SET client_connection_check_interval = 1000").await;
            }
            _ => {}
        }
        Ok(driver)
    }

    async fn run(&mut self, sql: &str) -> Result<u64, DriverError> {
        run_on(&mut self.conn, sql).await
    }

    async fn write_record_on(
        conn: &mut AnyConnection,
        dialect: &Dialect,
        record: &AppliedMigration,
    ) -> Result<(), DriverError> {
        let (direction, done, total, error) = record.dirty_columns();
        sqlx::query(dialect.upsert)
            .bind(record.version)
            .bind(record.name.as_str())
            .bind(record.checksum.0.as_str())
            .bind(record.state.label())
            .bind(direction)
            .bind(done)
            .bind(total)
            .bind(error)
            .bind(record.applied_at.format(dialect.timestamp_format).to_string())
            .bind(record.duration_ms)
            .bind(record.applied_by.as_str())
            .bind(record.plan_id.as_deref())
            .execute(conn)
            .await
            .map(drop)
            .map_err(db_error)
    }

    async fn apply_change(
        conn: &mut AnyConnection,
        dialect: &Dialect,
        change: &HistoryChange,
    ) -> Result<(), DriverError> {
        match change {
            HistoryChange::Write(record) => Self::write_record_on(conn, dialect, record).await,
            HistoryChange::Delete(version) => {
                sqlx::query(dialect.delete).bind(*version).execute(conn).await.map(drop).map_err(db_error)
            }
            HistoryChange::SaveCursor(c) => sqlx::query(dialect.save_cursor)
                .bind(c.version)
                .bind(c.direction.as_str())
                .bind(c.checksum.clone())
                .bind(c.last_key)
                .bind(c.batches)
                .bind(c.rows)
                .execute(conn)
                .await
                .map(drop)
                .map_err(db_error),
            HistoryChange::ClearCursor { version, direction } => sqlx::query(dialect.clear_cursor)
                .bind(*version)
                .bind(direction.as_str())
                .execute(conn)
                .await
                .map(drop)
                .map_err(db_error),
            HistoryChange::Many(changes) => {
                for change in changes {
                    Box::pin(Self::apply_change(conn, dialect, change)).await?;
                }
                Ok(())
            }
        }
    }

    /// Opens the transaction (or leaves BEGIN to go with the first statement), checks the lease if there is one,
    /// runs the statements and writes the history change.
    async fn atomic_body(
        &mut self,
        statements: &[Statement],
        begin_with_first: bool,
        change: &(dyn Fn() -> HistoryChange + Send + Sync),
        on_done: &mut (dyn FnMut(usize, u64) + Send),
    ) -> Result<(), AtomicError> {
        let at_commit = |error| AtomicError { statement: None, error };
        if let Some(lease) = &self.lease {
            // The fence. BEGIN IMMEDIATE takes SQLite's write lock first, so from here on nobody can take the lease
            // until we commit; then the lease must still name us (it may have expired, but nobody took it).
            // Renewing it is `check_lock`'s job, so the fence is a read and costs no page write per migration.
            let owner = lease.owner.clone();
            run_on(&mut self.conn, "BEGIN IMMEDIATE").await.map_err(at_commit)?;
            let holder: Option<String> = sqlx::query_scalar("SELECT owner FROM flotilla_lock WHERE id = 1")
                .fetch_optional(&mut self.conn)
                .await
                .map_err(|e| at_commit(db_error(e)))?;
            if holder.as_deref() != Some(owner.as_str()) {
                return Err(at_commit(DriverError::LockLost));
            }
        } else if !begin_with_first {
            run_on(&mut self.conn, "BEGIN").await.map_err(at_commit)?;
        }
        for (i, statement) in statements.iter().enumerate() {
            let text = sql_text(statement);
            let result = if i == 0 && begin_with_first {
                run_on(&mut self.conn, &format!("BEGIN;\n{text}")).await
            } else {
                run_on(&mut self.conn, text).await
            };
            let rows = result.map_err(|error| AtomicError { statement: Some(i), error })?;
            on_done(i, rows);
        }
        Self::apply_change(&mut self.conn, self.dialect, &change()).await.map_err(at_commit)
    }

    /// Extends the SQLite lease; fails with `LockLost` when another runner holds it now.
    async fn renew_lease(&mut self) -> Result<(), DriverError> {
        let Some(lease) = self.lease.take() else { return Err(DriverError::LockLost) };
        let renewed = sqlx::query("UPDATE flotilla_lock SET expires_at_ms = ? WHERE id = 1 AND owner = ?")
            .bind(Utc::now().timestamp_millis() + ttl_ms(self.ttl))
            .bind(lease.owner.clone())
            .execute(&mut self.conn)
            .await
            .map_err(db_error)?
            .rows_affected();
        if renewed == 1 {
            self.lease = Some(Lease { owner: lease.owner, renewed: Instant::now() });
            Ok(())
        } else {
            Err(DriverError::LockLost)
        }
    }

    async fn sqlite_lease(&mut self, owner: &str, timeout: Duration) -> Result<(), DriverError> {
        self.run(SQLITE_LEASE_TABLE).await?;
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
            .bind(now + ttl_ms(self.ttl))
            .bind(now)
            .execute(&mut self.conn)
            .await
            .map_err(db_error)?
            .rows_affected();
            if taken == 1 {
                self.lease = Some(Lease { owner: owner.to_string(), renewed: Instant::now() });
                return Ok(());
            }
            if started.elapsed() >= timeout {
                let holder: Option<String> = sqlx::query_scalar("SELECT owner FROM flotilla_lock WHERE id = 1")
                    .fetch_optional(&mut self.conn)
                    .await
                    .map_err(db_error)?;
                return Err(DriverError::LockTimeout { waited: timeout, holder });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

/// Runs one statement as written (PostgreSQL's simple query protocol, MySQL's text protocol: no preparing).
async fn run_on(conn: &mut AnyConnection, sql: &str) -> Result<u64, DriverError> {
    sqlx::Executor::execute(conn, sql).await.map(|r| r.rows_affected()).map_err(db_error)
}

/// Runs a query without parameters as written and returns its rows: one round trip on a fresh connection, where a
/// prepared statement would first need one of its own to be prepared.
async fn fetch_unprepared(conn: &mut AnyConnection, sql: &str) -> Result<Vec<AnyRow>, DriverError> {
    sqlx::Executor::fetch_all(conn, sql).await.map_err(db_error)
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2)
}

/// Builds the sqlx URL for a SQLite database. Without `create`, a missing file is read as an empty database,
/// so `status` and dry runs never create files.
fn sqlite_url(url: &str, create: bool) -> Result<String, DriverError> {
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

fn db_error(e: sqlx::Error) -> DriverError {
    match e {
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

fn sql_text(statement: &Statement) -> &str {
    match statement {
        Statement::Sql { text, .. } => text,
        // The executor checks kinds before running anything; a command here is a bug, and the database says so.
        Statement::Command { name, .. } => name,
    }
}

fn parse_row(row: &AnyRow) -> Result<AppliedMigration, DriverError> {
    let bad = |e: sqlx::Error| DriverError::BadHistory(e.to_string());
    let version: i64 = row.try_get(0).map_err(bad)?;
    let state_label: String = row.try_get(3).map_err(bad)?;
    let direction: Option<String> = row.try_get(4).map_err(bad)?;
    let error: Option<String> = row.try_get(7).map_err(bad)?;
    let state = AppliedMigration::state_from_columns(
        &state_label,
        direction.as_deref(),
        row.try_get(5).map_err(bad)?,
        row.try_get(6).map_err(bad)?,
        error,
    )
    .ok_or_else(|| DriverError::BadHistory(format!("version {version} has unknown state `{state_label}`")))?;
    let applied_at: String = row.try_get(8).map_err(bad)?;
    let applied_at = DateTime::parse_from_rfc3339(&applied_at)
        .map_err(|e| DriverError::BadHistory(format!("version {version}: applied_at `{applied_at}`: {e}")))?
        .with_timezone(&Utc);
    Ok(AppliedMigration {
        version,
        name: row.try_get(1).map_err(bad)?,
        checksum: Checksum(row.try_get(2).map_err(bad)?),
        state,
        applied_at,
        duration_ms: row.try_get(9).map_err(bad)?,
        applied_by: row.try_get(10).map_err(bad)?,
        plan_id: row.try_get(11).map_err(bad)?,
    })
}

#[async_trait]
impl Driver for SqlDriver {
    fn engine(&self) -> Engine {
        self.engine
    }

    fn can_run_atomically(&self, _statements: &[Statement]) -> bool {
        // MySQL commits DDL implicitly, so it always runs statement by statement with progress recorded.
        self.engine != Engine::Mysql
    }

    async fn lock(&mut self, owner: &str, timeout: Duration) -> Result<(), DriverError> {
        match self.engine {
            Engine::Postgres => {
                // The common case, a free lock, in one round trip.
                let rows =
                    fetch_unprepared(&mut self.conn, &format!("SELECT pg_try_advisory_lock({PG_LOCK_KEY})")).await?;
                if rows.first().and_then(|r| r.try_get::<bool, _>(0).ok()) == Some(true) {
                    return Ok(());
                }
                // Otherwise wait, bounded by lock_timeout; a lock held by a dead session is released by the server.
                self.run(&format!("SET lock_timeout = {}", timeout.as_millis().max(1))).await?;
                let got = sqlx::query("SELECT pg_advisory_lock($1)").bind(PG_LOCK_KEY).execute(&mut self.conn).await;
                self.run("RESET lock_timeout").await?;
                match got {
                    Ok(_) => Ok(()),
                    Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("55P03") => {
                        let holder: Option<String> = sqlx::query_scalar(
                            "SELECT 'pid ' || pid::text FROM pg_locks WHERE locktype = 'advisory' AND granted
                             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                             AND ((classid::bigint << 32) | objid::bigint) = $1 LIMIT 1",
                        )
                        .bind(PG_LOCK_KEY)
                        .fetch_optional(&mut self.conn)
                        .await
                        .ok()
                        .flatten();
                        Err(DriverError::LockTimeout { waited: timeout, holder })
                    }
                    Err(e) => Err(db_error(e)),
                }
            }
            Engine::Mysql => {
                let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(CONCAT('flotilla:', DATABASE()), ?)")
                    .bind(timeout.as_secs_f64())
                    .fetch_one(&mut self.conn)
                    .await
                    .map_err(db_error)?;
                match got {
                    Some(1) => Ok(()),
                    _ => {
                        let holder: Option<i64> =
                            sqlx::query_scalar("SELECT IS_USED_LOCK(CONCAT('flotilla:', DATABASE()))")
                                .fetch_one(&mut self.conn)
                                .await
                                .ok()
                                .flatten();
                        Err(DriverError::LockTimeout {
                            waited: timeout,
                            holder: holder.map(|id| format!("connection {id}")),
                        })
                    }
                }
            }
            Engine::Sqlite => self.sqlite_lease(owner, timeout).await,
            Engine::Mongodb => unreachable!(),
        }
    }

    async fn check_lock(&mut self) -> Result<(), DriverError> {
        // Session locks (PostgreSQL, MySQL) live as long as the connection; only the SQLite lease needs renewing.
        match &self.lease {
            Some(lease) if lease.renewed.elapsed() >= self.ttl / 3 => self.renew_lease().await,
            _ => Ok(()),
        }
    }

    async fn unlock(&mut self) -> Result<(), DriverError> {
        match self.engine {
            Engine::Postgres => {
                self.run(&format!("SELECT pg_advisory_unlock({PG_LOCK_KEY})")).await?;
            }
            Engine::Mysql => {
                self.run("DO RELEASE_LOCK(CONCAT('flotilla:', DATABASE()))").await?;
            }
            Engine::Sqlite => {
                if let Some(lease) = self.lease.take() {
                    sqlx::query("DELETE FROM flotilla_lock WHERE id = 1 AND owner = ?")
                        .bind(lease.owner)
                        .execute(&mut self.conn)
                        .await
                        .map_err(db_error)?;
                }
            }
            Engine::Mongodb => unreachable!(),
        }
        Ok(())
    }

    async fn fence_token(&mut self, token: u64) -> Result<bool, DriverError> {
        let token =
            i64::try_from(token).map_err(|_| DriverError::Database(format!("fencing token {token} overflows")))?;
        const CREATE: &str = "CREATE TABLE IF NOT EXISTS flotilla_fence (id INT PRIMARY KEY, token BIGINT NOT NULL)";
        match self.engine {
            // The upsert raises the fence only from at or below `token` (no row touched otherwise). PostgreSQL
            // takes both statements in one round trip; SQLite, in process, counts only the last one's rows.
            Engine::Postgres | Engine::Sqlite => {
                let upsert = format!(
                    "INSERT INTO flotilla_fence (id, token) VALUES (1, {token})
                     ON CONFLICT (id) DO UPDATE SET token = excluded.token WHERE flotilla_fence.token <= excluded.token"
                );
                let raised = if self.engine == Engine::Postgres {
                    self.run(&format!("{CREATE}; {upsert}")).await?
                } else {
                    self.run(CREATE).await?;
                    self.run(&upsert).await?
                };
                Ok(raised == 1)
            }
            // MySQL reports an unchanged row as 0 affected: keep the higher token, then read which it is.
            Engine::Mysql => {
                self.run(CREATE).await?;
                self.run(&format!(
                    "INSERT INTO flotilla_fence (id, token) VALUES (1, {token})
                     ON DUPLICATE KEY UPDATE token = GREATEST(token, VALUES(token))"
                ))
                .await?;
                let seen: i64 = sqlx::query_scalar("SELECT token FROM flotilla_fence WHERE id = 1")
                    .fetch_one(&mut self.conn)
                    .await
                    .map_err(db_error)?;
                Ok(seen == token)
            }
            Engine::Mongodb => unreachable!("MongoDB has its own driver"),
        }
    }

    async fn ensure_history(&mut self) -> Result<(), DriverError> {
        if !self.tables_known {
            self.run(self.dialect.create_history).await?;
            self.run(CREATE_CURSORS).await?;
            self.tables_known = true;
        }
        Ok(())
    }

    async fn backfill_cursor(
        &mut self,
        version: i64,
        direction: Direction,
    ) -> Result<Option<BackfillCursor>, DriverError> {
        let rows = sqlx::query(self.dialect.select_cursor)
            .bind(version)
            .bind(direction.as_str())
            .fetch_all(&mut self.conn)
            .await
            .map_err(db_error)?;
        let Some(row) = rows.first() else { return Ok(None) };
        let bad = |e: sqlx::Error| DriverError::BadHistory(format!("flotilla_backfill: {e}"));
        Ok(Some(BackfillCursor {
            version,
            direction,
            checksum: row.try_get(0).map_err(bad)?,
            last_key: row.try_get(1).map_err(bad)?,
            batches: row.try_get(2).map_err(bad)?,
            rows: row.try_get(3).map_err(bad)?,
        }))
    }

    async fn next_batch_end(&mut self, backfill: &Backfill, after: i64) -> Result<Option<i64>, DriverError> {
        // Names are checked to be plain identifiers when the directive is read; the bound is an integer.
        let (key, table, batch, bigint) = (&backfill.key, &backfill.table, backfill.batch, self.dialect.bigint);
        let sql = format!(
            "SELECT CAST(max(k) AS {bigint}) FROM (SELECT {key} AS k FROM {table} WHERE {key} > {after} ORDER BY {key} LIMIT {batch}) batch"
        );
        sqlx::query_scalar::<_, Option<i64>>(&sql).fetch_one(&mut self.conn).await.map_err(db_error)
    }

    async fn history(&mut self) -> Result<Vec<AppliedMigration>, DriverError> {
        if !self.tables_known {
            let rows = fetch_unprepared(&mut self.conn, self.dialect.tables_exist).await?;
            let count = |i| rows.first().map(|r| r.try_get::<i64, _>(i)).transpose().map_err(db_error);
            let (history, cursors) = (count(0)?.unwrap_or(0), count(1)?.unwrap_or(0));
            if history == 0 {
                return Ok(Vec::new());
            }
            self.tables_known = cursors > 0;
        }
        let rows = fetch_unprepared(&mut self.conn, self.dialect.select_history).await?;
        rows.iter().map(parse_row).collect()
    }

    async fn write_record(&mut self, record: &AppliedMigration) -> Result<(), DriverError> {
        Self::write_record_on(&mut self.conn, self.dialect, record).await
    }

    async fn set_progress(&mut self, version: i64, done: u32) -> Result<(), DriverError> {
        sqlx::query(self.dialect.set_progress)
            .bind(i64::from(done))
            .bind(version)
            .execute(&mut self.conn)
            .await
            .map(drop)
            .map_err(db_error)
    }

    async fn delete_record(&mut self, version: i64) -> Result<(), DriverError> {
        sqlx::query(self.dialect.delete).bind(version).execute(&mut self.conn).await.map(drop).map_err(db_error)
    }

    async fn execute(&mut self, statement: &Statement) -> Result<u64, DriverError> {
        self.run(sql_text(statement)).await
    }

    async fn rollback_open_transaction(&mut self) {
        // Harmless when no transaction is open (PostgreSQL and MySQL warn; SQLite errors, which is ignored).
        let _ = self.run("ROLLBACK").await;
    }

    async fn execute_atomic(
        &mut self,
        statements: &[Statement],
        change: &(dyn Fn() -> HistoryChange + Send + Sync),
        on_done: &mut (dyn FnMut(usize, u64) + Send),
    ) -> Result<(), AtomicError> {
        let at_commit = |error| AtomicError { statement: None, error };
        // PostgreSQL's simple query protocol takes BEGIN and the first statement together: one round trip fewer
        // per migration. (A SQLite transaction starts with the lease fence instead.)
        let begin_with_first = self.engine == Engine::Postgres && !statements.is_empty();
        let result = self.atomic_body(statements, begin_with_first, change, on_done).await;
        match result {
            Ok(()) => match run_on(&mut self.conn, "COMMIT").await {
                Ok(_) => Ok(()),
                Err(error) => {
                    let _ = run_on(&mut self.conn, "ROLLBACK").await;
                    Err(at_commit(error))
                }
            },
            Err(e) => {
                let _ = run_on(&mut self.conn, "ROLLBACK").await;
                Err(e)
            }
        }
    }

    async fn schema(&mut self) -> Result<flotilla_core::schema::Schema, DriverError> {
        match self.engine {
            Engine::Postgres => crate::schema::postgres::dump(&mut self.conn).await,
            Engine::Mysql => crate::schema::mysql::dump(&mut self.conn).await,
            _ => crate::schema::sqlite::dump(&mut self.conn).await,
        }
    }

    async fn close(self: Box<Self>) {
        let _ = self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls() {
        assert_eq!(sqlite_url("sqlite:///tmp/a.db", true).unwrap(), "sqlite:///tmp/a.db?mode=rwc");
        assert_eq!(sqlite_url("sqlite://rel.db?cache=shared", true).unwrap(), "sqlite://rel.db?mode=rwc&cache=shared");
        assert_eq!(sqlite_url("sqlite:///definitely/not/here.db", false).unwrap(), "sqlite::memory:");
        assert!(sqlite_url("sqlite://", true).is_err());
    }
}
