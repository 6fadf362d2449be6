//! PostgreSQL, MySQL and SQLite through sqlx's `AnyConnection`: one driver for the three, with what differs per
//! engine (DDL and placeholders in its [`Dialect`], the lock, the fence, the schema dump) in the engine's own
//! module: [`postgres`](super::postgres), [`mysql`](super::mysql), [`sqlite`](super::sqlite).

use std::sync::Once;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use flotilla_core::{AppliedMigration, Backfill, Checksum, Direction, Engine, Statement, Version};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Connection, Row};

use super::shared::{db_error, fetch_unprepared, run_on, Dialect};
use super::{mysql, postgres, sqlite};
use super::{AtomicError, BackfillCursor, ConnectOptions, Driver, DriverError, HistoryChange};

/// The history table as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Missing,
    Current,
    /// From before 38-digit versions: upgraded in place before the first write.
    Int64Versions,
}

pub struct SqlDriver {
    engine: Engine,
    dialect: &'static Dialect,
    conn: AnyConnection,
    /// SQLite's lock, while held.
    lease: Option<sqlite::Lease>,
    ttl: Duration,
    /// The history table is known to exist in today's layout on this connection's database: no need to look, create
    /// or upgrade again.
    history_ready: bool,
    /// The backfill cursor table is known to exist.
    cursors_ready: bool,
}

impl SqlDriver {
    pub async fn connect(engine: Engine, url: &str, options: &ConnectOptions) -> Result<Self, DriverError> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let dialect = match engine {
            Engine::Postgres => &postgres::DIALECT,
            Engine::Mysql => &mysql::DIALECT,
            Engine::Sqlite => &sqlite::DIALECT,
            Engine::Mongodb => unreachable!("MongoDB has its own driver"),
        };
        let url = match engine {
            Engine::Sqlite => sqlite::url(url, options.create)?,
            _ => url.to_string(),
        };
        let conn = tokio::time::timeout(options.connect_timeout, AnyConnection::connect(&url))
            .await
            .map_err(|_| DriverError::Connect(format!("no answer within {:?}", options.connect_timeout)))?
            .map_err(|e| DriverError::Connect(e.to_string()))?;
        let mut driver = SqlDriver {
            engine,
            dialect,
            conn,
            lease: None,
            ttl: options.lock_ttl,
            history_ready: false,
            cursors_ready: false,
        };
        match engine {
            Engine::Sqlite => sqlite::on_connect(&mut driver.conn).await?,
            Engine::Postgres => postgres::on_connect(&mut driver.conn).await,
            _ => {}
        }
        Ok(driver)
    }

    async fn run(&mut self, sql: &str) -> Result<u64, DriverError> {
        run_on(&mut self.conn, sql).await
    }

    /// Whether the history table exists, and in which layout; remembered once it exists in today's.
    async fn inspect(&mut self) -> Result<Layout, DriverError> {
        let rows = fetch_unprepared(&mut self.conn, self.dialect.inspect).await?;
        let column = |i| rows.first().map(|r| r.try_get::<i64, _>(i)).transpose().map_err(db_error);
        let layout = match (column(0)?.unwrap_or(0), column(1)?.unwrap_or(0)) {
            (0, _) => Layout::Missing,
            (_, 0) => Layout::Current,
            _ => Layout::Int64Versions,
        };
        self.history_ready = layout == Layout::Current;
        Ok(layout)
    }

    /// Turns a history table whose versions are 64-bit integers into one that holds 38 digits, keeping every row,
    /// in one transaction where DDL is transactional (PostgreSQL, SQLite).
    async fn upgrade_history(&mut self) -> Result<(), DriverError> {
        let atomic = self.engine != Engine::Mysql;
        if atomic {
            self.run("BEGIN").await?;
        }
        for statement in self.dialect.upgrade_history {
            if let Err(e) = self.run(statement).await {
                if atomic {
                    let _ = self.run("ROLLBACK").await;
                }
                return Err(DriverError::Database(format!("upgrading the history table to 38-digit versions: {e}")));
            }
        }
        if atomic {
            self.run("COMMIT").await?;
        }
        tracing::info!(engine = %self.engine, "upgraded the history table in place to 38-digit versions");
        Ok(())
    }

    async fn write_record_on(
        conn: &mut AnyConnection,
        dialect: &Dialect,
        record: &AppliedMigration,
    ) -> Result<(), DriverError> {
        let (direction, done, total, error) = record.dirty_columns();
        sqlx::query(dialect.upsert)
            .bind(record.version.to_string())
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
                sqlx::query(dialect.delete).bind(version.to_string()).execute(conn).await.map(drop).map_err(db_error)
            }
            HistoryChange::SaveCursor(c) => sqlx::query(dialect.save_cursor)
                .bind(c.version.to_string())
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
                .bind(version.to_string())
                .bind(direction.as_str())
                .execute(conn)
                .await
                .map(drop)
                .map_err(db_error),
            HistoryChange::Repeatable { name, checksum, applied_by } => sqlx::query(dialect.upsert_repeatable)
                .bind(name.clone())
                .bind(checksum.clone())
                .bind(applied_by.clone())
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
            sqlite::begin_under(&mut self.conn, lease).await.map_err(at_commit)?;
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
    let version: String = row.try_get(0).map_err(bad)?;
    let version: Version =
        version.parse().map_err(|e| DriverError::BadHistory(format!("a version of `{version}`: {e}")))?;
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

    fn can_run_atomically(&self, statements: &[Statement]) -> bool {
        // MySQL commits DDL (and any other statement but a row change) implicitly: a script of row changes alone
        // is all or nothing in one transaction, anything else runs statement by statement with progress recorded.
        self.engine != Engine::Mysql || statements.iter().all(Statement::is_dml)
    }

    async fn lock(&mut self, owner: &str, timeout: Duration) -> Result<(), DriverError> {
        match self.engine {
            Engine::Postgres => postgres::lock(&mut self.conn, timeout).await,
            Engine::Mysql => mysql::lock(&mut self.conn, timeout).await,
            Engine::Sqlite => {
                self.lease = Some(sqlite::lease(&mut self.conn, owner, self.ttl, timeout).await?);
                Ok(())
            }
            Engine::Mongodb => unreachable!("MongoDB has its own driver"),
        }
    }

    async fn check_lock(&mut self) -> Result<(), DriverError> {
        // Session locks (PostgreSQL, MySQL) live as long as the connection; only the SQLite lease needs renewing.
        match self.lease.take() {
            Some(lease) if lease.due(self.ttl) => {
                self.lease = Some(sqlite::renew(&mut self.conn, lease, self.ttl).await?);
                Ok(())
            }
            kept => {
                self.lease = kept;
                Ok(())
            }
        }
    }

    async fn unlock(&mut self) -> Result<(), DriverError> {
        match self.engine {
            Engine::Postgres => postgres::unlock(&mut self.conn).await,
            Engine::Mysql => mysql::unlock(&mut self.conn).await,
            Engine::Sqlite => match self.lease.take() {
                Some(lease) => sqlite::release(&mut self.conn, lease).await,
                None => Ok(()),
            },
            Engine::Mongodb => unreachable!("MongoDB has its own driver"),
        }
    }

    async fn fence_token(&mut self, token: u64) -> Result<bool, DriverError> {
        let token =
            i64::try_from(token).map_err(|_| DriverError::Database(format!("fencing token {token} overflows")))?;
        match self.engine {
            Engine::Postgres => postgres::fence(&mut self.conn, token).await,
            Engine::Mysql => mysql::fence(&mut self.conn, token).await,
            Engine::Sqlite => sqlite::fence(&mut self.conn, token).await,
            Engine::Mongodb => unreachable!("MongoDB has its own driver"),
        }
    }

    async fn ensure_history(&mut self) -> Result<(), DriverError> {
        if self.history_ready {
            return Ok(());
        }
        match self.inspect().await? {
            Layout::Missing => self.run(self.dialect.create_history).await.map(drop)?,
            Layout::Current => {}
            Layout::Int64Versions => self.upgrade_history().await?,
        }
        self.history_ready = true;
        Ok(())
    }

    async fn repeatables(&mut self) -> Result<std::collections::BTreeMap<String, String>, DriverError> {
        let exists = fetch_unprepared(&mut self.conn, self.dialect.repeatables_exist).await?;
        if exists.first().map(|r| r.try_get::<i64, _>(0)).transpose().map_err(db_error)?.unwrap_or(0) == 0 {
            return Ok(Default::default());
        }
        let rows = fetch_unprepared(&mut self.conn, self.dialect.select_repeatables).await?;
        let bad = |e: sqlx::Error| DriverError::BadHistory(format!("flotilla_repeatable: {e}"));
        rows.iter().map(|r| Ok((r.try_get(0).map_err(bad)?, r.try_get(1).map_err(bad)?))).collect()
    }

    async fn ensure_repeatables(&mut self) -> Result<(), DriverError> {
        self.run(self.dialect.create_repeatables).await.map(drop)
    }

    async fn backfill_cursor(
        &mut self,
        version: Version,
        direction: Direction,
    ) -> Result<Option<BackfillCursor>, DriverError> {
        // Only a target that runs a backfill gets the cursor table.
        if !self.cursors_ready {
            self.run(self.dialect.create_cursors).await?;
            self.cursors_ready = true;
        }
        let rows = sqlx::query(self.dialect.select_cursor)
            .bind(version.to_string())
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
        if !self.history_ready && self.inspect().await? == Layout::Missing {
            return Ok(Vec::new());
        }
        let rows = fetch_unprepared(&mut self.conn, self.dialect.select_history).await?;
        let mut history = rows.iter().map(parse_row).collect::<Result<Vec<_>, _>>()?;
        history.sort_by_key(|r| r.version);
        Ok(history)
    }

    async fn write_record(&mut self, record: &AppliedMigration) -> Result<(), DriverError> {
        Self::write_record_on(&mut self.conn, self.dialect, record).await
    }

    async fn set_progress(&mut self, version: Version, done: u32) -> Result<(), DriverError> {
        sqlx::query(self.dialect.set_progress)
            .bind(i64::from(done))
            .bind(version.to_string())
            .execute(&mut self.conn)
            .await
            .map(drop)
            .map_err(db_error)
    }

    async fn delete_record(&mut self, version: Version) -> Result<(), DriverError> {
        let delete = sqlx::query(self.dialect.delete).bind(version.to_string());
        delete.execute(&mut self.conn).await.map(drop).map_err(db_error)
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
        // PostgreSQL's simple query protocol and MySQL's text protocol (sqlx connects with multi-statement queries
        // allowed) take BEGIN and the first statement together: one round trip fewer per migration. (A SQLite
        // transaction starts with the lease fence instead.)
        let begin_with_first = matches!(self.engine, Engine::Postgres | Engine::Mysql) && !statements.is_empty();
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
            Engine::Postgres => postgres::dump(&mut self.conn).await,
            Engine::Mysql => mysql::dump(&mut self.conn).await,
            _ => sqlite::dump(&mut self.conn).await,
        }
    }

    async fn set_timeouts(&mut self, lock: Option<Duration>, statement: Option<Duration>) -> Result<(), DriverError> {
        let settings = match self.engine {
            Engine::Postgres => postgres::timeouts(lock, statement),
            Engine::Mysql => mysql::timeouts(lock, statement),
            _ => return Ok(()),
        };
        run_on(&mut self.conn, &settings).await.map(drop)
    }

    async fn query_number(&mut self, sql: &str, column: Option<&str>) -> Result<Option<f64>, DriverError> {
        let rows = fetch_unprepared(&mut self.conn, sql).await?;
        let Some(row) = rows.first() else { return Ok(None) };
        let index = match column {
            None => 0,
            Some(name) => row.columns().iter().position(|c| sqlx::Column::name(c) == name).ok_or_else(|| {
                DriverError::Database(format!("the health check's query returned no column `{name}`"))
            })?,
        };
        let number = row
            .try_get::<Option<f64>, _>(index)
            .ok()
            .flatten()
            .or_else(|| row.try_get::<Option<i64>, _>(index).ok().flatten().map(|n| n as f64))
            .or_else(|| row.try_get::<Option<String>, _>(index).ok().flatten().and_then(|s| s.trim().parse().ok()));
        Ok(number)
    }

    async fn reset_session(&mut self) -> Result<bool, DriverError> {
        match self.engine {
            Engine::Postgres => {
                postgres::reset_session(&mut self.conn).await?;
                // A statement grows the connection's buffers to its size, and they stay so: a migration with an
                // 8 MiB statement would be kept 8 MiB large on every target's warm connection.
                self.conn.shrink_buffers();
                Ok(true)
            }
            // MariaDB has no reset short of COM_RESET_CONNECTION, which sqlx does not send; a SQLite connection
            // keeps its PRAGMAs. Both are cheap to open again.
            _ => Ok(false),
        }
    }

    async fn close(self: Box<Self>) {
        let _ = self.conn.close().await;
    }
}
