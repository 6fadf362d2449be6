//! A fleet rollout side by side with what users run instead, on the same databases in one run.
//!
//! Per scenario (engine, server, N databases, agents), three migrations of two statements each, parallelism 8:
//! - loop: what teams run today, one client process per database through `xargs -P 8`: `psql -1 -f` (PostgreSQL),
//!   `mariadb` (MariaDB); MongoDB has no shell client here, so its loop is the bare one;
//! - bare: only the databases' own work, from this process: per database connect, then each migration's
//!   statements (in a transaction where the engine has them);
//! - executor: the agent's work without the fleet: per database the `Executor` (lock, history, records);
//! - fleet: the real `flotilla-coordinator` (SQLite store, etcd locks) and `flotilla-agent` processes over mTLS, a
//!   plan submitted over gRPC, timed from submit to the plan's end; then the same plan again with nothing pending
//!   (the no-op re-run). An untimed first plan adopts the targets (creates each history table), as in every
//!   rollout after a fleet's first; the executor gets the same untimed first contact. On PostgreSQL also a second
//!   fleet doing the same with `--group`: each target's three migrations in one transaction (one commit, not three).
//!
//! Also printed: peak RSS of the coordinator and of each agent, etcd requests per step (from etcd's own metrics),
//! and the coordinator's store and lock calls per step with their mean time (from its own `/metrics`). Databases
//! are reset between runners (PostgreSQL: the schema; MariaDB and MongoDB: the database).
//! Medians of BENCH_RUNS runs (default 3).
//!
//!     bench/fleet                          (builds the release binaries, starts the servers, runs this)
//!     BENCH_SCENARIOS=pg-durable:100:1,pg:1000:1 bench/fleet
//!
//! BENCH_ONLY=fleet runs the fleet alone (no loops), for a quick look at its time and memory. BENCH_STORE=postgres
//! puts the coordinator's store on the test PostgreSQL server and prints the store's transactions and rows written
//! per step (from PostgreSQL's own statistics); the default is the SQLite file.
//!
//! The agent keeps every target's connection warm (`max_idle` = N + 16) unless BENCH_MAX_IDLE sets it.
//!
//! Scenarios are `SERVER:N:AGENTS`; servers: `pg` and `mysql` (the test servers: fsync off), `pg-durable` and
//! `mysql-durable` (their normal durability: `tests/servers.sh start durable`), `mongo`.

use std::time::{Duration, Instant};

use flotilla_core::bundle::Bundle;
use flotilla_core::Engine::{self, Mongodb, Mysql, Postgres};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::operator_service_client::OperatorServiceClient;
use flotilla_tests::fleet::{Fleet, FleetTarget};
use flotilla_tests::*;
use futures_util::StreamExt;
use sqlx::Connection;

const PARALLEL: usize = 8;
const DEFAULT_SCENARIOS: &str =
    "pg-durable:100:1,pg-durable:100:4,pg-durable:1000:1,pg:100:1,pg:1000:1,mysql-durable:100:1,mongo:100:1";

/// Each migration's statements, per engine.
fn statements(engine: Engine) -> [[&'static str; 2]; 3] {
    match engine {
        Postgres => [
            ["CREATE TABLE accounts (id BIGINT PRIMARY KEY, name TEXT)", "INSERT INTO accounts VALUES (1, 'a')"],
            ["ALTER TABLE accounts ADD COLUMN status TEXT", "UPDATE accounts SET status = 'new'"],
            ["CREATE INDEX accounts_status ON accounts (status)", "ANALYZE accounts"],
        ],
        Mysql => [
            ["CREATE TABLE accounts (id BIGINT PRIMARY KEY, name VARCHAR(64))", "INSERT INTO accounts VALUES (1, 'a')"],
            ["ALTER TABLE accounts ADD COLUMN status VARCHAR(16)", "UPDATE accounts SET status = 'new'"],
            ["CREATE INDEX accounts_status ON accounts (status)", "ANALYZE TABLE accounts"],
        ],
        _ => [
            [r#"{"create": "accounts"}"#, r#"{"insert": "accounts", "documents": [{"_id": 1, "name": "a"}]}"#],
            [
                r#"{"update": "accounts", "updates": [{"q": {}, "u": {"$set": {"status": "new"}}, "multi": true}]}"#,
                r#"{"createIndexes": "accounts", "indexes": [{"key": {"status": 1}, "name": "accounts_status"}]}"#,
            ],
            [
                r#"{"createIndexes": "accounts", "indexes": [{"key": {"name": 1}, "name": "accounts_name"}]}"#,
                r#"{"collMod": "accounts", "validator": {}}"#,
            ],
        ],
    }
}

/// Version 1 is a no-op for the untimed first contact; versions 2 to 4 are the timed rollout.
fn migrations(engine: Engine) -> Dir {
    let dir = Dir::new();
    let noop = if engine == Mongodb { "" } else { "SELECT 1;" };
    dir.migration(engine, 1, "adopt", noop, noop);
    for (i, [a, b]) in statements(engine).iter().enumerate() {
        let up = if engine == Mongodb { format!("[{a}, {b}]") } else { format!("{a};\n{b};") };
        dir.migration(engine, i as i64 + 2, &format!("m{}", i + 2), &up, noop);
    }
    dir
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    engine: Engine,
    durable: bool,
    n: usize,
    agents: usize,
}

impl Scenario {
    fn parse(s: &str) -> Scenario {
        let parts: Vec<&str> = s.split(':').collect();
        let [server, n, agents] = parts[..] else { panic!("scenario `{s}`: SERVER:N:AGENTS") };
        let (engine, durable) = match server {
            "pg" => (Postgres, false),
            "pg-durable" => (Postgres, true),
            "mysql" => (Mysql, false),
            "mysql-durable" => (Mysql, true),
            "mongo" => (Mongodb, false),
            other => panic!("scenario `{s}`: unknown server `{other}`"),
        };
        Scenario { engine, durable, n: n.parse().expect("N"), agents: agents.parse().expect("AGENTS") }
    }

    fn name(&self) -> String {
        let server = match (self.engine, self.durable) {
            (Postgres, true) => "PostgreSQL, fsync on",
            (Postgres, false) => "PostgreSQL, fsync off",
            (Mysql, true) => "MariaDB, every commit flushed",
            (Mysql, false) => "MariaDB, flushed once a second",
            _ => "MongoDB, journaled",
        };
        format!("{} databases on {server}, {} agent(s)", self.n, self.agents)
    }

    async fn databases(&self) -> Vec<TestDb> {
        let server = match self.durable {
            true => durable_server_url(self.engine).expect("a durable server: run `tests/servers.sh start durable`"),
            false => String::new(),
        };
        let engine = self.engine;
        // Sixteen at a time: more connections at once than the server takes otherwise.
        futures_util::stream::iter(0..self.n)
            .map(|_| {
                let server = server.clone();
                async move {
                    if server.is_empty() {
                        TestDb::new(engine).await
                    } else {
                        TestDb::new_on(engine, &server).await
                    }
                }
            })
            .buffer_unordered(16)
            .collect()
            .await
    }
}

/// Runs `work` on every URL, `PARALLEL` at a time.
async fn each<F, Fut>(urls: &[String], work: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    futures_util::stream::iter(urls.iter().cloned()).map(work).buffer_unordered(PARALLEL).collect::<Vec<()>>().await;
}

/// Empties every database again: the next runner starts where the last one did. On PostgreSQL a checkpoint then
/// writes out what the reset dirtied, so no runner pays for the one before it.
async fn reset(engine: Engine, urls: &[String]) {
    empty(engine, urls).await;
    if let (Postgres, Some(url)) = (engine, urls.first()) {
        let mut conn = sqlx::AnyConnection::connect(url).await.expect("connect");
        sqlx::Executor::execute(&mut conn, "CHECKPOINT").await.expect("checkpoint");
        let _ = conn.close().await;
    }
}

async fn empty(engine: Engine, urls: &[String]) {
    each(urls, |url| async move {
        match engine {
            Mongodb => {
                let client = mongodb::Client::with_uri_str(&url).await.expect("mongo");
                client.default_database().expect("database").drop().await.expect("drop");
                client.shutdown().await;
            }
            Postgres => {
                let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
                sqlx::Executor::execute(&mut conn, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
                    .await
                    .expect("reset");
                let _ = conn.close().await;
            }
            _ => {
                let name = url.rsplit('/').next().expect("database").to_string();
                let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
                let sql = format!("DROP DATABASE {name}; CREATE DATABASE {name}");
                sqlx::raw_sql(&sql).execute(&mut conn).await.expect("reset");
                let _ = conn.close().await;
            }
        }
    })
    .await;
}

/// The databases' own work, from this process.
async fn bare(engine: Engine, urls: &[String]) -> Duration {
    let started = Instant::now();
    each(urls, |url| async move {
        if engine == Mongodb {
            let client = mongodb::Client::with_uri_str(&url).await.expect("mongo");
            let db = client.default_database().expect("database");
            for statement in statements(engine).iter().flatten() {
                let command: bson::Document = serde_json::from_str(statement).expect("command");
                db.run_command(command).await.expect("command");
            }
            client.shutdown().await;
            return;
        }
        let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
        for [a, b] in statements(engine) {
            for statement in ["BEGIN", a, b, "COMMIT"] {
                sqlx::Executor::execute(&mut conn, statement).await.expect("statement");
            }
        }
        let _ = conn.close().await;
    })
    .await;
    started.elapsed()
}

/// The shell loop: one client process per database, `xargs -P 8`.
fn shell_loop(engine: Engine, urls: &[String]) -> Option<Duration> {
    let work = tempfile::tempdir().expect("dir");
    let sql: String = statements(engine).iter().flatten().map(|s| format!("{s};\n")).collect();
    std::fs::write(work.path().join("up.sql"), format!("BEGIN;\n{sql}COMMIT;\n")).expect("sql");
    let command = match engine {
        Postgres => {
            std::fs::write(work.path().join("up.sql"), sql).expect("sql");
            let list: String = urls.iter().map(|u| format!("{u}\n")).collect();
            std::fs::write(work.path().join("targets"), list).expect("targets");
            format!("xargs -P {PARALLEL} -I{{}} psql -X -q -1 -v ON_ERROR_STOP=1 -f up.sql {{}} < targets > /dev/null")
        }
        Mysql => {
            // mysql://root@HOST:PORT/DB → -h HOST -P PORT DB
            let list: String = urls
                .iter()
                .map(|u| {
                    let rest = u.strip_prefix("mysql://").expect("a mysql:// URL");
                    let (user, rest) = rest.split_once('@').expect("user@");
                    let (address, db) = rest.split_once('/').expect("/database");
                    let (host, port) = address.split_once(':').unwrap_or((address, "3306"));
                    format!("-h{host} -P{port} -u{user} {db}\n")
                })
                .collect();
            std::fs::write(work.path().join("targets"), list).expect("targets");
            format!("xargs -P {PARALLEL} -L1 sh -c 'mariadb --no-defaults --protocol=tcp \"$@\" < up.sql > /dev/null' sh < targets")
        }
        _ => return None,
    };
    let started = Instant::now();
    let status =
        std::process::Command::new("sh").arg("-c").arg(command).current_dir(work.path()).status().expect("loop");
    assert!(status.success(), "the shell loop failed");
    Some(started.elapsed())
}

/// The executor per database, with an untimed first contact.
async fn executor_only(urls: &[String], dir: &std::path::Path) -> Duration {
    let set = flotilla_core::read_dir(dir, &Default::default()).expect("read");
    let run = |to: Option<u32>| {
        let set = &set;
        each(urls, move |url| async move {
            let driver = flotilla_agent::connect(&url, &Default::default()).await.expect("connect");
            let mut ex = flotilla_agent::Executor::new(driver, "bench");
            ex.history().await.expect("history");
            let request = flotilla_core::Request::Up { to: to.map(flotilla_core::Version::from) };
            ex.migrate(set, request, false).await.expect("migrate");
            ex.history().await.expect("history");
            ex.close().await;
        })
    };
    run(Some(1)).await;
    let started = Instant::now();
    run(None).await;
    started.elapsed()
}

/// The store database's committed transactions (every query outside a transaction is one) and rows written, from
/// PostgreSQL's own statistics; `None` on the SQLite store. A backend reports its counts when it goes idle, at least
/// every 10 s: the wait lets the coordinator's connections report theirs.
async fn store_work(db: Option<&TestDb>) -> Option<(i64, i64)> {
    let db = db?;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut conn = db.sql().await;
    let row: (i64, i64) = sqlx::query_as(
        "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM pg_stat_database
          WHERE datname = current_database()",
    )
    .fetch_one(&mut conn)
    .await
    .expect("pg_stat_database");
    let _ = conn.close().await;
    Some(row)
}

/// etcd's count of requests it has handled, from its own metrics.
fn etcd_requests() -> u64 {
    let out = std::process::Command::new("curl").args(["-s", &format!("{}/metrics", etcd_url())]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Sum and count of each of the coordinator's call-duration histograms, by metric and operation.
type CallTotals = std::collections::BTreeMap<String, (f64, f64)>;

/// One kind of the coordinator's calls during a rollout.
struct Calls {
    /// `store record`, `lock acquire`, ...
    name: String,
    per_step: f64,
    mean_ms: f64,
}

/// The coordinator's store and lock call durations, from its `/metrics`.
fn coordinator_calls(address: &str) -> CallTotals {
    let out = std::process::Command::new("curl").args(["-s", &format!("http://{address}/metrics")]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let mut totals = CallTotals::new();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        for (metric, kind) in [
            ("flotilla_store_operation_duration_seconds", "store"),
            ("flotilla_lock_operation_duration_seconds", "lock"),
        ] {
            let Some(rest) = series.strip_prefix(metric) else { continue };
            let Some((part, labels)) = rest.split_once('{') else { continue };
            let Some(operation) = labels.split('"').nth(1) else { continue };
            let entry = totals.entry(format!("{kind} {operation}")).or_default();
            match part {
                "_sum" => entry.0 = value,
                "_count" => entry.1 = value,
                _ => {}
            }
        }
    }
    totals
}

fn per_step(before: &CallTotals, after: &CallTotals, steps: usize) -> Vec<Calls> {
    after
        .iter()
        .filter_map(|(name, (sum, count))| {
            let (sum0, count0) = before.get(name).copied().unwrap_or_default();
            let n = count - count0;
            (n > 0.0).then(|| Calls { name: name.clone(), per_step: n / steps as f64, mean_ms: (sum - sum0) / n * 1e3 })
        })
        .collect()
}

struct FleetRun {
    rollout: Duration,
    noop: Duration,
    etcd_per_step: f64,
    etcd_noop: u64,
    /// With BENCH_STORE=postgres: the store's transactions and rows written per step of the rollout.
    store_per_step: Option<(f64, f64)>,
    /// The coordinator's store and lock calls during the rollout: per step, and their mean time.
    calls: Vec<Calls>,
    coordinator_mib: f64,
    agent_mib: f64,
    /// The largest agent's anonymous (heap, stacks) and file-backed (the binary's pages) RSS after the no-op re-run.
    agent_anon_mib: f64,
    agent_file_mib: f64,
}

/// The fleet's runs: the first contact, the timed rollout (each target's migrations in one transaction with `group`),
/// the no-op re-run.
async fn fleet(s: &Scenario, urls: &[String], dir: &std::path::Path, group: bool) -> FleetRun {
    let agents: Vec<(String, String)> = (1..=s.agents).map(|i| (format!("agent-{i}"), "*".to_string())).collect();
    let globs: Vec<(&str, &str)> = agents.iter().map(|(a, g)| (a.as_str(), g.as_str())).collect();
    // BENCH_STORE=postgres: the coordinator's store on the test PostgreSQL server, which counts its transactions.
    let store_db = if bench_store_on_postgres() { Some(TestDb::new(Postgres).await) } else { None };
    let store = store_db.as_ref().map(|db| db.url.clone());
    let mut fleet = Fleet::prepare(&globs, Some(etcd_url()), 10, Vec::new(), store).await;
    let metrics = format!("127.0.0.1:{}", flotilla_tests::fleet::free_port());
    fleet.coordinator_args = vec!["--metrics-listen".into(), metrics.clone()];
    fleet.start_coordinator().await;
    // Every target's connection kept warm for the no-op re-run, unless BENCH_MAX_IDLE says how many (the agent's
    // default is 64).
    let max_idle = std::env::var("BENCH_MAX_IDLE").ok().and_then(|v| v.parse().ok()).unwrap_or(s.n + 16);
    fleet.agent_config = format!("[connections]\nmax_idle = {max_idle}\nidle_secs = 300\n");
    let targets: Vec<FleetTarget> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| FleetTarget::new(&format!("t-{i:05}"), url, &[("env", "bench")]))
        .collect();
    for (i, (agent, _)) in agents.iter().enumerate() {
        let mine: Vec<FleetTarget> = targets.iter().skip(i).step_by(s.agents).cloned().collect();
        fleet.start_agent(agent, &mine).await;
    }
    fleet.wait_targets(s.n).await;
    let mut client = OperatorServiceClient::new(fleet.channel_as("admin").await);
    let bundle = Bundle::from_dir(dir).expect("bundle").to_json().into_bytes();
    rollout(&mut client, &bundle, 1, s.n, false).await;
    let store_before = store_work(store_db.as_ref()).await;
    let etcd_before = etcd_requests();
    let calls_before = coordinator_calls(&metrics);
    let started = Instant::now();
    rollout(&mut client, &bundle, 0, s.n, group).await;
    let rollout_time = started.elapsed();
    let etcd_rollout = etcd_requests() - etcd_before;
    let calls = per_step(&calls_before, &coordinator_calls(&metrics), s.n);
    let store_per_step = store_work(store_db.as_ref())
        .await
        .zip(store_before)
        .map(|(after, before)| ((after.0 - before.0) as f64 / s.n as f64, (after.1 - before.1) as f64 / s.n as f64));
    let etcd_before = etcd_requests();
    let started = Instant::now();
    rollout(&mut client, &bundle, 0, s.n, false).await;
    let noop = started.elapsed();
    let etcd_noop = etcd_requests() - etcd_before;
    let pids = fleet.pids();
    let rss = |name: &str| pids.iter().filter(|(n, _)| n.starts_with(name)).map(|(_, p)| peak_rss_mib(*p)).collect();
    let coordinator: Vec<f64> = rss("coordinator");
    let agents_rss: Vec<f64> = rss("agent");
    let largest = pids
        .iter()
        .filter(|(n, _)| n.starts_with("agent"))
        .max_by(|a, b| peak_rss_mib(a.1).total_cmp(&peak_rss_mib(b.1)));
    let (agent_anon_mib, agent_file_mib) = largest.map(|(_, p)| rss_parts_mib(*p)).unwrap_or_default();
    fleet.stop().await;
    FleetRun {
        rollout: rollout_time,
        noop,
        etcd_per_step: etcd_rollout as f64 / s.n as f64,
        store_per_step,
        calls,
        etcd_noop,
        coordinator_mib: coordinator.iter().copied().fold(0.0, f64::max),
        agent_mib: agents_rss.iter().copied().fold(0.0, f64::max),
        agent_anon_mib,
        agent_file_mib,
    }
}

/// Submits a plan up to `to` (0: all) and waits for its end.
async fn rollout(
    client: &mut OperatorServiceClient<tonic::transport::Channel>,
    bundle: &[u8],
    to: u64,
    n: usize,
    group: bool,
) {
    let plan = client
        .submit_plan(pb::SubmitPlanRequest {
            bundle: bundle.to_vec(),
            selector: "env=bench".into(),
            goal: Some(pb::Goal { direction: pb::Direction::Up as i32, version: to.to_string() }),
            strategy: Some(pb::Strategy {
                waves: vec!["100%".into()],
                max_parallel: PARALLEL as u32,
                group,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner()
        .summary
        .expect("summary");
    let mut events =
        client.watch_plan(pb::WatchPlanRequest { id: plan.id.clone(), after: 0 }).await.expect("watch").into_inner();
    while events.message().await.expect("event").is_some() {}
    let detail = client.get_plan(pb::GetPlanRequest { id: plan.id }).await.expect("plan").into_inner();
    let summary = detail.summary.expect("summary");
    assert_eq!((summary.state(), summary.succeeded as usize), (pb::PlanState::Succeeded, n), "{summary:?}");
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

async fn scenario(s: Scenario, runs: usize) {
    let dbs = s.databases().await;
    let urls: Vec<String> = dbs.iter().map(|d| d.url.clone()).collect();
    let dir = migrations(s.engine);
    let (mut loops, mut bares, mut executors, mut fleets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut grouped = Vec::new();
    let fleet_only = fleet_only();
    for _ in 0..runs {
        if !fleet_only {
            let shell = tokio::task::block_in_place(|| shell_loop(s.engine, &urls));
            if let Some(d) = shell {
                loops.push(d);
                reset(s.engine, &urls).await;
            }
            bares.push(bare(s.engine, &urls).await);
            reset(s.engine, &urls).await;
            executors.push(executor_only(&urls, dir.path()).await);
            reset(s.engine, &urls).await;
        }
        fleets.push(fleet(&s, &urls, dir.path(), false).await);
        reset(s.engine, &urls).await;
        // The benchmark's MariaDB DDL and MongoDB collMod cannot run in one transaction: `--group` on PostgreSQL.
        if s.engine == Postgres {
            grouped.push(fleet(&s, &urls, dir.path(), true).await.rollout);
            reset(s.engine, &urls).await;
        }
    }
    let f = median(fleets.iter().map(|r| r.rollout).collect());
    let z = median(fleets.iter().map(|r| r.noop).collect());
    let mid = |v: Vec<f64>| {
        let mut v = v;
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("{}", s.name());
    if !loops.is_empty() {
        let l = median(loops.clone());
        println!("  shell loop (one client per database, xargs -P {PARALLEL}): {}", secs(l));
        println!("  fleet / shell loop:                               {:.2}x", f.as_secs_f64() / l.as_secs_f64());
    }
    if fleet_only {
        println!("  fleet, submit to finished:                        {}", secs(f));
    } else {
        let (b, e) = (median(bares), median(executors));
        println!("  bare loop (the databases' own work):              {}", secs(b));
        println!("  executor only:                                    {}  ({:+.0}% over bare)", secs(e), pct(e, b));
        println!("  fleet, submit to finished:                        {}  ({:+.0}% over bare)", secs(f), pct(f, b));
    }
    if !grouped.is_empty() {
        let g = median(grouped);
        let against_loop = match loops.first() {
            Some(_) => format!(", {:.2}x the shell loop", g.as_secs_f64() / median(loops.clone()).as_secs_f64()),
            None => String::new(),
        };
        println!("  fleet --group (one transaction per target):       {}{against_loop}", secs(g));
    }
    println!(
        "  fleet, no-op re-run:                              {}  ({:.2} ms per target)",
        secs(z),
        ms(z) / s.n as f64
    );
    println!(
        "  etcd requests per step (rollout): {:.1}; whole no-op re-run: {}",
        mid(fleets.iter().map(|r| r.etcd_per_step).collect()),
        mid(fleets.iter().map(|r| r.etcd_noop as f64).collect())
    );
    if let Some((transactions, rows)) = fleets.iter().find_map(|r| r.store_per_step) {
        println!(
            "  store (PostgreSQL) per step (rollout, last run): {transactions:.1} transactions, {rows:.1} rows written"
        );
    }
    if let Some(last) = fleets.last() {
        let calls: Vec<String> =
            last.calls.iter().map(|c| format!("{} {:.2} x {:.2} ms", c.name, c.per_step, c.mean_ms)).collect();
        println!("  coordinator calls per step (rollout, last run): {}", calls.join(", "));
    }
    println!(
        "  peak RSS: coordinator {:.1} MiB, agent {:.1} MiB (at the end: {:.1} MiB of heap, {:.1} MiB of mapped files)",
        mid(fleets.iter().map(|r| r.coordinator_mib).collect()),
        mid(fleets.iter().map(|r| r.agent_mib).collect()),
        mid(fleets.iter().map(|r| r.agent_anon_mib).collect()),
        mid(fleets.iter().map(|r| r.agent_file_mib).collect()),
    );
    println!();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(a: Duration, b: Duration) -> f64 {
    (a.as_secs_f64() / b.as_secs_f64() - 1.0) * 100.0
}

/// BENCH_ONLY: unset, or `fleet`.
fn fleet_only() -> bool {
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("fleet") => true,
        Err(_) => false,
        Ok(other) => panic!("BENCH_ONLY={other}: the only runner that runs alone is `fleet`"),
    }
}

fn main() {
    // Refused before anything runs.
    let _ = (bench_store_on_postgres(), fleet_only());
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let scenarios = std::env::var("BENCH_SCENARIOS").unwrap_or_else(|_| DEFAULT_SCENARIOS.to_string());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!("Fleet rollouts: 3 migrations of 2 statements, parallelism {PARALLEL}, medians of {runs} run(s).\n");
    runtime.block_on(async {
        for s in scenarios.split(',').filter(|s| !s.is_empty()) {
            scenario(Scenario::parse(s), runs).await;
        }
    });
}
