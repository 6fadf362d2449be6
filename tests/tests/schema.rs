//! `schema dump` is deterministic and round-trips on every engine; `validate` catches DOWNs that do not reverse.

use flotilla_core::Engine;
use flotilla_tests::*;

/// A schema with most of what each engine has, built without Flotilla.
fn rich(engine: Engine) -> Vec<&'static str> {
    match engine {
        Postgres => vec![
            "CREATE SCHEMA billing",
            "CREATE TYPE mood AS ENUM ('happy', 'sad')",
            "CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0)",
            "CREATE SEQUENCE invoice_numbers START WITH 1000 INCREMENT BY 10",
            "CREATE TABLE customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL UNIQUE,
                mood mood DEFAULT 'happy', score positive_int, email_upper text GENERATED ALWAYS AS (upper(email)) STORED,
                CHECK (email <> ''))",
            "CREATE TABLE billing.invoices (id serial PRIMARY KEY, customer_id bigint REFERENCES customers (id) ON DELETE CASCADE,
                number int DEFAULT nextval('invoice_numbers'), total numeric(12,2) NOT NULL DEFAULT 0, period tstzrange,
                EXCLUDE USING gist (period WITH &&))",
            "CREATE INDEX invoices_open ON billing.invoices (customer_id) WHERE total > 0",
            "CREATE INDEX customers_lower_email ON customers (lower(email))",
            "CREATE VIEW big_invoices AS SELECT id, total FROM billing.invoices WHERE total > 100",
            "CREATE MATERIALIZED VIEW customer_totals AS SELECT customer_id, sum(total) AS total FROM billing.invoices GROUP BY 1",
            "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
            "CREATE TRIGGER customers_touch BEFORE UPDATE ON customers FOR EACH ROW EXECUTE FUNCTION touch()",
            "COMMENT ON TABLE customers IS 'People who buy'",
            "COMMENT ON COLUMN customers.email IS 'Login; unique'",
        ],
        Mysql => vec![
            "CREATE TABLE authors (id INT AUTO_INCREMENT PRIMARY KEY,
                name VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, bio TEXT,
                UNIQUE KEY authors_name (name)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            "CREATE TABLE books (id INT AUTO_INCREMENT PRIMARY KEY, author_id INT NOT NULL, title VARCHAR(200) NOT NULL,
                price DECIMAL(8,2) DEFAULT 0.00, CONSTRAINT books_price CHECK (price >= 0), KEY books_title (title(20)),
                CONSTRAINT books_author FOREIGN KEY (author_id) REFERENCES authors (id) ON DELETE CASCADE) ENGINE=InnoDB",
            "INSERT INTO authors (name) VALUES ('bumps AUTO_INCREMENT, which is data, not schema')",
            "CREATE VIEW cheap_books AS SELECT id, title FROM books WHERE price < 10",
            "CREATE TRIGGER books_price_guard BEFORE INSERT ON books FOR EACH ROW BEGIN IF NEW.price < 0 THEN SET NEW.price = 0; END IF; END",
        ],
        Sqlite => vec![
            "CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, born INTEGER CHECK (born > 0))",
            "CREATE TABLE books (id INTEGER PRIMARY KEY, author_id INTEGER NOT NULL REFERENCES authors (id), title TEXT NOT NULL DEFAULT 'untitled')",
            "CREATE INDEX books_author ON books (author_id)",
            "CREATE INDEX books_untitled ON books (title) WHERE title = 'untitled'",
            "CREATE VIEW prolific AS SELECT author_id, count(*) AS n FROM books GROUP BY author_id",
            "CREATE TRIGGER books_touch AFTER INSERT ON books BEGIN UPDATE authors SET born = born WHERE id = NEW.author_id; END",
        ],
        Mongodb => vec![
            r#"{"create": "events", "validator": {"$jsonSchema": {"bsonType": "object", "required": ["kind"]}}, "validationLevel": "moderate"}"#,
            r#"{"create": "log", "capped": true, "size": 1048576}"#,
            r#"{"createIndexes": "events", "indexes": [{"key": {"kind": 1, "at": -1}, "name": "kind_at"},
                {"key": {"dedupe": 1}, "name": "dedupe", "unique": true, "partialFilterExpression": {"dedupe": {"$exists": true}}},
                {"key": {"at": 1}, "name": "expire", "expireAfterSeconds": 3600}]}"#,
            r#"{"create": "recent_events", "viewOn": "events", "pipeline": [{"$match": {"kind": "signup"}}]}"#,
        ],
    }
}

on_every_engine!(dump_is_deterministic_and_round_trips, validate_passes_a_good_set);

async fn dump(db: &TestDb, format: &str) -> String {
    flotilla(&["schema", "dump", "--db", &db.url, "--format", format]).await.ok().stdout.clone()
}

async fn dump_is_deterministic_and_round_trips(engine: Engine) {
    let source = TestDb::new(engine).await;
    for statement in rich(engine) {
        source.exec(statement).await;
    }
    let first = dump(&source, "json").await;
    assert_eq!(first, dump(&source, "json").await, "the same database gives byte-identical dumps");
    let sql = dump(&source, "sql").await;
    assert_eq!(sql, dump(&source, "sql").await);
    assert!(first.len() > 500, "the rich schema is in the dump: {first}");

    // The `sql` dump is a baseline migration: applied by Flotilla to an empty database, it gives the same model.
    let copy = TestDb::new(engine).await;
    let dir = Dir::new();
    match engine {
        Mongodb => dir.file("1_baseline.up.json", &sql).file("1_baseline.down.json", r#"[{"drop": "events"}]"#),
        _ => dir.file("1_baseline.up.sql", &sql).file("1_baseline.down.sql", "SELECT 1;"),
    };
    cmd("up", &copy, dir.path(), &[]).await.ok();
    let again = dump(&copy, "json").await;
    if again != first {
        let a = source.url.clone();
        let diff = flotilla(&["schema", "diff", &a, &copy.url]).await;
        panic!("round trip changed the model:\n{}", diff.stdout);
    }

    if engine == Postgres {
        assert!(sql.contains("ALTER SEQUENCE billing.invoices_id_seq OWNED BY billing.invoices.id"), "{sql}");
    }

    // diff: the same → exit 0; a change → exit 1 naming it.
    let file = Dir::new();
    file.file("a.json", &first);
    let a_path = file.path().join("a.json");
    flotilla(&["schema", "diff", a_path.to_str().unwrap_or_default(), &copy.url]).await.ok();
    let change = match engine {
        Postgres => "ALTER TABLE customers ADD COLUMN nickname text",
        Mysql => "ALTER TABLE authors ADD COLUMN nickname VARCHAR(20)",
        Sqlite => "ALTER TABLE authors ADD COLUMN nickname TEXT",
        Mongodb => r#"{"createIndexes": "events", "indexes": [{"key": {"nickname": 1}, "name": "nickname"}]}"#,
    };
    copy.exec(change).await;
    let differs = flotilla(&["schema", "diff", a_path.to_str().unwrap_or_default(), &copy.url]).await;
    differs.fails(1, "nickname");
    flotilla(&["schema", "diff", "/nonexistent.json", &copy.url]).await.fails(2, "cannot read");
    if engine == Postgres {
        // Ownership survived the round trip: a dropped table takes its serial's sequence along.
        copy.exec("DROP TABLE billing.invoices CASCADE").await;
        assert!(!copy.catalog().await.iter().any(|c| c.contains("invoices_id_seq")));
        assert!(!dump(&copy, "json").await.contains("invoices_id_seq"), "no sequence is left behind");
    }
}

async fn validate_passes_a_good_set(engine: Engine) {
    let db = TestDb::new(engine).await;
    let dir = Dir::new();
    let (up, down) = sql::create_table(engine, "a");
    dir.migration(engine, 1, "create_a", &up, &down);
    let (up, down) = sql::create_table(engine, "b");
    dir.migration(engine, 2, "create_b", &up, &down);
    let run = cmd(
        "validate",
        &db,
        dir.path(),
        &["--test-cmd", "test -n \"$FLOTILLA_DB_URL\" && test \"$FLOTILLA_VALIDATE_VERSION\" -ge 1"],
    )
    .await;
    assert!(run.ok().stdout.contains("ok    2 create_b"), "{run:?}");
    assert_eq!(db.history().await.len(), 2, "validate leaves the migrations applied");
    let failing = Dir::new();
    let (up, down) = sql::create_table(engine, "c");
    failing.migration(engine, 1, "create_c", &up, &down);
    let db2 = TestDb::new(engine).await;
    cmd("validate", &db2, failing.path(), &["--test-cmd", "exit 3"]).await.fails(4, "test command failed after UP");
}

/// The three DOWN mistakes `validate` must catch, on each SQL engine.
async fn catches(engine: Engine) {
    let table = |db: &TestDb| {
        let dir = Dir::new();
        let (up, down) = sql::create_table(engine, "a");
        dir.migration(engine, 1, "create_a", &up, &down);
        let _ = db;
        dir
    };

    // A DOWN that forgets to drop an index.
    let db = TestDb::new(engine).await;
    let dir = table(&db);
    dir.migration(engine, 2, "index_a", "CREATE INDEX a_extra ON a (id, v);", "SELECT 1;");
    let run = cmd("validate", &db, dir.path(), &[]).await;
    run.fails(4, "after DOWN the schema is not what it was before the UP");
    assert!(run.stdout.contains("a_extra"), "the report names the index: {run:?}");

    // A DOWN that drops a column its UP never added.
    let db = TestDb::new(engine).await;
    let dir = table(&db);
    dir.migration(
        engine,
        2,
        "add_extra",
        "ALTER TABLE a ADD COLUMN extra INT;",
        "ALTER TABLE a DROP COLUMN extra;\nALTER TABLE a DROP COLUMN v;",
    );
    let run = cmd("validate", &db, dir.path(), &[]).await;
    // PostgreSQL and MySQL drop the column (the schema then differs); SQLite refuses because an index uses it.
    run.fails(4, "FAIL  2 add_extra");
    assert!(
        ["column v", "column `v`", "no such column: v"].iter().any(|n| run.stdout.contains(n)),
        "names column v: {run:?}"
    );

    // An UP that fails on re-apply after its DOWN.
    let db = TestDb::new(engine).await;
    let dir = table(&db);
    dir.migration(engine, 2, "create_b", "CREATE TABLE b (id INT);", "SELECT 1;");
    let run = cmd("validate", &db, dir.path(), &[]).await;
    run.fails(4, "failed when re-applied after its DOWN");
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_catches_bad_downs_on_postgres() {
    catches(Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_catches_bad_downs_on_mysql() {
    catches(Mysql).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_catches_bad_downs_on_sqlite() {
    catches(Sqlite).await;
}

/// One validate run lists every problem: it goes on past a DOWN that fails without committing, and says what kind
/// each difference is (structure fails; column order and literal timestamps are notes).
#[tokio::test(flavor = "multi_thread")]
async fn validate_goes_on_past_a_failing_down_and_classes_what_differs() {
    let db = TestDb::new(Postgres).await;
    let dir = Dir::new();
    dir.migration(Postgres, 1, "create_a", "CREATE TABLE a (id INT PRIMARY KEY, b TEXT, c TEXT);", "DROP TABLE a;");
    // A DOWN in syntax the server does not have: it fails, and nothing of it commits.
    dir.migration(
        Postgres,
        2,
        "add_d",
        "ALTER TABLE a ADD COLUMN d INT;",
        "ALTER TABLE a DROP COLUMN d RESTRICT NONSENSE;",
    );
    dir.migration(
        Postgres,
        3,
        "seen_view",
        "CREATE VIEW seen AS SELECT id, 'now'::timestamp AS at FROM a;",
        "DROP VIEW seen;",
    );
    dir.migration(Postgres, 4, "drop_b", "ALTER TABLE a DROP COLUMN b;", "ALTER TABLE a ADD COLUMN b TEXT;");
    dir.migration(Postgres, 5, "index_c", "CREATE INDEX IF NOT EXISTS a_c ON a (c);", "SELECT 1;");
    let run = cmd("validate", &db, dir.path(), &["--json"]).await;
    assert_eq!(run.code, 4, "real mismatches still fail: {run:?}");
    let report = &run.json()["report"];
    assert!(report["stopped"].is_null(), "{report:#}");
    let checks = report["migrations"].as_array().expect("migrations");
    assert_eq!(checks.len(), 5, "every migration after the failing DOWN is validated too: {report:#}");
    let text = |i: usize, key: &str| checks[i][key].to_string();
    assert!(text(1, "problems").contains("DOWN of 2 failed (nothing of it committed)"), "{report:#}");
    assert_eq!(checks[2]["problems"].as_array().map(Vec::len), Some(0), "{report:#}");
    assert!(text(2, "notes").contains("non-deterministic UP"), "{report:#}");
    assert_eq!(checks[3]["problems"].as_array().map(Vec::len), Some(0), "{report:#}");
    assert!(text(3, "notes").contains("column order only"), "{report:#}");
    assert!(text(4, "problems").contains("a_c") && text(4, "problems").contains("structure"), "{report:#}");
}
