//! The fleet end to end: a real coordinator process, agent processes over mTLS, etcd locks, and real PostgreSQL,
//! MariaDB and MongoDB databases.

use std::time::Duration;

use flotilla_core::Engine::{self, Mongodb, Mysql, Postgres};
use flotilla_tests::fleet::{count, steps, Fleet, FleetTarget, Store};
use flotilla_tests::*;

// The end-to-end tests run on both coordinator stores: the SQLite file and PostgreSQL.
flotilla_tests::on_both_stores!(
    a_fleet_of_32_databases_rolls_out_in_waves_halts_on_failure_and_rolls_back,
    pause_resume_and_abort_take_effect_within_a_tick,
    an_agent_killed_mid_step_is_reconciled_and_nothing_runs_twice,
    a_coordinator_killed_mid_wave_resumes_from_its_store,
);

/// Three migrations per engine, in one bundle with a set per engine.
fn bundle() -> Dir {
    let dir = Dir::new();
    for (engine, sub) in [(Postgres, "postgres"), (Mysql, "mysql")] {
        let drop_index =
            if engine == Mysql { "DROP INDEX accounts_status ON accounts;" } else { "DROP INDEX accounts_status;" };
        dir.file(
            &format!("{sub}/000001_accounts.up.sql"),
            "CREATE TABLE accounts (id BIGINT PRIMARY KEY, name VARCHAR(64));",
        )
        .file(&format!("{sub}/000001_accounts.down.sql"), "DROP TABLE accounts;")
        .file(&format!("{sub}/000002_status.up.sql"), "ALTER TABLE accounts ADD COLUMN status VARCHAR(16);")
        .file(&format!("{sub}/000002_status.down.sql"), "ALTER TABLE accounts DROP COLUMN status;")
        .file(&format!("{sub}/000003_status_index.up.sql"), "CREATE INDEX accounts_status ON accounts (status);")
        .file(&format!("{sub}/000003_status_index.down.sql"), drop_index);
    }
    dir.file("mongodb/000001_accounts.up.json", r#"[{"create": "accounts"}]"#)
        .file("mongodb/000001_accounts.down.json", r#"[{"drop": "accounts"}]"#)
        .file(
            "mongodb/000002_name_index.up.json",
            r#"[{"createIndexes": "accounts", "indexes": [{"key": {"name": 1}, "name": "accounts_name"}]}]"#,
        )
        .file("mongodb/000002_name_index.down.json", r#"[{"dropIndexes": "accounts", "index": "accounts_name"}]"#)
        .file("mongodb/000003_seed.up.json", r#"[{"insert": "accounts", "documents": [{"_id": 1, "name": "first"}]}]"#)
        .file(
            "mongodb/000003_seed.down.json",
            r#"[{"delete": "accounts", "deletes": [{"q": {"_id": 1}, "limit": 1}]}]"#,
        );
    dir
}

async fn databases(engine: Engine, n: usize) -> Vec<TestDb> {
    futures_util::future::join_all((0..n).map(|_| TestDb::new(engine))).await
}

fn versions(history: &[(u128, String, i64)]) -> Vec<u128> {
    history.iter().map(|(v, _, _)| *v).collect()
}

/// A target's name, database and labels.
type Named<'a> = (String, &'a TestDb, Vec<(&'static str, &'static str)>);

async fn a_fleet_of_32_databases_rolls_out_in_waves_halts_on_failure_and_rolls_back(store: Store) {
    let (pg, my, mo) = tokio::join!(databases(Postgres, 12), databases(Mysql, 12), databases(Mongodb, 8));
    let mut named: Vec<Named> = Vec::new();
    for (i, db) in pg.iter().enumerate() {
        let tier = match i {
            0 => "canary",
            1..=5 => "early",
            _ => "late",
        };
        named.push((format!("pg-{:02}", i + 1), db, vec![("env", "test"), ("tier", tier)]));
    }
    for (i, db) in my.iter().enumerate() {
        named.push((
            format!("my-{:02}", i + 1),
            db,
            vec![("env", "test"), ("tier", if i < 3 { "early" } else { "late" })],
        ));
    }
    for (i, db) in mo.iter().enumerate() {
        named.push((format!("mo-{:02}", i + 1), db, vec![("env", "test"), ("tier", "late")]));
    }
    let mut before = Vec::new();
    for (_, db, _) in &named {
        before.push(db.catalog().await);
    }

    let agents = [("agent-pg", "pg-*"), ("agent-my", "my-*"), ("agent-mo", "mo-*")];
    let mut fleet = Fleet::start_on(store, &agents, Some(etcd_url()), 3).await;
    for (agent, prefix) in [("agent-pg", "pg-"), ("agent-my", "my-"), ("agent-mo", "mo-")] {
        let targets: Vec<FleetTarget> = named
            .iter()
            .filter(|(n, _, _)| n.starts_with(prefix))
            .map(|(n, db, labels)| FleetTarget::new(n, &db.url, labels))
            .collect();
        fleet.start_agent(agent, &targets).await;
    }
    fleet.wait_targets(32).await;
    let agents = fleet.cli(&["--json", "agents"]).await;
    assert_eq!(agents.ok().json().as_array().map(|a| a.iter().filter(|x| x["connected"] == true).count()), Some(3));

    // pg-04 (wave 2) already has the table migration 1 creates: its step fails, over a budget of 0.
    let dir = bundle();
    pg[3].exec("CREATE TABLE accounts (id BIGINT PRIMARY KEY)").await;
    let dry = fleet
        .cli(&["--json", "plan", "create", "--dir", dir.path().to_str().unwrap(), "--select", "env=test", "--dry-run"])
        .await;
    assert_eq!(dry.ok().json()["steps"].as_array().map(Vec::len), Some(32));
    assert_eq!(
        fleet.cli(&["--json", "plan", "list"]).await.ok().json().as_array().map(Vec::len),
        Some(0),
        "a dry run stores nothing"
    );

    let waves = ["--waves", "label:tier=canary,label:tier=early,100%", "--parallel", "4", "--max-failures", "0"];
    let p1 = fleet.create(dir.path(), &[&["--select", "env=test"][..], &waves[..]].concat()).await;
    let plan = fleet.wait_plan(&p1, "over", |p| p["state"] != "running" && p["state"] != "pending").await;
    assert_eq!(plan["state"], "halted", "{plan:#}");
    let s = steps(&plan);
    assert_eq!(s["pg-01"]["wave"], 1);
    assert_eq!(s["pg-01"]["state"], "succeeded");
    assert_eq!(s["pg-04"]["state"], "failed");
    assert!(s["pg-04"]["error"].as_str().unwrap_or_default().contains("accounts"), "{:#}", s["pg-04"]);
    for (name, db, labels) in &named {
        let tier = labels.iter().find(|(k, _)| *k == "tier").map(|(_, v)| *v).unwrap_or_default();
        let history = versions(&db.history().await);
        match (tier, name.as_str()) {
            (_, "pg-04") => assert!(history.is_empty(), "a failed atomic step leaves nothing"),
            ("late", _) => {
                assert_eq!(s[name]["state"], "skipped", "{name}: wave 3 never starts after the halt");
                assert!(history.is_empty(), "{name} was not touched");
            }
            ("canary", _) => {
                assert_eq!(s[name]["state"], "succeeded", "{name}");
                assert_eq!(history, vec![1, 2, 3], "{name}");
            }
            // Wave 2 stops dispatching at pg-04's failure: what was in flight finishes, what was not is skipped.
            _ => match s[name]["state"].as_str() {
                Some("succeeded") => assert_eq!(history, vec![1, 2, 3], "{name}"),
                Some("skipped") => assert!(history.is_empty(), "{name} was skipped but touched"),
                other => panic!("{name}: {other:?} after the halt"),
            },
        }
    }

    // Fix pg-04 and roll the rest out.
    pg[3].exec("DROP TABLE accounts").await;
    let p2 = fleet.create(dir.path(), &["--select", "env=test", "--waves", "1,50%,100%", "--parallel", "8"]).await;
    let plan = fleet.wait_state(&p2, "succeeded").await;
    assert_eq!(count(&plan, "succeeded"), 32, "{plan:#}");

    // Fleet status agrees with every target's history table.
    let status = fleet.cli(&["--json", "fleet", "status"]).await;
    let rows = status.ok().json();
    for (name, db, _) in &named {
        let row = rows.as_array().and_then(|a| a.iter().find(|r| r["target"] == name.as_str())).expect("row");
        let history = versions(&db.history().await);
        assert_eq!(history, vec![1, 2, 3], "{name}");
        assert_eq!(row["applied_version"], 3, "{name}: {row}");
        assert_eq!(row["dirty"], false);
        assert!(row["drift"].is_null(), "{row}");
    }

    // Roll back p2, then p1: every target is back where it started, schema and history.
    let rb2 = fleet.cli(&["--json", "rollback", &p2]).await.ok().json()["id"].as_str().expect("id").to_string();
    let rb2_plan = fleet.wait_state(&rb2, "succeeded").await;
    let (p2_plan, rb2_steps) = (fleet.plan(&p2).await, steps(&rb2_plan));
    let last = steps(&p2_plan).values().map(|s| s["wave"].as_u64().unwrap_or(0)).max().unwrap_or(0);
    for (target, step) in steps(&p2_plan) {
        let wave = step["wave"].as_u64().unwrap_or(0);
        assert_eq!(rb2_steps[&target]["wave"].as_u64(), Some(last - wave + 1), "{target}: reverse wave order");
    }
    let rb1 = fleet.cli(&["--json", "rollback", &p1]).await.ok().json()["id"].as_str().expect("id").to_string();
    fleet.wait_state(&rb1, "succeeded").await;
    for ((name, db, _), original) in named.iter().zip(&before) {
        assert!(db.history().await.is_empty(), "{name}");
        assert_eq!(&db.catalog().await, original, "{name}: the schema is back to what it was");
    }
    let rows = fleet.cli(&["--json", "fleet", "status"]).await.ok().json();
    assert!(
        rows.as_array().expect("rows").iter().all(|r| r["applied_version"] == 0 && r["drift"].is_null()),
        "{rows:#}"
    );
}

/// A slow PostgreSQL migration that also counts its runs, so a second run would show.
fn slow_bundle(seconds: u32) -> Dir {
    let dir = Dir::new();
    dir.file(
        "000001_runs.up.sql",
        &format!("CREATE TABLE runs (n INT);\nSELECT pg_sleep({seconds});\nINSERT INTO runs VALUES (1);"),
    )
    .file("000001_runs.down.sql", "DROP TABLE runs;")
    .file("000002_more.up.sql", "CREATE TABLE more_runs (n INT);")
    .file("000002_more.down.sql", "DROP TABLE more_runs;");
    dir
}

async fn pg_fleet(store: Store, n: usize, lease_ttl: u64) -> (Fleet, Vec<TestDb>, Vec<FleetTarget>) {
    let dbs = databases(Postgres, n).await;
    let targets: Vec<FleetTarget> = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| FleetTarget::new(&format!("pg-{:02}", i + 1), &db.url, &[("env", "test")]))
        .collect();
    let mut fleet = Fleet::start_on(store, &[("agent-1", "pg-*")], Some(etcd_url()), lease_ttl).await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(n).await;
    (fleet, dbs, targets)
}

fn in_flight(plan: &serde_json::Value) -> usize {
    count(plan, "assigned") + count(plan, "running")
}

async fn pause_resume_and_abort_take_effect_within_a_tick(store: Store) {
    let (fleet, dbs, _) = pg_fleet(store, 6, 10).await;
    let dir = slow_bundle(1);
    let id = fleet.create(dir.path(), &["--waves", "100%", "--parallel", "1"]).await;
    fleet.wait_plan(&id, "running a step", |p| count(p, "running") == 1).await;
    fleet.cli(&["plan", "pause", &id, "--reason", "checking dashboards"]).await.ok();
    // The running step finishes; nothing new starts.
    let paused = fleet.wait_plan(&id, "quiet", |p| in_flight(p) == 0).await;
    assert_eq!(paused["state"], "paused");
    let done = count(&paused, "succeeded");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let still = fleet.plan(&id).await;
    assert_eq!((count(&still, "succeeded"), in_flight(&still)), (done, 0), "a paused plan starts nothing: {still:#}");
    assert!(fleet.cli(&["plan", "resume", "no-such-plan"]).await.code == 2);
    fleet.cli(&["plan", "resume", &id]).await.ok();
    fleet.wait_plan(&id, "moving again", |p| count(p, "succeeded") > done).await;
    fleet.cli(&["plan", "abort", &id]).await.ok();
    let aborted = fleet.wait_plan(&id, "quiet", |p| in_flight(p) == 0).await;
    assert_eq!(aborted["state"], "aborted");
    let succeeded = count(&aborted, "succeeded");
    assert!(succeeded < 6 && count(&aborted, "skipped") == 6 - succeeded, "{aborted:#}");
    // What the plan says matches the databases.
    let applied = futures_util::future::join_all(dbs.iter().map(|db| db.history())).await;
    assert_eq!(applied.iter().filter(|h| versions(h) == vec![1, 2]).count(), succeeded);
    assert_eq!(applied.iter().filter(|h| h.is_empty()).count(), 6 - succeeded);
    fleet.cli(&["plan", "resume", &id]).await.fails(4, "aborted");
}

async fn an_agent_killed_mid_step_is_reconciled_and_nothing_runs_twice(store: Store) {
    let (mut fleet, dbs, targets) = pg_fleet(store, 3, 3).await;
    let dir = slow_bundle(4);
    let id = fleet.create(dir.path(), &["--waves", "100%", "--parallel", "3"]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 3).await;
    fleet.kill_agent("agent-1").await;
    // Its locks expire (3 s) and the steps go back to pending, to be reconciled.
    let back = fleet.wait_plan(&id, "reconciled", |p| count(p, "pending") == 3).await;
    assert_eq!(back["state"], "running");
    fleet.start_agent("agent-1", &targets).await;
    let plan = fleet.wait_state(&id, "succeeded").await;
    assert_eq!(count(&plan, "succeeded"), 3);
    let tokens: Vec<u64> = steps(&plan).values().map(|s| s["fencing_token"].as_u64().unwrap_or(0)).collect();
    for db in &dbs {
        assert_eq!(versions(&db.history().await), vec![1, 2]);
        assert_eq!(db.count("runs").await, 1, "migration 1 committed exactly once");
    }
    assert!(tokens.iter().all(|t| *t > 0));
    let events = fleet.cli(&["--json", "plan", "watch", &id]).await;
    assert_eq!(events.stdout.lines().filter(|l| l.contains("\"reconcile\"")).count(), 3, "{}", events.stdout);
}

async fn a_coordinator_killed_mid_wave_resumes_from_its_store(store: Store) {
    let (mut fleet, dbs, _) = pg_fleet(store, 4, 3).await;
    let dir = slow_bundle(3);
    let id = fleet.create(dir.path(), &["--waves", "100%", "--parallel", "2"]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 2).await;
    fleet.kill_coordinator().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.start_coordinator().await;
    let plan = fleet.wait_state(&id, "succeeded").await;
    assert_eq!(count(&plan, "succeeded"), 4, "{plan:#}");
    for db in &dbs {
        assert_eq!(versions(&db.history().await), vec![1, 2]);
        assert_eq!(db.count("runs").await, 1, "no migration ran twice");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_without_the_right_certificate_are_refused_and_change_nothing() {
    let db = TestDb::new(flotilla_core::Engine::Sqlite).await;
    let mut fleet = Fleet::start(&[("agent-1", "pg-*"), ("agent-2", "sq-*")], None, 5).await;
    fleet.start_agent("agent-2", &[FleetTarget::new("sq-01", &db.url, &[("env", "test")])]).await;
    fleet.wait_targets(1).await;
    let dir = Dir::new();
    dir.migration(flotilla_core::Engine::Sqlite, 1, "t", "CREATE TABLE t (id INT);", "DROP TABLE t;");
    let dir_arg = dir.path().to_str().unwrap();

    // An operator call with an agent certificate.
    fleet
        .cli_as("agent-2", &["plan", "create", "--dir", dir_arg])
        .await
        .fails(4, "operator calls need an operator certificate");
    fleet.cli_as("agent-2", &["plan", "list"]).await.fails(4, "permission_denied");

    // A certificate from another CA.
    let other = tempfile::tempdir().expect("dir");
    let out = other.path().join("certs");
    flotilla(&["certs", "init", "--out", out.to_str().unwrap()]).await.ok();
    std::fs::copy(fleet.certs().join("ca.pem"), out.join("trusted-ca.pem")).expect("copy");
    std::fs::rename(out.join("trusted-ca.pem"), out.join("ca.pem")).expect("rename");
    let foreign = tokio::process::Command::new(binary("flotilla"))
        .args(["plan", "create", "--dir", dir_arg])
        .env("FLOTILLA_COORDINATOR", format!("https://127.0.0.1:{}", fleet.port))
        .env("FLOTILLA_CERTS", &out)
        .output()
        .await
        .expect("run");
    assert_eq!(foreign.status.code(), Some(3), "{foreign:?}");
    assert!(String::from_utf8_lossy(&foreign.stderr).contains("coordinator"), "{foreign:?}");

    // No client certificate at all: TLS to the right server, then a plain refusal.
    let ca = std::fs::read(fleet.certs().join("ca.pem")).expect("ca");
    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca));
    let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", fleet.port))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    let mut client = flotilla_proto::v1::operator_service_client::OperatorServiceClient::new(channel.clone());
    let refused = client.list_plans(flotilla_proto::v1::ListPlansRequest {}).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(refused.message().contains("client certificate is required"), "{refused:?}");
    let mut agent_client = flotilla_proto::v1::agent_service_client::AgentServiceClient::new(channel);
    let refused = agent_client
        .register(flotilla_proto::v1::RegisterRequest { name: "sneaky".into(), ..Default::default() })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // An agent asking for a target its identity does not allow.
    fleet.start_agent("agent-1", &[FleetTarget::new("sq-99", &db.url, &[("env", "test")])]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !fleet.log_of("agent-1").contains("may not serve target(s) sq-99") {
        assert!(std::time::Instant::now() < deadline, "{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Nothing changed: no plans, one target, and the database untouched.
    assert_eq!(fleet.cli(&["--json", "plan", "list"]).await.ok().json().as_array().map(Vec::len), Some(0));
    let rows = fleet.cli(&["--json", "fleet", "status"]).await.ok().json();
    assert_eq!(
        rows.as_array().map(|r| r.iter().map(|t| t["target"].clone()).collect::<Vec<_>>()),
        Some(vec!["sq-01".into()])
    );
    assert!(db.history().await.is_empty());
}

/// MySQL commits DDL statement by statement: an agent killed mid-migration leaves it dirty. After the lock expires
/// the step is reassigned, the agent reads the dirty record, refuses to run anything twice, and the plan halts as its
/// policy (a budget of 0) says.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_mid_mysql_migration_leaves_it_dirty_and_the_plan_halts() {
    let db = TestDb::new(Mysql).await;
    let targets = vec![FleetTarget::new("my-01", &db.url, &[("env", "test")])];
    let mut fleet = Fleet::start(&[("agent-1", "my-*")], Some(etcd_url()), 3).await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(1).await;
    let dir = Dir::new();
    dir.file("000001_two_tables.up.sql", "CREATE TABLE a (id INT);\nSELECT SLEEP(3);\nCREATE TABLE b (id INT);")
        .file("000001_two_tables.down.sql", "DROP TABLE IF EXISTS b;\nDROP TABLE IF EXISTS a;");
    let id = fleet.create(dir.path(), &["--max-failures", "0"]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await; // CREATE TABLE a has committed; SLEEP runs
    fleet.kill_agent("agent-1").await;
    fleet.wait_plan(&id, "reconciled", |p| count(p, "pending") == 1).await;
    fleet.start_agent("agent-1", &targets).await;
    let plan = fleet.wait_state(&id, "halted").await;
    let step = &steps(&plan)["my-01"];
    assert_eq!(step["state"], "failed");
    assert!(step["error"].as_str().unwrap_or_default().contains("dirty"), "{step:#}");
    let history = db.history().await;
    assert_eq!(history, vec![(1, "dirty".to_string(), 1)], "statement 1 of 3 committed, recorded once");
    assert!(db.has_table("a").await && !db.has_table("b").await, "nothing ran twice, nothing ran past the kill");
    let status = fleet.cli(&["--json", "fleet", "status"]).await.json();
    assert_eq!(status[0]["dirty"], true, "{status:#}");
}

/// `plan watch --json` and `plan watch` on a terminal (a pty, through util-linux `script`), while the plan is
/// paused, resumed and aborted: each action shows as such (`paused`, `resumed`, `aborted`, by whom and why), and the
/// watch ends on the abort with exit 1.
#[tokio::test(flavor = "multi_thread")]
async fn watch_shows_pause_resume_and_abort_and_ends_on_the_abort() {
    let (fleet, _dbs, _) = pg_fleet(Store::Sqlite, 6, 10).await;
    let dir = slow_bundle(1);
    for terminal in [false, true] {
        let id = fleet.create(dir.path(), &["--waves", "100%", "--parallel", "1"]).await;
        fleet.wait_plan(&id, "running a step", |p| count(p, "running") == 1).await;
        let flotilla = binary("flotilla");
        let mut watch = if terminal {
            let mut cmd = tokio::process::Command::new("script");
            cmd.args(["-qefc", &format!("{} plan watch {id}", flotilla.display()), "/dev/null"]);
            cmd
        } else {
            let mut cmd = tokio::process::Command::new(&flotilla);
            cmd.args(["--json", "plan", "watch", &id]);
            cmd
        };
        let child = watch
            .env("FLOTILLA_COORDINATOR", format!("https://127.0.0.1:{}", fleet.port))
            .env("FLOTILLA_CERTS", fleet.certs())
            .env("FLOTILLA_OPERATOR", "admin")
            .env("TERM", "xterm")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn watch");
        fleet.cli(&["plan", "pause", &id, "--reason", "checking dashboards"]).await.ok();
        fleet.wait_plan(&id, "quiet", |p| in_flight(p) == 0).await;
        fleet.cli(&["plan", "resume", &id]).await.ok();
        fleet.wait_plan(&id, "running again", |p| count(p, "running") == 1).await;
        fleet.cli(&["plan", "abort", &id, "--reason", "bad release"]).await.ok();
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("the watch ends on the abort")
            .expect("watch output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "an aborted plan is exit 1 (terminal: {terminal}): {stdout}");
        if terminal {
            for line in [
                "paused by operator:admin: checking dashboards",
                "resumed by operator:admin",
                "aborted by operator:admin: bad release",
            ] {
                assert!(stdout.contains(line), "`{line}` on the terminal: {stdout}");
            }
            assert!(stdout.contains("\x1b["), "a terminal gets bars (escape sequences): {stdout}");
        } else {
            let kinds: Vec<String> = stdout
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|e| e["kind"].as_str().map(str::to_string))
                .collect();
            for kind in ["paused", "resumed", "aborted"] {
                assert!(kinds.iter().any(|k| k == kind), "`{kind}` in the JSON stream: {kinds:?}");
            }
            assert!(!kinds.iter().any(|k| k == "pause" || k == "abort"), "actions are not event kinds: {kinds:?}");
        }
    }
}

/// A re-run with nothing pending: the agent checks each target once, read-only, and the coordinator finishes the
/// steps found at the goal without a lock or an assignment. A target changed outside Flotilla since is not at the
/// goal and runs as usual; one whose recorded checksum no longer matches fails as it would without the check.
#[tokio::test(flavor = "multi_thread")]
async fn a_re_run_assigns_only_targets_not_at_the_goal() {
    let (fleet, dbs, _) = pg_fleet(Store::Sqlite, 6, 10).await;
    let dir = bundle();
    let first = fleet.create(dir.path(), &["--waves", "100%", "--parallel", "3"]).await;
    fleet.wait_state(&first, "succeeded").await;
    // Someone rolled pg-03 back by hand, and pg-05's record of migration 1 no longer matches its file.
    dbs[2].exec("DROP INDEX accounts_status").await;
    dbs[2].exec("DELETE FROM flotilla_schema_history WHERE version = 3").await;
    dbs[4].exec("UPDATE flotilla_schema_history SET checksum = 'changed-since' WHERE version = 1").await;

    let again = fleet.create(dir.path(), &["--waves", "100%", "--parallel", "3"]).await;
    let plan = fleet.wait_plan(&again, "over", |p| p["state"] != "running" && p["state"] != "pending").await;
    let states: Vec<(String, String)> =
        steps(&plan).into_iter().map(|(t, s)| (t, s["state"].as_str().unwrap_or("").to_string())).collect();
    let expected: Vec<(String, String)> = ["succeeded", "succeeded", "succeeded", "succeeded", "failed", "succeeded"]
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("pg-{:02}", i + 1), s.to_string()))
        .collect();
    assert_eq!(states, expected, "{plan:#}");
    let events = fleet.cli(&["--json", "plan", "watch", &again]).await.stdout;
    let assigned: Vec<&str> = events.lines().filter(|l| l.contains("\"assigned\"")).collect();
    assert_eq!(assigned.len(), 2, "only pg-03 and pg-05 are assigned: {events}");
    assert!(assigned.iter().all(|l| l.contains("pg-03") || l.contains("pg-05")), "{events}");
    let at_goal = events.lines().filter(|l| l.contains("at_goal")).count();
    assert_eq!(at_goal, 4, "four steps finished from the check: {events}");
    assert!(steps(&plan)["pg-05"]["error"].as_str().unwrap_or("").contains("checksum"), "{plan:#}");
    // pg-03 is back at the goal, and nothing ran twice anywhere else.
    for (i, db) in dbs.iter().enumerate() {
        assert_eq!(versions(&db.history().await), vec![1, 2, 3], "pg-{:02}", i + 1);
    }
    assert_eq!(steps(&plan)["pg-01"]["version_before"], 3, "{plan:#}");
}

/// An agent's MongoDB targets on one deployment share one client, so a rollout over sixteen tenant databases opens a
/// handful of connections to the server (its monitor's, and a pool as wide as the work at once), not a monitor and a
/// pool per database. Counted by the server itself, by the connections' application name.
#[tokio::test(flavor = "multi_thread")]
async fn mongodb_targets_on_one_deployment_share_one_client() {
    let dbs = databases(Mongodb, 16).await;
    let app = format!("flotilla-share-{:08x}", rand::random::<u32>());
    let with_app = |url: &str| format!("{url}{}appName={app}", if url.contains('?') { '&' } else { '?' });
    let targets: Vec<FleetTarget> = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| FleetTarget::new(&format!("mo-{:02}", i + 1), &with_app(&db.url), &[("env", "test")]))
        .collect();
    let mut fleet = Fleet::start(&[("agent-1", "mo-*")], Some(etcd_url()), 10).await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(16).await;
    let id = fleet.create(bundle().path(), &["--waves", "100%", "--parallel", "8"]).await;
    fleet.wait_state(&id, "succeeded").await;
    for db in &dbs {
        assert_eq!(versions(&db.history().await), vec![1, 2, 3]);
    }
    // The agent keeps its drivers (and so the client) for a while after the plan: count its connections now.
    let admin = dbs[0].mongo().await.client().database("admin");
    let ops: Vec<bson::Document> = futures_util::TryStreamExt::try_collect(
        admin
            .aggregate([
                bson::doc! { "$currentOp": { "allUsers": true, "idleConnections": true } },
                bson::doc! { "$match": { "appName": &app } },
            ])
            .await
            .expect("currentOp"),
    )
    .await
    .expect("ops");
    // Shared: two monitors' and a pool as wide as the checks at once (16), 12 when measured. A client each held
    // three per database (its monitors' and one to work on): 48.
    assert!((1..=18).contains(&ops.len()), "{} connections from the agent's {} targets", ops.len(), dbs.len());
}

/// A plan's checks reach an agent in batches of 128 targets, all at once, while the agent re-reads every history on
/// its own clock. It reads 16 targets at a time over all of them, so a re-run over 260 databases opens about as many
/// connections as it reads at once, not one per target in every batch. The databases belong to a role the server
/// allows 32 connections (the agent's 16 reads, 4 steps and 4 idle connections fit): a check the server refused
/// would have its target assigned.
#[tokio::test(flavor = "multi_thread")]
async fn checks_in_many_batches_read_a_bounded_number_of_targets_at_once() {
    use futures_util::StreamExt;
    let dbs: Vec<TestDb> =
        futures_util::stream::iter(0..260).map(|_| TestDb::new(Postgres)).buffer_unordered(16).collect().await;
    let role = "flotilla_bounded_reads";
    dbs[0]
        .exec(&format!(
            "DO $$ BEGIN CREATE ROLE {role} LOGIN CONNECTION LIMIT 32; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ))
        .await;
    let mut targets = Vec::new();
    for (i, db) in dbs.iter().enumerate() {
        dbs[0].exec(&format!("ALTER DATABASE \"{}\" OWNER TO {role}", db.name)).await;
        let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
        targets.push(FleetTarget::new(&format!("pg-{:03}", i + 1), &url, &[("env", "test")]));
    }
    let mut fleet = Fleet::start(&[("agent-1", "pg-*")], Some(etcd_url()), 10).await;
    fleet.agent_config = "[connections]\nmax_idle = 4\nidle_secs = 300\n".into();
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(dbs.len()).await;
    let dir = bundle();
    let first = fleet.create(dir.path(), &["--waves", "100%", "--parallel", "4"]).await;
    fleet.wait_state(&first, "succeeded").await;

    let again = fleet.create(dir.path(), &["--waves", "100%", "--parallel", "4"]).await;
    let plan = fleet.wait_plan(&again, "over", |p| p["state"] != "running" && p["state"] != "pending").await;
    assert_eq!(plan["state"], "succeeded", "{plan:#}");
    let events = fleet.cli(&["--json", "plan", "watch", &again]).await.stdout;
    let refused: Vec<&str> = events.lines().filter(|l| l.contains("\"assigned\"")).collect();
    assert!(
        refused.is_empty(),
        "{} targets were assigned after a check, the first: {:?}",
        refused.len(),
        refused.first()
    );
    assert_eq!(events.lines().filter(|l| l.contains("at_goal")).count(), dbs.len(), "every target found at its goal");
}
