//! What a run reports: progress as it goes, and what it did.

use std::sync::Arc;

use flotilla_core::{Direction, Version};
use serde::Serialize;

/// A progress event, for output now and for the agent's stream later.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub version: Version,
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
    /// A statement gave up waiting for a lock (the lock timeout); what it did is rolled back and the migration
    /// runs again after `pause_ms`, as attempt `attempt` + 1 of `retries` + 1.
    LockRetry {
        attempt: u32,
        retries: u32,
        statement: Option<usize>,
        pause_ms: u64,
        error: String,
    },
    /// A health check holds the migration (before it starts, or before a backfill batch).
    Throttled {
        reason: String,
        waited_ms: u64,
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

/// A repeatable migration's state on a target: `pending`, `applied`, `changed` (it runs again on the next `up`), or
/// `missing` (recorded, no longer in the directory).
#[derive(Debug, Clone, Serialize)]
pub struct RepeatableStatus {
    pub name: String,
    pub status: &'static str,
}

/// One migration run (or, in a dry run, to be run).
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub version: Version,
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
    /// Repeatable migrations run (or, in a dry run, to run) after the versioned ones, by name.
    pub repeatables: Vec<String>,
}
