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

on_every_store!(
    bundles_are_content_addressed,
    targets_and_selectors,
    plans_steps_and_transitions,
    events_and_audit,
    restart_loses_nothing,
    approvals_versions_and_tokens,
    counts_and_pages_of_steps,
    several_targets_steps_in_one_call,
    a_batch_of_assignments_is_one_transaction_of_compare_and_sets,
    facts_from_agents_are_recorded_in_order_each_by_its_compare_and_set,
    a_batch_of_many_events_keeps_each_plans_order_and_numbers,
    a_large_batch_of_starts_and_results_applies_each_as_one_after_another_would,
    many_writers_of_one_plans_events_at_once_all_commit,
    a_result_under_the_steps_token_is_recorded_after_it_was_taken_back,
    lists_and_fleet_status_in_one_query_each,
    the_schema_is_versioned_old_stores_are_adopted_and_newer_ones_refused
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

/// PostgreSQL: a plan of many steps refreshes the steps table's statistics when it is created, so the scheduler's
/// counts are planned for the table's real size at once (hashed, not sorted), not after autovacuum's next round.
/// A small plan does not pay for it.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_statistics_follow_a_large_plan() {
    use sqlx::Connection;
    let db = TestDb::new(Engine::Postgres).await;
    let store = SqlStore::open(&db.url).await.expect("open");
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let analyzed = "SELECT count(*) FROM pg_stats WHERE tablename = 'steps'";
    let small: Vec<Step> = (0..10).map(|i| step("p1", &format!("t{i:04}"), 1)).collect();
    store.create_plan(&plan("p1"), &small).await.expect("small plan");
    let columns: i64 = sqlx::query_scalar(analyzed).fetch_one(&mut conn).await.expect("pg_stats");
    assert_eq!(columns, 0, "a small plan leaves the statistics to autovacuum");
    let large: Vec<Step> = (0..1_000).map(|i| step("p2", &format!("t{i:04}"), 1)).collect();
    store.create_plan(&plan("p2"), &large).await.expect("large plan");
    let columns: i64 = sqlx::query_scalar(analyzed).fetch_one(&mut conn).await.expect("pg_stats");
    assert!(columns > 0, "a plan of 1,000 steps analyzes the steps table");
}

/// SQLite: what is written reaches the database file within seconds, copied from the write-ahead log by the store's
/// own checkpoints beside the writer, not inside a commit. 2 MiB is under the 1,000 log pages at which SQLite's
/// writer checkpoints by default, and far under the store's own backstop, so nothing else would copy it.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_checkpoints_the_log_beside_the_writer() {
    let dir = tempfile::tempdir().expect("dir");
    let (file, log) = (dir.path().join("store.db"), dir.path().join("store.db-wal"));
    let store = SqlStore::open(&format!("sqlite://{}", file.display())).await.expect("open");
    let size = |path: &std::path::Path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let before = size(&file);
    for i in 0..64 {
        store.put_bundle(&format!("{i}:{}", "x".repeat(32 * 1024))).await.expect("bundle");
    }
    assert!(size(&log) >= 2 << 20, "the 2 MiB written are in the log first ({} bytes)", size(&log));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while size(&file) < before + (2 << 20) {
        assert!(std::time::Instant::now() < deadline, "the database file is still {} bytes", size(&file));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Still the same store: the copied pages read back.
    let id = store.put_bundle(&format!("0:{}", "x".repeat(32 * 1024))).await.expect("the same bundle again");
    assert!(store.bundle(&id).await.expect("read").is_some());
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

/// What the scheduler reads instead of every step: counts per wave and state, and pages of steps in one state.
async fn counts_and_pages_of_steps(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = SqlStore::open(&db.url).await.expect("open");
    // Wave 1: db-00 … db-09; wave 2: db-10 … db-14. Another plan's steps must never show.
    let steps: Vec<Step> = (0..15).map(|i| step("p1", &format!("db-{i:02}"), if i < 10 { 1 } else { 2 })).collect();
    store.create_plan(&plan("p1"), &steps).await.expect("create");
    store.create_plan(&plan("p2"), &[step("p2", "db-00", 1)]).await.expect("create");
    for (target, to) in [("db-03", StepState::Assigned), ("db-05", StepState::Assigned), ("db-07", StepState::Skipped)]
    {
        assert!(store.set_step_state("p1", target, StepState::Pending, to, Some(1), None).await.expect("cas"));
    }
    assert!(store
        .set_step_state("p1", "db-05", StepState::Assigned, StepState::Running, Some(1), None)
        .await
        .expect("cas"));

    let count = |wave, state, count| StepCount { wave, state, count };
    let mut counts = store.step_counts("p1").await.expect("counts");
    counts.sort_by_key(|c| (c.wave, c.state.as_str()));
    assert_eq!(
        counts,
        [
            count(1, StepState::Assigned, 1),
            count(1, StepState::Pending, 7),
            count(1, StepState::Running, 1),
            count(1, StepState::Skipped, 1),
            count(2, StepState::Pending, 5),
        ]
    );

    let names = |steps: Vec<Step>| steps.into_iter().map(|s| s.target).collect::<Vec<_>>();
    let page = |wave, after, limit| store.steps_in_state("p1", StepState::Pending, wave, after, limit);
    assert_eq!(names(page(Some(1), None, 3).await.expect("page")), ["db-00", "db-01", "db-02"]);
    assert_eq!(names(page(Some(1), Some("db-02"), 3).await.expect("page")), ["db-04", "db-06", "db-08"]);
    assert_eq!(names(page(Some(1), Some("db-08"), 3).await.expect("page")), ["db-09"]);
    assert_eq!(names(page(Some(2), None, 100).await.expect("page")).len(), 5);
    assert_eq!(
        names(page(None, Some("db-09"), 100).await.expect("page")),
        ["db-10", "db-11", "db-12", "db-13", "db-14"]
    );
    let running = store.steps_in_state("p1", StepState::Running, None, None, 100).await.expect("running");
    assert_eq!(names(running), ["db-05"]);
    assert!(store.steps_in_state("p1", StepState::Failed, None, None, 100).await.expect("failed").is_empty());
}

/// Several targets' steps in one call (the scheduler's check of the locks it renews): only that plan's, only those
/// asked for, over more targets than one query's list holds.
async fn several_targets_steps_in_one_call(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = SqlStore::open(&db.url).await.expect("open");
    let names: Vec<String> = (0..1_200).map(|i| format!("db-{i:04}")).collect();
    let steps: Vec<Step> = names.iter().map(|n| step("p1", n, 1)).collect();
    store.create_plan(&plan("p1"), &steps).await.expect("create");
    store.create_plan(&plan("p2"), &[step("p2", "db-0001", 1)]).await.expect("create");
    assert!(store
        .set_step_state("p1", "db-0001", StepState::Pending, StepState::Assigned, Some(7), None)
        .await
        .expect("cas"));

    let mut got = store.steps_of("p1", &["db-0001", "db-0003", "db-9999"]).await.expect("steps");
    got.sort_by(|a, b| a.target.cmp(&b.target));
    let got: Vec<(&str, StepState)> = got.iter().map(|s| (s.target.as_str(), s.state)).collect();
    assert_eq!(got, [("db-0001", StepState::Assigned), ("db-0003", StepState::Pending)], "p2's db-0001 is not p1's");
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(store.steps_of("p1", &all).await.expect("all").len(), 1_200);
    assert!(store.steps_of("p1", &[]).await.expect("none").is_empty());
}

/// Steps assigned in a batch: each still pending moves under its own token with its event; one no longer pending is
/// left as it is, with no event.
async fn a_batch_of_assignments_is_one_transaction_of_compare_and_sets(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = SqlStore::open(&db.url).await.expect("open");
    let steps: Vec<Step> = ["a", "b", "c"].iter().map(|t| step("p1", t, 1)).collect();
    store.create_plan(&plan("p1"), &steps).await.expect("create");
    assert!(store.set_step_state("p1", "b", StepState::Pending, StepState::Skipped, None, None).await.expect("cas"));
    let assigning = |target: &str, token| Assigning {
        target: target.into(),
        token,
        detail: serde_json::json!({ "agent": "agent-1", "fencing_token": token, "wave": 1 }),
    };
    let batch = [assigning("a", 7), assigning("b", 8), assigning("c", 9)];
    let moved = store.assign_steps("p1", &batch).await.expect("assign");
    assert_eq!(moved, ["a", "c"], "the skipped step is not assigned");
    let state = |s: Option<Step>| s.map(|s| (s.state, s.token));
    assert_eq!(state(store.step("p1", "a").await.expect("a")), Some((StepState::Assigned, Some(7))));
    assert_eq!(state(store.step("p1", "b").await.expect("b")), Some((StepState::Skipped, None)));
    assert_eq!(state(store.step("p1", "c").await.expect("c")), Some((StepState::Assigned, Some(9))));
    let events = store.events_after("p1", 0, EVENT_PAGE).await.expect("events");
    let seen: Vec<_> =
        events.iter().map(|e| (e.seq, e.target.as_deref(), e.kind, e.detail["fencing_token"].clone())).collect();
    assert_eq!(seen, [(1, Some("a"), EventKind::Assigned, 7.into()), (2, Some("c"), EventKind::Assigned, 9.into())]);
    // Again: nothing is pending any more, so nothing moves and nothing is written.
    assert!(store.assign_steps("p1", &batch).await.expect("assign again").is_empty());
    assert_eq!(store.events_after("p1", 0, EVENT_PAGE).await.expect("events").len(), 2);
    counts_agree(&store, "p1").await;
}

/// The writer's batch: events, starts and results of several steps in one call, each written only if its own
/// compare-and-set holds, the events in the order given.
async fn facts_from_agents_are_recorded_in_order_each_by_its_compare_and_set(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = SqlStore::open(&db.url).await.expect("open");
    store.create_plan(&plan("p1"), &[step("p1", "a", 1), step("p1", "b", 1)]).await.expect("create");
    for (target, token) in [("a", 5), ("b", 6)] {
        assert!(store
            .set_step_state("p1", target, StepState::Pending, StepState::Assigned, Some(token), None)
            .await
            .expect("cas"));
    }
    let start = |target: &str, token| {
        Fact::Start(Starting {
            plan_id: "p1".into(),
            target: target.into(),
            token,
            before: Some(v(0)),
            detail: Some(serde_json::json!({})),
        })
    };
    let event = |target: &str, n: u32| {
        Fact::Event(NewEvent {
            plan_id: "p1".into(),
            target: Some(target.into()),
            kind: EventKind::Statement,
            detail: serde_json::json!({ "n": n }),
        })
    };
    let finish = |target: &str, token| {
        Fact::Finish(StepFinish {
            plan_id: "p1".into(),
            target: target.into(),
            token,
            state: StepState::Succeeded,
            error: None,
            before: Some(v(0)),
            after: Some(v(1)),
            detail: serde_json::json!({}),
        })
    };
    let facts = [start("a", 5), start("b", 99), event("a", 1), finish("a", 5), finish("b", 99), finish("a", 5)];
    let written = store.record(&facts).await.expect("record");
    assert_eq!(written, [true, false, true, true, false, false], "a stale token or a repeat writes nothing");
    let a = store.step("p1", "a").await.expect("a").expect("a");
    assert_eq!((a.state, a.before, a.after), (StepState::Succeeded, Some(v(0)), Some(v(1))));
    let b = store.step("p1", "b").await.expect("b").expect("b");
    assert_eq!(b.state, StepState::Assigned, "b is untouched");
    let events = store.events_after("p1", 0, EVENT_PAGE).await.expect("events");
    let seen: Vec<_> = events.iter().map(|e| (e.target.as_deref(), e.kind)).collect();
    assert_eq!(
        seen,
        [(Some("a"), EventKind::StepStarted), (Some("a"), EventKind::Statement), (Some("a"), EventKind::Succeeded)]
    );
    // A result that is not an end refuses the whole batch, before anything is written.
    let mut bad = finish("b", 6);
    if let Fact::Finish(f) = &mut bad {
        f.state = StepState::Running;
    }
    assert!(matches!(store.record(&[event("b", 2), bad]).await, Err(StoreError::IllegalTransition { .. })));
    assert_eq!(store.events_after("p1", 0, EVENT_PAGE).await.expect("events").len(), 3);
    counts_agree(&store, "p1").await;
}

/// Events are appended at the end of their transaction in a few multi-row inserts: a batch of 150 interleaved over
/// two plans (64 + 16 + 4 + 1 rows per statement, and the remainders) keeps each plan's order, numbered on from its
/// last event with no gap.
async fn a_batch_of_many_events_keeps_each_plans_order_and_numbers(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = SqlStore::open(&db.url).await.expect("open");
    for id in ["p1", "p2"] {
        store.create_plan(&plan(id), &[step(id, "a", 1)]).await.expect("create");
    }
    let event = |plan: &str, n: usize| {
        Fact::Event(NewEvent {
            plan_id: plan.into(),
            target: Some("a".into()),
            kind: EventKind::Statement,
            detail: serde_json::json!({ "n": n }),
        })
    };
    store.record(&[event("p1", 0)]).await.expect("first");
    let batch: Vec<Fact> = (1..=150).map(|n| event(if n % 3 == 0 { "p2" } else { "p1" }, n)).collect();
    assert!(store.record(&batch).await.expect("record").iter().all(|w| *w));
    let p1 = std::iter::once(0).chain((1..=150).filter(|n| n % 3 != 0)).collect();
    for (id, expected) in [("p1", p1), ("p2", (3..=150).step_by(3).collect::<Vec<usize>>())] {
        let events = store.events_after(id, 0, EVENT_PAGE).await.expect("events");
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=expected.len() as u64).collect::<Vec<_>>(), "{id}: numbered 1, 2, … with no gap");
        let ns: Vec<usize> = events.iter().map(|e| e.detail["n"].as_u64().expect("n") as usize).collect();
        assert_eq!(ns, expected, "{id}: in the order recorded");
    }
}

/// A batch is a few UPDATEs over VALUES lists (64 + 16 + 4 + 1 rows each), yet it writes what the facts would one
/// after another: over two plans and 150 steps, each step's start and result under its token are written; a stale
/// token, a repeat (even one saying otherwise), a start after its own result, a second assignment of a target in one
/// call write nothing; the events follow the facts' order.
async fn a_large_batch_of_starts_and_results_applies_each_as_one_after_another_would(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = SqlStore::open(&db.url).await.expect("open");
    let targets = |id: &str, n: usize| (0..n).map(|i| format!("{id}-t{i:03}")).collect::<Vec<_>>();
    let plans = [("p1", targets("p1", 100)), ("p2", targets("p2", 50))];
    let token = |t: &str| 1_000 + t.bytes().fold(0u64, |h, b| h * 31 % 1_000_003 + u64::from(b));
    for (id, targets) in &plans {
        let steps: Vec<Step> = targets.iter().map(|t| step(id, t, 1)).collect();
        store.create_plan(&plan(id), &steps).await.expect("create");
        let mut assigning: Vec<Assigning> = targets
            .iter()
            .map(|t| Assigning { target: t.clone(), token: token(t), detail: serde_json::json!({}) })
            .collect();
        assigning.push(Assigning { target: targets[0].clone(), token: 7, detail: serde_json::json!({}) });
        assert_eq!(store.assign_steps(id, &assigning).await.expect("assign").len(), targets.len());
        let first = store.step(id, &targets[0]).await.expect("step").expect("first");
        assert_eq!(first.token, Some(token(&targets[0])), "the first assignment of a target in a call stands");
    }
    let start = |id: &str, t: &str, token| {
        Fact::Start(Starting {
            plan_id: id.into(),
            target: t.into(),
            token,
            before: Some(v(1)),
            detail: Some(serde_json::json!({})),
        })
    };
    let finish = |id: &str, t: &str, token, state| {
        let (error, after) =
            if state == StepState::Failed { (Some("boom".to_string()), None) } else { (None, Some(v(2))) };
        Fact::Finish(StepFinish {
            plan_id: id.into(),
            target: t.into(),
            token,
            state,
            error,
            before: Some(v(1)),
            after,
            detail: serde_json::json!({}),
        })
    };
    // (fact, whether it is written)
    let mut facts: Vec<(Fact, bool)> = Vec::new();
    for (id, targets) in &plans {
        for (i, t) in targets.iter().enumerate() {
            if i == 3 {
                // Its result comes first: the start after it finds the step ended.
                facts.push((finish(id, t, token(t), StepState::Succeeded), true));
                facts.push((start(id, t, token(t)), false));
                continue;
            }
            facts.push((start(id, t, token(t)), true));
            if i % 5 == 0 {
                facts.push((start(id, t, 1), false));
                facts.push((start(id, t, token(t)), false));
            }
        }
        for (i, t) in targets.iter().enumerate().filter(|(i, _)| *i != 3) {
            if i % 7 == 0 {
                facts.push((finish(id, t, 2, StepState::Succeeded), false));
                continue;
            }
            let state = if i % 9 == 0 { StepState::Failed } else { StepState::Succeeded };
            facts.push((finish(id, t, token(t), state), true));
            if i % 11 == 0 {
                facts.push((finish(id, t, token(t), StepState::Failed), false));
            }
        }
    }
    let (batch, expected): (Vec<Fact>, Vec<bool>) = facts.into_iter().unzip();
    assert_eq!(store.record(&batch).await.expect("record"), expected);
    for (id, targets) in &plans {
        for (i, t) in targets.iter().enumerate() {
            let s = store.step(id, t).await.expect("step").expect("exists");
            let want = match i {
                3 => (StepState::Succeeded, Some(v(2))),
                _ if i % 7 == 0 => (StepState::Running, None),
                _ if i % 9 == 0 => (StepState::Failed, None),
                _ => (StepState::Succeeded, Some(v(2))),
            };
            assert_eq!((s.state, s.after), want, "{t}");
            assert_eq!((s.token, s.before), (Some(token(t)), Some(v(1))), "{t}");
        }
    }
    for (id, _) in &plans {
        let events = store.events_after(id, 0, EVENT_PAGE).await.expect("events");
        let written: Vec<(Option<String>, EventKind)> = batch
            .iter()
            .zip(&expected)
            .filter(|(_, written)| **written)
            .filter_map(|(fact, _)| match fact {
                Fact::Start(s) if s.plan_id == *id => Some((Some(s.target.clone()), EventKind::StepStarted)),
                Fact::Finish(r) if r.plan_id == *id => {
                    let kind = if r.state == StepState::Failed { EventKind::Failed } else { EventKind::Succeeded };
                    Some((Some(r.target.clone()), kind))
                }
                _ => None,
            })
            .collect();
        let seen: Vec<_> =
            events.iter().filter(|e| e.kind != EventKind::Assigned).map(|e| (e.target.clone(), e.kind)).collect();
        assert_eq!(seen, written, "{id}: one event per fact written, in the facts' order");
    }
    for (id, _) in &plans {
        counts_agree(&store, id).await;
    }
}

/// Ten agents answer their checks at once: ten transactions, each a batch of steps at their goal with their events,
/// on one plan, on every connection of the pool. Each commits, and the plan's events are numbered 1, 2, … with no
/// gap. (Numbers are taken per plan as the last + 1; on PostgreSQL, writers that each took the same number collided on
/// the key and tried again, and ten at once ran out of tries.)
async fn many_writers_of_one_plans_events_at_once_all_commit(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = std::sync::Arc::new(SqlStore::open(&db.url).await.expect("open"));
    let targets: Vec<String> = (0..2_000).map(|i| format!("t{i:04}")).collect();
    let steps: Vec<Step> = targets.iter().map(|t| step("p1", t, 1)).collect();
    store.create_plan(&plan("p1"), &steps).await.expect("create");
    for round in 0..2 {
        let tasks: Vec<_> = targets[round * 1_000..(round + 1) * 1_000]
            .chunks(100)
            .map(|chunk| {
                let store = store.clone();
                let at_goal: Vec<Unchanged> = chunk
                    .iter()
                    .map(|t| Unchanged { target: t.clone(), before: Some(v(1)), applied: Some(v(1)) })
                    .collect();
                tokio::spawn(async move { store.finish_unchanged("p1", &at_goal).await.map(|done| done.len()) })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.expect("join").expect("every writer commits"), 100);
        }
    }
    let mut seqs = Vec::new();
    loop {
        let page = store.events_after("p1", seqs.last().copied().unwrap_or(0), EVENT_PAGE).await.expect("events");
        if page.is_empty() {
            break;
        }
        seqs.extend(page.iter().map(|e| e.seq));
    }
    assert_eq!(seqs, (1..=2_000).collect::<Vec<u64>>());
    counts_agree(&store, "p1").await;
}

/// A step taken back keeps its token: the agent's result under it still ends the step, even after the plan halted
/// and skipped it ("skipped" while the migration ran would be a record that lies). A new assignment's token fences
/// the old result out.
async fn a_result_under_the_steps_token_is_recorded_after_it_was_taken_back(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = SqlStore::open(&db.url).await.expect("open");
    store.create_plan(&plan("p1"), &[step("p1", "a", 1), step("p1", "b", 1)]).await.expect("create");
    assert!(store.set_plan_state("p1", PlanState::Pending, PlanState::Running).await.expect("run"));
    for (target, token) in [("a", 5), ("b", 6)] {
        let moved = store.set_step_state("p1", target, StepState::Pending, StepState::Assigned, Some(token), None);
        assert!(moved.await.expect("assign"));
        // Taken back, as the scheduler's reconcile does: pending again, the token kept.
        let back = store.set_step_state("p1", target, StepState::Assigned, StepState::Pending, Some(token), None);
        assert!(back.await.expect("take back"));
    }
    let finish = |target: &str, token| StepFinish {
        plan_id: "p1".into(),
        target: target.into(),
        token,
        state: StepState::Succeeded,
        error: None,
        before: Some(v(0)),
        after: Some(v(3)),
        detail: serde_json::json!({}),
    };
    // b is assigned anew (token 9) before its old result comes: the old token writes nothing.
    let anew = Assigning { target: "b".into(), token: 9, detail: serde_json::json!({ "fencing_token": 9 }) };
    assert_eq!(store.assign_steps("p1", &[anew]).await.expect("assign b"), ["b"]);
    assert!(store.finish_step(&finish("b", 6)).await.expect("finish b").is_none(), "a stale token is refused");
    let b = store.step("p1", "b").await.expect("b").map(|s| (s.state, s.token));
    assert_eq!(b, Some((StepState::Assigned, Some(9))));
    // The plan halts: a, pending, is skipped; then a's result under its token comes, and ends it.
    assert!(store.set_plan_state("p1", PlanState::Running, PlanState::Halted).await.expect("halt"));
    assert_eq!(store.step("p1", "a").await.expect("a").map(|s| s.state), Some(StepState::Skipped));
    let a = store.finish_step(&finish("a", 5)).await.expect("finish a").expect("recorded");
    assert_eq!((a.state, a.before, a.after), (StepState::Succeeded, Some(v(0)), Some(v(3))));
    assert!(store.finish_step(&finish("a", 5)).await.expect("again").is_none(), "a repeat writes nothing");
    counts_agree(&store, "p1").await;
}

/// What plan lists and fleet status read instead of every step of every plan: counts for all plans in one query, and
/// each target's newest succeeded step (the later plan wins) with its plan's bundle.
async fn lists_and_fleet_status_in_one_query_each(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = SqlStore::open(&db.url).await.expect("open");
    let mut older = plan("p1");
    older.created_at = Utc::now() - chrono::Duration::seconds(60);
    let mut newer = plan("p2");
    newer.bundle = "c".repeat(64);
    store
        .create_plan(&older, &[step("p1", "db-a", 1), step("p1", "db-b", 1), step("p1", "db-c", 2)])
        .await
        .expect("p1");
    store.create_plan(&newer, &[step("p2", "db-a", 1), step("p2", "db-b", 1)]).await.expect("p2");
    let finish = |plan: &str, target: &str, state, after| {
        let (plan, target) = (plan.to_string(), target.to_string());
        let store = &store;
        async move {
            assert!(store
                .set_step_state(&plan, &target, StepState::Pending, StepState::Assigned, Some(1), None)
                .await
                .expect("assign"));
            let done = StepFinish {
                plan_id: plan,
                target,
                token: 1,
                state,
                error: None,
                before: Some(v(0)),
                after: Some(after),
                detail: serde_json::json!({}),
            };
            store.finish_step(&done).await.expect("finish").expect("finished");
        }
    };
    finish("p1", "db-a", StepState::Succeeded, v(3)).await;
    finish("p1", "db-b", StepState::Succeeded, v(3)).await;
    finish("p2", "db-a", StepState::Succeeded, v(5)).await;
    finish("p2", "db-b", StepState::Failed, v(3)).await;

    let counts = store.all_step_counts().await.expect("counts");
    let total = |plan: &str, state| counts[plan].iter().filter(|c| c.state == state).map(|c| c.count).sum::<u64>();
    assert_eq!((total("p1", StepState::Succeeded), total("p1", StepState::Pending)), (2, 1));
    assert_eq!((total("p2", StepState::Succeeded), total("p2", StepState::Failed)), (1, 1));
    assert_eq!(counts.len(), 2);

    let last = store.last_succeeded_steps().await.expect("last");
    let seen: Vec<(&str, &str, &str, Option<flotilla_core::Version>)> =
        last.iter().map(|(b, s)| (s.target.as_str(), s.plan_id.as_str(), &b[..1], s.after)).collect();
    assert_eq!(
        seen,
        [("db-a", "p2", "c", Some(v(5))), ("db-b", "p1", "b", Some(v(3)))],
        "the newer plan wins where it succeeded; a failed step does not count; db-c never succeeded"
    );
    counts_agree(&store, "p1").await;
    counts_agree(&store, "p2").await;
}

/// The store's schema is versioned (sqlx migrations). A store created before versioning (its tables, no migration
/// records) is adopted with its rows; a store a newer release migrated further is refused, naming the version,
/// instead of being misread.
async fn the_schema_is_versioned_old_stores_are_adopted_and_newer_ones_refused(engine: Engine) {
    use sqlx::Connection;
    let db = TestDb::new(engine).await;
    let url = if engine == Sqlite { format!("{}?mode=rwc", db.url) } else { db.url.clone() };
    let initial = std::fs::read_to_string(
        flotilla_tests::manifest_dir().join("../coordinator/migrations/20261201000001_initial.sql"),
    )
    .expect("initial migration");
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
    sqlx::raw_sql(&initial).execute(&mut conn).await.expect("old-style schema");
    sqlx::query("INSERT INTO bundles (id, body) VALUES ('old', '{}')").execute(&mut conn).await.expect("row");
    // A step with 64-bit versions, as the first release wrote them.
    sqlx::query(
        "INSERT INTO steps (plan_id, target, wave, state, token, error, goal, version_before, version_after, updated_at)
         VALUES ('p-old', 'db-a', 1, 'succeeded', 3, NULL, NULL, 5, 7, '2026-12-01T00:00:00Z')",
    )
    .execute(&mut conn)
    .await
    .expect("step row");
    conn.close().await.expect("close");

    let store = SqlStore::open(&db.url).await.expect("an old store is adopted");
    assert_eq!(store.bundle("old").await.expect("bundle").as_deref(), Some("{}"), "its rows are kept");
    let step = store.step("p-old", "db-a").await.expect("step").expect("the step is kept");
    assert_eq!((step.before, step.after, step.token), (Some(v(5)), Some(v(7)), Some(3)), "its versions too");
    let long: flotilla_core::Version = "20240115093000000001".parse().expect("version");
    let start = Starting { plan_id: "p-old".into(), target: "db-a".into(), token: 3, before: Some(long), detail: None };
    assert!(store.start_step(&start).await.is_ok());
    counts_agree(&store, "p-old").await;
    drop(store);
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .expect("versions");
    assert_eq!(versions, [20261201000001, 20261202000001, 20261203000001], "every migration ran, in order");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time)
         SELECT 29991231000000, 'from a newer release', installed_on, success, checksum, execution_time
         FROM _sqlx_migrations WHERE version = 20261201000001",
    )
    .execute(&mut conn)
    .await
    .expect("a newer release's record");
    conn.close().await.expect("close");
    let Err(refused) = SqlStore::open(&db.url).await else { panic!("a newer schema must be refused") };
    assert!(refused.to_string().contains("29991231000000"), "{refused}");
}
