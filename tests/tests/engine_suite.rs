//! One driver suite, written once, run against real PostgreSQL, MariaDB, SQLite and MongoDB through the `flotilla` CLI.

use flotilla_core::Engine;
use flotilla_tests::sql::{create_table, insert, join, slow};
use flotilla_tests::*;

on_every_engine!(
    up_down_to_steps_and_status,
    dry_run_changes_nothing,
    baseline_records_without_running,
    two_hundred_migrations_round_trip,
    edited_migration_is_refused,
    concurrent_ups_apply_each_once,
    bad_input_changes_nothing,
    killed_runner_does_not_block_the_next,
    migration_outliving_its_lease_runs_once,
    failure_midway_leaves_dirty_and_repair_resumes,
    repair_marks_a_hand_resolved_migration,
    a_lower_fencing_token_changes_nothing,
    a_group_applies_all_or_none,
);

/// MySQL's DDL refuses --group (`a_group_applies_all_or_none`): the kill -9 scenario is for the engines that can.
mod a_group_killed_midway {
    #[tokio::test(flavor = "multi_thread")]
    async fn postgres() {
        super::a_group_killed_midway_leaves_none_applied(super::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread")]
    async fn sqlite() {
        super::a_group_killed_midway_leaves_none_applied(super::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread")]
    async fn mongodb() {
        super::a_group_killed_midway_leaves_none_applied(super::Mongodb).await
    }
}

/// Migrations 1 (table a), 2 (table b), 3 (a row in a).
fn three(engine: Engine) -> Dir {
    let dir = Dir::new();
    let (up, down) = create_table(engine, "a");
    dir.migration(engine, 1, "create_a", &up, &down);
    let (up, down) = create_table(engine, "b");
    dir.migration(engine, 2, "create_b", &up, &down);
    let (up, down) = insert(engine, "a", 1);
    dir.migration(engine, 3, "seed_a", &up, &down);
    dir
}

fn versions(db_history: &[(u128, String, i64)]) -> Vec<(u128, &str)> {
    db_history.iter().map(|(v, s, _)| (*v, s.as_str())).collect()
}

fn statuses(run: &Run) -> Vec<String> {
    run.json()["migrations"]
        .as_array()
        .expect("migrations")
        .iter()
        .map(|m| m["status"].as_str().unwrap_or("?").to_string())
        .collect()
}

async fn up_down_to_steps_and_status(engine: Engine) {
    let db = TestDb::new(engine).await;
    let dir = three(engine);
    let before = db.catalog().await;

    assert_eq!(statuses(cmd("status", &db, dir.path(), &["--json"]).await.ok()), ["pending"; 3]);
    cmd("up", &db, dir.path(), &["--to", "2"]).await.ok();
    assert_eq!(versions(&db.history().await), [(1, "applied"), (2, "applied")]);
    assert_eq!(statuses(cmd("status", &db, dir.path(), &["--json"]).await.ok()), ["applied", "applied", "pending"]);

    cmd("up", &db, dir.path(), &[]).await.ok();
    assert_eq!(db.history().await.len(), 3);
    assert_eq!(db.count("a").await, 1);

    cmd("down", &db, dir.path(), &["--steps", "1"]).await.ok();
    assert_eq!(db.count("a").await, 0);
    assert_eq!(versions(&db.history().await), [(1, "applied"), (2, "applied")]);

    cmd("down", &db, dir.path(), &["--to", "1"]).await.ok();
    assert_eq!(versions(&db.history().await), [(1, "applied")]);
    assert!(!db.has_table("b").await);

    cmd("up", &db, dir.path(), &["--to", "7"]).await.fails(2, "version 7 is not a migration");
    cmd("down", &db, dir.path(), &["--all"]).await.ok();
    assert!(db.history().await.is_empty());
    assert_eq!(db.catalog().await, before, "rolling everything back restores the catalog");
}

async fn dry_run_changes_nothing(engine: Engine) {
    let db = TestDb::new(engine).await;
    let dir = three(engine);
    let before = db.catalog().await;

    let run = cmd("up", &db, dir.path(), &["--dry-run", "--json"]).await;
    let plan = run.ok().json();
    let steps = plan["steps"].as_array().expect("steps");
    assert_eq!(steps.iter().map(|s| s["version"].as_i64().unwrap_or(0)).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(steps[0]["statements"].as_array().is_some_and(|s| !s.is_empty()), "the plan lists statements: {plan}");
    assert_eq!(db.catalog().await, before);
    assert!(!db.has_table("flotilla_schema_history").await, "a dry run does not even create the history table");
    assert!(!db.has_table("flotilla_lock").await, "a dry run takes no lease");

    let human = cmd("up", &db, dir.path(), &["--dry-run"]).await;
    assert!(human.ok().stdout.contains("Dry run: would apply 3 migration(s)"), "{human:?}");

    cmd("up", &db, dir.path(), &[]).await.ok();
    if engine == Mongodb {
        // Released, the lease stays, naming no one, for the next runner to take in one round trip.
        let locks = db.mongo().await.collection::<bson::Document>("flotilla_lock");
        let lease = locks.find_one(bson::doc! { "_id": "migrate" }).await.expect("read").expect("the lease is kept");
        assert_eq!(lease.get("owner"), Some(&bson::Bson::Null), "released: {lease}");
    }
    let after_up = db.catalog().await;
    let down = cmd("down", &db, dir.path(), &["--to", "1", "--dry-run", "--json"]).await;
    let order: Vec<i64> = down.ok().json()["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["version"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(order, [3, 2], "rollback runs newest first");
    assert_eq!(db.catalog().await, after_up);
    assert_eq!(db.history().await.len(), 3);
    cmd("repair", &db, dir.path(), &["--resume", "--dry-run"]).await.fails(4, "nothing to repair");
}

async fn baseline_records_without_running(engine: Engine) {
    let db = TestDb::new(engine).await;
    let dir = three(engine);
    // An existing database that already has table a, built without Flotilla.
    db.apply_script(&create_table(engine, "a").0).await;

    cmd("baseline", &db, dir.path(), &["--version", "99"]).await.fails(2, "version 99");
    cmd("baseline", &db, dir.path(), &["--version", "1", "--dry-run"]).await.ok();
    assert!(db.history().await.is_empty());
    cmd("baseline", &db, dir.path(), &["--version", "1"]).await.ok();
    assert_eq!(versions(&db.history().await), [(1, "baseline")]);
    assert_eq!(statuses(cmd("status", &db, dir.path(), &["--json"]).await.ok()), ["baseline", "pending", "pending"]);

    cmd("up", &db, dir.path(), &[]).await.ok();
    assert_eq!(db.count("a").await, 1);
    cmd("baseline", &db, dir.path(), &["--version", "1"]).await.fails(4, "no migration history");

    cmd("down", &db, dir.path(), &["--all"]).await.fails(4, "recorded by `baseline`");
    assert_eq!(db.history().await.len(), 3, "a refused rollback rolls back nothing");
    cmd("down", &db, dir.path(), &["--to", "1"]).await.ok();
    assert_eq!(versions(&db.history().await), [(1, "baseline")]);
    assert!(db.has_table("a").await);
}

async fn two_hundred_migrations_round_trip(engine: Engine) {
    let db = TestDb::new(engine).await;
    let dir = Dir::new();
    for i in 1..=200i64 {
        let (up, down) =
            if i % 2 == 1 { create_table(engine, &format!("t{i}")) } else { insert(engine, &format!("t{}", i - 1), i) };
        dir.migration(engine, i, &format!("step_{i}"), &up, &down);
    }
    let before = db.catalog().await;
    cmd("up", &db, dir.path(), &[]).await.ok();
    let history = db.history().await;
    assert_eq!(history.len(), 200);
    assert!(history.iter().all(|(_, s, _)| s == "applied"));
    assert_eq!(db.count("t199").await, 1);
    assert_ne!(db.catalog().await, before);

    cmd("down", &db, dir.path(), &["--all"]).await.ok();
    assert!(db.history().await.is_empty());
    assert_eq!(db.catalog().await, before, "200 UPs then 200 DOWNs leave the catalog exactly as before");
}

async fn edited_migration_is_refused(engine: Engine) {
    let db = TestDb::new(engine).await;
    let dir = three(engine);
    cmd("up", &db, dir.path(), &[]).await.ok();
    let catalog = db.catalog().await;

    // Edit applied migration 2 and add a pending migration 4.
    let (up, down) = create_table(engine, "b");
    dir.migration(engine, 2, "create_b", &up.replace("64", "65").replace("\"v\": 1", "\"v\": -1"), &down);
    let (up, down) = create_table(engine, "c");
    dir.migration(engine, 4, "create_c", &up, &down);

    cmd("up", &db, dir.path(), &[]).await.fails(4, "was changed after it was applied");
    cmd("down", &db, dir.path(), &["--all"]).await.fails(4, "was changed after it was applied");
    assert_eq!(db.history().await.len(), 3, "nothing ran");
    assert!(!db.has_table("c").await);
    assert_eq!(db.catalog().await, catalog);
    assert_eq!(
        statuses(cmd("status", &db, dir.path(), &["--json"]).await.ok()),
        ["applied", "changed", "applied", "pending"]
    );
}

async fn concurrent_ups_apply_each_once(engine: Engine) {
    let db = TestDb::new(engine).await;
    let dir = Dir::new();
    let (up, down) = create_table(engine, "counter");
    dir.migration(engine, 1, "create_counter", &up, &down);
    for i in 2..=21 {
        let (up, down) = insert(engine, "counter", i);
        dir.migration(engine, i, &format!("row_{i}"), &up, &down);
    }
    let path = dir.path().to_str().expect("utf-8");
    let args = ["up", "--db", &db.url, "--dir", path, "--json"];
    let (a, b) = (spawn(&args), spawn(&args));
    let (a, b) = tokio::join!(finish(a), finish(b));
    a.ok();
    b.ok();
    let steps = |r: &Run| r.json()["steps"].as_array().map_or(0, Vec::len);
    assert_eq!(steps(&a) + steps(&b), 21, "between them the two runs applied each migration once: {a:?} {b:?}");
    assert_eq!(db.history().await.len(), 21);
    assert_eq!(db.count("counter").await, 20, "each insert ran exactly once");
}

async fn bad_input_changes_nothing(engine: Engine) {
    let db = TestDb::new(engine).await;
    let ext = if engine == Mongodb { "json" } else { "sql" };
    let (good_up, good_down) = create_table(engine, "a");

    // Each broken directory: the error names the file, exit code 2, and nothing reaches the database.
    let broken_body = if engine == Mongodb {
        "[{\"create\": \"x\"}, {\"shutdown\": 1}]"
    } else {
        "INSERT INTO a VALUES ('unterminated);"
    };
    let cases: Vec<(Dir, &str)> = vec![
        (
            {
                let d = Dir::new();
                d.migration(engine, 1, "a", &good_up, &good_down);
                d.file(&format!("000001_again.up.{ext}"), &good_up);
                d
            },
            "duplicate version 1",
        ),
        (
            {
                let d = Dir::new();
                d.file(&format!("000001_a.up.{ext}"), &good_up);
                d
            },
            "--allow-missing-down",
        ),
        (
            {
                let d = Dir::new();
                d.migration(engine, 1, "a", &good_up, &good_down);
                d.migration(engine, 2, "broken", broken_body, &good_down);
                d
            },
            "000002_broken.up",
        ),
        (
            {
                let d = Dir::new();
                d.migration(engine, 1, "a", &good_up, &good_down);
                d.file("V2__flyway.sql", "SELECT 1;");
                d
            },
            "one directory holds one convention",
        ),
    ];
    for (dir, needle) in &cases {
        cmd("up", &db, dir.path(), &[]).await.fails(2, needle);
    }
    // A script for another engine.
    let other = Dir::new();
    if engine == Mongodb {
        other.migration(Sqlite, 1, "sql", "CREATE TABLE a (id int);", "DROP TABLE a;");
        cmd("up", &db, other.path(), &[]).await.fails(2, "a SQL migration cannot run on mongodb");
    } else {
        other.migration(Mongodb, 1, "mongo", "[{\"create\": \"a\"}]", "[{\"drop\": \"a\"}]");
        cmd("up", &db, other.path(), &[]).await.fails(2, "cannot run on");
    }
    let missing = std::path::Path::new("/nonexistent/flotilla-migrations");
    cmd("up", &db, missing, &[]).await.fails(2, "cannot read migrations directory");
    assert!(!db.has_table("a").await);
    assert!(!db.has_table("flotilla_schema_history").await, "bad input creates nothing, not even the history table");

    let good = Dir::new();
    good.migration(engine, 1, "a", &good_up, &good_down);
    flotilla(&["up", "--db", "redis://127.0.0.1/0", "--dir", good.path().to_str().unwrap_or_default()])
        .await
        .fails(2, "does not start with");
    flotilla(&["down", "--db", &db.url, "--dir", good.path().to_str().unwrap_or_default()]).await.fails(2, "required");
    let unreachable = match engine {
        Postgres => "postgres://postgres@127.0.0.1:1/x".to_string(),
        Mysql => "mysql://root@127.0.0.1:1/x".to_string(),
        Mongodb => "mongodb://127.0.0.1:1/x?directConnection=true&serverSelectionTimeoutMS=500".to_string(),
        Sqlite => "sqlite:///nonexistent-dir/flotilla/x.db".to_string(),
    };
    flotilla(&[
        "up",
        "--db",
        &unreachable,
        "--dir",
        good.path().to_str().unwrap_or_default(),
        "--connect-timeout",
        "2",
    ])
    .await
    .fails(3, "cannot connect");
}

/// Migration 1 creates table (collection) `a`; migration 2 runs about 4 s.
fn create_a_then_slow(engine: Engine) -> Dir {
    let dir = Dir::new();
    let (up, down) = create_table(engine, "a");
    dir.migration(engine, 1, "create_a", &up, &down);
    let down_slow = if engine == Mongodb { "[{\"drop\": \"sleepy\"}]".to_string() } else { "SELECT 1;".to_string() };
    dir.migration(engine, 2, "slow", &slow(engine, 4), &down_slow);
    dir
}

/// Runs `flotilla up` on `db` with `args` until it starts migration 2 (`create_a_then_slow`), and kill -9s it 300 ms
/// into it.
async fn kill_in_migration_2(db: &TestDb, dir: &Dir, args: &[&str]) {
    let path = dir.path().to_str().expect("utf-8");
    let mut first = spawn(&[&["up", "--db", &db.url, "--dir", path], args].concat());
    let stderr = first.stderr.take().expect("stderr");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    loop {
        let line = lines.next_line().await.expect("read").expect("the first runner reaches migration 2");
        if line.contains("2 slow") {
            break;
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    first.start_kill().expect("kill -9");
    first.wait().await.expect("reaped");
}

async fn killed_runner_does_not_block_the_next(engine: Engine) {
    let db = TestDb::new(engine).await;
    let dir = create_a_then_slow(engine);
    // The first runner holds the lock (a lease of 2 s where the lock is a lease) and is killed mid-migration.
    kill_in_migration_2(&db, &dir, &["--lock-ttl", "2"]).await;

    // The next runner must get the lock (released by the server, or expired) rather than wait forever. On MongoDB
    // the killed runner's transaction stays open on the server for a minute (transactionLifetimeLimitSeconds) unless
    // the next runner ends it: a lock timeout well under that says it did.
    let next = cmd("up", &db, dir.path(), &["--lock-timeout", "20"]).await;
    assert!(!next.stderr.contains("waiting for the migration lock"), "{next:?}");
    match engine {
        // One transaction per migration: the killed one committed nothing, so it simply runs again.
        Postgres | Sqlite | Mongodb => {
            next.ok();
            assert_eq!(versions(&db.history().await), [(1, "applied"), (2, "applied")]);
        }
        // Statement by statement: the record says it was interrupted, and says so instead of guessing.
        Mysql => {
            next.fails(4, "was interrupted after statement");
            assert_eq!(versions(&db.history().await), [(1, "applied"), (2, "dirty")]);
        }
    }
}

async fn migration_outliving_its_lease_runs_once(engine: Engine) {
    let db = TestDb::new(engine).await;
    let dir = Dir::new();
    let (up, down) = create_table(engine, "a");
    dir.migration(engine, 1, "create_a", &up, &down);
    // Migration 2 runs about 3 s, three times its runner's 1 s lease, then writes a row that must appear once.
    let (row, _) = insert(engine, "a", 1);
    let slow_then_row = join(engine, &slow(engine, 3), &row);
    let down = if engine == Mongodb { "[{\"drop\": \"sleepy\"}]" } else { "SELECT 1;" };
    dir.migration(engine, 2, "slow_then_row", &slow_then_row, down);
    let path = dir.path().to_str().expect("utf-8");

    let mut first = spawn(&["up", "--db", &db.url, "--dir", path, "--lock-ttl", "1"]);
    let stderr = first.stderr.take().expect("stderr");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    while let Some(line) = lines.next_line().await.expect("read") {
        if line.contains("2 slow_then_row") {
            break;
        }
    }
    // The first runner's lease has long expired by the time the second one asks for it.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let second = cmd("up", &db, dir.path(), &["--lock-timeout", "30", "--lock-ttl", "1"]).await;
    second.ok();
    let first = first.wait().await.expect("first runner");
    assert!(first.success(), "the first runner finishes its migration");
    assert_eq!(db.count("a").await, 1, "migration 2 ran exactly once");
    assert_eq!(versions(&db.history().await), [(1, "applied"), (2, "applied")]);
}

/// Migration 2 has five statements, the third of which fails until table (collection) `audit` exists.
fn five_statements(engine: Engine) -> Dir {
    let dir = Dir::new();
    let (up, down) = create_table(engine, "a");
    dir.migration(engine, 1, "create_a", &up, &down);
    let (up2, down2) = match engine {
        Mongodb => (
            r#"[{"insert": "a", "documents": [{"_id": 1}]}, {"insert": "a", "documents": [{"_id": 2}]},
                {"collMod": "audit"}, {"insert": "a", "documents": [{"_id": 4}]}, {"create": "a_archive"}]"#
                .to_string(),
            r#"[{"drop": "a_archive"}, {"delete": "a", "deletes": [{"q": {}, "limit": 0}]}]"#.to_string(),
        ),
        _ => {
            // PostgreSQL and SQLite would run this atomically; opt out to exercise statement-by-statement mode.
            let header = if engine == Mysql { "" } else { "-- flotilla:no-transaction\n" };
            (
                format!("{header}INSERT INTO a (id) VALUES (1);\nINSERT INTO a (id) VALUES (2);\nINSERT INTO audit (id) VALUES (3);\nINSERT INTO a (id) VALUES (4);\nCREATE TABLE a_archive (id BIGINT);\n"),
                "DROP TABLE a_archive;\nDELETE FROM a;\n".to_string(),
            )
        }
    };
    dir.migration(engine, 2, "five", &up2, &down2);
    dir
}

async fn create_audit(db: &TestDb) {
    match db.engine {
        Mongodb => db.exec(r#"{"create": "audit"}"#).await,
        _ => db.exec("CREATE TABLE audit (id BIGINT)").await,
    }
}

async fn failure_midway_leaves_dirty_and_repair_resumes(engine: Engine) {
    let db = TestDb::new(engine).await;
    let dir = five_statements(engine);

    let failed = cmd("up", &db, dir.path(), &[]).await;
    failed.fails(1, "at statement 3 of 5");
    assert!(failed.stderr.contains("left dirty"), "{failed:?}");
    let history = db.history().await;
    assert_eq!(history, [(1, "applied".into(), 0), (2, "dirty".into(), 2)], "statements 1 and 2 committed");
    assert_eq!(db.count("a").await, 2);

    let status = cmd("status", &db, dir.path(), &["--json"]).await;
    let row = &status.ok().json()["migrations"][1];
    assert_eq!(row["status"], "dirty");
    assert!(row["detail"].as_str().is_some_and(|d| d.contains("failed at statement 3 of 5")), "{row}");
    cmd("up", &db, dir.path(), &[]).await.fails(4, "is dirty");

    create_audit(&db).await;
    let resumed = cmd("repair", &db, dir.path(), &["--resume"]).await;
    resumed.ok();
    assert_eq!(versions(&db.history().await), [(1, "applied"), (2, "applied")]);
    assert_eq!(db.count("a").await, 3, "statements 1 and 2 did not run twice; 4 ran once");
    assert!(db.has_table("a_archive").await);
    cmd("down", &db, dir.path(), &["--all"]).await.ok();
    assert!(db.history().await.is_empty());
}

async fn repair_marks_a_hand_resolved_migration(engine: Engine) {
    let db = TestDb::new(engine).await;
    let dir = five_statements(engine);
    cmd("up", &db, dir.path(), &[]).await.fails(1, "at statement 3 of 5");

    // The operator undoes the two committed statements by hand, then tells Flotilla.
    cmd("repair", &db, dir.path(), &["--mark-not-applied", "--dry-run"]).await.ok();
    assert_eq!(db.history().await[1].1, "dirty");
    match engine {
        Mongodb => db.exec(r#"{"delete": "a", "deletes": [{"q": {}, "limit": 0}]}"#).await,
        _ => db.exec("DELETE FROM a").await,
    }
    cmd("repair", &db, dir.path(), &["--mark-not-applied"]).await.ok();
    assert_eq!(versions(&db.history().await), [(1, "applied")]);

    create_audit(&db).await;
    cmd("up", &db, dir.path(), &[]).await.ok();
    assert_eq!(db.count("a").await, 3);

    // And the other way: a failure finished by hand, then marked applied.
    cmd("down", &db, dir.path(), &["--steps", "1"]).await.ok();
    match engine {
        Mongodb => db.exec(r#"{"drop": "audit"}"#).await,
        _ => db.exec("DROP TABLE audit").await,
    }
    cmd("up", &db, dir.path(), &[]).await.fails(1, "at statement 3 of 5");
    cmd("repair", &db, dir.path(), &["--mark-applied"]).await.ok();
    assert_eq!(versions(&db.history().await), [(1, "applied"), (2, "applied")]);
    cmd("repair", &db, dir.path(), &["--mark-applied"]).await.fails(4, "nothing to repair");
}

/// The fleet's fencing token is checked by the database under its lock, before the first write: a runner holding a
/// lower token than the database has seen (an assignment from a coordinator that lost the target's lock) changes
/// nothing, up or down; the same token again, or a higher one, goes through; a run with nothing to write needs no
/// fence.
async fn a_lower_fencing_token_changes_nothing(engine: Engine) {
    use flotilla_agent::{connect, ConnectOptions, Executor};
    use flotilla_core::{read_dir, ReadOptions, Request};
    let db = TestDb::new(engine).await;
    let dir = three(engine);
    let set = read_dir(dir.path(), &ReadOptions::default()).expect("read");
    let run = |token: u64, request: Request| {
        let (url, set) = (db.url.clone(), set.clone());
        async move {
            let driver = connect(&url, &ConnectOptions::default()).await.expect("connect");
            let mut ex = Executor::new(driver, "fence-test").with_fencing_token(Some(token));
            let result = ex.migrate(&set, request, false).await.map(drop);
            ex.close().await;
            result
        }
    };
    let up = |to| Request::Up { to: Some(flotilla_tests::v(to)) };
    run(5, up(1)).await.expect("token 5");
    let refused = run(3, up(2)).await.expect_err("token 3 is below 5");
    assert!(refused.to_string().contains("fencing token 3 is lower"), "{refused}");
    assert_eq!(versions(&db.history().await), [(1, "applied")], "the refused run changed nothing");
    run(3, up(1)).await.expect("nothing to write: no fence needed");
    run(5, up(2)).await.expect("the same token again (a re-sent assignment)");
    run(9, up(3)).await.expect("a higher token");
    assert!(run(7, Request::DownTo(flotilla_tests::v(1))).await.is_err(), "7 is below 9 now: a DOWN is refused too");
    assert_eq!(versions(&db.history().await), [(1, "applied"), (2, "applied"), (3, "applied")]);
}

/// `--group`: the pending migrations in one transaction, all or none, each with its history record. MySQL, whose DDL
/// commits on its own, refuses before running any; so do MongoDB's drops, which a transaction does not allow.
async fn a_group_applies_all_or_none(engine: Engine) {
    let db = TestDb::new(engine).await;
    let dir = three(engine);
    // The fourth inserts the row the third inserted: it fails, after the first three ran in the same transaction.
    let (again, down) = insert(engine, "a", 1);
    dir.migration(engine, 4, "seed_a_again", &again, &down);
    let before = db.catalog().await;
    if engine == Mysql {
        let refused = cmd("up", &db, dir.path(), &["--group"]).await;
        refused.fails(4, "1 (create_a) cannot run in a transaction: MySQL commits DDL on its own");
        assert!(refused.stderr.contains("none of them was run"), "{refused:?}");
        assert!(!db.has_table("a").await);
        assert!(
            !db.has_table("flotilla_schema_history").await,
            "a refused group creates nothing, not even the history table"
        );
        return;
    }
    let failed = cmd("up", &db, dir.path(), &["--group"]).await;
    failed.fails(1, "rolled back together: none of them is applied");
    assert!(failed.stderr.contains("4 (seed_a_again)"), "the failing migration is named: {failed:?}");
    assert!(db.history().await.is_empty(), "no history record of the three that ran before it");
    assert_eq!(db.catalog().await, before, "nor any of their tables");

    let (fixed, down) = insert(engine, "a", 2);
    dir.migration(engine, 4, "seed_a_again", &fixed, &down);
    let run = cmd("up", &db, dir.path(), &["--group", "--json"]).await;
    let steps = run.ok().json()["steps"].as_array().expect("steps").len();
    assert_eq!(steps, 4, "one report per migration");
    assert_eq!(versions(&db.history().await), [(1, "applied"), (2, "applied"), (3, "applied"), (4, "applied")]);
    assert_eq!(db.count("a").await, 2);

    if engine == Mongodb {
        let refused = cmd("down", &db, dir.path(), &["--all", "--group"]).await;
        refused.fails(4, "cannot run in a transaction");
        assert_eq!(db.history().await.len(), 4, "nothing rolled back");
        cmd("down", &db, dir.path(), &["--all"]).await.ok();
    } else {
        cmd("down", &db, dir.path(), &["--all", "--group"]).await.ok();
    }
    assert!(db.history().await.is_empty());
    assert_eq!(db.catalog().await, before);
}

/// kill -9 of a `--group` run in its last migration: the first migration, which ran in the same transaction, is not
/// applied either, and the next grouped run applies both.
async fn a_group_killed_midway_leaves_none_applied(engine: Engine) {
    let db = TestDb::new(engine).await;
    let dir = create_a_then_slow(engine);
    kill_in_migration_2(&db, &dir, &["--lock-ttl", "2", "--group"]).await;
    assert!(db.history().await.is_empty(), "migration 1 committed with 2 or not at all");
    assert!(!db.has_table("a").await);

    cmd("up", &db, dir.path(), &["--lock-timeout", "20", "--group"]).await.ok();
    assert_eq!(versions(&db.history().await), [(1, "applied"), (2, "applied")]);
}
