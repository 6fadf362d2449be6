//! What the coordinator writes in one call: several targets' steps, a batch of assignments, facts from agents and
//! many events, each as one transaction that applies as the same calls one after another would.

use super::*;

on_every_store!(
    counts_and_pages_of_steps,
    several_targets_steps_in_one_call,
    a_batch_of_assignments_is_one_transaction_of_compare_and_sets,
    facts_from_agents_are_recorded_in_order_each_by_its_compare_and_set,
    a_batch_of_many_events_keeps_each_plans_order_and_numbers,
    a_large_batch_of_starts_and_results_applies_each_as_one_after_another_would,
    many_writers_of_one_plans_events_at_once_all_commit,
    a_result_under_the_steps_token_is_recorded_after_it_was_taken_back
);

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
    let finish = |target: &str, token| Fact::Finish(succeeded(target, token, 1));
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
    let finish = |target: &str, token| succeeded(target, token, 3);
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
