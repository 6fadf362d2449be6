//! Partitions: a TCP proxy between real components cuts, holds or blackholes the coordinator, etcd, the store or a
//! database, and every target still ends where the plan says, having run nothing twice.

use super::*;

/// A step that fails before it reaches the database (here: the database refuses connections) does not know where
/// the target was. Neither `flotilla rollback` nor the rollback-plan policy may take that target down to 0 once
/// the database is back; a target whose prior version is known is still rolled back.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_that_never_reached_its_database_is_never_rolled_back_to_zero() {
    let db = TestDb::new(Postgres).await;
    let (proxy, url) = Proxy::in_front_of(&db.url).await;
    let mut fleet = Fleet::start(&[("agent-1", "pg-*")], Some(etcd_url()), 3).await;
    fleet.start_agent("agent-1", &[FleetTarget::new("pg-01", &url, &[("env", "test")])]).await;
    fleet.wait_targets(1).await;
    let dir = three_migrations();

    let p1 = fleet.create(dir.path(), &["--to", "2"]).await;
    fleet.wait_state(&p1, "succeeded").await;
    assert_eq!(versions(&db.history().await), vec![1, 2]);

    // The database goes away: the next plan's step fails before it reads the history.
    proxy.set(Fault::Refuse);
    let p2 = fleet.create(dir.path(), &["--max-failures", "0"]).await;
    let plan = fleet.wait_state(&p2, "halted").await;
    let step = &steps(&plan)["pg-01"];
    assert_eq!(step["state"], "failed", "{step:#}");
    assert!(step["version_before"].is_null(), "an unread version is unknown, not 0: {step:#}");
    let p3 = fleet.create(dir.path(), &["--max-failures", "0", "--on-failure", "rollback-plan"]).await;
    fleet.wait_state(&p3, "halted").await;

    // The database is back. Rolling back either plan must not run a single DOWN.
    proxy.set(Fault::Pass);
    fleet.cli(&["rollback", &p2]).await.fails(4, "never read: pg-01");
    let plans = fleet.cli(&["--json", "plan", "list"]).await.ok().json();
    let rollbacks: Vec<&serde_json::Value> =
        plans.as_array().expect("plans").iter().filter(|p| p["rollback_of"].is_string()).collect();
    assert!(rollbacks.is_empty(), "no rollback plan was created: {plans:#}");
    let events = fleet.cli(&["--json", "plan", "watch", &p3]).await;
    assert!(events.stdout.contains("\"rollback_left_alone\""), "the plan says it left pg-01 alone: {}", events.stdout);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(versions(&db.history().await), vec![1, 2], "nothing was rolled back");
    assert_eq!(db.count("orders").await, 1, "the data is still there");

    // A plan that did read the target's version is rolled back as before: p1 found 0.
    let rb = fleet.cli(&["--json", "rollback", &p1]).await.ok().json()["id"].as_str().expect("id").to_string();
    fleet.wait_state(&rb, "succeeded").await;
    assert!(db.history().await.is_empty());
}

/// The shipped systemd unit restarts a killed agent after 2 s, well inside the lease TTL (10 s here): the
/// coordinator still holds the lock and renews it for the reconnected agent, which knows nothing of the step. The
/// agent's heartbeats list what it runs; the missing step is taken back and run again, once.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_restarted_faster_than_the_lease_ttl_does_not_leave_its_step_hanging() {
    let dir = slow_second(3);
    let (mut fleet, db, targets) = one_target_at_v1(&dir, 10, None).await;
    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    fleet.kill_agent("agent-1").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.start_agent("agent-1", &targets).await;
    let plan = fleet.wait_state(&id, "succeeded").await;
    let events = fleet.cli(&["--json", "plan", "watch", &id]).await;
    assert!(events.stdout.contains("is not running the step"), "reconciled for the right reason: {}", events.stdout);
    assert!(steps(&plan)["pg-01"]["fencing_token"].as_u64() > Some(0));
    ran_once_and_rolls_back_to_where_it_was(&fleet, &db, &id, &[1, 2]).await;
}

/// The coordinator dies while the agent runs the step; the agent finishes, cannot report, holds the result, and
/// sends it when a new coordinator process is up. The step is recorded once, with the version it started from.
#[tokio::test(flavor = "multi_thread")]
async fn a_result_held_while_the_coordinator_was_down_is_delivered_when_it_returns() {
    let dir = slow_second(2);
    let (mut fleet, db, _) = one_target_at_v1(&dir, 3, None).await;
    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    fleet.kill_coordinator().await;
    // The migration commits meanwhile; the agent's retries (about 3 s) run out before the coordinator is back.
    tokio::time::sleep(Duration::from_secs(6)).await;
    fleet.start_coordinator().await;
    let plan = fleet.wait_state(&id, "succeeded").await;
    assert_eq!(steps(&plan)["pg-01"]["version_after"], 2, "{plan:#}");
    ran_once_and_rolls_back_to_where_it_was(&fleet, &db, &id, &[1, 2]).await;
}

/// Agent and coordinator lose each other (a blackhole: packets vanish, nothing is refused) while the database
/// stays reachable. The migration commits during the partition; the coordinator, hearing nothing, lets the lease
/// expire and takes the step back; once the partition heals the agent reconnects, its late result is acknowledged
/// and ignored, and the re-run finds the migration applied.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_between_agent_and_coordinator_mid_step_converges_without_a_second_run() {
    let dir = slow_second(2);
    let db = TestDb::new(Postgres).await;
    let targets = vec![FleetTarget::new("pg-01", &db.url, &[("env", "test")])];
    let mut fleet = Fleet::start(&[("agent-1", "pg-*")], Some(etcd_url()), 3).await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", fleet.port)).await;
    fleet.start_agent_via("agent-1", &targets, proxy.addr().port()).await;
    fleet.wait_targets(1).await;
    let p0 = fleet.create(dir.path(), &["--to", "1"]).await;
    fleet.wait_state(&p0, "succeeded").await;

    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    proxy.set(Fault::Blackhole);
    // The coordinator notices on its own: heartbeats stop, the lease expires, the step goes back to pending.
    fleet.wait_plan(&id, "reconciled", |p| count(p, "pending") == 1).await;
    proxy.set(Fault::Reset);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(Fault::Pass);
    fleet.wait_state(&id, "succeeded").await;
    ran_once_and_rolls_back_to_where_it_was(&fleet, &db, &id, &[1, 2]).await;
}

/// The coordinator loses etcd (blackholed) in the middle of a step, for longer than the lease TTL: the lock
/// cannot be renewed and expires. When etcd is reachable again the lease is found lost, the step is taken back,
/// and the re-run under a new token finds the migration applied: nothing runs twice.
#[tokio::test(flavor = "multi_thread")]
async fn losing_etcd_mid_step_past_the_lease_ttl_runs_nothing_twice() {
    let dir = slow_second(3);
    let (etcd, etcd_through) = Proxy::in_front_of(&etcd_url()).await;
    let db = TestDb::new(Postgres).await;
    let targets = vec![FleetTarget::new("pg-01", &db.url, &[("env", "test")])];
    let mut fleet = Fleet::start(&[("agent-1", "pg-*")], Some(etcd_through), 3).await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(1).await;
    let p0 = fleet.create(dir.path(), &["--to", "1"]).await;
    fleet.wait_state(&p0, "succeeded").await;

    let id = fleet.create(dir.path(), &[]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") == 1).await;
    etcd.set(Fault::Blackhole);
    tokio::time::sleep(Duration::from_secs(5)).await; // past the 3 s TTL: etcd drops the lease
    etcd.set(Fault::Reset);
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.set(Fault::Pass);
    let plan = fleet.wait_state(&id, "succeeded").await;
    assert_eq!(count(&plan, "succeeded"), 1, "{plan:#}");
    ran_once_and_rolls_back_to_where_it_was(&fleet, &db, &id, &[1, 2]).await;
}

/// Forty of an agent's targets are unreachable (a blackhole: every connection attempt waits out its 10 s timeout)
/// and one is fine. Reading the dead ones' histories must never hold back heartbeats or work on the healthy one:
/// its plan completes while the unreachable ones are still being read.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_targets_never_hold_back_heartbeats_or_work_on_the_others() {
    let good = TestDb::new(Postgres).await;
    let dead = TestDb::new(Postgres).await;
    let (blackhole, dead_url) = Proxy::in_front_of(&dead.url).await;
    blackhole.set(Fault::Blackhole);
    let mut targets = vec![FleetTarget::new("pg-good", &good.url, &[("env", "good")])];
    targets.extend((0..40).map(|i| FleetTarget::new(&format!("pg-dead-{i:02}"), &dead_url, &[("env", "dead")])));
    let mut fleet = Fleet::start(&[("agent-1", "pg-*")], Some(etcd_url()), 3).await;
    fleet.start_agent("agent-1", &targets).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let agents = fleet.cli(&["--json", "agents"]).await.json();
        if agents[0]["connected"] == true && agents[0]["targets"].as_array().map(Vec::len) == Some(41) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{agents:#}\n{}", fleet.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dir = three_migrations();
    let id = fleet.create(dir.path(), &["--select", "env=good"]).await;
    fleet.wait_state(&id, "succeeded").await;
    assert_eq!(versions(&good.history().await), vec![1, 2, 3]);
    let status = fleet.cli(&["--json", "fleet", "status", "--select", "env=dead"]).await.json();
    let unread = status.as_array().expect("rows").iter().filter(|r| r["applied_version"].is_null()).count();
    assert!(unread > 0, "the plan finished while the dead targets were still being read: {status:#}");
    let agents = fleet.cli(&["--json", "agents"]).await.json();
    assert_eq!(agents[0]["connected"], true, "heartbeats went on: {agents:#}");
}

/// One agent is cut off (blackholed) while the other agents' targets roll out: the rest of the fleet finishes
/// while it is partitioned, and its targets converge once the partition heals.
#[tokio::test(flavor = "multi_thread")]
async fn one_partitioned_agent_does_not_hold_back_the_rest_of_the_fleet() {
    let dbs = futures_util::future::join_all((0..6).map(|_| TestDb::new(Sqlite))).await;
    let target = |i: usize| FleetTarget::new(&format!("sq-{:02}", i + 1), &dbs[i].url, &[("env", "test")]);
    let mut fleet = Fleet::start(&[("agent-near", "sq-0[123]"), ("agent-far", "sq-0[456]")], None, 3).await;
    let proxy = Proxy::start(&format!("127.0.0.1:{}", fleet.port)).await;
    fleet.start_agent("agent-near", &[target(0), target(1), target(2)]).await;
    fleet.start_agent_via("agent-far", &[target(3), target(4), target(5)], proxy.addr().port()).await;
    fleet.wait_targets(6).await;
    proxy.set(Fault::Blackhole);
    let dir = Dir::new();
    dir.migration(Sqlite, 1, "a", "CREATE TABLE a (id INT);", "DROP TABLE a;");
    let id = fleet.create(dir.path(), &["--waves", "100%", "--parallel", "6"]).await;
    let plan = fleet.wait_plan(&id, "done near", |p| count(p, "succeeded") >= 3).await;
    for i in 0..3 {
        assert_eq!(steps(&plan)[&format!("sq-{:02}", i + 1)]["state"], "succeeded", "{plan:#}");
    }
    proxy.set(Fault::Reset);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(Fault::Pass);
    fleet.wait_state(&id, "succeeded").await;
    for db in &dbs {
        assert_eq!(versions(&db.history().await), vec![1]);
    }
}

/// The coordinator's connections to its PostgreSQL store go silent mid-plan (a blackhole through a proxy) and are
/// then reset, as a network failure would: store calls fail or stall meanwhile, the pool reconnects, and every
/// step is recorded once.
#[tokio::test(flavor = "multi_thread")]
async fn store_connections_blackholed_then_reset_mid_plan_lose_nothing() {
    let store = TestDb::new(Postgres).await;
    let (proxy, store_url) = Proxy::in_front_of(&store.url).await;
    let (dbs, targets) = pg_targets(3).await;
    let mut fleet = Fleet::start_on_store(&[("agent-1", "pg-*")], Some(etcd_url()), 3, &store_url).await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(3).await;
    let dir = slow_second(2);
    let id = fleet.create(dir.path(), &["--waves", "100%", "--parallel", "3"]).await;
    fleet.wait_plan(&id, "running", |p| count(p, "running") >= 1).await;
    proxy.set(Fault::Blackhole);
    tokio::time::sleep(Duration::from_secs(4)).await; // the migrations commit; their results cannot be stored
    proxy.set(Fault::Reset);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(Fault::Pass);
    let plan = fleet.wait_state(&id, "succeeded").await;
    assert_eq!(count(&plan, "succeeded"), 3, "{plan:#}");
    for db in &dbs {
        assert_eq!(versions(&db.history().await), vec![1, 2]);
        assert_eq!(db.count("runs").await, 1, "no migration ran twice");
    }
}
