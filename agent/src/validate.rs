//! `validate` on a staging database: for each pending migration, up → dump S1 (→ test command) → down → the schema
//! must equal S0 exactly → up again → it must equal S1. Every mismatch is reported with its diff and its class
//! (structure fails; column order only and literal timestamps are reported as notes). A DOWN that fails without
//! committing anything does not stop the run: it goes on from the UP's state, so one run lists every problem.

use flotilla_core::schema::{diff, DifferenceClass, Schema};
use flotilla_core::{plan, MigrationSet, Request, Version};
use serde::Serialize;

use crate::executor::{ExecError, Executor};

#[derive(Debug, Clone, Serialize)]
pub struct MigrationCheck {
    pub version: Version,
    pub name: String,
    /// Empty when the migration passed.
    pub problems: Vec<String>,
    /// Differences that are not a real mismatch, each named by its class (column order, literal timestamps).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    pub migrations: Vec<MigrationCheck>,
    /// Set when validation had to stop early (an UP failed, or a DOWN failed and left changes behind).
    pub stopped: Option<String>,
}

impl ValidationReport {
    pub fn passed(&self) -> bool {
        self.stopped.is_none() && self.migrations.iter().all(|m| m.problems.is_empty())
    }
}

/// A command run after each UP, given the version in FLOTILLA_VALIDATE_VERSION.
pub struct TestCommand<'a> {
    pub shell: &'a str,
    pub env: Vec<(String, String)>,
}

pub async fn validate(
    ex: &mut Executor,
    set: &MigrationSet,
    test: Option<&TestCommand<'_>>,
) -> Result<ValidationReport, ExecError> {
    ex.validate(set)?;
    let history = ex.history().await?;
    let pending: Vec<(Version, String)> =
        plan::plan(&set.migrations, &history, Request::Up { to: None }, &Default::default())?
            .iter()
            .map(|s| (s.migration.version, s.migration.name.clone()))
            .collect();
    let mut report = ValidationReport { migrations: Vec::new(), stopped: None };
    let mut before = ex.schema().await?;
    for (version, name) in pending {
        let mut check = MigrationCheck { version, name, problems: Vec::new(), notes: Vec::new() };
        let step = async |ex: &mut Executor, request| ex.migrate(set, request, false).await.map(drop);
        if let Err(e) = step(ex, Request::Up { to: Some(version) }).await {
            return Ok(stopped(report, check, format!("UP of {version} failed: {e}")));
        }
        let after_up = ex.schema().await?;
        if let Some(test) = test {
            if let Err(problem) = run_test(test, version).await {
                check.problems.push(problem);
            }
        }
        if let Err(e) = step(ex, Request::DownSteps(1)).await {
            if !committed_nothing(ex, version, &after_up).await? {
                return Ok(stopped(report, check, format!("DOWN of {version} failed and left changes behind: {e}")));
            }
            // The DOWN rolled back whole: the UP's state stands, and the next migration is checked from it.
            check.problems.push(format!("DOWN of {version} failed (nothing of it committed): {e}"));
            before = after_up;
            report.migrations.push(check);
            continue;
        }
        compare(&mut check, "after DOWN the schema is not what it was before the UP", &before, &ex.schema().await?);
        if let Err(e) = step(ex, Request::Up { to: Some(version) }).await {
            return Ok(stopped(report, check, format!("UP of {version} failed when re-applied after its DOWN: {e}")));
        }
        let again = ex.schema().await?;
        compare(&mut check, "UP re-applied after DOWN gives a different schema than the first UP", &after_up, &again);
        before = again;
        report.migrations.push(check);
    }
    Ok(report)
}

/// Validation cannot go on past a migration that failed to run: record why, against that migration.
fn stopped(mut report: ValidationReport, mut check: MigrationCheck, reason: String) -> ValidationReport {
    check.problems.push(reason.clone());
    report.stopped = Some(reason);
    report.migrations.push(check);
    report
}

/// Whether a failed DOWN of `version` left the target as the UP had it: the migration still recorded as applied,
/// and the schema unchanged.
async fn committed_nothing(ex: &mut Executor, version: Version, after_up: &Schema) -> Result<bool, ExecError> {
    let history = ex.history().await?;
    let applied = history.iter().any(|h| h.version == version && !h.state.is_dirty());
    Ok(applied && diff(after_up, &ex.schema().await?).is_empty())
}

/// Differences by class: structural ones are problems, the others notes that say what they are.
fn compare(check: &mut MigrationCheck, what: &str, expected: &Schema, actual: &Schema) {
    let differences = diff(expected, actual);
    for class in [DifferenceClass::Structure, DifferenceClass::ColumnOrderOnly, DifferenceClass::TimestampsOnly] {
        let lines: Vec<String> = differences.iter().filter(|d| d.class() == class).map(|d| format!("  {d}")).collect();
        if lines.is_empty() {
            continue;
        }
        let text = format!("{what} ({}):\n{}", class.describe(), lines.join("\n"));
        match class {
            DifferenceClass::Structure => check.problems.push(text),
            _ => check.notes.push(text),
        }
    }
}

async fn run_test(test: &TestCommand<'_>, version: Version) -> Result<(), String> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(test.shell)
        .envs(test.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("FLOTILLA_VALIDATE_VERSION", version.to_string())
        .status()
        .await
        .map_err(|e| format!("test command could not start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("test command failed after UP ({status})"))
    }
}
