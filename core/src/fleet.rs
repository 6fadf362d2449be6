//! The fleet's domain: targets and label selectors, plans and their state machine, steps, events and the audit
//! log. Pure types and rules; the coordinator's `Store` persists them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Engine;

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
    Up { to: Option<i64> },
    Down { to: i64 },
}

macro_rules! string_enum {
    ($name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),* }

        impl $name {
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
                | (Running, Paused | AwaitingApproval | Succeeded | Halted)
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
                | (Assigned, Running | Pending | Failed)
                | (Running, Succeeded | Failed | Pending)
                // A failed step is retried or, after a rollback decision, skipped.
                | (Failed, Pending | Skipped)
        )
    }

    pub fn is_done(self) -> bool {
        matches!(self, StepState::Succeeded | StepState::Failed | StepState::Skipped)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub id: String,
    /// Content address (SHA-256) of the migration bundle.
    pub bundle: String,
    pub selector: Selector,
    pub goal: Goal,
    /// The strategy (waves, parallelism, failure budget, approvals, on-failure policy), as the scheduler reads it.
    pub strategy: serde_json::Value,
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
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub plan_id: String,
    /// Per plan, from 1, without gaps.
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub target: Option<String>,
    pub kind: String,
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
