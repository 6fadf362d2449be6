//! The fleet fault suite: real coordinator and agent processes, real databases and etcd, faults injected for real
//! (a TCP proxy between components, SIGKILL of processes). Each scenario asserts where every target ends up: its
//! history is what the plan says, or the plan halted naming why, and no migration ran twice. The table of
//! scenarios and outcomes is in docs/design/faults.md. By fault: `network` (partitions through a proxy), `kills`
//! (SIGKILL of processes), `input` (bad RPCs and stored data), `once` (one runner per database); the fixtures they
//! share are here.

use flotilla_core::Engine::{Mysql, Postgres, Sqlite};
use std::path::Path;
use std::time::Duration;

use flotilla_tests::fleet::{count, steps, Fleet, FleetTarget};
use flotilla_tests::proxy::{Fault, Proxy};
use flotilla_tests::servers::{Kind, Server};
use flotilla_tests::*;

mod input;
mod kills;
mod network;
mod once;

fn versions(history: &[(u128, String, i64)]) -> Vec<u128> {
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

/// Migration 1 is quick; migration 2 sleeps `seconds` inside its transaction and counts its runs, so a second run
/// would show in `runs`.
fn slow_second(seconds: u32) -> Dir {
    let dir = Dir::new();
    dir.migration(Postgres, 1, "base", "CREATE TABLE base (id INT);", "DROP TABLE base;").migration(
        Postgres,
        2,
        "runs",
        &format!("CREATE TABLE runs (n INT);\nSELECT pg_sleep({seconds});\nINSERT INTO runs VALUES (1);"),
        "DROP TABLE runs;",
    );
    dir
}

/// One PostgreSQL target at version 1, served by `agent-1` (through `via`, a port in front of the coordinator,
/// when given), with etcd locks and `lease_ttl`.
async fn one_target_at_v1(dir: &Dir, lease_ttl: u64, via: Option<&Proxy>) -> (Fleet, TestDb, Vec<FleetTarget>) {
    let db = TestDb::new(Postgres).await;
    let targets = vec![FleetTarget::new("pg-01", &db.url, &[("env", "test")])];
    let mut fleet = Fleet::start(&[("agent-1", "pg-*")], Some(etcd_url()), lease_ttl).await;
    match via {
        Some(proxy) => fleet.start_agent_via("agent-1", &targets, proxy.addr().port()).await,
        None => fleet.start_agent("agent-1", &targets).await,
    }
    fleet.wait_targets(1).await;
    let p0 = fleet.create(dir.path(), &["--to", "1"]).await;
    fleet.wait_state(&p0, "succeeded").await;
    (fleet, db, targets)
}

/// After everything: the history is `expected`, migration 2 ran at most once, and a rollback of `plan` takes the
/// target back to version 1, where the plan found it (never below).
async fn ran_once_and_rolls_back_to_where_it_was(fleet: &Fleet, db: &TestDb, plan: &str, expected: &[u128]) {
    assert_eq!(versions(&db.history().await), expected);
    if expected.contains(&2) {
        assert_eq!(db.count("runs").await, 1, "migration 2 committed exactly once");
    }
    let step = &steps(&fleet.plan(plan).await)["pg-01"];
    assert_eq!(step["version_before"], 1, "the version the plan found, not one a re-run found: {step:#}");
    let rb = fleet.cli(&["--json", "rollback", plan]).await.ok().json()["id"].as_str().expect("id").to_string();
    fleet.wait_state(&rb, "succeeded").await;
    assert_eq!(versions(&db.history().await), vec![1], "rolled back to where the plan found it");
}

/// `n` fresh PostgreSQL databases as targets `pg-01`…
async fn pg_targets(n: usize) -> (Vec<TestDb>, Vec<FleetTarget>) {
    let dbs = futures_util::future::join_all((0..n).map(|_| TestDb::new(Postgres))).await;
    let targets = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| FleetTarget::new(&format!("pg-{:02}", i + 1), &db.url, &[("env", "test")]))
        .collect();
    (dbs, targets)
}

/// A fleet with one agent serving `name` → `url`, etcd locks (`etcd`, or the shared one) and a lease TTL of 3 s.
async fn fleet_on(name: &str, url: &str, etcd: Option<String>) -> Fleet {
    let glob = format!("{}*", &name[..3]);
    let mut fleet = Fleet::start(&[("agent-1", &glob)], Some(etcd.unwrap_or_else(etcd_url)), 3).await;
    fleet.start_agent("agent-1", &[FleetTarget::new(name, url, &[("env", "test")])]).await;
    fleet.wait_targets(1).await;
    fleet
}
