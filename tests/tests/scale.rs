//! What a fleet pays per target, thousands of times over: what a kept connection holds, what the assignment
//! stream carries, and which progress events reach the coordinator.
//!
//! The agent keeps one idle connection per target after a step (`[connections]`), so whatever a connection holds
//! on to after a migration, a fleet holds once per target: a migration with an 8 MiB statement, kept as it was
//! sent, is 8 GiB over a thousand warm connections. Those tests count the bytes allocated and not freed on their
//! own thread (a current-thread runtime runs the driver's work there), which no other test in the process disturbs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use flotilla_agent::{connect, ConnectOptions};
use flotilla_core::bundle::Bundle;
use flotilla_core::{Engine, Statement};
use flotilla_tests::fleet::{free_port, Fleet, FleetTarget};
use flotilla_tests::*;

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(bytes: isize) {
    // `try_with`: a thread's last frees may come after its counters are gone.
    let _ = LIVE.try_with(|live| {
        live.set(live.get() + bytes);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
    });
}

/// Bytes allocated and not freed on this thread; and, starting now, the most there were since.
fn live() -> isize {
    let live = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(live));
    live
}

fn peak() -> isize {
    PEAK.with(Cell::get)
}

// SAFETY: every call is passed to `System` as it came; the counting around it allocates nothing. (`alloc_zeroed`
// is the default one, which calls `alloc`.)
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        count(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const LARGE: usize = 8 << 20;

/// A statement of about [`LARGE`] bytes that changes nothing the test depends on.
fn large_statement(engine: Engine) -> Statement {
    let filler = "x".repeat(LARGE);
    match engine {
        Engine::Mongodb => {
            let command = serde_json::json!({ "insert": "filler", "documents": [{ "text": filler }] });
            Statement::Command { command, name: "insert".into(), line: 1 }
        }
        _ => Statement::Sql { text: format!("SELECT length('{filler}')"), line: 1 },
    }
}

/// Runs a large statement on a connection, then makes it fit to be kept the way the agent does after a step; a
/// connection its engine lets the agent keep must hold no more than a new one does, give or take 1 MiB.
async fn a_kept_connection_holds_no_large_statement(engine: Engine) {
    let db = TestDb::new(engine).await;
    let mut driver = connect(&db.url, &ConnectOptions::default()).await.expect("connect");
    driver.ensure_history().await.expect("history");
    driver.reset_session().await.expect("reset");
    let statement = large_statement(engine);
    let before = live();
    driver.execute(&statement).await.expect("the large statement");
    let kept = driver.reset_session().await.expect("reset");
    let (most, held) = (peak() - before, live() - before);
    eprintln!("{engine:?}: {most} bytes more at most, {held} after the statement; kept: {kept}");
    // Else the driver did its work on another thread, and this test would prove nothing.
    assert!(most >= LARGE as isize / 2, "{engine:?}: the statement's bytes were not counted");
    if kept {
        assert!(held < 1 << 20, "{engine:?}: a kept connection holds {held} bytes more after an 8 MiB statement");
    }
    driver.close().await;
}

mod a_kept_connection_holds_no_large_statement {
    #[tokio::test]
    async fn postgres() {
        super::a_kept_connection_holds_no_large_statement(super::Postgres).await
    }
    #[tokio::test]
    async fn mysql() {
        super::a_kept_connection_holds_no_large_statement(super::Mysql).await
    }
    #[tokio::test]
    async fn sqlite() {
        super::a_kept_connection_holds_no_large_statement(super::Sqlite).await
    }
    #[tokio::test]
    async fn mongodb() {
        super::a_kept_connection_holds_no_large_statement(super::Mongodb).await
    }
}

/// A bundle crosses to an agent once per session while the agent keeps it, not once per target: the coordinator
/// counts the bytes it sends, and a plan over 12 targets (a check, then 12 assignments) sends its bundle once. Then
/// five bundles, over the four the agent keeps: the second again is kept, the first again was let go and crosses
/// again. Every plan succeeds: the agent always had what a message named.
#[tokio::test(flavor = "multi_thread")]
async fn a_bundle_crosses_once_per_session_while_the_agent_keeps_it() {
    let dbs: Vec<TestDb> = futures_util::future::join_all((0..12).map(|_| TestDb::new(Postgres))).await;
    let targets: Vec<FleetTarget> =
        dbs.iter().enumerate().map(|(i, db)| FleetTarget::new(&format!("pg-{i:02}"), &db.url, &[])).collect();
    let port = free_port();
    let mut fleet = Fleet::prepare(&[("agent-1", "pg-*")], None, 10, Vec::new(), None).await;
    fleet.coordinator_args = vec!["--metrics-listen".into(), format!("127.0.0.1:{port}")];
    fleet.start_coordinator().await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(targets.len()).await;
    // One PostgreSQL migration; bundles differ in a MySQL file no target here runs.
    let bundle = |n: usize| {
        let dir = Dir::new();
        dir.file("postgres/000001_a.up.sql", "CREATE TABLE a (id INT);")
            .file("postgres/000001_a.down.sql", "DROP TABLE a;")
            .file("mysql/000001_a.up.sql", &format!("CREATE TABLE a{n} (id INT);"))
            .file("mysql/000001_a.down.sql", &format!("DROP TABLE a{n};"));
        let bytes = Bundle::from_dir(dir.path()).expect("bundle").to_json().len() as u64;
        (dir, bytes)
    };
    let sent = || bundle_bytes_sent(port);
    let start = sent();
    let bundles: Vec<(Dir, u64)> = (1..=5).map(bundle).collect();
    let mut expected = 0;
    // (which bundle, whether its bytes cross)
    for (i, crosses) in [(0, true), (1, true), (2, true), (3, true), (4, true), (1, false), (0, true)] {
        let (dir, bytes) = &bundles[i];
        let plan = fleet.create(dir.path(), &["--waves", "100%", "--parallel", "8"]).await;
        fleet.wait_state(&plan, "succeeded").await;
        expected += if crosses { *bytes } else { 0 };
        assert_eq!(sent() - start, expected, "after a plan with bundle {}", i + 1);
    }
    fleet.stop().await;
}

/// A target's step runs on the connection its check opened: the coordinator checks no further ahead of the
/// assignments than the agent keeps connections (`max_idle`, which it sends when it registers), and in the agent's
/// full pool a target found not at its goal pushes out a connection a step is done with. 150 targets, 64 kept: each
/// target's connection is opened at most once for the plan (the checks of the first 64 find the agent's start-up
/// reads' connections), and every step finds its connection warm. When every check went out at once, the checks
/// of the last 86 targets opened connections the pool could not keep and their steps opened them again.
#[tokio::test(flavor = "multi_thread")]
async fn a_targets_step_runs_on_the_connection_its_check_opened() {
    const TARGETS: usize = 150;
    let dbs = futures_util::future::join_all((0..TARGETS).map(|_| TestDb::new(Sqlite))).await;
    let targets: Vec<FleetTarget> =
        dbs.iter().enumerate().map(|(i, db)| FleetTarget::new(&format!("sq-{i:03}"), &db.url, &[])).collect();
    let port = free_port();
    let mut fleet = Fleet::prepare(&[("agent-1", "sq-*")], None, 10, Vec::new(), None).await;
    fleet.agent_config = "[connections]\nmax_idle = 64\nidle_secs = 300\n".into();
    fleet.agent_settings = format!("metrics_listen = \"127.0.0.1:{port}\"\nrefresh_secs = 600\n");
    fleet.start_coordinator().await;
    fleet.start_agent("agent-1", &targets).await;
    fleet.wait_targets(TARGETS).await;
    let counted = || {
        let text = scrape(port);
        (counter(&text, "flotilla_agent_database_connections_opened_total"), {
            counter(&text, "flotilla_agent_database_connections_reused_total")
        })
    };
    let (opened_before, reused_before) = counted();
    let dir = Dir::new();
    dir.file("sqlite/000001_a.up.sql", "CREATE TABLE a (id INTEGER);")
        .file("sqlite/000001_a.down.sql", "DROP TABLE a;");
    let plan = fleet.create(dir.path(), &["--waves", "100%", "--parallel", "8"]).await;
    fleet.wait_state(&plan, "succeeded").await;
    let (opened, reused) = counted();
    let (opened, reused) = (opened - opened_before, reused - reused_before);
    assert!(
        opened <= (TARGETS + TARGETS / 10) as u64 && reused >= TARGETS as u64,
        "{opened} connections opened and {reused} reused for a plan over {TARGETS} targets"
    );
    fleet.stop().await;
}

/// A statement sends no event of its own unless its step said nothing for a second before it ended: fast
/// statements would be most of a fleet's events and of its store's rows. A migration's start and end always go.
#[tokio::test(flavor = "multi_thread")]
async fn only_a_statement_that_ends_after_a_second_of_silence_is_reported() {
    let db = TestDb::new(Postgres).await;
    let mut fleet = Fleet::start(&[("agent-1", "pg-*")], None, 10).await;
    fleet.start_agent("agent-1", &[FleetTarget::new("pg-01", &db.url, &[])]).await;
    fleet.wait_targets(1).await;
    let dir = Dir::new();
    let fast = "CREATE TABLE a (id INT);\nINSERT INTO a VALUES (1);\nINSERT INTO a VALUES (2);";
    let slow = "SELECT pg_sleep(1.2);\nCREATE TABLE b (id INT);";
    dir.migration(Postgres, 1, "fast", fast, "DROP TABLE a;").migration(Postgres, 2, "slow", slow, "DROP TABLE b;");
    let plan = fleet.create(dir.path(), &[]).await;
    fleet.wait_state(&plan, "succeeded").await;
    let watched = fleet.cli(&["--json", "plan", "watch", &plan]).await.stdout;
    let events: Vec<serde_json::Value> = watched.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let of = |kind: &str| events.iter().filter(|e| e["kind"] == kind).map(|e| e["detail"].clone()).collect::<Vec<_>>();
    let statements: Vec<String> =
        of("statement").iter().map(|d| format!("{} {}/{}", d["version"], d["statement"], d["statements"])).collect();
    assert_eq!(statements, vec!["2 1/2"], "{watched}");
    assert_eq!((of("migration_started").len(), of("migration_finished").len()), (2, 2), "{watched}");
    fleet.stop().await;
}

/// A `/metrics` page.
fn scrape(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let out = std::process::Command::new("curl").args(["-sf", "--max-time", "5", &url]).output().expect("curl");
    assert!(out.status.success(), "GET {url}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The value of an unlabelled counter on a `/metrics` page.
fn counter(text: &str, name: &str) -> u64 {
    let line = text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}"));
    line.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()).expect("a number") as u64
}

/// `flotilla_bundles_sent_bytes_total` from the coordinator's `/metrics`.
fn bundle_bytes_sent(port: u16) -> u64 {
    counter(&scrape(port), "flotilla_bundles_sent_bytes_total")
}
