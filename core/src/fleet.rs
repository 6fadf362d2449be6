//! The fleet's domain: targets and label selectors, plans and their state machine, steps, events and the audit
//! log. Pure types and rules; the coordinator's `Store` persists them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Engine, Phase, Version};

/// A database an agent serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub engine: Engine,
    pub labels: BTreeMap<String, String>,
    /// The agent identity that serves it.
    pub agent: String,
}

/// `env=prod,region=eu`: every pair must match; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector(pub BTreeMap<String, String>);

impl FromStr for Selector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut pairs = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("selector part `{part}` is not key=value"))?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() || v.is_empty() {
                return Err(format!("selector part `{part}` has an empty key or value"));
            }
            if pairs.insert(k.to_string(), v.to_string()).is_some() {
                return Err(format!("selector names `{k}` twice"));
            }
        }
        Ok(Selector(pairs))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl Selector {
    pub fn matches(&self, target: &Target) -> bool {
        self.0.iter().all(|(k, v)| target.labels.get(k) == Some(v))
    }
}

/// Where a plan takes its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "direction", rename_all = "lowercase")]
pub enum Goal {
    Up { to: Option<Version> },
    Down { to: Version },
}

macro_rules! string_enum {
    ($name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),* }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err(format!("unknown {} `{other}`", stringify!($name))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(PlanState {
    Pending = "pending",
    Running = "running",
    Paused = "paused",
    AwaitingApproval = "awaiting_approval",
    Succeeded = "succeeded",
    Halted = "halted",
    Aborted = "aborted",
});

string_enum!(StepState {
    Pending = "pending",
    Assigned = "assigned",
    Running = "running",
    Succeeded = "succeeded",
    Failed = "failed",
    Skipped = "skipped",
});

impl PlanState {
    /// Whether the scheduler may still act on a plan in this state (a restarted coordinator resumes these).
    pub fn is_live(self) -> bool {
        matches!(self, PlanState::Pending | PlanState::Running | PlanState::Paused | PlanState::AwaitingApproval)
    }

    /// The plan state machine.
    pub fn can_become(self, next: PlanState) -> bool {
        use PlanState::*;
        matches!(
            (self, next),
            (Pending, Running)
                | (Pending | Running | Paused | AwaitingApproval, Aborted)
                | (Pending | Running | AwaitingApproval, Paused)
                | (Running, AwaitingApproval | Succeeded | Halted)
                | (Paused, Running)
                | (AwaitingApproval, Running)
        )
    }
}

impl StepState {
    pub fn can_become(self, next: StepState) -> bool {
        use StepState::*;
        matches!(
            (self, next),
            (Pending, Assigned | Skipped)
                // A result can arrive before the progress event that said the step started.
                | (Assigned, Running | Pending | Succeeded | Failed)
                | (Running, Succeeded | Failed | Pending)
                // A failed step is retried or, after a rollback decision, skipped.
                | (Failed, Pending | Skipped)
        )
    }

    pub fn is_done(self) -> bool {
        matches!(self, StepState::Succeeded | StepState::Failed | StepState::Skipped)
    }
}

/// One entry of a wave list: `1` (a count), `10%` (a share of all targets; counts and shares are cumulative), or
/// `label:region=eu` (every target not yet in a wave that matches).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveSpec {
    Count(u32),
    Percent(u32),
    Label(Selector),
}

impl FromStr for WaveSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(sel) = s.strip_prefix("label:") {
            let sel: Selector = sel.parse()?;
            if sel.0.is_empty() {
                return Err(format!("wave `{s}` has an empty label selector"));
            }
            return Ok(WaveSpec::Label(sel));
        }
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(WaveSpec::Percent(p)),
                _ => Err(format!("wave `{s}` is not a percentage from 1% to 100%")),
            };
        }
        match s.parse::<u32>() {
            Ok(n) if n > 0 => Ok(WaveSpec::Count(n)),
            _ => Err(format!("wave `{s}` is not a count (`5`), a share (`10%`) or a label (`label:region=eu`)")),
        }
    }
}

impl fmt::Display for WaveSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSpec::Count(n) => write!(f, "{n}"),
            WaveSpec::Percent(p) => write!(f, "{p}%"),
            WaveSpec::Label(s) => write!(f, "label:{s}"),
        }
    }
}

string_enum!(OnFailure {
    Halt = "halt",
    RollbackFailed = "rollback-failed",
    RollbackPlan = "rollback-plan",
});

/// How a plan rolls out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Strategy {
    pub waves: Vec<WaveSpec>,
    /// Steps running at once within a wave.
    pub max_parallel: u32,
    /// Failed targets a wave tolerates; one more halts the plan (and applies `on_failure`).
    pub max_failures: u32,
    /// Wait for `approve` before each wave after the first.
    pub approve_waves: bool,
    pub on_failure: OnFailure,
    /// Steps running at once on one database server (a target's `host` label), across plans; `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_host: Option<u32>,
    /// Lock and statement timeouts, and lock-timeout retries, for migrations that set none of their own.
    #[serde(default)]
    pub timeouts: crate::migration::Timeouts,
    /// Each target's pending migrations in one transaction, all or none (`PlanOptions::group`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub group: bool,
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            waves: vec![WaveSpec::Percent(100)],
            max_parallel: 10,
            max_failures: 0,
            approve_waves: false,
            on_failure: OnFailure::Halt,
            max_per_host: None,
            timeouts: crate::migration::Timeouts::default(),
            group: false,
        }
    }
}

/// Puts each target (sorted by name) in a wave, numbered from 1. Empty waves are dropped; targets no wave took go in
/// a last wave. Wave 0 is for validation (`validate_on`).
pub fn assign_waves(targets: &[Target], specs: &[WaveSpec]) -> Vec<(String, u32)> {
    let mut names: Vec<&Target> = targets.iter().collect();
    names.sort_by(|a, b| a.name.cmp(&b.name));
    let total = names.len();
    let mut taken = vec![false; total];
    let mut out = Vec::with_capacity(total);
    let mut wave = 0u32;
    let mut placed = 0usize;
    for spec in specs {
        let members: Vec<usize> = match spec {
            WaveSpec::Label(sel) => (0..total).filter(|&i| !taken[i] && sel.matches(names[i])).collect(),
            WaveSpec::Count(_) | WaveSpec::Percent(_) => {
                let upto = match spec {
                    WaveSpec::Count(n) => *n as usize,
                    WaveSpec::Percent(p) => (total * *p as usize).div_ceil(100),
                    WaveSpec::Label(_) => 0,
                };
                let want = upto.min(total).saturating_sub(placed);
                (0..total).filter(|&i| !taken[i]).take(want).collect()
            }
        };
        if members.is_empty() {
            continue;
        }
        wave += 1;
        for i in members {
            taken[i] = true;
            placed += 1;
            out.push((names[i].name.clone(), wave));
        }
    }
    if placed < total {
        wave += 1;
        out.extend((0..total).filter(|&i| !taken[i]).map(|i| (names[i].name.clone(), wave)));
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    /// Content address (SHA-256) of the migration bundle.
    pub bundle: String,
    pub selector: Selector,
    pub goal: Goal,
    pub strategy: Strategy,
    /// Expand/contract: run only this phase.
    pub phase: Option<Phase>,
    /// Set on a rollback plan: the plan it undoes.
    pub rollback_of: Option<String>,
    /// The highest wave an operator approved (with `approve_waves`).
    pub approved_wave: u32,
    pub state: PlanState,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub plan_id: String,
    pub target: String,
    pub wave: u32,
    pub state: StepState,
    /// Fencing token of the lock under which the step was assigned.
    pub token: Option<u64>,
    pub error: Option<String>,
    /// Where this target goes when it differs from the plan's goal (rollback plans: the version it had before).
    pub goal: Option<Goal>,
    /// The applied version before and after the step, as the agent read them from the history table.
    pub before: Option<Version>,
    pub after: Option<Version>,
    pub updated_at: DateTime<Utc>,
}

/// What an event says happened: the one vocabulary the coordinator writes, the watch stream carries, the agent
/// reports progress in and the CLI reads. Unknown kinds are refused where they come in, never defaulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    // A plan's life.
    Submitted,
    Started,
    AwaitingApproval,
    Approved,
    Paused,
    Resumed,
    Aborted,
    Halted,
    Finished,
    RollbackCreated,
    RollbackLeftAlone,
    // A step's life.
    Assigned,
    StepStarted,
    Reconcile,
    Succeeded,
    Failed,
    // Progress inside a step, from its agent.
    MigrationStarted,
    Statement,
    Batch,
    MigrationFinished,
    MigrationFailed,
    /// A statement gave up waiting for a lock; the migration was rolled back and runs again after a pause.
    LockRetry,
    /// A health check (replication lag, a query over its limit) holds the migration.
    Throttled,
}

impl EventKind {
    pub const ALL: [EventKind; 23] = [
        EventKind::Submitted,
        EventKind::Started,
        EventKind::AwaitingApproval,
        EventKind::Approved,
        EventKind::Paused,
        EventKind::Resumed,
        EventKind::Aborted,
        EventKind::Halted,
        EventKind::Finished,
        EventKind::RollbackCreated,
        EventKind::RollbackLeftAlone,
        EventKind::Assigned,
        EventKind::StepStarted,
        EventKind::Reconcile,
        EventKind::Succeeded,
        EventKind::Failed,
        EventKind::MigrationStarted,
        EventKind::Statement,
        EventKind::Batch,
        EventKind::MigrationFinished,
        EventKind::MigrationFailed,
        EventKind::LockRetry,
        EventKind::Throttled,
    ];

    pub fn as_str(self) -> &'static str {
        use EventKind::*;
        match self {
            Submitted => "submitted",
            Started => "started",
            AwaitingApproval => "awaiting_approval",
            Approved => "approved",
            Paused => "paused",
            Resumed => "resumed",
            Aborted => "aborted",
            Halted => "halted",
            Finished => "finished",
            RollbackCreated => "rollback_created",
            RollbackLeftAlone => "rollback_left_alone",
            Assigned => "assigned",
            StepStarted => "step_started",
            Reconcile => "reconcile",
            Succeeded => "succeeded",
            Failed => "failed",
            MigrationStarted => "migration_started",
            Statement => "statement",
            Batch => "batch",
            MigrationFinished => "migration_finished",
            MigrationFailed => "migration_failed",
            LockRetry => "lock_retry",
            Throttled => "throttled",
        }
    }

    /// The plan is over after this event: a watch ends on it.
    pub fn ends_plan(self) -> bool {
        matches!(self, EventKind::Finished | EventKind::Halted | EventKind::Aborted)
    }

    /// Progress an agent may report about its step (anything else on the progress stream is refused).
    pub fn is_progress(self) -> bool {
        use EventKind::*;
        matches!(
            self,
            StepStarted
                | MigrationStarted
                | Statement
                | Batch
                | MigrationFinished
                | MigrationFailed
                | LockRetry
                | Throttled
        )
    }

    /// Per-statement and per-migration detail: a watch shows it with `-v`.
    pub fn is_detail(self) -> bool {
        use EventKind::*;
        matches!(self, Statement | Batch | MigrationStarted | MigrationFinished)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| format!("unknown event kind `{s}`"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub plan_id: String,
    /// Per plan, from 1, without gaps.
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub target: Option<String>,
    pub kind: EventKind,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    /// Identity from the caller's certificate.
    pub actor: String,
    pub action: String,
    pub plan_id: Option<String>,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_round_trip_and_unknown_ones_are_refused() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str(), "JSON names the kind as the store does");
        }
        let names: std::collections::HashSet<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), EventKind::ALL.len(), "no two kinds share a name");
        assert!("pause".parse::<EventKind>().is_err(), "an action is not an event");
        assert!("".parse::<EventKind>().is_err());
        assert!(EventKind::Aborted.ends_plan() && !EventKind::Paused.ends_plan());
        assert!(EventKind::StepStarted.is_progress() && !EventKind::Started.is_progress());
    }

    fn target(labels: &[(&str, &str)]) -> Target {
        Target {
            name: "db1".into(),
            engine: Engine::Postgres,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            agent: "agent-1".into(),
        }
    }

    #[test]
    fn selectors() {
        let s: Selector = "env=prod, region=eu".parse().unwrap();
        assert!(s.matches(&target(&[("env", "prod"), ("region", "eu"), ("tier", "1")])));
        assert!(!s.matches(&target(&[("env", "prod")])));
        assert!(Selector::default().matches(&target(&[])));
        assert_eq!(s.to_string(), "env=prod,region=eu");
        for bad in ["env", "=prod", "env=", "env=a,env=b"] {
            assert!(bad.parse::<Selector>().is_err(), "{bad}");
        }
    }

    fn named(n: usize) -> Vec<Target> {
        (0..n)
            .map(|i| Target {
                name: format!("db{i:02}"),
                engine: Engine::Postgres,
                labels: [("region".to_string(), if i % 3 == 0 { "eu" } else { "us" }.to_string())].into(),
                agent: "a".into(),
            })
            .collect()
    }

    fn sizes(assigned: &[(String, u32)]) -> Vec<usize> {
        let waves = assigned.iter().map(|(_, w)| *w).max().unwrap_or(0);
        (1..=waves).map(|w| assigned.iter().filter(|(_, x)| *x == w).count()).collect()
    }

    #[test]
    fn waves_are_cumulative_and_cover_every_target() {
        let specs: Vec<WaveSpec> = ["1", "10%", "50%", "100%"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(sizes(&assign_waves(&named(30), &specs)), vec![1, 2, 12, 15]);
        assert_eq!(sizes(&assign_waves(&named(3), &specs)), vec![1, 1, 1], "empty waves are dropped");
        let partial: Vec<WaveSpec> = vec!["2".parse().unwrap()];
        assert_eq!(sizes(&assign_waves(&named(5), &partial)), vec![2, 3], "the rest go in a last wave");
        let by_label: Vec<WaveSpec> = vec!["label:region=eu".parse().unwrap(), "100%".parse().unwrap()];
        let assigned = assign_waves(&named(9), &by_label);
        assert_eq!(sizes(&assigned), vec![3, 6]);
        assert!(assigned.iter().filter(|(_, w)| *w == 1).all(|(n, _)| ["db00", "db03", "db06"].contains(&n.as_str())));
        for bad in ["0", "0%", "101%", "x", "label:", "label:region"] {
            assert!(bad.parse::<WaveSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn plan_state_machine() {
        use PlanState::*;
        assert!(Pending.can_become(Running));
        assert!(Running.can_become(Paused) && Paused.can_become(Running));
        assert!(Running.can_become(AwaitingApproval) && AwaitingApproval.can_become(Running));
        assert!(Paused.can_become(Aborted));
        for terminal in [Succeeded, Halted, Aborted] {
            assert!(!terminal.is_live());
            for next in [Pending, Running, Paused, AwaitingApproval, Succeeded, Halted, Aborted] {
                assert!(!terminal.can_become(next), "{terminal} → {next}");
            }
        }
        assert!(!Pending.can_become(Succeeded));
        assert_eq!("awaiting_approval".parse::<PlanState>().unwrap(), AwaitingApproval);
        assert!("sleeping".parse::<PlanState>().is_err());
    }

    #[test]
    fn step_state_machine() {
        use StepState::*;
        assert!(Pending.can_become(Assigned) && Assigned.can_become(Running) && Running.can_become(Succeeded));
        assert!(Running.can_become(Pending), "a lost lease sends a running step back for reconciliation");
        assert!(!Succeeded.can_become(Running) && !Pending.can_become(Succeeded));
    }
}
