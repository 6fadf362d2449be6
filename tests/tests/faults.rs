//! The fleet fault suite: real coordinator and agent processes, real databases and etcd, faults injected for real
//! (a TCP proxy between components, SIGKILL of processes). Each scenario asserts where every target ends up: its
//! history is what the plan says, or the plan halted naming why, and no migration ran twice. The table of
//! scenarios and outcomes is in docs/design/faults.md.

use flotilla_core::Engine::Postgres;
use flotilla_tests::fleet::{steps, Fleet, FleetTarget};
use flotilla_tests::proxy::{Fault, Proxy};
use flotilla_tests::*;

fn versions(history: &[(i64, String, i64)]) -> Vec<i64> {
    history.iter().map(|(v, _, _)| *v).collect()
}

/// Three PostgreSQL migrations; the first creates a table holding a row a rollback to 0 would destroy.
fn three_migrations() -> Dir {
    let dir = Dir::new();
    dir.migration(
        Postgres,
        1,
        "orders",
        "CREATE TABLE orders (id BIGINT PRIMARY KEY);\nINSERT INTO orders VALUES (42);",
        "DROP TABLE orders;",
    )
    .migration(
        Postgres,
        2,
        "status",
        "ALTER TABLE orders ADD COLUMN status TEXT;",
        "ALTER TABLE orders DROP COLUMN status;",
    )
    .migration(
        Postgres,
        3,
        "status_index",
        "CREATE INDEX orders_status ON orders (status);",
        "DROP INDEX orders_status;",
    );
    dir
}

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
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(versions(&db.history().await), vec![1, 2], "nothing was rolled back");
    assert_eq!(db.count("orders").await, 1, "the data is still there");

    // A plan that did read the target's version is rolled back as before: p1 found 0.
    let rb = fleet.cli(&["--json", "rollback", &p1]).await.ok().json()["id"].as_str().expect("id").to_string();
    fleet.wait_state(&rb, "succeeded").await;
    assert!(db.history().await.is_empty());
}
