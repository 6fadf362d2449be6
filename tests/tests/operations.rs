//! What SREs watch: a real Prometheus (Debian's package, started here) scrapes a coordinator and an agent during a
//! rollout, evaluates deploy/'s rules, and is queried through its HTTP API; `promtool check metrics` lints what both
//! expose, `promtool check rules` the rules, and every metric the dashboard and the rules use exists in the scrape.

use std::process::Stdio;
use std::time::{Duration, Instant};

use flotilla_core::Engine::Postgres;
use flotilla_tests::fleet::{free_port, steps, Fleet, FleetTarget};
use flotilla_tests::*;

fn curl(url: &str) -> String {
    let out = std::process::Command::new("curl").args(["-sf", "--max-time", "5", url]).output().expect("curl");
    assert!(out.status.success(), "GET {url}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// One instant query; the value of each series, with its labels.
fn query(prometheus: &str, promql: &str) -> Vec<(serde_json::Value, f64)> {
    let out = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "5", &format!("{prometheus}/api/v1/query"), "--data-urlencode"])
        .arg(format!("query={promql}"))
        .output()
        .expect("curl");
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    body["data"]["result"]
        .as_array()
        .map(|series| {
            series
                .iter()
                .map(|s| {
                    let value = s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
                    (s["metric"].clone(), value)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn sum(prometheus: &str, promql: &str) -> f64 {
    query(prometheus, &format!("sum({promql})")).first().map(|(_, v)| *v).unwrap_or(0.0)
}

/// `promtool check metrics` on one scrape: what it says, and whether it passed.
fn promtool(scrape: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (tests/servers.sh installs Debian's prometheus package)");
    child.stdin.take().expect("stdin").write_all(scrape.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_coordinator_and_an_agent_during_a_rollout() {
    let dbs = [TestDb::new(Postgres).await, TestDb::new(Postgres).await];
    let (coordinator_port, agent_port, prometheus_port) = (free_port(), free_port(), free_port());
    let mut fleet = Fleet::start(&[("agent-1", "*")], Some(etcd_url()), 10).await;
    fleet.coordinator_args = vec!["--metrics-listen".into(), format!("127.0.0.1:{coordinator_port}")];
    fleet.kill_coordinator().await;
    fleet.start_coordinator().await;
    fleet.agent_settings = format!("metrics_listen = \"127.0.0.1:{agent_port}\"");
    let targets: Vec<FleetTarget> = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| FleetTarget::new(&format!("pg-{i}"), &db.url, &[("env", "metrics")]))
        .collect();
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(2).await;

    let data = tempfile::tempdir().expect("dir");
    let config = data.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: ['{}']\nscrape_configs:\n\
             - job_name: flotilla-coordinator\n  static_configs: [{{ targets: ['127.0.0.1:{coordinator_port}'] }}]\n\
             - job_name: flotilla-agent\n  static_configs: [{{ targets: ['127.0.0.1:{agent_port}'] }}]\n",
            rules_file().display()
        ),
    )
    .expect("config");
    let _prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.path().join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
        .stdout(std::fs::File::create(data.path().join("prometheus.log")).expect("log"))
        .stderr(std::fs::File::create(data.path().join("prometheus.err")).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus (tests/servers.sh installs Debian's package)");
    let prometheus = format!("http://127.0.0.1:{prometheus_port}");

    let dir = Dir::new();
    dir.migration(Postgres, 1, "accounts", "CREATE TABLE accounts (id int PRIMARY KEY);", "DROP TABLE accounts;");
    dir.migration(
        Postgres,
        2,
        "note",
        "ALTER TABLE accounts ADD COLUMN note text;",
        "ALTER TABLE accounts DROP COLUMN note;",
    );
    let plan = fleet.create(dir.path(), &["--select", "env=metrics", "--waves", "100%"]).await;
    let done = fleet.wait_plan(&plan, "over", |p| p["state"] != "running" && p["state"] != "pending").await;
    assert_eq!(done["state"], "succeeded", "{done:#}");

    // `plan watch` replays the rollout with each wave's progress and, while steps were left, its ETA.
    let watched = fleet.cli(&["plan", "watch", &plan]).await;
    watched.ok();
    assert!(watched.stdout.contains("/2, ETA "), "{}", watched.stdout);
    assert!(watched.stdout.contains(": 2/2]"), "{}", watched.stdout);

    // Prometheus has scraped both after the rollout once both targets' steps are counted.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sum(&prometheus, "flotilla_steps_finished_total{result=\"succeeded\"}") < 2.0
        || sum(&prometheus, "flotilla_agent_migrations_total{result=\"succeeded\"}") < 4.0
    {
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the rollout: {:?}\n{}",
            query(&prometheus, "up"),
            std::fs::read_to_string(data.path().join("prometheus.err")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let up = query(&prometheus, "up");
    assert_eq!(up.len(), 2, "{up:?}");
    assert!(up.iter().all(|(_, v)| *v == 1.0), "both targets up: {up:?}");
    assert_eq!(
        sum(&prometheus, "flotilla_agent_migrations_total{engine=\"postgres\",direction=\"up\",result=\"succeeded\"}"),
        4.0
    );
    assert_eq!(sum(&prometheus, "flotilla_steps_finished_total{engine=\"postgres\",result=\"failed\"}"), 0.0);
    assert_eq!(sum(&prometheus, &format!("flotilla_plan_steps{{plan=\"{plan}\",state=\"succeeded\"}}")), 2.0);
    assert_eq!(sum(&prometheus, "flotilla_agents_connected"), 1.0);
    assert_eq!(sum(&prometheus, "flotilla_agent_connected"), 1.0);
    assert!(sum(&prometheus, "flotilla_lock_acquisitions_total{result=\"taken\"}") >= 2.0);
    assert!(sum(&prometheus, "flotilla_step_duration_seconds_count{engine=\"postgres\"}") >= 2.0);
    assert!(sum(&prometheus, "flotilla_agent_migration_duration_seconds_count") >= 4.0);
    assert!(sum(&prometheus, "flotilla_store_operation_duration_seconds_count{operation=\"record\"}") >= 1.0);
    assert!(sum(&prometheus, "flotilla_lock_operation_duration_seconds_count{operation=\"acquire\"}") >= 1.0);

    // deploy/'s rules, evaluated by this Prometheus: every one healthy, and the plan's progress recorded as done.
    let deadline = Instant::now() + Duration::from_secs(30);
    while query(&prometheus, &format!("flotilla:plan_progress:ratio{{plan=\"{plan}\"}}")).first().map(|(_, v)| *v)
        != Some(1.0)
    {
        assert!(Instant::now() < deadline, "the recording rule never showed the plan done");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rules: serde_json::Value = serde_json::from_str(&curl(&format!("{prometheus}/api/v1/rules"))).expect("rules");
    let loaded: Vec<&serde_json::Value> = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(loaded.len(), 15, "every rule of deploy/prometheus/flotilla.rules.yml is loaded");
    for rule in &loaded {
        assert_eq!(rule["health"], "ok", "{rule:#}");
    }
    let firing: Vec<_> = loaded.iter().filter(|r| r["state"] == "firing").map(|r| r["name"].clone()).collect();
    assert!(firing.is_empty(), "no alert fires after a clean rollout: {firing:?}");

    // What a scrape says, linted by promtool, and listed for the record; the names it declares.
    let mut declared = std::collections::BTreeSet::new();
    for (name, port) in [("coordinator", coordinator_port), ("agent", agent_port)] {
        let scrape = curl(&format!("http://127.0.0.1:{port}/metrics"));
        let (passed, said) = promtool(&scrape);
        assert!(passed, "promtool check metrics on the {name}: {said}\n{scrape}");
        println!("--- {name} /metrics (samples) ---");
        for line in scrape.lines().filter(|l| !l.starts_with('#') && !l.contains("_bucket{")) {
            println!("{line}");
        }
        for (family, kind) in scrape.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' ')) {
            declared.insert(family.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    declared.insert(format!("{family}{suffix}"));
                }
            }
        }
    }
    let (passed, said) = promtool_rules();
    assert!(passed, "promtool check rules: {said}");
    let dashboard =
        std::fs::read_to_string(manifest_dir().join("../deploy/grafana/flotilla-dashboard.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 15, "the dashboard has its panels: {}", exprs.len());
    let rules_text = std::fs::read_to_string(rules_file()).expect("rules");
    let used = metric_names(&exprs.join("\n")).into_iter().chain(metric_names(&rules_text));
    let missing: Vec<String> = used.filter(|n| !declared.contains(n)).collect();
    assert!(missing.is_empty(), "used by the dashboard or the rules but not exposed: {missing:?}\n{declared:?}");
}

fn rules_file() -> std::path::PathBuf {
    manifest_dir().join("../deploy/prometheus/flotilla.rules.yml")
}

fn promtool_rules() -> (bool, String) {
    let out =
        std::process::Command::new("promtool").args(["check", "rules"]).arg(rules_file()).output().expect("promtool");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The `flotilla_…` metric names in PromQL text (recording rules' `flotilla:…` names are not metrics).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("flotilla_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_' || bytes[end].is_ascii_digit())
        {
            end += 1;
        }
        if start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b':') {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_completions_and_json_logs() {
    // Completions: bash completes a subcommand; zsh and fish get theirs; an unknown shell is refused.
    let script = flotilla(&["completions", "bash"]).await;
    script.ok();
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("flotilla.bash");
    std::fs::write(&path, &script.stdout).expect("write");
    let bash = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(flotilla pl); COMP_CWORD=1; _flotilla flotilla pl flotilla; echo \"${{COMPREPLY[@]}}\"",
            path.display()
        ))
        .output()
        .expect("bash");
    assert_eq!(String::from_utf8_lossy(&bash.stdout).trim(), "plan", "{bash:?}");
    assert!(flotilla(&["completions", "zsh"]).await.ok().stdout.starts_with("#compdef flotilla"));
    assert!(flotilla(&["completions", "fish"]).await.ok().stdout.contains("complete -c flotilla"));
    flotilla(&["completions", "tcsh"]).await.fails(2, "invalid value 'tcsh'");

    // JSON logs: every line the coordinator and an agent write is one JSON object with a level and a message.
    let port = free_port();
    let store = format!("sqlite://{}", dir.path().join("store.db").display());
    let listen = format!("127.0.0.1:{port}");
    let coordinator = tokio::process::Command::new(binary("flotilla-coordinator"))
        .args(["--insecure-dev", "--log-format", "json", "--listen", &listen, "--store", &store])
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(dir.path().join("coordinator.log")).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("coordinator");
    let agent_config = dir.path().join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "name = \"agent-1\"\ncoordinator = \"http://{listen}\"\ninsecure_dev = true\nlog_format = \"json\"\n\
             [[targets]]\nname = \"t1\"\nurl = \"sqlite://{}\"\n",
            dir.path().join("t1.db").display()
        ),
    )
    .expect("agent config");
    let agent = tokio::process::Command::new(binary("flotilla-agent"))
        .arg("--config")
        .arg(&agent_config)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(dir.path().join("agent.log")).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    while !read("agent.log").contains("registered with the coordinator") {
        assert!(
            Instant::now() < deadline,
            "the agent never registered:\n{}\n{}",
            read("agent.log"),
            read("coordinator.log")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((coordinator, agent));
    for name in ["coordinator.log", "agent.log"] {
        let log = read(name);
        assert!(log.lines().count() >= 2, "{name}: {log}");
        for line in log.lines() {
            let entry: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {line}"));
            assert!(entry["level"].is_string() && entry["timestamp"].is_string(), "{name}: {line}");
            assert!(entry["message"].is_string(), "{name}: {line}");
        }
    }
    let coordinator_log = read("coordinator.log");
    let listening = coordinator_log.lines().find(|l| l.contains("coordinator listening")).expect("listening line");
    let listening: serde_json::Value = serde_json::from_str(listening).expect("JSON");
    assert_eq!(listening["etcd"], false, "fields are keys of their own: {listening}");
}

/// The census: after a rollout, one target's schema is changed by hand. `fleet status` groups targets by (version,
/// schema), names the one behind and the one that drifted; `fleet drift` shows what differs.
#[tokio::test(flavor = "multi_thread")]
async fn fleet_status_names_the_drifted_target_and_fleet_drift_shows_the_difference() {
    let dbs = futures_util::future::join_all((0..4).map(|_| TestDb::new(Postgres))).await;
    let mut fleet = Fleet::start(&[("agent-1", "*")], None, 10).await;
    fleet.agent_settings = "refresh_secs = 1".into();
    let targets: Vec<FleetTarget> = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| {
            FleetTarget::new(&format!("pg-{i}"), &db.url, &[("env", if i < 3 { "census" } else { "later" })])
        })
        .collect();
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(4).await;
    let dir = Dir::new();
    dir.migration(Postgres, 1, "accounts", "CREATE TABLE accounts (id int PRIMARY KEY);", "DROP TABLE accounts;");
    let plan = fleet.create(dir.path(), &["--select", "env=census", "--waves", "100%"]).await;
    fleet.wait_state(&plan, "succeeded").await;
    dbs[2].exec("ALTER TABLE accounts ADD COLUMN extra int").await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = fleet.cli(&["--json", "fleet", "status"]).await.json();
        let drifted = rows.as_array().into_iter().flatten().any(|r| r["target"] == "pg-2" && r["schema_drift"] == true);
        if drifted {
            break rows;
        }
        assert!(Instant::now() < deadline, "the census never saw pg-2 drift: {rows:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let row = |name: &str| rows.as_array().into_iter().flatten().find(|r| r["target"] == name).cloned().expect("row");
    assert_eq!(row("pg-0")["fingerprint"], row("pg-1")["fingerprint"], "same migrations, same schema");
    assert_ne!(row("pg-0")["fingerprint"], row("pg-2")["fingerprint"]);
    assert_eq!((row("pg-0")["schema_drift"].clone(), row("pg-3")["behind"].clone()), (false.into(), true.into()));
    assert!(
        row("pg-2")["drift"].as_str().is_some_and(|d| d.contains("2 of 3 postgres targets at version 1")),
        "{rows:#}"
    );

    let status = fleet.cli(&["fleet", "status"]).await;
    status.fails(1, "Drifted (schema differs from the majority at their version): pg-2");
    assert!(status.stdout.contains("Behind version 1: pg-3 (0)"), "{}", status.stdout);
    assert!(status.stdout.contains("postgres version 1, schema "), "{}", status.stdout);
    assert!(status.stdout.contains(": 2 target(s): pg-0, pg-1"), "{}", status.stdout);
    println!("{}", status.stdout);

    let drift = fleet.cli(&["fleet", "drift", "pg-2"]).await;
    drift.fails(
        1,
        "pg-2 at version 1 differs from the schema 2 of 3 targets of its engine at that version have (as pg-0 has)",
    );
    assert!(drift.stdout.contains("extra"), "{}", drift.stdout);
    println!("{}", drift.stdout);
    let same = fleet.cli(&["fleet", "drift", "pg-1"]).await;
    same.ok();
    assert!(same.stdout.contains("has the schema 2 of 3 targets of its engine"), "{}", same.stdout);
    fleet.cli(&["fleet", "drift", "nope"]).await.fails(4, "target `nope`");
}

/// Throttling on a real streaming replica whose replay is paused: the migration is held (`throttled` events) while
/// the replica lags, runs once it has caught up; a second plan held past its limit fails having changed nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_lagging_replica_holds_the_migration_until_it_catches_up() {
    let dbs = [TestDb::new(Postgres).await, TestDb::new(Postgres).await];
    let replica = TestDb::on(Postgres, &pg_replica_url());
    let primary = TestDb::on(Postgres, &std::env::var("FLOTILLA_TEST_PG_URL").expect("primary"));
    // Other tests write to the same primary: the limit sits well above their WAL, well below what this test makes.
    let throttle = |wait: u64| format!("max_replica_lag_bytes = 16000000\nmax_wait_secs = {wait}\npoll_ms = 200");
    let mut fleet = Fleet::start(&[("agent-1", "*")], None, 10).await;
    let mut targets = vec![
        FleetTarget::new("pg-held", &dbs[0].url, &[("env", "lag")]),
        FleetTarget::new("pg-limit", &dbs[1].url, &[("env", "lag-limit")]),
    ];
    targets[0].throttle = Some(throttle(120));
    targets[1].throttle = Some(throttle(2));
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(2).await;

    replica.exec("SELECT pg_wal_replay_pause()").await;
    let _resume = Resume(replica.url.clone());
    primary.exec("CREATE TABLE IF NOT EXISTS lag_filler (id int, pad text)").await;
    primary.exec("INSERT INTO lag_filler SELECT g, repeat('x', 1000) FROM generate_series(1, 40000) g").await;
    let lag = || async {
        let mut conn = primary.sql().await;
        sqlx::query_scalar::<_, f64>("SELECT COALESCE(MAX(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0)::float8 FROM pg_stat_replication")
            .fetch_one(&mut conn)
            .await
            .expect("lag")
    };
    assert!(lag().await > 16e6, "the paused replica lags");

    let dir = Dir::new();
    dir.migration(Postgres, 1, "accounts", "CREATE TABLE accounts (id int PRIMARY KEY);", "DROP TABLE accounts;");
    let held = fleet.create(dir.path(), &["--select", "env=lag"]).await;
    let limited = fleet.create(dir.path(), &["--select", "env=lag-limit"]).await;
    let over = fleet.wait_plan(&limited, "over", |p| p["state"] != "running" && p["state"] != "pending").await;
    let error = steps(&over)["pg-limit"]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("held 2 s by its health checks") && error.contains("replica lag"), "{over:#}");
    assert!(dbs[1].history().await.is_empty(), "the held-too-long target was not touched");

    // The held plan's events, as they come: a `throttled` one names the lag.
    let throttled = throttled_event(&fleet, &held).await;
    assert_eq!(throttled.target, "pg-held");
    assert!(throttled.detail.contains("replica lag (bytes) is"), "{}", throttled.detail);
    println!("throttled: {}", throttled.detail);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(dbs[0].history().await.is_empty(), "held while the replica lags");
    assert_eq!(fleet.plan(&held).await["state"], "running");

    replica.exec("SELECT pg_wal_replay_resume()").await;
    let done = fleet.wait_state(&held, "succeeded").await;
    assert_eq!(versions(&dbs[0].history().await), vec![1], "{done:#}");
    println!("replica lag after resume: {} bytes", lag().await);
    primary.exec("DROP TABLE IF EXISTS lag_filler").await;
}

/// Throttling on a real MariaDB replica whose SQL thread is stopped: the migration on its source is held until the
/// replica applies again, then runs once.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_mariadb_replica_holds_the_migration_on_its_source() {
    use flotilla_core::Engine::Mysql;
    let source =
        std::env::var("FLOTILLA_TEST_MYSQL_SOURCE_URL").expect("FLOTILLA_TEST_MYSQL_SOURCE_URL: tests/servers.sh");
    let replica_url = std::env::var("FLOTILLA_TEST_MYSQL_REPLICA_URL").expect("FLOTILLA_TEST_MYSQL_REPLICA_URL");
    let db = TestDb::new_on(Mysql, &source).await;
    let replica = TestDb::on(Mysql, &replica_url);
    let mut fleet = Fleet::start(&[("agent-1", "*")], None, 10).await;
    let mut target = FleetTarget::new("my-held", &db.url, &[("env", "mylag")]);
    target.throttle =
        Some(format!("max_replica_lag_secs = 5\nreplica_url = \"{replica_url}\"\nmax_wait_secs = 60\npoll_ms = 200"));
    fleet.start_agent("agent-1", &[target]).await;
    fleet.wait_targets(1).await;

    replica.exec("STOP SLAVE SQL_THREAD").await;
    let _resume = ResumeMariadb(replica_url.clone());
    let dir = Dir::new();
    dir.migration(Mysql, 1, "accounts", "CREATE TABLE accounts (id int PRIMARY KEY);", "DROP TABLE accounts;");
    let held = fleet.create(dir.path(), &["--select", "env=mylag"]).await;
    let throttled = throttled_event(&fleet, &held).await;
    assert_eq!(throttled.target, "my-held");
    assert!(
        throttled.detail.contains("Seconds_Behind_Master") && throttled.detail.contains("SQL thread is stopped"),
        "{}",
        throttled.detail
    );
    println!("throttled: {}", throttled.detail);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(db.history().await.is_empty(), "held while the replica does not apply");

    replica.exec("START SLAVE SQL_THREAD").await;
    fleet.wait_state(&held, "succeeded").await;
    assert_eq!(versions(&db.history().await), vec![1]);
}

/// The first `throttled` event of a plan, as it comes.
async fn throttled_event(fleet: &Fleet, plan: &str) -> flotilla_proto::v1::PlanEvent {
    let mut client =
        flotilla_proto::v1::operator_service_client::OperatorServiceClient::new(fleet.channel_as("admin").await);
    let mut events = client
        .watch_plan(flotilla_proto::v1::WatchPlanRequest { id: plan.to_string(), after: 0 })
        .await
        .expect("watch")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(e) = events.message().await.expect("event") {
            if e.kind == flotilla_proto::v1::EventKind::Throttled as i32 {
                return e;
            }
        }
        panic!("the plan ended without a throttled event");
    })
    .await
    .expect("a throttled event within 20 s")
}

/// Starts the replica's SQL thread again however the test ends.
struct ResumeMariadb(String);

impl Drop for ResumeMariadb {
    fn drop(&mut self) {
        let port = self.0.rsplit(':').next().and_then(|p| p.split('/').next()).unwrap_or("53311").to_string();
        let _ = std::process::Command::new("mariadb")
            .args([
                "--no-defaults",
                "--protocol=tcp",
                "-h127.0.0.1",
                &format!("-P{port}"),
                "-uroot",
                "-e",
                "START SLAVE SQL_THREAD",
            ])
            .output();
    }
}

fn versions(history: &[(u128, String, i64)]) -> Vec<u128> {
    history.iter().map(|(v, _, _)| *v).collect()
}

/// Resumes the replica's replay however the test ends: other tests share it.
struct Resume(String);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql").args([&self.0, "-qc", "SELECT pg_wal_replay_resume()"]).output();
    }
}
