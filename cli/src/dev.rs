//! `flotilla dev`: the whole fleet on embedded defaults, in one process. It makes a development CA, starts a
//! coordinator (SQLite store, in-process locks) and an agent over mTLS on loopback, gives the agent a dozen SQLite
//! databases (or the URLs given), rolls a sample migration set out in three waves with live progress, rolls the
//! fleet back, and checks every database's schema is what it was before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_agent::daemon::config::{AgentConfig, TargetConfig, TlsFiles as AgentTls};
use flotilla_agent::driver::redact;
use flotilla_agent::{connect as connect_db, ConnectOptions, Executor};
use flotilla_coordinator::config::TlsFiles;
use flotilla_core::schema::Schema;
use flotilla_core::Engine;
use flotilla_proto::v1 as pb;
use include_dir::{include_dir, Dir};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::certs::{Ca, Role};
use crate::exit::Code;
use crate::fleet::{self, Conn, Fail};
use crate::output::Output;

static SAMPLES: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/samples");

struct DevTarget {
    name: String,
    url: String,
    labels: BTreeMap<String, String>,
}

pub async fn run(out: Output, dbs: Vec<String>, count: usize, keep: Option<PathBuf>) -> Code {
    let mut temp = None;
    let workdir: PathBuf = match keep {
        Some(dir) => dir,
        None => match tempfile::Builder::new().prefix("flotilla-dev-").tempdir() {
            Ok(t) => temp.insert(t).path().to_path_buf(),
            Err(e) => return out.error(Code::Failed, &format!("cannot create a temporary directory: {e}")),
        },
    };
    let result = demo(out, &dbs, count, &workdir).await;
    drop(temp);
    match result {
        Ok(summary) => {
            if out.json {
                out.print_json(&summary);
            }
            Code::Ok
        }
        Err(Fail(code, message)) => out.error(code, &message),
    }
}

fn targets(dbs: &[String], count: usize, workdir: &Path) -> Result<Vec<DevTarget>, Fail> {
    let region = |i: usize| if i.is_multiple_of(2) { "eu" } else { "us" }.to_string();
    if dbs.is_empty() {
        let dir = workdir.join("databases");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Fail(Code::Failed, format!("cannot create {}: {e}", dir.display())))?;
        return Ok((1..=count)
            .map(|i| DevTarget {
                name: format!("tenant-{i:02}"),
                url: format!("sqlite://{}", dir.join(format!("tenant-{i:02}.db")).display()),
                labels: [("env".to_string(), "dev".to_string()), ("region".to_string(), region(i))].into(),
            })
            .collect());
    }
    dbs.iter()
        .enumerate()
        .map(|(i, url)| {
            let engine = Engine::from_url(url).ok_or_else(|| {
                Fail(
                    Code::BadInput,
                    format!("`{}` is not a postgres://, mysql://, sqlite:// or mongodb:// URL", redact(url)),
                )
            })?;
            Ok(DevTarget {
                name: format!("{engine}-{:02}", i + 1),
                url: url.clone(),
                labels: [("env".to_string(), "dev".to_string()), ("region".to_string(), region(i + 1))].into(),
            })
        })
        .collect()
}

fn write_samples(targets: &[DevTarget], dir: &Path) -> Result<(), Fail> {
    let io =
        |e: std::io::Error| Fail(Code::Failed, format!("cannot write sample migrations to {}: {e}", dir.display()));
    let mut engines: Vec<Engine> = targets.iter().filter_map(|t| Engine::from_url(&t.url)).collect();
    engines.sort_by_key(|e| e.as_str());
    engines.dedup();
    for engine in engines {
        let set = SAMPLES
            .get_dir(engine.as_str())
            .ok_or_else(|| Fail(Code::Failed, format!("no sample migrations for {engine}")))?;
        let into = dir.join(engine.as_str());
        std::fs::create_dir_all(&into).map_err(io)?;
        for file in set.files() {
            if let Some(name) = file.path().file_name() {
                std::fs::write(into.join(name), file.contents()).map_err(io)?;
            }
        }
    }
    Ok(())
}

fn write_certs(dir: &Path) -> Result<(), Fail> {
    let fail = |e: String| Fail(Code::Failed, e);
    let days = crate::certs::DEFAULT_DAYS;
    let ca = Ca::new("Flotilla dev CA", days).map_err(fail)?;
    let hosts = ["localhost".to_string(), "127.0.0.1".to_string()];
    let coordinator = ca.issue(Role::Coordinator { hosts: &hosts }, days).map_err(fail)?;
    let operator = ca.issue(Role::Operator { name: "dev", roles: &["admin".to_string()] }, days).map_err(fail)?;
    let agent = ca.issue(Role::Agent { name: "dev-agent", targets: &["*".to_string()] }, days).map_err(fail)?;
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    for (name, text) in [
        ("ca.pem", ca.cert_pem()),
        ("coordinator.pem", coordinator.cert),
        ("coordinator.key", coordinator.key),
        ("dev.pem", operator.cert),
        ("dev.key", operator.key),
        ("dev-agent.pem", agent.cert),
        ("dev-agent.key", agent.key),
    ] {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        crate::certs::write_file(&path, &text).map_err(fail)?;
    }
    Ok(())
}

async fn schema_of(url: &str) -> Result<Schema, Fail> {
    let driver = connect_db(url, &ConnectOptions::default())
        .await
        .map_err(|e| Fail(Code::CannotConnect, format!("{}: {e}", redact(url))))?;
    let mut ex = Executor::new(driver, "flotilla-dev");
    let schema = ex.schema().await.map_err(|e| Fail(Code::Failed, format!("{}: {e}", redact(url))));
    let history = ex.history().await.map_err(|e| Fail(Code::Failed, e.to_string()));
    ex.close().await;
    if !history?.is_empty() {
        return Err(Fail(
            Code::Refused,
            format!("{} already has migration history; `flotilla dev` wants databases of its own", redact(url)),
        ));
    }
    schema
}

async fn demo(out: Output, dbs: &[String], count: usize, workdir: &Path) -> Result<serde_json::Value, Fail> {
    let say = |text: String| {
        if !out.json {
            println!("{text}");
        }
    };
    let targets = targets(dbs, count, workdir)?;
    let migrations = workdir.join("migrations");
    write_samples(&targets, &migrations)?;
    let certs = workdir.join("certs");
    write_certs(&certs)?;
    let mut before = BTreeMap::new();
    for t in &targets {
        before.insert(t.name.clone(), schema_of(&t.url).await?);
    }

    // The coordinator and the agent, in this process, over mTLS on loopback.
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Fail(Code::Failed, format!("cannot listen on loopback: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Fail(Code::Failed, e.to_string()))?;
    let config = flotilla_coordinator::Config {
        file: None,
        store: format!("sqlite://{}", workdir.join("coordinator.db").display()),
        etcd: Vec::new(),
        etcd_prefix: flotilla_coordinator::config::DEFAULT_ETCD_PREFIX.into(),
        etcd_auth: Default::default(),
        tls: Some(TlsFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join("coordinator.pem"),
            key: certs.join("coordinator.key"),
        }),
        metrics_listen: None,
        service: flotilla_coordinator::service::Config { tick: Duration::from_millis(100), ..Default::default() },
    };
    let coordinator = tokio::spawn(flotilla_coordinator::run(listener, config, shutdown.clone()));
    let agent_config = AgentConfig {
        name: "dev-agent".into(),
        coordinator: format!("https://127.0.0.1:{}", addr.port()),
        tls: Some(AgentTls {
            ca: certs.join("ca.pem"),
            cert: certs.join("dev-agent.pem"),
            key: certs.join("dev-agent.key"),
        }),
        insecure_dev: false,
        heartbeat_secs: 1,
        connections: Default::default(),
        metrics_listen: None,
        log_format: Default::default(),
        refresh_secs: 60,
        targets: targets
            .iter()
            .map(|t| TargetConfig {
                name: t.name.clone(),
                engine: None,
                labels: t.labels.clone(),
                url: Some(t.url.clone()),
                url_file: None,
                url_env: None,
                throttle: None,
            })
            .collect(),
    };
    let agent = tokio::spawn(flotilla_agent::daemon::run(agent_config, shutdown.clone()));
    let conn = Conn {
        coordinator: format!("https://127.0.0.1:{}", addr.port()),
        certs: Some(certs.clone()),
        operator: "dev".into(),
        insecure_dev: false,
    };
    let result = rollout(out, &conn, &targets, &migrations, &before).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), coordinator).await;
    let summary = result?;
    say(format!("Working files: {} (pass --keep DIR to keep them)", workdir.display()));
    Ok(summary)
}

/// Waits up to 30 s for the agent to register all `count` targets.
async fn wait_for_targets(client: &mut fleet::Client, count: usize) -> Result<(), Fail> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let known = client.list_targets(pb::ListTargetsRequest { selector: String::new() }).await?.into_inner();
        if known.targets.len() == count {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Fail(Code::Failed, "the agent did not register its targets within 30 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many targets have exactly the schema they had before the rollout.
async fn schemas_restored(targets: &[DevTarget], before: &BTreeMap<String, Schema>) -> Result<usize, Fail> {
    let mut same = 0;
    for t in targets {
        let driver = connect_db(&t.url, &ConnectOptions::default())
            .await
            .map_err(|e| Fail(Code::CannotConnect, e.to_string()))?;
        let mut ex = Executor::new(driver, "flotilla-dev");
        let schema = ex.schema().await.map_err(|e| Fail(Code::Failed, e.to_string()));
        ex.close().await;
        if before.get(&t.name) == Some(&schema?) {
            same += 1;
        }
    }
    Ok(same)
}

async fn rollout(
    out: Output,
    conn: &Conn,
    targets: &[DevTarget],
    migrations: &Path,
    before: &BTreeMap<String, Schema>,
) -> Result<serde_json::Value, Fail> {
    let say = |text: String| {
        if !out.json {
            println!("{text}");
        }
    };
    let mut client = fleet::connect(conn).await?;
    wait_for_targets(&mut client, targets.len()).await?;
    say(format!(
        "Flotilla dev: a coordinator and an agent over mTLS on {}, serving {} database(s).\n",
        conn.coordinator,
        targets.len()
    ));

    say("1. Roll the sample migrations out in three waves (1, 50%, 100%):".into());
    let bundle = flotilla_core::bundle::Bundle::from_dir(migrations).map_err(|e| Fail(Code::Failed, e.to_string()))?;
    let request = pb::SubmitPlanRequest {
        bundle: bundle.to_json().into_bytes(),
        selector: "env=dev".into(),
        goal: Some(flotilla_core::fleet::Goal::Up { to: None }.into()),
        strategy: Some(pb::Strategy {
            waves: vec!["1".into(), "50%".into(), "100%".into()],
            max_parallel: 4,
            max_failures_per_wave: 0,
            approve_waves: false,
            on_failure: pb::strategy::OnFailure::Halt as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let started = Instant::now();
    let plan = client.submit_plan(request).await?.into_inner().summary.unwrap_or_default();
    say(format!("   plan {}", plan.id));
    let shown = (!out.json).then_some(out);
    let code = fleet::follow(shown, &mut client, &plan.id, 0).await?;
    let up_ms = started.elapsed().as_millis();
    if code != Code::Ok {
        return Err(Fail(code, format!("plan {} did not succeed; see `flotilla plan show`", plan.id)));
    }

    say("\n2. Fleet status:".into());
    let status = client.fleet_status(pb::FleetStatusRequest { selector: String::new() }).await?.into_inner().targets;
    if !out.json {
        for r in &status {
            println!("   {:<14} applied {}", r.target, r.applied_version.as_deref().unwrap_or("?"));
        }
    }

    say("\n3. Roll the whole fleet back (reverse wave order):".into());
    let started = Instant::now();
    let rb =
        client.create_rollback(pb::PlanAction { id: plan.id.clone(), reason: "dev demo".into() }).await?.into_inner();
    say(format!("   plan {}", rb.id));
    let code = fleet::follow(shown, &mut client, &rb.id, 0).await?;
    let down_ms = started.elapsed().as_millis();
    if code != Code::Ok {
        return Err(Fail(code, format!("rollback plan {} did not succeed", rb.id)));
    }

    let same = schemas_restored(targets, before).await?;
    say(format!(
        "\nSummary: {} database(s) migrated in {up_ms} ms and rolled back in {down_ms} ms; {same} of {} have exactly the schema they had before.",
        targets.len(),
        targets.len()
    ));
    if same != targets.len() {
        return Err(Fail(Code::Failed, "some databases do not have their original schema back".into()));
    }
    Ok(
        json!({ "ok": true, "plan": plan.id, "rollback": rb.id, "targets": targets.len(), "up_ms": up_ms, "down_ms": down_ms, "schemas_restored": same }),
    )
}
