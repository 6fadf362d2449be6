//! Rollback plans: every touched target back to the version its step found, never below.

use chrono::Utc;
use flotilla_core::fleet::{EventKind, Goal, OnFailure, Plan, PlanState, Step, StepState, Strategy};
use serde_json::json;

use super::*;
use crate::identity::Identity;

impl Coordinator {
    /// `rollback PLAN`: a plan taking every target `id` touched back to the version it had, in reverse wave order.
    pub async fn rollback(&self, who: &Identity, id: &str) -> Result<PlanView> {
        self.allow(who, crate::identity::Permission::Change, "roll back a plan", Some(id)).await?;
        let view = self.view(id).await?;
        if view.steps.iter().any(|s| matches!(s.state, StepState::Assigned | StepState::Running)) {
            return Err(ServiceError::Refused(format!(
                "plan `{id}` has steps running; pause or abort it and wait for them to finish"
            )));
        }
        if view.plan.state.is_live() && view.plan.state != PlanState::Paused {
            return Err(ServiceError::Refused(format!("plan `{id}` is {}; pause or abort it first", view.plan.state)));
        }
        let plan = self.rollback_touched(&view.plan).await?.ok_or_else(|| {
            let unknown = unknown_before(&view.steps);
            ServiceError::Refused(if unknown.is_empty() {
                format!("plan `{id}` changed no target, so there is nothing to roll back")
            } else {
                format!(
                    "plan `{id}` changed no target it knows the prior version of, so there is nothing to roll back; \
                     left alone because their version before the plan was never read: {}",
                    unknown.join(", ")
                )
            })
        })?;
        self.audit(who, "rollback", Some(id), format!("rollback plan {}", plan.plan.id)).await?;
        Ok(plan)
    }

    /// Creates and starts a rollback plan for every target `original` touched; `None` if it touched none.
    pub(crate) async fn rollback_touched(&self, original: &Plan) -> Result<Option<PlanView>> {
        let ran: Vec<String> = self
            .store
            .steps(&original.id)
            .await?
            .into_iter()
            .filter(|s| s.before.is_some() || matches!(s.state, StepState::Failed | StepState::Succeeded))
            .map(|s| s.target)
            .collect();
        if ran.is_empty() {
            return Ok(None);
        }
        self.rollback_targets(original, &ran).await
    }

    /// Creates and starts a rollback plan for `targets` of `original`: each down to the version its step found.
    /// Targets whose version before is unknown are left alone (an event says so); `None` if that leaves none.
    pub(crate) async fn rollback_targets(&self, original: &Plan, targets: &[String]) -> Result<Option<PlanView>> {
        let steps = self.store.steps(&original.id).await?;
        let last = steps.iter().map(|s| s.wave).max().unwrap_or(0);
        let id = rollback_id(original, targets);
        let now = Utc::now();
        let chosen: Vec<Step> = steps.iter().filter(|s| targets.contains(&s.target)).cloned().collect();
        // Only down to a version the target was seen at: a target whose prior version is unknown (its step failed
        // before it read the history) is left alone, never taken down to 0.
        let rb_steps: Vec<Step> = chosen
            .iter()
            .filter_map(|s| {
                let before = s.before?;
                Some(new_step(&id, &s.target, last - s.wave + 1, Some(Goal::Down { to: before }), now))
            })
            .collect();
        let unknown = unknown_before(&chosen);
        if !unknown.is_empty() {
            let reason = "the version before the plan was never read, so a rollback would not know where to stop";
            self.event(
                &original.id,
                None,
                EventKind::RollbackLeftAlone,
                json!({ "targets": unknown, "reason": reason }),
            )
            .await?;
        }
        if rb_steps.is_empty() {
            return Ok(None);
        }
        let plan = Plan {
            id: id.clone(),
            bundle: original.bundle.clone(),
            selector: original.selector.clone(),
            goal: Goal::Down {
                to: rb_steps
                    .iter()
                    .filter_map(|s| match s.goal {
                        Some(Goal::Down { to }) => Some(to),
                        _ => None,
                    })
                    .min()
                    .unwrap_or_default(),
            },
            strategy: Strategy {
                waves: original.strategy.waves.clone(),
                max_parallel: original.strategy.max_parallel,
                max_failures: u32::MAX,
                approve_waves: false,
                on_failure: OnFailure::Halt,
                // A rollback takes the same care of the servers and the applications as the rollout did.
                max_per_host: original.strategy.max_per_host,
                timeouts: original.strategy.timeouts,
                // Each DOWN on its own, even after a grouped rollout: a group is refused where one DOWN cannot run
                // in a transaction (MongoDB's drops), and a rollback must go wherever it can.
                group: false,
            },
            phase: None,
            rollback_of: Some(original.id.clone()),
            approved_wave: 0,
            state: PlanState::Pending,
            created_at: now,
        };
        self.store.create_plan(&plan, &rb_steps).await?;
        self.event(&original.id, None, EventKind::RollbackCreated, json!({ "plan": id, "targets": rb_steps.len() }))
            .await?;
        self.event(&id, None, EventKind::Submitted, json!({ "rollback_of": original.id, "targets": rb_steps.len() }))
            .await?;
        self.wake.notify_one();
        Ok(Some(PlanView { plan, steps: rb_steps }))
    }
}

/// A rollback plan's id: the original's and 8 hex digits, never built from a target's name (names may be as long as
/// the store allows; ids must fit 64 characters). `rollback-failed` derives the digits from the target, so one
/// failed target has one rollback plan.
fn rollback_id(original: &Plan, targets: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let suffix = if targets.len() == 1 && original.strategy.on_failure == OnFailure::RollbackFailed {
        hex::encode(&Sha256::digest(targets[0].as_bytes())[..4])
    } else {
        format!("{:08x}", rand::random::<u32>())
    };
    format!("{}-rb-{suffix}", original.id)
}

/// Targets whose step ran or failed without ever reading the target's history: a rollback leaves them alone.
fn unknown_before(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter(|s| s.before.is_none() && matches!(s.state, StepState::Failed | StepState::Succeeded))
        .map(|s| s.target.clone())
        .collect()
}
