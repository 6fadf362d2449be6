//! Processes killed with SIGKILL (databases, etcd, the store, the leading coordinator) or stopped mid-step: what
//! committed is recorded, what did not is undone or left dirty at the statement it reached, and a later plan runs
//! it once.

use super::*;

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
    // Killed 500 ms in: inside pg_sleep.
    let plan = kill_the_server_mid_step(&mut server, &fleet, dir.path(), Duration::from_millis(500)).await;
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
    // Killed 800 ms in: CREATE TABLE a committed; SLEEP runs.
    let plan = kill_the_server_mid_step(&mut server, &fleet, dir.path(), Duration::from_millis(800)).await;
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

/// The same, killed in a row change that opens a statement-by-statement migration: the row change commits with
/// its record or not at all, so nothing is recorded ahead of it. The server rolls it back on restart, no dirty
/// record is left to repair, and the next plan applies the migration once.
#[tokio::test(flavor = "multi_thread")]
async fn mariadb_killed_in_the_row_change_a_migration_opens_with_keeps_nothing_to_repair() {
    let mut server = Server::start(Kind::Mariadb).await;
    let url = server.database("shop").await;
    let db = TestDb::on(Mysql, &url);
    let fleet = fleet_on("my-01", &url, None).await;
    let dir = Dir::new();
    dir.migration(Mysql, 1, "runs", "CREATE TABLE runs (n INT);\nINSERT INTO runs VALUES (1);", "DROP TABLE runs;")
        .migration(
            Mysql,
            2,
            "bump",
            "UPDATE runs SET n = n + 1 + SLEEP(3);\nCREATE TABLE b (id INT);",
            "DROP TABLE b;\nUPDATE runs SET n = n - 1;",
        );
    let first = fleet.create(dir.path(), &["--to", "1"]).await;
    fleet.wait_state(&first, "succeeded").await;
    // Killed 800 ms in: inside the sleeping UPDATE.
    let plan = kill_the_server_mid_step(&mut server, &fleet, dir.path(), Duration::from_millis(800)).await;
    assert_eq!(steps(&plan)["my-01"]["state"], "failed", "{plan:#}");
    assert_eq!(db.history().await, vec![(1, "applied".to_string(), 0)], "no record of migration 2, dirty or not");
    let n = || async {
        let mut conn = db.sql().await;
        sqlx::query_scalar::<_, i32>("SELECT n FROM runs").fetch_one(&mut conn).await.expect("n")
    };
    assert_eq!(n().await, 1, "the UPDATE rolled back");
    let again = fleet.create(dir.path(), &["--max-failures", "0"]).await;
    fleet.wait_state(&again, "succeeded").await;
    assert_eq!(versions(&db.history().await), vec![1, 2]);
    assert_eq!(n().await, 2, "the UPDATE ran once");
    assert!(db.has_table("b").await);
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
    // Killed 800 ms in: inside the sleeping update.
    let plan = kill_the_server_mid_step(&mut server, &fleet, dir.path(), Duration::from_millis(800)).await;
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
    // Killed 800 ms in: inside the sleeping update, in the transaction.
    let plan = kill_the_server_mid_step(&mut server, &fleet, dir.path(), Duration::from_millis(800)).await;
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

/// Starts a plan of `dir` on the fleet's one target, kills its database server (SIGKILL) `into` the step, restarts it
/// on the same data 2 s later, and returns the plan once it halted.
async fn kill_the_server_mid_step(server: &mut Server, fleet: &Fleet, dir: &Path, into: Duration) -> serde_json::Value {
    let id = fleet.create(dir, &["--max-failures", "0"]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    tokio::time::sleep(into).await;
    server.kill().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart().await;
    fleet.wait_state(&id, "halted").await
}
