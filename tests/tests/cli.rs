//! The CLI's contract with scripts and shells: URL from the environment, JSON errors, exit codes.

use flotilla_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn database_url_from_the_environment() {
    let db = TestDb::new(Sqlite).await;
    let dir = Dir::new();
    dir.migration(Sqlite, 1, "a", "CREATE TABLE a (id INTEGER);", "DROP TABLE a;");
    let out = tokio::process::Command::new(binary("flotilla"))
        .args(["up", "--dir", dir.path().to_str().expect("utf-8")])
        .env("FLOTILLA_DB_URL", &db.url)
        .output()
        .await
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(db.history().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_errors_carry_kind_and_exit_code() {
    let db = TestDb::new(Sqlite).await;
    let dir = Dir::new();
    dir.file("1_a.up.sql", "CREATE TABLE a (id INTEGER);");
    let run = cmd("up", &db, dir.path(), &["--json"]).await;
    run.fails(2, "no DOWN");
    let json = run.json();
    assert_eq!(json["ok"], false);
    assert_eq!(json["error"]["kind"], "bad_input");
    assert_eq!(json["error"]["exit_code"], 2);
    assert!(json["error"]["message"].as_str().is_some_and(|m| m.contains("1_a.up.sql")), "{json}");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_on_a_missing_sqlite_file_creates_nothing() {
    let dir = Dir::new();
    dir.migration(Sqlite, 1, "a", "CREATE TABLE a (id INTEGER);", "DROP TABLE a;");
    let db_path = dir.path().join("never.db");
    let url = format!("sqlite://{}", db_path.display());
    let d = dir.path().to_str().expect("utf-8");
    let run = flotilla(&["status", "--db", &url, "--dir", d, "--json"]).await;
    assert_eq!(run.ok().json()["migrations"][0]["status"], "pending");
    flotilla(&["up", "--db", &url, "--dir", d, "--dry-run"]).await.ok();
    assert!(!db_path.exists(), "read-only commands never create the database file");
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_runs_on_embedded_defaults() {
    let run = flotilla(&["dev", "--json"]).await;
    let json = run.ok().json();
    assert_eq!(json["targets"], 12);
    assert_eq!(json["schemas_restored"], 12, "every database has its original schema back: {json}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_runs_on_real_servers_given_their_urls() {
    let (pg, my, mo) = (TestDb::new(Postgres).await, TestDb::new(Mysql).await, TestDb::new(Mongodb).await);
    let run = flotilla(&["dev", "--json", "--db", &pg.url, "--db", &my.url, "--db", &mo.url]).await;
    let json = run.ok().json();
    assert_eq!((json["targets"].as_u64(), json["schemas_restored"].as_u64()), (Some(3), Some(3)), "{json}");
    for db in [&pg, &my, &mo] {
        assert!(db.history().await.is_empty(), "{}: rolled back", db.url);
    }
    // A database with history is refused before anything runs.
    let dir = Dir::new();
    dir.migration(Postgres, 1, "t", "CREATE TABLE t (id INT);", "DROP TABLE t;");
    cmd("up", &pg, dir.path(), &[]).await.ok();
    flotilla(&["dev", "--db", &pg.url]).await.fails(4, "already has migration history");
}

#[tokio::test(flavor = "multi_thread")]
async fn history_records_the_real_duration() {
    // Atomic (PostgreSQL) and statement by statement (MySQL): the record carries how long the migration took.
    for (engine, sleep) in [(Postgres, "SELECT pg_sleep(0.3);"), (Mysql, "SELECT SLEEP(0.3);")] {
        let db = TestDb::new(engine).await;
        let dir = Dir::new();
        dir.migration(engine, 1, "slow", sleep, "SELECT 1;");
        cmd("up", &db, dir.path(), &[]).await.ok();
        let mut conn = db.sql().await;
        let ms: i64 = sqlx::query_scalar("SELECT duration_ms FROM flotilla_schema_history WHERE version = 1")
            .fetch_one(&mut conn)
            .await
            .expect("duration");
        assert!(ms >= 300, "{engine}: recorded {ms} ms for a 300 ms migration");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn new_writes_in_the_directory_convention_and_never_overwrites() {
    let dir = Dir::new();
    dir.file("V1__init.sql", "CREATE TABLE a (id INT);").file("U1__init.sql", "DROP TABLE a;");
    let d = dir.path().to_str().expect("utf-8");
    let run = flotilla(&["new", "add b", "--dir", d, "--json"]).await;
    let files: Vec<String> = run.ok().json()["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f.as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with("V2__add_b.sql")) && files.iter().any(|f| f.ends_with("U2__add_b.sql")),
        "{files:?}"
    );
    flotilla(&["new", "add c", "--dir", d, "--style", "dbmate"]).await.fails(2, "would mix conventions");
    flotilla(&["new", "!!!", "--dir", d]).await.fails(2, "at least one letter");
    let entries = std::fs::read_dir(dir.path()).expect("dir").count();
    assert_eq!(entries, 4, "refused requests wrote nothing");
    // The generated migration applies and rolls back.
    let db = TestDb::new(Sqlite).await;
    cmd("up", &db, dir.path(), &[]).await.ok();
    cmd("down", &db, dir.path(), &["--all"]).await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_commands_refuse_bad_input_before_reaching_the_coordinator() {
    let dir = Dir::new();
    dir.migration(Sqlite, 1, "t", "CREATE TABLE t (id INT);", "DROP TABLE t;");
    let d = dir.path().to_str().expect("utf-8");
    // Nothing listens on port 9: anything that got as far as connecting would fail with exit 3 instead.
    let base = ["plan", "create", "--dir", d, "--insecure-dev", "--coordinator", "http://127.0.0.1:9"];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();
    flotilla(&with(&["--select", "env"])).await.fails(2, "--select");
    flotilla(&with(&["--waves", "1,0%"])).await.fails(2, "--waves");
    flotilla(&with(&["--on-failure", "shrug"])).await.fails(2, "--on-failure");
    flotilla(&with(&["--phase", "sideways"])).await.fails(2, "--phase");
    flotilla(&with(&["--to", "0"])).await.fails(2, "--to");
    flotilla(&["plan", "create", "--dir", "/no/such/dir", "--insecure-dev", "--coordinator", "http://127.0.0.1:9"])
        .await
        .fails(2, "/no/such/dir");
    flotilla(&["plan", "list", "--coordinator", "https://127.0.0.1:9"]).await.fails(2, "--certs");
    flotilla(&["plan", "list", "--insecure-dev", "--coordinator", "https://127.0.0.1:9"]).await.fails(2, "http://");
    flotilla(&with(&[])).await.fails(3, "cannot reach the coordinator");

    let certs = tempfile::tempdir().expect("dir");
    let out = certs.path().join("c");
    let out = out.to_str().expect("utf-8");
    let made = flotilla(&["--json", "certs", "init", "--out", out, "--agent", "a1:pg-*"]).await;
    assert_eq!(
        made.ok().json()["files"].as_array().map(Vec::len),
        Some(8),
        "ca, coordinator, admin and a1 (cert and key each)"
    );
    flotilla(&["certs", "init", "--out", out]).await.fails(2, "never overwrites");
    flotilla(&["certs", "init", "--out", out, "--agent", "bad/name"]).await.fails(2, "agent name");
}

/// The `ALTER TABLE` lock-queue outage, prevented: a migration waiting for a lock that a long transaction holds gives
/// up after its lock timeout, rolls back and retries; an application query issued meanwhile waits at most about the
/// timeout (not as long as the long transaction); once the lock is free the migration succeeds. With too few
/// retries it fails cleanly, having changed nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_migration_blocked_by_a_lock_retries_without_queueing_the_application_behind_it() {
    use std::time::{Duration, Instant};
    let db = TestDb::new(Postgres).await;
    db.exec("CREATE TABLE accounts (id int PRIMARY KEY)").await;
    db.exec("INSERT INTO accounts SELECT generate_series(1, 100)").await;
    let waiting_alter = "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
         WHERE c.relname = 'accounts' AND l.mode = 'AccessExclusiveLock' AND NOT l.granted";
    let dir = Dir::new();
    let up = "-- why: accounts get a note for support\n-- flotilla:lock-timeout 500ms\n-- flotilla:lock-retries 6\n\
              ALTER TABLE accounts ADD COLUMN note text;";
    dir.migration(Postgres, 1, "note", up, "ALTER TABLE accounts DROP COLUMN note;");
    let dir_path = dir.path().to_str().expect("utf-8").to_string();

    // A long transaction (a report, a stuck session) reads the table.
    let mut holder = db.sql().await;
    sqlx::Executor::execute(&mut holder, "BEGIN").await.expect("begin");
    sqlx::Executor::execute(&mut holder, "LOCK TABLE accounts IN ACCESS SHARE MODE").await.expect("lock");
    let child = spawn(&["up", "--db", &db.url, "--dir", &dir_path]);

    // Once the ALTER waits for its lock, the application queries the table.
    let mut watcher = db.sql().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sqlx::query_scalar::<_, i64>(waiting_alter).fetch_one(&mut watcher).await.expect("pg_locks") == 0 {
        assert!(Instant::now() < deadline, "the migration never waited for the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut app = db.sql().await;
    let asked = Instant::now();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts").fetch_one(&mut app).await.expect("app query");
    let app_waited = asked.elapsed();
    assert_eq!(n, 100);
    // The long transaction goes on for 3 s more: without the lock timeout the application would wait all of it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    sqlx::Executor::execute(&mut holder, "COMMIT").await.expect("commit");
    let run = finish(child).await;
    run.ok();
    let retries = run.stderr.matches("; rolled back, retry").count();
    println!(
        "application query waited {} ms behind the migration; the migration retried {retries} times",
        app_waited.as_millis()
    );
    assert!(app_waited < Duration::from_millis(2500), "the application waited {app_waited:?}, past the 500 ms timeout");
    assert!(retries >= 2, "retried while the lock was held: {}", run.stderr);
    assert!(run.stderr.contains("retry 1/6"), "{}", run.stderr);
    assert_eq!(versions_of(&db).await, vec![1]);
    let columns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'note'",
    )
    .fetch_one(&mut watcher)
    .await
    .expect("columns");
    assert_eq!(columns, 1, "the migration ran once the lock was free");

    // Held for good, with one retry allowed: the migration fails cleanly and changes nothing.
    let dir = Dir::new();
    dir.migration(Postgres, 1, "note", up, "ALTER TABLE accounts DROP COLUMN note;");
    dir.migration(
        Postgres,
        2,
        "flag",
        "ALTER TABLE accounts ADD COLUMN flag boolean;",
        "ALTER TABLE accounts DROP COLUMN flag;",
    );
    sqlx::Executor::execute(&mut holder, "BEGIN").await.expect("begin");
    sqlx::Executor::execute(&mut holder, "LOCK TABLE accounts IN ACCESS SHARE MODE").await.expect("lock");
    let run = cmd("up", &db, dir.path(), &["--statement-lock-timeout", "300ms", "--lock-retries", "1", "--json"]).await;
    sqlx::Executor::execute(&mut holder, "COMMIT").await.expect("commit");
    run.fails(1, "gave up waiting for a lock");
    assert!(run.stdout.contains("after 1 retries"), "{}", run.stdout);
    assert_eq!(versions_of(&db).await, vec![1], "nothing of migration 2 was recorded");
    let flag: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'flag'",
    )
    .fetch_one(&mut watcher)
    .await
    .expect("columns");
    assert_eq!(flag, 0, "rolled back");
    let bad = cmd("up", &db, dir.path(), &["--statement-lock-timeout", "5 seconds"]).await;
    bad.fails(2, "not a duration");
}

async fn versions_of(db: &TestDb) -> Vec<u128> {
    db.history().await.into_iter().map(|(v, _, _)| v).collect()
}

/// On MariaDB a statement that gives up waiting for a metadata lock did nothing (its DDL is atomic): the migration,
/// run statement by statement, retries that statement and goes on once the lock is free.
#[tokio::test(flavor = "multi_thread")]
async fn a_mariadb_migration_blocked_by_a_metadata_lock_retries_the_statement() {
    use std::time::Duration;
    let db = TestDb::new(Mysql).await;
    db.exec("CREATE TABLE accounts (id int PRIMARY KEY)").await;
    let dir = Dir::new();
    let up = "-- flotilla:lock-timeout 1s\n-- flotilla:lock-retries 6\nCREATE TABLE notes (id int);\n\
              ALTER TABLE accounts ADD COLUMN note text;";
    dir.migration(Mysql, 1, "note", up, "ALTER TABLE accounts DROP COLUMN note;\nDROP TABLE notes;");
    let mut holder = db.sql().await;
    sqlx::Executor::execute(&mut holder, "START TRANSACTION").await.expect("begin");
    sqlx::Executor::execute(&mut holder, "SELECT count(*) FROM accounts").await.expect("read");
    let child = spawn(&["up", "--db", &db.url, "--dir", dir.path().to_str().expect("utf-8")]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sqlx::Executor::execute(&mut holder, "COMMIT").await.expect("commit");
    let run = finish(child).await;
    run.ok();
    let retries = run.stderr.matches("; rolled back, retry").count();
    println!("the ALTER retried {retries} times");
    assert!(retries >= 1, "{}", run.stderr);
    assert!(run.stderr.contains("statement 2 gave up waiting for a lock"), "{}", run.stderr);
    assert_eq!(versions_of(&db).await, vec![1]);
    assert!(db.has_table("notes").await, "the first statement ran once, before the wait");
}

/// On MariaDB a migration of row changes alone runs in one transaction with its record, as on the other engines: a
/// failure keeps none of its rows and leaves nothing dirty, and `--group` takes such migrations together. One with
/// DDL still runs statement by statement.
#[tokio::test(flavor = "multi_thread")]
async fn a_mariadb_migration_of_row_changes_alone_is_all_or_nothing() {
    let db = TestDb::new(Mysql).await;
    let dir = Dir::new();
    dir.migration(Mysql, 1, "accounts", "CREATE TABLE accounts (id INT PRIMARY KEY);", "DROP TABLE accounts;")
        .migration(
            Mysql,
            2,
            "seed",
            "INSERT INTO accounts VALUES (1);\nINSERT INTO accounts VALUES (2);\nINSERT INTO accounts VALUES (1);",
            "DELETE FROM accounts;",
        );
    let failed = cmd("up", &db, dir.path(), &[]).await;
    failed.fails(1, "at statement 3 of 3");
    assert!(failed.stderr.contains("nothing of it was committed"), "{failed:?}");
    assert!(failed.stderr.contains("2 seed (3 statements, in a transaction)"), "{failed:?}");
    assert!(failed.stderr.contains("1 accounts (1 statements, statement by statement)"), "{failed:?}");
    assert_eq!(versions_of(&db).await, vec![1], "no record of the failed one, dirty or not");
    assert_eq!(db.count("accounts").await, 0, "its first two rows rolled back with it");

    dir.migration(
        Mysql,
        2,
        "seed",
        "INSERT INTO accounts VALUES (1);\nINSERT INTO accounts VALUES (2);",
        "DELETE FROM accounts;",
    )
    .migration(Mysql, 3, "renumber", "UPDATE accounts SET id = id + 10;", "UPDATE accounts SET id = id - 10;");
    cmd("up", &db, dir.path(), &["--group"]).await.ok();
    assert_eq!(versions_of(&db).await, vec![1, 2, 3]);
    assert_eq!(db.count("accounts").await, 2);
    // The first statement travels with BEGIN: its failure is still its own, and rolls back.
    dir.migration(
        Mysql,
        4,
        "misnamed",
        "INSERT INTO acounts VALUES (5);\nINSERT INTO accounts VALUES (6);",
        "SELECT 1;",
    );
    cmd("up", &db, dir.path(), &[]).await.fails(1, "at statement 1 of 2");
    assert_eq!((versions_of(&db).await, db.count("accounts").await), (vec![1, 2, 3], 2));
    cmd("down", &db, dir.path(), &["--to", "1", "--group"]).await.ok();
    assert_eq!((versions_of(&db).await, db.count("accounts").await), (vec![1], 0));
}

/// A migration's statement timeout reaches the database with its lock timeout (one round trip sets both): a statement
/// running past it is cancelled by the server, and the migration fails saying so, on PostgreSQL and MariaDB alike.
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_running_past_its_timeout_is_cancelled_by_the_server() {
    let cases =
        [(Postgres, "SELECT pg_sleep(5);", "statement timeout"), (Mysql, "SELECT SLEEP(5);", "max_statement_time")];
    for (engine, sleep, said) in cases {
        let db = TestDb::new(engine).await;
        let dir = Dir::new();
        let up = format!("-- flotilla:statement-timeout 1s\n-- flotilla:lock-timeout 2s\n{sleep}");
        dir.migration(engine, 1, "slow", &up, "SELECT 1;");
        cmd("up", &db, dir.path(), &[]).await.fails(1, said);
        assert!(db.history().await.iter().all(|(_, state, _)| state != "applied"), "{engine}: not applied");
    }
}
