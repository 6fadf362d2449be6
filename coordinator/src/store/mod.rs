//! Where the coordinator keeps everything: content-addressed migration bundles, targets, plans, per-target steps,
//! progress events and the audit log. One trait, one sqlx implementation for a SQLite file (the embedded default)
//! and PostgreSQL (production), one shared test suite (tests/tests/store.rs). A restart loses nothing.

mod checkpoint;
mod counts;
mod rows;
mod sql;
mod transitions;

use std::collections::BTreeMap;

use async_trait::async_trait;
use flotilla_core::fleet::{AuditEntry, Event, EventKind, Plan, PlanState, Step, StepState, Target};
use flotilla_core::Version;

pub use sql::SqlStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store: {0}")]
    Open(String),
    /// The database said no or could not be reached; the cause is kept.
    #[error("{0}")]
    Sql(#[from] sqlx::Error),
    #[error("{0}")]
    Database(String),
    #[error("bundle content does not match its id {0}")]
    BundleMismatch(String),
    #[error("illegal state change from {from} to {to}")]
    IllegalTransition { from: String, to: String },
    #[error("the store holds a record this version cannot read: {0}")]
    Corrupt(String),
}

pub(super) fn db(e: sqlx::Error) -> StoreError {
    StoreError::Sql(e)
}

impl StoreError {
    /// Whether trying again later may succeed (the store is down or busy), as opposed to data this version cannot
    /// read or a change the store refuses for good.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Open(_) | StoreError::Database(_) => true,
            StoreError::Sql(e) => !matches!(e, sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_)),
            StoreError::BundleMismatch(_) | StoreError::IllegalTransition { .. } | StoreError::Corrupt(_) => false,
        }
    }
}

/// Two writers picked the same next event number; the one refused tries again. Nothing else is retried.
pub(super) fn is_key_conflict(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| d.is_unique_violation())
}

/// Runs `attempt` again (up to five times) when a concurrent event writer took the next event number first;
/// the compare-and-sets in a retried transaction make a second try that finds its work done a no-op. Nothing else
/// is retried.
pub(super) async fn retried<T, F, Fut>(mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut last_error = None;
    for _ in 0..5 {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if is_key_conflict(&e) => last_error = Some(e),
            Err(e) => return Err(db(e)),
        }
    }
    Err(db(last_error.unwrap_or(sqlx::Error::PoolTimedOut)))
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Stores a bundle under its SHA-256; storing it again is a no-op. Returns the id.
    async fn put_bundle(&self, body: &str) -> Result<String, StoreError>;
    async fn bundle(&self, id: &str) -> Result<Option<String>, StoreError>;

    /// Adds or replaces targets (by name), all in one transaction; of a name given twice, the last stands.
    async fn upsert_targets(&self, targets: &[Target]) -> Result<(), StoreError>;
    async fn targets(&self) -> Result<Vec<Target>, StoreError>;

    /// Creates a plan and its steps in one transaction.
    async fn create_plan(&self, plan: &Plan, steps: &[Step]) -> Result<(), StoreError>;
    async fn plan(&self, id: &str) -> Result<Option<Plan>, StoreError>;
    async fn plans(&self) -> Result<Vec<Plan>, StoreError>;
    /// Plans a restarted coordinator must pick up again.
    async fn live_plans(&self) -> Result<Vec<Plan>, StoreError>;
    /// Moves a plan from `from` to `to` if it is still in `from`; `Ok(false)` if it was not. A plan that halts or is
    /// aborted skips its pending steps in the same transaction: an ended plan never has a step waiting.
    async fn set_plan_state(&self, id: &str, from: PlanState, to: PlanState) -> Result<bool, StoreError>;

    async fn steps(&self, plan_id: &str) -> Result<Vec<Step>, StoreError>;
    async fn step(&self, plan_id: &str, target: &str) -> Result<Option<Step>, StoreError>;
    /// Several targets' steps of one plan, in one query per 500 targets (a target the plan has no step for is left
    /// out), in no particular order.
    async fn steps_of(&self, plan_id: &str, targets: &[&str]) -> Result<Vec<Step>, StoreError>;
    /// How many of a plan's steps each wave has in each state: what the scheduler decides on, counted by the database
    /// so a pass over a plan of thousands of targets reads a few rows, not thousands.
    async fn step_counts(&self, plan_id: &str) -> Result<Vec<StepCount>, StoreError>;
    /// Step counts by wave and state for every plan, in one query (plan lists), by plan id.
    async fn all_step_counts(&self) -> Result<BTreeMap<String, Vec<StepCount>>, StoreError>;
    /// Where plans left each target: its newest succeeded step (by its plan's creation), with that plan's bundle id,
    /// in one query (fleet status).
    async fn last_succeeded_steps(&self) -> Result<Vec<(String, Step)>, StoreError>;
    /// A plan's steps in `state`, by target name, after the target `after` (keyset paging) and at most `limit`;
    /// `wave` narrows it to one wave.
    async fn steps_in_state(
        &self,
        plan_id: &str,
        state: StepState,
        wave: Option<u32>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Step>, StoreError>;
    /// Moves a plan from awaiting approval to running and records `wave` as approved.
    async fn approve_wave(&self, id: &str, wave: u32) -> Result<bool, StoreError>;
    /// The highest fencing token ever recorded, so an in-process lock never issues a lower one after a restart.
    async fn max_token(&self) -> Result<u64, StoreError>;
    /// Moves a step if it is still in `from`, recording the fencing token and error.
    async fn set_step_state(
        &self,
        plan_id: &str,
        target: &str,
        from: StepState,
        to: StepState,
        token: Option<u64>,
        error: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// Steps about to be sent to their agents: each still pending moves to `assigned` under its token, with its
    /// `assigned` event, all in one transaction. Returns the targets moved (a step no longer pending is left as it
    /// is).
    async fn assign_steps(&self, plan_id: &str, steps: &[Assigning]) -> Result<Vec<String>, StoreError>;
    /// What agents report, in order, in one transaction (the coordinator's writer commits whatever was queued
    /// meanwhile together): events appended; each start and result applied by compare-and-set as
    /// [`Store::start_step`] and [`Store::finish_step`] describe. Whether each was written (an event always; a
    /// start or a result only if its step was in flight under its token: a late or repeated one writes nothing).
    async fn record(&self, facts: &[Fact]) -> Result<Vec<bool>, StoreError>;
    /// The agent started the step it was assigned under its token: `assigned → running`, recording the version it
    /// found (unless a version before was recorded already: the first observation stands), with its
    /// `step_started` event if it has a detail. `false` if the step is not assigned under the token (a late or
    /// repeated report).
    async fn start_step(&self, start: &Starting) -> Result<bool, StoreError> {
        Ok(self.record(&[Fact::Start(start.clone())]).await?.first().copied().unwrap_or(false))
    }
    /// A step's result, as one fact in one transaction: the state (`succeeded` or `failed`) and error, the
    /// versions (the first `before` stands), and the event, by compare-and-set on the step being in flight under
    /// `token`. `None` if it is not (a late or repeated report: nothing is written).
    async fn finish_step(&self, result: &StepFinish) -> Result<Option<Step>, StoreError>;
    /// Steps a check found at their goal: each still pending moves to `succeeded` with its versions and a
    /// `succeeded` event (`at_goal: true`), all in one transaction; the steps moved are returned (one no longer
    /// pending is left as it is).
    async fn finish_unchanged(&self, plan_id: &str, steps: &[Unchanged]) -> Result<Vec<Step>, StoreError>;

    /// Appends an event; returns its sequence number (per plan, from 1, no gaps).
    async fn append_event(
        &self,
        plan_id: &str,
        target: Option<&str>,
        kind: EventKind,
        detail: &serde_json::Value,
    ) -> Result<u64, StoreError>;
    /// Appends several events in one transaction.
    async fn append_events(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        self.record(&events.iter().cloned().map(Fact::Event).collect::<Vec<_>>()).await.map(drop)
    }
    /// A plan's events after `seq`, in order: at most `limit` of them (and never more than [`EVENT_PAGE`]).
    async fn events_after(&self, plan_id: &str, seq: u64, limit: u32) -> Result<Vec<Event>, StoreError>;

    async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// A page of the audit log, oldest first: entries after `query.after` (an id from an earlier page), of one plan
    /// and from a time on if asked, at most `query.limit`.
    async fn audit_log(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
}

/// Which audit entries to read.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub plan_id: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// The id of the last entry of the page before.
    pub after: Option<String>,
    pub limit: u32,
}

/// The most events one read returns: a plan of 10,000 targets has hundreds of thousands; readers page.
pub const EVENT_PAGE: u32 = 1000;

/// An audit entry with its id (ordered by time), for paging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: String,
    pub entry: AuditEntry,
}

/// The store's schema, versioned: each migration in `coordinator/migrations` runs once per store, recorded in
/// `_sqlx_migrations`. Add a new file for a change; never edit an applied one.
pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Plan states a restarted coordinator resumes.
pub(super) const LIVE: [PlanState; 4] =
    [PlanState::Pending, PlanState::Running, PlanState::Paused, PlanState::AwaitingApproval];

#[cfg(test)]
#[test]
fn live_states_are_the_live_ones() {
    use PlanState::*;
    for state in [Pending, Running, Paused, AwaitingApproval, Succeeded, Halted, Aborted] {
        assert_eq!(LIVE.contains(&state), state.is_live(), "{state}");
    }
}

/// How many steps of one wave are in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepCount {
    pub wave: u32,
    pub state: StepState,
    pub count: u64,
}

/// A step's result, for [`Store::finish_step`].
#[derive(Debug, Clone)]
pub struct StepFinish {
    pub plan_id: String,
    pub target: String,
    pub token: u64,
    pub state: StepState,
    pub error: Option<String>,
    pub before: Option<Version>,
    pub after: Option<Version>,
    /// The event's detail; `wave` is added from the step.
    pub detail: serde_json::Value,
}

/// A step to assign, for [`Store::assign_steps`].
#[derive(Debug, Clone)]
pub struct Assigning {
    pub target: String,
    /// The fencing token of the lock taken for it.
    pub token: u64,
    /// The `assigned` event's detail.
    pub detail: serde_json::Value,
}

/// A step a check found at its goal, for [`Store::finish_unchanged`].
#[derive(Debug, Clone)]
pub struct Unchanged {
    pub target: String,
    pub before: Option<Version>,
    pub applied: Option<Version>,
}

/// A step its agent started, for [`Store::start_step`].
#[derive(Debug, Clone)]
pub struct Starting {
    pub plan_id: String,
    pub target: String,
    pub token: u64,
    /// The applied version the agent found.
    pub before: Option<Version>,
    /// The `step_started` event's detail; `None` writes no event.
    pub detail: Option<serde_json::Value>,
}

/// One fact an agent reported, for [`Store::record`].
#[derive(Debug, Clone)]
pub enum Fact {
    Event(NewEvent),
    Start(Starting),
    Finish(StepFinish),
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub plan_id: String,
    pub target: Option<String>,
    pub kind: EventKind,
    pub detail: serde_json::Value,
}
