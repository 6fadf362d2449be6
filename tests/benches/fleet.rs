//! What a fleet rollout costs over the databases' own work.
//!
//! N PostgreSQL databases, three migrations each (two statements apiece), at a parallelism of 8:
//! (a) a bare loop doing only the databases' work: per database, connect, then BEGIN, the statements and COMMIT
//!     for each migration; and
//! (a') what users run instead: `psql -1 -f` per database over the same databases, through `xargs -P 8`;
//! (b) a plan through a coordinator and an agent (in this process, gRPC over mTLS on loopback; SQLite store,
//!     in-process locks), timed from submit to the plan's end. Flotilla's work on top: scheduling, the target lock,
//!     the history table (lock, reads, records), progress events into the store, and the reports. The targets
//!     already have their history table (an untimed first plan adopts them), as in any rollout after the first.
//! (c) the no-op re-run: the same plan again, nothing pending.
//! Medians of five runs, fresh databases each time. Run with `tests/servers.sh start` first:
//!
//!     cargo bench -p flotilla-tests --bench fleet        (BENCH_TARGETS=48 to choose N)

use std::time::{Duration, Instant};

use flotilla_agent::daemon::config::{AgentConfig, TargetConfig, TlsFiles as AgentTls};
use flotilla_core::bundle::Bundle;
use flotilla_core::Engine::Postgres;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::operator_service_client::OperatorServiceClient;
use flotilla_tests::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

const PARALLEL: usize = 8;
const RUNS: usize = 5;
const MIGRATIONS: [(&str, &str); 3] = [
    ("CREATE TABLE accounts (id BIGINT PRIMARY KEY, name TEXT)", "INSERT INTO accounts VALUES (1, 'a')"),
    ("ALTER TABLE accounts ADD COLUMN status TEXT", "UPDATE accounts SET status = 'new'"),
    ("CREATE INDEX accounts_status ON accounts (status)", "ANALYZE accounts"),
];

/// Version 1 is a no-op applied untimed first (so every target already has its history table, as in steady
/// state); versions 2 to 4 are the timed rollout.
fn migrations() -> Dir {
    let dir = Dir::new();
    dir.migration(Postgres, 1, "adopt", "SELECT 1;", "SELECT 1;");
    for (i, (a, b)) in MIGRATIONS.iter().enumerate() {
        dir.migration(Postgres, i as i64 + 2, &format!("m{}", i + 2), &format!("{a};\n{b};"), "SELECT 1;");
    }
    dir
}

async fn bare(dbs: &[TestDb]) -> Duration {
    // Untimed, like the other two's first contact: one connection to each new database warms its caches.
    for db in dbs {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
        sqlx::Executor::execute(&mut conn, "SELECT 1").await.expect("select");
        let _ = conn.close().await;
    }
    let started = Instant::now();
    let chunks: Vec<Vec<String>> =
        (0..PARALLEL).map(|w| dbs.iter().skip(w).step_by(PARALLEL).map(|d| d.url.clone()).collect()).collect();
    let workers = chunks.into_iter().map(|urls| async move {
        for url in urls {
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
            for (a, b) in MIGRATIONS {
                for statement in ["BEGIN", a, b, "COMMIT"] {
                    sqlx::Executor::execute(&mut conn, statement).await.expect("statement");
                }
            }
            let _ = conn.close().await;
        }
    });
    futures_util::future::join_all(workers).await;
    started.elapsed()
}

/// The shell loop teams run today: one `psql -1 -f` per database (all three migrations in one transaction), eight
/// at a time through `xargs -P 8`.
fn psql_loop(dbs: &[TestDb]) -> Duration {
    let work = tempfile::tempdir().expect("dir");
    let sql: String = MIGRATIONS.iter().map(|(a, b)| format!("{a};\n{b};\n")).collect();
    std::fs::write(work.path().join("up.sql"), sql).expect("sql");
    let urls: String = dbs.iter().map(|d| format!("{}\n", d.url)).collect();
    std::fs::write(work.path().join("urls"), urls).expect("urls");
    let started = Instant::now();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("xargs -P {PARALLEL} -I{{}} psql -X -q -1 -v ON_ERROR_STOP=1 -f up.sql {{}} < urls > /dev/null"))
        .current_dir(work.path())
        .status()
        .expect("psql loop");
    assert!(status.success(), "the psql loop failed");
    started.elapsed()
}

/// The agent's work without the coordinator: per database, connect, run the executor up (lock, history,
/// migrations, records) and read the history back, as the agent does for an assignment.
async fn executor_only(dbs: &[TestDb], dir: &std::path::Path) -> Duration {
    let set = flotilla_core::read_dir(dir, &Default::default()).expect("read");
    // First contact, untimed, like the fleet run: version 1 creates each history table.
    executors(dbs, &set, flotilla_core::Request::Up { to: Some(flotilla_core::Version::from(1u32)) }).await;
    let started = Instant::now();
    executors(dbs, &set, flotilla_core::Request::Up { to: None }).await;
    started.elapsed()
}

async fn executors(dbs: &[TestDb], set: &flotilla_core::MigrationSet, request: flotilla_core::Request) {
    let chunks: Vec<Vec<String>> =
        (0..PARALLEL).map(|w| dbs.iter().skip(w).step_by(PARALLEL).map(|d| d.url.clone()).collect()).collect();
    let workers = chunks.into_iter().map(|urls| async move {
        for url in urls {
            let driver = flotilla_agent::connect(&url, &Default::default()).await.expect("connect");
            let mut ex = flotilla_agent::Executor::new(driver, "bench");
            ex.history().await.expect("history");
            ex.migrate(set, request, false).await.expect("migrate");
            ex.history().await.expect("history");
            ex.close().await;
        }
    });
    futures_util::future::join_all(workers).await;
}

fn certs(dir: &std::path::Path) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");
    let leaf = |sans: Vec<String>, uri: Option<&str>, server: bool| {
        let mut p = CertificateParams::new(sans).expect("params");
        if let Some(uri) = uri {
            p.subject_alt_names.push(SanType::URI(uri.try_into().expect("uri")));
        }
        p.extended_key_usages =
            vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &ca).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    let write = |name: &str, (cert, key): (String, String)| {
        std::fs::write(dir.join(format!("{name}.pem")), cert).expect("write");
        std::fs::write(dir.join(format!("{name}.key")), key).expect("write");
    };
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    write("coordinator", leaf(vec!["127.0.0.1".into()], None, true));
    write("admin", leaf(vec![], Some("spiffe://flotilla/operator/admin"), false));
    write("agent", leaf(vec![], Some("spiffe://flotilla/agent/agent/targets/*"), false));
}

/// The rollout, and the same plan again with nothing pending.
async fn fleet(dbs: &[TestDb], dir: &std::path::Path) -> (Duration, Duration) {
    let work = tempfile::tempdir().expect("dir");
    let c = work.path();
    certs(c);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let shutdown = CancellationToken::new();
    let config = flotilla_coordinator::Config {
        store: format!("sqlite://{}", c.join("store.db").display()),
        etcd: Vec::new(),
        etcd_prefix: flotilla_coordinator::config::DEFAULT_ETCD_PREFIX.into(),
        tls: Some(flotilla_coordinator::TlsFiles {
            ca: c.join("ca.pem"),
            cert: c.join("coordinator.pem"),
            key: c.join("coordinator.key"),
        }),
        service: flotilla_coordinator::service::Config::default(),
    };
    let coordinator = tokio::spawn(flotilla_coordinator::run(listener, config, shutdown.clone()));
    let agent = AgentConfig {
        name: "agent".into(),
        coordinator: format!("https://127.0.0.1:{port}"),
        tls: Some(AgentTls { ca: c.join("ca.pem"), cert: c.join("agent.pem"), key: c.join("agent.key") }),
        insecure_dev: false,
        heartbeat_secs: 1,
        connections: Default::default(),
        targets: dbs
            .iter()
            .enumerate()
            .map(|(i, db)| TargetConfig {
                name: format!("pg-{i:03}"),
                engine: None,
                labels: [("env".to_string(), "bench".to_string())].into(),
                url: Some(db.url.clone()),
                url_file: None,
                url_env: None,
            })
            .collect(),
    };
    let agent = tokio::spawn(flotilla_agent::daemon::run(agent, shutdown.clone()));
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(c.join("ca.pem")).expect("ca")))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(c.join("admin.pem")).expect("cert"),
            std::fs::read(c.join("admin.key")).expect("key"),
        ));
    let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    let mut client = OperatorServiceClient::new(channel);
    loop {
        let known = client.list_targets(pb::ListTargetsRequest::default()).await.expect("targets").into_inner();
        if known.targets.len() == dbs.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bundle = Bundle::from_dir(dir).expect("bundle").to_json().into_bytes();
    rollout(&mut client, &bundle, 1, dbs.len()).await; // first contact: creates each history table
    let started = Instant::now();
    rollout(&mut client, &bundle, 0, dbs.len()).await;
    let elapsed = started.elapsed();
    let started = Instant::now();
    rollout(&mut client, &bundle, 0, dbs.len()).await;
    let noop = started.elapsed();
    shutdown.cancel();
    let _ = agent.await;
    let _ = coordinator.await;
    (elapsed, noop)
}

/// Submits a plan up to `to` (0: all) and waits for its end.
async fn rollout(client: &mut OperatorServiceClient<tonic::transport::Channel>, bundle: &[u8], to: u64, n: usize) {
    let plan = client
        .submit_plan(pb::SubmitPlanRequest {
            bundle: bundle.to_vec(),
            selector: "env=bench".into(),
            goal: Some(pb::Goal { direction: pb::Direction::Up as i32, version: to.to_string() }),
            strategy: Some(pb::Strategy {
                waves: vec!["100%".into()],
                max_parallel: PARALLEL as u32,
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

fn main() {
    let n: usize = std::env::var("BENCH_TARGETS").ok().and_then(|v| v.parse().ok()).unwrap_or(48);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        // BENCH_LOG=1 logs each step (RUST_LOG=info), to see where the time goes.
        let _telemetry = std::env::var("BENCH_LOG").is_ok().then(|| flotilla_proto::telemetry::init("bench", "warn"));
        let dir = migrations();
        let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(RUNS);
        let (mut bares, mut psqls, mut fleets, mut noops, mut executors) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Sixteen at a time: a thousand connections at once are more than the server takes.
        let fresh = || {
            use futures_util::StreamExt;
            futures_util::stream::iter(0..n).map(|_| TestDb::new(Postgres)).buffer_unordered(16).collect::<Vec<_>>()
        };
        for _ in 0..runs {
            bares.push(bare(&fresh().await).await);
            let dbs = fresh().await;
            psqls.push(tokio::task::block_in_place(|| psql_loop(&dbs)));
            executors.push(executor_only(&fresh().await, dir.path()).await);
            let (f, noop) = fleet(&fresh().await, dir.path()).await;
            fleets.push(f);
            noops.push(noop);
        }
        let (b, p, f, e, z) = (
            median(bares.clone()),
            median(psqls.clone()),
            median(fleets.clone()),
            median(executors.clone()),
            median(noops.clone()),
        );
        println!("fleet rollout: {n} PostgreSQL databases x {} migrations, parallelism {PARALLEL}", MIGRATIONS.len());
        println!("  bare loop (connect, BEGIN, statements, COMMIT): {b:?}  runs {bares:?}");
        println!("  psql -1 -f per database, xargs -P {PARALLEL}:       {p:?}  runs {psqls:?}");
        println!("  executor only (no coordinator):                 {e:?}  runs {executors:?}");
        println!("  flotilla plan (submit to finished):              {f:?}  runs {fleets:?}");
        println!("  flotilla no-op re-run (nothing pending):         {z:?}  runs {noops:?}");
        println!(
            "  fleet / psql loop: {:.2}x; fleet over the bare loop: {:.1}%",
            f.as_secs_f64() / p.as_secs_f64(),
            (f.as_secs_f64() / b.as_secs_f64() - 1.0) * 100.0
        );
    });
}
