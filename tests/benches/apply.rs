//! How much Flotilla adds to the database's own work when applying migrations.
//!
//! For each engine: 200 migrations (create a table, create an index, insert a row) applied over one connection,
//! (a) by a bare loop that only does the database's work (PostgreSQL and SQLite: BEGIN, statements, COMMIT; MySQL
//! and MongoDB: each statement on its own), and (b) by Flotilla's executor (lock, history, checksums, progress). For
//! MongoDB's command-by-command scripts also (c): the same commands with the history writes the executor makes
//! around them, sent from here alone, so what recording costs shows apart from what the executor adds to it. And
//! `mysql-rows`: MySQL scripts of row changes alone, which the executor runs in one transaction each.
//! Each figure is the median of five runs, each on a fresh database. Run with `tests/servers.sh start` first:
//!
//!     cargo bench -p flotilla-tests --bench apply        (BENCH_ENGINES=sqlite,postgres,mysql,mysql-rows,mongodb,mongodb-cmd)

use std::time::{Duration, Instant};

use flotilla_agent::{connect, ConnectOptions, Executor};
use flotilla_core::{read_dir, Engine, ReadOptions, Request};
use flotilla_tests::sql::{create_table, insert, join};
use flotilla_tests::*;
use sqlx::Connection;

const MIGRATIONS: i64 = 200;
const RUNS: usize = 5;

fn scripts(engine: Engine) -> Vec<String> {
    (1..=MIGRATIONS)
        .map(|i| {
            let (create, _) = create_table(engine, &format!("t{i}"));
            let (row, _) = insert(engine, &format!("t{i}"), i);
            join(engine, &create, &row)
        })
        .collect()
}

/// MySQL scripts of row changes alone (a row inserted, updated, and a delete that finds nothing), after a first
/// that creates their table: the executor runs each in one transaction with its record, where the bare loop, like
/// `mariadb < script`, commits each statement on its own.
fn row_change_scripts() -> Vec<String> {
    let create = "CREATE TABLE r (id BIGINT PRIMARY KEY, n INT)".to_string();
    let rows = (2..=MIGRATIONS).map(|i| {
        format!(
            "INSERT INTO r VALUES ({i}, 0);\nUPDATE r SET n = n + 1 WHERE id = {i};\nDELETE FROM r WHERE id = {i} AND n = 0"
        )
    });
    std::iter::once(create).chain(rows).collect()
}

/// The MongoDB scripts with a write concern on each command (majority, the replica set's default: the same work), which
/// a transaction may not carry: the executor runs them command by command, as it does drops, renames, `collMod` and
/// indexes on existing collections.
fn stepwise_mongodb_scripts() -> Vec<String> {
    scripts(Mongodb)
        .iter()
        .map(|script| {
            let mut commands: Vec<serde_json::Value> = serde_json::from_str(script).expect("json");
            for c in &mut commands {
                c["writeConcern"] = serde_json::json!({ "w": "majority" });
            }
            serde_json::Value::Array(commands).to_string()
        })
        .collect()
}

async fn bare(db: &TestDb, scripts: &[String]) -> Duration {
    let started = Instant::now();
    match db.engine {
        Mongodb => {
            let mongo = db.mongo().await;
            for script in scripts {
                let commands: Vec<serde_json::Value> = serde_json::from_str(script).expect("json");
                for c in commands {
                    let doc = bson::to_document(&c).expect("document");
                    mongo.run_command(doc).await.expect("command");
                }
            }
        }
        engine => {
            let mut conn = db.sql().await;
            let transactional = engine != Mysql;
            for script in scripts {
                if transactional {
                    sqlx::Executor::execute(&mut conn, "BEGIN").await.expect("begin");
                }
                for statement in script.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
                    sqlx::Executor::execute(&mut conn, statement).await.expect("statement");
                }
                if transactional {
                    sqlx::Executor::execute(&mut conn, "COMMIT").await.expect("commit");
                }
            }
            let _ = conn.close().await;
        }
    }
    started.elapsed()
}

/// The command-by-command scripts' commands with the history writes the executor makes around them, sent from here
/// with nothing else: the dirty record and a progress bump after each command but the last, written like the
/// executor's (acknowledged, no journal wait), and the last command, a row change, in one transaction with the final
/// record. What recording costs in itself, beside what the executor costs.
async fn records_alone(db: &TestDb, scripts: &[String]) -> Duration {
    use bson::doc;
    use mongodb::options::{Acknowledgment, WriteConcern};
    let mongo = db.mongo().await;
    let history = mongo.collection::<bson::Document>("bench_history");
    let ahead = WriteConcern::builder().w(Acknowledgment::Nodes(1)).journal(false).build();
    let started = Instant::now();
    for (version, script) in scripts.iter().enumerate() {
        let mut commands: Vec<bson::Document> = serde_json::from_str::<Vec<serde_json::Value>>(script)
            .expect("json")
            .iter()
            .map(|c| bson::to_document(c).expect("document"))
            .collect();
        let mut last = commands.pop().expect("a command");
        let id = doc! { "_id": version as i64 };
        let record = doc! { "_id": version as i64, "state": "dirty", "done": 0, "checksum": "0".repeat(64) };
        history.replace_one(id.clone(), record).upsert(true).write_concern(ahead.clone()).await.expect("mark");
        for (done, command) in commands.into_iter().enumerate() {
            mongo.run_command(command).await.expect("command");
            let bump = doc! { "$set": { "done": done as i64 + 1 } };
            history.update_one(id.clone(), bump).write_concern(ahead.clone()).await.expect("progress");
        }
        last.remove("writeConcern");
        let mut session = mongo.client().start_session().await.expect("session");
        session.start_transaction().write_concern(WriteConcern::majority()).await.expect("transaction");
        mongo.run_command(last).session(&mut session).await.expect("last command");
        let applied = doc! { "_id": version as i64, "state": "applied", "checksum": "0".repeat(64) };
        history.replace_one(id, applied).upsert(true).session(&mut session).await.expect("record");
        session.commit_transaction().await.expect("commit");
    }
    started.elapsed()
}

async fn flotilla(db: &TestDb, scripts: &[String]) -> Duration {
    let dir = Dir::new();
    for (i, up) in scripts.iter().enumerate() {
        dir.migration(db.engine, i as i64 + 1, "m", up, if db.engine == Mongodb { "[]" } else { "SELECT 1;" });
    }
    let set = read_dir(dir.path(), &ReadOptions::default()).expect("read");
    let started = Instant::now();
    let driver = connect(&db.url, &ConnectOptions::default()).await.expect("connect");
    let mut executor = Executor::new(driver, "bench");
    let report = executor.migrate(&set, Request::Up { to: None }, false).await.expect("migrate");
    executor.close().await;
    let elapsed = started.elapsed();
    assert_eq!(report.steps.len(), scripts.len());
    elapsed
}

#[tokio::main]
async fn main() {
    println!("Applying {MIGRATIONS} migrations (3 statements each) over one connection; median of {RUNS} runs.\n");
    println!("{:<12} {:>12} {:>12} {:>10} {:>16}", "engine", "bare (ms)", "flotilla (ms)", "overhead", "per migration");
    let only = std::env::var("BENCH_ENGINES").unwrap_or_default();
    let runs = [
        (Sqlite, "sqlite", scripts(Sqlite)),
        (Postgres, "postgres", scripts(Postgres)),
        (Mysql, "mysql", scripts(Mysql)),
        (Mysql, "mysql-rows", row_change_scripts()),
        // Each script fits one transaction with its history write.
        (Mongodb, "mongodb", scripts(Mongodb)),
        (Mongodb, "mongodb-cmd", stepwise_mongodb_scripts()),
    ];
    for (engine, label, scripts) in runs {
        if !only.is_empty() && !only.split(',').any(|e| e == engine.as_str() || e == label) {
            continue;
        }
        let (mut base, mut ours, mut recorded) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            // An iteration's databases live until its runs are done, so no run overlaps the server's cleanup of a
            // dropped database.
            let (a, b) = (TestDb::new(engine).await, TestDb::new(engine).await);
            let c = if label == "mongodb-cmd" { Some(TestDb::new(engine).await) } else { None };
            base.push(bare(&a, &scripts).await);
            ours.push(flotilla(&b, &scripts).await);
            if let Some(c) = &c {
                recorded.push(records_alone(c, &scripts).await);
            }
        }
        let (b, f) = (median(base), median(ours));
        let overhead = (f.as_secs_f64() / b.as_secs_f64() - 1.0) * 100.0;
        let per = (f.saturating_sub(b)).as_secs_f64() * 1e6 / MIGRATIONS as f64;
        println!(
            "{:<12} {:>12.1} {:>12.1} {:>9.1}% {:>13.0} µs",
            label,
            b.as_secs_f64() * 1e3,
            f.as_secs_f64() * 1e3,
            overhead,
            per
        );
        if !recorded.is_empty() {
            let r = median(recorded);
            println!(
                "{:<12} {:>12} {:>12.1} {:>9.1}%   (the same commands and history writes, without the executor)",
                "  records",
                "",
                r.as_secs_f64() * 1e3,
                (r.as_secs_f64() / b.as_secs_f64() - 1.0) * 100.0
            );
        }
    }
}
