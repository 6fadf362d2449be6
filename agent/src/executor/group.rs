//! A target's pending migrations in one transaction (`--group`, Flyway's `group`): all of them apply, or none does,
//! with a history record for each. Where the engine cannot run one of them in a transaction (MySQL's DDL, a
//! `no-transaction` script, a backfill, a MongoDB command outside what a transaction allows), or the migrations ask
//! for different timeouts, the run is refused before anything is changed.

use super::*;

impl Executor {
    /// Runs `steps` as one transaction with the `timeouts` [`groupable`] found for them; a report per migration.
    pub(super) async fn run_group(
        &mut self,
        steps: &[&Prepared<'_>],
        timeouts: Timeouts,
    ) -> Result<Vec<StepReport>, ExecError> {
        let span = info_span!(
            "execute_group",
            migrations = steps.len(),
            first = %steps[0].migration.version,
            last = %steps[steps.len() - 1].migration.version,
            direction = %steps[0].direction,
            plan_id = self.plan_id.as_deref().unwrap_or(""),
        );
        async {
            let started = Instant::now();
            run::start_next(&self.progress, steps);
            self.wait_until_healthy(steps[0]).await?;
            self.driver.set_timeouts(timeouts.lock, timeouts.statement).await?;
            let ran = self.run_atomic(steps, started, timeouts.lock_retries.unwrap_or(0)).await;
            let ran = match ran {
                Ok(ran) => ran,
                Err(e) => {
                    let failed = match &e {
                        ExecError::Failed { version, direction, statement, error, .. } => steps
                            .iter()
                            .find(|s| s.migration.version == *version && s.direction == *direction)
                            .map(|step| (step, ProgressKind::Failed { statement: *statement, error: error.clone() })),
                        other => Some((&steps[0], ProgressKind::Failed { statement: None, error: other.to_string() })),
                    };
                    if let Some((step, kind)) = failed {
                        self.emit(step, kind);
                    }
                    return Err(e);
                }
            };
            let mut reports = Vec::with_capacity(steps.len());
            for (step, ran) in steps.iter().zip(ran) {
                self.emit(step, ProgressKind::Finished { elapsed_ms: ran.duration_ms });
                reports.push(StepReport { duration_ms: ran.duration_ms, rows_affected: ran.rows, ..planned(step) });
            }
            Ok(reports)
        }
        .instrument(span)
        .await
    }
}

/// Whether `steps` can run as one transaction, and with which timeouts (the run's `defaults` where a migration sets
/// none); a refusal names the migration that cannot, and why.
pub(super) fn groupable(steps: &[&Prepared], defaults: Timeouts, engine: Engine) -> Result<Timeouts, ExecError> {
    let refuse = |step: &Prepared, why: String| {
        ExecError::Refused(format!(
            "--group runs the {} pending migrations in one transaction, but {} ({}) {why}; none of them was run. Run \
             without --group to apply them one by one",
            steps.len(),
            step.migration.version,
            step.migration.name
        ))
    };
    let timeouts = |step: &Prepared| step.migration.script(step.direction).map(|s| s.timeouts).unwrap_or_default();
    let first = steps.first().map(|s| timeouts(s).or(defaults)).unwrap_or(defaults);
    for step in steps {
        if step.backfill.is_some() {
            return Err(refuse(step, "is a batched backfill, which commits batch by batch".into()));
        }
        if !step.atomic {
            let why = match engine {
                Engine::Mysql => "cannot run in a transaction: MySQL commits DDL on its own, so a migration with \
                                  anything but row changes runs statement by statement"
                    .into(),
                _ => "cannot run in a transaction (a `no-transaction` script, or commands a transaction does not \
                      allow)"
                    .into(),
            };
            return Err(refuse(step, why));
        }
        if timeouts(step).or(defaults) != first {
            return Err(refuse(step, "sets other timeouts than the migrations before it".into()));
        }
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_core::{Checksum, MigrationOptions, Script};

    fn migration(version: u32, timeouts: Timeouts) -> Migration {
        let text = "SELECT 1;";
        let up = Script {
            path: format!("{version}.sql").into(),
            first_line: 1,
            text: text.into(),
            no_transaction: false,
            backfill: None,
            timeouts,
        };
        Migration {
            version: Version::from(version),
            name: format!("m{version}"),
            kind: ScriptKind::Sql,
            checksum: Checksum::of(text, None),
            up,
            down: None,
            options: MigrationOptions::default(),
        }
    }

    fn prepared(m: &Migration, atomic: bool) -> Prepared<'_> {
        Prepared { migration: m, direction: Direction::Up, statements: Vec::new(), atomic, backfill: None }
    }

    fn with_statements(m: &Migration, n: usize) -> Prepared<'_> {
        let statements = (0..n).map(|i| Statement::Sql { text: format!("SELECT {i}"), line: i + 1 }).collect();
        Prepared { statements, ..prepared(m, true) }
    }

    #[test]
    fn a_statement_of_the_group_is_found_in_its_migration_past_empty_ones() {
        let (a, b, c) =
            (migration(1, Timeouts::default()), migration(2, Timeouts::default()), migration(3, Timeouts::default()));
        let (pa, pb, pc) = (with_statements(&a, 2), with_statements(&b, 0), with_statements(&c, 3));
        let steps = [&pa, &pb, &pc];
        let found: Vec<(usize, usize)> = (0..5).map(|i| run::position(&steps, i)).collect();
        assert_eq!(found, [(0, 0), (0, 1), (2, 0), (2, 1), (2, 2)]);
    }

    #[test]
    fn a_group_runs_only_what_fits_one_transaction_with_one_set_of_timeouts() {
        let defaults = DEFAULT_TIMEOUTS;
        let (a, b) = (migration(1, Timeouts::default()), migration(2, Timeouts::default()));
        let slow = migration(3, Timeouts { statement: Some(Duration::from_secs(60)), ..Timeouts::default() });
        let (pa, pb) = (prepared(&a, true), prepared(&b, true));
        assert_eq!(groupable(&[&pa, &pb], defaults, Engine::Postgres).expect("groupable"), defaults);

        let refused = groupable(&[&pa, &prepared(&b, false)], defaults, Engine::Mysql).unwrap_err().to_string();
        assert!(refused.contains("2 (m2)") && refused.contains("MySQL commits DDL on its own"), "{refused}");
        assert!(refused.contains("none of them was run"), "{refused}");

        let refused = groupable(&[&pa, &prepared(&slow, true)], defaults, Engine::Postgres).unwrap_err().to_string();
        assert!(refused.contains("3 (m3) sets other timeouts"), "{refused}");

        let batches = Backfill { table: "t".into(), key: "id".into(), batch: 100, pause_ms: 0 };
        let backfill = Prepared { backfill: Some(batches), ..prepared(&b, false) };
        let refused = groupable(&[&pa, &backfill], defaults, Engine::Postgres).unwrap_err().to_string();
        assert!(refused.contains("batched backfill"), "{refused}");
    }
}
