//! The store's upkeep: one query per list and for the fleet's status, a versioned schema (old stores adopted, newer
//! ones refused), PostgreSQL's statistics on a large plan and SQLite's log checkpointed beside the writer.

use super::*;

on_every_store!(
    lists_and_fleet_status_in_one_query_each,
    the_schema_is_versioned_old_stores_are_adopted_and_newer_ones_refused
);

/// PostgreSQL: a plan of many steps refreshes the steps table's statistics when it is created, so the scheduler's
/// counts are planned for the table's real size at once (hashed, not sorted), not after autovacuum's next round.
/// A small plan does not pay for it.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_statistics_follow_a_large_plan() {
    use sqlx::Connection;
    let db = TestDb::new(Engine::Postgres).await;
    let store = SqlStore::open(&db.url).await.expect("open");
    let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let analyzed = "SELECT count(*) FROM pg_stats WHERE tablename = 'steps'";
    let small: Vec<Step> = (0..10).map(|i| step("p1", &format!("t{i:04}"), 1)).collect();
    store.create_plan(&plan("p1"), &small).await.expect("small plan");
    let columns: i64 = sqlx::query_scalar(analyzed).fetch_one(&mut conn).await.expect("pg_stats");
    assert_eq!(columns, 0, "a small plan leaves the statistics to autovacuum");
    let large: Vec<Step> = (0..1_000).map(|i| step("p2", &format!("t{i:04}"), 1)).collect();
    store.create_plan(&plan("p2"), &large).await.expect("large plan");
    let columns: i64 = sqlx::query_scalar(analyzed).fetch_one(&mut conn).await.expect("pg_stats");
    assert!(columns > 0, "a plan of 1,000 steps analyzes the steps table");
}

/// SQLite: what is written reaches the database file within seconds, copied from the write-ahead log by the store's
/// own checkpoints beside the writer, not inside a commit. 2 MiB is under the 1,000 log pages at which SQLite's
/// writer checkpoints by default, and far under the store's own backstop, so nothing else would copy it.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_checkpoints_the_log_beside_the_writer() {
    let dir = tempfile::tempdir().expect("dir");
    let (file, log) = (dir.path().join("store.db"), dir.path().join("store.db-wal"));
    let store = SqlStore::open(&format!("sqlite://{}", file.display())).await.expect("open");
    let size = |path: &std::path::Path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let before = size(&file);
    for i in 0..64 {
        store.put_bundle(&format!("{i}:{}", "x".repeat(32 * 1024))).await.expect("bundle");
    }
    assert!(size(&log) >= 2 << 20, "the 2 MiB written are in the log first ({} bytes)", size(&log));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while size(&file) < before + (2 << 20) {
        assert!(std::time::Instant::now() < deadline, "the database file is still {} bytes", size(&file));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Still the same store: the copied pages read back.
    let id = store.put_bundle(&format!("0:{}", "x".repeat(32 * 1024))).await.expect("the same bundle again");
    assert!(store.bundle(&id).await.expect("read").is_some());
}

/// What plan lists and fleet status read instead of every step of every plan: counts for all plans in one query, and
/// each target's newest succeeded step (the later plan wins) with its plan's bundle.
async fn lists_and_fleet_status_in_one_query_each(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = SqlStore::open(&db.url).await.expect("open");
    let mut older = plan("p1");
    older.created_at = Utc::now() - chrono::Duration::seconds(60);
    let mut newer = plan("p2");
    newer.bundle = "c".repeat(64);
    store
        .create_plan(&older, &[step("p1", "db-a", 1), step("p1", "db-b", 1), step("p1", "db-c", 2)])
        .await
        .expect("p1");
    store.create_plan(&newer, &[step("p2", "db-a", 1), step("p2", "db-b", 1)]).await.expect("p2");
    let finish = |plan: &str, target: &str, state, after| {
        let (plan, target) = (plan.to_string(), target.to_string());
        let store = &store;
        async move {
            assert!(store
                .set_step_state(&plan, &target, StepState::Pending, StepState::Assigned, Some(1), None)
                .await
                .expect("assign"));
            let done = StepFinish {
                plan_id: plan,
                target,
                token: 1,
                state,
                error: None,
                before: Some(v(0)),
                after: Some(after),
                detail: serde_json::json!({}),
            };
            store.finish_step(&done).await.expect("finish").expect("finished");
        }
    };
    finish("p1", "db-a", StepState::Succeeded, v(3)).await;
    finish("p1", "db-b", StepState::Succeeded, v(3)).await;
    finish("p2", "db-a", StepState::Succeeded, v(5)).await;
    finish("p2", "db-b", StepState::Failed, v(3)).await;

    let counts = store.all_step_counts().await.expect("counts");
    let total = |plan: &str, state| counts[plan].iter().filter(|c| c.state == state).map(|c| c.count).sum::<u64>();
    assert_eq!((total("p1", StepState::Succeeded), total("p1", StepState::Pending)), (2, 1));
    assert_eq!((total("p2", StepState::Succeeded), total("p2", StepState::Failed)), (1, 1));
    assert_eq!(counts.len(), 2);

    let last = store.last_succeeded_steps().await.expect("last");
    let seen: Vec<(&str, &str, &str, Option<flotilla_core::Version>)> =
        last.iter().map(|(b, s)| (s.target.as_str(), s.plan_id.as_str(), &b[..1], s.after)).collect();
    assert_eq!(
        seen,
        [("db-a", "p2", "c", Some(v(5))), ("db-b", "p1", "b", Some(v(3)))],
        "the newer plan wins where it succeeded; a failed step does not count; db-c never succeeded"
    );
    counts_agree(&store, "p1").await;
    counts_agree(&store, "p2").await;
}

/// The store's schema is versioned (sqlx migrations). A store created before versioning (its tables, no migration
/// records) is adopted with its rows; a store a newer release migrated further is refused, naming the version,
/// instead of being misread.
async fn the_schema_is_versioned_old_stores_are_adopted_and_newer_ones_refused(engine: Engine) {
    use sqlx::Connection;
    let db = TestDb::new(engine).await;
    let url = if engine == Sqlite { format!("{}?mode=rwc", db.url) } else { db.url.clone() };
    let initial = std::fs::read_to_string(
        flotilla_tests::manifest_dir().join("../coordinator/migrations/20261201000001_initial.sql"),
    )
    .expect("initial migration");
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
    sqlx::raw_sql(&initial).execute(&mut conn).await.expect("old-style schema");
    sqlx::query("INSERT INTO bundles (id, body) VALUES ('old', '{}')").execute(&mut conn).await.expect("row");
    // A step with 64-bit versions, as the first release wrote them.
    sqlx::query(
        "INSERT INTO steps (plan_id, target, wave, state, token, error, goal, version_before, version_after, updated_at)
         VALUES ('p-old', 'db-a', 1, 'succeeded', 3, NULL, NULL, 5, 7, '2026-12-01T00:00:00Z')",
    )
    .execute(&mut conn)
    .await
    .expect("step row");
    conn.close().await.expect("close");

    let store = SqlStore::open(&db.url).await.expect("an old store is adopted");
    assert_eq!(store.bundle("old").await.expect("bundle").as_deref(), Some("{}"), "its rows are kept");
    let step = store.step("p-old", "db-a").await.expect("step").expect("the step is kept");
    assert_eq!((step.before, step.after, step.token), (Some(v(5)), Some(v(7)), Some(3)), "its versions too");
    let long: flotilla_core::Version = "20240115093000000001".parse().expect("version");
    let start = Starting { plan_id: "p-old".into(), target: "db-a".into(), token: 3, before: Some(long), detail: None };
    assert!(store.start_step(&start).await.is_ok());
    counts_agree(&store, "p-old").await;
    drop(store);
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect");
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .expect("versions");
    assert_eq!(versions, [20261201000001, 20261202000001, 20261203000001], "every migration ran, in order");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time)
         SELECT 29991231000000, 'from a newer release', installed_on, success, checksum, execution_time
         FROM _sqlx_migrations WHERE version = 20261201000001",
    )
    .execute(&mut conn)
    .await
    .expect("a newer release's record");
    conn.close().await.expect("close");
    let Err(refused) = SqlStore::open(&db.url).await else { panic!("a newer schema must be refused") };
    assert!(refused.to_string().contains("29991231000000"), "{refused}");
}
