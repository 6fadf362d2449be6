//! One suite for every `Store`: the SQLite file (embedded default) and PostgreSQL (a real server).

use std::collections::BTreeMap;

use chrono::Utc;
use flotilla_coordinator::{
    Assigning, AuditQuery, Fact, NewEvent, SqlStore, Starting, StepCount, StepFinish, Store, StoreError, Unchanged,
    EVENT_PAGE,
};
use flotilla_core::fleet::{AuditEntry, EventKind, Goal, Plan, PlanState, Step, StepState, Strategy, Target};
use flotilla_core::Engine;
use flotilla_tests::*;

macro_rules! on_every_store {
    ($($test:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test(flavor = "multi_thread")] async fn $test() { super::$test(super::Sqlite).await } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread")] async fn $test() { super::$test(super::Postgres).await } )* }
    };
}

mod batches;
mod upkeep;

on_every_store!(
    bundles_are_content_addressed,
    targets_and_selectors,
    plans_steps_and_transitions,
    events_and_audit,
    restart_loses_nothing,
    approvals_versions_and_tokens,
);

fn target(name: &str, env: &str) -> Target {
    Target {
        name: name.into(),
        engine: Engine::Postgres,
        labels: BTreeMap::from([("env".to_string(), env.to_string())]),
        agent: "agent-1".into(),
    }
}

fn plan(id: &str) -> Plan {
    Plan {
        id: id.into(),
        bundle: "b".repeat(64),
        selector: "env=prod".parse().expect("selector"),
        goal: Goal::Up { to: Some(v(3)) },
        strategy: Strategy {
            waves: ["1", "50%", "100%"].iter().map(|w| w.parse().expect("wave")).collect(),
            max_parallel: 4,
            ..Strategy::default()
        },
        phase: None,
        rollback_of: None,
        approved_wave: 0,
        state: PlanState::Pending,
        created_at: Utc::now(),
    }
}

/// The result of `target`'s step in plan `p1` under `token`: it succeeded, from version 0 to `after`.
fn succeeded(target: &str, token: u64, after: u64) -> StepFinish {
    StepFinish {
        plan_id: "p1".into(),
        target: target.into(),
        token,
        state: StepState::Succeeded,
        error: None,
        before: Some(v(0)),
        after: Some(v(after)),
        detail: serde_json::json!({}),
    }
}

fn step(plan: &str, target: &str, wave: u32) -> Step {
    pending_step(plan, target, wave)
}

/// The counts the store keeps as steps move agree with a count over the plan's steps, read both ways (one plan's,
/// every plan's).
async fn counts_agree(store: &SqlStore, plan_id: &str) {
    let mut counted: BTreeMap<(u32, &str), u64> = BTreeMap::new();
    for s in store.steps(plan_id).await.expect("steps") {
        *counted.entry((s.wave, s.state.as_str())).or_default() += 1;
    }
    let counted: Vec<StepCount> = counted
        .into_iter()
        .map(|((wave, state), count)| StepCount { wave, state: state.parse().expect("state"), count })
        .collect();
    let sorted = |mut counts: Vec<StepCount>| {
        counts.sort_by_key(|c| (c.wave, c.state.as_str()));
        counts
    };
    let kept = sorted(store.step_counts(plan_id).await.expect("counts"));
    assert_eq!(kept, counted, "{plan_id}: the kept counts are the steps' counts");
    let all = store.all_step_counts().await.expect("all counts").remove(plan_id).unwrap_or_default();
    assert_eq!(sorted(all), counted, "{plan_id}: among every plan's counts");
}

async fn bundles_are_content_addressed(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = SqlStore::open(&db.url).await.expect("open");
    let body = r#"{"migrations": [{"version": 1}]}"#;
    let id = store.put_bundle(body).await.expect("put");
    assert_eq!(id.len(), 64);
    assert_eq!(store.put_bundle(body).await.expect("again"), id, "storing it again is a no-op");
    assert_eq!(store.bundle(&id).await.expect("get").as_deref(), Some(body));
    assert_ne!(store.put_bundle("{}").await.expect("other"), id);
    assert!(store.bundle(&"0".repeat(64)).await.expect("get").is_none());
}

async fn targets_and_selectors(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = SqlStore::open(&db.url).await.expect("open");
    store.upsert_targets(&[target("db-b", "prod")]).await.expect("upsert");
    store.upsert_targets(&[target("db-a", "staging"), target("db-a", "prod")]).await.expect("the last stands");
    store.upsert_targets(&[target("db-b", "staging"), target("db-b", "prod")]).await.expect("upsert replaces");
    let all = store.targets().await.expect("targets");
    assert_eq!(all.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["db-a", "db-b"]);
    let prod: flotilla_core::fleet::Selector = "env=prod".parse().expect("selector");
    assert_eq!(all.iter().filter(|t| prod.matches(t)).count(), 2);
    // An agent of 1,000 targets registers in one transaction (256 + 16 + 1 rows a statement), its last registration
    // replacing what another agent had registered for the same names.
    let many: Vec<Target> = (0..1_000).map(|i| target(&format!("db-{i:04}"), "staging")).collect();
    store.upsert_targets(&many).await.expect("many");
    let moved: Vec<Target> = many.iter().map(|t| Target { agent: "agent-2".into(), ..t.clone() }).collect();
    store.upsert_targets(&moved).await.expect("moved");
    let all = store.targets().await.expect("targets");
    assert_eq!(all.len(), 1_002);
    assert!(all.iter().filter(|t| t.name.starts_with("db-0")).all(|t| t.agent == "agent-2" && !prod.matches(t)));
}

async fn plans_steps_and_transitions(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = SqlStore::open(&db.url).await.expect("open");
    store.create_plan(&plan("p1"), &[step("p1", "db-a", 0), step("p1", "db-b", 1)]).await.expect("create");
    // A plan with a step that cannot be stored is not created at all.
    let dup = [step("p2", "db-a", 0), step("p2", "db-a", 1)];
    assert!(store.create_plan(&plan("p2"), &dup).await.is_err());
    assert!(store.plan("p2").await.expect("get").is_none(), "plan and steps commit together");

    let got = store.plan("p1").await.expect("get").expect("p1");
    let mut expected = plan("p1");
    expected.created_at = got.created_at;
    assert_eq!(got, expected);
    assert!(store.set_plan_state("p1", PlanState::Pending, PlanState::Running).await.expect("cas"));
    assert!(
        !store.set_plan_state("p1", PlanState::Pending, PlanState::Running).await.expect("stale cas"),
        "stale from-state"
    );
    assert!(matches!(
        store.set_plan_state("p1", PlanState::Succeeded, PlanState::Running).await,
        Err(StoreError::IllegalTransition { .. })
    ));
    assert_eq!(store.live_plans().await.expect("live").len(), 1);

    assert!(store
        .set_step_state("p1", "db-a", StepState::Pending, StepState::Assigned, Some(42), None)
        .await
        .expect("cas"));
    assert!(!store
        .set_step_state("p1", "db-a", StepState::Pending, StepState::Assigned, Some(43), None)
        .await
        .expect("cas"));
    assert!(store
        .set_step_state("p1", "db-a", StepState::Assigned, StepState::Running, Some(42), None)
        .await
        .expect("cas"));
    assert!(store
        .set_step_state("p1", "db-a", StepState::Running, StepState::Failed, Some(42), Some("boom"))
        .await
        .expect("cas"));
    let steps = store.steps("p1").await.expect("steps");
    assert_eq!(
        (steps[0].state, steps[0].token, steps[0].error.as_deref()),
        (StepState::Failed, Some(42), Some("boom"))
    );
    assert_eq!(steps[1].state, StepState::Pending);

    assert!(store.set_plan_state("p1", PlanState::Running, PlanState::Halted).await.expect("cas"));
    assert!(store.live_plans().await.expect("live").is_empty());
    let steps = store.steps("p1").await.expect("steps");
    let states: Vec<_> = steps.iter().map(|s| s.state).collect();
    assert_eq!(states, [StepState::Failed, StepState::Skipped], "halting skips the pending step with it");
    counts_agree(&store, "p1").await;
}

async fn events_and_audit(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = SqlStore::open(&db.url).await.expect("open");
    store.create_plan(&plan("p1"), &[]).await.expect("create");
    let mut tasks = Vec::new();
    let store = std::sync::Arc::new(store);
    for i in 0..20 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.append_event("p1", Some("db-a"), EventKind::Statement, &serde_json::json!({ "i": i })).await
        }));
    }
    let mut seqs: Vec<u64> = Vec::new();
    for t in tasks {
        seqs.push(t.await.expect("join").expect("append"));
    }
    seqs.sort();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "concurrent appends get every number once, without gaps");
    let after = store.events_after("p1", 15, EVENT_PAGE).await.expect("events");
    assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [16, 17, 18, 19, 20]);
    let page = store.events_after("p1", 2, 3).await.expect("events");
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5], "a read returns at most its limit");

    for action in ["pause", "resume"] {
        let entry = AuditEntry {
            at: Utc::now(),
            actor: "operator:alice".into(),
            action: action.into(),
            plan_id: Some("p1".into()),
            detail: String::new(),
        };
        store.audit(&entry).await.expect("audit");
    }
    let all = AuditQuery { limit: 10, ..Default::default() };
    let log = store.audit_log(&all).await.expect("log");
    assert_eq!(log.iter().map(|r| r.entry.action.as_str()).collect::<Vec<_>>(), ["pause", "resume"]);
    // Pages: after the first entry, one at a time; one plan; from a time on.
    let page = AuditQuery { after: Some(log[0].id.clone()), limit: 1, ..Default::default() };
    assert_eq!(store.audit_log(&page).await.expect("page"), log[1..]);
    let other = AuditQuery { plan_id: Some("p2".into()), limit: 10, ..Default::default() };
    assert!(store.audit_log(&other).await.expect("other plan").is_empty());
    let later = AuditQuery { since: Some(Utc::now() + chrono::Duration::seconds(60)), limit: 10, ..Default::default() };
    assert!(store.audit_log(&later).await.expect("later").is_empty());
    let earlier =
        AuditQuery { since: Some(Utc::now() - chrono::Duration::seconds(60)), limit: 10, ..Default::default() };
    assert_eq!(store.audit_log(&earlier).await.expect("earlier").len(), 2);
}

async fn restart_loses_nothing(engine: Engine) {
    let db = TestDb::new(engine).await;
    {
        let store = SqlStore::open(&db.url).await.expect("open");
        store.create_plan(&plan("p1"), &[step("p1", "db-a", 0)]).await.expect("create");
        store.set_plan_state("p1", PlanState::Pending, PlanState::Running).await.expect("cas");
        store.append_event("p1", None, EventKind::Started, &serde_json::json!({ "wave": 0 })).await.expect("event");
    }
    let reopened = SqlStore::open(&db.url).await.expect("reopen");
    let live = reopened.live_plans().await.expect("live");
    assert_eq!(live.iter().map(|p| (p.id.as_str(), p.state)).collect::<Vec<_>>(), [("p1", PlanState::Running)]);
    assert_eq!(reopened.steps("p1").await.expect("steps").len(), 1);
    assert_eq!(reopened.events_after("p1", 0, EVENT_PAGE).await.expect("events").len(), 1);
    assert!(SqlStore::open("redis://nope").await.is_err());
}

async fn approvals_versions_and_tokens(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = SqlStore::open(&db.url).await.expect("open");
    assert_eq!(store.max_token().await.expect("max token"), 0);
    let mut rollback = step("p1", "db-b", 2);
    rollback.goal = Some(Goal::Down { to: v(7) });
    store.create_plan(&plan("p1"), &[step("p1", "db-a", 1), rollback]).await.expect("create");

    // Approval only from awaiting_approval, and only forward.
    assert!(!store.approve_wave("p1", 2).await.expect("approve"), "a pending plan is not awaiting approval");
    assert!(store.set_plan_state("p1", PlanState::Pending, PlanState::Running).await.expect("run"));
    assert!(store.set_plan_state("p1", PlanState::Running, PlanState::AwaitingApproval).await.expect("await"));
    assert!(store.approve_wave("p1", 2).await.expect("approve"));
    let p = store.plan("p1").await.expect("plan").expect("exists");
    assert_eq!((p.state, p.approved_wave), (PlanState::Running, 2));
    assert!(store.set_plan_state("p1", PlanState::Running, PlanState::AwaitingApproval).await.expect("await"));
    assert!(!store.approve_wave("p1", 2).await.expect("approve"), "wave 2 was approved already");

    let b = store.step("p1", "db-b").await.expect("step").expect("exists");
    assert_eq!(b.goal, Some(Goal::Down { to: v(7) }), "a step's own goal round-trips");
    assert!(store.step("p1", "db-z").await.expect("step").is_none());

    // Started and finished only under the step's current token; the first `before` sticks.
    let assign = |token| store.set_step_state("p1", "db-a", StepState::Pending, StepState::Assigned, Some(token), None);
    assert!(assign(40).await.expect("assign"));
    let start = |token, before| Starting {
        plan_id: "p1".into(),
        target: "db-a".into(),
        token,
        before: Some(before),
        detail: Some(serde_json::json!({ "n": token })),
    };
    let events = store.events_after("p1", 0, EVENT_PAGE).await.expect("events").len();
    assert!(!store.start_step(&start(39, v(1))).await.expect("start"), "an older token starts nothing");
    assert!(store.start_step(&start(40, v(3))).await.expect("start"));
    assert!(!store.start_step(&start(40, v(3))).await.expect("start"), "started once");
    let written = store.events_after("p1", 0, EVENT_PAGE).await.expect("events");
    assert_eq!(written.len(), events + 1, "one step_started event, for the start that moved the step");
    let last = written.last().expect("event");
    assert_eq!((last.kind, last.detail["n"].as_u64()), (EventKind::StepStarted, Some(40)));
    // Reconciled and re-dispatched under a newer token: the first run's result must not finish the new run.
    assert!(store
        .set_step_state("p1", "db-a", StepState::Running, StepState::Pending, Some(40), None)
        .await
        .expect("reconcile"));
    assert!(assign(41).await.expect("assign again"));
    let finish = |token, before, after| StepFinish {
        plan_id: "p1".into(),
        target: "db-a".into(),
        token,
        state: StepState::Succeeded,
        error: None,
        before,
        after,
        detail: serde_json::json!({ "applied_version": after }),
    };
    let events = store.events_after("p1", 0, EVENT_PAGE).await.expect("events").len();
    assert!(store.finish_step(&finish(40, Some(v(5)), Some(v(9)))).await.expect("finish").is_none(), "stale token");
    assert_eq!(
        store.events_after("p1", 0, EVENT_PAGE).await.expect("events").len(),
        events,
        "a stale result writes nothing"
    );
    let done = store.finish_step(&finish(41, Some(v(5)), Some(v(9)))).await.expect("finish").expect("finished");
    assert_eq!((done.state, done.before, done.after), (StepState::Succeeded, Some(v(3)), Some(v(9))));
    assert!(store.finish_step(&finish(41, Some(v(5)), Some(v(9)))).await.expect("finish").is_none(), "repeated");
    let written = store.events_after("p1", 0, EVENT_PAGE).await.expect("events");
    assert_eq!(written.len(), events + 1, "the result and its event are one fact");
    let last = written.last().expect("event");
    assert_eq!((last.kind.as_str(), last.target.as_deref()), ("succeeded", Some("db-a")));
    assert_eq!((last.detail["applied_version"].as_i64(), last.detail["wave"].as_u64()), (Some(9), Some(1)));
    // A step that never read its history records no `before`: it stays unknown.
    assert!(store
        .set_step_state("p1", "db-b", StepState::Pending, StepState::Assigned, Some(7), None)
        .await
        .expect("assign"));
    let unread = StepFinish { target: "db-b".into(), token: 7, state: StepState::Failed, ..finish(7, None, None) };
    let failed = store.finish_step(&unread).await.expect("finish").expect("finished");
    assert_eq!((failed.state, failed.before, failed.after), (StepState::Failed, None, None));

    // The highest token ever recorded survives, so a restarted in-process lock never goes back.
    assert_eq!(store.max_token().await.expect("max token"), 41);
    let lock = flotilla_coordinator::InProcessLock::with_token_floor(41);
    let lease = flotilla_coordinator::Lock::acquire(&lock, "db-a", "c1", std::time::Duration::from_secs(5))
        .await
        .expect("acquire")
        .expect("free");
    assert_eq!(lease.token, 42);
}
