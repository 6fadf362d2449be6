//! The boundary to each database engine. A driver knows how to talk to its engine (connect, lock, read and write the
//! history table, run a statement, run statements atomically); it knows nothing of what to run or when:
//! that is the [`executor`](crate::executor)'s job.

#[macro_use]
mod shared;
mod mongo;
mod mysql;
mod postgres;
mod sql;
mod sqlite;

use std::time::Duration;

use async_trait::async_trait;
use flotilla_core::{AppliedMigration, Backfill, Direction, Engine, Statement, Version};

pub use mongo::MongoDriver;
pub use sql::SqlDriver;

/// A failure talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("bad database URL: {0}")]
    BadUrl(String),
    #[error("timed out after {waited:?} waiting for the migration lock{}", holder.as_ref().map(|h| format!(" (held by {h})")).unwrap_or_default())]
    LockTimeout { waited: Duration, holder: Option<String> },
    #[error("the migration lock was lost (it expired and another runner may have taken it)")]
    LockLost,
    /// A statement gave up waiting for a lock another session holds (the lock timeout): nothing of it ran, and in
    /// a transaction the transaction is rolled back.
    #[error("gave up waiting for a lock another session holds: {0}")]
    LockNotAvailable(String),
    /// The database refused a statement or a history write.
    #[error("{0}")]
    Database(String),
    #[error("the history table holds a record this version of Flotilla cannot read: {0}")]
    BadHistory(String),
}

/// What to do to the history table together with a migration's statements.
#[derive(Debug, Clone)]
pub enum HistoryChange {
    Write(AppliedMigration),
    Delete(Version),
    /// Records how far a backfill has come (`flotilla_backfill`).
    SaveCursor(BackfillCursor),
    /// Forgets a finished backfill's cursor.
    ClearCursor {
        version: Version,
        direction: Direction,
    },
    /// Records that a repeatable migration ran with this checksum (`flotilla_repeatable`).
    Repeatable {
        name: String,
        checksum: String,
        applied_by: String,
    },
    /// Several changes in the same transaction.
    Many(Vec<HistoryChange>),
}

/// How far a backfill has come: every key up to `last_key` is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillCursor {
    pub version: Version,
    pub direction: Direction,
    /// The migration's checksum when the backfill started: a resumed run must be the same file.
    pub checksum: String,
    pub last_key: i64,
    pub batches: i64,
    pub rows: i64,
}

/// A failure inside an atomic run; nothing of it committed.
#[derive(Debug)]
pub struct AtomicError {
    /// 0-based index of the failing statement, or `None` when the history write or the commit failed.
    pub statement: Option<usize>,
    pub error: DriverError,
}

/// One engine. Implementations hold one connection (or client) to one target database.
#[async_trait]
pub trait Driver: Send {
    fn engine(&self) -> Engine;

    /// Whether `statements` can run in one transaction together with the history write.
    fn can_run_atomically(&self, statements: &[Statement]) -> bool;

    /// Takes the engine's own per-database lock, waiting up to `timeout`.
    /// A lock left by a process that died is released by the server (session locks) or expires (leases).
    async fn lock(&mut self, owner: &str, timeout: Duration) -> Result<(), DriverError>;

    /// Confirms the lock is still held (and extends a lease when due). Called before each statement.
    async fn check_lock(&mut self) -> Result<(), DriverError>;

    async fn unlock(&mut self) -> Result<(), DriverError>;
    /// Under the lock: records `token` as the highest fencing token this database has seen and returns `true`, or
    /// returns `false` and changes nothing if it has seen a higher one (the caller's assignment comes from a
    /// coordinator that has since lost the target's lock).
    async fn fence_token(&mut self, token: u64) -> Result<bool, DriverError>;

    /// Creates the history table (collection) if missing, or upgrades one from an earlier release in place.
    async fn ensure_history(&mut self) -> Result<(), DriverError>;

    /// All history records by ascending version; empty when the table does not exist yet.
    async fn history(&mut self) -> Result<Vec<AppliedMigration>, DriverError>;

    async fn write_record(&mut self, record: &AppliedMigration) -> Result<(), DriverError>;

    /// Writes the dirty record a stepwise run starts with. Only the statements after it make it matter, and the
    /// servers' logs are ordered: the first statement that commits durably makes this write durable too. So a driver
    /// may skip waiting for it on its own (MongoDB does: each such wait is a journal flush); by default it is
    /// [`Driver::write_record`].
    async fn mark_started(&mut self, record: &AppliedMigration) -> Result<(), DriverError> {
        self.write_record(record).await
    }

    /// Records that `done` statements of a dirty migration have committed. Called before the next statement runs,
    /// never after the last: like [`Driver::mark_started`], it need not be durable before that statement is.
    async fn set_progress(&mut self, version: Version, done: u32) -> Result<(), DriverError>;

    async fn delete_record(&mut self, version: Version) -> Result<(), DriverError>;

    /// Runs one statement on its own (autocommit, or inside a transaction the script opened). Returns rows affected.
    async fn execute(&mut self, statement: &Statement) -> Result<u64, DriverError>;

    /// Rolls back a transaction a script left open after one of its statements failed.
    async fn rollback_open_transaction(&mut self);

    /// Runs one row-changing statement of a migration that otherwise runs statement by statement, and then the
    /// history change, in one transaction: the row change cannot commit without the record that says it ran.
    /// Returns rows affected. The lock is checked before (`check_lock`), not held inside the transaction: a runner
    /// killed mid-statement must not leave the lock held by a transaction the server keeps open for a while.
    async fn execute_recorded(&mut self, statement: &Statement, change: HistoryChange) -> Result<u64, AtomicError> {
        let mut rows = 0;
        let change = move || change.clone();
        let mut count = |_, n| rows = n;
        self.execute_atomic(std::slice::from_ref(statement), &change, &mut count).await?;
        Ok(rows)
    }

    /// Runs `statements`, then the history change `change()` returns, in one transaction. `on_done(i, rows)` is
    /// called after statement `i`; `change` is called after the last one, so the record can carry the real duration.
    async fn execute_atomic(
        &mut self,
        statements: &[Statement],
        change: &(dyn Fn() -> HistoryChange + Send + Sync),
        on_done: &mut (dyn FnMut(usize, u64) + Send),
    ) -> Result<(), AtomicError>;

    /// Each repeatable migration's name and the checksum it last ran with; empty when none ever ran.
    async fn repeatables(&mut self) -> Result<std::collections::BTreeMap<String, String>, DriverError>;

    /// Creates the table of repeatable migrations if missing (only a set that has some needs it).
    async fn ensure_repeatables(&mut self) -> Result<(), DriverError>;

    /// The saved cursor of an interrupted backfill, if any.
    async fn backfill_cursor(
        &mut self,
        version: Version,
        direction: Direction,
    ) -> Result<Option<BackfillCursor>, DriverError>;

    /// The largest key of the next batch: the `batch`-th key of `table` after `after`, or the last one; `None` when
    /// no key is left.
    async fn next_batch_end(&mut self, backfill: &Backfill, after: i64) -> Result<Option<i64>, DriverError>;

    /// The database's schema, without Flotilla's own tables: what `schema dump` prints and `validate` compares.
    async fn schema(&mut self) -> Result<flotilla_core::schema::Schema, DriverError>;

    /// Bounds how long the statements that follow may wait for a lock and run (`None`: the server's default). Set
    /// before each migration; engines without such settings ignore it.
    async fn set_timeouts(&mut self, _lock: Option<Duration>, _statement: Option<Duration>) -> Result<(), DriverError> {
        Ok(())
    }

    /// Runs a read-only query (a health check) and reads one number: `column` of its first row, or its first column;
    /// `None` when it returns no row, or no number (NULL).
    async fn query_number(&mut self, _sql: &str, _column: Option<&str>) -> Result<Option<f64>, DriverError> {
        Err(DriverError::Database("health-check queries run on SQL engines only".into()))
    }

    /// Makes a connection on which migrations ran fit to be used again as if new: the session's settings, roles,
    /// temporary objects, cursors and locks back to their defaults, its buffers back to a new one's size (a kept
    /// connection is kept once per target: tests/tests/scale.rs). `false` if this engine cannot, and the
    /// connection must be closed instead (a migration's `SET` must never leak into the next one's session).
    async fn reset_session(&mut self) -> Result<bool, DriverError> {
        Ok(false)
    }

    /// Closes the connection cleanly.
    async fn close(self: Box<Self>);
}

/// How to open a driver.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Create the database file when missing (SQLite). Read-only commands pass `false` and see a missing file as empty.
    pub create: bool,
    /// Lease length for engines whose lock is a lease (SQLite, MongoDB).
    pub lock_ttl: Duration,
    /// How long to try to reach the server.
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions { create: true, lock_ttl: Duration::from_secs(30), connect_timeout: Duration::from_secs(10) }
    }
}

/// Opens the driver for `url`'s engine.
pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Box<dyn Driver>, DriverError> {
    let engine = Engine::from_url(url).ok_or_else(|| {
        DriverError::BadUrl(format!(
            "`{}` does not start with postgres://, mysql://, sqlite:// or mongodb://",
            redact(url)
        ))
    })?;
    Ok(match engine {
        Engine::Mongodb => Box::new(MongoDriver::connect(url, options).await?),
        _ => Box::new(SqlDriver::connect(engine, url, options).await?),
    })
}

/// `url` with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// A unique name for this process as a lock owner and `applied_by`: `host:pid`.
pub fn default_owner() -> String {
    format!("{}:{}", gethostname::gethostname().to_string_lossy(), std::process::id())
}
