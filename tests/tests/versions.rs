//! Versions as teams write them: a timestamp with a six-digit sequence (20 digits, past 64 bits), files that hold
//! no statement for an engine (explicit no-ops), and history tables written by the release before 38-digit versions,
//! upgraded in place. On real PostgreSQL, MariaDB, SQLite (and MongoDB for the first).

use flotilla_core::Engine;
use flotilla_tests::sql::create_table;
use flotilla_tests::*;

on_every_engine!(twenty_digit_versions_and_empty_files_apply_and_roll_back);

mod sql_engines {
    macro_rules! on_sql_engines {
        ($($test:ident),* $(,)?) => {
            mod postgres { $( #[tokio::test(flavor = "multi_thread")] async fn $test() { super::super::$test(flotilla_tests::Postgres).await } )* }
            mod mysql { $( #[tokio::test(flavor = "multi_thread")] async fn $test() { super::super::$test(flotilla_tests::Mysql).await } )* }
            mod sqlite { $( #[tokio::test(flavor = "multi_thread")] async fn $test() { super::super::$test(flotilla_tests::Sqlite).await } )* }
        };
    }
    on_sql_engines!(a_history_table_from_the_last_release_upgrades_in_place_and_keeps_every_row);
}

const FIRST: &str = "20240115093000000001";
const NOOP: &str = "20240115093000000002";
const LAST: &str = "20240115093000000010";

fn ext(engine: Engine) -> &'static str {
    if engine == Engine::Mongodb {
        "json"
    } else {
        "sql"
    }
}

/// Three migrations with 20-digit versions; the middle one has nothing to do on this engine (an empty UP holding
/// a comment, an empty DOWN).
fn twenty_digit_set(engine: Engine) -> Dir {
    let dir = Dir::new();
    let ext = ext(engine);
    let (up, down) = create_table(engine, "a");
    dir.file(&format!("{FIRST}_create_a.up.{ext}"), &up).file(&format!("{FIRST}_create_a.down.{ext}"), &down);
    let nothing = if engine == Engine::Mongodb { "[]" } else { "-- only the MySQL shards need this one\n" };
    dir.file(&format!("{NOOP}_mysql_only.up.{ext}"), nothing).file(&format!("{NOOP}_mysql_only.down.{ext}"), "");
    let (up, down) = create_table(engine, "b");
    dir.file(&format!("{LAST}_create_b.up.{ext}"), &up).file(&format!("{LAST}_create_b.down.{ext}"), &down);
    dir
}

fn versions(history: &[(u128, String, i64)]) -> Vec<String> {
    history.iter().map(|(v, s, _)| format!("{v} {s}")).collect()
}

async fn twenty_digit_versions_and_empty_files_apply_and_roll_back(engine: Engine) {
    let db = TestDb::new(engine).await;
    let dir = twenty_digit_set(engine);
    let before = db.catalog().await;

    let status = cmd("status", &db, dir.path(), &["--json"]).await;
    let listed: Vec<String> = status.ok().json()["migrations"]
        .as_array()
        .expect("migrations")
        .iter()
        .map(|m| m["version"].as_str().map(str::to_string).unwrap_or_else(|| m["version"].to_string()))
        .collect();
    assert_eq!(listed, [FIRST, NOOP, LAST], "every version read without loss, ordered as numbers");

    cmd("up", &db, dir.path(), &["--to", NOOP]).await.ok();
    let applied = |v: &str| format!("{v} applied");
    assert_eq!(versions(&db.history().await), [applied(FIRST), applied(NOOP)], "the no-op is recorded like any other");
    cmd("up", &db, dir.path(), &[]).await.ok();
    assert_eq!(versions(&db.history().await), [applied(FIRST), applied(NOOP), applied(LAST)]);
    assert!(db.has_table("a").await && db.has_table("b").await);
    assert!(!db.has_table("flotilla_backfill").await, "no backfill ran: no backfill table in the target");

    cmd("down", &db, dir.path(), &["--to", FIRST]).await.ok();
    assert_eq!(versions(&db.history().await), [applied(FIRST)], "down through the empty DOWN");
    cmd("down", &db, dir.path(), &["--all"]).await.ok();
    assert!(db.history().await.is_empty());
    assert_eq!(db.catalog().await, before, "the schema is back");
    cmd("up", &db, dir.path(), &["--to", "20240115093000000003"]).await.fails(2, "20240115093000000003");
}

/// The history table as the release before 38-digit versions created it.
fn old_history_table(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => {
            "CREATE TABLE flotilla_schema_history (
            version BIGINT PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, state TEXT NOT NULL, direction TEXT,
            statements_done BIGINT NOT NULL DEFAULT 0, statements_total BIGINT NOT NULL DEFAULT 0, error TEXT,
            applied_at TIMESTAMPTZ NOT NULL, duration_ms BIGINT NOT NULL, applied_by TEXT NOT NULL, plan_id TEXT)"
        }
        Engine::Mysql => {
            "CREATE TABLE flotilla_schema_history (
            version BIGINT NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, checksum CHAR(64) NOT NULL,
            state VARCHAR(16) NOT NULL, direction VARCHAR(8) NULL, statements_done BIGINT NOT NULL DEFAULT 0,
            statements_total BIGINT NOT NULL DEFAULT 0, error TEXT NULL, applied_at DATETIME(6) NOT NULL,
            duration_ms BIGINT NOT NULL, applied_by VARCHAR(255) NOT NULL, plan_id VARCHAR(64) NULL) ENGINE=InnoDB"
        }
        _ => {
            "CREATE TABLE flotilla_schema_history (
            version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, state TEXT NOT NULL, direction TEXT,
            statements_done INTEGER NOT NULL DEFAULT 0, statements_total INTEGER NOT NULL DEFAULT 0, error TEXT,
            applied_at TEXT NOT NULL, duration_ms INTEGER NOT NULL, applied_by TEXT NOT NULL, plan_id TEXT)"
        }
    }
}

/// The version column's type, as the engine names it.
async fn version_column(db: &TestDb) -> String {
    let query = match db.engine {
        Engine::Postgres => {
            "SELECT data_type::text FROM information_schema.columns
             WHERE table_name = 'flotilla_schema_history' AND column_name = 'version'"
        }
        Engine::Mysql => {
            "SELECT CAST(data_type AS CHAR) FROM information_schema.columns
             WHERE table_schema = DATABASE() AND table_name = 'flotilla_schema_history' AND column_name = 'version'"
        }
        _ => "SELECT type FROM pragma_table_info('flotilla_schema_history') WHERE name = 'version'",
    };
    let mut conn = db.sql().await;
    let kind: String = sqlx::query_scalar(query).fetch_one(&mut conn).await.expect("column type");
    kind.to_lowercase()
}

async fn a_history_table_from_the_last_release_upgrades_in_place_and_keeps_every_row(engine: Engine) {
    let db = TestDb::new(engine).await;
    let dir = Dir::new();
    let (up, down) = create_table(engine, "a");
    dir.migration(engine, 1, "create_a", &up, &down);
    let (up, down) = create_table(engine, "b");
    dir.migration(engine, 2, "create_b", &up, &down);
    cmd("up", &db, dir.path(), &[]).await.ok();

    // Put the rows into a table laid out as the last release wrote it.
    db.exec("CREATE TABLE kept_history AS SELECT * FROM flotilla_schema_history").await;
    db.exec("DROP TABLE flotilla_schema_history").await;
    db.exec(old_history_table(engine)).await;
    let cast = if engine == Engine::Sqlite { "CAST(version AS INTEGER)" } else { "CAST(version AS BIGINT)" };
    let cast = if engine == Engine::Mysql { "CAST(version AS SIGNED)" } else { cast };
    db.exec(&format!(
        "INSERT INTO flotilla_schema_history SELECT {cast}, name, checksum, state, direction, statements_done,
         statements_total, error, applied_at, duration_ms, applied_by, plan_id FROM kept_history"
    ))
    .await;
    db.exec("DROP TABLE kept_history").await;
    let old_type = version_column(&db).await;
    assert!(["bigint", "integer"].contains(&old_type.as_str()), "the old layout: {old_type}");
    let rows_before = db.history().await;

    // The next migration has a 20-digit version: the table must hold it.
    let (up, down) = create_table(engine, "c");
    dir.file(&format!("{FIRST}_create_c.up.sql"), &up).file(&format!("{FIRST}_create_c.down.sql"), &down);
    let status = cmd("status", &db, dir.path(), &["--json"]).await;
    assert_eq!(
        status.ok().json()["migrations"].as_array().map(|m| m.iter().filter(|m| m["status"] == "applied").count()),
        Some(2),
        "the old table reads as it is: nothing changed by reading"
    );
    assert_eq!(version_column(&db).await, old_type, "status does not write");

    cmd("up", &db, dir.path(), &[]).await.ok();
    let new_type = version_column(&db).await;
    assert!(["numeric", "decimal", "text"].contains(&new_type.as_str()), "upgraded in place: {new_type}");
    let mut expected = rows_before.clone();
    expected.push((FIRST.parse().expect("version"), "applied".into(), 0));
    let after: Vec<(u128, String)> = db.history().await.into_iter().map(|(v, s, _)| (v, s)).collect();
    let expected: Vec<(u128, String)> = expected.into_iter().map(|(v, s, _)| (v, s)).collect();
    assert_eq!(after, expected, "every row kept, the new one added");
    let status = cmd("status", &db, dir.path(), &["--json"]).await;
    let statuses: Vec<String> = status.ok().json()["migrations"]
        .as_array()
        .expect("migrations")
        .iter()
        .map(|m| m["status"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(statuses, ["applied"; 3], "checksums and names survive the upgrade");
    cmd("down", &db, dir.path(), &["--all"]).await.ok();
    assert!(db.history().await.is_empty());
}
