//! The integration-test harness: finds the servers `tests/servers.sh start` runs, makes a fresh database per test,
//! snapshots a database's catalog independently of Flotilla's own code, writes migration directories, and runs the
//! real `flotilla` binary.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Once;
use std::time::Duration;

use flotilla_core::Engine;
use futures_util::TryStreamExt;
use sqlx::{AnyConnection, Connection, Row};

pub use flotilla_core::Engine::{Mongodb, Mysql, Postgres, Sqlite};

/// Instantiates async test functions `fn name(engine: Engine)` once per engine, in modules named after the engines,
/// so one suite is written once and runs against every engine.
#[macro_export]
macro_rules! on_every_engine {
    ($($test:ident),* $(,)?) => {
        mod postgres { $( #[tokio::test(flavor = "multi_thread")] async fn $test() { super::$test($crate::Postgres).await } )* }
        mod mysql { $( #[tokio::test(flavor = "multi_thread")] async fn $test() { super::$test($crate::Mysql).await } )* }
        mod sqlite { $( #[tokio::test(flavor = "multi_thread")] async fn $test() { super::$test($crate::Sqlite).await } )* }
        mod mongodb { $( #[tokio::test(flavor = "multi_thread")] async fn $test() { super::$test($crate::Mongodb).await } )* }
    };
}

/// Server URLs: from FLOTILLA_TEST_*_URL, or from the env file `servers.sh start` writes.
fn server_url(engine: Engine) -> String {
    let var = match engine {
        Postgres => "FLOTILLA_TEST_PG_URL",
        Mysql => "FLOTILLA_TEST_MYSQL_URL",
        Mongodb => "FLOTILLA_TEST_MONGO_URL",
        Sqlite => unreachable!("SQLite needs no server"),
    };
    env_url(var)
}

/// The admin URL of the server with its normal durability (fsync on) that `tests/servers.sh start durable` runs
/// for the benchmarks, if it does.
/// BENCH_STORE, for the benches: whether the coordinator's store is on the test PostgreSQL server (`postgres`) or
/// the SQLite file (`sqlite`, the default).
pub fn bench_store_on_postgres() -> bool {
    match std::env::var("BENCH_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("BENCH_STORE={other}: the store is `sqlite` (the default) or `postgres`"),
    }
}

pub fn durable_server_url(engine: Engine) -> Option<String> {
    let var = match engine {
        Postgres => "FLOTILLA_BENCH_PG_DURABLE_URL",
        Mysql => "FLOTILLA_BENCH_MYSQL_DURABLE_URL",
        _ => return None,
    };
    std::env::var(var).ok().or_else(|| {
        let text = std::fs::read_to_string(manifest_dir().join(".servers/env")).ok()?;
        text.lines().find_map(|l| l.strip_prefix(&format!("export {var}="))).map(str::to_string)
    })
}

/// The etcd endpoint `tests/servers.sh` runs.
/// The streaming replica of the test PostgreSQL server (tests/servers.sh).
pub fn pg_replica_url() -> String {
    std::env::var("FLOTILLA_TEST_PG_REPLICA_URL").expect("FLOTILLA_TEST_PG_REPLICA_URL: run tests/servers.sh start")
}

pub fn etcd_url() -> String {
    env_url("FLOTILLA_TEST_ETCD_URL")
}

/// The real Alembic's command (`servers.sh` installs it from PyPI).
pub fn alembic_cli() -> String {
    env_url("FLOTILLA_TEST_ALEMBIC")
}

/// The real Liquibase's launcher (`servers.sh` installs it from npm; it runs on the machine's Java).
pub fn liquibase_cli() -> String {
    env_url("FLOTILLA_TEST_LIQUIBASE")
}

/// The real Knex's command line (`servers.sh` installs it from npm).
pub fn knex_cli() -> String {
    env_url("FLOTILLA_TEST_KNEX")
}

fn env_url(var: &str) -> String {
    if let Ok(url) = std::env::var(var) {
        return url;
    }
    let env_file = manifest_dir().join(".servers/env");
    let text = std::fs::read_to_string(&env_file).unwrap_or_else(|_| {
        panic!(
            "{var} is not set and {} does not exist: run `tests/servers.sh start` first (or tests/run)",
            env_file.display()
        )
    });
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("export {var}=")))
        .unwrap_or_else(|| panic!("{} has no {var}", env_file.display()))
        .to_string()
}

/// This package's directory, as cargo says at run time. The compile-time path is only the fallback: cargo may reuse
/// a test binary built in another checkout of the same workspace (a shared target directory, older sources here),
/// and that path may be gone.
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub(crate) fn install_drivers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(sqlx::any::install_default_drivers);
}

/// A fresh, empty database on one engine, for one test.
pub struct TestDb {
    pub engine: Engine,
    pub url: String,
    pub name: String,
    /// The server's admin URL it was created through (dropped through it too).
    server: String,
    _dir: Option<tempfile::TempDir>,
}

/// Databases are dropped when their test is done, so runs do not pile them up on the test servers' disk (thousands
/// of PostgreSQL databases filled a disk once). Best effort, bounded: what a killed run leaves behind is swept by
/// `tests/servers.sh start`.
impl Drop for TestDb {
    fn drop(&mut self) {
        if self.engine == Sqlite || self.name.is_empty() {
            return;
        }
        let (engine, name, server) = (self.engine, self.name.clone(), self.server.clone());
        // Drop cannot await, and may run inside a runtime: drop from a thread with a runtime of its own.
        let dropping = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async {
                let dropped = TestDb::drop_database(engine, &server, &name);
                let _ = tokio::time::timeout(Duration::from_secs(10), dropped).await;
            });
        });
        let _ = dropping.join();
    }
}

impl TestDb {
    pub async fn new(engine: Engine) -> TestDb {
        let server = if engine == Sqlite { String::new() } else { server_url(engine) };
        TestDb::new_on(engine, &server).await
    }

    /// A fresh database on the server at admin URL `base` (another than the test servers: the benchmarks' durable
    /// ones, say).
    pub async fn new_on(engine: Engine, base: &str) -> TestDb {
        install_drivers();
        let name = format!("t_{}", rand::random::<u64>() % 1_000_000_000_000);
        let server = base.to_string();
        match engine {
            Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                TestDb { engine, url, name, server, _dir: Some(dir) }
            }
            Mongodb => {
                let url = base.replacen("/?", &format!("/{name}?"), 1);
                TestDb { engine, url, name, server, _dir: None }
            }
            Postgres | Mysql => {
                let mut admin = AnyConnection::connect(base).await.unwrap_or_else(|e| panic!("connect {base}: {e}"));
                sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("create database");
                let _ = admin.close().await;
                let cut = base.rfind('/').expect("URL has a path");
                TestDb { engine, url: format!("{}/{name}", &base[..cut]), name, server, _dir: None }
            }
        }
    }

    /// A database that lives elsewhere (on a private server of a fault test, say), for the same checks; it is not
    /// dropped with this value.
    pub fn on(engine: Engine, url: &str) -> TestDb {
        install_drivers();
        TestDb { engine, url: url.to_string(), name: String::new(), server: String::new(), _dir: None }
    }

    /// Drops the database (see `Drop`).
    async fn drop_database(engine: Engine, base: &str, name: &str) {
        match engine {
            Sqlite => {}
            Mongodb => {
                if let Ok(client) = mongodb::Client::with_uri_str(base).await {
                    let _ = client.database(name).drop().await;
                    client.shutdown().await;
                }
            }
            Postgres | Mysql => {
                let Ok(mut admin) = AnyConnection::connect(base).await else { return };
                // PostgreSQL: FORCE ends sessions a test left behind (an agent process still connected, say).
                let force = if engine == Postgres { " WITH (FORCE)" } else { "" };
                let _ = sqlx::Executor::execute(&mut admin, format!("DROP DATABASE IF EXISTS {name}{force}").as_str())
                    .await;
                let _ = admin.close().await;
            }
        }
    }

    /// Runs SQL (or, on MongoDB, one JSON command) directly, bypassing Flotilla.
    pub async fn exec(&self, statement: &str) {
        match self.engine {
            Mongodb => {
                let doc: bson::Document = serde_json::from_str::<serde_json::Value>(statement)
                    .ok()
                    .and_then(|v| bson::to_document(&v).ok())
                    .expect("a JSON command");
                self.mongo().await.run_command(doc).await.expect("mongo command");
            }
            _ => {
                let mut conn = self.sql().await;
                sqlx::Executor::execute(&mut conn, statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
                let _ = conn.close().await;
            }
        }
    }

    pub async fn sql(&self) -> AnyConnection {
        install_drivers();
        let url = if self.engine == Sqlite { format!("{}?mode=rwc", self.url) } else { self.url.clone() };
        AnyConnection::connect(&url).await.unwrap_or_else(|e| panic!("connect {}: {e}", self.url))
    }

    pub async fn mongo(&self) -> mongodb::Database {
        let client = mongodb::Client::with_uri_str(&self.url).await.expect("mongo client");
        client.default_database().unwrap_or_else(|| client.database(&self.name))
    }

    /// Everything in the schema except Flotilla's own tables, as sorted lines. Read with plain catalog queries.
    pub async fn catalog(&self) -> Vec<String> {
        let query = match self.engine {
            Postgres => {
                "SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '')
                   FROM information_schema.columns WHERE table_schema = 'public' AND table_name NOT LIKE 'flotilla%'
                 UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename NOT LIKE 'flotilla%'
                 UNION ALL SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
                   FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text NOT LIKE 'flotilla%'
                 UNION ALL SELECT 'relation ' || relname || ' ' || relkind::text FROM pg_class
                   WHERE relnamespace = 'public'::regnamespace AND relname NOT LIKE 'flotilla%'
                 ORDER BY 1"
            }
            Mysql => {
                "SELECT CAST(CONCAT('column ', table_name, '.', column_name, ' ', column_type, ' ', is_nullable, ' ', coalesce(column_default, '')) AS CHAR(2000))
                   FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name NOT LIKE 'flotilla%'
                 UNION ALL SELECT CONCAT('index ', table_name, '.', index_name, ' ', seq_in_index, ' ', column_name, ' ', non_unique)
                   FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name NOT LIKE 'flotilla%'
                 UNION ALL SELECT CONCAT('constraint ', table_name, '.', constraint_name, ' ', constraint_type)
                   FROM information_schema.table_constraints WHERE table_schema = DATABASE() AND table_name NOT LIKE 'flotilla%'
                 UNION ALL SELECT CONCAT('table ', table_name, ' ', table_type) FROM information_schema.tables
                   WHERE table_schema = DATABASE() AND table_name NOT LIKE 'flotilla%'
                 ORDER BY 1"
            }
            Sqlite => {
                "SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_master
                 WHERE name NOT LIKE 'flotilla%' AND name NOT LIKE 'sqlite%' ORDER BY 1"
            }
            Mongodb => return self.mongo_catalog().await,
        };
        let mut conn = self.sql().await;
        let rows = sqlx::query(query).fetch_all(&mut conn).await.expect("catalog query");
        let _ = conn.close().await;
        rows.iter().map(|r| r.get::<String, _>(0)).collect()
    }

    async fn mongo_catalog(&self) -> Vec<String> {
        let db = self.mongo().await;
        let mut out = Vec::new();
        let specs: Vec<_> = db.list_collections().await.expect("list").try_collect().await.expect("list");
        for spec in specs {
            if spec.name.starts_with("flotilla") {
                continue;
            }
            out.push(format!("collection {} {:?}", spec.name, spec.options.validator));
            let coll = db.collection::<bson::Document>(&spec.name);
            let indexes: Vec<_> = coll.list_indexes().await.expect("indexes").try_collect().await.expect("indexes");
            for i in indexes {
                out.push(format!(
                    "index {} {} {:?} {:?}",
                    spec.name,
                    i.keys,
                    i.options.as_ref().and_then(|o| o.unique),
                    i.options.as_ref().and_then(|o| o.partial_filter_expression.clone())
                ));
            }
        }
        out.sort();
        out
    }

    /// Rows in the history table, read directly, by version: (version, state, statements_done).
    pub async fn history(&self) -> Vec<(u128, String, i64)> {
        match self.engine {
            Mongodb => {
                let coll = self.mongo().await.collection::<bson::Document>("flotilla_schema_history");
                let docs: Vec<bson::Document> = coll
                    .find(bson::doc! {})
                    .sort(bson::doc! {"_id": 1})
                    .await
                    .expect("find")
                    .try_collect()
                    .await
                    .expect("find");
                let mut rows: Vec<(u128, String, i64)> = docs
                    .iter()
                    .map(|d| {
                        let version = match d.get("_id").expect("_id") {
                            bson::Bson::Int64(n) => u128::try_from(*n).expect("version"),
                            bson::Bson::String(text) => text.parse().expect("version"),
                            other => panic!("history _id {other}"),
                        };
                        (
                            version,
                            d.get_str("state").expect("state").to_string(),
                            d.get_i64("statements_done").expect("done"),
                        )
                    })
                    .collect();
                rows.sort();
                rows
            }
            _ => {
                let mut conn = self.sql().await;
                let version = match self.engine {
                    Postgres => "version::text",
                    Mysql => "CAST(version AS CHAR)",
                    _ => "CAST(version AS TEXT)",
                };
                let rows =
                    sqlx::query(&format!("SELECT {version}, state, statements_done FROM flotilla_schema_history"))
                        .fetch_all(&mut conn)
                        .await;
                let _ = conn.close().await;
                match rows {
                    Ok(rows) => {
                        let mut rows: Vec<(u128, String, i64)> = rows
                            .iter()
                            .map(|r| (r.get::<String, _>(0).parse().expect("version"), r.get(1), r.get(2)))
                            .collect();
                        rows.sort();
                        rows
                    }
                    Err(e) if e.to_string().contains("exist") || e.to_string().contains("no such table") => Vec::new(),
                    Err(e) => panic!("history: {e}"),
                }
            }
        }
    }

    /// Whether a table (collection) exists, by its exact name, including Flotilla's own.
    pub async fn has_table(&self, table: &str) -> bool {
        match self.engine {
            Mongodb => self.mongo().await.list_collection_names().await.expect("list").iter().any(|n| n == table),
            Sqlite if !Path::new(self.url.trim_start_matches("sqlite://")).exists() => false,
            _ => {
                let query = match self.engine {
                    Postgres => "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name = $1",
                    Mysql => "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
                    _ => "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                };
                let mut conn = self.sql().await;
                let n: i64 = sqlx::query_scalar(query).bind(table).fetch_one(&mut conn).await.expect("has_table");
                let _ = conn.close().await;
                n > 0
            }
        }
    }

    /// Runs every statement of a script written for this engine, bypassing Flotilla (to build "existing" databases).
    pub async fn apply_script(&self, script: &str) {
        match self.engine {
            Mongodb => {
                let commands: Vec<serde_json::Value> = serde_json::from_str(script).expect("JSON array");
                for c in commands {
                    self.exec(&c.to_string()).await;
                }
            }
            _ => {
                for statement in script.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
                    self.exec(statement.trim_end_matches(';')).await;
                }
            }
        }
    }

    /// Counts rows (documents) of a table (collection).
    pub async fn count(&self, table: &str) -> i64 {
        match self.engine {
            Mongodb => {
                let n = self
                    .mongo()
                    .await
                    .collection::<bson::Document>(table)
                    .count_documents(bson::doc! {})
                    .await
                    .expect("count");
                i64::try_from(n).expect("count fits")
            }
            _ => {
                let mut conn = self.sql().await;
                let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                    .fetch_one(&mut conn)
                    .await
                    .expect("count");
                let _ = conn.close().await;
                n
            }
        }
    }
}

/// A migrations directory written for a test.
pub struct Dir {
    pub dir: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir { dir: tempfile::tempdir().expect("temp dir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str, text: &str) -> &Self {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(path, text).expect("write");
        self
    }

    /// Writes migration `version` in the native layout for `engine` (`.sql`, or `.json` on MongoDB).
    pub fn migration(&self, engine: Engine, version: i64, name: &str, up: &str, down: &str) -> &Self {
        let ext = if engine == Mongodb { "json" } else { "sql" };
        self.file(&format!("{version:06}_{name}.up.{ext}"), up);
        self.file(&format!("{version:06}_{name}.down.{ext}"), down)
    }

    /// A MongoDB set whose migration 2 runs command by command: migration 1 creates collection `runs`, and migration
    /// 2 builds an index on it (which a transaction may not do), then runs `commands` (JSON commands, comma-separated).
    pub fn mongo_stepwise(commands: &str) -> Dir {
        let dir = Dir::new();
        dir.migration(Mongodb, 1, "runs", r#"[{"create": "runs"}]"#, r#"[{"drop": "runs"}]"#).migration(
            Mongodb,
            2,
            "rows",
            &format!(
                r#"[{{"createIndexes": "runs", "indexes": [{{"key": {{"v": 1}}, "name": "runs_v"}}]}}, {commands}]"#
            ),
            r#"[{"dropIndexes": "runs", "index": "runs_v"}]"#,
        );
        dir
    }
}

impl Default for Dir {
    fn default() -> Self {
        Self::new()
    }
}

/// Path of a workspace binary, built next to the test executables.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// The outcome of a `flotilla` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "flotilla failed: {self:#?}");
        self
    }

    #[track_caller]
    pub fn fails(&self, code: i32, needle: &str) -> &Self {
        assert_eq!(self.code, code, "expected exit {code}: {self:#?}");
        assert!(
            self.stdout.contains(needle) || self.stderr.contains(needle),
            "expected `{needle}` in output: {self:#?}"
        );
        self
    }
}

/// Two SQLite migrations, each creating a table (`a`, then `b`) and dropping it on the way down.
pub fn two_tables() -> Dir {
    let dir = Dir::new();
    dir.migration(Engine::Sqlite, 1, "a", "CREATE TABLE a (id INT);", "DROP TABLE a;").migration(
        Engine::Sqlite,
        2,
        "b",
        "CREATE TABLE b (id INT);",
        "DROP TABLE b;",
    );
    dir
}

/// Starts `flotilla` with `args`, not yet awaited.
pub fn spawn(args: &[&str]) -> tokio::process::Child {
    spawn_program("flotilla", args)
}

/// Starts one of the workspace's binaries (`flotilla`, `flotilla-coordinator`, `flotilla-agent`) with `args`, its
/// output captured, not yet awaited.
pub fn spawn_program(program: &str, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(binary(program))
        .args(args)
        .env_remove("FLOTILLA_DB_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
}

pub async fn finish(child: tokio::process::Child) -> Run {
    let out = child.wait_with_output().await.expect("wait flotilla");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `flotilla` with `args` to completion.
pub async fn flotilla(args: &[&str]) -> Run {
    finish(spawn(args)).await
}

/// `flotilla <command> --db URL --dir DIR [extra…]`.
pub async fn cmd(command: &str, db: &TestDb, dir: &Path, extra: &[&str]) -> Run {
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec![command, "--db", &db.url, "--dir", dir];
    args.extend_from_slice(extra);
    flotilla(&args).await
}

pub mod fleet;
pub mod proxy;
pub mod servers;

/// Per-engine migration text, so one suite runs on every engine.
pub mod sql {
    use super::*;

    /// UP and DOWN creating table `t` with an `id` key and a `v` text column, plus an index on `v`.
    pub fn create_table(engine: Engine, t: &str) -> (String, String) {
        match engine {
            Mongodb => (
                format!(
                    r#"[{{"create": "{t}"}}, {{"createIndexes": "{t}", "indexes": [{{"key": {{"v": 1}}, "name": "{t}_v"}}]}}]"#
                ),
                format!(r#"[{{"drop": "{t}"}}]"#),
            ),
            Mysql => (
                format!("CREATE TABLE {t} (id BIGINT PRIMARY KEY, v VARCHAR(64));\nCREATE INDEX {t}_v ON {t} (v);"),
                format!("DROP INDEX {t}_v ON {t};\nDROP TABLE {t};"),
            ),
            _ => (
                format!("CREATE TABLE {t} (id BIGINT PRIMARY KEY, v VARCHAR(64));\nCREATE INDEX {t}_v ON {t} (v);"),
                format!("DROP INDEX {t}_v;\nDROP TABLE {t};"),
            ),
        }
    }

    /// UP and DOWN inserting (deleting) the row `id` into table `t`.
    pub fn insert(engine: Engine, t: &str, id: i64) -> (String, String) {
        match engine {
            Mongodb => (
                format!(r#"[{{"insert": "{t}", "documents": [{{"_id": {id}, "v": "row {id}"}}]}}]"#),
                format!(r#"[{{"delete": "{t}", "deletes": [{{"q": {{"_id": {id}}}, "limit": 1}}]}}]"#),
            ),
            _ => (
                format!("INSERT INTO {t} (id, v) VALUES ({id}, 'row {id}');"),
                format!("DELETE FROM {t} WHERE id = {id};"),
            ),
        }
    }

    /// One script running `a` then `b` (SQL texts, or MongoDB command arrays).
    pub fn join(engine: Engine, a: &str, b: &str) -> String {
        match engine {
            Mongodb => {
                let mut first: Vec<serde_json::Value> = serde_json::from_str(a).expect("JSON array");
                let second: Vec<serde_json::Value> = serde_json::from_str(b).expect("JSON array");
                first.extend(second);
                serde_json::Value::Array(first).to_string()
            }
            _ => format!("{a}\n{b}"),
        }
    }

    /// A statement that takes about `seconds` on the server.
    pub fn slow(engine: Engine, seconds: u32) -> String {
        match engine {
            Postgres => format!("SELECT pg_sleep({seconds});"),
            Mysql => format!("SELECT SLEEP({seconds});"),
            // No sleep in SQLite: count far enough.
            Sqlite => format!(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {}) SELECT count(*) FROM c;",
                u64::from(seconds) * 4_000_000
            ),
            Mongodb => format!(
                r#"[{{"create": "sleepy"}}, {{"insert": "sleepy", "documents": [{{"_id": 1}}]}},
                    {{"update": "sleepy", "updates": [{{"q": {{"$where": "sleep({}) || true"}}, "u": {{"$set": {{"slept": true}}}}}}]}}]"#,
                seconds * 1000
            ),
        }
    }
}

/// The median of timings (benchmarks report medians).
pub fn median(mut timings: Vec<Duration>) -> Duration {
    timings.sort();
    timings[timings.len() / 2]
}

/// A pending step of `plan_id` for `target` in `wave`, as a plan is created with.
pub fn pending_step(plan_id: &str, target: &str, wave: u32) -> flotilla_core::fleet::Step {
    flotilla_core::fleet::Step {
        plan_id: plan_id.into(),
        target: target.into(),
        wave,
        state: flotilla_core::fleet::StepState::Pending,
        token: None,
        error: None,
        goal: None,
        before: None,
        after: None,
        updated_at: chrono::Utc::now(),
    }
}

/// A version, for tests that count 1, 2, 3 …
pub fn v(n: u64) -> flotilla_core::Version {
    flotilla_core::Version::from(n)
}

/// Peak resident set size of a running process (`VmHWM`), in MiB; 0 if it cannot be read.
pub fn peak_rss_mib(pid: u32) -> f64 {
    proc_status_mib(pid, "VmHWM:")
}

/// A process's resident memory now, as (anonymous: heap and stacks, file-backed: its binary's and libraries' pages).
pub fn rss_parts_mib(pid: u32) -> (f64, f64) {
    (proc_status_mib(pid, "RssAnon:"), proc_status_mib(pid, "RssFile:"))
}

fn proc_status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}
