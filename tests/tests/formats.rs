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

/// A MongoDB script run command by command (an index on an existing collection) whose row changes carry their own
/// write concern: each row change commits in a transaction with its progress record, which may not carry one, so the
/// transaction's commit takes it. A write concern that is not a document is refused, naming the command, before
/// anything runs.
#[tokio::test(flavor = "multi_thread")]
async fn mongodb_row_changes_with_their_own_write_concern_apply() {
    let db = TestDb::new(Mongodb).await;
    let dir = Dir::mongo_stepwise(
        r#"{"insert": "runs", "documents": [{"_id": 1, "v": 1}], "writeConcern": {"w": "majority", "j": true}},
           {"update": "runs", "updates": [{"q": {}, "u": {"$set": {"v": 2}}}], "writeConcern": {"w": 1}}"#,
    );
    cmd("up", &db, dir.path(), &[]).await.ok();
    assert_eq!(
        db.history().await.iter().map(|(v, s, _)| (*v, s.as_str())).collect::<Vec<_>>(),
        [(1, "applied"), (2, "applied")]
    );
    assert_eq!(db.count("runs").await, 1);

    let db = TestDb::new(Mongodb).await;
    let bad = Dir::new();
    bad.file(
        "000001_runs.up.json",
        r#"[{"create": "runs2"}, {"insert": "runs2", "documents": [{"_id": 1}], "writeConcern": 5}]"#,
    )
    .file("000001_runs.down.json", r#"[{"drop": "runs2"}]"#);
    let run = cmd("up", &db, bad.path(), &[]).await;
    assert!(
        run.code != 0 && run.stderr.contains("command #2 (`insert`): `writeConcern` must be a document, not 5"),
        "{run:?}"
    );
    assert!(db.history().await.is_empty() && !db.has_table("runs2").await, "nothing ran");
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

/// The pop fixture round-trips on `engine`; then applied again, it is left for a look at what ran.
async fn pop_on(engine: Engine) -> TestDb {
    let expected =
        [(20240601120000, "create_widgets"), (20240602093000, "widget_search"), (20240603080000, "widget_prices")];
    round_trip("pop", engine, &[], &expected, "widget_prices").await;
    let db = TestDb::new(engine).await;
    cmd("up", &db, &fixture("pop"), &[]).await.ok();
    db
}

#[tokio::test(flavor = "multi_thread")]
async fn pop_on_postgres_takes_the_postgres_files() {
    let db = pop_on(Postgres).await;
    assert!(db.catalog().await.iter().any(|c| c.contains("widgets_lower_name")), "the .postgres. file ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn pop_on_mysql_takes_the_mysql_files() {
    let db = pop_on(Mysql).await;
    assert!(db.catalog().await.iter().any(|c| c.contains("widgets.widgets_name")), "the .mysql. file ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn pop_on_sqlite_runs_nothing_where_it_has_no_file() {
    // widget_search has files for postgres and mysql only: on SQLite it is a no-op, recorded like any other.
    let db = pop_on(Sqlite).await;
    assert!(!db.catalog().await.iter().any(|c| c.contains("widgets_lower_name") || c.contains("widgets_name")));
    assert_eq!(db.history().await.iter().map(|(_, s, _)| s.as_str()).collect::<Vec<_>>(), ["applied"; 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn prisma_on_postgres() {
    let expected = [(20240501083000, "init"), (20240502101500, "add_order_status")];
    round_trip("prisma", Postgres, &[], &expected, "Order").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn knex_raw_sql_on_mysql() {
    let expected = [(20240701090000, "create_tenants"), (20240702143000, "tenant_plans")];
    round_trip("knex", Mysql, &[], &expected, "tenant_plans").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn knex_with_the_schema_builder_is_refused_naming_the_line() {
    let dir = Dir::new();
    dir.file(
        "20240703000000_builder.js",
        "exports.up = function (knex) {\n  return knex.schema.createTable('x', (t) => t.increments());\n};\n",
    );
    let db = TestDb::new(Sqlite).await;
    cmd("up", &db, dir.path(), &[]).await.fails(2, "20240703000000_builder.js:2: only knex.raw");
    assert!(db.history().await.is_empty());
}

/// The `ledger` schema's tables, columns and indexes.
async fn ledger(db: &TestDb) -> Vec<String> {
    let mut conn = db.sql().await;
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable
           FROM information_schema.columns WHERE table_schema = 'ledger'
         UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'ledger'
         UNION ALL SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname = 'ledger'
         ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .expect("ledger");
    rows
}

/// The real sqitch deploys and reverts the same project; Flotilla's result must be the same schema.
fn sqitch(verb: &str, db: &TestDb) {
    let target = db.url.replacen("postgres://", "db:pg://", 1);
    succeeds(
        &format!("sqitch {verb}"),
        "sqitch runs (tests/servers.sh installs it)",
        std::process::Command::new("sqitch")
            .args(["--chdir", fixture("sqitch").to_str().expect("utf-8"), verb])
            .arg(if verb == "revert" { "-y" } else { "--verify" })
            .arg(&target),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqitch_on_postgres_matches_the_real_sqitch() {
    let expected = [(1, "ledger_schema"), (2, "accounts"), (3, "entries")];
    let db = TestDb::new(Postgres).await;
    let status = cmd("status", &db, &fixture("sqitch"), &["--json"]).await;
    let listed: Vec<(i64, String)> = status.ok().json()["migrations"]
        .as_array()
        .expect("migrations")
        .iter()
        .map(|m| (m["version"].as_i64().unwrap_or(-1), m["name"].as_str().unwrap_or("").to_string()))
        .collect();
    assert_eq!(listed, expected.iter().map(|(v, n)| (*v, n.to_string())).collect::<Vec<_>>());
    cmd("up", &db, &fixture("sqitch"), &[]).await.ok();

    let theirs = TestDb::new(Postgres).await;
    sqitch("deploy", &theirs);
    let ours = ledger(&db).await;
    assert!(ours.iter().any(|l| l.contains("entries_account")), "{ours:#?}");
    assert_eq!(ours, ledger(&theirs).await, "Flotilla and sqitch leave the same ledger schema");

    cmd("down", &db, &fixture("sqitch"), &["--all"]).await.ok();
    sqitch("revert", &theirs);
    assert!(ledger(&db).await.is_empty() && ledger(&theirs).await.is_empty(), "both revert everything");
}

/// Runs a real tool's command; it must succeed, or the test fails with what the tool said.
fn succeeds(what: &str, missing: &str, command: &mut std::process::Command) {
    let out = command.output().expect(missing);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what}: {stdout}\n{stderr}");
}

/// Runs the real Knex on `dir`'s migrations against `db`.
fn knex(verb: &str, dir: &std::path::Path, db: &TestDb) {
    let knexfile = dir.join("knexfile.cjs");
    let config = format!(
        "module.exports = {{ client: 'pg', connection: {:?}, migrations: {{ directory: {:?}, loadExtensions: ['.js'] }} }};",
        db.url,
        dir.join("migrations")
    );
    std::fs::write(&knexfile, config).expect("knexfile");
    let cli = std::path::PathBuf::from(knex_cli());
    // Knex looks for its local install beside the knexfile, as in a project of its own.
    let modules = cli.ancestors().nth(3).expect("node_modules/knex/bin/cli.js").to_path_buf();
    if !dir.join("node_modules").exists() {
        std::os::unix::fs::symlink(&modules, dir.join("node_modules")).expect("link node_modules");
    }
    succeeds(
        &format!("knex {verb}"),
        "node runs knex (tests/servers.sh installs it)",
        std::process::Command::new("node").arg(&cli).args([verb, "--knexfile", knexfile.to_str().expect("utf-8")]),
    );
}

fn without_knex_tables(catalog: Vec<String>) -> Vec<String> {
    catalog.into_iter().filter(|c| !c.contains("knex_migrations")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn knex_runs_what_flotilla_new_writes_and_so_does_flotilla() {
    let work = tempfile::tempdir().expect("dir");
    let migrations = work.path().join("migrations");
    std::fs::create_dir_all(&migrations).expect("dir");
    let made = flotilla(&[
        "--json",
        "new",
        "add tier to tenants",
        "--dir",
        migrations.to_str().unwrap(),
        "--engine",
        "postgres",
        "--style",
        "knex",
    ])
    .await;
    let file = made.ok().json()["files"][0].as_str().expect("file").to_string();
    assert!(file.ends_with("_add_tier_to_tenants.js"), "{file}");
    // The team fills in the template: here, the statements it suggests.
    fill_in(std::path::Path::new(&file));

    let (theirs, ours) = two_with_my_table().await;
    let before = ours.catalog().await;
    knex("migrate:latest", work.path(), &theirs);
    cmd("up", &ours, &migrations, &[]).await.ok();
    let applied = ours.catalog().await;
    assert!(applied.iter().any(|c| c.contains("my_table.my_column")), "{applied:#?}");
    assert_eq!(without_knex_tables(theirs.catalog().await), applied, "Knex and Flotilla apply the same change");

    knex("migrate:rollback", work.path(), &theirs);
    cmd("down", &ours, &migrations, &["--all"]).await.ok();
    assert_eq!(ours.catalog().await, before);
    assert_eq!(without_knex_tables(theirs.catalog().await), before, "and roll it back the same way");
}

/// Runs the real Liquibase on `project`'s master changelog against `db`.
fn liquibase(project: &std::path::Path, changelog: &str, args: &[&str], db: &TestDb) {
    let rest = db.url.strip_prefix("postgres://").expect("a PostgreSQL URL");
    let (user, rest) = rest.split_once('@').expect("user@host");
    succeeds(
        &format!("liquibase {args:?}"),
        "liquibase runs (tests/servers.sh installs it)",
        std::process::Command::new(liquibase_cli())
            .arg(format!("--search-path={}", project.display()))
            .args([&format!("--changelog-file={changelog}"), &format!("--url=jdbc:postgresql://{rest}")])
            .args([&format!("--username={user}"), "--password=", "--show-banner=false", "--log-level=severe"])
            .args(args),
    );
}

fn without_liquibase_tables(catalog: Vec<String>) -> Vec<String> {
    catalog.into_iter().filter(|c| !c.contains("databasechangelog")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn liquibase_formatted_sql_on_postgres_matches_the_real_liquibase() {
    let expected = [(1, "create-accounts"), (2, "accounts-owner-index"), (3, "create-transfers"), (4, "mysql-engine")];
    round_trip("liquibase", Postgres, &[], &expected, "transfers").await;

    let (theirs, ours) = (TestDb::new(Postgres).await, TestDb::new(Postgres).await);
    let before = ours.catalog().await;
    liquibase(&fixture("liquibase"), "changelog.xml", &["update"], &theirs);
    cmd("up", &ours, &fixture("liquibase"), &[]).await.ok();
    let applied = ours.catalog().await;
    assert!(applied.iter().any(|c| c.contains("accounts_owner")), "{applied:#?}");
    assert_eq!(without_liquibase_tables(theirs.catalog().await), applied, "Liquibase and Flotilla apply the same");

    // Liquibase skipped the dbms:mysql changeset; Flotilla recorded it as a no-op. Both roll everything back.
    liquibase(&fixture("liquibase"), "changelog.xml", &["rollback-count", "--count=3"], &theirs);
    cmd("down", &ours, &fixture("liquibase"), &["--all"]).await.ok();
    assert_eq!(ours.catalog().await, before);
    assert_eq!(without_liquibase_tables(theirs.catalog().await), before);
}

/// Runs the real Alembic on the project `config` names, against `db`.
fn alembic(config: &std::path::Path, args: &[&str], db: &TestDb) {
    succeeds(
        &format!("alembic {args:?}"),
        "alembic runs (tests/servers.sh installs it)",
        std::process::Command::new(alembic_cli())
            .arg("-c")
            .arg(config)
            .args(args)
            .env("ALEMBIC_DB_URL", db.url.replacen("postgres://", "postgresql+psycopg2://", 1)),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alembic_chain_imports_through_alembic_and_applies_as_alembic_would() {
    let work = tempfile::tempdir().expect("dir");
    let out = work.path().join("migrations");
    let (dir, out_arg, bin) = (fixture("alembic"), out.to_str().expect("utf-8").to_string(), alembic_cli());
    let run =
        flotilla(&["--json", "import", "alembic", dir.to_str().expect("utf-8"), "--out", &out_arg, "--alembic", &bin])
            .await;
    assert_eq!(run.ok().json()["files"].as_array().map(Vec::len), Some(6), "an UP and a DOWN per revision");
    flotilla(&["import", "alembic", dir.to_str().expect("utf-8"), "--out", &out_arg, "--alembic", &bin])
        .await
        .fails(2, "not empty");

    let (theirs, ours) = (TestDb::new(Postgres).await, TestDb::new(Postgres).await);
    let before = ours.catalog().await;
    let status = cmd("status", &ours, &out, &["--json"]).await;
    let names: Vec<String> = status.ok().json()["migrations"]
        .as_array()
        .expect("migrations")
        .iter()
        .map(|m| m["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["create_customers", "add_customer_tier", "create_orders"]);
    alembic(&fixture("alembic").join("alembic.ini"), &["upgrade", "head"], &theirs);
    cmd("up", &ours, &out, &[]).await.ok();
    let theirs_catalog: Vec<String> =
        theirs.catalog().await.into_iter().filter(|c| !c.contains("alembic_version")).collect();
    assert!(theirs_catalog.iter().any(|c| c.contains("customers_tier")), "{theirs_catalog:#?}");
    assert_eq!(ours.catalog().await, theirs_catalog, "the imported files do what Alembic does");

    alembic(&fixture("alembic").join("alembic.ini"), &["downgrade", "base"], &theirs);
    cmd("down", &ours, &out, &["--all"]).await.ok();
    assert_eq!(ours.catalog().await, before);
    assert_eq!(
        theirs.catalog().await.into_iter().filter(|c| !c.contains("alembic_version")).collect::<Vec<_>>(),
        before
    );
}

/// What a team does with a template: uncomments the statements it suggests (they work on `my_table`).
fn fill_in(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).expect("read");
    let filled: String = text
        .lines()
        .map(|l| {
            let indent = &l[..l.len() - l.trim_start().len()];
            let bare = l.trim_start();
            let (prefix, rest) = match bare.strip_prefix("--rollback ") {
                Some(rest) => ("--rollback ", rest),
                None => ("", bare),
            };
            match rest.strip_prefix("-- ") {
                Some(sql) if sql.starts_with("ALTER TABLE my_table") || sql.starts_with("UPDATE my_table") => {
                    format!("{indent}{prefix}{sql}")
                }
                _ => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(filled, text, "the template suggests statements: {text}");
    std::fs::write(path, filled + "\n").expect("write");
}

async fn two_with_my_table() -> (TestDb, TestDb) {
    let (theirs, ours) = (TestDb::new(Postgres).await, TestDb::new(Postgres).await);
    for db in [&theirs, &ours] {
        db.exec("CREATE TABLE my_table (id INT PRIMARY KEY)").await;
        db.exec("INSERT INTO my_table VALUES (1)").await;
    }
    (theirs, ours)
}

#[tokio::test(flavor = "multi_thread")]
async fn liquibase_runs_what_flotilla_new_writes_and_so_does_flotilla() {
    let work = tempfile::tempdir().expect("dir");
    let dir = work.path().to_str().expect("utf-8").to_string();
    let made =
        flotilla(&["--json", "new", "add tier", "--dir", &dir, "--engine", "postgres", "--style", "liquibase"]).await;
    let file = made.ok().json()["files"][0].as_str().expect("file").to_string();
    fill_in(std::path::Path::new(&file));
    let status = cmd("status", &TestDb::new(Postgres).await, work.path(), &["--json"]).await;
    assert_eq!(status.ok().json()["migrations"].as_array().map(Vec::len), Some(1), "read back as Liquibase");
    let name = std::path::Path::new(&file).file_name().and_then(|n| n.to_str()).expect("name").to_string();
    let master = std::fs::read_to_string(fixture("liquibase").join("changelog.xml"))
        .expect("the fixture's master changelog")
        .replace("001-accounts.sql", &name)
        .replace("    <include file=\"002-transfers.sql\" relativeToChangelogFile=\"true\"/>\n", "");
    std::fs::write(work.path().join("master.xml"), master).expect("master");

    let (theirs, ours) = two_with_my_table().await;
    let before = ours.catalog().await;
    let run = |args: &[&str], db: &TestDb| liquibase(work.path(), "master.xml", args, db);
    run(&["update"], &theirs);
    cmd("up", &ours, work.path(), &[]).await.ok();
    let applied = ours.catalog().await;
    assert!(applied.iter().any(|c| c.contains("my_table.my_column")), "{applied:#?}");
    assert_eq!(without_liquibase_tables(theirs.catalog().await), applied);
    run(&["rollback-count", "--count=1"], &theirs);
    cmd("down", &ours, work.path(), &["--all"]).await.ok();
    assert_eq!(ours.catalog().await, before);
    assert_eq!(without_liquibase_tables(theirs.catalog().await), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn alembic_runs_what_flotilla_new_writes_and_the_import_matches_it() {
    let work = tempfile::tempdir().expect("dir");
    for f in ["alembic.ini", "env.py"] {
        std::fs::copy(fixture("alembic").join(f), work.path().join(f)).expect("copy");
    }
    let dir = work.path().to_str().expect("utf-8").to_string();
    let first = flotilla(&["--json", "new", "add my column", "--dir", &dir, "--engine", "postgres"]).await;
    let first = first.ok().json()["files"][0].as_str().expect("file").to_string();
    fill_in(std::path::Path::new(&first));
    let second = flotilla(&["--json", "new", "index my column", "--dir", &dir, "--style", "alembic"]).await;
    let second = second.ok().json()["files"][0].as_str().expect("file").to_string();
    let head = std::fs::read_to_string(&first).expect("read");
    let first_id =
        head.lines().find_map(|l| l.strip_prefix("revision = ")).expect("revision").trim_matches('"').to_string();
    assert!(
        std::fs::read_to_string(&second).expect("read").contains(&format!("down_revision = \"{first_id}\"")),
        "the second follows the first"
    );
    std::fs::write(
        &second,
        std::fs::read_to_string(&second)
            .expect("read")
            .replace(
                "-- Safe shape for a new column",
                "CREATE INDEX my_table_my_column ON my_table (my_column);\n        -- Safe shape for a new column",
            )
            .replace("-- Reverses index my column exactly.", "DROP INDEX my_table_my_column;"),
    )
    .expect("write");

    let (theirs, ours) = two_with_my_table().await;
    let before = ours.catalog().await;
    let alembic_on = |args: &[&str], db: &TestDb| alembic(&work.path().join("alembic.ini"), args, db);
    alembic_on(&["upgrade", "head"], &theirs);
    let native = work.path().join("native");
    flotilla(&["import", "alembic", &dir, "--out", native.to_str().expect("utf-8"), "--alembic", &alembic_cli()])
        .await
        .ok();
    cmd("up", &ours, &native, &[]).await.ok();
    let theirs_catalog: Vec<String> =
        theirs.catalog().await.into_iter().filter(|c| !c.contains("alembic_version")).collect();
    assert!(theirs_catalog.iter().any(|c| c.contains("my_table_my_column")), "{theirs_catalog:#?}");
    assert_eq!(ours.catalog().await, theirs_catalog);
    alembic_on(&["downgrade", "base"], &theirs);
    cmd("down", &ours, &native, &["--all"]).await.ok();
    assert_eq!(ours.catalog().await, before);
}
