//! The fleet fault suite: real coordinator and agent processes, real databases and etcd, faults injected for real
//! (a TCP proxy between components, SIGKILL of processes). Each scenario asserts where every target ends up: its
//! history is what the plan says, or the plan halted naming why, and no migration ran twice. The table of
//! scenarios and outcomes is in docs/design/faults.md.

use flotilla_core::Engine::{Mysql, Postgres, Sqlite};
use std::path::Path;
use std::time::Duration;

use flotilla_tests::fleet::{count, steps, Fleet, FleetTarget};
use flotilla_tests::proxy::{Fault, Proxy};
use flotilla_tests::servers::{Kind, Server};
use flotilla_tests::*;

fn versions(history: &[(u128, String, i64)]) -> Vec<u128> {
    history.iter().map(|(v, _, _)| *v).collect()
}

/// Three PostgreSQL migrations; the first creates a table holding a row a rollback to 0 would destroy.
fn three_migrations() -> Dir {
    let dir = Dir::new();
    dir.migration(
        Postgres,
        1,
        "orders",
        "CREATE TABLE orders (id BIGINT PRIMARY KEY);\nINSERT INTO orders VALUES (42);",
        "DROP TABLE orders;",
    )
    .migration(
        Postgres,
        2,
        "status",
        "ALTER TABLE orders ADD COLUMN status TEXT;",
        "ALTER TABLE orders DROP COLUMN status;",
    )
    .migration(
        Postgres,
        3,
        "status_index",
        "CREATE INDEX orders_status ON orders (status);",
        "DROP INDEX orders_status;",
    );
    dir
}

/// A step that fails before it reaches the database (here: the database refuses connections) does not know where
/// the target was. Neither `flotilla rollback` nor the rollback-plan policy may take that target down to 0 once
/// the database is back; a target whose prior version is known is still rolled back.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_that_never_reached_its_database_is_never_rolled_back_to_zero() {
    let db = TestDb::new(Postgres).await;
    let (proxy, url) = Proxy::in_front_of(&db.url).await;
    let mut fleet = Fleet::start(&[("agent-1", "pg-*")], Some(etcd_url()), 3).await;
    fleet.start_agent("agent-1", &[FleetTarget::new("pg-01", &url, &[("env", "test")])]).await;
    fleet.wait_targets(1).await;
    let dir = three_migrations();

    let p1 = fleet.create(dir.path(), &["--to", "2"]).await;
    fleet.wait_state(&p1, "succeeded").await;
    assert_eq!(versions(&db.history().await), vec![1, 2]);

    // The database goes away: the next plan's step fails before it reads the history.
    proxy.set(Fault::Refuse);
    let p2 = fleet.create(dir.path(), &["--max-failures", "0"]).await;
    let plan = fleet.wait_state(&p2, "halted").await;
    let step = &steps(&plan)["pg-01"];
    assert_eq!(step["state"], "failed", "{step:#}");
    assert!(step["version_before"].is_null(), "an unread version is unknown, not 0: {step:#}");
    let p3 = fleet.create(dir.path(), &["--max-failures", "0", "--on-failure", "rollback-plan"]).await;
    fleet.wait_state(&p3, "halted").await;

    // The database is back. Rolling back either plan must not run a single DOWN.
    proxy.set(Fault::Pass);
    fleet.cli(&["rollback", &p2]).await.fails(4, "never read: pg-01");
    let plans = fleet.cli(&["--json", "plan", "list"]).await.ok().json();
    let rollbacks: Vec<&serde_json::Value> =
        plans.as_array().expect("plans").iter().filter(|p| p["rollback_of"].is_string()).collect();
    assert!(rollbacks.is_empty(), "no rollback plan was created: {plans:#}");
    let events = fleet.cli(&["--json", "plan", "watch", &p3]).await;
    assert!(events.stdout.contains("\"rollback_left_alone\""), "the plan says it left pg-01 alone: {}", events.stdout);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(versions(&db.history().await), vec![1, 2], "nothing was rolled back");
    assert_eq!(db.count("orders").await, 1, "the data is still there");

    // A plan that did read the target's version is rolled back as before: p1 found 0.
    let rb = fleet.cli(&["--json", "rollback", &p1]).await.ok().json()["id"].as_str().expect("id").to_string();
    fleet.wait_state(&rb, "succeeded").await;
    assert!(db.history().await.is_empty());
}

/// Migration 1 is quick; migration 2 sleeps `seconds` inside its transaction and counts its runs, so a second run
/// would show in `runs`.
fn slow_second(seconds: u32) -> Dir {
    let dir = Dir::new();
    dir.migration(Postgres, 1, "base", "CREATE TABLE base (id INT);", "DROP TABLE base;").migration(
        Postgres,
        2,
        "runs",
        &format!("CREATE TABLE runs (n INT);\nSELECT pg_sleep({seconds});\nINSERT INTO runs VALUES (1);"),
        "DROP TABLE runs;",
    );
    dir
}

/// One PostgreSQL target at version 1, served by `agent-1` (through `via`, a port in front of the coordinator,
/// when given), with etcd locks and `lease_ttl`.
async fn one_target_at_v1(dir: &Dir, lease_ttl: u64, via: Option<&Proxy>) -> (Fleet, TestDb, Vec<FleetTarget>) {
    let db = TestDb::new(Postgres).await;
    let targets = vec![FleetTarget::new("pg-01", &db.url, &[("env", "test")])];
    let mut fleet = Fleet::start(&[("agent-1", "pg-*")], Some(etcd_url()), lease_ttl).await;
    match via {
        Some(proxy) => fleet.start_agent_via("agent-1", &targets, proxy.addr().port()).await,
        None => fleet.start_agent("agent-1", &targets).await,
    }
    fleet.wait_targets(1).await;
    let p0 = fleet.create(dir.path(), &["--to", "1"]).await;
    fleet.wait_state(&p0, "succeeded").await;
    (fleet, db, targets)
}

/// After everything: the history is `expected`, migration 2 ran at most once, and a rollback of `plan` takes the
/// target back to version 1, where the plan found it (never below).
async fn ran_once_and_rolls_back_to_where_it_was(fleet: &Fleet, db: &TestDb, plan: &str, expected: &[u128]) {
    assert_eq!(versions(&db.history().await), expected);
    if expected.contains(&2) {
        assert_eq!(db.count("runs").await, 1, "migration 2 committed exactly once");
    }
    let step = &steps(&fleet.plan(plan).await)["pg-01"];
    assert_eq!(step["version_before"], 1, "the version the plan found, not one a re-run found: {step:#}");
    let rb = fleet.cli(&["--json", "rollback", plan]).await.ok().json()["id"].as_str().expect("id").to_string();
    fleet.wait_state(&rb, "succeeded").await;
    assert_eq!(versions(&db.history().await), vec![1], "rolled back to where the plan found it");
}

/// The shipped systemd unit restarts a killed agent after 2 s, well inside the lease TTL (10 s here): the
/// coordinator still holds the lock and renews it for the reconnected agent, which knows nothing of the step. The
/// agent's heartbeats list what it runs; the missing step is taken back and run again, once.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_restarted_faster_than_the_lease_ttl_does_not_leave_its_step_hanging() {
    let dir = slow_second(3);
    let (mut fleet, db, targets) = one_target_at_v1(&dir, 10, None).await;
    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    fleet.kill_agent("agent-1").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.start_agent("agent-1", &targets).await;
    let plan = fleet.wait_state(&id, "succeeded").await;
    let events = fleet.cli(&["--json", "plan", "watch", &id]).await;
    assert!(events.stdout.contains("is not running the step"), "reconciled for the right reason: {}", events.stdout);
    assert!(steps(&plan)["pg-01"]["fencing_token"].as_u64() > Some(0));
    ran_once_and_rolls_back_to_where_it_was(&fleet, &db, &id, &[1, 2]).await;
}

/// The coordinator dies while the agent runs the step; the agent finishes, cannot report, holds the result, and
/// sends it when a new coordinator process is up. The step is recorded once, with the version it started from.
#[tokio::test(flavor = "multi_thread")]
async fn a_result_held_while_the_coordinator_was_down_is_delivered_when_it_returns() {
    let dir = slow_second(2);
    let (mut fleet, db, _) = one_target_at_v1(&dir, 3, None).await;
    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    fleet.kill_coordinator().await;
    // The migration commits meanwhile; the agent's retries (about 3 s) run out before the coordinator is back.
    tokio::time::sleep(Duration::from_secs(6)).await;
    fleet.start_coordinator().await;
    let plan = fleet.wait_state(&id, "succeeded").await;
    assert_eq!(steps(&plan)["pg-01"]["version_after"], 2, "{plan:#}");
    ran_once_and_rolls_back_to_where_it_was(&fleet, &db, &id, &[1, 2]).await;
}

/// Agent and coordinator lose each other (a blackhole: packets vanish, nothing is refused) while the database
/// stays reachable. The migration commits during the partition; the coordinator, hearing nothing, lets the lease
/// expire and takes the step back; once the partition heals the agent reconnects, its late result is acknowledged
/// and ignored, and the re-run finds the migration applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_between_agent_and_coordinator_mid_step_converges_without_a_second_run() {
    let dir = slow_second(2);
    let db = TestDb::new(Postgres).await;
    let targets = vec![FleetTarget::new("pg-01", &db.url, &[("env", "test")])];
    let mut fleet = Fleet::start(&[("agent-1", "pg-*")], Some(etcd_url()), 3).await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", fleet.port)).await;
    fleet.start_agent_via("agent-1", &targets, proxy.addr().port()).await;
    fleet.wait_targets(1).await;
    let p0 = fleet.create(dir.path(), &["--to", "1"]).await;
    fleet.wait_state(&p0, "succeeded").await;

    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    proxy.set(Fault::Blackhole);
    // The coordinator notices on its own: heartbeats stop, the lease expires, the step goes back to pending.
    fleet.wait_plan(&id, "reconciled", |p| count(p, "pending") == 1).await;
    proxy.set(Fault::Reset);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(Fault::Pass);
    fleet.wait_state(&id, "succeeded").await;
    ran_once_and_rolls_back_to_where_it_was(&fleet, &db, &id, &[1, 2]).await;
}

/// The coordinator loses etcd (blackholed) in the middle of a step, for longer than the lease TTL: the lock
/// cannot be renewed and expires. When etcd is reachable again the lease is found lost, the step is taken back,
/// and the re-run under a new token finds the migration applied: nothing runs twice.
#[tokio::test(flavor = "multi_thread")]
async fn losing_etcd_mid_step_past_the_lease_ttl_runs_nothing_twice() {
    let dir = slow_second(3);
    let (etcd, etcd_through) = Proxy::in_front_of(&etcd_url()).await;
    let db = TestDb::new(Postgres).await;
    let targets = vec![FleetTarget::new("pg-01", &db.url, &[("env", "test")])];
    let mut fleet = Fleet::start(&[("agent-1", "pg-*")], Some(etcd_through), 3).await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(1).await;
    let p0 = fleet.create(dir.path(), &["--to", "1"]).await;
    fleet.wait_state(&p0, "succeeded").await;

    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    etcd.set(Fault::Blackhole);
    tokio::time::sleep(Duration::from_secs(5)).await; // past the 3 s TTL: etcd drops the lease
    etcd.set(Fault::Reset);
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.set(Fault::Pass);
    let plan = fleet.wait_state(&id, "succeeded").await;
    assert_eq!(count(&plan, "succeeded"), 1, "{plan:#}");
    ran_once_and_rolls_back_to_where_it_was(&fleet, &db, &id, &[1, 2]).await;
}

#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: tonic::Code, needle: &str) {
    let status = result.expect_err("the call must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(needle), "expected `{needle}` in {status:?}");
}

/// Every RPC given bad input answers with a status that says what is wrong, and nothing is stored: no plan, no
/// target, no event; a message over the one size limit is refused by the transport, the coordinator unharmed.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_malformed_rpcs_get_a_clear_status_and_change_nothing() {
    use flotilla_proto::v1 as pb;
    use tonic::Code;
    let db = TestDb::new(Sqlite).await;
    let mut fleet = Fleet::start(&[("agent-1", "sq-*")], None, 5).await;
    fleet.start_agent("agent-1", &[FleetTarget::new("sq-01", &db.url, &[("env", "test")])]).await;
    fleet.wait_targets(1).await;
    let unlimited = usize::MAX;
    let mut agent = pb::agent_service_client::AgentServiceClient::new(fleet.channel_as("agent-1").await)
        .max_encoding_message_size(unlimited);
    let mut operator = pb::operator_service_client::OperatorServiceClient::new(fleet.channel_as("admin").await)
        .max_encoding_message_size(unlimited);

    let target = |name: &str, engine: pb::Engine| pb::TargetInfo {
        name: name.into(),
        engine: engine as i32,
        labels: Default::default(),
    };
    let register = |targets| pb::RegisterRequest { targets, ..Default::default() };
    refused(
        agent.register(register(vec![target("sq-02", pb::Engine::Unspecified)])).await,
        Code::InvalidArgument,
        "target `sq-02`: engine is required",
    );
    refused(agent.register(register(vec![target("", pb::Engine::Sqlite)])).await, Code::InvalidArgument, "no name");
    refused(
        agent
            .register(register(vec![target("sq-01", pb::Engine::Sqlite), target("sq-01", pb::Engine::Postgres)]))
            .await,
        Code::InvalidArgument,
        "target `sq-01` is listed twice",
    );
    refused(
        agent.register(register(vec![target("pg-01", pb::Engine::Postgres)])).await,
        Code::PermissionDenied,
        "may not serve",
    );
    let result = |plan: &str, target: &str| pb::StepResult {
        plan_id: plan.into(),
        target: target.into(),
        fencing_token: 1,
        succeeded: true,
        ..Default::default()
    };
    refused(agent.report_result(result("no-such-plan", "sq-01")).await, Code::NotFound, "has no step");
    refused(agent.report_result(result("no-such-plan", "pg-01")).await, Code::PermissionDenied, "does not serve");
    let progress = |kind: i32| pb::ProgressEvent {
        plan_id: "no-such-plan".into(),
        target: "sq-01".into(),
        kind,
        version: "1".into(),
        version_before: "0".into(),
        direction: pb::Direction::Up as i32,
        ..Default::default()
    };
    let stream = |kind: i32| tokio_stream::iter(vec![progress(kind)]);
    refused(agent.report_progress(stream(pb::EventKind::StepStarted as i32)).await, Code::NotFound, "has no step");
    let mut unknown_before = progress(pb::EventKind::StepStarted as i32);
    unknown_before.version_before = String::new();
    refused(
        agent.report_progress(tokio_stream::iter(vec![unknown_before])).await,
        Code::InvalidArgument,
        "version_before: version `` is not a string of digits",
    );
    refused(
        agent.report_progress(stream(999)).await,
        Code::InvalidArgument,
        "event kind: 999 is not a value this build knows",
    );
    refused(
        agent.report_progress(stream(pb::EventKind::Finished as i32)).await,
        Code::InvalidArgument,
        "`finished` is not a kind of step progress",
    );
    let mut no_direction = progress(pb::EventKind::Statement as i32);
    no_direction.direction = 0;
    refused(
        agent.report_progress(tokio_stream::iter(vec![no_direction])).await,
        Code::InvalidArgument,
        "direction is required",
    );
    let huge = "x".repeat(flotilla_proto::MAX_MESSAGE_BYTES + 1024);
    let mut oversized = register(vec![target("sq-01", pb::Engine::Sqlite)]);
    oversized.agent_version = huge.clone();
    refused(agent.register(oversized).await, Code::OutOfRange, "message length too large");

    let submit = |bundle: Vec<u8>, selector: &str| pb::SubmitPlanRequest {
        bundle,
        selector: selector.into(),
        strategy: Some(pb::Strategy { waves: vec!["100%".into()], max_parallel: 1, ..Default::default() }),
        goal: Some(pb::Goal { direction: pb::Direction::Up as i32, version: "0".into() }),
        ..Default::default()
    };
    let good = br#"{"sets": {"sqlite": {"000001_a.up.sql": "CREATE TABLE a (id INT);", "000001_a.down.sql": "DROP TABLE a;"}}}"#;
    refused(operator.submit_plan(submit(b"not json".to_vec(), "")).await, Code::InvalidArgument, "expected");
    let unknown_engine = br#"{"sets": {"oracle": {"000001_a.up.sql": "SELECT 1;"}}}"#;
    refused(
        operator.submit_plan(submit(unknown_engine.to_vec(), "")).await,
        Code::InvalidArgument,
        "unknown engine `oracle`",
    );
    let escape = br#"{"sets": {"sqlite": {"../000001_a.up.sql": "SELECT 1;"}}}"#;
    refused(operator.submit_plan(submit(escape.to_vec(), "")).await, Code::InvalidArgument, "../000001_a.up.sql");
    let unreadable =
        br#"{"sets": {"sqlite": {"000001_a.up.sql": "CREATE TABLE a (id INT);", "000001_b.up.sql": "SELECT 1;"}}}"#;
    refused(operator.submit_plan(submit(unreadable.to_vec(), "")).await, Code::InvalidArgument, "do not read");
    refused(operator.submit_plan(submit(good.to_vec(), "env=")).await, Code::InvalidArgument, "selector");
    refused(
        operator.submit_plan(submit(good.to_vec(), "env=nowhere")).await,
        Code::FailedPrecondition,
        "matches no registered target",
    );
    let mut bad_waves = submit(good.to_vec(), "");
    bad_waves.strategy = Some(pb::Strategy { waves: vec!["150%".into()], ..Default::default() });
    refused(operator.submit_plan(bad_waves).await, Code::InvalidArgument, "150%");
    // Between the bundle limit and the message limit: through the transport, refused by the coordinator.
    let mut large = submit(Vec::new(), "");
    large.bundle = format!(
        r#"{{"sets": {{"sqlite": {{"000001_a.up.sql": "{}"}}}}}}"#,
        "x".repeat(flotilla_core::bundle::MAX_BUNDLE_BYTES)
    )
    .into_bytes();
    refused(operator.submit_plan(large).await, Code::InvalidArgument, "over the limit of 66060288 bytes");
    refused(operator.submit_plan(submit(huge.into_bytes(), "")).await, Code::OutOfRange, "message length too large");
    refused(operator.get_plan(pb::GetPlanRequest { id: "no-such-plan".into() }).await, Code::NotFound, "no-such-plan");
    refused(
        operator.pause_plan(pb::PlanAction { id: "no-such-plan".into(), reason: String::new() }).await,
        Code::NotFound,
        "no-such-plan",
    );
    refused(
        operator.create_rollback(pb::PlanAction { id: "no-such-plan".into(), reason: String::new() }).await,
        Code::NotFound,
        "no-such-plan",
    );

    // Nothing changed, and the coordinator still serves.
    assert_eq!(fleet.cli(&["--json", "plan", "list"]).await.ok().json().as_array().map(Vec::len), Some(0));
    let rows = fleet.cli(&["--json", "fleet", "status"]).await.ok().json();
    let names: Vec<&str> = rows.as_array().expect("rows").iter().filter_map(|r| r["target"].as_str()).collect();
    assert_eq!(names, ["sq-01"], "no target was registered by the refused calls");
    assert!(db.history().await.is_empty());
}

/// A bundle larger than tonic's default 4 MiB message reaches the agent and is applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_5_mib_bundle_reaches_the_agent_and_applies() {
    let db = TestDb::new(Sqlite).await;
    let mut fleet = Fleet::start(&[("agent-1", "sq-*")], None, 5).await;
    fleet.start_agent("agent-1", &[FleetTarget::new("sq-01", &db.url, &[("env", "test")])]).await;
    fleet.wait_targets(1).await;
    let dir = Dir::new();
    // 5 MiB of reference data in the UP: the kind of seed migration that makes bundles large.
    let rows: Vec<String> = (0..60_000).map(|i| format!("({i}, '{}')", "r".repeat(90))).collect();
    let up =
        format!("CREATE TABLE codes (id INT PRIMARY KEY, label TEXT);\nINSERT INTO codes VALUES {};", rows.join(",\n"));
    assert!(up.len() > 5 << 20, "{} bytes", up.len());
    dir.migration(Sqlite, 1, "codes", &up, "DROP TABLE codes;");
    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_state(&id, "succeeded").await;
    assert_eq!(versions(&db.history().await), vec![1], "{}", fleet.logs());
    assert_eq!(db.count("codes").await, 60_000);
}

/// `n` fresh PostgreSQL databases as targets `pg-01`…
async fn pg_targets(n: usize) -> (Vec<TestDb>, Vec<FleetTarget>) {
    let dbs = futures_util::future::join_all((0..n).map(|_| TestDb::new(Postgres))).await;
    let targets = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| FleetTarget::new(&format!("pg-{:02}", i + 1), &db.url, &[("env", "test")]))
        .collect();
    (dbs, targets)
}

/// A fleet with one agent serving `name` → `url`, etcd locks (`etcd`, or the shared one) and a lease TTL of 3 s.
async fn fleet_on(name: &str, url: &str, etcd: Option<String>) -> Fleet {
    let glob = format!("{}*", &name[..3]);
    let mut fleet = Fleet::start(&[("agent-1", &glob)], Some(etcd.unwrap_or_else(etcd_url)), 3).await;
    fleet.start_agent("agent-1", &[FleetTarget::new(name, url, &[("env", "test")])]).await;
    fleet.wait_targets(1).await;
    fleet
}

/// The database server is killed (SIGKILL) in the middle of a migration and restarted 2 s later. PostgreSQL rolls
/// the transaction back: the step fails naming the lost connection, the plan halts, the target is where it was;
/// the next plan applies the migration once.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_killed_mid_migration_rolls_it_back_and_the_next_plan_applies_it_once() {
    let mut server = Server::start(Kind::Postgres).await;
    let url = server.database("shop").await;
    let db = TestDb::on(Postgres, &url);
    let fleet = fleet_on("pg-01", &url, None).await;
    let dir = slow_second(3);
    let p0 = fleet.create(dir.path(), &["--to", "1"]).await;
    fleet.wait_state(&p0, "succeeded").await;
    let id = fleet.create(dir.path(), &["--max-failures", "0"]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // inside pg_sleep
    server.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart().await;
    let plan = fleet.wait_state(&id, "halted").await;
    let step = &steps(&plan)["pg-01"];
    assert_eq!((step["state"].as_str(), step["version_before"].as_i64()), (Some("failed"), Some(1)), "{step:#}");
    assert!(!step["error"].as_str().unwrap_or_default().is_empty(), "the failure is named: {step:#}");
    assert_eq!(versions(&db.history().await), vec![1], "the killed transaction left nothing");
    assert!(!db.has_table("runs").await);
    let again = fleet.create(dir.path(), &[]).await;
    fleet.wait_state(&again, "succeeded").await;
    assert_eq!(versions(&db.history().await), vec![1, 2]);
    assert_eq!(db.count("runs").await, 1);
}

/// MariaDB commits DDL statement by statement: killed mid-migration, it keeps what committed, and the history
/// says exactly how far the migration got (dirty, 1 of 3). The plan halts; nothing later runs over it.
#[tokio::test(flavor = "multi_thread")]
async fn mariadb_killed_mid_migration_leaves_it_dirty_at_the_statement_it_reached() {
    let mut server = Server::start(Kind::Mariadb).await;
    let url = server.database("shop").await;
    let db = TestDb::on(Mysql, &url);
    let fleet = fleet_on("my-01", &url, None).await;
    let dir = Dir::new();
    dir.file("000001_two_tables.up.sql", "CREATE TABLE a (id INT);\nSELECT SLEEP(3);\nCREATE TABLE b (id INT);")
        .file("000001_two_tables.down.sql", "DROP TABLE IF EXISTS b;\nDROP TABLE IF EXISTS a;");
    let id = fleet.create(dir.path(), &["--max-failures", "0"]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await; // CREATE TABLE a committed; SLEEP runs
    server.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart().await;
    let plan = fleet.wait_state(&id, "halted").await;
    assert_eq!(steps(&plan)["my-01"]["state"], "failed", "{plan:#}");
    assert_eq!(db.history().await, vec![(1, "dirty".to_string(), 1)], "statement 1 of 3 committed, recorded once");
    assert!(db.has_table("a").await && !db.has_table("b").await);
    // `repair` says that the statement the run stopped in commits on its own, so it may have run.
    let dry = cmd("repair", &db, dir.path(), &["--resume", "--dry-run"]).await;
    dry.ok();
    assert!(dry.stdout.contains("statement 2") && dry.stdout.contains("may have committed"), "{dry:#?}");
    // A new plan refuses to run over the dirty migration.
    let again = fleet.create(dir.path(), &["--max-failures", "0"]).await;
    let plan = fleet.wait_state(&again, "halted").await;
    assert!(steps(&plan)["my-01"]["error"].as_str().unwrap_or_default().contains("dirty"), "{plan:#}");
    assert!(!db.has_table("b").await);
}

/// mongod is killed while a migration's slow command runs. This script builds an index on a collection an earlier
/// migration made, which a transaction may not do, so it runs command by command: commands before the slow one stay
/// applied and the history says how many; the plan halts, and nothing runs twice.
#[tokio::test(flavor = "multi_thread")]
async fn mongodb_killed_mid_migration_leaves_it_dirty_at_the_command_it_reached() {
    let mut server = Server::start(Kind::Mongodb).await;
    let url = server.database("shop").await;
    let db = TestDb::on(flotilla_core::Engine::Mongodb, &url);
    let fleet = fleet_on("mo-01", &url, None).await;
    let dir = Dir::mongo_stepwise(
        r#"{"insert": "runs", "documents": [{"_id": 1}]},
           {"update": "runs", "updates": [{"q": {"$where": "sleep(3000) || true"}, "u": {"$set": {"slow": true}}}]}"#,
    );
    let first = fleet.create(dir.path(), &["--to", "1"]).await;
    fleet.wait_state(&first, "succeeded").await;
    let id = fleet.create(dir.path(), &["--max-failures", "0"]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await; // inside the sleeping update
    server.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart().await;
    let plan = fleet.wait_state(&id, "halted").await;
    assert_eq!(steps(&plan)["mo-01"]["state"], "failed", "{plan:#}");
    let history = db.history().await;
    assert_eq!(history, vec![(1, "applied".to_string(), 0), (2, "dirty".to_string(), 2)], "2 of 3 commands committed");
    assert_eq!(db.count("runs").await, 1, "the insert ran once");
}

/// mongod is killed while a migration that fits one transaction runs (a new collection, its index, its rows): the
/// transaction never committed, so nothing of it is there, the history has no record of it, and the next plan
/// applies it once.
#[tokio::test(flavor = "multi_thread")]
async fn mongodb_killed_mid_transaction_keeps_nothing_and_the_next_plan_applies_it_once() {
    let mut server = Server::start(Kind::Mongodb).await;
    let url = server.database("shop").await;
    let db = TestDb::on(flotilla_core::Engine::Mongodb, &url);
    let fleet = fleet_on("mo-01", &url, None).await;
    let dir = Dir::new();
    dir.file(
        "000001_runs.up.json",
        r#"[{"create": "runs"}, {"createIndexes": "runs", "indexes": [{"key": {"v": 1}, "name": "runs_v"}]},
            {"insert": "runs", "documents": [{"_id": 1}]},
            {"update": "runs", "updates": [{"q": {"$where": "sleep(3000) || true"}, "u": {"$set": {"slow": true}}}]}]"#,
    )
    .file("000001_runs.down.json", r#"[{"drop": "runs"}]"#);
    let id = fleet.create(dir.path(), &["--max-failures", "0"]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await; // inside the sleeping update, in the transaction
    server.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart().await;
    let plan = fleet.wait_state(&id, "halted").await;
    assert_eq!(steps(&plan)["mo-01"]["state"], "failed", "{plan:#}");
    assert_eq!(db.history().await, vec![], "no record: the transaction never committed");
    assert_eq!(db.count("runs").await, 0, "nothing of the migration is there");
    let again = fleet.create(dir.path(), &["--max-failures", "0"]).await;
    fleet.wait_state(&again, "succeeded").await;
    assert_eq!(db.history().await, vec![(1, "applied".to_string(), 0)]);
    assert_eq!(db.count("runs").await, 1, "the insert ran once");
}

/// etcd is killed (SIGKILL) mid-step and restarted on its data 2 s later, inside the lease TTL: the lease survives
/// the restart, the step finishes under its lock and the plan completes; nothing runs twice. This etcd is run as in
/// production: TLS only, client certificates required, and the coordinator logs in as a user that may touch only
/// the fleet's prefix.
#[tokio::test(flavor = "multi_thread")]
async fn etcd_killed_mid_step_and_restarted_the_plan_completes_once() {
    let mut etcd = Server::start_etcd_secured().await;
    let db = TestDb::new(Postgres).await;
    let (args, env) = etcd.etcd_client();
    let mut fleet = Fleet::start_with_args(&[("agent-1", "pg-*")], Some(etcd.url()), 3, env, args).await;
    fleet.start_agent("agent-1", &[FleetTarget::new("pg-01", &db.url, &[("env", "test")])]).await;
    fleet.wait_targets(1).await;
    let dir = slow_second(3);
    let p0 = fleet.create(dir.path(), &["--to", "1"]).await;
    fleet.wait_state(&p0, "succeeded").await;
    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    etcd.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    etcd.restart().await;
    fleet.wait_state(&id, "succeeded").await;
    ran_once_and_rolls_back_to_where_it_was(&fleet, &db, &id, &[1, 2]).await;
}

/// The coordinator's PostgreSQL store is killed mid-plan and restarted 2 s later: store calls fail meanwhile (the
/// agent holds its result), the pool reconnects, and the plan completes with every step recorded once.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_store_killed_mid_plan_and_restarted_loses_nothing() {
    let mut store = Server::start(Kind::Postgres).await;
    let store_url = store.database("flotilla").await;
    let (dbs, targets) = pg_targets(3).await;
    let mut fleet = Fleet::start_on_store(&[("agent-1", "pg-*")], Some(etcd_url()), 3, &store_url).await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(3).await;
    let dir = slow_second(3);
    let id = fleet.create(dir.path(), &["--parallel", "3"]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") >= 1).await;
    store.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    store.restart().await;
    let plan = fleet.wait_state(&id, "succeeded").await;
    assert_eq!(count(&plan, "succeeded"), 3, "{plan:#}");
    for db in &dbs {
        assert_eq!(versions(&db.history().await), vec![1, 2]);
        assert_eq!(db.count("runs").await, 1, "no migration ran twice");
    }
}

/// A migration that takes a moment and counts its runs, for engines without a sleep: SQLite burns CPU in a
/// recursive query; MongoDB sleeps in a `$where`.
fn counted_slow(engine: flotilla_core::Engine) -> Dir {
    let dir = Dir::new();
    match engine {
        Sqlite => dir.migration(
            Sqlite,
            1,
            "runs",
            "CREATE TABLE IF NOT EXISTS runs (n INT);\nINSERT INTO runs VALUES (1);\n\
             WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT count(*) FROM c;",
            "DROP TABLE runs;",
        ),
        _ => dir
            .file(
                "000001_runs.up.json",
                r#"[{"insert": "runs", "documents": [{"n": 1}]},
                    {"update": "runs", "updates": [{"q": {"$where": "sleep(1500) || true"}, "u": {"$set": {"slow": true}}}]}]"#,
            )
            .file("000001_runs.down.json", r#"[{"drop": "runs"}]"#),
    };
    dir
}

/// Two target names for one database (a config mistake, or a database listed under two tenants): the coordinator
/// locks each name, so both steps run at once, and only the database's own lock keeps them apart. A lease must not
/// be re-entrant for two steps of one agent: one applies the migration, the other finds it applied.
async fn two_target_names_for_one_database_apply_once(engine: flotilla_core::Engine) {
    let db = TestDb::new(engine).await;
    let prefix = if engine == Sqlite { "sq" } else { "mo" };
    let names = [format!("{prefix}-a"), format!("{prefix}-b")];
    let mut fleet = Fleet::start(&[("agent-1", &format!("{prefix}-*"))], Some(etcd_url()), 3).await;
    let targets: Vec<FleetTarget> = names.iter().map(|n| FleetTarget::new(n, &db.url, &[("env", "test")])).collect();
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(2).await;
    let dir = counted_slow(engine);
    let id = fleet.create(dir.path(), &["--waves", "100%", "--parallel", "2"]).await;
    let plan = fleet.wait_plan(&id, "over", |p| p["state"] != "running" && p["state"] != "pending").await;
    assert_eq!(plan["state"], "succeeded", "{plan:#}");
    assert_eq!(versions(&db.history().await), vec![1]);
    assert_eq!(db.count("runs").await, 1, "the migration ran once for the two names");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_target_names_for_one_sqlite_database_apply_once() {
    two_target_names_for_one_database_apply_once(Sqlite).await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_target_names_for_one_mongodb_database_apply_once() {
    two_target_names_for_one_database_apply_once(flotilla_core::Engine::Mongodb).await
}

/// A rolling update: a second agent process with the same name starts while the first runs a step, then the first
/// is killed. The step converges on the new process and runs once.
#[tokio::test(flavor = "multi_thread")]
async fn two_agent_processes_with_one_name_run_a_step_once() {
    let dir = slow_second(3);
    let (mut fleet, db, targets) = one_target_at_v1(&dir, 3, None).await;
    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    // The old process keeps running; the new one registers under the same name and takes the stream.
    let old = fleet.take_agent("agent-1");
    fleet.start_agent("agent-1", &targets).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(old); // SIGKILL of the old process, mid-step
    fleet.wait_state(&id, "succeeded").await;
    ran_once_and_rolls_back_to_where_it_was(&fleet, &db, &id, &[1, 2]).await;
}

/// A runner whose clock is two minutes ahead (libfaketime) tries the database while an agent holds its MongoDB
/// lease. Leases expire by the server's clock, so it waits and gives up; nothing runs twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_runner_with_a_skewed_clock_does_not_take_a_live_mongodb_lease() {
    let libfaketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        Path::new(libfaketime).exists(),
        "libfaketime is missing: run tests/servers.sh start (it installs faketime)"
    );
    let db = TestDb::new(flotilla_core::Engine::Mongodb).await;
    let mut fleet = Fleet::start(&[("agent-1", "mo-*")], Some(etcd_url()), 3).await;
    fleet.start_agent("agent-1", &[FleetTarget::new("mo-01", &db.url, &[("env", "test")])]).await;
    fleet.wait_targets(1).await;
    let dir = Dir::new();
    dir.file(
        "000001_runs.up.json",
        r#"[{"insert": "runs", "documents": [{"n": 1}]},
            {"update": "runs", "updates": [{"q": {"$where": "sleep(4000) || true"}, "u": {"$set": {"slow": true}}}]}]"#,
    )
    .file("000001_runs.down.json", r#"[{"drop": "runs"}]"#);
    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // the agent holds the lease, inside the sleeping update
    let skewed = tokio::process::Command::new(binary("flotilla"))
        .args(["up", "--db", &db.url, "--dir", dir.path().to_str().expect("utf-8"), "--lock-timeout", "2"])
        .env("LD_PRELOAD", libfaketime)
        .env("FAKETIME", "+120s")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env_remove("FLOTILLA_DB_URL")
        .output()
        .await
        .expect("run flotilla");
    let stderr = String::from_utf8_lossy(&skewed.stderr);
    assert_eq!(skewed.status.code(), Some(4), "the skewed runner must not get the lock: {stderr}");
    assert!(stderr.contains("waiting for the migration lock"), "{stderr}");
    fleet.wait_state(&id, "succeeded").await;
    assert_eq!(db.count("runs").await, 1, "the migration ran once");
    assert_eq!(versions(&db.history().await), vec![1]);
}

/// Statement by statement (MariaDB commits DDL on its own), a row change must commit together with the record
/// that says it ran: otherwise a failure between the two (here injected for real, a trigger that makes the progress
/// write fail just after the UPDATE) leaves the UPDATE committed but unrecorded, and `repair --resume` runs it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_change_and_its_progress_record_commit_together_on_mariadb() {
    let db = TestDb::new(Mysql).await;
    let dir = Dir::new();
    dir.migration(Mysql, 1, "seed", "CREATE TABLE seed (id INT);", "DROP TABLE seed;").migration(
        Mysql,
        2,
        "counter",
        "CREATE TABLE t (n INT);\nINSERT INTO t VALUES (1);\nUPDATE t SET n = n + 1;\nCREATE TABLE u (id INT);",
        "DROP TABLE u;\nDROP TABLE t;",
    );
    cmd("up", &db, dir.path(), &["--to", "1"]).await.ok();
    db.exec(
        "CREATE TRIGGER fail_progress BEFORE UPDATE ON flotilla_schema_history FOR EACH ROW BEGIN
           IF NEW.version = 2 AND NEW.statements_done = 3 THEN
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected: the progress write fails';
           END IF;
         END",
    )
    .await;
    cmd("up", &db, dir.path(), &[]).await.fails(1, "injected: the progress write fails");
    let n = || async {
        let mut conn = db.sql().await;
        sqlx::query_scalar::<_, i32>("SELECT n FROM t").fetch_one(&mut conn).await.expect("n")
    };
    assert_eq!(n().await, 1, "the UPDATE rolled back with its progress record");
    assert_eq!(db.history().await[1], (2, "dirty".to_string(), 2), "two statements are known to have run");
    db.exec("DROP TRIGGER fail_progress").await;
    cmd("repair", &db, dir.path(), &["--resume"]).await.ok();
    assert_eq!(n().await, 2, "the UPDATE ran exactly once");
    assert_eq!(versions(&db.history().await), vec![1, 2]);
    assert!(db.has_table("u").await);
}

/// Forty of an agent's targets are unreachable (a blackhole: every connection attempt waits out its 10 s timeout)
/// and one is fine. Reading the dead ones' histories must never hold back heartbeats or work on the healthy one:
/// its plan completes while the unreachable ones are still being read.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_targets_never_hold_back_heartbeats_or_work_on_the_others() {
    let good = TestDb::new(Postgres).await;
    let dead = TestDb::new(Postgres).await;
    let (blackhole, dead_url) = Proxy::in_front_of(&dead.url).await;
    blackhole.set(Fault::Blackhole);
    let mut targets = vec![FleetTarget::new("pg-good", &good.url, &[("env", "good")])];
    targets.extend((0..40).map(|i| FleetTarget::new(&format!("pg-dead-{i:02}"), &dead_url, &[("env", "dead")])));
    let mut fleet = Fleet::start(&[("agent-1", "pg-*")], Some(etcd_url()), 3).await;
    fleet.start_agent("agent-1", &targets).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let agents = fleet.cli(&["--json", "agents"]).await.json();
        if agents[0]["connected"] == true && agents[0]["targets"].as_array().map(Vec::len) == Some(41) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{agents:#}\n{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dir = three_migrations();
    let id = fleet.create(dir.path(), &["--select", "env=good"]).await;
    fleet.wait_state(&id, "succeeded").await;
    assert_eq!(versions(&good.history().await), vec![1, 2, 3]);
    let status = fleet.cli(&["--json", "fleet", "status", "--select", "env=dead"]).await.json();
    let unread = status.as_array().expect("rows").iter().filter(|r| r["applied_version"].is_null()).count();
    assert!(unread > 0, "the plan finished while the dead targets were still being read: {status:#}");
    let agents = fleet.cli(&["--json", "agents"]).await.json();
    assert_eq!(agents[0]["connected"], true, "heartbeats went on: {agents:#}");
}

/// SIGTERM while a step runs: the agent takes no new work, keeps its session (heartbeats, the result) while the
/// step drains, reports it, and exits cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_stopped_mid_step_drains_it_reports_it_and_exits_cleanly() {
    let dir = slow_second(3);
    let (mut fleet, db, _) = one_target_at_v1(&dir, 3, None).await;
    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    let code = fleet.stop_agent("agent-1").await;
    assert_eq!(code, Some(0), "a clean exit after the drain:\n{}", fleet.logs());
    let plan = fleet.plan(&id).await;
    assert_eq!(plan["state"], "succeeded", "the drained step's result arrived before the agent exited: {plan:#}");
    let events = fleet.cli(&["--json", "plan", "watch", &id]).await;
    assert!(!events.stdout.contains("\"reconcile\""), "never taken for gone while draining: {}", events.stdout);
    assert_eq!(versions(&db.history().await), vec![1, 2]);
    assert_eq!(db.count("runs").await, 1);
}

/// Target names as long as the store allows, on the PostgreSQL store: a failed target's rollback plan
/// (`rollback-failed`) is created and runs; its id is not built from the name.
#[tokio::test(flavor = "multi_thread")]
async fn rollback_failed_with_long_target_names_works_on_the_postgres_store() {
    let store = TestDb::new(Postgres).await;
    let dbs = futures_util::future::join_all((0..2).map(|_| TestDb::new(Postgres))).await;
    let long = |i: usize| format!("pg-{i}-{}", "tenant-with-a-long-name-".repeat(4));
    let targets: Vec<FleetTarget> =
        dbs.iter().enumerate().map(|(i, db)| FleetTarget::new(&long(i), &db.url, &[("env", "test")])).collect();
    assert!(targets[0].name.len() > 64);
    let mut fleet = Fleet::start_on_store(&[("agent-1", "pg-*")], Some(etcd_url()), 3, &store.url).await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(2).await;
    // Migration 3 fails on target 1 only (its index name is taken), after 1 and 2 have committed there.
    dbs[1].exec("CREATE TABLE other (status TEXT)").await;
    dbs[1].exec("CREATE INDEX orders_status ON other (status)").await;
    let dir = three_migrations();
    let id =
        fleet.create(dir.path(), &["--waves", "100%", "--max-failures", "1", "--on-failure", "rollback-failed"]).await;
    let plan = fleet.wait_plan(&id, "over", |p| p["state"] != "running" && p["state"] != "pending").await;
    let s = steps(&plan);
    assert_eq!(s[&long(1)]["state"], "failed", "{plan:#}");
    let rollback = fleet.rollbacks_of(&id).await;
    assert_eq!(rollback.len(), 1, "{rollback:?}");
    fleet.wait_state(&rollback[0], "succeeded").await;
    assert!(rollback[0].len() <= 64, "{}", rollback[0]);
    assert_eq!(versions(&dbs[0].history().await), vec![1, 2, 3]);
    assert!(dbs[1].history().await.is_empty(), "the failed target is back where the plan found it");
    assert!(!dbs[1].has_table("orders").await);
}

/// One plan's stored data breaks (its bundle is gone from the store): that plan halts saying why, and the other
/// plans go on being scheduled; before, the error stopped every tick for every plan.
#[tokio::test(flavor = "multi_thread")]
async fn one_plan_with_broken_stored_data_halts_and_the_others_go_on() {
    let dbs = futures_util::future::join_all((0..3).map(|_| TestDb::new(Sqlite))).await;
    let targets: Vec<FleetTarget> = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| {
            FleetTarget::new(&format!("sq-{:02}", i + 1), &db.url, &[("group", if i < 2 { "a" } else { "b" })])
        })
        .collect();
    let mut fleet = Fleet::start(&[("agent-1", "sq-*")], None, 5).await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(3).await;
    let (a, b) = (Dir::new(), Dir::new());
    a.migration(Sqlite, 1, "a", "CREATE TABLE a (id INT);", "DROP TABLE a;");
    b.migration(Sqlite, 1, "b", "CREATE TABLE b (id INT);", "DROP TABLE b;");
    // Plan A: wave 1 runs, then it waits for approval; meanwhile its bundle disappears from the store.
    let broken = fleet.create(a.path(), &["--select", "group=a", "--waves", "1,100%", "--approve-waves"]).await;
    fleet.wait_state(&broken, "awaiting_approval").await;
    let store = format!("sqlite://{}", fleet.dir.path().join("store.db").display());
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&store).await.expect("store");
    sqlx::Executor::execute(&mut conn, "DELETE FROM bundles").await.expect("delete");
    fleet.cli(&["plan", "approve", &broken]).await.ok();
    let halted = fleet.wait_state(&broken, "halted").await;
    let events = fleet.cli(&["--json", "plan", "watch", &broken]).await;
    assert!(events.stdout.contains("stored data is broken"), "it says why: {}\n{halted:#}", events.stdout);
    // Plan B, created after A (so scheduled after it on every tick), still runs.
    let other = fleet.create(b.path(), &["--select", "group=b"]).await;
    fleet.wait_state(&other, "succeeded").await;
    assert!(dbs[2].has_table("b").await);
}

/// One agent is cut off (blackholed) while the other agents' targets roll out: the rest of the fleet finishes
/// while it is partitioned, and its targets converge once the partition heals.
#[tokio::test(flavor = "multi_thread")]
async fn one_partitioned_agent_does_not_hold_back_the_rest_of_the_fleet() {
    let dbs = futures_util::future::join_all((0..6).map(|_| TestDb::new(Sqlite))).await;
    let target = |i: usize| FleetTarget::new(&format!("sq-{:02}", i + 1), &dbs[i].url, &[("env", "test")]);
    let mut fleet = Fleet::start(&[("agent-near", "sq-0[123]"), ("agent-far", "sq-0[456]")], None, 3).await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", fleet.port)).await;
    fleet.start_agent("agent-near", &[target(0), target(1), target(2)]).await;
    fleet.start_agent_via("agent-far", &[target(3), target(4), target(5)], proxy.addr().port()).await;
    fleet.wait_targets(6).await;
    proxy.set(Fault::Blackhole);
    let dir = Dir::new();
    dir.migration(Sqlite, 1, "a", "CREATE TABLE a (id INT);", "DROP TABLE a;");
    let id = fleet.create(dir.path(), &["--waves", "100%", "--parallel", "6"]).await;
    let plan = fleet.wait_plan(&id, "done near", |p| count(p, "succeeded") >= 3).await;
    for i in 0..3 {
        assert_eq!(steps(&plan)[&format!("sq-{:02}", i + 1)]["state"], "succeeded", "{plan:#}");
    }
    proxy.set(Fault::Reset);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(Fault::Pass);
    fleet.wait_state(&id, "succeeded").await;
    for db in &dbs {
        assert_eq!(versions(&db.history().await), vec![1]);
    }
}

/// Two coordinator processes share a PostgreSQL store and etcd; the agent reaches the leader through an address
/// that fails over (a proxy, as a virtual IP would). The leader is killed mid-step: the agent finishes, reconnects
/// to the standby, which waits out the dead leader's lease before it touches the target; the step is recorded
/// once and nothing runs twice.
#[tokio::test(flavor = "multi_thread")]
async fn when_the_leading_coordinator_dies_mid_step_the_standby_takes_over_and_nothing_runs_twice() {
    let store = TestDb::new(Postgres).await;
    let db = TestDb::new(Postgres).await;
    let targets = vec![FleetTarget::new("pg-01", &db.url, &[("env", "test")])];
    let mut fleet = Fleet::start_on_store(&[("agent-1", "pg-*")], Some(etcd_url()), 3, &store.url).await;
    let standby = fleet.start_standby().await;
    let vip = Proxy::start(&format!("127.0.0.1:{}", fleet.port)).await;
    fleet.start_agent_via("agent-1", &targets, vip.addr().port()).await;
    fleet.wait_targets(1).await;
    let dir = slow_second(3);
    let p0 = fleet.create(dir.path(), &["--to", "1"]).await;
    fleet.wait_state(&p0, "succeeded").await;
    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    fleet.kill_coordinator().await;
    vip.retarget(&format!("127.0.0.1:{standby}")).await;
    fleet.port = standby; // operators fail over too
    fleet.wait_state(&id, "succeeded").await;
    ran_once_and_rolls_back_to_where_it_was(&fleet, &db, &id, &[1, 2]).await;
}

/// The coordinator is up but its PostgreSQL store is down: an operator's call fails within seconds with its own
/// exit code (7) and says what is down, not "cannot connect" (which is for the coordinator itself); nothing is
/// stored; once the store is back, the same calls work.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_is_down_surfaces_as_itself_with_its_own_exit_code() {
    let mut store = Server::start(Kind::Postgres).await;
    let store_url = store.database("flotilla").await;
    let db = TestDb::new(Sqlite).await;
    let mut fleet = Fleet::start_on_store(&[("agent-1", "sq-*")], None, 5, &store_url).await;
    fleet.start_agent("agent-1", &[FleetTarget::new("sq-01", &db.url, &[("env", "test")])]).await;
    fleet.wait_targets(1).await;
    let dir = Dir::new();
    dir.migration(Sqlite, 1, "a", "CREATE TABLE a (id INT);", "DROP TABLE a;");
    let dir_arg = dir.path().to_str().expect("utf-8");

    store.kill().await;
    let list = fleet.cli(&["plan", "list"]).await;
    list.fails(7, "the coordinator's store");
    assert!(list.stderr.contains("store_unavailable") && !list.stderr.contains("cannot connect"), "{list:#?}");
    let json = fleet.cli(&["--json", "plan", "create", "--dir", dir_arg]).await;
    assert_eq!(json.code, 7, "{json:#?}");
    assert_eq!(json.json()["error"]["kind"], "coordinator_store_or_lock_unavailable");

    store.restart().await;
    assert_eq!(fleet.cli(&["--json", "plan", "list"]).await.ok().json().as_array().map(Vec::len), Some(0));
    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_state(&id, "succeeded").await;
    assert!(db.history().await.len() == 1, "the refused submission stored nothing; the later one ran once");
}

/// The coordinator's connections to its PostgreSQL store go silent mid-plan (a blackhole through a proxy) and are
/// then reset, as a network failure would: store calls fail or stall meanwhile, the pool reconnects, and every
/// step is recorded once.
#[tokio::test(flavor = "multi_thread")]
async fn store_connections_blackholed_then_reset_mid_plan_lose_nothing() {
    let store = TestDb::new(Postgres).await;
    let (proxy, store_url) = Proxy::in_front_of(&store.url).await;
    let (dbs, targets) = pg_targets(3).await;
    let mut fleet = Fleet::start_on_store(&[("agent-1", "pg-*")], Some(etcd_url()), 3, &store_url).await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(3).await;
    let dir = slow_second(2);
    let id = fleet.create(dir.path(), &["--waves", "100%", "--parallel", "3"]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") >= 1).await;
    proxy.set(Fault::Blackhole);
    tokio::time::sleep(Duration::from_secs(4)).await; // the migrations commit; their results cannot be stored
    proxy.set(Fault::Reset);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(Fault::Pass);
    let plan = fleet.wait_state(&id, "succeeded").await;
    assert_eq!(count(&plan, "succeeded"), 3, "{plan:#}");
    for db in &dbs {
        assert_eq!(versions(&db.history().await), vec![1, 2]);
        assert_eq!(db.count("runs").await, 1, "no migration ran twice");
    }
}
