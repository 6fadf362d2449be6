//! What one scheduler pass reads from the store, for plans of growing size: every step (as the scheduler did
//! before), against what it reads now (counts per wave and state, the steps in flight, one page of pending steps).
//! The scheduler makes a pass whenever a result arrives, so at thousands of targets this is paid thousands of times.
//! SQLite store in a temporary directory; a tenth of the steps done, eight in flight. Median of 50 passes:
//!
//!     cargo bench -p flotilla-tests --bench scheduler

use std::time::{Duration, Instant};

use chrono::Utc;
use flotilla_coordinator::{SqlStore, Store};
use flotilla_core::fleet::{Goal, Plan, PlanState, Step, StepState, Strategy, WaveSpec};
use flotilla_tests::{median, pending_step};

const PASSES: usize = 50;

fn plan() -> Plan {
    Plan {
        id: "p".into(),
        bundle: "b".repeat(64),
        selector: "env=prod".parse().expect("selector"),
        goal: Goal::Up { to: None },
        strategy: Strategy { waves: vec![WaveSpec::Percent(100)], max_parallel: 8, ..Strategy::default() },
        phase: None,
        rollback_of: None,
        approved_wave: 0,
        state: PlanState::Running,
        created_at: Utc::now(),
    }
}

#[tokio::main]
async fn main() {
    println!("One scheduler pass over a plan, SQLite store; median of {PASSES} passes.\n");
    println!("{:>8} {:>18} {:>18}", "steps", "every step (ms)", "counts+page (ms)");
    for n in [100usize, 1_000, 5_000, 20_000] {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqlStore::open(&format!("sqlite://{}", dir.path().join("store.db").display())).await.expect("open");
        let steps: Vec<Step> = (0..n).map(|i| pending_step("p", &format!("db-{i:06}"), 1)).collect();
        store.create_plan(&plan(), &steps).await.expect("create");
        for (i, s) in steps.iter().enumerate().take(n / 10 + 8) {
            let to = if i < n / 10 { StepState::Skipped } else { StepState::Assigned };
            store.set_step_state("p", &s.target, StepState::Pending, to, Some(1), None).await.expect("cas");
        }
        let (mut all, mut now) = (Vec::new(), Vec::new());
        for _ in 0..PASSES {
            let started = Instant::now();
            let every = store.steps("p").await.expect("steps");
            all.push(started.elapsed());
            assert_eq!(every.len(), n);
            let started = Instant::now();
            let counts = store.step_counts("p").await.expect("counts");
            let assigned = store.steps_in_state("p", StepState::Assigned, None, None, u32::MAX).await.expect("steps");
            let running = store.steps_in_state("p", StepState::Running, None, None, u32::MAX).await.expect("steps");
            let page = store.steps_in_state("p", StepState::Pending, Some(1), None, 64).await.expect("page");
            now.push(started.elapsed());
            assert_eq!((counts.len(), assigned.len() + running.len(), page.len()), (3, 8, 64.min(n - n / 10 - 8)));
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("{n:>8} {:>18.2} {:>18.2}", ms(median(all)), ms(median(now)));
    }
}
