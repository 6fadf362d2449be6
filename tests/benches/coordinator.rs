//! The coordinator's own throughput, without databases: 10,000 targets over 10 agents in one plan.
//!
//! The real `flotilla-coordinator` process (SQLite store; in-process locks, then etcd), and 10 agents in this
//! process that speak the agents' gRPC protocol over mTLS with a driver that does nothing: each check is answered
//! at once, each assignment is reported started and then succeeded at once. What is measured is the
//! coordinator: scheduling, locks, store writes, streams. Printed per lock service:
//! - how long the agents' registrations took (all 10 at once; the slowest);
//! - target-steps per second through assignments (every target's check answers "not at the goal"), and through
//!   checks (a re-run: every target at its goal);
//! - the coordinator's peak RSS;
//! - how long a progress event takes from an agent to a `plan watch` stream (p50, p99), under a steady load (steps
//!   of 100 ms, 64 at once) and at full throughput (where it includes the wait in the store's queue); and how long
//!   after a pause returns the last assignment reaches an agent.
//!
//! And, in this process on the same store, the time of one scheduler pass over the 10,000-target plan while
//! steps finish (the pass that runs after every result): median, p99 and maximum of about 400 passes.
//!
//!     cargo build --release --workspace --bins && cargo bench -p flotilla-tests --bench coordinator
//!     (BENCH_TARGETS, BENCH_AGENTS, BENCH_PARALLEL to change the defaults 10000, 10, 256; BENCH_ONLY=in-process,
//!     etcd or pass, comma-separated, to run only those parts; BENCH_STORE=postgres for the store on the test
//!     PostgreSQL server instead of the SQLite file)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_core::bundle::Bundle;
use flotilla_core::Engine::Sqlite;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_service_client::AgentServiceClient;
use flotilla_proto::v1::operator_service_client::OperatorServiceClient;
use flotilla_tests::fleet::Fleet;
use flotilla_tests::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// How the fake agents behave.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Checks say "not at the goal": every step is assigned.
    Assign,
    /// Checks say "at the goal": no step is assigned.
    AtGoal,
    /// As `Assign`, each step taking this long.
    Slow(Duration),
}

#[derive(Default)]
struct Seen {
    /// When each target's step-started progress was sent.
    sent: HashMap<String, Instant>,
    /// When each assignment arrived.
    assigned: Vec<Instant>,
    /// How long each agent's registration took.
    registered: Vec<Duration>,
}

/// One fake agent: registers `targets`, heartbeats, and answers what arrives on its stream.
async fn agent(channel: Channel, name: String, targets: Vec<String>, mode: Arc<Mutex<Mode>>, seen: Arc<Mutex<Seen>>) {
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(flotilla_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(flotilla_proto::MAX_MESSAGE_BYTES);
    let infos = targets
        .iter()
        .map(|t| pb::TargetInfo {
            name: t.clone(),
            engine: pb::Engine::Sqlite as i32,
            labels: [("env".to_string(), "bench".to_string())].into(),
        })
        .collect();
    let started = Instant::now();
    client
        .register(pb::RegisterRequest {
            agent_version: "bench".into(),
            targets: infos,
            name: name.clone(),
            // It keeps no database connections: the coordinator checks the fewest targets ahead.
            max_idle_connections: 0,
        })
        .await
        .expect("register");
    seen.lock().expect("seen").registered.push(started.elapsed());
    let running: Arc<Mutex<Vec<pb::StepRef>>> = Arc::default();
    {
        let (mut client, name, running) = (client.clone(), name.clone(), running.clone());
        let applied: HashMap<String, String> = targets.iter().map(|t| (t.clone(), "0".to_string())).collect();
        tokio::spawn(async move {
            loop {
                let running = running.lock().expect("running").clone();
                let beat = pb::HeartbeatRequest {
                    agent_id: name.clone(),
                    running,
                    applied_versions: applied.clone(),
                    ..Default::default()
                };
                if client.heartbeat(beat).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let (progress, rx) = mpsc::unbounded_channel::<pb::ProgressEvent>();
    {
        let mut client = client.clone();
        tokio::spawn(async move { client.report_progress(UnboundedReceiverStream::new(rx)).await });
    }
    let mut stream = client
        .pull_assignments(pb::PullAssignmentsRequest { agent_id: name.clone(), bundles_kept: 4 })
        .await
        .expect("pull")
        .into_inner();
    while let Ok(Some(work)) = stream.message().await {
        let mode = *mode.lock().expect("mode");
        let mut client = client.clone();
        let name = name.clone();
        match work.work {
            Some(pb::work::Work::Check(c)) => {
                let outcomes = c
                    .targets
                    .into_iter()
                    .map(|t| pb::CheckOutcome {
                        target: t.target,
                        at_goal: mode == Mode::AtGoal,
                        applied_version: Some("1".into()),
                        version_before: Some("1".into()),
                        detail: String::new(),
                    })
                    .collect();
                tokio::spawn(async move {
                    let report = pb::CheckReport { plan_id: c.plan_id, agent_id: name, outcomes };
                    client.report_checks(report).await.expect("checks");
                });
            }
            Some(pb::work::Work::Assignment(a)) => {
                seen.lock().expect("seen").assigned.push(Instant::now());
                let step = pb::StepRef {
                    plan_id: a.plan_id.clone(),
                    target: a.target.clone(),
                    fencing_token: a.fencing_token,
                };
                running.lock().expect("running").push(step.clone());
                seen.lock().expect("seen").sent.insert(a.target.clone(), Instant::now());
                let _ = progress.send(pb::ProgressEvent {
                    plan_id: a.plan_id.clone(),
                    target: a.target.clone(),
                    fencing_token: a.fencing_token,
                    kind: pb::EventKind::StepStarted as i32,
                    version_before: "0".into(),
                    agent_id: name.clone(),
                    ..Default::default()
                });
                let running = running.clone();
                tokio::spawn(async move {
                    if let Mode::Slow(d) = mode {
                        tokio::time::sleep(d).await;
                    }
                    let result = pb::StepResult {
                        plan_id: a.plan_id,
                        target: a.target,
                        fencing_token: a.fencing_token,
                        succeeded: true,
                        applied_version: Some("1".into()),
                        version_before: Some("0".into()),
                        agent_id: name,
                        ..Default::default()
                    };
                    client.report_result(result).await.expect("result");
                    running.lock().expect("running").retain(|s| s != &step);
                });
            }
            None => {}
        }
    }
}

async fn submit(client: &mut OperatorServiceClient<Channel>, bundle: &[u8], parallel: usize) -> String {
    let plan = client
        .submit_plan(pb::SubmitPlanRequest {
            bundle: bundle.to_vec(),
            selector: "env=bench".into(),
            goal: Some(pb::Goal { direction: pb::Direction::Up as i32, version: "0".into() }),
            strategy: Some(pb::Strategy {
                waves: vec!["100%".into()],
                max_parallel: parallel as u32,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner();
    plan.summary.expect("summary").id
}

/// Waits for the plan's end; returns when each step-started event reached the watch stream, and the plan's state.
async fn watch(client: &mut OperatorServiceClient<Channel>, id: &str) -> (HashMap<String, Instant>, pb::PlanState) {
    let mut events =
        client.watch_plan(pb::WatchPlanRequest { id: id.into(), after: 0 }).await.expect("watch").into_inner();
    let mut started = HashMap::new();
    while let Some(e) = events.message().await.expect("event") {
        if e.kind == pb::EventKind::StepStarted as i32 {
            started.insert(e.target, Instant::now());
        }
    }
    let plan = client.get_plan(pb::GetPlanRequest { id: id.into() }).await.expect("plan").into_inner();
    (started, plan.summary.expect("summary").state())
}

/// How long each step-started event took from its agent to the watch stream, with when it was sent after the first.
fn latencies(seen: &Mutex<Seen>, arrived: &HashMap<String, Instant>) -> Vec<(Duration, Duration)> {
    let sent = std::mem::take(&mut seen.lock().expect("seen").sent);
    let Some(first) = sent.values().min().copied() else { return Vec::new() };
    arrived
        .iter()
        .filter_map(|(t, at)| {
            let sent = *sent.get(t)?;
            Some((at.saturating_duration_since(sent), sent.saturating_duration_since(first)))
        })
        .collect()
}

/// p50 and p99, and the events over 50 ms with when they were sent: late ones at the start queued behind the plan's
/// creation and its checks, not the steady state.
fn print_latencies(when: &str, latencies: &[(Duration, Duration)]) {
    let took: Vec<Duration> = latencies.iter().map(|(took, _)| *took).collect();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut late: Vec<&(Duration, Duration)> = latencies.iter().filter(|(took, _)| ms(*took) > 50.0).collect();
    late.sort_by_key(|(_, sent)| *sent);
    let sent = match (late.first(), late.last()) {
        (Some((_, first)), Some((_, last))) => {
            format!(", sent {:.0} to {:.0} ms after the first event", ms(*first), ms(*last))
        }
        _ => String::new(),
    };
    println!(
        "  progress event, agent to plan watch, {when}: p50 {:.1} ms, p99 {:.1} ms ({} events; {} over 50 ms{sent})",
        ms(percentile(took.clone(), 0.5)),
        ms(percentile(took, 0.99)),
        latencies.len(),
        late.len(),
    );
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn bundle() -> Vec<u8> {
    let dir = Dir::new();
    dir.migration(Sqlite, 1, "noop", "SELECT 1;", "SELECT 1;");
    Bundle::from_dir(dir.path()).expect("bundle").to_json().into_bytes()
}

async fn throughput(etcd: Option<String>, n: usize, agents: usize, parallel: usize) {
    let names: Vec<String> = (1..=agents).map(|i| format!("agent-{i:02}")).collect();
    let globs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "*")).collect();
    let locks = if etcd.is_some() { "etcd locks" } else { "in-process locks" };
    let label = format!("{locks}, {}", store_name());
    let log = std::env::var("BENCH_COORDINATOR_LOG").ok().map(|l| vec![("RUST_LOG".to_string(), l)]);
    let store_db = postgres_store().await;
    let store_url = store_db.as_ref().map(|db| db.url.as_str());
    let fleet = Fleet::start_with_store(&globs, etcd, 10, log.unwrap_or_default(), store_url).await;
    let log_file = fleet.dir.path().join("coordinator.log");
    let mode = Arc::new(Mutex::new(Mode::Assign));
    let seen: Arc<Mutex<Seen>> = Arc::default();
    for (i, name) in names.iter().enumerate() {
        let targets: Vec<String> = (0..n).skip(i).step_by(agents).map(|t| format!("t-{t:05}")).collect();
        tokio::spawn(agent(fleet.channel_as(name).await, name.clone(), targets, mode.clone(), seen.clone()));
    }
    fleet.wait_targets(n).await;
    let mut client = OperatorServiceClient::new(fleet.channel_as("admin").await)
        .max_encoding_message_size(flotilla_proto::MAX_MESSAGE_BYTES);
    let bundle = bundle();

    let started = Instant::now();
    let id = submit(&mut client, &bundle, parallel).await;
    let submitted = started.elapsed();
    let (arrived, state) = watch(&mut client, &id).await;
    assert_eq!(state, pb::PlanState::Succeeded);
    let assigned = started.elapsed();
    let saturated = latencies(&seen, &arrived);

    *mode.lock().expect("mode") = Mode::AtGoal;
    let started = Instant::now();
    let id = submit(&mut client, &bundle, parallel).await;
    assert_eq!(watch(&mut client, &id).await.1, pb::PlanState::Succeeded);
    let checked = started.elapsed();

    // A plan whose steps take 100 ms each (a steady load, not the most the coordinator can take), watched; paused
    // mid-way: when did the last assignment arrive?
    *mode.lock().expect("mode") = Mode::Slow(Duration::from_millis(100));
    let id = submit(&mut client, &bundle, parallel.min(64)).await;
    let watched = {
        let (mut client, id) = (client.clone(), id.clone());
        tokio::spawn(async move { watch(&mut client, &id).await.0 })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.pause_plan(pb::PlanAction { id: id.clone(), reason: "bench".into() }).await.expect("pause");
    let paused = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let last = seen.lock().expect("seen").assigned.iter().max().copied().unwrap_or(paused);
    let after_pause = last.saturating_duration_since(paused);
    client.abort_plan(pb::PlanAction { id, reason: "bench".into() }).await.expect("abort");
    let steady = latencies(&seen, &watched.await.expect("watch"));

    let rss = fleet.pids().iter().find(|(n, _)| n == "coordinator").map(|(_, p)| peak_rss_mib(*p)).unwrap_or(0.0);
    let per_sec = |d: Duration| n as f64 / d.as_secs_f64();
    println!("{label}: {n} targets over {agents} agents, parallelism {parallel}");
    let registered = seen.lock().expect("seen").registered.iter().max().copied().unwrap_or_default();
    println!("  the agents' registrations, all at once: the slowest {:.0} ms", registered.as_secs_f64() * 1e3);
    println!(
        "  through assignments: {:.2} s, {:.0} target-steps/s (the plan's submission, its {n} steps stored: {:.0} ms)",
        assigned.as_secs_f64(),
        per_sec(assigned),
        submitted.as_secs_f64() * 1e3
    );
    println!(
        "  through checks (re-run at the goal): {:.2} s, {:.0} target-steps/s",
        checked.as_secs_f64(),
        per_sec(checked)
    );
    print_latencies("steps of 100 ms, 64 at once", &steady);
    print_latencies("at the most steps/s it takes", &saturated);
    println!("  last assignment after a pause returned: {:.1} ms", after_pause.as_secs_f64() * 1e3);
    println!("  coordinator peak RSS: {rss:.0} MiB\n");
    if let Ok(copy) = std::env::var("BENCH_KEEP_LOG") {
        std::fs::copy(&log_file, copy).expect("keep the log");
    }
}

/// One scheduler pass over a plan of `n` targets, in this process: the pass after results arrive.
async fn scheduler_pass(n: usize, agents: usize, parallel: usize) {
    use flotilla_coordinator::identity::Identity;
    use flotilla_coordinator::service::{CheckOutcome, Config, Coordinator, Outcome, Submission, Work};
    use flotilla_coordinator::{InProcessLock, SqlStore};
    use flotilla_core::fleet::{Goal, Strategy, Target, WaveSpec};
    let dir = tempfile::tempdir().expect("dir");
    let store_db = postgres_store().await;
    let url = match &store_db {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", dir.path().join("store.db").display()),
    };
    let store = Arc::new(SqlStore::open(&url).await.expect("store"));
    let config = Config { tick: Duration::from_secs(3600), ..Config::default() };
    let c = Coordinator::new(store, Arc::new(InProcessLock::default()), config);
    let who = Identity::Insecure;
    let mut streams = Vec::new();
    for a in 0..agents {
        let name = format!("agent-{a:02}");
        let targets = (0..n)
            .skip(a)
            .step_by(agents)
            .map(|t| Target {
                name: format!("t-{t:05}"),
                engine: Sqlite,
                labels: [("env".to_string(), "bench".to_string())].into(),
                agent: name.clone(),
            })
            .collect();
        c.register(&who, &name, targets).await.expect("register");
        streams.push((name.clone(), c.connect(&who, &name).expect("connect").0));
    }
    let submission = Submission {
        bundle: bundle(),
        selector: "env=bench".parse().expect("selector"),
        goal: Goal::Up { to: None },
        strategy: Strategy {
            waves: vec![WaveSpec::Percent(100)],
            max_parallel: parallel as u32,
            ..Strategy::default()
        },
        phase: None,
        validate_on: None,
        dry_run: false,
        allow_lint: true,
    };
    let plan = c.submit(&who, submission).await.expect("submit").plan;
    let mut passes = Vec::new();
    let mut in_flight: Vec<(String, String, u64)> = Vec::new();
    for round in 0..400 {
        let started = Instant::now();
        c.tick().await.expect("tick");
        if round > 1 {
            passes.push(started.elapsed());
        }
        for (name, rx) in &mut streams {
            while let Ok(work) = rx.try_recv() {
                match work {
                    Work::Check(check) => {
                        let outcomes = check
                            .targets
                            .iter()
                            .map(|(t, _)| CheckOutcome {
                                target: t.clone(),
                                at_goal: false,
                                applied: None,
                                before: None,
                                detail: String::new(),
                            })
                            .collect();
                        c.checked(&who, name, &check.plan_id, outcomes).await.expect("checked");
                    }
                    Work::Assign(a) => in_flight.push((name.clone(), a.target, a.token)),
                }
            }
        }
        // Eight results arrive before the next pass.
        for (name, target, token) in in_flight.drain(..in_flight.len().min(8)) {
            let outcome = Outcome {
                plan_id: plan.id.clone(),
                target,
                token,
                error: None,
                version_before: Some(flotilla_core::Version::from(0u32)),
                applied_version: Some(flotilla_core::Version::from(1u32)),
                dirty: false,
            };
            c.result(&who, &name, outcome).await.expect("result");
        }
    }
    let ms = |p: f64| percentile(passes.clone(), p).as_secs_f64() * 1e3;
    println!(
        "scheduler pass over a plan of {n} targets, {} ({parallel} in flight, 8 results between passes; {} \
         passes): median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        store_name(),
        passes.len(),
        ms(0.5),
        ms(0.99),
        ms(1.0)
    );
}

/// BENCH_STORE=postgres: a database on the test PostgreSQL server for the coordinator's store (`None`: the SQLite
/// file).
async fn postgres_store() -> Option<TestDb> {
    match bench_store_on_postgres() {
        true => Some(TestDb::new(flotilla_core::Engine::Postgres).await),
        false => None,
    }
}

fn store_name() -> &'static str {
    if bench_store_on_postgres() {
        "PostgreSQL store (the test server)"
    } else {
        "SQLite store"
    }
}

/// BENCH_ONLY: the parts to run (all when unset); an unknown part is refused before anything runs.
fn parts() -> Vec<&'static str> {
    const PARTS: [&str; 3] = ["in-process", "etcd", "pass"];
    let Ok(only) = std::env::var("BENCH_ONLY") else { return PARTS.to_vec() };
    let chosen: Vec<&str> = only.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    if let Some(unknown) = chosen.iter().find(|p| !PARTS.contains(p)) {
        panic!("BENCH_ONLY: unknown part `{unknown}` (the parts: {})", PARTS.join(", "));
    }
    PARTS.into_iter().filter(|p| chosen.contains(p)).collect()
}

fn main() {
    let (n, agents, parallel) = (env("BENCH_TARGETS", 10_000), env("BENCH_AGENTS", 10), env("BENCH_PARALLEL", 256));
    let parts = parts();
    let _ = bench_store_on_postgres(); // refused before anything runs
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        for part in parts {
            match part {
                "in-process" => throughput(None, n, agents, parallel).await,
                "etcd" => throughput(Some(etcd_url()), n, agents, parallel).await,
                _ => scheduler_pass(n, agents, parallel).await,
            }
        }
    });
}
