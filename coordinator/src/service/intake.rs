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
        let key = (plan_id.to_string(), target.to_string());
        let step = self.stored_steps(name, &[(plan_id, target)]).await?.remove(&key);
        let step = step.ok_or(ServiceError::StepNotFound { plan_id: key.0, target: key.1 })?;
        Ok(under_token(&step, token).then_some(step))
    }

    /// Records a burst of progress in one write (with whatever else the writer has queued). Starts and events of
    /// steps running under their lock here go as they are; the others (a start that arrives after its step's
    /// result, anything after a coordinator restart) are decided on their steps as stored, read in one query per
    /// plan, so a backlog of late reports does not hold every later one behind a store read each.
    pub async fn progress(&self, who: &Identity, name: &str, batch: Vec<Progress>) -> Result<()> {
        self.check_agent(who, name)?;
        let retries = batch.iter().filter(|p| p.kind == EventKind::LockRetry).count();
        self.metrics.lock_retries.inc_by(retries as u64);
        let current: Vec<bool> = batch.iter().map(|p| self.current(name, &p.plan_id, &p.target, p.token)).collect();
        let unsure: Vec<(&str, &str)> = batch
            .iter()
            .zip(&current)
            .filter(|(_, c)| !**c)
            .map(|(p, _)| (p.plan_id.as_str(), p.target.as_str()))
            .collect();
        let stored = self.stored_steps(name, &unsure).await?;
        let mut facts = Vec::with_capacity(batch.len());
        for (p, current) in batch.into_iter().zip(current) {
            let step = match current {
                true => None,
                false => Some(stored.get(&(p.plan_id.clone(), p.target.clone())).ok_or_else(|| {
                    ServiceError::StepNotFound { plan_id: p.plan_id.clone(), target: p.target.clone() }
                })?),
            };
            facts.extend(progress_fact(p, step));
        }
        if !facts.is_empty() {
            self.commit(facts).await?;
        }
        Ok(())
    }

    /// The steps of `keys` (plan, target) as stored, in one query per plan, once `name` is known to serve each
    /// target; a step the store does not have is left out.
    async fn stored_steps(&self, name: &str, keys: &[(&str, &str)]) -> Result<HashMap<(String, String), Step>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let mut owners: HashMap<String, String> = {
            let inner = self.inner();
            keys.iter().filter_map(|(_, t)| Some((t.to_string(), inner.owners.get(*t)?.clone()))).collect()
        };
        if keys.iter().any(|(_, t)| !owners.contains_key(*t)) {
            owners.extend(self.store.targets().await?.into_iter().map(|t| (t.name, t.agent)));
        }
        let mut by_plan: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for &(plan_id, target) in keys {
            if owners.get(target).map(String::as_str) != Some(name) {
                return Err(ServiceError::NotAllowed(format!("agent `{name}` does not serve target `{target}`")));
            }
            by_plan.entry(plan_id).or_default().push(target);
        }
        let mut steps = HashMap::new();
        for (plan_id, targets) in by_plan {
            for step in self.store.steps_of(plan_id, &targets).await? {
                steps.insert((step.plan_id.clone(), step.target.clone()), step);
            }
        }
        Ok(steps)
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

/// What a progress report becomes. Under the lock held here (`stored` is `None`): a start (the store's
/// compare-and-set on the assigned step and its token makes a late or repeated one write nothing), or an event.
/// Otherwise decided on the step as stored: nothing under another token (a late report) or once the step is done
/// (it would read out of order after the result); a start while the step is assigned; else an event.
fn progress_fact(p: Progress, stored: Option<&Step>) -> Option<Fact> {
    if stored.is_some_and(|step| !under_token(step, p.token) || step.state.is_done()) {
        return None;
    }
    let start = p.kind == EventKind::StepStarted && stored.is_none_or(|s| s.state == StepState::Assigned);
    Some(match start {
        true => Fact::Start(Starting {
            plan_id: p.plan_id,
            target: p.target,
            token: p.token,
            before: p.version_before,
            detail: Some(p.detail),
        }),
        false => Fact::Event(NewEvent { plan_id: p.plan_id, target: Some(p.target), kind: p.kind, detail: p.detail }),
    })
}

/// Whether a report under `token` is the stored step's own; a stale one is logged and ignored.
fn under_token(step: &Step, token: u64) -> bool {
    let current = step.token == Some(token);
    if !current {
        warn!(plan_id = %step.plan_id, target = %step.target, token, stored = ?step.token,
            "ignoring a report under a stale fencing token");
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(kind: EventKind, token: u64) -> Progress {
        Progress {
            plan_id: "p".into(),
            target: "t".into(),
            token,
            kind,
            version_before: None,
            detail: serde_json::Value::Null,
        }
    }

    fn step(state: StepState, token: u64) -> Step {
        Step {
            plan_id: "p".into(),
            target: "t".into(),
            wave: 1,
            state,
            token: Some(token),
            error: None,
            goal: None,
            before: None,
            after: None,
            updated_at: chrono::Utc::now(),
        }
    }

    fn kind_of(fact: Option<Fact>) -> &'static str {
        match fact {
            None => "nothing",
            Some(Fact::Start(_)) => "start",
            Some(Fact::Event(_)) => "event",
            Some(Fact::Finish(_)) => "finish",
        }
    }

    #[test]
    fn reports_under_the_lock_held_here_go_as_they_are() {
        assert_eq!(kind_of(progress_fact(report(EventKind::StepStarted, 3), None)), "start");
        assert_eq!(kind_of(progress_fact(report(EventKind::Statement, 3), None)), "event");
    }

    #[test]
    fn other_reports_are_decided_on_the_stored_step() {
        let started =
            |state, token| kind_of(progress_fact(report(EventKind::StepStarted, 3), Some(&step(state, token))));
        assert_eq!(started(StepState::Assigned, 3), "start");
        assert_eq!(started(StepState::Running, 3), "event", "a repeated start is an event; the step runs already");
        assert_eq!(started(StepState::Succeeded, 3), "nothing", "a start after the result would read out of order");
        assert_eq!(started(StepState::Assigned, 4), "nothing", "a report under an old token is late");
        let statement = |state| kind_of(progress_fact(report(EventKind::Statement, 3), Some(&step(state, 3))));
        assert_eq!(statement(StepState::Running), "event");
        assert_eq!(statement(StepState::Failed), "nothing");
    }
}
