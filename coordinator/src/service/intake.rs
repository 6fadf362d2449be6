//! What agents report about their steps: progress bursts and results, each one fact, written by the coordinator's
//! writer together with whatever else is queued.

use std::time::Instant;

use flotilla_core::fleet::{EventKind, OnFailure, Step, StepState};
use serde_json::json;
use tracing::{info, warn};

use super::*;
use crate::identity::Identity;
use crate::metrics::{EngineDirection, StepOutcome};
use crate::store::{Fact, NewEvent, Starting, StepFinish};

impl Coordinator {
    /// The target's step in `plan_id`, if `name` serves the target and the token is the step's current one.
    pub(super) async fn owned_step(
        &self,
        who: &Identity,
        name: &str,
        plan_id: &str,
        target: &str,
        token: u64,
    ) -> Result<Option<Step>> {
        self.check_agent(who, name)?;
        let owner = self.inner().owners.get(target).cloned();
        let owner = match owner {
            Some(owner) => Some(owner),
            None => self.store.targets().await?.into_iter().find(|t| t.name == target).map(|t| t.agent),
        };
        if owner.as_deref() != Some(name) {
            return Err(ServiceError::NotAllowed(format!("agent `{name}` does not serve target `{target}`")));
        }
        match self.store.step(plan_id, target).await? {
            None => Err(ServiceError::StepNotFound { plan_id: plan_id.to_string(), target: target.to_string() }),
            Some(s) if s.token != Some(token) => {
                warn!(plan_id, target, token, current = ?s.token, "ignoring a report under a stale fencing token");
                Ok(None)
            }
            Some(s) => Ok(Some(s)),
        }
    }

    /// Records a burst of progress: the events and starts of steps running under their current lock here in one
    /// write (with whatever else the writer has queued); anything else checked against the store first.
    pub async fn progress(&self, who: &Identity, name: &str, batch: Vec<Progress>) -> Result<()> {
        self.check_agent(who, name)?;
        let mut fast = Vec::with_capacity(batch.len());
        let retries = batch.iter().filter(|p| p.kind == EventKind::LockRetry).count();
        self.metrics.lock_retries.inc_by(retries as u64);
        for p in batch {
            if self.current(name, &p.plan_id, &p.target, p.token) {
                // The compare-and-set (assigned, under this token) is the only check a start needs here; a late or
                // repeated start writes nothing.
                fast.push(if p.kind == EventKind::StepStarted {
                    Fact::Start(Starting {
                        plan_id: p.plan_id,
                        target: p.target,
                        token: p.token,
                        before: p.version_before,
                        detail: Some(p.detail),
                    })
                } else {
                    Fact::Event(NewEvent { plan_id: p.plan_id, target: Some(p.target), kind: p.kind, detail: p.detail })
                });
            } else {
                if !fast.is_empty() {
                    self.commit(std::mem::take(&mut fast)).await?;
                }
                self.progress_checked(who, name, p).await?;
            }
        }
        if !fast.is_empty() {
            self.commit(fast).await?;
        }
        Ok(())
    }

    /// A step's result in the metrics: finished by engine, direction and result, and its time since assignment.
    fn count_finished(&self, o: &Outcome) {
        let engine = self.engine_of(&o.target);
        let down = matches!((o.version_before, o.applied_version), (Some(before), Some(after)) if after < before);
        let direction = if down { "down" } else { "up" }.to_string();
        let result = if o.error.is_some() { "failed" } else { "succeeded" }.to_string();
        let labels = StepOutcome { engine: engine.clone(), direction: direction.clone(), result };
        self.metrics.steps_finished.get_or_create(&labels).inc();
        if let Some(at) = self.assigned_at(&o.plan_id, &o.target) {
            let labels = EngineDirection { engine, direction };
            self.metrics.step_duration.get_or_create(&labels).observe(at.elapsed().as_secs_f64());
        }
    }

    /// The common case, checked in memory: the step's lock is held here under this token, for this agent.
    fn current(&self, name: &str, plan_id: &str, target: &str, token: u64) -> bool {
        self.held_lease(plan_id, target).is_some_and(|l| l.token == token)
            && self.inner().owners.get(target).is_some_and(|owner| owner == name)
    }

    /// One progress event, checked against the store.
    pub(super) async fn progress_checked(&self, who: &Identity, name: &str, p: Progress) -> Result<()> {
        let Some(step) = self.owned_step(who, name, &p.plan_id, &p.target, p.token).await? else { return Ok(()) };
        if step.state.is_done() {
            // Progress that arrives after the step's result adds nothing, and would read out of order.
            return Ok(());
        }
        if p.kind == EventKind::StepStarted && step.state == StepState::Assigned {
            let start = Starting {
                plan_id: p.plan_id,
                target: p.target,
                token: p.token,
                before: p.version_before,
                detail: Some(p.detail),
            };
            self.commit(vec![Fact::Start(start)]).await?;
            return Ok(());
        }
        self.event(&p.plan_id, Some(&p.target), p.kind, p.detail).await
    }

    /// A step's result: recorded in one store transaction if the step is still in flight under the report's
    /// token; a late or repeated report is acknowledged and ignored, so the agent stops sending it.
    pub async fn result(&self, who: &Identity, name: &str, o: Outcome) -> Result<()> {
        // Under the lock held here for this agent's step, the store's compare-and-set on the token is the only check
        // needed; anything else (a coordinator restart, a late report) is checked against the store first.
        self.check_agent(who, name)?;
        if !self.current(name, &o.plan_id, &o.target, o.token)
            && self.owned_step(who, name, &o.plan_id, &o.target, o.token).await?.is_none()
        {
            return Ok(());
        }
        let to = if o.error.is_some() { StepState::Failed } else { StepState::Succeeded };
        let finish = StepFinish {
            plan_id: o.plan_id.clone(),
            target: o.target.clone(),
            token: o.token,
            state: to,
            error: o.error.clone(),
            before: o.version_before,
            after: o.applied_version,
            detail: json!({
                "version_before": o.version_before, "applied_version": o.applied_version, "dirty": o.dirty,
                "error": o.error,
            }),
        };
        if !self.commit(vec![Fact::Finish(finish)]).await?.first().copied().unwrap_or(false) {
            info!(plan_id = %o.plan_id, target = %o.target, token = o.token, "a late or repeated result, acknowledged");
            return Ok(());
        }
        if let Some(applied) = o.applied_version {
            self.inner().live.insert(
                o.target.clone(),
                TargetLive { applied: Some(applied), dirty: o.dirty, reported: Instant::now() },
            );
        }
        self.count_finished(&o);
        self.release(&o.plan_id, &o.target).await;
        if o.error.is_some() {
            let plan = self.store.plan(&o.plan_id).await?;
            if let Some(plan) = plan.filter(|p| p.strategy.on_failure == OnFailure::RollbackFailed) {
                self.rollback_targets(&plan, std::slice::from_ref(&o.target)).await?;
            }
        }
        self.wake.notify_one();
        Ok(())
    }
}
