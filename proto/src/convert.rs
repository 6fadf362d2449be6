//! The one place proto values become domain values and back, for the coordinator, the agent and the CLI alike.
//!
//! Every enum on the wire is an `i32`: a value this build does not know, or an unspecified one where a value is
//! required, is a [`ConvertError`] naming the field, never a default.

use flotilla_core::fleet::{EventKind, Goal, OnFailure, PlanState, StepState};
use flotilla_core::{Direction, Engine, Phase, Version};

use crate::v1 as pb;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("{field} is required")]
    Missing { field: &'static str },
    #[error("{field}: {value} is not a value this build knows")]
    Unknown { field: &'static str, value: i32 },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Both directions between a domain enum and a proto enum, variant for variant; the proto's unspecified value and
/// unknown numbers are refused.
macro_rules! one_for_one {
    ($read:ident, $domain:ty, $proto:ty, $field:literal, { $($d:ident <=> $p:ident),* $(,)? }) => {
        impl From<$domain> for $proto {
            fn from(value: $domain) -> Self {
                match value { $(<$domain>::$d => <$proto>::$p),* }
            }
        }

        #[doc = concat!("The `", $field, "` of a message: refused when unspecified or unknown.")]
        pub fn $read(value: i32) -> Result<$domain, ConvertError> {
            match <$proto>::try_from(value) {
                $(Ok(<$proto>::$p) => Ok(<$domain>::$d),)*
                Ok(_) => Err(ConvertError::Missing { field: $field }),
                Err(_) => Err(ConvertError::Unknown { field: $field, value }),
            }
        }
    };
}

one_for_one!(engine, Engine, pb::Engine, "engine", {
    Postgres <=> Postgres, Mysql <=> Mysql, Sqlite <=> Sqlite, Mongodb <=> Mongodb,
});

one_for_one!(direction, Direction, pb::Direction, "direction", { Up <=> Up, Down <=> Down });

one_for_one!(plan_state, PlanState, pb::PlanState, "plan state", {
    Pending <=> Pending,
    Running <=> Running,
    Paused <=> Paused,
    AwaitingApproval <=> AwaitingApproval,
    Succeeded <=> Succeeded,
    Halted <=> Halted,
    Aborted <=> Aborted,
});

one_for_one!(step_state, StepState, pb::StepState, "step state", {
    Pending <=> Pending,
    Assigned <=> Assigned,
    Running <=> Running,
    Succeeded <=> Succeeded,
    Failed <=> Failed,
    Skipped <=> Skipped,
});

one_for_one!(event_kind, EventKind, pb::EventKind, "event kind", {
    Submitted <=> Submitted,
    Started <=> Started,
    AwaitingApproval <=> AwaitingApproval,
    Approved <=> Approved,
    Paused <=> Paused,
    Resumed <=> Resumed,
    Aborted <=> Aborted,
    Halted <=> Halted,
    Finished <=> Finished,
    RollbackCreated <=> RollbackCreated,
    RollbackLeftAlone <=> RollbackLeftAlone,
    Assigned <=> Assigned,
    StepStarted <=> StepStarted,
    Reconcile <=> Reconcile,
    Succeeded <=> Succeeded,
    Failed <=> Failed,
    MigrationStarted <=> MigrationStarted,
    Statement <=> Statement,
    Batch <=> Batch,
    MigrationFinished <=> MigrationFinished,
    MigrationFailed <=> MigrationFailed,
    LockRetry <=> LockRetry,
    Throttled <=> Throttled,
});

/// A phase, where unspecified means every migration, whatever its phase.
pub fn phase(value: i32) -> Result<Option<Phase>, ConvertError> {
    match pb::Phase::try_from(value) {
        Ok(pb::Phase::Unspecified) => Ok(None),
        Ok(pb::Phase::Expand) => Ok(Some(Phase::Expand)),
        Ok(pb::Phase::Contract) => Ok(Some(Phase::Contract)),
        Err(_) => Err(ConvertError::Unknown { field: "phase", value }),
    }
}

pub fn phase_to_proto(phase: Option<Phase>) -> pb::Phase {
    match phase {
        None => pb::Phase::Unspecified,
        Some(Phase::Expand) => pb::Phase::Expand,
        Some(Phase::Contract) => pb::Phase::Contract,
    }
}

/// What to do when a wave fails, where unspecified is the default: halt.
pub fn on_failure(value: i32) -> Result<OnFailure, ConvertError> {
    use pb::strategy::OnFailure as P;
    match P::try_from(value) {
        Ok(P::Unspecified | P::Halt) => Ok(OnFailure::Halt),
        Ok(P::RollbackFailed) => Ok(OnFailure::RollbackFailed),
        Ok(P::RollbackPlan) => Ok(OnFailure::RollbackPlan),
        Err(_) => Err(ConvertError::Unknown { field: "on_failure", value }),
    }
}

impl From<OnFailure> for pb::strategy::OnFailure {
    fn from(value: OnFailure) -> Self {
        match value {
            OnFailure::Halt => pb::strategy::OnFailure::Halt,
            OnFailure::RollbackFailed => pb::strategy::OnFailure::RollbackFailed,
            OnFailure::RollbackPlan => pb::strategy::OnFailure::RollbackPlan,
        }
    }
}

impl From<Goal> for pb::Goal {
    fn from(goal: Goal) -> Self {
        let (direction, version) = match goal {
            Goal::Up { to } => (Direction::Up, to.unwrap_or(Version::ZERO)),
            Goal::Down { to } => (Direction::Down, to),
        };
        pb::Goal { direction: pb::Direction::from(direction) as i32, version: version.to_string() }
    }
}

/// A goal: required, its direction known and its version a version (0 or empty up: everything pending; 0 down:
/// everything).
pub fn goal(goal: Option<pb::Goal>) -> Result<Goal, ConvertError> {
    let goal = goal.ok_or(ConvertError::Missing { field: "goal" })?;
    let to = if goal.version.is_empty() { Version::ZERO } else { version("goal", &goal.version)? };
    Ok(match direction(goal.direction)? {
        Direction::Up => Goal::Up { to: (!to.is_zero()).then_some(to) },
        Direction::Down => Goal::Down { to },
    })
}

/// A version on the wire: a string of up to 38 digits.
pub fn version(field: &'static str, text: &str) -> Result<Version, ConvertError> {
    text.parse().map_err(|reason| ConvertError::Invalid { field, reason })
}

/// A version that may be absent (unknown).
pub fn optional_version(field: &'static str, text: Option<&str>) -> Result<Option<Version>, ConvertError> {
    text.map(|t| version(field, t)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNKNOWN: i32 = 999;

    /// Every variant of a domain enum survives the trip out and back; 0 and an unknown number are refused.
    fn round_trips<D, P>(all: &[D], read: fn(i32) -> Result<D, ConvertError>)
    where
        D: Copy + PartialEq + std::fmt::Debug,
        P: From<D> + Into<i32>,
    {
        for &d in all {
            assert_eq!(read(P::from(d).into()), Ok(d));
        }
        assert!(matches!(read(0), Err(ConvertError::Missing { .. })), "unspecified must be refused");
        assert!(matches!(read(UNKNOWN), Err(ConvertError::Unknown { value: UNKNOWN, .. })));
    }

    #[test]
    fn engines_round_trip_and_unknown_ones_are_refused() {
        round_trips::<_, pb::Engine>(&Engine::ALL, engine);
    }

    #[test]
    fn directions_round_trip_and_unknown_ones_are_refused() {
        round_trips::<_, pb::Direction>(&[Direction::Up, Direction::Down], direction);
    }

    #[test]
    fn plan_states_round_trip_and_unknown_ones_are_refused() {
        use PlanState::*;
        round_trips::<_, pb::PlanState>(
            &[Pending, Running, Paused, AwaitingApproval, Succeeded, Halted, Aborted],
            plan_state,
        );
    }

    #[test]
    fn step_states_round_trip_and_unknown_ones_are_refused() {
        use StepState::*;
        round_trips::<_, pb::StepState>(&[Pending, Assigned, Running, Succeeded, Failed, Skipped], step_state);
    }

    #[test]
    fn every_event_kind_round_trips_and_unknown_ones_are_refused() {
        round_trips::<_, pb::EventKind>(&EventKind::ALL, event_kind);
        // The proto has no kind the domain lacks.
        let numbered = (1..100).filter(|&n| pb::EventKind::try_from(n).is_ok()).count();
        assert_eq!(numbered, EventKind::ALL.len());
    }

    #[test]
    fn phases_round_trip_with_unspecified_meaning_every_migration() {
        for p in [None, Some(Phase::Expand), Some(Phase::Contract)] {
            assert_eq!(phase(phase_to_proto(p) as i32), Ok(p));
        }
        assert_eq!(phase(0), Ok(None));
        assert_eq!(phase(UNKNOWN), Err(ConvertError::Unknown { field: "phase", value: UNKNOWN }));
    }

    #[test]
    fn on_failure_round_trips_and_unspecified_is_halt() {
        for f in [OnFailure::Halt, OnFailure::RollbackFailed, OnFailure::RollbackPlan] {
            assert_eq!(on_failure(pb::strategy::OnFailure::from(f) as i32), Ok(f));
        }
        assert_eq!(on_failure(0), Ok(OnFailure::Halt));
        assert!(matches!(on_failure(UNKNOWN), Err(ConvertError::Unknown { .. })));
    }

    #[test]
    fn goals_round_trip_and_bad_ones_are_refused() {
        let long: Version = "20240115093000000001".parse().unwrap();
        let v = |n: u32| Version::from(n);
        for g in [
            Goal::Up { to: None },
            Goal::Up { to: Some(v(7)) },
            Goal::Up { to: Some(long) },
            Goal::Down { to: v(0) },
            Goal::Down { to: long },
        ] {
            assert_eq!(goal(Some(g.into())), Ok(g));
        }
        assert_eq!(
            goal(Some(pb::Goal { direction: pb::Direction::Up as i32, version: String::new() })),
            Ok(Goal::Up { to: None })
        );
        assert_eq!(goal(None), Err(ConvertError::Missing { field: "goal" }));
        for bad in ["-1", "1.5", "x", &"9".repeat(39)] {
            let bad = pb::Goal { direction: pb::Direction::Up as i32, version: bad.to_string() };
            assert!(matches!(goal(Some(bad)), Err(ConvertError::Invalid { field: "goal", .. })));
        }
        let unknown = pb::Goal { direction: UNKNOWN, version: "1".into() };
        assert!(matches!(goal(Some(unknown)), Err(ConvertError::Unknown { field: "direction", .. })));
        let unspecified = pb::Goal { direction: 0, version: "1".into() };
        assert!(matches!(goal(Some(unspecified)), Err(ConvertError::Missing { field: "direction" })));
    }
}
