//! Every reader format reads a realistic directory of its style, and that directory applies and rolls back cleanly on
//! a real engine the convention is used with.

use std::path::PathBuf;

use flotilla_core::Engine;
use flotilla_tests::*;

fn fixture(name: &str) -> PathBuf {
    manifest_dir().join("fixtures").join(name)
}

/// Reads `name` through `flotilla status`, checks versions and names, then applies it, checks `probe` (a table that
/// must exist afterwards), and rolls everything back to the original catalog.
async fn round_trip(name: &str, engine: Engine, extra: &[&str], expected: &[(i64, &str)], probe: &str) {
    let db = TestDb::new(engine).await;
    let dir = fixture(name);
    let before = db.catalog().await;

    let status = cmd("status", &db, &dir, &[&["--json"], extra].concat()).await;
    let listed: Vec<(i64, String)> = status.ok().json()["migrations"]
        .as_array()
        .expect("migrations")
        .iter()
        .map(|m| (m["version"].as_i64().unwrap_or(-1), m["name"].as_str().unwrap_or("").to_string()))
        .collect();
    let expected: Vec<(i64, String)> = expected.iter().map(|(v, n)| (*v, n.to_string())).collect();
    assert_eq!(listed, expected, "{name} reads into the right versions and names");

    cmd("up", &db, &dir, extra).await.ok();
    assert_eq!(db.history().await.len(), expected.len());
    assert!(db.has_table(probe).await, "{name}: {probe} exists after up");
    if extra.contains(&"--allow-missing-down") {
        cmd("down", &db, &dir, &[&["--all"], extra].concat()).await.fails(4, "has no DOWN");
        return;
    }
    cmd("down", &db, &dir, &["--all"]).await.ok();
    assert!(db.history().await.is_empty());
    assert_eq!(db.catalog().await, before, "{name}: rolling back restores the catalog");
}

#[tokio::test(flavor = "multi_thread")]
async fn flyway_on_postgres() {
    let expected = [(1, "create_accounts"), (2, "accounts_email_index"), (3, "audit_trigger")];
    round_trip("flyway", Postgres, &[], &expected, "account_audit").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dbmate_on_sqlite() {
    let expected =
        [(20240105120000, "create_users"), (20240106090000, "touch_trigger"), (20240107090000, "users_by_domain")];
    round_trip("dbmate", Sqlite, &[], &expected, "users").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn diesel_on_postgres() {
    let expected =
        [(0, "diesel_initial_setup"), (20240110120000, "create_posts"), (20240111090000, "posts_published_index")];
    round_trip("diesel", Postgres, &[], &expected, "posts").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn golang_migrate_on_mysql() {
    let expected = [(1, "create_products"), (2, "price_history_trigger"), (3, "products_name_index")];
    round_trip("golang-migrate", Mysql, &[], &expected, "price_history").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlx_reversible_on_sqlite() {
    round_trip("sqlx", Sqlite, &[], &[(20240201000000, "create_todos"), (20240202000000, "todos_done_index")], "todos")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlx_simple_up_only_on_sqlite() {
    let db = TestDb::new(Sqlite).await;
    cmd("up", &db, &fixture("sqlx-simple"), &[]).await.fails(2, "--allow-missing-down");
    assert!(db.history().await.is_empty());
    round_trip(
        "sqlx-simple",
        Sqlite,
        &["--allow-missing-down"],
        &[(20240301000000, "create_notes"), (20240302000000, "add_pinned")],
        "notes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mongo_json_on_mongodb() {
    let expected =
        [(20240401000000, "create_events"), (20240402000000, "require_source"), (20240403000000, "rename_events")];
    round_trip("mongo", Mongodb, &[], &expected, "activity").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_trigger_and_validator_really_work() {
    // The MySQL trigger split out of its DELIMITER block fires.
    let db = TestDb::new(Mysql).await;
    cmd("up", &db, &fixture("golang-migrate"), &[]).await.ok();
    db.exec("UPDATE products SET price_cents = 250 WHERE sku = 'A-1'").await;
    assert_eq!(db.count("price_history").await, 1);

    // The PostgreSQL trigger function with a dollar-quoted body fires.
    let db = TestDb::new(Postgres).await;
    cmd("up", &db, &fixture("flyway"), &[]).await.ok();
    db.exec("INSERT INTO accounts (name) VALUES ('old')").await;
    db.exec("UPDATE accounts SET name = 'new'").await;
    assert_eq!(db.count("account_audit").await, 1);

    // The MongoDB validator set by collMod rejects a document without `source`.
    let db = TestDb::new(Mongodb).await;
    cmd("up", &db, &fixture("mongo"), &["--to", "20240402000000"]).await.ok();
    let events = db.mongo().await.collection::<bson::Document>("events");
    let rejected = events.insert_one(bson::doc! { "kind": "x", "at": bson::DateTime::now() }).await;
    assert!(rejected.is_err(), "the validator requires `source`");
}
