//! Strategy features on a real coordinator and agent (SQLite targets keep them quick): approvals, on-failure
//! policies, validation as wave 0, expand/contract across the fleet, and two coordinators sharing etcd.

use std::sync::Arc;
use std::time::Duration;

use flotilla_coordinator::identity::Identity;
use flotilla_coordinator::service::{Assignment, CheckOutcome, Config, Coordinator, Submission, Work};
use flotilla_coordinator::{EtcdLock, SqlStore};
use flotilla_core::fleet::{Goal, Selector, Strategy, Target};
use flotilla_core::Engine::Sqlite;
use flotilla_tests::fleet::{count, steps, Fleet, FleetTarget};
use flotilla_tests::*;

async fn sqlite_fleet(names: &[(&str, &str)]) -> (Fleet, Vec<TestDb>) {
    let dbs = futures_util::future::join_all(names.iter().map(|_| TestDb::new(Sqlite))).await;
    let targets: Vec<FleetTarget> =
        names.iter().zip(&dbs).map(|((name, env), db)| FleetTarget::new(name, &db.url, &[("env", env)])).collect();
    let mut fleet = Fleet::start(&[("agent-1", "sq-*")], None, 5).await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(names.len()).await;
    (fleet, dbs)
}

/// A submission of `two_tables` all the way up, to the targets `selector` picks, with the default strategy.
fn up_plan(selector: &str) -> Submission {
    let bundle = flotilla_core::bundle::Bundle::from_dir(two_tables().path()).expect("bundle");
    Submission {
        bundle: bundle.to_json().into_bytes(),
        selector: selector.parse::<Selector>().expect("selector"),
        goal: Goal::Up { to: None },
        strategy: Strategy::default(),
        phase: None,
        validate_on: None,
        dry_run: false,
        allow_lint: false,
    }
}

fn versions(history: &[(u128, String, i64)]) -> Vec<u128> {
    history.iter().map(|(v, _, _)| *v).collect()
}

const FOUR: [(&str, &str); 4] = [("sq-01", "prod"), ("sq-02", "prod"), ("sq-03", "prod"), ("sq-04", "prod")];

#[tokio::test(flavor = "multi_thread")]
async fn each_wave_after_the_first_waits_for_approval() {
    let (fleet, _dbs) = sqlite_fleet(&FOUR).await;
    let dir = two_tables();
    let id = fleet.create(dir.path(), &["--waves", "1,2,100%", "--approve-waves"]).await;
    let waiting = fleet.wait_state(&id, "awaiting_approval").await;
    assert_eq!(count(&waiting, "succeeded"), 1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(count(&fleet.plan(&id).await, "succeeded"), 1, "nothing runs before approval");
    fleet.cli(&["plan", "approve", &id]).await.ok();
    let waiting =
        fleet.wait_plan(&id, "at wave 3", |p| p["state"] == "awaiting_approval" && count(p, "succeeded") == 2).await;
    assert_eq!(waiting["current_wave"], 3);
    fleet.cli(&["plan", "approve", &id, "--reason", "canaries look fine"]).await.ok();
    fleet.wait_state(&id, "succeeded").await;
    fleet.cli(&["plan", "approve", &id]).await.fails(4, "cannot approve");
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_plan_policy_takes_every_touched_target_back() {
    let (fleet, dbs) = sqlite_fleet(&FOUR).await;
    dbs[2].exec("CREATE TABLE b (id INT)").await; // sq-03 fails at migration 2
    let dir = two_tables();
    let id = fleet.create(dir.path(), &["--waves", "100%", "--parallel", "1", "--on-failure", "rollback-plan"]).await;
    let plan = fleet.wait_state(&id, "halted").await;
    assert_eq!(steps(&plan)["sq-03"]["state"], "failed");
    assert_eq!(steps(&plan)["sq-04"]["state"], "skipped");
    let plans = fleet.cli(&["--json", "plan", "list"]).await.ok().json();
    let rollback = plans
        .as_array()
        .and_then(|a| a.iter().find(|p| p["rollback_of"] == id.as_str()))
        .unwrap_or_else(|| panic!("no rollback plan: {plans:#}"))["id"]
        .as_str()
        .expect("id")
        .to_string();
    let rb = fleet.wait_state(&rollback, "succeeded").await;
    assert_eq!(count(&rb, "succeeded"), 3, "sq-01..03 were touched: {rb:#}");
    for db in &dbs {
        assert!(db.history().await.is_empty(), "{}", db.url);
    }
    assert!(!dbs[0].has_table("a").await && dbs[2].has_table("b").await, "sq-03 keeps only what was there before");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grouped_plan_applies_each_targets_migrations_all_or_none() {
    let (fleet, dbs) = sqlite_fleet(&FOUR).await;
    dbs[1].exec("CREATE TABLE b (id INT)").await; // sq-02 would apply 1, then fail at 2
    let dir = two_tables();
    let id = fleet.create(dir.path(), &["--waves", "100%", "--max-failures", "1", "--group"]).await;
    let plan = fleet.wait_state(&id, "succeeded").await;
    assert_eq!((count(&plan, "succeeded"), count(&plan, "failed")), (3, 1));
    let error = steps(&plan)["sq-02"]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("rolled back together: none of them is applied"), "{error}");
    assert!(dbs[1].history().await.is_empty(), "migration 1 rolled back with 2");
    assert!(!dbs[1].has_table("a").await);
    for i in [0, 2, 3] {
        assert_eq!(versions(&dbs[i].history().await), vec![1, 2]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_failed_policy_rolls_back_only_the_failed_target() {
    let (fleet, dbs) = sqlite_fleet(&FOUR).await;
    dbs[1].exec("CREATE TABLE b (id INT)").await; // sq-02 applies 1, fails at 2
    let dir = two_tables();
    let id =
        fleet.create(dir.path(), &["--waves", "100%", "--max-failures", "1", "--on-failure", "rollback-failed"]).await;
    let plan = fleet.wait_state(&id, "succeeded").await;
    assert_eq!((count(&plan, "succeeded"), count(&plan, "failed")), (3, 1));
    let rollbacks = fleet.rollbacks_of(&id).await;
    assert_eq!(rollbacks.len(), 1, "one rollback plan, for sq-02: {rollbacks:?}");
    assert!(rollbacks[0].len() <= 64 && !rollbacks[0].contains("sq-02"), "the id is not built from the name");
    fleet.wait_state(&rollbacks[0], "succeeded").await;
    assert!(dbs[1].history().await.is_empty(), "the failed target is back at its prior version");
    for i in [0, 2, 3] {
        assert_eq!(versions(&dbs[i].history().await), vec![1, 2]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_on_staging_runs_first_and_stops_the_plan_on_a_mismatch() {
    let (fleet, dbs) = sqlite_fleet(&[("sq-stage", "staging"), ("sq-01", "prod"), ("sq-02", "prod")]).await;
    let dir = two_tables();
    let id = fleet.create(dir.path(), &["--select", "env=prod", "--validate-on", "env=staging"]).await;
    let plan = fleet.wait_state(&id, "succeeded").await;
    assert_eq!(steps(&plan)["sq-stage"]["wave"], 0, "validation is wave 0");
    assert_eq!(count(&plan, "succeeded"), 3);
    for db in &dbs {
        assert_eq!(versions(&db.history().await), vec![1, 2]);
    }

    // Migration 3's DOWN leaves a table behind: after up and down, the schema is not what it was.
    dir.migration(Sqlite, 3, "c", "CREATE TABLE c (id INT);", "CREATE TABLE left_behind (id INT);\nDROP TABLE c;");
    let id = fleet.create(dir.path(), &["--select", "env=prod", "--validate-on", "env=staging"]).await;
    let plan = fleet.wait_state(&id, "halted").await;
    let s = steps(&plan);
    assert_eq!(s["sq-stage"]["state"], "failed");
    let error = s["sq-stage"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("validation failed") && error.contains("left_behind"), "{plan:#}");
    assert_eq!((s["sq-01"]["state"].as_str(), s["sq-02"]["state"].as_str()), (Some("skipped"), Some("skipped")));
    for db in &dbs[1..] {
        assert_eq!(versions(&db.history().await), vec![1, 2], "production untouched");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn contract_waits_until_expand_finished_on_every_target() {
    let (fleet, dbs) = sqlite_fleet(&FOUR).await;
    let dir = Dir::new();
    dir.migration(
        Sqlite,
        1,
        "add_email",
        "-- flotilla:phase expand\nALTER TABLE users ADD COLUMN email TEXT;",
        "ALTER TABLE users DROP COLUMN email;",
    )
    .migration(
        Sqlite,
        2,
        "drop_mail",
        "-- flotilla:phase contract\n-- mail was copied to email by the expand phase.\n-- flotilla:allow destructive-without-backup\nALTER TABLE users DROP COLUMN mail;",
        "ALTER TABLE users ADD COLUMN mail TEXT;",
    );
    for db in &dbs {
        db.exec("CREATE TABLE users (id INT, mail TEXT)").await;
    }
    // A goal version that is not a migration is refused before anything is stored.
    fleet.cli(&["plan", "create", "--dir", dir.path().to_str().unwrap(), "--to", "99"]).await.fails(2, "version 99");
    fleet.cli(&["plan", "create", "--dir", dir.path().to_str().unwrap(), "--down-to", "7"]).await.fails(2, "version 7");
    assert_eq!(fleet.cli(&["--json", "plan", "list"]).await.ok().json().as_array().map(Vec::len), Some(0));
    fleet
        .cli(&["plan", "create", "--dir", dir.path().to_str().unwrap(), "--phase", "contract"])
        .await
        .fails(4, "contract is refused until expand has finished");
    let expand = fleet.create(dir.path(), &["--phase", "expand"]).await;
    fleet.wait_state(&expand, "succeeded").await;
    for db in &dbs {
        assert_eq!(versions(&db.history().await), vec![1], "expand stops before contract");
    }
    // Fleet status must have caught up before contract is allowed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let contract = loop {
        let run = fleet
            .cli(&["--json", "plan", "create", "--dir", dir.path().to_str().unwrap(), "--phase", "contract"])
            .await;
        if run.code == 0 {
            break run.json()["id"].as_str().expect("id").to_string();
        }
        assert!(std::time::Instant::now() < deadline, "{run:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    fleet.wait_state(&contract, "succeeded").await;
    for db in &dbs {
        assert_eq!(versions(&db.history().await), vec![1, 2]);
    }
}

/// Two coordinators on one store and one etcd: only the one holding a target's lock assigns work on it; the other
/// takes over (with a higher fencing token) only after that lock expires.
#[tokio::test(flavor = "multi_thread")]
async fn two_coordinators_never_hold_one_target_at_once() {
    let store_db = TestDb::new(flotilla_core::Engine::Postgres).await;
    let config = |holder: &str| Config {
        holder: holder.into(),
        lease_ttl: Duration::from_secs(2),
        tick: Duration::from_millis(50),
        ..Config::default()
    };
    // Both coordinators share this fleet's locks; other tests' fleets on the same etcd keep theirs apart.
    let prefix = format!("/flotilla-test/{:016x}/", rand::random::<u64>());
    let open = || async {
        let store = Arc::new(SqlStore::open(&store_db.url).await.expect("store"));
        let lock = Arc::new(EtcdLock::connect(&[etcd_url()], &prefix).await.expect("etcd"));
        (store, lock)
    };
    let (s1, l1) = open().await;
    let (s2, l2) = open().await;
    let a = Coordinator::new(s1, l1, config("coordinator-a"));
    let b = Coordinator::new(s2, l2, config("coordinator-b"));
    let who = Identity::Insecure;
    let name = format!("sq-{}", rand::random::<u32>());
    let target = Target {
        name: name.clone(),
        engine: Sqlite,
        labels: [("run".to_string(), name.clone())].into(),
        agent: "agent-1".into(),
    };
    a.register(&who, "agent-1", vec![target.clone()]).await.expect("register a");
    b.register(&who, "agent-1", vec![target]).await.expect("register b");
    let (mut to_a, _) = a.connect(&who, "agent-1").expect("connect a");
    let (mut to_b, _) = b.connect(&who, "agent-1").expect("connect b");

    let plan = a.submit(&who, up_plan(&format!("run={name}"))).await.expect("submit").plan;
    a.tick().await.expect("tick a");
    assert!(assignment(&a, &mut to_a).await.is_none(), "a first asks whether the target is at the goal");
    a.tick().await.expect("tick a");
    let first = assignment(&a, &mut to_a).await.expect("a assigns the step");
    for _ in 0..5 {
        a.tick().await.expect("tick a"); // keeps its lock alive
        b.tick().await.expect("tick b");
        assert!(assignment(&b, &mut to_b).await.is_none(), "b must not assign a target a holds");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // a goes silent (as if it died): its lease expires and b takes over with a higher token.
    drop(a);
    drop(to_a);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        b.tick().await.expect("tick b");
        if let Some(assignment) = assignment(&b, &mut to_b).await {
            break assignment;
        }
        assert!(std::time::Instant::now() < deadline, "b never took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((second.plan_id.as_str(), second.target.as_str()), (plan.id.as_str(), name.as_str()));
    assert!(second.token > first.token, "fencing tokens grow: {} then {}", first.token, second.token);
}

/// The next assignment `c` sent, answering every check before it as an agent whose target is not at the goal.
async fn assignment(c: &Coordinator, rx: &mut tokio::sync::mpsc::Receiver<Work>) -> Option<Assignment> {
    while let Ok(work) = rx.try_recv() {
        match work {
            Work::Assign(a) => return Some(a),
            Work::Check(check) => {
                let outcomes = check
                    .targets
                    .iter()
                    .map(|(target, _)| CheckOutcome {
                        target: target.clone(),
                        at_goal: false,
                        applied: None,
                        before: None,
                        detail: String::new(),
                    })
                    .collect();
                c.checked(&Identity::Insecure, "agent-1", &check.plan_id, outcomes).await.expect("checked");
            }
        }
    }
    None
}

/// `--insecure-dev`: plaintext, no certificates, a warning in the log; the CLI needs the flag too.
#[tokio::test(flavor = "multi_thread")]
async fn insecure_dev_mode_is_explicit_and_warns() {
    let dir = tempfile::tempdir().expect("dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let log = std::fs::File::create(dir.path().join("coordinator.log")).expect("log");
    let store = format!("sqlite://{}", dir.path().join("store.db").display());
    let mut coordinator = tokio::process::Command::new(binary("flotilla-coordinator"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--store", &store, "--insecure-dev"])
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let address = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "coordinator did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run = flotilla(&["plan", "list", "--insecure-dev", "--coordinator", &address]).await;
    assert!(run.ok().stdout.contains("no plans"), "{run:?}");
    // Without the flag the CLI wants certificates, and says so.
    flotilla(&["plan", "list", "--coordinator", &address]).await.fails(2, "--insecure-dev");
    let text = std::fs::read_to_string(dir.path().join("coordinator.log")).expect("log");
    assert!(text.contains("insecure-dev") && text.contains("WARN"), "{text}");
    // A coordinator with neither TLS nor --insecure-dev refuses to start.
    let refused = tokio::process::Command::new(binary("flotilla-coordinator"))
        .args(["--listen", "127.0.0.1:0", "--store", &store])
        .output()
        .await
        .expect("run");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("TLS is required"), "{refused:?}");
    coordinator.kill().await.expect("kill");
}

/// A coordinator that stopped between halting a `rollback-plan` plan and creating its rollback: the next one
/// creates it at start, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_left_undone_by_a_previous_coordinator_is_created_at_start() {
    use flotilla_core::fleet::{OnFailure, Plan, PlanState, Step, StepState};
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = Arc::new(SqlStore::open(&url).await.expect("store"));
    let now = chrono::Utc::now();
    let plan = Plan {
        id: "p1".into(),
        bundle: "b".repeat(64),
        selector: Selector::default(),
        goal: Goal::Up { to: None },
        strategy: Strategy { on_failure: OnFailure::RollbackPlan, group: true, ..Strategy::default() },
        phase: None,
        rollback_of: None,
        approved_wave: 0,
        state: PlanState::Halted,
        created_at: now,
    };
    let step = |target: &str, state, before| Step {
        plan_id: "p1".into(),
        target: target.into(),
        wave: 1,
        state,
        token: Some(1),
        error: None,
        goal: None,
        before,
        after: None,
        updated_at: now,
    };
    let steps = [
        step("a", StepState::Succeeded, Some(v(3))),
        step("b", StepState::Failed, Some(v(0))),
        step("c", StepState::Skipped, None),
    ];
    flotilla_coordinator::Store::create_plan(store.as_ref(), &plan, &steps).await.expect("create");
    let lock = Arc::new(flotilla_coordinator::InProcessLock::new());
    let coordinator = Coordinator::new(store.clone(), lock, Config::default());
    coordinator.recover().await.expect("recover");
    coordinator.recover().await.expect("recover again");
    let plans = flotilla_coordinator::Store::plans(store.as_ref()).await.expect("plans");
    let rollbacks: Vec<_> = plans.iter().filter(|p| p.rollback_of.as_deref() == Some("p1")).collect();
    assert_eq!(rollbacks.len(), 1, "created once: {plans:#?}");
    let rb_steps = flotilla_coordinator::Store::steps(store.as_ref(), &rollbacks[0].id).await.expect("steps");
    let goals: Vec<_> = rb_steps.iter().map(|s| (s.target.as_str(), s.goal)).collect();
    assert_eq!(goals, vec![("a", Some(Goal::Down { to: v(3) })), ("b", Some(Goal::Down { to: v(0) }))]);
    // A grouped rollout's rollback runs each DOWN on its own: MongoDB's drops, say, could not run as a group.
    assert!(!rollbacks[0].strategy.group);
}

/// The step-started and end times of each target's step, from `plan watch --json`.
async fn step_times(fleet: &Fleet, id: &str) -> std::collections::BTreeMap<String, (String, String)> {
    let watched = fleet.cli(&["--json", "plan", "watch", id]).await;
    let mut times: std::collections::BTreeMap<String, (String, String)> = Default::default();
    for line in watched.stdout.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (target, at) = (e["target"].as_str().unwrap_or("").to_string(), e["at"].as_str().unwrap_or("").to_string());
        match e["kind"].as_str() {
            Some("step_started") => times.entry(target).or_default().0 = at,
            Some("succeeded" | "failed") => times.entry(target).or_default().1 = at,
            _ => {}
        }
    }
    times
}

/// Three targets share one database server (`host` label `db-a`), one is alone on another: with `--parallel 4
/// --max-per-host 1`, the three run one after another while the fourth runs beside them.
#[tokio::test(flavor = "multi_thread")]
async fn max_per_host_limits_steps_on_one_server_across_the_parallelism() {
    use flotilla_core::Engine::Postgres;
    let dbs = futures_util::future::join_all((0..4).map(|_| TestDb::new(Postgres))).await;
    let host = |i: usize| if i < 3 { "db-a" } else { "db-b" };
    let targets: Vec<FleetTarget> = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| FleetTarget::new(&format!("pg-{i}"), &db.url, &[("env", "hosts"), ("host", host(i))]))
        .collect();
    let mut fleet = Fleet::start(&[("agent-1", "pg-*")], None, 5).await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(4).await;
    let dir = Dir::new();
    dir.migration(Postgres, 1, "slow", "SELECT pg_sleep(0.6); CREATE TABLE a (id int);", "DROP TABLE a;");
    let id = fleet
        .create(dir.path(), &["--select", "env=hosts", "--waves", "100%", "--parallel", "4", "--max-per-host", "1"])
        .await;
    fleet.wait_state(&id, "succeeded").await;
    let times = step_times(&fleet, &id).await;
    let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).expect("time");
    let span = |target: &str| {
        let (started, ended) = &times[target];
        (at(started), at(ended))
    };
    let overlaps = |a: &str, b: &str| {
        let ((s1, e1), (s2, e2)) = (span(a), span(b));
        s1 < e2 && s2 < e1
    };
    for (a, b) in [("pg-0", "pg-1"), ("pg-0", "pg-2"), ("pg-1", "pg-2")] {
        assert!(!overlaps(a, b), "{a} and {b} share host db-a and ran at once: {times:?}");
    }
    assert!(
        ["pg-0", "pg-1", "pg-2"].iter().any(|a| overlaps(a, "pg-3")),
        "pg-3 on db-b runs beside db-a's steps: {times:?}"
    );
    for db in &dbs {
        assert_eq!(versions(&db.history().await), vec![1]);
    }
}

/// A plan's own lock timeout and retries reach the agents: a target whose table a long transaction holds retries
/// once after 300 ms and fails; the other target, not blocked, succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_plans_lock_timeout_and_retries_reach_its_agents() {
    use flotilla_core::Engine::Postgres;
    let dbs = [TestDb::new(Postgres).await, TestDb::new(Postgres).await];
    for db in &dbs {
        db.exec("CREATE TABLE accounts (id int PRIMARY KEY)").await;
    }
    let targets: Vec<FleetTarget> = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| FleetTarget::new(&format!("pg-{i}"), &db.url, &[("env", "locks")]))
        .collect();
    let mut fleet = Fleet::start(&[("agent-1", "pg-*")], None, 5).await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(2).await;
    let mut holder = dbs[1].sql().await;
    sqlx::Executor::execute(&mut holder, "BEGIN").await.expect("begin");
    sqlx::Executor::execute(&mut holder, "LOCK TABLE accounts IN ACCESS SHARE MODE").await.expect("lock");
    let dir = Dir::new();
    dir.migration(
        Postgres,
        1,
        "note",
        "ALTER TABLE accounts ADD COLUMN note text;",
        "ALTER TABLE accounts DROP COLUMN note;",
    );
    let args = [
        "--select",
        "env=locks",
        "--waves",
        "100%",
        "--max-failures",
        "1",
        "--statement-lock-timeout",
        "300ms",
        "--lock-retries",
        "1",
    ];
    let id = fleet.create(dir.path(), &args).await;
    let plan = fleet.wait_plan(&id, "over", |p| p["state"] != "running" && p["state"] != "pending").await;
    sqlx::Executor::execute(&mut holder, "COMMIT").await.expect("commit");
    let s = steps(&plan);
    assert_eq!(s["pg-0"]["state"], "succeeded", "{plan:#}");
    assert_eq!(s["pg-1"]["state"], "failed", "{plan:#}");
    let error = s["pg-1"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("gave up waiting for a lock") && error.contains("after 1 retries"), "{error}");
    let watched = fleet.cli(&["plan", "watch", &id]).await;
    assert_eq!(watched.stdout.matches("lock_retry pg-1").count(), 1, "{}", watched.stdout);
    assert!(dbs[1].history().await.is_empty(), "nothing recorded on the blocked target");
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_create_lints_first_and_refuses_errors_unless_allowed() {
    let (fleet, _dbs) = sqlite_fleet(&FOUR[..2]).await;
    let dir = two_tables();
    // A NOT NULL column without a default on an existing table: existing rows fail it (an error).
    dir.migration(
        Sqlite,
        3,
        "owner",
        "-- Why: every row gets an owner.\nALTER TABLE a ADD COLUMN owner TEXT NOT NULL;",
        "ALTER TABLE a DROP COLUMN owner;",
    );
    let d = dir.path().to_str().expect("utf-8");
    fleet
        .cli(&["plan", "create", "--dir", d])
        .await
        .fails(2, "lint found 1 error(s)")
        .fails(2, "3 owner line 2: flotilla/not-null-without-default");
    assert_eq!(fleet.cli(&["--json", "plan", "list"]).await.ok().json().as_array().map(Vec::len), Some(0));

    let id = fleet.create(dir.path(), &["--allow-lint"]).await;
    fleet.wait_plan(&id, "finished", |p| p["state"] != "running" && p["state"] != "pending").await;
    let watched = fleet.cli(&["--json", "plan", "watch", &id]).await;
    let submitted = watched
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["kind"] == "submitted")
        .expect("a submitted event");
    let lint = &submitted["detail"]["lint"];
    assert_eq!(lint["errors"], 1, "{submitted}");
    assert_eq!(lint["allowed"], true);
    let rules: Vec<&str> =
        lint["findings"].as_array().expect("findings").iter().filter_map(|f| f["rule"].as_str()).collect();
    assert!(rules.contains(&"not-null-without-default"), "{rules:?}");
    assert!(lint["findings"][0]["source"].is_string() && lint["findings"][0]["engine"] == "sqlite");
}

/// A plan over more targets than `max_targets_per_plan` is refused with the count and the limit, and nothing is
/// stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_over_the_target_limit_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        Arc::new(SqlStore::open(&format!("sqlite://{}", dir.path().join("store.db").display())).await.expect("store"));
    let lock = Arc::new(flotilla_coordinator::InProcessLock::with_token_floor(0));
    let coordinator = Coordinator::new(store.clone(), lock, Config { max_targets_per_plan: 2, ..Config::default() });
    let who = Identity::Insecure;
    let target = |name: &str, tier: &str| Target {
        name: name.into(),
        engine: Sqlite,
        labels: [("tier".to_string(), tier.to_string())].into(),
        agent: "a".into(),
    };
    let targets = vec![target("sq-1", "a"), target("sq-2", "a"), target("sq-3", "b")];
    coordinator.register(&who, "a", targets).await.expect("register");
    let refused = coordinator.submit(&who, up_plan("")).await.expect_err("refused");
    assert!(refused.to_string().contains("the plan would have 3 targets; at most 2"), "{refused}");
    assert!(flotilla_coordinator::Store::plans(store.as_ref()).await.expect("plans").is_empty(), "nothing stored");
    coordinator.submit(&who, up_plan("tier=a")).await.expect("two targets are within the limit");
}
