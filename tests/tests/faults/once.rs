//! One runner per database: two target names for one database, two agent processes with one name, a skewed clock,
//! and a row change committed with its progress record. Each migration runs once.

use super::*;

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
