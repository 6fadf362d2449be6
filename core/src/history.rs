//! What a target database records about migrations, in its `flotilla_schema_history` table or collection.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::direction::Direction;
use crate::migration::Checksum;
use crate::version::Version;

/// Name of the history table (SQL) or collection (MongoDB) in every target database.
pub const HISTORY_TABLE: &str = "flotilla_schema_history";
/// Name of the lease table (SQLite) or collection (MongoDB) used as the per-database lock.
pub const LOCK_TABLE: &str = "flotilla_lock";

/// The state of one history record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum RecordState {
    /// Fully applied by Flotilla.
    Applied,
    /// Marked as applied by `baseline` without running anything.
    Baseline,
    /// Interrupted part way: `statements_done` statements of the `direction` script are known to have committed.
    /// With no `error`, the process stopped (was killed) while running statement `statements_done + 1`,
    /// whose outcome is unknown.
    Dirty { direction: Direction, statements_done: u32, statements_total: u32, error: Option<String> },
}

impl RecordState {
    pub fn label(&self) -> &'static str {
        match self {
            RecordState::Applied => "applied",
            RecordState::Baseline => "baseline",
            RecordState::Dirty { .. } => "dirty",
        }
    }

    pub fn is_dirty(&self) -> bool {
        matches!(self, RecordState::Dirty { .. })
    }
}

/// One row of a target's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedMigration {
    pub version: Version,
    pub name: String,
    pub checksum: Checksum,
    #[serde(flatten)]
    pub state: RecordState,
    pub applied_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub applied_by: String,
    pub plan_id: Option<String>,
}

impl AppliedMigration {
    /// A dirty record's columns, flattened the way the SQL drivers store them:
    /// (direction, statements_done, statements_total, error).
    pub fn dirty_columns(&self) -> (Option<&'static str>, i64, i64, Option<&str>) {
        match &self.state {
            RecordState::Dirty { direction, statements_done, statements_total, error } => {
                (Some(direction.as_str()), i64::from(*statements_done), i64::from(*statements_total), error.as_deref())
            }
            _ => (None, 0, 0, None),
        }
    }

    /// Rebuilds the state from stored columns. Returns `None` for a state label this version does not know.
    pub fn state_from_columns(
        state: &str,
        direction: Option<&str>,
        done: i64,
        total: i64,
        error: Option<String>,
    ) -> Option<RecordState> {
        match state {
            "applied" => Some(RecordState::Applied),
            "baseline" => Some(RecordState::Baseline),
            "dirty" => Some(RecordState::Dirty {
                direction: match direction? {
                    "up" => Direction::Up,
                    "down" => Direction::Down,
                    _ => return None,
                },
                statements_done: u32::try_from(done).ok()?,
                statements_total: u32::try_from(total).ok()?,
                error,
            }),
            _ => None,
        }
    }
}
