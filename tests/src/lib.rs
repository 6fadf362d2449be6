//! The integration-test harness: finds the servers `tests/servers.sh start` runs, makes a fresh database per test,
//! snapshots a database's catalog independently of Flotilla's own code, writes migration directories, and runs the
//! real `flotilla` binary.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use flotilla_core::Engine;

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

/// BENCH_STORE, for the benches: whether the coordinator's store is on the test PostgreSQL server (`postgres`) or
/// the SQLite file (`sqlite`, the default).
pub fn bench_store_on_postgres() -> bool {
    match std::env::var("BENCH_STORE").as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Err(_) => false,
        Ok(other) => panic!("BENCH_STORE={other}: the store is `sqlite` (the default) or `postgres`"),
    }
}

/// The admin URL of the server with its normal durability (fsync on) that `tests/servers.sh start durable` runs
/// for the benchmarks, if it does.
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

/// The streaming replica of the test PostgreSQL server (tests/servers.sh).
pub fn pg_replica_url() -> String {
    std::env::var("FLOTILLA_TEST_PG_REPLICA_URL").expect("FLOTILLA_TEST_PG_REPLICA_URL: run tests/servers.sh start")
}

/// The etcd endpoint `tests/servers.sh` runs.
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

mod db;
pub mod fleet;
pub mod proxy;
pub mod servers;
pub mod sql;

pub use db::TestDb;

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
