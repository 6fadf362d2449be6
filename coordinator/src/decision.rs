//! The scheduler's choice for one plan, as a pure function of what the store counts: no I/O, so every rule (waves,
//! the failure budget, approvals, parallelism) is unit-tested here; `scheduler` does the reading and the writing
//! around it.

use flotilla_core::fleet::{Plan, PlanState, StepState};

use crate::store::StepCount;

/// What to do with a running plan on this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Paused or awaiting approval: running steps finish, nothing new starts.
    Hold,
    /// A wave is over its failure budget, but steps are still in flight: let them finish, start nothing.
    Drain,
    /// A wave is over its failure budget and nothing is in flight.
    Halt { reason: String },
    /// Every step is done.
    Finish,
    /// The next wave needs an approval before it starts.
    AwaitApproval { wave: u32 },
    /// Start up to `slots` pending steps of `wave` (0 when the plan is at its parallelism).
    Dispatch { wave: u32, slots: usize },
}

/// A plan's step counts by wave and state, as the store counted them.
pub struct Counts(pub Vec<StepCount>);

impl Counts {
    pub fn of(&self, wave: u32, state: StepState) -> u64 {
        self.in_wave(wave, |s| s == state)
    }

    pub fn in_wave(&self, wave: u32, pick: impl Fn(StepState) -> bool) -> u64 {
        self.0.iter().filter(|c| c.wave == wave && pick(c.state)).map(|c| c.count).sum()
    }

    pub fn total(&self, state: StepState) -> u64 {
        self.0.iter().filter(|c| c.state == state).map(|c| c.count).sum()
    }

    /// Steps assigned or running, in every wave.
    pub fn in_flight(&self) -> usize {
        usize::try_from(self.total(StepState::Assigned) + self.total(StepState::Running)).unwrap_or(usize::MAX)
    }

    pub fn lowest_wave(&self, pick: impl Fn(StepState) -> bool) -> Option<u32> {
        self.0.iter().filter(|c| c.count > 0 && pick(c.state)).map(|c| c.wave).min()
    }

    /// Every wave with a step, in order.
    pub fn waves(&self) -> Vec<u32> {
        let mut waves: Vec<u32> = self.0.iter().map(|c| c.wave).collect();
        waves.sort_unstable();
        waves.dedup();
        waves
    }
}

/// The choice for `plan` given its counts and how many of its steps are in flight. The current wave is the lowest
/// with an unfinished step; wave 0 (validation) has a failure budget of 0.
pub fn decide(plan: &Plan, counts: &Counts, in_flight: usize) -> Decision {
    if plan.state != PlanState::Running {
        return Decision::Hold;
    }
    let current = counts.lowest_wave(|s| !s.is_done());
    // A wave over its failure budget halts the plan, whether or not its other steps are done.
    let over_budget = counts.waves().into_iter().filter(|&w| current.is_none_or(|c| w <= c)).find(|&w| {
        let budget = if w == 0 { 0 } else { plan.strategy.max_failures };
        counts.of(w, StepState::Failed) > u64::from(budget)
    });
    if let Some(wave) = over_budget {
        if in_flight > 0 {
            return Decision::Drain;
        }
        let failed = counts.of(wave, StepState::Failed);
        let reason = if wave == 0 {
            format!("validation failed on {failed} staging target(s)")
        } else {
            format!("{failed} target(s) failed in wave {wave}, over its budget of {}", plan.strategy.max_failures)
        };
        return Decision::Halt { reason };
    }
    let Some(current) = current else { return Decision::Finish };
    let first = counts.lowest_wave(|_| true).unwrap_or(0);
    let started = counts.in_wave(current, |s| s != StepState::Pending) > 0;
    if plan.strategy.approve_waves && current != first && current > plan.approved_wave && !started {
        // The previous wave's stragglers finish first; then the plan waits.
        return if in_flight == 0 { Decision::AwaitApproval { wave: current } } else { Decision::Hold };
    }
    let slots = (plan.strategy.max_parallel.max(1) as usize).saturating_sub(in_flight);
    Decision::Dispatch { wave: current, slots }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use flotilla_core::fleet::{Goal, Strategy};
    use StepState::*;

    fn plan(max_failures: u32, approve_waves: bool, max_parallel: u32) -> Plan {
        Plan {
            id: "p".into(),
            bundle: "b".into(),
            selector: "".parse().expect("selector"),
            goal: Goal::Up { to: None },
            strategy: Strategy { max_failures, approve_waves, max_parallel, ..Strategy::default() },
            phase: None,
            rollback_of: None,
            approved_wave: 0,
            state: PlanState::Running,
            created_at: Utc::now(),
        }
    }

    fn counts(rows: &[(u32, StepState, u64)]) -> Counts {
        Counts(rows.iter().map(|&(wave, state, count)| StepCount { wave, state, count }).collect())
    }

    #[test]
    fn dispatches_the_lowest_unfinished_wave_up_to_the_parallelism() {
        let p = plan(0, false, 4);
        let c = counts(&[(1, Succeeded, 1), (2, Pending, 5), (2, Running, 1), (3, Pending, 10)]);
        assert_eq!(decide(&p, &c, 1), Decision::Dispatch { wave: 2, slots: 3 });
        assert_eq!(decide(&p, &c, 4), Decision::Dispatch { wave: 2, slots: 0 }, "at the parallelism");
        assert_eq!(decide(&p, &c, 9), Decision::Dispatch { wave: 2, slots: 0 }, "more in flight than allowed");
        let one = plan(0, false, 0);
        assert_eq!(decide(&one, &c, 0), Decision::Dispatch { wave: 2, slots: 1 }, "parallelism 0 means 1");
    }

    #[test]
    fn a_wave_over_its_budget_drains_then_halts_naming_why() {
        let p = plan(1, false, 4);
        let c = counts(&[(1, Succeeded, 3), (1, Failed, 2), (2, Pending, 5)]);
        assert_eq!(decide(&p, &c, 1), Decision::Drain);
        assert_eq!(
            decide(&p, &c, 0),
            Decision::Halt { reason: "2 target(s) failed in wave 1, over its budget of 1".into() }
        );
        let within = counts(&[(1, Succeeded, 3), (1, Failed, 1), (2, Pending, 5)]);
        assert_eq!(decide(&p, &within, 0), Decision::Dispatch { wave: 2, slots: 4 }, "within the budget");
    }

    #[test]
    fn validation_has_no_budget_and_later_waves_count_only_once_reached() {
        let p = plan(5, false, 4);
        let c = counts(&[(0, Failed, 1), (1, Pending, 3)]);
        assert_eq!(decide(&p, &c, 0), Decision::Halt { reason: "validation failed on 1 staging target(s)".into() });
        // Failures in a wave not yet current (a rollback-failed plan's) do not stop the current one.
        let ahead = counts(&[(1, Pending, 2), (2, Failed, 9)]);
        assert_eq!(decide(&plan(0, false, 2), &ahead, 0), Decision::Dispatch { wave: 1, slots: 2 });
    }

    #[test]
    fn approvals_hold_each_wave_after_the_first_until_approved() {
        let mut p = plan(0, true, 4);
        let first = counts(&[(1, Pending, 1), (2, Pending, 5)]);
        assert_eq!(decide(&p, &first, 0), Decision::Dispatch { wave: 1, slots: 4 }, "the first wave needs none");
        let next = counts(&[(1, Succeeded, 1), (2, Pending, 5)]);
        assert_eq!(decide(&p, &next, 0), Decision::AwaitApproval { wave: 2 });
        assert_eq!(decide(&p, &next, 1), Decision::Hold, "stragglers finish before the plan waits");
        p.approved_wave = 2;
        assert_eq!(decide(&p, &next, 0), Decision::Dispatch { wave: 2, slots: 4 });
        let begun = counts(&[(1, Succeeded, 1), (2, Running, 1), (2, Pending, 4)]);
        p.approved_wave = 0;
        assert_eq!(decide(&p, &begun, 1), Decision::Dispatch { wave: 2, slots: 3 }, "a started wave goes on");
    }

    #[test]
    fn finishes_when_every_step_is_done_and_holds_when_not_running() {
        let p = plan(0, false, 4);
        let done = counts(&[(1, Succeeded, 3), (2, Skipped, 2)]);
        assert_eq!(decide(&p, &done, 0), Decision::Finish);
        for state in [PlanState::Paused, PlanState::AwaitingApproval, PlanState::Pending] {
            let held = Plan { state, ..plan(0, false, 4) };
            assert_eq!(decide(&held, &counts(&[(1, Pending, 3)]), 0), Decision::Hold, "{state}");
        }
    }
}

/// Which candidates (their hosts, in dispatch order) may start now with at most `max` steps in flight per host:
/// `busy` counts the steps in flight per host and is updated with those taken. A candidate with no known host is
/// never held back.
pub fn within_host_limit(
    hosts: &[Option<&str>],
    busy: &mut std::collections::HashMap<String, u32>,
    max: u32,
) -> Vec<bool> {
    hosts
        .iter()
        .map(|host| match host {
            None => true,
            Some(host) => {
                let n = busy.entry(host.to_string()).or_default();
                let fits = *n < max;
                if fits {
                    *n += 1;
                }
                fits
            }
        })
        .collect()
}

#[cfg(test)]
#[test]
fn at_most_max_per_host_counting_what_is_in_flight() {
    let mut busy = std::collections::HashMap::from([("db1".to_string(), 1)]);
    let hosts = [Some("db1"), Some("db2"), Some("db2"), Some("db2"), None, Some("db1"), Some("db3")];
    assert_eq!(within_host_limit(&hosts, &mut busy, 2), [true, true, true, false, true, false, true]);
    assert_eq!((busy["db1"], busy["db2"], busy["db3"]), (2, 2, 1));
}
