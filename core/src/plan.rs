//! Decides what to run on one target: pure logic over local migrations and the target's history.
//!
//! The checks run before anything does: a dirty record, an applied migration whose file changed (checksum) or is gone,
//! a pending migration older than the newest applied one, a rollback without a DOWN. Any of these refuses the whole run.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::{AppliedMigration, Direction, RecordState};
use crate::migration::{Checksum, Migration, Phase};
use crate::version::Version;

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Apply pending migrations up to and including `to` (all when `None`).
    Up { to: Option<Version> },
    /// Roll back applied migrations newer than `to`.
    DownTo(Version),
    /// Roll back the newest `n` applied migrations.
    DownSteps(u32),
    /// Roll back everything applied.
    DownAll,
}

#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// Apply pending migrations older than the newest applied one instead of refusing.
    pub allow_out_of_order: bool,
    /// Go on when an applied migration has no local file (it is then left alone).
    pub ignore_missing: bool,
    /// Zero-downtime rollouts: `expand` applies pending migrations up to the first `contract` one; `contract`
    /// applies the pending contract migrations, and is refused while an expand step before them is pending.
    pub phase: Option<Phase>,
    /// Run the pending migrations in one transaction, all or none (Flyway's `group`); refused where one of them
    /// cannot run in a transaction.
    pub group: bool,
}

/// One migration to run in one direction.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    pub migration: &'a Migration,
    pub direction: Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("migration {version} ({name}) is dirty: {detail}. Run `flotilla repair` to resume it or to mark how it was resolved")]
    Dirty { version: Version, name: String, detail: String },
    #[error("migration {version} ({name}) was changed after it was applied: recorded checksum {recorded}, file now {local}. Restore the file, or write a new migration")]
    ChecksumMismatch { version: Version, name: String, recorded: String, local: String },
    #[error("migration {version} ({name}) is applied on the database but missing from the migrations directory")]
    MissingLocally { version: Version, name: String },
    #[error("migration {version} ({name}) is pending but older than the newest applied migration {latest}; pass --allow-out-of-order to apply it")]
    OutOfOrder { version: Version, name: String, latest: Version },
    #[error("migration {version} ({name}) has no DOWN, so it cannot be rolled back")]
    NoDown { version: Version, name: String },
    #[error("migration {version} ({name}) was recorded by `baseline`, not run, so Flotilla will not roll it back")]
    BelowBaseline { version: Version, name: String },
    #[error("contract is refused: migration {version} ({name}) comes first and is not a contract step; finish expand first (`up --phase expand`)")]
    ExpandNotFinished { version: Version, name: String },
    #[error("version {0} is not a migration in the directory")]
    UnknownVersion(Version),
}

/// Refuses a target whose history is dirty, or does not match the local files.
pub fn verify(local: &[Migration], history: &[AppliedMigration], options: &PlanOptions) -> Result<(), PlanError> {
    if let Some(dirty) = history.iter().find(|h| h.state.is_dirty()) {
        return Err(PlanError::Dirty {
            version: dirty.version,
            name: dirty.name.clone(),
            detail: describe_dirty(&dirty.state),
        });
    }
    for applied in history {
        match find(local, applied.version) {
            Some(m) if m.checksum != applied.checksum => {
                return Err(PlanError::ChecksumMismatch {
                    version: applied.version,
                    name: applied.name.clone(),
                    recorded: applied.checksum.short().to_string(),
                    local: m.checksum.short().to_string(),
                })
            }
            Some(_) => {}
            None if options.ignore_missing => {}
            None => return Err(PlanError::MissingLocally { version: applied.version, name: applied.name.clone() }),
        }
    }
    Ok(())
}

/// The steps that carry out `request`, in the order to run them, after [`verify`].
pub fn plan<'a>(
    local: &'a [Migration],
    history: &[AppliedMigration],
    request: Request,
    options: &PlanOptions,
) -> Result<Vec<Step<'a>>, PlanError> {
    verify(local, history, options)?;
    let applied: BTreeMap<Version, &AppliedMigration> = history.iter().map(|h| (h.version, h)).collect();
    match request {
        Request::Up { to } => {
            if let Some(to) = to {
                find(local, to).ok_or(PlanError::UnknownVersion(to))?;
            }
            let latest = applied.keys().next_back().copied();
            let mut steps = Vec::new();
            for m in local.iter().filter(|m| !applied.contains_key(&m.version) && to.is_none_or(|to| m.version <= to)) {
                if let Some(latest) = latest.filter(|l| m.version < *l) {
                    if !options.allow_out_of_order {
                        return Err(PlanError::OutOfOrder { version: m.version, name: m.name.clone(), latest });
                    }
                }
                steps.push(Step { migration: m, direction: Direction::Up });
            }
            limit_to_phase(steps, options.phase)
        }
        Request::DownTo(to) => {
            if !to.is_zero() && find(local, to).is_none() && !applied.contains_key(&to) {
                return Err(PlanError::UnknownVersion(to));
            }
            down_steps(local, applied.values().rev().take_while(|h| h.version > to))
        }
        Request::DownSteps(n) => down_steps(local, applied.values().rev().take(n as usize)),
        Request::DownAll => down_steps(local, applied.values().rev()),
    }
}

fn limit_to_phase(steps: Vec<Step<'_>>, phase: Option<Phase>) -> Result<Vec<Step<'_>>, PlanError> {
    let is_contract = |s: &Step| s.migration.options.phase == Some(Phase::Contract);
    match phase {
        None => Ok(steps),
        Some(Phase::Expand) => Ok(steps.into_iter().take_while(|s| !is_contract(s)).collect()),
        Some(Phase::Contract) => match steps.first() {
            Some(first) if !is_contract(first) => Err(PlanError::ExpandNotFinished {
                version: first.migration.version,
                name: first.migration.name.clone(),
            }),
            _ => Ok(steps.into_iter().take_while(is_contract).collect()),
        },
    }
}

fn down_steps<'a, 'h>(
    local: &'a [Migration],
    newest_first: impl Iterator<Item = &'h &'h AppliedMigration>,
) -> Result<Vec<Step<'a>>, PlanError> {
    let mut steps = Vec::new();
    for h in newest_first {
        if h.state == RecordState::Baseline {
            return Err(PlanError::BelowBaseline { version: h.version, name: h.name.clone() });
        }
        // verify() has already refused missing files unless told to ignore them; those cannot be rolled back.
        let m = find(local, h.version)
            .ok_or_else(|| PlanError::MissingLocally { version: h.version, name: h.name.clone() })?;
        if m.down.is_none() {
            return Err(PlanError::NoDown { version: m.version, name: m.name.clone() });
        }
        steps.push(Step { migration: m, direction: Direction::Down });
    }
    Ok(steps)
}

fn find(local: &[Migration], version: Version) -> Option<&Migration> {
    local.binary_search_by_key(&version, |m| m.version).ok().map(|i| &local[i])
}

/// Human description of a dirty state.
pub fn describe_dirty(state: &RecordState) -> String {
    match state {
        RecordState::Dirty { direction, statements_done, statements_total, error: Some(error) } => format!(
            "{direction} failed at statement {} of {statements_total} ({statements_done} committed): {error}",
            statements_done + 1
        ),
        RecordState::Dirty { direction, statements_done, statements_total, error: None } => format!(
            "{direction} was interrupted after statement {statements_done} of {statements_total}; statement {} may or may not have committed",
            statements_done + 1
        ),
        _ => String::new(),
    }
}

/// One line of `flotilla status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    pub version: Version,
    pub name: String,
    /// `pending`, `applied`, `baseline`, `dirty`, `changed` (checksum mismatch) or `missing` (no local file).
    pub status: &'static str,
    pub applied_at: Option<chrono::DateTime<chrono::Utc>>,
    pub detail: Option<String>,
    pub checksum: Checksum,
}

/// Every version known locally or on the target, in order, with its status.
pub fn status(local: &[Migration], history: &[AppliedMigration]) -> Vec<StatusRow> {
    let mut rows: BTreeMap<Version, StatusRow> = local
        .iter()
        .map(|m| {
            let row = StatusRow {
                version: m.version,
                name: m.name.clone(),
                status: "pending",
                applied_at: None,
                detail: None,
                checksum: m.checksum.clone(),
            };
            (m.version, row)
        })
        .collect();
    for h in history {
        let local = find(local, h.version);
        let (status, detail) = match (&h.state, local) {
            (RecordState::Dirty { .. }, _) => ("dirty", Some(describe_dirty(&h.state))),
            (_, None) => ("missing", Some("applied, but no local file".to_string())),
            (_, Some(m)) if m.checksum != h.checksum => (
                "changed",
                Some(format!(
                    "file changed since applied (recorded {}, now {})",
                    h.checksum.short(),
                    m.checksum.short()
                )),
            ),
            (RecordState::Baseline, _) => ("baseline", None),
            (_, Some(_)) => ("applied", None),
        };
        rows.insert(
            h.version,
            StatusRow {
                version: h.version,
                name: h.name.clone(),
                status,
                applied_at: Some(h.applied_at),
                detail,
                checksum: h.checksum.clone(),
            },
        );
    }
    rows.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::{MigrationOptions, Script, ScriptKind, Timeouts};
    use std::path::PathBuf;

    fn mig(version: u64, down: bool) -> Migration {
        let version = Version::from(version);
        let script = |t: &str| Script {
            path: PathBuf::from(format!("{version}.sql")),
            first_line: 1,
            text: t.into(),
            no_transaction: false,
            backfill: None,
            timeouts: Timeouts::default(),
        };
        let up = format!("CREATE TABLE t{version} (id int);");
        let down_text = format!("DROP TABLE t{version};");
        Migration {
            version,
            name: format!("m{version}"),
            kind: ScriptKind::Sql,
            checksum: Checksum::of(&up, down.then_some(down_text.as_str())),
            up: script(&up),
            down: down.then(|| script(&down_text)),
            options: MigrationOptions::default(),
        }
    }

    fn v(n: u64) -> Version {
        Version::from(n)
    }

    fn applied(m: &Migration, state: RecordState) -> AppliedMigration {
        AppliedMigration {
            version: m.version,
            name: m.name.clone(),
            checksum: m.checksum.clone(),
            state,
            applied_at: chrono::Utc::now(),
            duration_ms: 1,
            applied_by: "test".into(),
            plan_id: None,
        }
    }

    fn versions(steps: &[Step]) -> Vec<(u128, Direction)> {
        steps.iter().map(|s| (s.migration.version.get(), s.direction)).collect()
    }

    #[test]
    fn up_applies_pending_in_order_up_to_target() {
        let local = vec![mig(1, true), mig(2, true), mig(3, true)];
        let history = vec![applied(&local[0], RecordState::Applied)];
        let all = plan(&local, &history, Request::Up { to: None }, &PlanOptions::default()).unwrap();
        assert_eq!(versions(&all), [(2, Direction::Up), (3, Direction::Up)]);
        let to2 = plan(&local, &history, Request::Up { to: Some(v(2)) }, &PlanOptions::default()).unwrap();
        assert_eq!(versions(&to2), [(2, Direction::Up)]);
        assert_eq!(
            plan(&local, &history, Request::Up { to: Some(v(9)) }, &PlanOptions::default()).unwrap_err(),
            PlanError::UnknownVersion(v(9))
        );
    }

    #[test]
    fn down_by_target_steps_and_all_newest_first() {
        let local = vec![mig(1, true), mig(2, true), mig(3, true)];
        let history: Vec<_> = local.iter().map(|m| applied(m, RecordState::Applied)).collect();
        let o = PlanOptions::default();
        assert_eq!(
            versions(&plan(&local, &history, Request::DownTo(v(1)), &o).unwrap()),
            [(3, Direction::Down), (2, Direction::Down)]
        );
        assert_eq!(versions(&plan(&local, &history, Request::DownSteps(1), &o).unwrap()), [(3, Direction::Down)]);
        assert_eq!(plan(&local, &history, Request::DownAll, &o).unwrap().len(), 3);
        assert_eq!(plan(&local, &history, Request::DownTo(v(0)), &o).unwrap().len(), 3);
        assert!(plan(&local, &history, Request::DownTo(v(3)), &o).unwrap().is_empty());
    }

    #[test]
    fn refusals() {
        let local = vec![mig(1, true), mig(2, false), mig(3, true)];
        let o = PlanOptions::default();
        // Checksum mismatch.
        let mut h = applied(&local[0], RecordState::Applied);
        h.checksum = Checksum("0".repeat(64));
        assert!(matches!(
            plan(&local, &[h], Request::Up { to: None }, &o),
            Err(PlanError::ChecksumMismatch { version, .. }) if version == v(1)
        ));
        // Missing locally, unless ignored.
        let gone = applied(&mig(7, true), RecordState::Applied);
        assert!(matches!(
            plan(&local, std::slice::from_ref(&gone), Request::Up { to: None }, &o),
            Err(PlanError::MissingLocally { version, .. }) if version == v(7)
        ));
        let ignore = PlanOptions { ignore_missing: true, ..Default::default() };
        assert!(matches!(
            plan(&local, &[gone], Request::Up { to: None }, &ignore),
            Err(PlanError::OutOfOrder { latest, .. }) if latest == v(7)
        ));
        // Dirty.
        let dirty = applied(
            &local[0],
            RecordState::Dirty {
                direction: Direction::Up,
                statements_done: 2,
                statements_total: 5,
                error: Some("boom".into()),
            },
        );
        let err = plan(&local, &[dirty], Request::Up { to: None }, &o).unwrap_err();
        assert!(err.to_string().contains("failed at statement 3 of 5"), "{err}");
        // Out of order.
        let h3 = applied(&local[2], RecordState::Applied);
        assert!(matches!(
            plan(&local, std::slice::from_ref(&h3), Request::Up { to: None }, &o),
            Err(PlanError::OutOfOrder { version, latest, .. }) if version == v(1) && latest == v(3)
        ));
        let ooo = PlanOptions { allow_out_of_order: true, ..Default::default() };
        assert_eq!(plan(&local, &[h3], Request::Up { to: None }, &ooo).unwrap().len(), 2);
        // No DOWN; baseline.
        let h: Vec<_> = local[..2].iter().map(|m| applied(m, RecordState::Applied)).collect();
        assert!(
            matches!(plan(&local, &h, Request::DownAll, &o), Err(PlanError::NoDown { version, .. }) if version == v(2))
        );
        let b = vec![applied(&local[0], RecordState::Baseline)];
        assert!(
            matches!(plan(&local, &b, Request::DownAll, &o), Err(PlanError::BelowBaseline { version, .. }) if version == v(1))
        );
    }

    #[test]
    fn phases_split_expand_from_contract() {
        let mut local = vec![mig(1, true), mig(2, true), mig(3, true), mig(4, true)];
        local[0].options.phase = Some(Phase::Expand);
        local[2].options.phase = Some(Phase::Contract);
        local[3].options.phase = Some(Phase::Contract);
        let with = |phase| PlanOptions { phase: Some(phase), ..Default::default() };
        let up = Request::Up { to: None };
        assert_eq!(
            versions(&plan(&local, &[], up, &with(Phase::Expand)).unwrap()),
            [(1, Direction::Up), (2, Direction::Up)]
        );
        assert!(matches!(
            plan(&local, &[], up, &with(Phase::Contract)),
            Err(PlanError::ExpandNotFinished { version, .. }) if version == v(1)
        ));
        let expanded: Vec<_> = local[..2].iter().map(|m| applied(m, RecordState::Applied)).collect();
        assert_eq!(
            versions(&plan(&local, &expanded, up, &with(Phase::Contract)).unwrap()),
            [(3, Direction::Up), (4, Direction::Up)]
        );
        assert!(plan(&local, &expanded, up, &with(Phase::Expand)).unwrap().is_empty());
    }

    #[test]
    fn status_rows() {
        let local = vec![mig(1, true), mig(2, true)];
        let mut changed = applied(&local[1], RecordState::Applied);
        changed.checksum = Checksum("f".repeat(64));
        let rows = status(
            &local,
            &[applied(&local[0], RecordState::Baseline), changed, applied(&mig(5, true), RecordState::Applied)],
        );
        let s: Vec<_> = rows.iter().map(|r| (r.version.get(), r.status)).collect();
        assert_eq!(s, [(1, "baseline"), (2, "changed"), (5, "missing")]);
        assert_eq!(status(&local, &[])[0].status, "pending");
    }
}
