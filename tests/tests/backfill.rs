//! Batched, resumable backfills and expand/contract phases.

use flotilla_core::Engine;
use flotilla_tests::*;
use sqlx::Row;

const ROWS: i64 = 1_000_000;

async fn million_rows(db: &TestDb) {
    db.exec("CREATE TABLE t (id BIGINT PRIMARY KEY, n INT NOT NULL DEFAULT 0)").await;
    let fill = match db.engine {
        Postgres => format!("INSERT INTO t (id) SELECT g FROM generate_series(1, {ROWS}) g"),
        // 100 × 100 × 100: MariaDB stops recursive CTEs at 1000 iterations by default.
        _ => "INSERT INTO t (id) WITH RECURSIVE d(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM d WHERE x < 99)
              SELECT a.x * 10000 + b.x * 100 + c.x + 1 FROM d a, d b, d c"
            .to_string(),
    };
    db.exec(&fill).await;
}

/// (rows with n = 0, rows with n = 1, rows with n > 1)
async fn tally(db: &TestDb) -> (i64, i64, i64) {
    let mut conn = db.sql().await;
    let row = sqlx::query(
        "SELECT CAST(sum(CASE WHEN n = 0 THEN 1 ELSE 0 END) AS SIGNED), CAST(sum(CASE WHEN n = 1 THEN 1 ELSE 0 END) AS SIGNED),
                CAST(sum(CASE WHEN n > 1 THEN 1 ELSE 0 END) AS SIGNED) FROM t"
            .replace("SIGNED", if db.engine == Mysql { "SIGNED" } else { "BIGINT" })
            .as_str(),
    )
    .fetch_one(&mut conn)
    .await
    .expect("tally");
    (row.get(0), row.get(1), row.get(2))
}

async fn killed_backfill_resumes_and_updates_each_row_once(engine: Engine) {
    let db = TestDb::new(engine).await;
    million_rows(&db).await;
    let dir = Dir::new();
    dir.migration(
        engine,
        1,
        "count_rows",
        "-- Why: every row gets counted once.\n-- flotilla:backfill table=t key=id batch=10000\nUPDATE t SET n = n + 1 WHERE id > {lo} AND id <= {hi};",
        "-- flotilla:backfill table=t key=id batch=50000\nUPDATE t SET n = n - 1 WHERE id > {lo} AND id <= {hi};",
    );
    let path = dir.path().to_str().expect("utf-8");

    // Kill -9 the first run once 50 of its 100 batches have committed.
    let mut first = spawn(&["up", "-v", "--db", &db.url, "--dir", path, "--lock-ttl", "2"]);
    let stderr = first.stderr.take().expect("stderr");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    while let Some(line) = lines.next_line().await.expect("read") {
        if line.contains("batch 50 committed") {
            break;
        }
    }
    first.start_kill().expect("kill -9");
    first.wait().await.expect("reaped");

    let (untouched, once, twice) = tally(&db).await;
    assert!(once >= 500_000 && untouched > 0, "killed halfway: {once} rows done, {untouched} left");
    assert_eq!(twice, 0);
    assert!(db.history().await.is_empty(), "an unfinished backfill is still pending");

    let resumed = cmd("up", &db, dir.path(), &["-v"]).await;
    resumed.ok();
    assert!(!resumed.stderr.contains("batch 1 committed"), "the second run resumes, it does not start over");
    assert_eq!(tally(&db).await, (0, ROWS, 0), "every row updated exactly once");
    assert_eq!(versions(&db).await, [(1, "applied".to_string())]);
    assert_eq!(db.count("flotilla_backfill").await, 0, "the finished backfill's cursor is gone");

    // Its DOWN is a backfill too.
    cmd("down", &db, dir.path(), &["--all"]).await.ok();
    assert_eq!(tally(&db).await, (ROWS, 0, 0));
    assert!(db.history().await.is_empty());
}

async fn versions(db: &TestDb) -> Vec<(u128, String)> {
    db.history().await.into_iter().map(|(v, s, _)| (v, s)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_resumes_on_postgres() {
    killed_backfill_resumes_and_updates_each_row_once(Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_resumes_on_mysql() {
    killed_backfill_resumes_and_updates_each_row_once(Mysql).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn backfill_resumes_on_sqlite() {
    killed_backfill_resumes_and_updates_each_row_once(Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_backfill_file_is_not_resumed_and_bad_directives_are_refused() {
    let db = TestDb::new(Sqlite).await;
    db.exec("CREATE TABLE t (id BIGINT PRIMARY KEY, n INT NOT NULL DEFAULT 0)").await;
    let dir = Dir::new();
    dir.migration(Sqlite, 1, "bad", "-- flotilla:backfill table=t key=id\nUPDATE t SET n = 1;", "SELECT 1;");
    cmd("up", &db, dir.path(), &[]).await.fails(2, "{lo} and {hi}");
    dir.migration(
        Sqlite,
        1,
        "bad",
        "-- flotilla:backfill table=t; key=id\nUPDATE t SET n = 1 WHERE id > {lo} AND id <= {hi};",
        "SELECT 1;",
    );
    cmd("up", &db, dir.path(), &[]).await.fails(2, "plain name");
    dir.migration(
        Sqlite,
        1,
        "bad",
        "-- flotilla:backfill table=t key=id batch=0\nUPDATE t SET n = 1 WHERE id > {lo} AND id <= {hi};",
        "SELECT 1;",
    );
    cmd("up", &db, dir.path(), &[]).await.fails(2, "positive integer");
    assert!(!db.has_table("flotilla_schema_history").await);

    // A cursor left by a run of another version of the file is refused, not resumed.
    dir.migration(
        Sqlite,
        1,
        "bad",
        "-- flotilla:backfill table=t key=id\nUPDATE t SET n = 1 WHERE id > {lo} AND id <= {hi};",
        "SELECT 1;",
    );
    cmd("up", &db, dir.path(), &["--dry-run"]).await.ok();
    db.exec("CREATE TABLE flotilla_backfill (version BIGINT NOT NULL, direction VARCHAR(8) NOT NULL, checksum VARCHAR(64) NOT NULL,
             last_key BIGINT NOT NULL, batches BIGINT NOT NULL, rows_done BIGINT NOT NULL, PRIMARY KEY (version, direction))").await;
    db.exec("INSERT INTO flotilla_backfill VALUES (1, 'up', 'somethingelse', 5, 1, 5)").await;
    cmd("up", &db, dir.path(), &[]).await.fails(4, "different version of its file");
}

#[tokio::test(flavor = "multi_thread")]
async fn expand_then_contract() {
    let db = TestDb::new(Sqlite).await;
    let dir = Dir::new();
    dir.migration(Sqlite, 1, "create", "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);", "DROP TABLE users;");
    dir.migration(
        Sqlite,
        2,
        "add_full_name",
        "-- flotilla:phase expand\nALTER TABLE users ADD COLUMN full_name TEXT;",
        "ALTER TABLE users DROP COLUMN full_name;",
    );
    dir.migration(
        Sqlite,
        3,
        "drop_name",
        "-- flotilla:phase contract\nALTER TABLE users DROP COLUMN name;",
        "ALTER TABLE users ADD COLUMN name TEXT;",
    );
    cmd("up", &db, dir.path(), &["--phase", "contract"]).await.fails(4, "finish expand first");
    assert!(db.history().await.is_empty());
    cmd("up", &db, dir.path(), &["--phase", "expand"]).await.ok();
    assert_eq!(versions(&db).await.len(), 2, "expand stops before the contract step");
    cmd("up", &db, dir.path(), &["--phase", "contract"]).await.ok();
    assert_eq!(versions(&db).await.len(), 3);
    cmd("up", &db, dir.path(), &["--phase", "sideways"]).await.fails(2, "not a phase");
}
