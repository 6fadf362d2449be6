//! Flyway repeatable migrations (`R__<name>.sql`): run after the versioned ones, again only when their checksum
//! changes, never rolled back; on real PostgreSQL, MariaDB and SQLite.

use flotilla_core::Engine;
use flotilla_tests::*;

mod postgres {
    #[tokio::test(flavor = "multi_thread")]
    async fn repeatables_run_after_versioned_ones_and_again_only_when_changed() {
        super::repeatables_run_after_versioned_ones_and_again_only_when_changed(flotilla_tests::Postgres).await
    }
}
mod mysql {
    #[tokio::test(flavor = "multi_thread")]
    async fn repeatables_run_after_versioned_ones_and_again_only_when_changed() {
        super::repeatables_run_after_versioned_ones_and_again_only_when_changed(flotilla_tests::Mysql).await
    }
}
mod sqlite {
    #[tokio::test(flavor = "multi_thread")]
    async fn repeatables_run_after_versioned_ones_and_again_only_when_changed() {
        super::repeatables_run_after_versioned_ones_and_again_only_when_changed(flotilla_tests::Sqlite).await
    }
}

/// A view over the versioned table, and a row that counts the runs.
fn view(engine: Engine, columns: &str) -> String {
    let replace = match engine {
        Engine::Sqlite => {
            format!("DROP VIEW IF EXISTS open_orders;\nCREATE VIEW open_orders AS SELECT {columns} FROM orders;")
        }
        _ => format!("CREATE OR REPLACE VIEW open_orders AS SELECT {columns} FROM orders;"),
    };
    format!("-- The view the reports read; Flyway style, re-created whenever it changes.\n{replace}\nINSERT INTO view_runs VALUES (1);\n")
}

async fn repeatables_run_after_versioned_ones_and_again_only_when_changed(engine: Engine) {
    let db = TestDb::new(engine).await;
    let dir = Dir::new();
    dir.file("V1__orders.sql", "CREATE TABLE orders (id INT PRIMARY KEY, total INT);\nCREATE TABLE view_runs (n INT);")
        .file("U1__orders.sql", "DROP TABLE view_runs;\nDROP TABLE orders;")
        .file("R__open_orders.sql", &view(engine, "id"));
    let status = cmd("status", &db, dir.path(), &["--json"]).await;
    assert_eq!(status.ok().json()["migrations"].as_array().map(Vec::len), Some(1), "a repeatable has no version");
    let repeatable = |db: &TestDb, dir: &Dir| {
        let (db, path) = (db.url.clone(), dir.path().to_path_buf());
        async move {
            let run = flotilla(&["--json", "status", "--db", &db, "--dir", path.to_str().expect("utf-8")]).await;
            run.ok().json()["repeatables"][0]["status"].as_str().unwrap_or("?").to_string()
        }
    };
    assert_eq!(repeatable(&db, &dir).await, "pending");

    let run = cmd("up", &db, dir.path(), &["--json"]).await;
    assert_eq!(run.ok().json()["repeatables"], serde_json::json!(["open_orders"]), "{run:?}");
    assert_eq!(db.count("view_runs").await, 1, "it ran after V1 created its table");
    assert_eq!(repeatable(&db, &dir).await, "applied");
    assert!(db.has_table("flotilla_repeatable").await);

    let again = cmd("up", &db, dir.path(), &["--json"]).await;
    assert_eq!(again.ok().json()["repeatables"], serde_json::json!([]), "unchanged: not run again");
    assert_eq!(db.count("view_runs").await, 1);

    dir.file("R__open_orders.sql", &view(engine, "id, total"));
    assert_eq!(repeatable(&db, &dir).await, "changed");
    let dry = cmd("up", &db, dir.path(), &["--json", "--dry-run"]).await;
    assert_eq!(dry.ok().json()["repeatables"], serde_json::json!(["open_orders"]), "a dry run says it would run");
    assert_eq!(db.count("view_runs").await, 1, "and runs nothing");
    cmd("up", &db, dir.path(), &[]).await.ok();
    assert_eq!(db.count("view_runs").await, 2, "changed: run again");
    assert_eq!(versions(&db.history().await), ["1 applied"], "repeatables are not in the versioned history");

    // A repeatable that fails leaves its checksum unrecorded: the next run tries it again.
    dir.file("R__open_orders.sql", "INSERT INTO no_such_table VALUES (1);");
    cmd("up", &db, dir.path(), &[]).await.fails(1, "repeatable migration R__open_orders failed");
    cmd("up", &db, dir.path(), &[]).await.fails(1, "R__open_orders");
}

fn versions(history: &[(u128, String, i64)]) -> Vec<String> {
    history.iter().map(|(v, s, _)| format!("{v} {s}")).collect()
}
