//! `flotilla lint` over a corpus of 44 migrations (PostgreSQL, MySQL, SQLite) with expected findings: the well-written
//! half yields no finding at all, each of the others exactly the rules it breaks. The corpus is real SQL: it applies.

use std::collections::BTreeSet;
use std::path::PathBuf;

use flotilla_core::Engine;
use flotilla_tests::*;

fn corpus(engine: Engine) -> PathBuf {
    manifest_dir().join("fixtures/lint").join(engine.as_str())
}

async fn corpus_matches_expectations(engine: Engine) {
    let dir = corpus(engine);
    let expected: toml::Table =
        std::fs::read_to_string(dir.join("expected.toml")).expect("expected.toml").parse().expect("toml");
    let run = flotilla(&["lint", "--dir", dir.to_str().expect("utf-8"), "--engine", engine.as_str(), "--json"]).await;
    assert_eq!(run.code, 6, "the corpus holds errors, so lint exits 6: {run:?}");
    let report = run.json();
    let migrations = report["migrations"].as_array().expect("migrations");
    assert_eq!(migrations.len(), expected["findings"].as_table().expect("findings").len());
    let mut clean = 0;
    for m in migrations {
        let version = m["version"].as_i64().expect("version").to_string();
        let found: BTreeSet<String> = m["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .map(|f| f["rule"].as_str().unwrap_or("").to_string())
            .collect();
        let want: BTreeSet<String> = expected["findings"][&version]
            .as_array()
            .expect("expected rules")
            .iter()
            .map(|r| r.as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(found, want, "{engine} migration {version} {}: {m}", m["name"]);
        assert_eq!(m["class"].as_str(), expected["class"][&version].as_str(), "{engine} migration {version} class");
        if want.is_empty() {
            clean += 1;
        }
    }
    assert!(clean * 2 >= migrations.len(), "half the corpus or more is written well: {clean}");

    // The corpus is real SQL for its engine.
    let db = TestDb::new(engine).await;
    cmd("up", &db, &dir, &["--allow-missing-down"]).await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_corpus() {
    corpus_matches_expectations(Postgres).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_corpus() {
    corpus_matches_expectations(Mysql).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_corpus() {
    corpus_matches_expectations(Sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_are_allowed_and_denied_per_migration_and_per_project() {
    let dir = Dir::new();
    dir.migration(Postgres, 1, "a", "CREATE TABLE IF NOT EXISTS a (id bigint);", "DROP TABLE IF EXISTS a;");
    let d = dir.path().to_str().expect("utf-8");
    let lint = |extra: &'static [&'static str]| {
        let d = d.to_string();
        async move { flotilla(&[&["lint", "--dir", &d, "--json"][..], extra].concat()).await }
    };
    let rules = |run: &Run| -> Vec<(String, String)> {
        run.json()["migrations"][0]["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .map(|f| (f["rule"].as_str().unwrap_or("").into(), f["severity"].as_str().unwrap_or("").into()))
            .collect()
    };
    let run = lint(&[]).await;
    assert_eq!(run.code, 5, "{run:?}");
    assert_eq!(
        rules(&run),
        [("no-reason-comment".into(), "warning".into()), ("no-explicit-transaction".into(), "info".into())]
    );

    // Per migration: allow one rule.
    dir.migration(
        Postgres,
        1,
        "a",
        "-- flotilla:allow no-reason-comment\nCREATE TABLE IF NOT EXISTS a (id bigint);",
        "DROP TABLE IF EXISTS a;",
    );
    let run = lint(&[]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(rules(&run), [("no-explicit-transaction".into(), "info".into())]);

    // Per project: deny turns a note into an error.
    dir.file("flotilla-lint.toml", "deny = [\"no-explicit-transaction\"]\n");
    let run = lint(&[]).await;
    assert_eq!(run.code, 6, "{run:?}");
    assert_eq!(rules(&run), [("no-explicit-transaction".into(), "error".into())]);

    // Bad switches are bad input.
    dir.file("flotilla-lint.toml", "deny = [\"no-such-rule\"]\n");
    lint(&[]).await.fails(2, "unknown rule `no-such-rule`");
    dir.file("flotilla-lint.toml", "");
    dir.migration(
        Postgres,
        1,
        "a",
        "-- flotilla:allow made-up\nCREATE TABLE IF NOT EXISTS a (id bigint);",
        "DROP TABLE IF EXISTS a;",
    );
    lint(&[]).await.fails(2, "unknown lint rule `made-up`");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_down_is_named_and_a_missing_one_is_an_error() {
    let dir = Dir::new();
    dir.file(
        "000001_seed.up.sql",
        "-- Why: reference data the app reads at start.\nBEGIN;\nINSERT INTO settings (k, v) VALUES ('mode', 'on');\nCOMMIT;\n",
    )
    .file("000001_seed.down.sql", "-- nothing to undo: the row is harmless\n")
    .file("000002_more.up.sql", "-- Why: more of it.\nBEGIN;\nINSERT INTO settings (k, v) VALUES ('x', 'y');\nCOMMIT;\n");
    let run = flotilla(&["lint", "--dir", dir.path().to_str().expect("utf-8"), "--engine", "postgres", "--json"]).await;
    let report = run.json();
    let rules = |i: usize| -> Vec<String> {
        report["migrations"][i]["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .map(|f| f["rule"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert!(rules(0).contains(&"empty-down".to_string()), "{report:#}");
    assert!(!rules(0).contains(&"missing-down".to_string()));
    assert!(rules(1).contains(&"missing-down".to_string()), "{report:#}");
}
