//! Why a run stopped.

use flotilla_core::{Direction, PlanError, ReadError, Version};

use crate::driver::DriverError;

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
        version: Version,
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
    /// A repeatable migration failed; nothing of it committed where the engine runs it in a transaction.
    #[error("repeatable migration R__{name} failed: {error}")]
    RepeatableFailed { name: String, error: String },
    /// The request does not fit the target's state (nothing to repair, baseline over existing history, …).
    #[error("{0}")]
    Refused(String),
}

#[allow(clippy::too_many_arguments)]
fn failed_message(
    version: &Version,
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
