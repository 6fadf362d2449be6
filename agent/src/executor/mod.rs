//! The migration algorithm, once for every engine: take the engine's lock, refuse a dirty or mismatched history,
//! then apply pending UPs in order (or DOWNs in reverse), recording each.
//!
//! Each migration runs in one of two modes:
//! - **atomic**: its statements and its history write commit in one transaction (PostgreSQL and SQLite unless the
//!   script says `no-transaction`; MySQL scripts of row changes alone; MongoDB scripts of row changes, new
//!   collections and their indexes). It is applied or not at all.
//! - **statement by statement**: a dirty record goes ahead of the first statement that commits on its own,
//!   progress after each statement, and on failure the record stays dirty with the failing statement's index and
//!   error (MySQL scripts with DDL, which commits implicitly, and `no-transaction` scripts). `repair` resumes it or
//!   marks how it was resolved.

use std::time::{Duration, Instant};

use chrono::Utc;
use flotilla_core::plan::{self, PlanOptions, StatusRow};
use flotilla_core::split::is_transaction_control;
use flotilla_core::{
    AppliedMigration, Backfill, Direction, Engine, Migration, MigrationSet, PlanError, ReadError, RecordState,
    Repeatable, Request, ScriptKind, Statement, Timeouts, Version,
};
use tracing::{info_span, Instrument};

use crate::driver::{BackfillCursor, Driver, HistoryChange};

mod error;
mod group;
mod progress;
mod repair;
mod run;
mod throttle;

pub use error::ExecError;
pub use progress::{Progress, ProgressKind, ProgressSink, RepeatableStatus, RunReport, StepReport};
pub use repair::RepairAction;
pub use throttle::{verdict, HealthCheck, Throttle};

/// What a migration gets when neither it nor the run says otherwise: a statement waits at most 5 s for a lock
/// (so the application's queries queue behind it at most that long), and a migration rolled back on a lock timeout
/// runs again up to 3 times, after pauses of 0.5, 1 and 2 s. No statement timeout.
pub const DEFAULT_TIMEOUTS: Timeouts =
    Timeouts { lock: Some(Duration::from_secs(5)), statement: None, lock_retries: Some(3) };

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
    /// Statement timeouts and lock-timeout retries for migrations that set none of their own.
    timeouts: Timeouts,
    /// Health checks asked before each migration and each backfill batch.
    throttle: Option<Throttle>,
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
            timeouts: DEFAULT_TIMEOUTS,
            throttle: None,
            plan_options: PlanOptions::default(),
            progress: None,
        }
    }

    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// Lock and statement timeouts, and lock-timeout retries, for migrations whose directives set none (what is
    /// not set here falls back to [`DEFAULT_TIMEOUTS`]).
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts.or(DEFAULT_TIMEOUTS);
        self
    }

    /// Health checks that hold each migration and each backfill batch while one fails (see [`Throttle`]).
    pub fn with_throttle(mut self, throttle: Option<Throttle>) -> Self {
        self.throttle = throttle.filter(|t| !t.checks.is_empty());
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

    /// The connection back, to be used again (see [`Driver::reset_session`] after migrations ran on it).
    pub fn into_driver(self) -> Box<dyn Driver> {
        self.driver
    }

    /// Reads the history once and says whether `request` has anything to do: `true` only when no migration is to
    /// run or be rolled back, no repeatable migration is due, nothing is dirty and every applied checksum matches
    /// (whatever `migrate` would refuse is not "at the goal": it reports that itself). Takes no lock, changes
    /// nothing; the history is returned too.
    pub async fn at_goal(
        &mut self,
        set: &MigrationSet,
        request: Request,
    ) -> Result<(Vec<AppliedMigration>, bool), ExecError> {
        let history = self.driver.history().await?;
        let nothing_to_run =
            plan::plan(&set.migrations, &history, request, &self.plan_options).is_ok_and(|steps| steps.is_empty());
        let at_goal =
            nothing_to_run && (!matches!(request, Request::Up { .. }) || self.due_repeatables(set).await?.is_empty());
        Ok((history, at_goal))
    }

    /// Every known version with its status. Takes no lock and changes nothing.
    pub async fn status(&mut self, set: &MigrationSet) -> Result<Vec<StatusRow>, ExecError> {
        let history = self.driver.history().await?;
        Ok(plan::status(&set.migrations, &history))
    }

    /// Each repeatable migration, local or recorded, and whether it is applied as it is, changed since, pending, or
    /// recorded but no longer here.
    pub async fn repeatable_status(&mut self, set: &MigrationSet) -> Result<Vec<RepeatableStatus>, ExecError> {
        let recorded = self.driver.repeatables().await?;
        let mut out: Vec<RepeatableStatus> = set
            .repeatables
            .iter()
            .map(|r| RepeatableStatus {
                name: r.name.clone(),
                status: match recorded.get(&r.name) {
                    None => "pending",
                    Some(sum) if *sum == r.checksum.0 => "applied",
                    Some(_) => "changed",
                },
            })
            .collect();
        for name in recorded.keys().filter(|n| !set.repeatables.iter().any(|r| &r.name == *n)) {
            out.push(RepeatableStatus { name: name.clone(), status: "missing" });
        }
        Ok(out)
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
            let repeatables =
                if matches!(request, Request::Up { .. }) { self.due_repeatables(set).await? } else { Vec::new() };
            let steps = pick(&prepared, &steps)?;
            if self.plan_options.group && steps.len() > 1 {
                group::groupable(&steps, self.timeouts, self.driver.engine())?;
            }
            let steps = steps.into_iter().map(planned).collect();
            return Ok(RunReport {
                dry_run: true,
                steps,
                repeatables: repeatables.iter().map(|r| r.name.clone()).collect(),
            });
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
        // Refusals (the plan's, a group that cannot be) come before the run writes anything, the history table too.
        let history = self.driver.history().await?;
        let steps = plan::plan(&set.migrations, &history, request, &self.plan_options)?;
        let steps = pick(prepared, &steps)?;
        let group = match self.plan_options.group && steps.len() > 1 {
            true => Some(group::groupable(&steps, self.timeouts, self.driver.engine())?),
            false => None,
        };
        self.driver.ensure_history().await?;
        let repeatables =
            if matches!(request, Request::Up { .. }) { self.due_repeatables(set).await? } else { Vec::new() };
        if !steps.is_empty() || !repeatables.is_empty() {
            self.fence().await?;
        }
        let mut report = RunReport { dry_run: false, steps: Vec::with_capacity(steps.len()), repeatables: Vec::new() };
        if let Some(timeouts) = group {
            report.steps = self.run_group(&steps, timeouts).await?;
        } else {
            for step in steps {
                report.steps.push(self.run_step(step, 0).await?);
            }
        }
        for r in repeatables {
            self.run_repeatable(r).await?;
            report.repeatables.push(r.name.clone());
        }
        Ok(report)
    }

    /// The repeatable migrations whose checksum differs from the one they last ran with (or that never ran).
    async fn due_repeatables<'s>(&mut self, set: &'s MigrationSet) -> Result<Vec<&'s Repeatable>, ExecError> {
        if set.repeatables.is_empty() {
            return Ok(Vec::new());
        }
        let recorded = self.driver.repeatables().await?;
        Ok(set.repeatables.iter().filter(|r| recorded.get(&r.name) != Some(&r.checksum.0)).collect())
    }

    /// Runs one repeatable migration and records its checksum: in one transaction where the engine allows.
    async fn run_repeatable(&mut self, r: &Repeatable) -> Result<(), ExecError> {
        self.driver.ensure_repeatables().await?;
        let engine = self.driver.engine();
        let mut statements = r.script.statements(ScriptKind::Sql, engine)?;
        let change = HistoryChange::Repeatable {
            name: r.name.clone(),
            checksum: r.checksum.0.clone(),
            applied_by: self.owner.clone(),
        };
        let failed = |error: String| ExecError::RepeatableFailed { name: r.name.clone(), error };
        self.driver.check_lock().await?;
        if self.driver.can_run_atomically(&statements) && !r.script.no_transaction {
            strip_transaction_wrapper(&mut statements);
            let change = move || change.clone();
            return self
                .driver
                .execute_atomic(&statements, &change, &mut |_, _| {})
                .await
                .map_err(|e| failed(e.error.to_string()));
        }
        for statement in &statements {
            self.driver.check_lock().await?;
            self.driver.execute(statement).await.map_err(|e| failed(e.to_string()))?;
        }
        let change = move || change.clone();
        self.driver.execute_atomic(&[], &change, &mut |_, _| {}).await.map_err(|e| failed(e.error.to_string()))
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
        send(&self.progress, step, kind);
    }
}

/// Reports progress of `step` to `sink`, if there is one.
fn send(sink: &Option<ProgressSink>, step: &Prepared, kind: ProgressKind) {
    if let Some(sink) = sink {
        sink(&Progress {
            version: step.migration.version,
            name: step.migration.name.clone(),
            direction: step.direction,
            kind,
        });
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

type PreparedSet<'a> = std::collections::HashMap<(Version, Direction), Prepared<'a>>;

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
