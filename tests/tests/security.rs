//! Least privilege on a real fleet: each operator role's allowed and refused calls through the CLI, refusals in the
//! audit log, the deny-list and roles changed in the config file while the coordinator runs, certificates renewed
//! under a running agent, keys others may read and `--insecure-dev` off loopback refused at start, no password in
//! any log, and etcd that takes only TLS clients with certificates and a user.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use flotilla_core::Engine::{Postgres, Sqlite};
use flotilla_tests::fleet::{count, Fleet, FleetTarget};
use flotilla_tests::servers::Server;
use flotilla_tests::*;

/// `flotilla certs issue --operator SPEC` into the fleet's certificate directory.
async fn issue_operator(fleet: &Fleet, spec: &str) {
    let certs = fleet.certs();
    flotilla(&["certs", "issue", "--dir", certs.to_str().expect("utf-8"), "--operator", spec]).await.ok();
}

/// A fleet of two SQLite targets whose coordinator reads `config` (a TOML file in the fleet's directory).
async fn fleet_with_config(config: &str) -> (Fleet, Vec<TestDb>, std::path::PathBuf) {
    let file = tempfile::NamedTempFile::new().expect("temp file").into_temp_path().keep().expect("keep");
    std::fs::write(&file, config).expect("config");
    let args = vec!["--config".to_string(), file.display().to_string()];
    let mut fleet = Fleet::start_with_args(&[("agent-1", "sq-*")], None, 5, Vec::new(), args).await;
    let dbs = vec![TestDb::new(Sqlite).await, TestDb::new(Sqlite).await];
    let targets =
        [("sq-01", &dbs[0]), ("sq-02", &dbs[1])].map(|(name, db)| FleetTarget::new(name, &db.url, &[("env", "prod")]));
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(2).await;
    (fleet, dbs, file)
}

/// The audit log's entries with `action`, as `(actor, detail)`.
async fn audited(fleet: &Fleet, action: &str) -> Vec<(String, String)> {
    let log = fleet.cli(&["--json", "audit", "--limit", "1000"]).await.ok().json();
    log.as_array()
        .expect("audit entries")
        .iter()
        .filter(|e| e["action"] == action)
        .map(|e| (e["actor"].as_str().unwrap_or("").to_string(), e["detail"].as_str().unwrap_or("").to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_may_make_its_calls_and_no_others_and_every_refusal_is_audited() {
    let (fleet, _dbs, _config) = fleet_with_config("").await;
    for spec in ["watcher:viewer", "deployer:operator", "reviewer:approver", "nobody"] {
        issue_operator(&fleet, spec).await;
    }
    let dir = two_tables();
    let path = dir.path().to_str().expect("utf-8");
    let create = ["--json", "plan", "create", "--dir", path, "--waves", "1,100%", "--approve-waves"];

    // A viewer, and an operator whose certificate names no role, read and nothing else.
    for viewer in ["watcher", "nobody"] {
        fleet.cli_as(viewer, &["plan", "list"]).await.ok();
        fleet.cli_as(viewer, &["agents"]).await.ok();
        fleet.cli_as(viewer, &["fleet", "status"]).await.ok();
        fleet.cli_as(viewer, &create).await.fails(4, "may not");
        fleet.cli_as(viewer, &["audit"]).await.fails(4, "may not");
    }
    // An operator creates and controls plans, but approves nothing.
    let id = fleet.cli_as("deployer", &create).await.ok().json()["id"].as_str().expect("id").to_string();
    fleet.wait_state(&id, "awaiting_approval").await;
    fleet.cli_as("deployer", &["plan", "approve", &id]).await.fails(4, "may not");
    fleet.cli_as("watcher", &["plan", "pause", &id]).await.fails(4, "may not");
    // An approver approves, and creates nothing.
    fleet.cli_as("reviewer", &create).await.fails(4, "may not");
    fleet.cli_as("reviewer", &["plan", "approve", &id]).await.ok();
    fleet.wait_state(&id, "succeeded").await;
    fleet.cli_as("deployer", &["rollback", &id]).await.ok();
    fleet.cli_as("watcher", &["rollback", &id]).await.fails(4, "may not");
    fleet.cli_as("watcher", &["plan", "show", &id]).await.ok();
    // Only an admin reads the audit log, where every refusal is, naming who was refused.
    fleet.cli_as("deployer", &["audit"]).await.fails(4, "may not");
    fleet.cli_as("reviewer", &["audit"]).await.fails(4, "may not");
    let refused = audited(&fleet, "refused").await;
    let by = |actor: &str| refused.iter().filter(|(a, _)| a == actor).count();
    assert_eq!(by("operator:watcher"), 4, "create, audit, pause and rollback: {refused:#?}");
    assert_eq!(by("operator:nobody"), 2, "{refused:#?}");
    assert_eq!(by("operator:deployer"), 2, "approve and audit: {refused:#?}");
    assert_eq!(by("operator:reviewer"), 2, "create and audit: {refused:#?}");
    let submitted = audited(&fleet, "submit").await;
    assert!(submitted.iter().any(|(a, _)| a == "operator:deployer"), "{submitted:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn roles_from_the_config_and_a_submitter_who_may_not_approve_its_own_plan() {
    let config = "approver_must_differ = true\n[operators.lead]\nroles = [\"operator\", \"approver\"]\n";
    let (fleet, _dbs, _config) = fleet_with_config(config).await;
    issue_operator(&fleet, "lead").await; // a viewer by its certificate; the config makes it operator and approver
    issue_operator(&fleet, "reviewer:approver").await;
    let dir = two_tables();
    let path = dir.path().to_str().expect("utf-8");
    let create = ["--json", "plan", "create", "--dir", path, "--waves", "1,100%", "--approve-waves"];
    let id = fleet.cli_as("lead", &create).await.ok().json()["id"].as_str().expect("id").to_string();
    fleet.wait_state(&id, "awaiting_approval").await;
    fleet.cli_as("lead", &["plan", "approve", &id]).await.fails(4, "may not approve its waves");
    fleet.cli_as("reviewer", &["plan", "approve", &id]).await.ok();
    fleet.wait_state(&id, "succeeded").await;
    let refused = audited(&fleet, "refused").await;
    assert!(refused.iter().any(|(a, d)| a == "operator:lead" && d.contains("approver_must_differ")), "{refused:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deny_list_takes_effect_without_a_restart() {
    let (fleet, dbs, config) = fleet_with_config("").await;
    issue_operator(&fleet, "deployer:operator").await;
    let dir = two_tables();
    let id = fleet.create(dir.path(), &["--to", "1"]).await;
    fleet.wait_state(&id, "succeeded").await;
    fleet.cli_as("deployer", &["plan", "list"]).await.ok();

    std::fs::write(&config, "deny = [\"operator:deployer\", \"agent:agent-1\"]\n").expect("config");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = fleet.cli_as("deployer", &["plan", "list"]).await;
        if run.code == 4 {
            assert!(run.stderr.contains("deny-list"), "{run:#?}");
            break;
        }
        assert!(Instant::now() < deadline, "the deny-list was not read again: {run:#?}\n{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while fleet.cli(&["--json", "agents"]).await.ok().json()[0]["connected"] != false {
        assert!(Instant::now() < deadline, "the denied agent stayed connected\n{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A plan made now finds no agent to run it: the denied agent is cut off, and nothing runs on its targets.
    let id = fleet.create(dir.path(), &[]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let plan = fleet.plan(&id).await;
    assert_eq!(count(&plan, "succeeded"), 0, "the denied agent ran nothing: {plan:#}");
    for db in &dbs {
        assert_eq!(db.history().await.len(), 1, "still at version 1");
    }
    let refused = audited(&fleet, "refused").await;
    assert!(refused.iter().any(|(a, d)| a == "agent:agent-1" && d.contains("deny-list")), "{refused:#?}");

    // Taken off the list, both are back, without a restart.
    std::fs::write(&config, "deny = []\n").expect("config");
    fleet.wait_state(&id, "succeeded").await;
    fleet.cli_as("deployer", &["plan", "list"]).await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_renewed_under_a_running_agent_and_coordinator_take_effect_and_work_goes_on() {
    let metrics = format!("127.0.0.1:{}", flotilla_tests::fleet::free_port());
    let (fleet, dbs, _config) = fleet_with_config(&format!("metrics_listen = \"{metrics}\"\n")).await;
    let dir = two_tables();
    let id = fleet.create(dir.path(), &["--to", "1"]).await;
    fleet.wait_state(&id, "succeeded").await;
    let before = agent_certificate_expiry(&fleet).await;
    assert!(!before.is_empty(), "the agent's certificate expiry is shown");

    let certs = fleet.certs();
    let renew = ["certs", "renew", "--dir", certs.to_str().expect("utf-8"), "--days", "30"];
    flotilla(&[&renew[..], &["agent-1", "coordinator", "admin"]].concat()).await.ok();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = agent_certificate_expiry(&fleet).await;
        if !now.is_empty() && now != before {
            let days = chrono::DateTime::parse_from_rfc3339(&now).expect("time").to_utc() - chrono::Utc::now();
            assert!((29..=30).contains(&days.num_days()), "the new certificate lives 30 days: {now}");
            break;
        }
        assert!(Instant::now() < deadline, "the agent never presented its new certificate\n{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_state(&id, "succeeded").await;
    for db in &dbs {
        assert_eq!(db.history().await.len(), 2, "the agent worked on across the swap");
    }
    // The metric says when each certificate in use expires: both become the renewed ones (30 days, not 90).
    for holder in ["coordinator", "agent:agent-1"] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(29.0..=30.0).contains(&expiry_days(&metrics, holder)) {
            assert!(Instant::now() < deadline, "{holder}: {} days", expiry_days(&metrics, holder));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let agent = fleet.log_of("agent-1");
    assert!(agent.contains("certificate files changed: reconnecting with them"), "{agent}");
    let coordinator = fleet.log_of("coordinator");
    assert!(coordinator.contains("TLS certificate files reloaded"), "{coordinator}");
}

/// In how many days `holder`'s certificate expires, as the coordinator's metrics at `addr` say (-1: not there).
fn expiry_days(addr: &str, holder: &str) -> f64 {
    let out = std::process::Command::new("curl").args(["-sf", &format!("http://{addr}/metrics")]).output();
    let scrape = String::from_utf8(out.expect("curl").stdout).expect("utf-8");
    let line = format!("flotilla_certificate_expiry_timestamp_seconds{{holder=\"{holder}\"}} ");
    let value = scrape.lines().find_map(|l| l.strip_prefix(&line)).and_then(|v| v.parse::<f64>().ok());
    value.map_or(-1.0, |v| (v - chrono::Utc::now().timestamp() as f64) / 86_400.0)
}

/// When the certificate agent-1 presented expires, as `flotilla agents` shows it.
async fn agent_certificate_expiry(fleet: &Fleet) -> String {
    let agents = fleet.cli(&["--json", "agents"]).await.ok().json();
    agents[0]["certificate_expires"].as_str().unwrap_or_default().to_string()
}

/// Runs `program args` until it exits (at most 20 s); its exit code and all it printed.
async fn exits(program: &str, args: &[&str]) -> (i32, String) {
    let run = tokio::time::timeout(Duration::from_secs(20), finish(spawn_program(program, args)))
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not exit"));
    (run.code, run.stdout + &run.stderr)
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_that_others_may_read_are_refused_at_start_by_coordinator_agent_and_cli() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    let certs_arg = certs.to_str().expect("utf-8");
    flotilla(&["certs", "init", "--out", certs_arg, "--agent", "agent-1:*"]).await.ok();
    for key in ["coordinator.key", "agent-1.key", "admin.key", "ca.key"] {
        let mode = std::fs::metadata(certs.join(key)).expect("key").permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600, "{key} is written 0600");
    }
    let file = |name: &str| certs.join(name).display().to_string();
    let port = flotilla_tests::fleet::free_port();
    let listen = format!("127.0.0.1:{port}");
    let store = format!("sqlite://{}", dir.path().join("store.db").display());
    let coordinator = |listen: String| {
        let args = [
            "--listen".to_string(),
            listen,
            "--store".into(),
            store.clone(),
            "--ca".into(),
            file("ca.pem"),
            "--cert".into(),
            file("coordinator.pem"),
            "--key".into(),
            file("coordinator.key"),
        ];
        async move { exits("flotilla-coordinator", &args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };

    chmod(&certs.join("coordinator.key"), 0o644);
    let (code, text) = coordinator(listen.clone()).await;
    assert_ne!(code, 0);
    assert!(text.contains("may be read by group or others (mode 0644)") && text.contains("chmod 600"), "{text}");

    let agent_config = dir.path().join("agent.toml");
    let config = format!(
        "name = \"agent-1\"\ncoordinator = \"https://127.0.0.1:{port}\"\n[[targets]]\nname = \"sq\"\nurl = \"sqlite://{}\"\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.path().join("sq.db").display(),
        file("ca.pem"),
        file("agent-1.pem"),
        file("agent-1.key")
    );
    std::fs::write(&agent_config, config).expect("agent config");
    chmod(&certs.join("agent-1.key"), 0o640);
    let (code, text) = exits("flotilla-agent", &["--config", agent_config.to_str().expect("utf-8")]).await;
    assert_ne!(code, 0);
    assert!(text.contains("agent-1.key may be read by group or others (mode 0640)"), "{text}");

    chmod(&certs.join("admin.key"), 0o604);
    let run = tokio::process::Command::new(binary("flotilla"))
        .args(["plan", "list"])
        .env("FLOTILLA_COORDINATOR", format!("https://{listen}"))
        .env("FLOTILLA_CERTS", &certs)
        .output()
        .await
        .expect("flotilla");
    let text = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "bad input: {text}");
    assert!(text.contains("admin.key may be read by group or others (mode 0604)"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn insecure_dev_is_refused_off_loopback_with_the_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite://{}", dir.path().join("store.db").display());
    for listen in ["0.0.0.0:0", "10.1.2.3:7443", "[::]:0"] {
        let (code, text) =
            exits("flotilla-coordinator", &["--insecure-dev", "--listen", listen, "--store", &store]).await;
        assert_ne!(code, 0, "{listen}");
        assert!(text.contains("--insecure-dev listens only on a loopback address"), "{listen}: {text}");
    }
    assert!(!dir.path().join("store.db").exists(), "nothing was created");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "name = \"a\"\ncoordinator = \"http://10.1.2.3:7443\"\ninsecure_dev = true\n[[targets]]\nname = \"sq\"\nurl = \"sqlite://x.db\"\n").unwrap();
    let (code, text) = exits("flotilla-agent", &["--config", config.to_str().expect("utf-8")]).await;
    assert_ne!(code, 0);
    assert!(text.contains("insecure_dev talks plaintext only to a coordinator on this machine"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_password_reaches_any_log_or_output() {
    const SECRET: &str = "Pw-0f-the-target-7y2q";
    let db = TestDb::new(Postgres).await;
    let role = format!("flotilla_secret_{:08x}", rand::random::<u32>());
    db.exec(&format!("CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{SECRET}'")).await;
    let url = db.url.replacen("postgres://postgres@", &format!("postgres://{role}:{SECRET}@"), 1);
    assert!(url.contains(SECRET), "{url}");
    let unreachable = format!("postgres://{role}:{SECRET}@127.0.0.1:1/none");
    let mut fleet = Fleet::start_with(&[("agent-1", "pg-*")], None, 5, vec![("RUST_LOG".into(), "debug".into())]).await;
    let targets = [FleetTarget::new("pg-01", &url, &[("env", "prod")]), FleetTarget::new("pg-02", &unreachable, &[])];
    fleet.start_agent("agent-1", &targets).await;
    let dir = Dir::new();
    dir.migration(Postgres, 1, "a", "CREATE TABLE a (id INT);", "DROP TABLE a;");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fleet.cli(&["--json", "fleet", "status"]).await.stdout.contains("pg-01") {
        assert!(Instant::now() < deadline, "{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let id = fleet.create(dir.path(), &["--select", "env=prod"]).await;
    fleet.wait_state(&id, "succeeded").await;
    let mut outputs = vec![fleet.log_of("coordinator"), fleet.log_of("agent-1")];
    for args in [&["--json", "fleet", "status"][..], &["--json", "plan", "show", &id], &["--json", "agents"]] {
        let run = fleet.cli(args).await;
        outputs.push(run.stdout + &run.stderr);
    }
    assert!(outputs[2].contains("pg-02"), "the unreachable target is reported: {}", outputs[2]);
    for text in &outputs {
        assert!(!text.contains(SECRET), "a password was printed:\n{text}");
    }
    fleet.stop().await;
    db.exec(&format!("DROP OWNED BY {role}")).await;
    db.exec(&format!("DROP ROLE {role}")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_without_etcds_client_certificate_or_password_is_refused_and_says_why() {
    let etcd = Server::start_etcd_secured().await;
    let (good, env) = etcd.etcd_client();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = format!("sqlite://{}", dir.path().join("store.db").display());
    let run = |extra: Vec<String>, password: Option<&str>| {
        let mut args: Vec<String> =
            ["--insecure-dev", "--listen", "127.0.0.1:0", "--store", &store, "--etcd", &etcd.url()]
                .iter()
                .map(|s| s.to_string())
                .collect();
        if !extra.iter().any(|a| a == "--etcd-prefix") {
            args.extend(["--etcd-prefix".to_string(), format!("/flotilla-test/{:08x}/", rand::random::<u32>())]);
        }
        args.extend(extra);
        let password = password.map(str::to_string);
        async move {
            let mut cmd = tokio::process::Command::new(binary("flotilla-coordinator"));
            cmd.args(&args).stdin(Stdio::null()).kill_on_drop(true);
            if let Some(p) = password {
                cmd.env("FLOTILLA_ETCD_PASSWORD", p);
            }
            let out = tokio::time::timeout(Duration::from_secs(8), cmd.output()).await;
            out.ok()
                .map(|o| o.expect("coordinator"))
                .map(|o| (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).to_string()))
        }
    };
    let password = env[0].1.as_str();
    // No CA: an https endpoint needs one.
    let (code, text) = run(vec![], Some(password)).await.expect("exits");
    assert_ne!(code, 0);
    assert!(text.contains("give [etcd_tls] ca"), "{text}");
    // The CA but no client certificate: etcd refuses the handshake.
    let (code, text) = run(good[..2].to_vec(), Some(password)).await.expect("exits");
    assert_ne!(code, 0, "{text}");
    // Certificate, wrong password: etcd refuses the login.
    let (code, text) = run(good.clone(), Some("wrong")).await.expect("exits");
    assert_ne!(code, 0);
    assert!(text.contains("authentication failed") || text.contains("invalid"), "{text}");
    // A user without a password is refused before anything is tried.
    let (code, text) = run(good.clone(), None).await.expect("exits");
    assert_ne!(code, 0);
    assert!(text.contains("needs a password"), "{text}");
    // A prefix the user may not touch: refused at start, not at the first rollout.
    let mut elsewhere = good.clone();
    elsewhere.extend(["--etcd-prefix".to_string(), "/flotilla/locks/".to_string()]);
    let (code, text) = run(elsewhere, Some(password)).await.expect("exits");
    assert_ne!(code, 0);
    assert!(text.contains("refused to read /flotilla/locks/") && text.contains("permission denied"), "{text}");
    // All of it: it starts and keeps running.
    if let Some(exited) = run(good, Some(password)).await {
        panic!("with TLS, its certificate and the user the coordinator runs, but it exited: {exited:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_over_their_limits_are_refused_whole_and_nothing_is_stored() {
    use flotilla_proto::v1 as pb;
    use pb::agent_service_client::AgentServiceClient;
    use pb::operator_service_client::OperatorServiceClient;
    let (fleet, _dbs, _config) = fleet_with_config("").await;
    let id = fleet.create(two_tables().path(), &["--waves", "1,100%", "--approve-waves"]).await;
    fleet.wait_state(&id, "awaiting_approval").await;
    let audit_before = fleet.cli(&["--json", "audit"]).await.ok().json().as_array().map(Vec::len);
    let mut operator = OperatorServiceClient::new(fleet.channel_as("admin").await);

    // A reason longer than reasons go, and a request larger than the method takes.
    for (reason, needle) in [
        ("r".repeat(5000), "the reason is 5000 bytes; at most 4096 are taken"),
        ("r".repeat(100_000), "ApproveWave takes at most 65536 bytes"),
    ] {
        let refused = operator.approve_wave(pb::PlanAction { id: id.clone(), reason }).await.expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(needle), "{refused:?}");
    }
    assert_eq!(fleet.plan(&id).await["state"], "awaiting_approval", "nothing was approved");
    let audit_after = fleet.cli(&["--json", "audit"]).await.ok().json().as_array().map(Vec::len);
    assert_eq!(audit_before, audit_after, "nothing was audited either");

    // An agent registering a target whose name is longer than names go: nothing registered.
    let mut agent = AgentServiceClient::new(fleet.channel_as("agent-1").await);
    let long = format!("sq-{}", "x".repeat(300));
    let target = pb::TargetInfo { name: long.clone(), engine: pb::Engine::Sqlite as i32, labels: Default::default() };
    let request = pb::RegisterRequest { targets: vec![target], ..Default::default() };
    let refused = agent.register(request).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("a target's name is 303 bytes; at most 256"), "{refused:?}");
    // A heartbeat larger than any census carries.
    let schemas = [("f".to_string(), "s".repeat(17 << 20))].into_iter().collect();
    let refused = agent.heartbeat(pb::HeartbeatRequest { schemas, ..Default::default() }).await.expect_err("refused");
    // (The decoder reads the message's length first and refuses it before the body arrives.)
    assert!(refused.message().contains("the limit is: 16777216 bytes"), "{refused:?}");
    let status = fleet.cli(&["--json", "fleet", "status"]).await.json();
    assert_eq!(status.as_array().map(Vec::len), Some(2), "only the agent's two real targets: {status:#}");
    fleet.cli(&["plan", "approve", &id]).await.ok();
    fleet.wait_state(&id, "succeeded").await;
}
