//! What a kept connection costs the agent. The agent keeps one idle connection per target after a step
//! (`[connections]`), so whatever a connection holds on to after a migration, a fleet holds once per target: a
//! migration with an 8 MiB statement, kept as it was sent, is 8 GiB over a thousand warm connections.
//!
//! Each test counts the bytes allocated and not freed on its own thread (a current-thread runtime runs the driver's
//! work there), which no other test in the process disturbs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use flotilla_agent::{connect, ConnectOptions};
use flotilla_core::{Engine, Statement};
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

// SAFETY: every call is passed to `System` as it came; the counting around it allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
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
