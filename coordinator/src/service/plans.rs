//! Reading plans, and the operator actions on them (pause, resume, abort, approve).

use flotilla_core::fleet::{EventKind, PlanState};
use serde_json::json;

use super::*;
use crate::identity::Identity;

impl Coordinator {
    /// Every plan with its step counts: two queries, however many plans and steps.
    pub async fn plans(&self, who: &Identity) -> Result<Vec<PlanOverview>> {
        self.allow(who, crate::identity::Permission::Read, "list plans", None).await?;
        let mut counts = self.store.all_step_counts().await?;
        Ok(self
            .store
            .plans()
            .await?
            .into_iter()
            .map(|plan| PlanOverview { counts: counts.remove(&plan.id).unwrap_or_default(), plan })
            .collect())
    }

    pub async fn plan(&self, who: &Identity, id: &str) -> Result<PlanView> {
        self.allow(who, crate::identity::Permission::Read, "show a plan", Some(id)).await?;
        self.view(id).await
    }

    pub(crate) async fn view(&self, id: &str) -> Result<PlanView> {
        let plan = self.stored_plan(id).await?;
        let steps = self.store.steps(id).await?;
        Ok(PlanView { plan, steps })
    }

    /// The plan's own row, without its steps (thousands of them in a large plan).
    pub(crate) async fn stored_plan(&self, id: &str) -> Result<Plan> {
        self.store.plan(id).await?.ok_or_else(|| ServiceError::PlanNotFound { id: id.to_string() })
    }

    /// Pause, resume, abort or approve; the plan's summary afterwards. Reads the plan's row and its step counts,
    /// never its every step: a pause must not hold the store (and every report queued behind it) for a large plan.
    pub async fn act(&self, who: &Identity, id: &str, action: Action, reason: &str) -> Result<PlanOverview> {
        let permission = if action == Action::Approve {
            crate::identity::Permission::Approve
        } else {
            crate::identity::Permission::Change
        };
        self.allow(who, permission, &format!("{} a plan", action.as_str()), Some(id)).await?;
        if action == Action::Approve {
            self.check_approver(who, id).await?;
        }
        let from = self.stored_plan(id).await?.state;
        let cannot = || ServiceError::IllegalTransition { id: id.to_string(), from, action };
        let moved = match action {
            Action::Pause | Action::Resume | Action::Abort => {
                let to = match action {
                    Action::Pause => PlanState::Paused,
                    Action::Resume => PlanState::Running,
                    _ => PlanState::Aborted,
                };
                let allowed = if to == PlanState::Running { from == PlanState::Paused } else { from.can_become(to) };
                if !allowed {
                    return Err(cannot());
                }
                self.store.set_plan_state(id, from, to).await?
            }
            Action::Approve => {
                if from != PlanState::AwaitingApproval {
                    return Err(cannot());
                }
                let counts = self.store.step_counts(id).await?;
                let next = counts.iter().filter(|c| c.count > 0 && !c.state.is_done()).map(|c| c.wave).min();
                self.store.approve_wave(id, next.unwrap_or(0)).await?
            }
        };
        if !moved {
            return Err(ServiceError::Conflict { id: id.to_string(), action });
        }
        self.audit(who, action.as_str(), Some(id), reason.to_string()).await?;
        let kind = match action {
            Action::Pause => EventKind::Paused,
            Action::Resume => EventKind::Resumed,
            Action::Abort => EventKind::Aborted,
            Action::Approve => EventKind::Approved,
        };
        self.event(id, None, kind, json!({ "by": who.actor(), "reason": reason })).await?;
        self.wake.notify_one();
        Ok(PlanOverview { plan: self.stored_plan(id).await?, counts: self.store.step_counts(id).await? })
    }
}
