//! Submitting a plan: every check before anything is stored, then the plan and its steps in one transaction.

use std::collections::BTreeMap;

use chrono::Utc;
use flotilla_core::bundle::Bundle;
use flotilla_core::fleet::{assign_waves, EventKind, Goal, Plan, PlanState, Step, Target};
use flotilla_core::{Phase, ReadOptions};
use serde_json::json;

use super::lint;
use super::*;
use crate::identity::Identity;

impl Coordinator {
    pub async fn submit(&self, who: &Identity, s: Submission) -> Result<PlanView> {
        self.allow(who, crate::identity::Permission::Change, "create a plan", None).await?;
        let bundle = Bundle::from_json(&s.bundle).map_err(|e| ServiceError::BadInput(e.to_string()))?;
        let sets = bundle
            .check(&ReadOptions { allow_missing_down: true, ..ReadOptions::default() })
            .map_err(|e| ServiceError::BadInput(format!("the migrations do not read: {e}")))?;
        let targets = self.store.targets().await?;
        let validate: Vec<Target> = match &s.validate_on {
            Some(sel) => targets.iter().filter(|t| sel.matches(t)).cloned().collect(),
            None => Vec::new(),
        };
        if s.validate_on.is_some() && validate.is_empty() {
            let selector = s.validate_on.as_ref().map(ToString::to_string).unwrap_or_default();
            return Err(ServiceError::SelectorMatchesNothing { what: "--validate-on", selector });
        }
        let selected: Vec<Target> = targets
            .iter()
            .filter(|t| s.selector.matches(t) && !validate.iter().any(|v| v.name == t.name))
            .cloned()
            .collect();
        if selected.is_empty() {
            return Err(ServiceError::SelectorMatchesNothing { what: "selector", selector: s.selector.to_string() });
        }
        let most = self.config.max_targets_per_plan;
        if selected.len() + validate.len() > most {
            return Err(ServiceError::BadInput(format!(
                "the plan would have {} targets; at most {most} are taken in one plan: narrow --select and make \
                 several plans",
                selected.len() + validate.len()
            )));
        }
        check_sets(&bundle, &sets, selected.iter().chain(&validate), s.goal)?;
        let lint = lint::lint_plan(&bundle, &sets, selected.iter().chain(&validate), &s.strategy, s.allow_lint)?;
        if s.phase == Some(Phase::Contract) {
            self.check_expand_done(&bundle, &sets, &selected)?;
        }
        let id = format!("{}-{:04x}", Utc::now().format("%Y%m%d-%H%M%S"), rand::random::<u16>());
        let now = Utc::now();
        let mut steps: Vec<Step> = validate.iter().map(|t| new_step(&id, &t.name, 0, None, now)).collect();
        steps.extend(
            assign_waves(&selected, &s.strategy.waves).into_iter().map(|(t, w)| new_step(&id, &t, w, None, now)),
        );
        let plan = Plan {
            id: if s.dry_run { String::new() } else { id },
            bundle: bundle.id(),
            selector: s.selector.clone(),
            goal: s.goal,
            strategy: s.strategy,
            phase: s.phase,
            rollback_of: None,
            approved_wave: 0,
            state: PlanState::Pending,
            created_at: now,
        };
        if s.dry_run {
            return Ok(PlanView { plan, steps });
        }
        self.store.put_bundle(&bundle.to_json()).await?;
        self.store.create_plan(&plan, &steps).await?;
        self.audit(who, "submit", Some(&plan.id), format!("selector {}, {} targets", plan.selector, steps.len()))
            .await?;
        self.event(
            &plan.id,
            None,
            EventKind::Submitted,
            json!({ "targets": steps.len(), "by": who.actor(), "lint": lint }),
        )
        .await?;
        self.wake.notify_one();
        Ok(PlanView { plan, steps })
    }

    /// Contract is refused until every selected target has applied every migration before the first contract one.
    pub(super) fn check_expand_done(
        &self,
        bundle: &Bundle,
        sets: &BTreeMap<String, flotilla_core::MigrationSet>,
        selected: &[Target],
    ) -> Result<()> {
        let inner = self.inner();
        let mut behind = Vec::new();
        for t in selected {
            let key = if bundle.sets.contains_key(t.engine.as_str()) { t.engine.as_str() } else { "*" };
            let Some(set) = sets.get(key) else { continue };
            let first_contract = set.migrations.iter().position(|m| m.options.phase == Some(Phase::Contract));
            let Some(first) = first_contract else { continue };
            let needed = set.migrations[..first].last().map(|m| m.version).unwrap_or_default();
            let applied = inner.live.get(&t.name).and_then(|l| l.applied);
            if applied.is_none_or(|a| a < needed) {
                behind.push(format!(
                    "{} (at {}, expand ends at {needed})",
                    t.name,
                    applied.map_or("?".into(), |a| a.to_string())
                ));
            }
        }
        if behind.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::Refused(format!(
                "contract is refused until expand has finished on every selected target; not yet: {}",
                behind.join(", ")
            )))
        }
    }
}

/// Every target has a set for its engine, and a goal version is a migration of every set the plan uses (or every
/// step would fail on it).
fn check_sets<'t>(
    bundle: &Bundle,
    sets: &BTreeMap<String, flotilla_core::MigrationSet>,
    targets: impl Iterator<Item = &'t Target> + Clone,
    goal: Goal,
) -> Result<()> {
    let no_set: Vec<&str> =
        targets.clone().filter(|t| bundle.files_for(t.engine).is_none()).map(|t| t.name.as_str()).collect();
    if !no_set.is_empty() {
        return Err(ServiceError::BadInput(format!(
            "the migrations have no set for the engine of {}",
            no_set.join(", ")
        )));
    }
    let wanted = match goal {
        Goal::Up { to: Some(v) } => Some(v),
        Goal::Down { to } if !to.is_zero() => Some(to),
        _ => None,
    };
    if let Some(v) = wanted {
        for t in targets {
            let key = if bundle.sets.contains_key(t.engine.as_str()) { t.engine.as_str() } else { "*" };
            if sets.get(key).is_some_and(|set| set.get(v).is_none()) {
                return Err(ServiceError::BadInput(format!(
                    "version {v} is not a migration in the {} set (target {})",
                    if key == "*" { "migrations" } else { key },
                    t.name
                )));
            }
        }
    }
    Ok(())
}
