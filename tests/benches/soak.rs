//! Soak: three agents over 300 targets on PostgreSQL, MariaDB and MongoDB roll plans out and back while real faults
//! are injected at random for a bounded time (SIGKILL and a 2 s restart of an agent or the coordinator; an agent's
//! link to the coordinator blackholed, reset or delayed through a proxy). Then everything is healed, the last plans
//! converge, and every target is checked: each migration's row is there exactly when its history says it is
//! applied (lost 0), and never twice (double-applied 0). Not part of `tests/run`:
//!
//!   tests/servers.sh start && source tests/.servers/env
//!   cargo bench -p flotilla-tests --bench soak            # SOAK_SECS=120 SOAK_TARGETS=300 SOAK_SEED=1

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_core::Engine::{self, Mongodb, Mysql, Postgres};
use flotilla_tests::fleet::{Fleet, FleetTarget};
use flotilla_tests::proxy::{Fault, Proxy};
use flotilla_tests::*;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Three migrations per engine; each inserts a row naming its version into `runs`, so a second run shows.
fn bundle() -> Dir {
    let dir = Dir::new();
    for (engine, sub, sleep) in
        [(Postgres, "postgres", "SELECT pg_sleep(0.2);"), (Mysql, "mysql", "SELECT SLEEP(0.2);")]
    {
        let _ = engine;
        dir.file(&format!("{sub}/000001_runs.up.sql"), "CREATE TABLE runs (v INT);\nINSERT INTO runs VALUES (1);")
            .file(&format!("{sub}/000001_runs.down.sql"), "DROP TABLE runs;")
            .file(&format!("{sub}/000002_two.up.sql"), &format!("{sleep}\nINSERT INTO runs VALUES (2);"))
            .file(&format!("{sub}/000002_two.down.sql"), "DELETE FROM runs WHERE v = 2;")
            .file(&format!("{sub}/000003_three.up.sql"), "INSERT INTO runs VALUES (3);")
            .file(&format!("{sub}/000003_three.down.sql"), "DELETE FROM runs WHERE v = 3;");
    }
    dir.file("mongodb/000001_runs.up.json", r#"[{"create": "runs"}, {"insert": "runs", "documents": [{"v": 1}]}]"#)
        .file("mongodb/000001_runs.down.json", r#"[{"drop": "runs"}]"#)
        .file("mongodb/000002_two.up.json", r#"[{"insert": "runs", "documents": [{"v": 2}]}]"#)
        .file("mongodb/000002_two.down.json", r#"[{"delete": "runs", "deletes": [{"q": {"v": 2}, "limit": 0}]}]"#)
        .file("mongodb/000003_three.up.json", r#"[{"insert": "runs", "documents": [{"v": 3}]}]"#)
        .file("mongodb/000003_three.down.json", r#"[{"delete": "runs", "deletes": [{"q": {"v": 3}, "limit": 0}]}]"#);
    dir
}

/// The versions recorded in `runs`, with repeats.
async fn rows(db: &TestDb) -> Vec<i64> {
    use futures_util::TryStreamExt;
    if db.engine == Mongodb {
        let docs: Vec<bson::Document> = match db.mongo().await.collection("runs").find(bson::doc! {}).await {
            Ok(cursor) => cursor.try_collect().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        return docs.iter().filter_map(|d| d.get_i32("v").ok().map(i64::from)).collect();
    }
    if !db.has_table("runs").await {
        return Vec::new();
    }
    let mut conn = db.sql().await;
    sqlx::query_scalar::<_, i32>("SELECT v FROM runs")
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(i64::from)
        .collect()
}

struct Agent {
    targets: Vec<FleetTarget>,
    proxy: Proxy,
}

#[derive(Default)]
struct Tally {
    faults: BTreeMap<&'static str, u64>,
    plans: u64,
    succeeded: u64,
    failed: u64,
}

/// Waits for plan `id` to end; `None` if it has not within `limit` (CLI failures while the coordinator is down are
/// retried).
async fn wait_over(fleet: &Mutex<Fleet>, id: &str, limit: Duration) -> Option<serde_json::Value> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let run = fleet.lock().await.cli(&["--json", "plan", "show", id]).await;
        if run.code == 0 {
            let plan = run.json();
            if matches!(plan["state"].as_str(), Some("succeeded" | "halted" | "aborted")) {
                return Some(plan);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// Submits a plan, retrying while the coordinator is away (exit 3); `None` if it is refused (a rollback of a
/// plan that touched nothing, say).
async fn submit(fleet: &Mutex<Fleet>, args: &[&str]) -> Option<String> {
    for _ in 0..600 {
        let run = fleet.lock().await.cli(args).await;
        match run.code {
            0 => return run.json()["id"].as_str().map(str::to_string),
            3 => tokio::time::sleep(Duration::from_millis(500)).await,
            _ => return None,
        }
    }
    None
}

async fn restart_agent(fleet: &Mutex<Fleet>, agents: &BTreeMap<String, Agent>, name: &str) {
    let agent = &agents[name];
    fleet.lock().await.start_agent_via(name, &agent.targets, agent.proxy.addr().port()).await;
}

async fn inject(fleet: Arc<Mutex<Fleet>>, agents: Arc<BTreeMap<String, Agent>>, until: Instant, seed: u64) -> Tally {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    let names: Vec<String> = agents.keys().cloned().collect();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..4000))).await;
        let name = &names[rng.gen_range(0..names.len())];
        let proxy = &agents[name].proxy;
        let kind = match rng.gen_range(0..5) {
            0 => {
                fleet.lock().await.kill_agent(name).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                restart_agent(&fleet, &agents, name).await;
                "agent kill -9, restart after 2 s"
            }
            1 => {
                fleet.lock().await.kill_coordinator().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                fleet.lock().await.start_coordinator().await;
                "coordinator kill -9, restart after 2 s"
            }
            2 => {
                proxy.set(Fault::Blackhole);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(3000..8000))).await;
                proxy.set(Fault::Reset);
                tokio::time::sleep(Duration::from_millis(200)).await;
                proxy.set(Fault::Pass);
                "agent<->coordinator blackhole 3-8 s"
            }
            3 => {
                proxy.set(Fault::Reset);
                tokio::time::sleep(Duration::from_millis(200)).await;
                proxy.set(Fault::Pass);
                "agent<->coordinator reset"
            }
            _ => {
                proxy.set(Fault::Delay(Duration::from_millis(200)));
                tokio::time::sleep(Duration::from_secs(5)).await;
                proxy.set(Fault::Pass);
                "agent<->coordinator 200 ms delay for 5 s"
            }
        };
        *tally.faults.entry(kind).or_default() += 1;
    }
    tally
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let secs = env_num("SOAK_SECS", 120);
    let n = env_num("SOAK_TARGETS", 300) as usize;
    let seed = env_num("SOAK_SEED", 1);
    let started = Instant::now();
    let engines: Vec<(Engine, &str)> = (0..n)
        .map(|i| match i % 5 {
            0 | 1 => (Postgres, "pg"),
            2 | 3 => (Mysql, "my"),
            _ => (Mongodb, "mo"),
        })
        .collect();
    let dbs = futures_util::future::join_all(engines.iter().map(|(e, _)| TestDb::new(*e))).await;
    let mut fleet =
        Fleet::start(&[("agent-pg", "pg-*"), ("agent-my", "my-*"), ("agent-mo", "mo-*")], Some(etcd_url()), 3).await;
    let mut agents = BTreeMap::new();
    for prefix in ["pg", "my", "mo"] {
        let targets: Vec<FleetTarget> = engines
            .iter()
            .zip(&dbs)
            .enumerate()
            .filter(|(_, ((_, p), _))| *p == prefix)
            .map(|(i, (_, db))| FleetTarget::new(&format!("{prefix}-{i:04}"), &db.url, &[("env", "soak")]))
            .collect();
        let proxy = Proxy::start(&format!("127.0.0.1:{}", fleet.port)).await;
        fleet.start_agent_via(&format!("agent-{prefix}"), &targets, proxy.addr().port()).await;
        agents.insert(format!("agent-{prefix}"), Agent { targets, proxy });
    }
    fleet.wait_targets(n).await;
    let setup = started.elapsed();
    println!("soak: {n} targets ({} PostgreSQL, {} MariaDB, {} MongoDB), 3 agents, faults for {secs} s, seed {seed}; set up in {:.1} s",
        engines.iter().filter(|(e, _)| *e == Postgres).count(),
        engines.iter().filter(|(e, _)| *e == Mysql).count(),
        engines.iter().filter(|(e, _)| *e == Mongodb).count(),
        setup.as_secs_f64());

    let dir = bundle();
    let dir_arg = dir.path().to_str().expect("utf-8").to_string();
    let fleet = Arc::new(Mutex::new(fleet));
    let agents = Arc::new(agents);
    let until = Instant::now() + Duration::from_secs(secs);
    let injector = tokio::spawn(inject(fleet.clone(), agents.clone(), until, seed));

    // Out and back, again and again, while the faults go on.
    let mut tally_plans = 0u64;
    let (mut succeeded, mut failed, mut unconverged) = (0u64, 0u64, 0u64);
    let mut last: Option<String> = None;
    let up = [
        "--json",
        "plan",
        "create",
        "--dir",
        &dir_arg,
        "--waves",
        "10%,50%,100%",
        "--parallel",
        "16",
        "--max-failures",
        "100000",
    ];
    while Instant::now() < until {
        for args in [&up[..], &["--json", "rollback"][..]] {
            let id = match (args[1], &last) {
                ("rollback", Some(prev)) => submit(&fleet, &[args, &[prev.as_str()]].concat()).await,
                ("rollback", None) => None,
                _ => submit(&fleet, args).await,
            };
            let Some(id) = id else { continue };
            tally_plans += 1;
            match wait_over(&fleet, &id, Duration::from_secs(300)).await {
                Some(plan) => {
                    for s in plan["steps"].as_array().into_iter().flatten() {
                        match s["state"].as_str() {
                            Some("succeeded") => succeeded += 1,
                            Some("failed") => failed += 1,
                            _ => {}
                        }
                    }
                }
                None => unconverged += 1,
            }
            last = Some(id);
        }
    }
    let mut tally = injector.await.expect("injector");
    tally.plans = tally_plans;
    tally.succeeded = succeeded;
    tally.failed = failed;

    // Heal, and bring every target up once more with nothing failing on purpose.
    for agent in agents.values() {
        agent.proxy.set(Fault::Pass);
    }
    let converged_last = match submit(&fleet, &up).await {
        Some(id) => wait_over(&fleet, &id, Duration::from_secs(300)).await.is_some(),
        None => false,
    };

    // The invariants, read from every database directly.
    let (mut double, mut lost, mut dirty, mut at_top) = (0usize, 0usize, 0usize, 0usize);
    for db in &dbs {
        let history = db.history().await;
        let applied: Vec<u128> = history.iter().filter(|(_, s, _)| s != "dirty").map(|(v, _, _)| *v).collect();
        let is_dirty = history.iter().any(|(_, s, _)| s == "dirty");
        let mut found = rows(db).await;
        found.sort();
        let mut once = found.clone();
        once.dedup();
        if once.len() != found.len() {
            double += 1;
        }
        if is_dirty {
            dirty += 1;
        } else if once.iter().map(|v| *v as u128).collect::<Vec<_>>() != applied {
            lost += 1;
        }
        if applied == [1, 2, 3] {
            at_top += 1;
        }
    }
    let fleet = fleet.lock().await;
    println!(
        "plans: {} (out and back), steps: {} succeeded, {} failed; {} plans did not end within 5 min",
        tally.plans, tally.succeeded, tally.failed, unconverged
    );
    println!("faults injected: {}", tally.faults.values().sum::<u64>());
    for (kind, count) in &tally.faults {
        println!("  {count:>4}  {kind}");
    }
    println!("final plan converged: {converged_last}; targets at the top version: {at_top} of {n}; dirty (left for repair, as recorded): {dirty}");
    println!("double-applied: {double}   lost: {lost}   (of {n} targets)");
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    drop(fleet);
    if double > 0 || lost > 0 || !converged_last {
        std::process::exit(1);
    }
}
