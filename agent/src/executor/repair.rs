//! Taking a target's history in hand: `baseline` (adopt a database migrated by other means) and `repair` (settle
//! a dirty migration: resume it, or record how it was resolved by hand).

use super::*;

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

impl Executor {
    /// Records local migrations up to `version` as applied without running them, on a database with no history.
    pub async fn baseline(
        &mut self,
        set: &MigrationSet,
        version: Version,
        dry_run: bool,
    ) -> Result<Vec<Version>, ExecError> {
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
        let versions: Vec<Version> =
            set.migrations.iter().filter(|m| m.version <= version).map(|m| m.version).collect();
        if dry_run {
            check(&self.driver.history().await?)?;
            return Ok(versions);
        }
        self.lock().await?;
        let result = self.baseline_locked(set, version, check).await.map(|()| versions);
        self.release(result).await
    }

    pub(super) async fn baseline_locked(
        &mut self,
        set: &MigrationSet,
        version: Version,
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

    pub(super) async fn repair_locked(
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

    pub(super) fn dirty_target<'s>(
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
}

#[derive(Clone, Copy)]
pub(super) struct DirtyTarget<'s> {
    migration: &'s Migration,
    direction: Direction,
    /// Statements known to have committed.
    done: u32,
    total: u32,
    /// The run stopped (was killed) while statement `done + 1` ran, rather than failing on it.
    interrupted: bool,
}

pub(super) fn describe_repair(dirty: &DirtyTarget, action: RepairAction, prepared: &PreparedSet) -> String {
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
