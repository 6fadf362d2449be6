//! The migration algorithm, once for every engine: take the engine's lock, refuse a dirty or mismatched history,
//! then apply pending UPs in order (or DOWNs in reverse), recording each.
//!
//! Each migration runs in one of two modes:
//! - **atomic**: its statements and its history write commit in one transaction (PostgreSQL and SQLite unless the
//!   script says `no-transaction`; MongoDB scripts of only inserts, updates and deletes). It is applied or not at all.
//! - **statement by statement**: a dirty record is written first, progress after each statement, and on failure the
//!   record stays dirty with the failing statement's index and error (MySQL, whose DDL commits implicitly, and
//!   `no-transaction` scripts). `repair` resumes it or marks how it was resolved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use flotilla_core::plan::{self, PlanOptions, StatusRow};
use flotilla_core::split::is_transaction_control;
use flotilla_core::{
    AppliedMigration, Backfill, Direction, Migration, MigrationSet, PlanError, ReadError, RecordState, Request,
    ScriptKind, Statement,
};
use serde::Serialize;
use tracing::{info_span, Instrument};

use crate::driver::{BackfillCursor, Driver, DriverError, HistoryChange};

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// A migration failed. `dirty` says whether a dirty record was left (statement-by-statement mode);
    /// otherwise nothing of it committed.
    #[error("{}", failed_message(.version, .name, .direction, .statement, .total, .location, .error, .dirty))]
    Failed {
        version: i64,
        name: String,
        direction: Direction,
        /// 1-based index of the failing statement; `None` when the history write or the commit failed.
        statement: Option<usize>,
        total: usize,
        /// `file:line` of the failing statement.
        location: Option<String>,
        error: String,
        dirty: bool,
    },
    /// The request does not fit the target's state (nothing to repair, baseline over existing history, …).
    #[error("{0}")]
    Refused(String),
}

#[allow(clippy::too_many_arguments)]
fn failed_message(
    version: &i64,
    name: &str,
    direction: &Direction,
    statement: &Option<usize>,
    total: &usize,
    location: &Option<String>,
    error: &str,
    dirty: &bool,
) -> String {
    let at = match (statement, location) {
        (Some(i), Some(loc)) => format!(" at statement {i} of {total} ({loc})"),
        (Some(i), None) => format!(" at statement {i} of {total}"),
        (None, _) => " while recording it".to_string(),
    };
    let outcome = if *dirty {
        "; the migration is left dirty: fix the cause, then `flotilla repair --resume`, or fix by hand and `flotilla repair --mark-applied`"
    } else {
        "; nothing of it was committed"
    };
    format!("migration {version} ({name}) {direction} failed{at}: {error}{outcome}")
}

/// A progress event, for output now and for the agent's stream later.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub version: i64,
    pub name: String,
    pub direction: Direction,
    #[serde(flatten)]
    pub kind: ProgressKind,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ProgressKind {
    Started {
        statements: usize,
        atomic: bool,
        resume_from: usize,
    },
    Statement {
        index: usize,
        total: usize,
        rows_affected: u64,
        elapsed_ms: u64,
    },
    /// A backfill batch committed: every key up to `last_key` is done.
    Batch {
        batch: i64,
        last_key: i64,
        rows_affected: u64,
        total_rows: i64,
        elapsed_ms: u64,
    },
    Finished {
        elapsed_ms: u64,
    },
    Failed {
        statement: Option<usize>,
        error: String,
    },
}

pub type ProgressSink = Arc<dyn Fn(&Progress) + Send + Sync>;

/// What `repair` does with a dirty migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairAction {
    /// Run the remaining statements, from the one after the last that committed.
    Resume,
    /// The interrupted direction was completed by hand: record it as done.
    MarkApplied,
    /// The interrupted direction was undone by hand: record it as never started.
    MarkNotApplied,
}

/// One migration run (or, in a dry run, to be run).
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub version: i64,
    pub name: String,
    pub direction: Direction,
    pub atomic: bool,
    /// Statements (or commands) of the script, as summaries.
    pub statements: Vec<String>,
    pub duration_ms: u64,
    pub rows_affected: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub dry_run: bool,
    pub steps: Vec<StepReport>,
}

/// A migration ready to run: statements split, mode chosen, all checked before anything runs.
#[derive(Clone)]
struct Prepared<'a> {
    migration: &'a Migration,
    direction: Direction,
    statements: Vec<Statement>,
    atomic: bool,
    /// Set for a batched backfill; `statements` then holds its one UPDATE template.
    backfill: Option<Backfill>,
}

/// Runs migrations against one target through its driver.
pub struct Executor {
    driver: Box<dyn Driver>,
    /// Lock owner and `applied_by`.
    owner: String,
    plan_id: Option<String>,
    /// The lock owner: `owner` and a suffix of this executor's own, so a lease is never re-entrant for another
    /// process or another step that happens to share the name (two agent processes, two targets on one database).
    lock_owner: String,
    /// The fleet's fencing token for this step, checked against the highest the database has seen.
    fencing_token: Option<u64>,
    lock_timeout: Duration,
    plan_options: PlanOptions,
    progress: Option<ProgressSink>,
}

impl Executor {
    pub fn new(driver: Box<dyn Driver>, owner: impl Into<String>) -> Self {
        let owner = owner.into();
        Executor {
            driver,
            lock_owner: format!("{owner}#{:016x}", rand::random::<u64>()),
            owner,
            plan_id: None,
            fencing_token: None,
            lock_timeout: Duration::from_secs(300),
            plan_options: PlanOptions::default(),
            progress: None,
        }
    }

    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    pub fn with_plan_options(mut self, options: PlanOptions) -> Self {
        self.plan_options = options;
        self
    }

    pub fn with_plan_id(mut self, plan_id: Option<String>) -> Self {
        self.plan_id = plan_id;
        self
    }

    /// Refuse to change the database if it has seen a higher fencing token than `token` (see [`Driver::fence_token`]).
    pub fn with_fencing_token(mut self, token: Option<u64>) -> Self {
        self.fencing_token = token;
        self
    }

    pub fn with_progress(mut self, sink: ProgressSink) -> Self {
        self.progress = Some(sink);
        self
    }

    pub async fn close(self) {
        self.driver.close().await;
    }

    /// Every known version with its status. Takes no lock and changes nothing.
    pub async fn status(&mut self, set: &MigrationSet) -> Result<Vec<StatusRow>, ExecError> {
        let history = self.driver.history().await?;
        Ok(plan::status(&set.migrations, &history))
    }

    /// The target's schema, without Flotilla's own tables.
    pub async fn schema(&mut self) -> Result<flotilla_core::schema::Schema, ExecError> {
        Ok(self.driver.schema().await?)
    }

    /// Raw history records, for callers that need more than status.
    pub async fn history(&mut self) -> Result<Vec<AppliedMigration>, ExecError> {
        Ok(self.driver.history().await?)
    }

    /// Applies (or rolls back) migrations as `request` says. A dry run checks everything, takes no lock, and changes nothing.
    pub async fn migrate(
        &mut self,
        set: &MigrationSet,
        request: Request,
        dry_run: bool,
    ) -> Result<RunReport, ExecError> {
        let prepared = self.prepare_set(set)?;
        if dry_run {
            let history = self.driver.history().await?;
            let steps = plan::plan(&set.migrations, &history, request, &self.plan_options)?;
            return Ok(RunReport { dry_run: true, steps: pick(&prepared, &steps)?.into_iter().map(planned).collect() });
        }
        self.lock().await?;
        let result = self.migrate_locked(set, &prepared, request).await;
        self.release(result).await
    }

    async fn migrate_locked(
        &mut self,
        set: &MigrationSet,
        prepared: &PreparedSet<'_>,
        request: Request,
    ) -> Result<RunReport, ExecError> {
        self.driver.ensure_history().await?;
        let history = self.driver.history().await?;
        let steps = plan::plan(&set.migrations, &history, request, &self.plan_options)?;
        if !steps.is_empty() {
            self.fence().await?;
        }
        let mut report = RunReport { dry_run: false, steps: Vec::with_capacity(steps.len()) };
        for step in pick(prepared, &steps)? {
            report.steps.push(self.run_step(step, 0).await?);
        }
        Ok(report)
    }

    /// Checks that every local script parses for this engine and fits its mode, before anything touches the database.
    pub fn validate(&self, set: &MigrationSet) -> Result<(), ExecError> {
        self.prepare_set(set).map(drop)
    }

    /// Every script of the set, split and checked once.
    fn prepare_set<'a>(&self, set: &'a MigrationSet) -> Result<PreparedSet<'a>, ExecError> {
        let mut prepared = PreparedSet::new();
        for m in &set.migrations {
            for direction in [Direction::Up, Direction::Down] {
                if m.script(direction).is_some() {
                    prepared.insert((m.version, direction), self.prepare(m, direction)?);
                }
            }
        }
        Ok(prepared)
    }

    /// Records local migrations up to `version` as applied without running them, on a database with no history.
    pub async fn baseline(&mut self, set: &MigrationSet, version: i64, dry_run: bool) -> Result<Vec<i64>, ExecError> {
        self.validate(set)?;
        if set.get(version).is_none() {
            return Err(PlanError::UnknownVersion(version).into());
        }
        let check = |history: &[AppliedMigration]| {
            if history.is_empty() {
                Ok(())
            } else {
                Err(ExecError::Refused(format!(
                    "baseline needs a database with no migration history, and this one has {} record(s); see `flotilla status`",
                    history.len()
                )))
            }
        };
        let versions: Vec<i64> = set.migrations.iter().filter(|m| m.version <= version).map(|m| m.version).collect();
        if dry_run {
            check(&self.driver.history().await?)?;
            return Ok(versions);
        }
        self.lock().await?;
        let result = self.baseline_locked(set, version, check).await.map(|()| versions);
        self.release(result).await
    }

    async fn baseline_locked(
        &mut self,
        set: &MigrationSet,
        version: i64,
        check: impl Fn(&[AppliedMigration]) -> Result<(), ExecError>,
    ) -> Result<(), ExecError> {
        self.driver.ensure_history().await?;
        check(&self.driver.history().await?)?;
        self.fence().await?;
        for m in set.migrations.iter().filter(|m| m.version <= version) {
            let record = self.record(m, RecordState::Baseline, 0);
            self.driver.write_record(&record).await?;
        }
        Ok(())
    }

    /// Resolves the dirty migration. Returns what was done, for output.
    pub async fn repair(
        &mut self,
        set: &MigrationSet,
        action: RepairAction,
        dry_run: bool,
    ) -> Result<String, ExecError> {
        let prepared = self.prepare_set(set)?;
        if dry_run {
            let history = self.driver.history().await?;
            let dirty = self.dirty_target(set, &history, action)?;
            return Ok(describe_repair(&dirty, action, &prepared));
        }
        self.lock().await?;
        let result = self.repair_locked(set, &prepared, action).await;
        self.release(result).await
    }

    async fn repair_locked(
        &mut self,
        set: &MigrationSet,
        prepared: &PreparedSet<'_>,
        action: RepairAction,
    ) -> Result<String, ExecError> {
        let history = self.driver.history().await?;
        let dirty = self.dirty_target(set, &history, action)?;
        let DirtyTarget { migration: m, direction, done, .. } = dirty;
        self.fence().await?;
        match (action, direction) {
            (RepairAction::Resume, _) => {
                let script = prepared
                    .get(&(m.version, direction))
                    .ok_or_else(|| PlanError::NoDown { version: m.version, name: m.name.clone() })?;
                // Resuming continues statement by statement, whatever mode the migration started in.
                let resume = Prepared { atomic: false, ..script.clone() };
                self.run_step(&resume, done as usize).await?;
            }
            (RepairAction::MarkApplied, Direction::Up) | (RepairAction::MarkNotApplied, Direction::Down) => {
                let record = self.record(m, RecordState::Applied, 0);
                self.driver.write_record(&record).await?;
            }
            (RepairAction::MarkApplied, Direction::Down) | (RepairAction::MarkNotApplied, Direction::Up) => {
                self.driver.delete_record(m.version).await?;
            }
        }
        Ok(describe_repair(&dirty, action, prepared))
    }

    fn dirty_target<'s>(
        &self,
        set: &'s MigrationSet,
        history: &[AppliedMigration],
        action: RepairAction,
    ) -> Result<DirtyTarget<'s>, ExecError> {
        let dirty = history
            .iter()
            .find(|h| h.state.is_dirty())
            .ok_or_else(|| ExecError::Refused("no migration is dirty: there is nothing to repair".into()))?;
        let RecordState::Dirty { direction, statements_done, statements_total, ref error } = dirty.state else {
            unreachable!("found by is_dirty")
        };
        let m = set
            .get(dirty.version)
            .ok_or(PlanError::MissingLocally { version: dirty.version, name: dirty.name.clone() })?;
        if action == RepairAction::Resume && m.checksum != dirty.checksum {
            return Err(PlanError::ChecksumMismatch {
                version: m.version,
                name: m.name.clone(),
                recorded: dirty.checksum.short().into(),
                local: m.checksum.short().into(),
            }
            .into());
        }
        Ok(DirtyTarget {
            migration: m,
            direction,
            done: statements_done,
            total: statements_total,
            interrupted: error.is_none(),
        })
    }

    /// Takes the engine's per-database lock; pair with [`Self::release`].
    async fn lock(&mut self) -> Result<(), ExecError> {
        let owner = self.lock_owner.clone();
        self.driver.lock(&owner, self.lock_timeout).instrument(info_span!("lock", owner = %owner)).await?;
        Ok(())
    }

    /// Under the lock, before the first write: checks and raises the database's fencing token, so no runner with a
    /// lower token changes it from here on. A run with nothing to write needs no fence (a second target name for
    /// the same database finds the work done, whichever lock is older).
    async fn fence(&mut self) -> Result<(), ExecError> {
        let Some(token) = self.fencing_token else { return Ok(()) };
        if self.driver.fence_token(token).await? {
            return Ok(());
        }
        Err(ExecError::Refused(format!(
            "fencing token {token} is lower than one this database has already seen: a runner holding a newer lock \
             has changed it since (a coordinator that lost this target's lock, or another target name for the same \
             database), so nothing was changed"
        )))
    }

    /// Releases the lock whatever `result` is; the first error wins.
    async fn release<T>(&mut self, result: Result<T, ExecError>) -> Result<T, ExecError> {
        let unlocked = self.driver.unlock().await;
        match (result, unlocked) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e.into()),
            (Ok(v), Ok(())) => Ok(v),
        }
    }

    fn prepare<'a>(&self, migration: &'a Migration, direction: Direction) -> Result<Prepared<'a>, ExecError> {
        let script = migration
            .script(direction)
            .ok_or_else(|| PlanError::NoDown { version: migration.version, name: migration.name.clone() })?;
        let mut statements = script.statements(migration.kind, self.driver.engine())?;
        let atomic = !script.no_transaction && self.driver.can_run_atomically(&statements);
        if atomic && migration.kind == ScriptKind::Sql {
            strip_transaction_wrapper(&mut statements);
            if let Some(s) =
                statements.iter().find(|s| matches!(s, Statement::Sql { text, .. } if is_transaction_control(text)))
            {
                return Err(ReadError::at(
                    &script.path,
                    s.line(),
                    "this statement controls the transaction, but Flotilla already runs the migration in one; \
                     remove it, or add `-- flotilla:no-transaction` to run the script as written",
                )
                .into());
            }
        }
        if let Some(backfill) = &script.backfill {
            if migration.kind != ScriptKind::Sql || statements.len() != 1 {
                return Err(ReadError::new(
                    &script.path,
                    "a backfill script holds exactly one SQL UPDATE (with {lo} and {hi}), and runs on SQL engines",
                )
                .into());
            }
            return Ok(Prepared { migration, direction, statements, atomic: false, backfill: Some(backfill.clone()) });
        }
        Ok(Prepared { migration, direction, statements, atomic, backfill: None })
    }

    fn record(&self, m: &Migration, state: RecordState, duration_ms: u64) -> AppliedMigration {
        new_record(m, state, duration_ms, &self.owner, self.plan_id.as_deref())
    }

    fn emit(&self, step: &Prepared, kind: ProgressKind) {
        if let Some(sink) = &self.progress {
            sink(&Progress {
                version: step.migration.version,
                name: step.migration.name.clone(),
                direction: step.direction,
                kind,
            });
        }
    }

    async fn run_step(&mut self, step: &Prepared<'_>, resume_from: usize) -> Result<StepReport, ExecError> {
        let span = info_span!(
            "execute_step",
            version = step.migration.version,
            name = %step.migration.name,
            direction = %step.direction,
            plan_id = self.plan_id.as_deref().unwrap_or(""),
            atomic = step.atomic,
        );
        async {
            let started = Instant::now();
            self.emit(
                step,
                ProgressKind::Started { statements: step.statements.len(), atomic: step.atomic, resume_from },
            );
            let result = if let Some(backfill) = &step.backfill {
                self.run_backfill(step, backfill, started).await
            } else if step.atomic {
                self.run_atomic(step, started).await
            } else {
                self.run_stepwise(step, resume_from, started).await
            };
            match &result {
                Ok(_) => self.emit(step, ProgressKind::Finished { elapsed_ms: millis(started.elapsed()) }),
                Err(ExecError::Failed { statement, error, .. }) => {
                    self.emit(step, ProgressKind::Failed { statement: *statement, error: error.clone() })
                }
                Err(other) => self.emit(step, ProgressKind::Failed { statement: None, error: other.to_string() }),
            }
            let rows_affected = result?;
            let mut report = planned(step);
            report.duration_ms = millis(started.elapsed());
            report.rows_affected = rows_affected;
            Ok(report)
        }
        .instrument(span)
        .await
    }

    async fn run_atomic(&mut self, step: &Prepared<'_>, started: Instant) -> Result<u64, ExecError> {
        self.driver.check_lock().await?;
        let m = step.migration;
        let total = step.statements.len();
        let mut rows = 0;
        let sink = self.progress.clone();
        let (version, name, direction) = (m.version, m.name.clone(), step.direction);
        let mut on_done = |i: usize, n: u64| {
            rows += n;
            if let Some(sink) = &sink {
                let kind = ProgressKind::Statement {
                    index: i + 1,
                    total,
                    rows_affected: n,
                    elapsed_ms: millis(started.elapsed()),
                };
                sink(&Progress { version, name: name.clone(), direction, kind });
            }
        };
        // Asked for after the statements ran, inside the transaction, so the recorded duration is the real one.
        let (owner, plan_id) = (self.owner.clone(), self.plan_id.clone());
        let change = move || match direction {
            Direction::Up => {
                let duration = millis(started.elapsed());
                HistoryChange::Write(new_record(m, RecordState::Applied, duration, &owner, plan_id.as_deref()))
            }
            Direction::Down => HistoryChange::Delete(m.version),
        };
        let result = self.driver.execute_atomic(&step.statements, &change, &mut on_done).await;
        match result {
            Ok(()) => Ok(rows),
            Err(e) => Err(self.failure(step, e.statement, e.error.to_string(), false)),
        }
    }

    /// Runs a backfill batch by batch; each batch's update and cursor commit together. A killed run leaves the
    /// migration pending with its cursor saved, and the next run resumes after the last committed batch.
    async fn run_backfill(
        &mut self,
        step: &Prepared<'_>,
        backfill: &Backfill,
        started: Instant,
    ) -> Result<u64, ExecError> {
        let m = step.migration;
        let (version, direction) = (m.version, step.direction);
        let Some(Statement::Sql { text: template, line }) = step.statements.first() else {
            return Err(ExecError::Refused(format!("internal: backfill {version} has no statement")));
        };
        let mut cursor = match self.driver.backfill_cursor(version, direction).await? {
            Some(c) if c.checksum != m.checksum.0 => {
                return Err(ExecError::Refused(format!(
                "backfill {version} ({}) was started from a different version of its file (checksum {} then, {} now); \
                     restore the file to finish it",
                m.name,
                &c.checksum[..c.checksum.len().min(12)],
                m.checksum.short()
            )))
            }
            Some(c) => c,
            None => BackfillCursor {
                version,
                direction,
                checksum: m.checksum.0.clone(),
                last_key: i64::MIN,
                batches: 0,
                rows: 0,
            },
        };
        let resumed_rows = cursor.rows;
        loop {
            self.driver.check_lock().await?;
            let Some(hi) = self.driver.next_batch_end(backfill, cursor.last_key).await? else { break };
            let statement = Statement::Sql { text: Backfill::bind(template, cursor.last_key, hi), line: *line };
            let rows = std::sync::atomic::AtomicU64::new(0);
            let mut on_done = |_: usize, n: u64| rows.store(n, std::sync::atomic::Ordering::SeqCst);
            let next = |rows: u64| BackfillCursor {
                last_key: hi,
                batches: cursor.batches + 1,
                rows: cursor.rows + i64::try_from(rows).unwrap_or(i64::MAX),
                ..cursor.clone()
            };
            let change = || HistoryChange::SaveCursor(next(rows.load(std::sync::atomic::Ordering::SeqCst)));
            if let Err(e) = self.driver.execute_atomic(std::slice::from_ref(&statement), &change, &mut on_done).await {
                let error = format!(
                    "{} (batch {} over keys after {}; the {} batches before it are kept: run again to resume)",
                    e.error,
                    cursor.batches + 1,
                    cursor.last_key,
                    cursor.batches
                );
                return Err(self.failure(step, Some(0), error, false));
            }
            let n = rows.load(std::sync::atomic::Ordering::SeqCst);
            cursor = next(n);
            self.emit(
                step,
                ProgressKind::Batch {
                    batch: cursor.batches,
                    last_key: hi,
                    rows_affected: n,
                    total_rows: cursor.rows,
                    elapsed_ms: millis(started.elapsed()),
                },
            );
            if backfill.pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(backfill.pause_ms)).await;
            }
        }
        // The history record and the end of the cursor commit together.
        let (owner, plan_id) = (self.owner.clone(), self.plan_id.clone());
        let finish = move || {
            let record = match direction {
                Direction::Up => {
                    let duration = millis(started.elapsed());
                    HistoryChange::Write(new_record(m, RecordState::Applied, duration, &owner, plan_id.as_deref()))
                }
                Direction::Down => HistoryChange::Delete(version),
            };
            HistoryChange::Many(vec![record, HistoryChange::ClearCursor { version, direction }])
        };
        self.driver
            .execute_atomic(&[], &finish, &mut |_, _| {})
            .await
            .map_err(|e| self.failure(step, None, e.error.to_string(), false))?;
        Ok(u64::try_from(cursor.rows - resumed_rows).unwrap_or(0))
    }

    async fn run_stepwise(&mut self, step: &Prepared<'_>, from: usize, started: Instant) -> Result<u64, ExecError> {
        let m = step.migration;
        let total = step.statements.len();
        let dirty = |done: usize, error: Option<String>| RecordState::Dirty {
            direction: step.direction,
            statements_done: u32::try_from(done).unwrap_or(u32::MAX),
            statements_total: u32::try_from(total).unwrap_or(u32::MAX),
            error,
        };
        self.driver.check_lock().await?;
        self.driver.write_record(&self.record(m, dirty(from, None), 0)).await?;
        // A script that opens transactions of its own keeps them: its statements run as written.
        let own_transactions =
            step.statements.iter().any(|s| matches!(s, Statement::Sql { text, .. } if is_transaction_control(text)));
        let mut rows = 0;
        let mut finished = false;
        for (i, statement) in step.statements.iter().enumerate().skip(from) {
            // A lost lock stops here: the record stays dirty (interrupted), so no other runner goes on blindly.
            self.driver.check_lock().await?;
            let last = i + 1 == total;
            // A row change commits in one transaction with the record that says it ran (the progress, or after the
            // last statement the final record), so a crash between the two cannot make a resume run it twice. DDL
            // may commit on its own (MySQL): the record still says "interrupted at this statement", and `repair`
            // says that it may have run.
            let ran = if statement.is_dml() && !own_transactions {
                let after = match (last, step.direction) {
                    (false, _) => HistoryChange::Write(self.record(m, dirty(i + 1, None), 0)),
                    (true, Direction::Up) => {
                        HistoryChange::Write(self.record(m, RecordState::Applied, millis(started.elapsed())))
                    }
                    (true, Direction::Down) => HistoryChange::Delete(m.version),
                };
                finished = last;
                self.driver.execute_recorded(statement, after).await.map_err(|e| e.error)
            } else {
                let result = self.driver.execute(statement).await;
                if result.is_ok() && !last {
                    self.driver.set_progress(m.version, u32::try_from(i + 1).unwrap_or(u32::MAX)).await?;
                }
                result
            };
            match ran {
                Ok(n) => {
                    rows += n;
                    let elapsed_ms = millis(started.elapsed());
                    self.emit(step, ProgressKind::Statement { index: i + 1, total, rows_affected: n, elapsed_ms });
                }
                Err(e) => {
                    // A script's own open transaction is rolled back, with any progress recorded inside it;
                    // what the history row says afterwards is what really committed.
                    self.driver.rollback_open_transaction().await;
                    let done = self
                        .driver
                        .history()
                        .await?
                        .into_iter()
                        .find(|h| h.version == m.version)
                        .and_then(|h| match h.state {
                            RecordState::Dirty { statements_done, .. } => Some(statements_done as usize),
                            _ => None,
                        })
                        .unwrap_or(i);
                    let error = truncate_chars(e.to_string(), MAX_RECORDED_ERROR);
                    self.driver
                        .write_record(&self.record(m, dirty(done, Some(error.clone())), millis(started.elapsed())))
                        .await?;
                    return Err(self.failure(step, Some(i), error, true));
                }
            }
        }
        if !finished {
            match step.direction {
                Direction::Up => {
                    self.driver.write_record(&self.record(m, RecordState::Applied, millis(started.elapsed()))).await?
                }
                Direction::Down => self.driver.delete_record(m.version).await?,
            }
        }
        Ok(rows)
    }

    fn failure(&self, step: &Prepared, index: Option<usize>, error: String, dirty: bool) -> ExecError {
        let script = step.migration.script(step.direction);
        let location = index
            .and_then(|i| step.statements.get(i))
            .zip(script)
            .map(|(s, script)| format!("{}:{}", script.path.display(), s.line()));
        ExecError::Failed {
            version: step.migration.version,
            name: step.migration.name.clone(),
            direction: step.direction,
            statement: index.map(|i| i + 1),
            total: step.statements.len(),
            location,
            error,
            dirty,
        }
    }
}

fn new_record(
    m: &Migration,
    state: RecordState,
    duration_ms: u64,
    owner: &str,
    plan_id: Option<&str>,
) -> AppliedMigration {
    AppliedMigration {
        version: m.version,
        name: m.name.clone(),
        checksum: m.checksum.clone(),
        state,
        applied_at: Utc::now(),
        duration_ms: i64::try_from(duration_ms).unwrap_or(i64::MAX),
        applied_by: owner.to_string(),
        plan_id: plan_id.map(str::to_string),
    }
}

type PreparedSet<'a> = std::collections::HashMap<(i64, Direction), Prepared<'a>>;

/// The prepared scripts for planned steps, in plan order. plan() refuses a rollback without a DOWN and
/// prepare_set() holds every script that exists, so a miss is a bug: refuse rather than skip a step.
fn pick<'p, 'a>(
    prepared: &'p PreparedSet<'a>,
    steps: &[flotilla_core::Step<'a>],
) -> Result<Vec<&'p Prepared<'a>>, ExecError> {
    steps
        .iter()
        .map(|s| {
            prepared.get(&(s.migration.version, s.direction)).ok_or_else(|| {
                ExecError::Refused(format!(
                    "internal: migration {} {} was not prepared",
                    s.migration.version, s.direction
                ))
            })
        })
        .collect()
}

/// Drops a script's own `BEGIN … COMMIT` around its body when Flotilla supplies the transaction.
fn strip_transaction_wrapper(statements: &mut Vec<Statement>) {
    let is = |s: Option<&Statement>, words: &[&str]| {
        matches!(s, Some(Statement::Sql { text, .. })
            if is_transaction_control(text) && words.iter().any(|w| text.trim().to_ascii_uppercase().starts_with(w)))
    };
    if is(statements.first(), &["BEGIN", "START"]) && is(statements.last(), &["COMMIT", "END"]) {
        statements.pop();
        statements.remove(0);
    }
}

fn planned(step: &Prepared) -> StepReport {
    StepReport {
        version: step.migration.version,
        name: step.migration.name.clone(),
        direction: step.direction,
        atomic: step.atomic,
        statements: step.statements.iter().map(Statement::summary).collect(),
        duration_ms: 0,
        rows_affected: 0,
    }
}

/// The dirty migration a repair acts on, as its history record describes it.
#[derive(Clone, Copy)]
struct DirtyTarget<'s> {
    migration: &'s Migration,
    direction: Direction,
    /// Statements known to have committed.
    done: u32,
    total: u32,
    /// The run stopped (was killed) while statement `done + 1` ran, rather than failing on it.
    interrupted: bool,
}

fn describe_repair(dirty: &DirtyTarget, action: RepairAction, prepared: &PreparedSet) -> String {
    let DirtyTarget { migration: m, direction, done, total, interrupted } = *dirty;
    let what = match (action, direction) {
        (RepairAction::Resume, _) => {
            let of = if total > 0 { format!(" of {total}") } else { String::new() };
            // A row change commits with its progress record, so it never ran unrecorded. A statement that commits
            // on its own (DDL on MySQL, a MongoDB command) may have, if the run was killed while it ran.
            let next = prepared.get(&(m.version, direction)).and_then(|p| p.statements.get(done as usize));
            let doubt = match next {
                Some(s) if interrupted && !s.is_dml() => format!(
                    "; the run stopped while statement {} (line {}) ran, and it commits on its own, so it may have \
                     committed: check it first (`flotilla schema dump`); if it did, resuming fails on it or repeats it",
                    done + 1,
                    s.line()
                ),
                _ => String::new(),
            };
            format!("resume {direction} from statement {}{of}{doubt}", done + 1)
        }
        (RepairAction::MarkApplied, Direction::Up) => "record it as applied".into(),
        (RepairAction::MarkApplied, Direction::Down) => "record it as rolled back".into(),
        (RepairAction::MarkNotApplied, Direction::Up) => "record it as not applied".into(),
        (RepairAction::MarkNotApplied, Direction::Down) => "record it as still applied".into(),
    };
    format!("migration {} ({}): {what}", m.version, m.name)
}

/// Longest error message kept in a history record (the full one is in the command's output).
const MAX_RECORDED_ERROR: usize = 4000;

fn truncate_chars(mut text: String, max: usize) -> String {
    if let Some((cut, _)) = text.char_indices().nth(max) {
        text.truncate(cut);
    }
    text
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(t: &str) -> Statement {
        Statement::Sql { text: t.into(), line: 1 }
    }

    #[test]
    fn wrapper_is_stripped_only_when_it_wraps() {
        let mut s = vec![sql("BEGIN"), sql("CREATE TABLE a (x int)"), sql("COMMIT")];
        strip_transaction_wrapper(&mut s);
        assert_eq!(s, vec![sql("CREATE TABLE a (x int)")]);
        let mut s = vec![sql("CREATE TABLE a (x int)"), sql("COMMIT")];
        strip_transaction_wrapper(&mut s);
        assert_eq!(s.len(), 2);
    }
}
