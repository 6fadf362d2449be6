//! Bad input from the wire or the store (oversized and malformed RPCs, a large bundle, broken stored rows, long
//! names): a clear status, nothing changed, and the rest of the fleet goes on.

use super::*;

#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: tonic::Code, needle: &str) {
    let status = result.expect_err("the call must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(needle), "expected `{needle}` in {status:?}");
}

/// Every RPC given bad input answers with a status that says what is wrong, and nothing is stored: no plan, no
/// target, no event; a message over the one size limit is refused by the transport, the coordinator unharmed.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_and_malformed_rpcs_get_a_clear_status_and_change_nothing() {
    use flotilla_proto::v1 as pb;
    use tonic::Code;
    let db = TestDb::new(Sqlite).await;
    let mut fleet = Fleet::start(&[("agent-1", "sq-*")], None, 5).await;
    fleet.start_agent("agent-1", &[FleetTarget::new("sq-01", &db.url, &[("env", "test")])]).await;
    fleet.wait_targets(1).await;
    let unlimited = usize::MAX;
    let mut agent = pb::agent_service_client::AgentServiceClient::new(fleet.channel_as("agent-1").await)
        .max_encoding_message_size(unlimited);
    let mut operator = pb::operator_service_client::OperatorServiceClient::new(fleet.channel_as("admin").await)
        .max_encoding_message_size(unlimited);

    let target = |name: &str, engine: pb::Engine| pb::TargetInfo {
        name: name.into(),
        engine: engine as i32,
        labels: Default::default(),
    };
    let register = |targets| pb::RegisterRequest { targets, ..Default::default() };
    refused(
        agent.register(register(vec![target("sq-02", pb::Engine::Unspecified)])).await,
        Code::InvalidArgument,
        "target `sq-02`: engine is required",
    );
    refused(agent.register(register(vec![target("", pb::Engine::Sqlite)])).await, Code::InvalidArgument, "no name");
    refused(
        agent
            .register(register(vec![target("sq-01", pb::Engine::Sqlite), target("sq-01", pb::Engine::Postgres)]))
            .await,
        Code::InvalidArgument,
        "target `sq-01` is listed twice",
    );
    refused(
        agent.register(register(vec![target("pg-01", pb::Engine::Postgres)])).await,
        Code::PermissionDenied,
        "may not serve",
    );
    let result = |plan: &str, target: &str| pb::StepResult {
        plan_id: plan.into(),
        target: target.into(),
        fencing_token: 1,
        succeeded: true,
        ..Default::default()
    };
    refused(agent.report_result(result("no-such-plan", "sq-01")).await, Code::NotFound, "has no step");
    refused(agent.report_result(result("no-such-plan", "pg-01")).await, Code::PermissionDenied, "does not serve");
    let progress = |kind: i32| pb::ProgressEvent {
        plan_id: "no-such-plan".into(),
        target: "sq-01".into(),
        kind,
        version: "1".into(),
        version_before: "0".into(),
        direction: pb::Direction::Up as i32,
        ..Default::default()
    };
    let stream = |kind: i32| tokio_stream::iter(vec![progress(kind)]);
    refused(agent.report_progress(stream(pb::EventKind::StepStarted as i32)).await, Code::NotFound, "has no step");
    let mut unknown_before = progress(pb::EventKind::StepStarted as i32);
    unknown_before.version_before = String::new();
    refused(
        agent.report_progress(tokio_stream::iter(vec![unknown_before])).await,
        Code::InvalidArgument,
        "version_before: version `` is not a string of digits",
    );
    refused(
        agent.report_progress(stream(999)).await,
        Code::InvalidArgument,
        "event kind: 999 is not a value this build knows",
    );
    refused(
        agent.report_progress(stream(pb::EventKind::Finished as i32)).await,
        Code::InvalidArgument,
        "`finished` is not a kind of step progress",
    );
    let mut no_direction = progress(pb::EventKind::Statement as i32);
    no_direction.direction = 0;
    refused(
        agent.report_progress(tokio_stream::iter(vec![no_direction])).await,
        Code::InvalidArgument,
        "direction is required",
    );
    let huge = "x".repeat(flotilla_proto::MAX_MESSAGE_BYTES + 1024);
    let mut oversized = register(vec![target("sq-01", pb::Engine::Sqlite)]);
    oversized.agent_version = huge.clone();
    refused(agent.register(oversized).await, Code::OutOfRange, "message length too large");

    let submit = |bundle: Vec<u8>, selector: &str| pb::SubmitPlanRequest {
        bundle,
        selector: selector.into(),
        strategy: Some(pb::Strategy { waves: vec!["100%".into()], max_parallel: 1, ..Default::default() }),
        goal: Some(pb::Goal { direction: pb::Direction::Up as i32, version: "0".into() }),
        ..Default::default()
    };
    let good = br#"{"sets": {"sqlite": {"000001_a.up.sql": "CREATE TABLE a (id INT);", "000001_a.down.sql": "DROP TABLE a;"}}}"#;
    refused(operator.submit_plan(submit(b"not json".to_vec(), "")).await, Code::InvalidArgument, "expected");
    let unknown_engine = br#"{"sets": {"oracle": {"000001_a.up.sql": "SELECT 1;"}}}"#;
    refused(
        operator.submit_plan(submit(unknown_engine.to_vec(), "")).await,
        Code::InvalidArgument,
        "unknown engine `oracle`",
    );
    let escape = br#"{"sets": {"sqlite": {"../000001_a.up.sql": "SELECT 1;"}}}"#;
    refused(operator.submit_plan(submit(escape.to_vec(), "")).await, Code::InvalidArgument, "../000001_a.up.sql");
    let unreadable =
        br#"{"sets": {"sqlite": {"000001_a.up.sql": "CREATE TABLE a (id INT);", "000001_b.up.sql": "SELECT 1;"}}}"#;
    refused(operator.submit_plan(submit(unreadable.to_vec(), "")).await, Code::InvalidArgument, "do not read");
    refused(operator.submit_plan(submit(good.to_vec(), "env=")).await, Code::InvalidArgument, "selector");
    refused(
        operator.submit_plan(submit(good.to_vec(), "env=nowhere")).await,
        Code::FailedPrecondition,
        "matches no registered target",
    );
    let mut bad_waves = submit(good.to_vec(), "");
    bad_waves.strategy = Some(pb::Strategy { waves: vec!["150%".into()], ..Default::default() });
    refused(operator.submit_plan(bad_waves).await, Code::InvalidArgument, "150%");
    // Between the bundle limit and the message limit: through the transport, refused by the coordinator.
    let mut large = submit(Vec::new(), "");
    large.bundle = format!(
        r#"{{"sets": {{"sqlite": {{"000001_a.up.sql": "{}"}}}}}}"#,
        "x".repeat(flotilla_core::bundle::MAX_BUNDLE_BYTES)
    )
    .into_bytes();
    refused(operator.submit_plan(large).await, Code::InvalidArgument, "over the limit of 66060288 bytes");
    refused(operator.submit_plan(submit(huge.into_bytes(), "")).await, Code::OutOfRange, "message length too large");
    refused(operator.get_plan(pb::GetPlanRequest { id: "no-such-plan".into() }).await, Code::NotFound, "no-such-plan");
    refused(
        operator.pause_plan(pb::PlanAction { id: "no-such-plan".into(), reason: String::new() }).await,
        Code::NotFound,
        "no-such-plan",
    );
    refused(
        operator.create_rollback(pb::PlanAction { id: "no-such-plan".into(), reason: String::new() }).await,
        Code::NotFound,
        "no-such-plan",
    );

    // Nothing changed, and the coordinator still serves.
    assert_eq!(fleet.cli(&["--json", "plan", "list"]).await.ok().json().as_array().map(Vec::len), Some(0));
    let rows = fleet.cli(&["--json", "fleet", "status"]).await.ok().json();
    let names: Vec<&str> = rows.as_array().expect("rows").iter().filter_map(|r| r["target"].as_str()).collect();
    assert_eq!(names, ["sq-01"], "no target was registered by the refused calls");
    assert!(db.history().await.is_empty());
}

/// A bundle larger than tonic's default 4 MiB message reaches the agent and is applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_5_mib_bundle_reaches_the_agent_and_applies() {
    let db = TestDb::new(Sqlite).await;
    let mut fleet = Fleet::start(&[("agent-1", "sq-*")], None, 5).await;
    fleet.start_agent("agent-1", &[FleetTarget::new("sq-01", &db.url, &[("env", "test")])]).await;
    fleet.wait_targets(1).await;
    let dir = Dir::new();
    // 5 MiB of reference data in the UP: the kind of seed migration that makes bundles large.
    let rows: Vec<String> = (0..60_000).map(|i| format!("({i}, '{}')", "r".repeat(90))).collect();
    let up =
        format!("CREATE TABLE codes (id INT PRIMARY KEY, label TEXT);\nINSERT INTO codes VALUES {};", rows.join(",\n"));
    assert!(up.len() > 5 << 20, "{} bytes", up.len());
    dir.migration(Sqlite, 1, "codes", &up, "DROP TABLE codes;");
    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_state(&id, "succeeded").await;
    assert_eq!(versions(&db.history().await), vec![1], "{}", fleet.logs());
    assert_eq!(db.count("codes").await, 60_000);
}

/// Target names as long as the store allows, on the PostgreSQL store: a failed target's rollback plan
/// (`rollback-failed`) is created and runs; its id is not built from the name.
#[tokio::test(flavor = "multi_thread")]
async fn rollback_failed_with_long_target_names_works_on_the_postgres_store() {
    let store = TestDb::new(Postgres).await;
    let dbs = futures_util::future::join_all((0..2).map(|_| TestDb::new(Postgres))).await;
    let long = |i: usize| format!("pg-{i}-{}", "tenant-with-a-long-name-".repeat(4));
    let targets: Vec<FleetTarget> =
        dbs.iter().enumerate().map(|(i, db)| FleetTarget::new(&long(i), &db.url, &[("env", "test")])).collect();
    assert!(targets[0].name.len() > 64);
    let mut fleet = Fleet::start_on_store(&[("agent-1", "pg-*")], Some(etcd_url()), 3, &store.url).await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(2).await;
    // Migration 3 fails on target 1 only (its index name is taken), after 1 and 2 have committed there.
    dbs[1].exec("CREATE TABLE other (status TEXT)").await;
    dbs[1].exec("CREATE INDEX orders_status ON other (status)").await;
    let dir = three_migrations();
    let id =
        fleet.create(dir.path(), &["--waves", "100%", "--max-failures", "1", "--on-failure", "rollback-failed"]).await;
    let plan = fleet.wait_plan(&id, "over", |p| p["state"] != "running" && p["state"] != "pending").await;
    let s = steps(&plan);
    assert_eq!(s[&long(1)]["state"], "failed", "{plan:#}");
    let rollback = fleet.rollbacks_of(&id).await;
    assert_eq!(rollback.len(), 1, "{rollback:?}");
    fleet.wait_state(&rollback[0], "succeeded").await;
    assert!(rollback[0].len() <= 64, "{}", rollback[0]);
    assert_eq!(versions(&dbs[0].history().await), vec![1, 2, 3]);
    assert!(dbs[1].history().await.is_empty(), "the failed target is back where the plan found it");
    assert!(!dbs[1].has_table("orders").await);
}

/// One plan's stored data breaks (its bundle is gone from the store): that plan halts saying why, and the other
/// plans go on being scheduled; before, the error stopped every tick for every plan.
#[tokio::test(flavor = "multi_thread")]
async fn one_plan_with_broken_stored_data_halts_and_the_others_go_on() {
    let dbs = futures_util::future::join_all((0..3).map(|_| TestDb::new(Sqlite))).await;
    let targets: Vec<FleetTarget> = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| {
            FleetTarget::new(&format!("sq-{:02}", i + 1), &db.url, &[("group", if i < 2 { "a" } else { "b" })])
        })
        .collect();
    let mut fleet = Fleet::start(&[("agent-1", "sq-*")], None, 5).await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(3).await;
    let (a, b) = (Dir::new(), Dir::new());
    a.migration(Sqlite, 1, "a", "CREATE TABLE a (id INT);", "DROP TABLE a;");
    b.migration(Sqlite, 1, "b", "CREATE TABLE b (id INT);", "DROP TABLE b;");
    // Plan A: wave 1 runs, then it waits for approval; meanwhile its bundle disappears from the store.
    let broken = fleet.create(a.path(), &["--select", "group=a", "--waves", "1,100%", "--approve-waves"]).await;
    fleet.wait_state(&broken, "awaiting_approval").await;
    let store = format!("sqlite://{}", fleet.dir.path().join("store.db").display());
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&store).await.expect("store");
    sqlx::Executor::execute(&mut conn, "DELETE FROM bundles").await.expect("delete");
    fleet.cli(&["plan", "approve", &broken]).await.ok();
    let halted = fleet.wait_state(&broken, "halted").await;
    let events = fleet.cli(&["--json", "plan", "watch", &broken]).await;
    assert!(events.stdout.contains("stored data is broken"), "it says why: {}\n{halted:#}", events.stdout);
    // Plan B, created after A (so scheduled after it on every tick), still runs.
    let other = fleet.create(b.path(), &["--select", "group=b"]).await;
    fleet.wait_state(&other, "succeeded").await;
    assert!(dbs[2].has_table("b").await);
}
