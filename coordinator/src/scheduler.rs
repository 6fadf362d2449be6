//! The scheduler: on every tick (and whenever something changes) it keeps the locks of running steps alive, takes
//! back steps whose lock was lost, and moves every live plan forward: next wave, approvals, failure budget, dispatch.
//! Pause, resume and abort only change the plan's state, so they take effect on the next tick.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use flotilla_core::fleet::{EventKind, Goal, OnFailure, Plan, PlanState, Step, StepState};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::decision::{decide, Counts, Decision};
use crate::lock::{Lease, LockError};
use crate::metrics::{Outcome, PlanState as PlanStateLabels};
use crate::service::{Assignment, Coordinator, ServiceError, Work};
use crate::store::{Assigning, StoreError};
use flotilla_proto::telemetry;

type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Runs until `cancel` fires.
pub async fn run(coordinator: Arc<Coordinator>, cancel: CancellationToken) {
    if let Err(e) = coordinator.recover().await {
        warn!(error = %e, "could not finish what a previous coordinator left undone");
    }
    let mut interval = tokio::time::interval(coordinator.config.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let timed = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = interval.tick() => true,
            _ = coordinator.wake.notified() => false,
        };
        // Gauges over every target, on the clock only: a pass after every result need not recount them.
        if timed {
            coordinator.refresh_gauges();
        }
        if let Err(e) = coordinator.tick().await {
            warn!(error = %e, "scheduler tick failed; trying again next tick");
        }
    }
}

/// Wave 0 of a plan (not a rollback) is its `--validate-on` wave: validated, never just applied.
fn validates(plan: &Plan, wave: u32) -> bool {
    wave == 0 && plan.rollback_of.is_none()
}

fn in_flight(s: &Step) -> bool {
    matches!(s.state, StepState::Assigned | StepState::Running)
}

impl Coordinator {
    /// Once at start: a plan halted under `rollback-plan` whose rollback was never created (the coordinator
    /// stopped between the two) gets it now.
    pub async fn recover(&self) -> Result<()> {
        let plans = self.store.plans().await?;
        let halted =
            plans.iter().filter(|p| p.state == PlanState::Halted && p.strategy.on_failure == OnFailure::RollbackPlan);
        for plan in halted {
            if plans.iter().any(|p| p.rollback_of.as_deref() == Some(plan.id.as_str())) {
                continue;
            }
            if self.rollback_touched(plan).await?.is_some() {
                warn!(plan_id = %plan.id, "created the rollback plan a previous coordinator did not");
            }
        }
        Ok(())
    }

    /// One scheduling pass over every held lock and every live plan.
    pub async fn tick(&self) -> Result<()> {
        let targets = self.owners();
        self.renew_leases(&targets).await?;
        let started = Instant::now();
        let live = self.store.live_plans().await?;
        self.metrics.store_call("live_plans", started.elapsed());
        self.retain_checks(&live.iter().map(|p| p.id.clone()).collect::<Vec<_>>());
        for plan in live {
            let id = plan.id.clone();
            let span = info_span!("schedule", plan_id = %id);
            telemetry::join_plan(&span, &id);
            // One plan's failure is that plan's: the others are scheduled. A plan whose stored data is broken (its
            // bundle gone or unreadable) can never go on: it halts, saying why; anything else is tried again.
            match self.drive(plan.clone(), &targets).instrument(span).await {
                Ok(()) => {}
                Err(ServiceError::Store(StoreError::Corrupt(why))) => {
                    warn!(plan_id = %id, why, "halting a plan whose stored data is broken");
                    if let Err(e) = self.halt(&plan, &format!("its stored data is broken: {why}")).await {
                        warn!(plan_id = %id, error = %e, "could not halt the plan");
                    }
                }
                Err(e) => warn!(plan_id = %id, error = %e, "could not schedule the plan this tick; trying again"),
            }
        }
        Ok(())
    }

    /// Renews the locks of steps whose agent is connected; a lock whose agent is gone is left to expire, and then
    /// its step goes back to pending, to be reconciled from the target's history table when it runs again.
    async fn renew_leases(&self, targets: &HashMap<String, String>) -> Result<()> {
        let ttl = self.config.lease_ttl;
        let mut by_plan: HashMap<String, Vec<Lease>> = HashMap::new();
        for ((plan_id, target), lease, renewed) in self.held_leases() {
            let connected = targets.get(&target).is_some_and(|agent| self.is_connected(agent));
            if connected {
                if renewed.elapsed() >= ttl / 3 {
                    by_plan.entry(plan_id).or_default().push(lease);
                }
            } else if renewed.elapsed() >= ttl {
                // The store first, then the lock: a step never looks in flight without a lock held for it, which
                // is what a coordinator that restarted would see.
                self.reconcile(&plan_id, &target, "its agent went away and the step's lock expired").await?;
                self.release(&plan_id, &target).await;
            }
        }
        let mut due = Vec::new();
        for (plan_id, leases) in by_plan {
            // A lock outliving its step (whatever the race) is given back rather than renewed. One read per plan.
            let names: Vec<&str> = leases.iter().map(|l| l.target.as_str()).collect();
            let steps = self.store.steps_of(&plan_id, &names).await?;
            let live: HashSet<&str> = steps.iter().filter(|s| !s.state.is_done()).map(|s| s.target.as_str()).collect();
            for lease in leases {
                if live.contains(lease.target.as_str()) {
                    due.push((plan_id.clone(), lease));
                } else {
                    self.release(&plan_id, &lease.target).await;
                }
            }
        }
        // Every lock due, in one go.
        let leases: Vec<_> = due.iter().map(|(_, lease)| lease.clone()).collect();
        let started = Instant::now();
        let renewed = self.lock.renew_many(&leases).await;
        if !leases.is_empty() {
            self.metrics.lock_call("renew", started.elapsed());
        }
        for ((plan_id, lease), renewed) in due.iter().zip(renewed) {
            let target = &lease.target;
            match renewed {
                Ok(()) => self.renewed(plan_id, target),
                Err(LockError::Lost { .. }) => {
                    self.metrics.lock_losses.inc();
                    self.reconcile(plan_id, target, "the step's lock was lost").await?;
                    self.forget(plan_id, target);
                }
                Err(e) => warn!(plan_id, target, error = %e, "could not renew a lock"),
            }
        }
        Ok(())
    }

    /// Takes back a step in flight under `token` whose agent is not running it: the lock is given back (the next
    /// dispatch takes a new one, with a higher token) and the step goes back to pending.
    pub(crate) async fn reclaim(&self, plan_id: &str, target: &str, token: u64, why: &str) -> Result<()> {
        match self.store.step(plan_id, target).await? {
            Some(s) if in_flight(&s) && s.token == Some(token) => {
                // The store first, then the lock (see `renew_leases`).
                self.reconcile(plan_id, target, why).await?;
                self.release(plan_id, target).await;
                self.wake.notify_one();
            }
            // Finished or pending already: the lock, if still held, has nothing to guard.
            Some(s) if s.state.is_done() => self.release(plan_id, target).await,
            _ => {}
        }
        Ok(())
    }

    /// Sends an in-flight step back to pending: whoever runs it next first reads what actually committed.
    async fn reconcile(&self, plan_id: &str, target: &str, why: &str) -> Result<()> {
        if let Some(s) = self.store.step(plan_id, target).await?.filter(in_flight) {
            if self.store.set_step_state(plan_id, target, s.state, StepState::Pending, s.token, None).await? {
                warn!(plan_id, target, why, "step will be reconciled from the target's history");
                self.event(plan_id, Some(target), EventKind::Reconcile, json!({ "reason": why })).await?;
            }
        }
        Ok(())
    }

    async fn drive(&self, mut plan: Plan, targets: &HashMap<String, String>) -> Result<()> {
        if plan.state == PlanState::Pending {
            if !self.store.set_plan_state(&plan.id, PlanState::Pending, PlanState::Running).await? {
                return Ok(());
            }
            plan.state = PlanState::Running;
            info!(plan_id = %plan.id, "plan started");
            self.event(&plan.id, None, EventKind::Started, json!({})).await?;
        }
        // Counts, never every step: a pass over a plan of thousands of targets reads a few rows. Steps in flight
        // are read only when the store has more than this coordinator holds locks for (after a restart, or when
        // another coordinator died): those are adopted.
        let mut counts = self.counts(&plan.id).await?;
        if counts.in_flight() > self.held_count(&plan.id) {
            let in_flight = self.in_flight(&plan.id).await?;
            if self.adopt_orphans(&plan, &in_flight).await? {
                counts = self.counts(&plan.id).await?;
            }
        }
        if plan.state != PlanState::Running {
            return Ok(()); // paused or awaiting approval (decide says Hold too)
        }
        let (current, mut slots) = match decide(&plan, &counts, counts.in_flight()) {
            Decision::Hold | Decision::Drain => return Ok(()),
            Decision::Halt { reason } => return self.halt(&plan, &reason).await,
            Decision::Finish => return self.finish(&plan, &counts).await,
            Decision::AwaitApproval { wave } => {
                if self.store.set_plan_state(&plan.id, PlanState::Running, PlanState::AwaitingApproval).await? {
                    self.event(&plan.id, None, EventKind::AwaitingApproval, json!({ "wave": wave })).await?;
                }
                return Ok(());
            }
            Decision::Dispatch { wave, slots } => (wave, slots),
        };
        let mut bundle = None;
        if self.dispatch_checked(&plan, current, targets, &mut slots, &mut bundle).await? {
            return Ok(());
        }
        // Pending steps of the current wave by target name, a page at a time: one page when every agent is here.
        let mut after: Option<String> = None;
        // Under a per-host limit most of a page may have to wait; a pass looks a bounded way ahead for other hosts.
        let mut pages = if plan.strategy.max_per_host.is_some() { HOST_LIMITED_PAGES } else { usize::MAX };
        while slots > 0 && pages > 0 {
            pages -= 1;
            let page = u32::try_from(slots).unwrap_or(u32::MAX).max(PAGE);
            let pending =
                self.store.steps_in_state(&plan.id, StepState::Pending, Some(current), after.as_deref(), page).await?;
            let last_page = pending.len() < page as usize;
            let mut candidates = Vec::new();
            for step in &pending {
                if candidates.len() == slots {
                    break;
                }
                after = Some(step.target.clone());
                if let Some(agent) = targets.get(&step.target).filter(|a| self.is_connected(a)) {
                    let goal = step.goal.unwrap_or(plan.goal);
                    candidates.push(Candidate {
                        target: step.target.clone(),
                        wave: step.wave,
                        goal,
                        agent: agent.clone(),
                    });
                }
            }
            let examined_all = after.as_deref() == pending.last().map(|s| s.target.as_str());
            let tried = candidates.len();
            slots -= tried - self.dispatch(&plan, candidates, &mut bundle).await?.len();
            if pending.is_empty() || (last_page && examined_all) {
                break;
            }
        }
        Ok(())
    }

    /// First, in one go, asks the agents which of the wave's targets are at the goal already (not in a validation
    /// wave: that one always runs). Then assigns what the checks found not at the goal, first in line. `true` while
    /// answers are awaited: nothing else is assigned meanwhile (most of the wave may need no assignment at all).
    async fn dispatch_checked(
        &self,
        plan: &Plan,
        current: u32,
        targets: &HashMap<String, String>,
        slots: &mut usize,
        bundle: &mut Option<Arc<String>>,
    ) -> Result<bool> {
        if !validates(plan, current) && self.checked_wave(&plan.id) != Some(current) {
            self.ask_checks(plan, current, targets).await?;
        }
        let mut candidates = Vec::new();
        for (target, goal) in self.ready_targets(&plan.id, *slots) {
            match targets.get(&target).filter(|a| self.is_connected(a)) {
                Some(agent) => candidates.push(Candidate { target, wave: current, goal, agent: agent.clone() }),
                None => self.requeue_ready(&plan.id, target, goal),
            }
        }
        let tried = candidates.len();
        let left = self.dispatch(plan, candidates, bundle).await?;
        *slots -= tried - left.len();
        for c in left {
            self.requeue_ready(&plan.id, c.target, c.goal);
        }
        // What was assigned left its agent's window: more checks may go.
        self.send_checks(&plan.id);
        Ok(self.checks_outstanding(&plan.id))
    }

    /// The plan's step counts; they set its steps-by-state gauges too.
    async fn counts(&self, plan_id: &str) -> Result<Counts> {
        let started = Instant::now();
        let counts = Counts(self.store.step_counts(plan_id).await?);
        self.metrics.store_call("counts", started.elapsed());
        for wave in counts.waves() {
            for &state in StepState::ALL {
                let labels =
                    PlanStateLabels { plan: plan_id.to_string(), wave: wave.to_string(), state: state.as_str().into() };
                let n = i64::try_from(counts.of(wave, state)).unwrap_or(i64::MAX);
                self.metrics.steps.get_or_create(&labels).set(n);
            }
        }
        Ok(counts)
    }

    /// The plan's steps in flight (assigned or running).
    async fn in_flight(&self, plan_id: &str) -> Result<Vec<Step>> {
        let mut steps = Vec::new();
        for state in [StepState::Assigned, StepState::Running] {
            steps.extend(self.store.steps_in_state(plan_id, state, None, None, u32::MAX).await?);
        }
        Ok(steps)
    }

    /// After a coordinator restart (or when another coordinator died), steps the store says are in flight have no
    /// lock here: take the lock (once the old holder's lease expired) and send them back to pending, so they run
    /// again after reconciling. `steps` may be stale: a step whose result arrived meanwhile is left alone.
    async fn adopt_orphans(&self, plan: &Plan, steps: &[Step]) -> Result<bool> {
        let mut changed = false;
        for s in steps.iter().filter(|s| in_flight(s) && !self.held(&plan.id, &s.target)) {
            let Some(lease) = self.lock.acquire(&s.target, &self.config.holder, self.config.lease_ttl).await? else {
                continue;
            };
            self.hold(&plan.id, &s.target, lease.clone());
            if self
                .store
                .set_step_state(&plan.id, &s.target, s.state, StepState::Pending, Some(lease.token), None)
                .await?
            {
                changed = true;
                self.event(
                    &plan.id,
                    Some(&s.target),
                    EventKind::Reconcile,
                    json!({ "reason": "the coordinator restarted" }),
                )
                .await?;
            } else {
                // The step finished after `steps` was read (its result released the lock just before we took it):
                // give the lock back, or it would be renewed for nothing and block the target.
                self.release(&plan.id, &s.target).await;
            }
        }
        Ok(changed)
    }

    /// Takes the candidates' locks (in one go, for those not held here already), moves their steps to assigned
    /// (one store transaction, with their events), and sends each to its agent. Returns the candidates to try
    /// again on a later pass (lock held elsewhere, agent gone, its stream full); a step found no longer pending is
    /// dropped.
    async fn dispatch(
        &self,
        plan: &Plan,
        candidates: Vec<Candidate>,
        bundle: &mut Option<Arc<String>>,
    ) -> Result<Vec<Candidate>> {
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let (candidates, mut left) = self.within_host_limit(plan, candidates);
        let wanted: Vec<String> =
            candidates.iter().filter(|c| !self.held(&plan.id, &c.target)).map(|c| c.target.clone()).collect();
        if !wanted.is_empty() {
            let started = Instant::now();
            let leases = self.lock.acquire_many(&wanted, &self.config.holder, self.config.lease_ttl).await?;
            self.metrics.lock_call("acquire", started.elapsed());
            let taken = leases.iter().flatten().count() as u64;
            let outcome = |result: &str| Outcome { result: result.to_string() };
            self.metrics.lock_acquisitions.get_or_create(&outcome("taken")).inc_by(taken);
            self.metrics
                .lock_acquisitions
                .get_or_create(&outcome("held_elsewhere"))
                .inc_by(leases.len() as u64 - taken);
            for lease in leases.into_iter().flatten() {
                self.hold(&plan.id, &lease.target.clone(), lease);
            }
        }
        let mut ready = Vec::new();
        for c in candidates {
            match (self.held_lease(&plan.id, &c.target), self.sender(&c.agent)) {
                (Some(lease), Some(sender)) => ready.push((c, lease, sender)),
                (Some(_), None) => {
                    self.release(&plan.id, &c.target).await;
                    left.push(c);
                }
                (None, _) => left.push(c),
            }
        }
        if ready.is_empty() {
            return Ok(left);
        }
        let assigning: Vec<Assigning> = ready
            .iter()
            .map(|(c, lease, _)| {
                let goal = match c.goal {
                    Goal::Up { to } => json!({ "direction": "up", "to": to }),
                    Goal::Down { to } => json!({ "direction": "down", "to": to }),
                };
                let detail = json!({ "agent": c.agent, "fencing_token": lease.token, "wave": c.wave, "goal": goal });
                Assigning { target: c.target.clone(), token: lease.token, detail }
            })
            .collect();
        let started = Instant::now();
        let moved: HashSet<String> = self.store.assign_steps(&plan.id, &assigning).await?.into_iter().collect();
        self.metrics.store_call("assign", started.elapsed());
        if !moved.is_empty() {
            self.events_committed();
        }
        for (c, lease, sender) in ready {
            if !moved.contains(&c.target) {
                self.release(&plan.id, &c.target).await;
                continue;
            }
            if bundle.is_none() {
                *bundle = Some(self.bundle_body(&plan.bundle).await?);
            }
            if !self.send(plan, &c, &lease, &sender, bundle.clone().unwrap_or_default()).await? {
                left.push(c);
            }
        }
        Ok(left)
    }

    /// Splits candidates into those that may start under the plan's `max_per_host` and those that must wait.
    fn within_host_limit(&self, plan: &Plan, candidates: Vec<Candidate>) -> (Vec<Candidate>, Vec<Candidate>) {
        let Some(max) = plan.strategy.max_per_host else { return (candidates, Vec::new()) };
        let names: Vec<&str> = candidates.iter().map(|c| c.target.as_str()).collect();
        let fits = self.fit_hosts(&names, max);
        let (fit, over): (Vec<_>, Vec<_>) = candidates.into_iter().zip(fits).partition(|(_, fits)| *fits);
        (fit.into_iter().map(|(c, _)| c).collect(), over.into_iter().map(|(c, _)| c).collect())
    }

    /// Sends an assigned step to its agent. Never waits on an agent: a full stream (an agent not reading) or a
    /// closed one gives the step back (`false`) for a later pass, and every other agent and plan goes on.
    async fn send(
        &self,
        plan: &Plan,
        c: &Candidate,
        lease: &Lease,
        sender: &mpsc::Sender<Work>,
        bundle: Arc<String>,
    ) -> Result<bool> {
        self.assigned(&plan.id, &c.target);
        let span = info_span!(
            "assign",
            plan_id = %plan.id,
            target = %c.target,
            agent = %c.agent,
            fencing_token = lease.token,
            wave = c.wave,
        );
        telemetry::join_plan(&span, &plan.id);
        let assignment = Assignment {
            plan_id: plan.id.clone(),
            target: c.target.clone(),
            bundle_id: plan.bundle.clone(),
            bundle,
            goal: c.goal,
            token: lease.token,
            wave: c.wave,
            phase: plan.phase,
            validate: validates(plan, c.wave),
            timeouts: plan.strategy.timeouts,
            group: plan.strategy.group,
            traceparent: Some(telemetry::traceparent(&span, &plan.id, &c.target)),
        };
        span.in_scope(|| info!("assign"));
        let Err(e) = sender.try_send(Work::Assign(assignment)) else { return Ok(true) };
        let why = match e {
            mpsc::error::TrySendError::Full(_) => "the agent's assignment stream is full",
            mpsc::error::TrySendError::Closed(_) => "the agent's assignment stream closed",
        };
        warn!(plan_id = %plan.id, target = %c.target, agent = %c.agent, why, "assignment not sent");
        let (from, to) = (StepState::Assigned, StepState::Pending);
        if self.store.set_step_state(&plan.id, &c.target, from, to, Some(lease.token), None).await? {
            self.event(&plan.id, Some(&c.target), EventKind::Reconcile, json!({ "reason": why })).await?;
        }
        self.release(&plan.id, &c.target).await;
        Ok(false)
    }

    async fn finish(&self, plan: &Plan, counts: &Counts) -> Result<()> {
        if self.store.set_plan_state(&plan.id, PlanState::Running, PlanState::Succeeded).await? {
            let count = |state| counts.total(state);
            let detail = json!({
                "succeeded": count(StepState::Succeeded),
                "failed": count(StepState::Failed),
                "skipped": count(StepState::Skipped),
            });
            info!(plan_id = %plan.id, %detail, "plan finished");
            self.event(&plan.id, None, EventKind::Finished, detail).await?;
        }
        Ok(())
    }

    async fn halt(&self, plan: &Plan, reason: &str) -> Result<()> {
        if !self.store.set_plan_state(&plan.id, PlanState::Running, PlanState::Halted).await? {
            return Ok(());
        }
        warn!(plan_id = %plan.id, reason, "plan halted");
        self.event(&plan.id, None, EventKind::Halted, json!({ "reason": reason })).await?;
        if plan.strategy.on_failure == OnFailure::RollbackPlan {
            self.rollback_touched(plan).await?;
        }
        Ok(())
    }
}

/// A pending step the scheduler is about to assign.
struct Candidate {
    target: String,
    wave: u32,
    goal: Goal,
    agent: String,
}

/// Pages of pending steps one pass reads at most under `max_per_host`.
const HOST_LIMITED_PAGES: usize = 16;

/// How many dispatch candidates one store read fetches at least.
const PAGE: u32 = 64;
