//! Checks: before a wave's steps are assigned one by one, each agent is asked, in batches, which of its pending
//! targets already are at their goal. Those steps finish in one store transaction per batch, with no lock, no
//! assignment and no round trip through the scheduler each; the others are assigned as usual, first in line.
//!
//! A check is read-only and holds no lock, so it is only ever a shortcut: a target it finds at its goal was at its
//! goal when read (the step is still pending, never dispatched, when its outcome is recorded: compare-and-set in
//! the store), and anything else (not at the goal, unreadable, no answer within `CHECK_TIMEOUT`, a coordinator
//! restart) takes the normal path, which reads the history again under the target's lock.
//!
//! A plan checks no further ahead of its assignments than an agent keeps connections: at most its `max_idle` (as it
//! registered; [`MIN_CHECK_WINDOW`] at least) of an agent's targets are asked, or found not at their goal and not yet
//! assigned. The check opens the target's connection and the agent keeps it warm, so the step that follows finds it
//! open instead of connecting a second time. A target found at its goal leaves the window at once: a re-run with
//! nothing pending flows through it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use flotilla_core::fleet::{Plan, StepState};
use tracing::{info, warn};

use super::*;
use crate::identity::Identity;
use crate::store::Unchanged;

/// Targets per check message: big enough to amortize, small enough that answers (and assignments of what is not
/// at its goal) start flowing at once.
pub(crate) const CHECK_BATCH: usize = 32;
/// An agent's targets asked, or found not at their goal and not yet assigned, at most (the module's header says why)
/// however few connections it keeps: two batches, so one is answered while the agent reads the other.
pub(crate) const MIN_CHECK_WINDOW: usize = 2 * CHECK_BATCH;
/// A check not answered in this long is given up: its targets are assigned as usual.
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Pending steps read per store query while asking.
const ASK_PAGE: u32 = 1024;

/// The checks of one plan's current wave: pure bookkeeping, no I/O.
#[derive(Debug, Default)]
pub(crate) struct PlanChecks {
    pub wave: u32,
    /// Target → its step's goal and when its check was sent, until it is answered or given up.
    asked: HashMap<String, (Goal, Instant)>,
    /// Targets found not at their goal (with their steps' goals), to be assigned first: by name, as the scheduler
    /// assigns any wave's steps (whatever order the answers came in).
    ready: BTreeMap<String, Goal>,
    /// Per agent, the batches not sent yet, in target order.
    queued: HashMap<String, VecDeque<Vec<(String, Goal)>>>,
    /// Target → its agent, for every target queued.
    agents: HashMap<String, String>,
    /// What every check message of this wave carries besides its targets.
    pub request: Option<CheckRequest>,
}

/// What to do with one check outcome.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Finish the step as it is (compare-and-set on pending).
    Finish,
    /// Assign it, ahead of steps not yet looked at.
    Assign,
    /// Not asked in this wave, or given up already (it may have been assigned since): ignore the outcome.
    Ignore,
}

impl PlanChecks {
    pub fn new(wave: u32) -> Self {
        PlanChecks { wave, ..PlanChecks::default() }
    }

    /// Queues `targets` (in the order to check them) for `agent`, to be sent as its window allows.
    pub fn queue(&mut self, agent: &str, targets: Vec<(String, Goal)>) {
        for (target, _) in &targets {
            self.agents.insert(target.clone(), agent.to_string());
        }
        let batches = self.queued.entry(agent.to_string()).or_default();
        batches.extend(targets.chunks(CHECK_BATCH).map(<[_]>::to_vec));
    }

    /// Takes the batches that the agents' windows have room for (`max_idle(agent)` targets, [`MIN_CHECK_WINDOW`] at
    /// least), in each agent's order, and awaits their answers from `at`.
    pub fn take_sendable(
        &mut self,
        max_idle: impl Fn(&str) -> usize,
        at: Instant,
    ) -> Vec<(String, Vec<(String, Goal)>)> {
        // Called after every dispatch and report: once all is sent, without counting what is open.
        if self.queued.values().all(VecDeque::is_empty) {
            return Vec::new();
        }
        let mut open: HashMap<&str, usize> = HashMap::new();
        for target in self.asked.keys().chain(self.ready.keys()) {
            if let Some(agent) = self.agents.get(target) {
                *open.entry(agent.as_str()).or_default() += 1;
            }
        }
        let mut batches = Vec::new();
        for (agent, queue) in &mut self.queued {
            let (mut open, window) =
                (open.get(agent.as_str()).copied().unwrap_or(0), max_idle(agent).max(MIN_CHECK_WINDOW));
            while queue.front().is_some_and(|batch| open + batch.len() <= window) {
                let batch = queue.pop_front().expect("a batch");
                open += batch.len();
                batches.push((agent.clone(), batch));
            }
        }
        for (_, batch) in &batches {
            self.ask(batch, at);
        }
        batches
    }

    /// `agent`'s batches not sent yet are dropped: their targets take the normal path.
    pub fn drop_queued(&mut self, agent: &str) {
        self.queued.remove(agent);
    }

    pub fn ask(&mut self, targets: &[(String, Goal)], at: Instant) {
        for (target, goal) in targets {
            self.asked.insert(target.clone(), (*goal, at));
        }
    }

    /// Checks that could not be sent: no answer is awaited for them.
    pub fn withdraw(&mut self, targets: &[(String, Goal)]) {
        for (target, _) in targets {
            self.asked.remove(target);
        }
    }

    /// Records an outcome; only a check still awaited counts.
    pub fn answer(&mut self, target: &str, at_goal: bool) -> Verdict {
        let Some((goal, _)) = self.asked.remove(target) else { return Verdict::Ignore };
        if at_goal {
            Verdict::Finish
        } else {
            self.ready.insert(target.to_string(), goal);
            Verdict::Assign
        }
    }

    /// Gives up checks older than `timeout`, and the batches not sent yet of an agent that let one expire; whether
    /// any check is still awaited or to be sent. While one is, the plan's other pending steps wait for their answers
    /// instead of being assigned.
    pub fn outstanding(&mut self, now: Instant, timeout: Duration) -> bool {
        let expired: Vec<String> = self
            .asked
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= timeout)
            .map(|(t, _)| t.clone())
            .collect();
        for target in expired {
            self.asked.remove(&target);
            if let Some(agent) = self.agents.get(&target) {
                self.queued.remove(agent);
            }
        }
        !self.asked.is_empty() || self.queued.values().any(|q| !q.is_empty())
    }

    /// Up to `n` targets found not at their goal, by name, with their steps' goals.
    pub fn take_ready(&mut self, n: usize) -> Vec<(String, Goal)> {
        (0..n).map_while(|_| self.ready.pop_first()).collect()
    }

    /// A target that could not be assigned now goes back in line.
    pub fn requeue(&mut self, target: String, goal: Goal) {
        self.ready.insert(target, goal);
    }
}

impl Coordinator {
    /// Whether this plan's wave has been checked (checks sent, or none could be).
    pub(crate) fn checked_wave(&self, plan_id: &str) -> Option<u32> {
        self.inner().checks.get(plan_id).map(|c| c.wave)
    }

    /// Asks every connected agent, in batches and as far ahead as its window allows, which of its
    /// targets' pending steps in `wave` are at their goal.
    pub(crate) async fn ask_checks(&self, plan: &Plan, wave: u32, owners: &HashMap<String, String>) -> Result<()> {
        let mut by_agent: HashMap<&str, Vec<(String, Goal)>> = HashMap::new();
        let mut after: Option<String> = None;
        loop {
            let page =
                self.store.steps_in_state(&plan.id, StepState::Pending, Some(wave), after.as_deref(), ASK_PAGE).await?;
            for step in &page {
                if let Some(agent) = owners.get(&step.target).filter(|a| self.is_connected(a)) {
                    by_agent.entry(agent).or_default().push((step.target.clone(), step.goal.unwrap_or(plan.goal)));
                }
            }
            if page.len() < ASK_PAGE as usize {
                break;
            }
            after = page.last().map(|s| s.target.clone());
        }
        let mut checks = PlanChecks::new(wave);
        if !by_agent.is_empty() {
            checks.request = Some(CheckRequest {
                plan_id: plan.id.clone(),
                bundle_id: plan.bundle.clone(),
                bundle: self.bundle_body(&plan.bundle).await?,
                phase: plan.phase,
                targets: Vec::new(),
                traceparent: None,
            });
            let targets: usize = by_agent.values().map(Vec::len).sum();
            for (agent, targets) in by_agent {
                checks.queue(agent, targets);
            }
            info!(plan_id = %plan.id, wave, targets, "asking agents which targets are at the goal");
        }
        // The bookkeeping is in place before the first batch goes out: an agent may answer before the last is sent.
        self.inner().checks.insert(plan.id.clone(), checks);
        self.send_checks(&plan.id);
        Ok(())
    }

    /// Sends the plan's queued checks that the agents' windows have room for. A batch that cannot be sent (a full or
    /// closed stream), and the rest of its agent's, take the normal path.
    pub(crate) fn send_checks(&self, plan_id: &str) {
        let mut guard = self.inner();
        let inner = &mut *guard;
        let Some(checks) = inner.checks.get_mut(plan_id) else { return };
        let Some(template) = checks.request.clone() else { return };
        let agents = &inner.agents;
        let mut refused = std::collections::HashSet::new();
        for (agent, batch) in checks.take_sendable(|a| agents.get(a).map_or(0, |e| e.max_idle), Instant::now()) {
            let stream = agents.get(&agent).and_then(|e| e.sender.as_ref()).filter(|_| !refused.contains(&agent));
            let request = CheckRequest { targets: batch.clone(), ..template.clone() };
            if stream.is_some_and(|s| s.try_send(Work::Check(request)).is_ok()) {
                continue;
            }
            // A full or closed stream: these targets, and the agent's not sent yet, take the normal path.
            if refused.insert(agent.clone()) {
                warn!(plan_id, agent, "a check was not sent; its agent's targets will be assigned");
            }
            checks.withdraw(&batch);
            checks.drop_queued(&agent);
        }
    }

    fn with_checks(&self, plan_id: &str, f: impl FnOnce(&mut PlanChecks)) {
        if let Some(c) = self.inner().checks.get_mut(plan_id) {
            f(c);
        }
    }

    /// Whether the plan still awaits check answers (expired ones are given up here).
    pub(crate) fn checks_outstanding(&self, plan_id: &str) -> bool {
        let mut inner = self.inner();
        inner.checks.get_mut(plan_id).is_some_and(|c| c.outstanding(Instant::now(), CHECK_TIMEOUT))
    }

    pub(crate) fn ready_targets(&self, plan_id: &str, n: usize) -> Vec<(String, Goal)> {
        self.inner().checks.get_mut(plan_id).map(|c| c.take_ready(n)).unwrap_or_default()
    }

    pub(crate) fn requeue_ready(&self, plan_id: &str, target: String, goal: Goal) {
        self.with_checks(plan_id, |c| c.requeue(target, goal));
    }

    /// Forgets the checks of plans that are no longer live.
    pub(crate) fn retain_checks(&self, live: &[String]) {
        self.inner().checks.retain(|plan, _| live.contains(plan));
    }

    /// An agent's check outcomes for a plan: steps at their goal finish in one store transaction; the others are
    /// queued for assignment. Outcomes for targets the agent does not serve, or not awaited, are ignored.
    pub async fn checked(&self, who: &Identity, name: &str, plan_id: &str, outcomes: Vec<CheckOutcome>) -> Result<()> {
        self.check_agent(who, name)?;
        let mut finish = Vec::new();
        {
            let mut guard = self.inner();
            let inner = &mut *guard;
            let Some(checks) = inner.checks.get_mut(plan_id) else { return Ok(()) };
            for o in outcomes {
                if inner.owners.get(&o.target).map(String::as_str) != Some(name) {
                    warn!(plan_id, target = %o.target, agent = name, "ignoring a check outcome for a target the agent does not serve");
                    continue;
                }
                if checks.answer(&o.target, o.at_goal) == Verdict::Finish {
                    finish.push(Unchanged { target: o.target, before: o.before, applied: o.applied });
                }
            }
        }
        // Those answered left the agent's window: its next batches go before this one's steps are written.
        self.send_checks(plan_id);
        if !finish.is_empty() {
            let started = Instant::now();
            let done = self.store.finish_unchanged(plan_id, &finish).await?;
            self.metrics.store_call("finish_unchanged", started.elapsed());
            for step in &done {
                let labels = crate::metrics::StepOutcome {
                    engine: self.engine_of(&step.target),
                    direction: "up".into(),
                    result: "at_goal".into(),
                };
                self.metrics.steps_finished.get_or_create(&labels).inc();
            }
            self.events_committed();
            let now = Instant::now();
            let mut inner = self.inner();
            for step in done {
                inner.live.insert(step.target, TargetLive { applied: step.after, dirty: false, reported: now });
            }
        }
        self.wake.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: Goal = Goal::Up { to: None };

    fn asks(targets: &[&str]) -> Vec<(String, Goal)> {
        targets.iter().map(|t| (t.to_string(), UP)).collect()
    }

    #[test]
    fn only_an_awaited_check_counts_and_each_once() {
        let t0 = Instant::now();
        let mut c = PlanChecks::new(1);
        c.ask(&asks(&["a", "b"]), t0);
        assert_eq!(c.answer("a", true), Verdict::Finish);
        assert_eq!(c.answer("a", true), Verdict::Ignore, "a repeated outcome is ignored");
        assert_eq!(c.answer("z", true), Verdict::Ignore, "a target never asked is ignored");
        assert_eq!(c.answer("b", false), Verdict::Assign);
        assert_eq!(c.take_ready(8), asks(&["b"]));
        assert!(c.take_ready(8).is_empty());
    }

    #[test]
    fn a_check_not_answered_in_time_is_given_up_and_its_late_answer_ignored() {
        let t0 = Instant::now();
        let mut c = PlanChecks::new(1);
        c.ask(&asks(&["a"]), t0);
        assert!(c.outstanding(t0 + Duration::from_secs(1), Duration::from_secs(5)));
        assert!(!c.outstanding(t0 + Duration::from_secs(5), Duration::from_secs(5)), "given up at the timeout");
        // The step may have been assigned since: the late outcome must not finish it.
        assert_eq!(c.answer("a", true), Verdict::Ignore);
    }

    #[test]
    fn a_check_not_sent_is_not_awaited() {
        let t0 = Instant::now();
        let mut c = PlanChecks::new(1);
        c.ask(&asks(&["a", "b"]), t0);
        c.withdraw(&asks(&["b"]));
        assert_eq!(c.answer("b", true), Verdict::Ignore);
        assert_eq!(c.answer("a", true), Verdict::Finish);
        assert!(!c.outstanding(t0, Duration::from_secs(5)), "nothing left awaited");
    }

    fn names(prefix: &str, n: usize) -> Vec<(String, Goal)> {
        (0..n).map(|i| (format!("{prefix}{i:04}"), UP)).collect()
    }

    /// Sends what `take_sendable` gives, every agent keeping `max_idle` connections: the batches' targets.
    fn send(c: &mut PlanChecks, max_idle: usize) -> Vec<Vec<(String, Goal)>> {
        c.take_sendable(|_| max_idle, Instant::now()).into_iter().map(|(_, batch)| batch).collect()
    }

    #[test]
    fn an_agent_is_asked_no_further_ahead_than_its_window() {
        let mut c = PlanChecks::new(1);
        c.queue("a", names("a", 3 * CHECK_BATCH));
        c.queue("b", names("b", CHECK_BATCH));
        let mut sent = send(&mut c, 0);
        sent.sort_by(|a, b| a[0].0.cmp(&b[0].0));
        assert_eq!(sent.len(), 3, "two of a's three batches ({MIN_CHECK_WINDOW} at most) and b's one: {sent:?}");
        assert_eq!(sent[0], names("a", CHECK_BATCH), "in the order queued");
        assert!(send(&mut c, 0).is_empty(), "no room until answers come");
        // Found at the goal: those leave the window at once.
        for (target, _) in &sent[0] {
            assert_eq!(c.answer(target, true), Verdict::Finish);
        }
        let third = send(&mut c, 0);
        assert_eq!(third, vec![names("a", 3 * CHECK_BATCH)[2 * CHECK_BATCH..].to_vec()], "room again");
        // Found not at the goal: they hold their place until assigned.
        for (target, _) in &third[0] {
            assert_eq!(c.answer(target, false), Verdict::Assign);
        }
        c.queue("a", names("z", CHECK_BATCH));
        assert!(send(&mut c, 0).is_empty(), "ready and not yet assigned still count");
        assert!(c.outstanding(Instant::now(), Duration::from_secs(5)), "answers awaited");
        assert_eq!(c.take_ready(CHECK_BATCH).len(), CHECK_BATCH);
        assert_eq!(send(&mut c, 0), vec![names("z", CHECK_BATCH)], "assigned ones left the window");
    }

    #[test]
    fn an_agent_keeping_more_connections_is_asked_further_ahead() {
        let mut c = PlanChecks::new(1);
        c.queue("a", names("a", 8 * CHECK_BATCH));
        let sent: usize = send(&mut c, 5 * CHECK_BATCH).iter().map(Vec::len).sum();
        assert_eq!(sent, 5 * CHECK_BATCH, "as many as it keeps warm");
    }

    #[test]
    fn an_agent_that_lets_a_check_expire_is_sent_no_more() {
        let t0 = Instant::now();
        let mut c = PlanChecks::new(1);
        c.queue("a", names("a", 4 * CHECK_BATCH));
        let sent = c.take_sendable(|_| CHECK_BATCH, t0);
        assert_eq!(sent.len(), 2);
        assert!(c.outstanding(t0 + Duration::from_secs(1), Duration::from_secs(5)), "awaited, and more to send");
        assert!(!c.outstanding(t0 + Duration::from_secs(5), Duration::from_secs(5)), "its queue went with it");
        assert!(send(&mut c, 0).is_empty(), "its targets take the normal path");
    }

    #[test]
    fn ready_targets_come_out_by_name_whatever_order_they_were_answered_in() {
        let t0 = Instant::now();
        let mut c = PlanChecks::new(2);
        for t in ["b", "c", "a"] {
            c.ask(&asks(&[t]), t0);
            c.answer(t, false);
        }
        let first = c.take_ready(2);
        assert_eq!(first, asks(&["a", "b"]));
        c.requeue("a".into(), UP);
        assert_eq!(c.take_ready(5), asks(&["a", "c"]), "a requeued target keeps its place");
    }
}
