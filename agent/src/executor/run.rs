//! Running one prepared migration: atomically, statement by statement, or as a batched backfill.

use super::*;
use crate::driver::DriverError;

impl Executor {
    pub(super) async fn run_step(&mut self, step: &Prepared<'_>, resume_from: usize) -> Result<StepReport, ExecError> {
        let span = info_span!(
            "execute_step",
            version = %step.migration.version,
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
            self.wait_until_healthy(step).await?;
            let script = step.migration.script(step.direction);
            let timeouts = script.map(|s| s.timeouts).unwrap_or_default().or(self.timeouts);
            self.driver.set_timeouts(timeouts.lock, timeouts.statement).await?;
            let retries = timeouts.lock_retries.unwrap_or(0);
            let result = if let Some(backfill) = &step.backfill {
                self.run_backfill(step, backfill, started).await
            } else if step.atomic {
                self.run_atomic(&[step], started, retries).await.map(|ran| ran.iter().map(|r| r.rows).sum())
            } else {
                self.run_stepwise(step, resume_from, started, retries).await
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

    /// Runs `steps` (one migration, or a group: see `group`) in one transaction with their history writes; one
    /// rolled back on a lock timeout runs again, up to `retries` times. Each step's rows and duration.
    pub(super) async fn run_atomic(
        &mut self,
        steps: &[&Prepared<'_>],
        started: Instant,
        retries: u32,
    ) -> Result<Vec<Ran>, ExecError> {
        let mut attempt = 0;
        loop {
            self.driver.check_lock().await?;
            match self.try_atomic(steps, started).await {
                Ok(ran) => return Ok(ran),
                Err(e) if matches!(e.error, DriverError::LockNotAvailable(_)) && attempt < retries => {
                    attempt += 1;
                    let (step, at) = locate(steps, e.statement);
                    self.pause_for_lock(step, attempt, retries, at, &e.error).await;
                }
                Err(e) => {
                    let (step, at) = locate(steps, e.statement);
                    let mut error = retried(e.error, attempt);
                    if steps.len() > 1 {
                        error.push_str(&format!(
                            " (the group's {} migrations ran in one transaction, rolled back together: none of \
                             them is applied)",
                            steps.len()
                        ));
                    }
                    return Err(self.failure(step, at, error, false));
                }
            }
        }
    }

    /// Reports a lock timeout that will be retried, and waits before the retry: 0.5 s, doubling up to 30 s.
    async fn pause_for_lock(
        &mut self,
        step: &Prepared<'_>,
        attempt: u32,
        retries: u32,
        statement: Option<usize>,
        error: &DriverError,
    ) {
        let pause = Duration::from_millis(500).saturating_mul(1 << (attempt - 1).min(6)).min(Duration::from_secs(30));
        tracing::warn!(
            version = %step.migration.version, attempt, retries, pause_ms = millis(pause), %error,
            "a statement gave up waiting for a lock; the migration runs again after a pause"
        );
        let (statement, error) = (statement.map(|i| i + 1), error.to_string());
        self.emit(step, ProgressKind::LockRetry { attempt, retries, statement, pause_ms: millis(pause), error });
        tokio::time::sleep(pause).await;
    }

    async fn try_atomic(
        &mut self,
        steps: &[&Prepared<'_>],
        started: Instant,
    ) -> Result<Vec<Ran>, crate::driver::AtomicError> {
        let statements: std::borrow::Cow<[Statement]> = match steps {
            [one] => (&one.statements[..]).into(),
            _ => steps.iter().flat_map(|s| s.statements.iter().cloned()).collect::<Vec<_>>().into(),
        };
        // Per step: what it did, and when its last statement finished (ms from `started`).
        let ran = std::sync::Mutex::new(vec![Ran::default(); steps.len()]);
        let ends = std::sync::Mutex::new(vec![None::<u64>; steps.len()]);
        let sink = self.progress.clone();
        let mut on_done = |i: usize, n: u64| {
            let (k, local) = position(steps, i);
            let elapsed_ms = millis(started.elapsed());
            let total = steps[k].statements.len();
            send(&sink, steps[k], ProgressKind::Statement { index: local + 1, total, rows_affected: n, elapsed_ms });
            ran.lock().expect("not poisoned")[k].rows += n;
            if local + 1 == total {
                ends.lock().expect("not poisoned")[k] = Some(elapsed_ms);
                start_next(&sink, &steps[k + 1..]);
            }
        };
        // Asked for after the statements ran, inside the transaction, so the recorded durations are the real ones
        // (and the reports' the same).
        let (owner, plan_id) = (self.owner.clone(), self.plan_id.clone());
        let change = || {
            let (ends, mut ran) = (ends.lock().expect("not poisoned"), ran.lock().expect("not poisoned"));
            let mut before = 0;
            let mut changes = Vec::with_capacity(steps.len());
            for (k, step) in steps.iter().enumerate() {
                // The last migration ends with the history writes; one without statements, where the one before it did.
                let end = if k + 1 == steps.len() { millis(started.elapsed()) } else { ends[k].unwrap_or(before) };
                ran[k].duration_ms = end.saturating_sub(before);
                before = end;
                changes.push(match step.direction {
                    Direction::Up => {
                        let record = new_record(
                            step.migration,
                            RecordState::Applied,
                            ran[k].duration_ms,
                            &owner,
                            plan_id.as_deref(),
                        );
                        HistoryChange::Write(record)
                    }
                    Direction::Down => HistoryChange::Delete(step.migration.version),
                });
            }
            match changes.len() {
                1 => changes.pop().expect("one"),
                _ => HistoryChange::Many(changes),
            }
        };
        self.driver.execute_atomic(&statements, &change, &mut on_done).await?;
        Ok(ran.into_inner().expect("not poisoned"))
    }

    /// Runs a backfill batch by batch; each batch's update and cursor commit together. A killed run leaves the
    /// migration pending with its cursor saved, and the next run resumes after the last committed batch.
    pub(super) async fn run_backfill(
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
        let mut cursor = self.backfill_cursor(m, direction).await?;
        let resumed_rows = cursor.rows;
        loop {
            self.wait_until_healthy(step).await?;
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
        self.finish_backfill(step, started).await?;
        Ok(u64::try_from(cursor.rows - resumed_rows).unwrap_or(0))
    }

    /// On MySQL (DDL there is atomic per statement), a statement that gave up waiting for a lock did nothing: it
    /// runs again, up to `retries` times. Elsewhere a statement outside a transaction is not retried: PostgreSQL's
    /// `CREATE INDEX CONCURRENTLY` that times out may leave an invalid index behind, which `repair` must look at.
    pub(super) async fn run_stepwise(
        &mut self,
        step: &Prepared<'_>,
        from: usize,
        started: Instant,
        retries: u32,
    ) -> Result<u64, ExecError> {
        let m = step.migration;
        let total = step.statements.len();
        let dirty = |done: usize, error: Option<String>| dirty(step, done, error);
        // A script that opens transactions of its own keeps them: its statements run as written.
        let own_transactions =
            step.statements.iter().any(|s| matches!(s, Statement::Sql { text, .. } if is_transaction_control(text)));
        let recorded = |statement: &Statement| statement.is_dml() && !own_transactions;
        self.driver.check_lock().await?;
        // The dirty record goes ahead of the first statement that commits on its own. A row change commits together
        // with its record (below), so before one nothing needs saying: a crash in it leaves the record as it was.
        if !step.statements.get(from).is_some_and(recorded) {
            self.driver.mark_started(&self.record(m, dirty(from, None), 0)).await?;
        }
        let mut rows = 0;
        let mut finished = false;
        let (mut i, mut attempt) = (from, 0);
        let retry_here = self.driver.engine() == flotilla_core::Engine::Mysql;
        while let Some(statement) = step.statements.get(i) {
            // A lost lock stops here: the record stays dirty (interrupted), so no other runner goes on blindly.
            self.driver.check_lock().await?;
            let last = i + 1 == total;
            // A row change commits in one transaction with the record that says it ran (the progress, or after the
            // last statement the final record), so a crash between the two cannot make a resume run it twice. DDL
            // may commit on its own (MySQL): the record still says "interrupted at this statement", and `repair`
            // says that it may have run.
            let ran = if recorded(statement) {
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
                    i += 1;
                }
                Err(e) if matches!(e, DriverError::LockNotAvailable(_)) && retry_here && attempt < retries => {
                    attempt += 1;
                    finished = false;
                    self.pause_for_lock(step, attempt, retries, Some(i), &e).await;
                }
                Err(e) => {
                    let e = if attempt > 0 { DriverError::Database(retried(e, attempt)) } else { e };
                    return Err(self.stopped_at(step, i, e, started).await);
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
    /// The cursor of an interrupted backfill of `m`, or a fresh one; refused when the file changed since.
    async fn backfill_cursor(&mut self, m: &Migration, direction: Direction) -> Result<BackfillCursor, ExecError> {
        let version = m.version;
        Ok(match self.driver.backfill_cursor(version, direction).await? {
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
        })
    }

    /// The history record and the end of the cursor commit together.
    async fn finish_backfill(&mut self, step: &Prepared<'_>, started: Instant) -> Result<(), ExecError> {
        let (m, direction) = (step.migration, step.direction);
        let version = m.version;
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
            .map_err(|e| self.failure(step, None, e.error.to_string(), false))
    }

    /// A statement of a stepwise run failed: record how far it really got (what committed), and say so.
    async fn stopped_at(&mut self, step: &Prepared<'_>, i: usize, e: DriverError, started: Instant) -> ExecError {
        let m = step.migration;
        // A script's own open transaction is rolled back, with any progress recorded inside it;
        // what the history row says afterwards is what really committed.
        self.driver.rollback_open_transaction().await;
        let history = match self.driver.history().await {
            Ok(history) => history,
            Err(e) => return e.into(),
        };
        let done = history
            .into_iter()
            .find(|h| h.version == m.version)
            .and_then(|h| match h.state {
                RecordState::Dirty { statements_done, .. } => Some(statements_done as usize),
                _ => None,
            })
            .unwrap_or(i);
        let error = truncate_chars(e.to_string(), MAX_RECORDED_ERROR);
        let record = self.record(m, dirty(step, done, Some(error.clone())), millis(started.elapsed()));
        if let Err(e) = self.driver.write_record(&record).await {
            return e.into();
        }
        self.failure(step, Some(i), error, true)
    }

    pub(super) fn failure(&self, step: &Prepared, index: Option<usize>, error: String, dirty: bool) -> ExecError {
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

/// What one migration of an atomic run did.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Ran {
    pub(super) rows: u64,
    pub(super) duration_ms: u64,
}

/// Each of `steps` starts, up to the first with statements to run (one without starts and ends at once).
pub(super) fn start_next(sink: &Option<ProgressSink>, steps: &[&Prepared]) {
    for step in steps {
        let statements = step.statements.len();
        send(sink, step, ProgressKind::Started { statements, atomic: true, resume_from: 0 });
        if statements > 0 {
            break;
        }
    }
}

/// The step that statement `i` of `steps`' statements one after another belongs to, and its index there.
pub(super) fn position(steps: &[&Prepared], mut i: usize) -> (usize, usize) {
    for (k, step) in steps.iter().enumerate() {
        if i < step.statements.len() {
            return (k, i);
        }
        i -= step.statements.len();
    }
    (steps.len() - 1, i)
}

/// The step a failure of statement `at` (of all of `steps`' statements) is reported on, with the statement's index
/// there; a failed history write or commit (`None`) is the last step's.
fn locate<'p, 'a>(steps: &[&'p Prepared<'a>], at: Option<usize>) -> (&'p Prepared<'a>, Option<usize>) {
    match at {
        Some(i) => {
            let (k, local) = position(steps, i);
            (steps[k], Some(local))
        }
        None => (steps[steps.len() - 1], None),
    }
}

/// A failure's message, saying how many lock-timeout retries came before it.
fn retried(error: DriverError, attempts: u32) -> String {
    match attempts {
        0 => error.to_string(),
        n => format!("{error} (after {n} retries)"),
    }
}

/// The record of a stepwise run `done` statements in.
fn dirty(step: &Prepared, done: usize, error: Option<String>) -> RecordState {
    RecordState::Dirty {
        direction: step.direction,
        statements_done: u32::try_from(done).unwrap_or(u32::MAX),
        statements_total: u32::try_from(step.statements.len()).unwrap_or(u32::MAX),
        error,
    }
}
