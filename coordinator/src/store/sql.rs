//! The `Store` on a SQLite file or PostgreSQL, through one sqlx pool; schema versioned by `sqlx::migrate!`.

use std::collections::BTreeMap;
use std::sync::Once;

use async_trait::async_trait;
use chrono::Utc;
use flotilla_core::fleet::{AuditEntry, Event, EventKind, Plan, PlanState, Step, StepState, Target};
use sha2::{Digest, Sha256};
use sqlx::AnyPool;

use super::checkpoint;
use super::counts::Moves;
use super::rows::*;
use super::{
    db, retried, Assigning, AuditQuery, AuditRecord, Fact, StepCount, StepFinish, Store, StoreError, Unchanged,
    EVENT_PAGE, LIVE, MIGRATOR,
};

const INSERT_EVENT: &str = "INSERT INTO events (plan_id, seq, at, target, kind, detail)
     SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ? FROM events WHERE plan_id = ? RETURNING seq";

/// Rows per step insert when a plan is created, largest first (10 parameters a row).
const STEP_ROWS: [usize; 3] = [256, 16, 1];

/// A plan of at least this many steps refreshes the steps table's statistics on PostgreSQL.
const ANALYZE_AFTER: usize = 1_000;

/// Rows per target upsert when an agent registers, largest first (4 parameters a row).
const TARGET_ROWS: [usize; 3] = [256, 16, 1];

/// The `Store` on a SQLite file or PostgreSQL, through one sqlx pool.
pub struct SqlStore {
    pub(super) pool: AnyPool,
    pub(super) postgres: bool,
    /// SQLite's checkpoints, run beside the writer until the store is dropped (`checkpoint`).
    _checkpoints: Option<tokio_util::sync::DropGuard>,
}

impl SqlStore {
    /// Opens (and creates) the store at `url`: `sqlite://PATH` or `postgres://…`.
    pub async fn open(url: &str) -> Result<SqlStore, StoreError> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        let url = match url.strip_prefix("sqlite://") {
            Some(path) if !path.contains('?') => format!("sqlite://{path}?mode=rwc"),
            Some(_) => url.to_string(),
            None if postgres => url.to_string(),
            None => return Err(StoreError::Open(format!("`{url}` is not a sqlite:// or postgres:// URL"))),
        };
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(if postgres { 8 } else { 1 })
            // A store that is down fails a call in seconds with its own error, rather than holding it for 30 s.
            .acquire_timeout(std::time::Duration::from_secs(5))
            // An in-process SQLite connection cannot go stale; pinging its worker thread before every query only
            // doubles the thread hand-offs.
            .test_before_acquire(postgres)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if !postgres {
                        // WAL with NORMAL sync: a commit survives a process crash (the store's promise); a power
                        // cut may lose the last commits, which agents' history tables then reconcile.
                        sqlx::Executor::execute(&mut *conn, "PRAGMA journal_mode = WAL").await?;
                        sqlx::Executor::execute(&mut *conn, "PRAGMA synchronous = NORMAL").await?;
                        sqlx::Executor::execute(&mut *conn, "PRAGMA busy_timeout = 5000").await?;
                        let backstop = format!("PRAGMA wal_autocheckpoint = {}", checkpoint::BACKSTOP_PAGES);
                        sqlx::Executor::execute(&mut *conn, backstop.as_str()).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| StoreError::Open(e.to_string()))?;
        let checkpoints = match postgres {
            true => None,
            false => Some(checkpoint::start(&url).await.map_err(|e| StoreError::Open(e.to_string()))?),
        };
        let store = SqlStore { pool, postgres, _checkpoints: checkpoints };
        MIGRATOR.run(&store.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(v) => StoreError::Open(format!(
                "the store's schema is at version {v}, which this release does not know: a newer Flotilla \
                 migrated it; run that release (or newer), never an older one, against this store"
            )),
            e => StoreError::Open(format!("cannot bring the store's schema up to date: {e}")),
        })?;
        Ok(store)
    }

    /// Numbers `?` placeholders for PostgreSQL.
    pub(super) fn sql(&self, text: &str) -> String {
        if !self.postgres {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len() + 8);
        let mut n = 0;
        for c in text.chars() {
            if c == '?' {
                n += 1;
                out.push_str(&format!("${n}"));
            } else {
                out.push(c);
            }
        }
        out
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn put_bundle(&self, body: &str) -> Result<String, StoreError> {
        let id = hex::encode(Sha256::digest(body.as_bytes()));
        let existing = self.bundle(&id).await?;
        match existing {
            Some(stored) if stored == body => {}
            Some(_) => return Err(StoreError::BundleMismatch(id)),
            None => {
                sqlx::query(&self.sql("INSERT INTO bundles (id, body) VALUES (?, ?)"))
                    .bind(id.clone())
                    .bind(body.to_string())
                    .execute(&self.pool)
                    .await
                    .map_err(db)?;
            }
        }
        Ok(id)
    }

    async fn bundle(&self, id: &str) -> Result<Option<String>, StoreError> {
        let rows = sqlx::query(&self.sql("SELECT body FROM bundles WHERE id = ?"))
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.first().map(|r| get(r, 0)).transpose()
    }

    async fn upsert_targets(&self, targets: &[Target]) -> Result<(), StoreError> {
        // The last of each name, as one upsert after another would leave it.
        let mut last = first_of_each(targets.iter().rev(), |t| &t.name);
        last.reverse();
        let mut tx = self.pool.begin().await.map_err(db)?;
        for chunk in shaped_chunks(&last, &TARGET_ROWS) {
            let rows = vec!["(?, ?, ?, ?)"; chunk.len()].join(", ");
            let upsert = self.sql(&format!(
                "INSERT INTO targets (name, engine, labels, agent) VALUES {rows} ON CONFLICT (name)
                 DO UPDATE SET engine = excluded.engine, labels = excluded.labels, agent = excluded.agent"
            ));
            let query = chunk.iter().fold(sqlx::query(&upsert), |q, t| {
                q.bind(t.name.clone()).bind(t.engine.as_str()).bind(to_json(&t.labels)).bind(t.agent.clone())
            });
            query.execute(&mut *tx).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn targets(&self) -> Result<Vec<Target>, StoreError> {
        let rows = sqlx::query("SELECT name, engine, labels, agent FROM targets ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(Target {
                    name: get(r, 0)?,
                    engine: get::<String>(r, 1)?.parse().map_err(StoreError::Corrupt)?,
                    labels: json(&get::<String>(r, 2)?)?,
                    agent: get(r, 3)?,
                })
            })
            .collect()
    }

    async fn create_plan(&self, plan: &Plan, steps: &[Step]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query(&self.sql(&format!("INSERT INTO plans ({PLAN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")))
            .bind(plan.id.clone())
            .bind(plan.bundle.clone())
            .bind(to_json(&plan.selector))
            .bind(to_json(&plan.goal))
            .bind(to_json(&plan.strategy))
            .bind(plan.phase.map(|p| to_json(&p)))
            .bind(plan.rollback_of.clone())
            .bind(i64::from(plan.approved_wave))
            .bind(plan.state.as_str())
            .bind(plan.created_at.to_rfc3339())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        // Many rows to a statement: a plan of 10,000 targets is 40-odd statements, not 10,000 round trips.
        for chunk in shaped_chunks(steps, &STEP_ROWS) {
            let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let insert = self.sql(&format!("INSERT INTO steps ({STEP_COLUMNS}) VALUES {rows}"));
            let query = chunk.iter().fold(sqlx::query(&insert), |q, s| {
                q.bind(s.plan_id.clone())
                    .bind(s.target.clone())
                    .bind(i64::from(s.wave))
                    .bind(s.state.as_str())
                    .bind(token_value(s.token))
                    .bind(s.error.clone())
                    .bind(s.goal.as_ref().map(to_json))
                    .bind(s.before.map(|v| v.to_string()))
                    .bind(s.after.map(|v| v.to_string()))
                    .bind(s.updated_at.to_rfc3339())
            });
            query.execute(&mut *tx).await.map_err(db)?;
        }
        let mut moves = Moves::default();
        for s in steps {
            moves.add(&s.plan_id, s.wave, s.state, 1);
        }
        self.count(&mut tx, &moves.changed()).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        if self.postgres && steps.len() >= ANALYZE_AFTER {
            // Fresh statistics for the plan's many new rows: the scheduler's reads of its steps (pages of pending
            // steps, those in flight) are planned from them, not from statistics that have never seen the plan. A
            // pass at 10,000 steps took 5.0-7.7 ms median without, 3.8-5.0 with (in turns, 2026-12-04), until
            // autovacuum gets to the table. Only an optimization: a failure is logged, the plan stands.
            if let Err(e) = sqlx::query("ANALYZE steps").execute(&self.pool).await {
                tracing::warn!(error = %e, "ANALYZE steps after creating a plan failed");
            }
        }
        Ok(())
    }

    async fn plan(&self, id: &str) -> Result<Option<Plan>, StoreError> {
        let rows = sqlx::query(&self.sql(&format!("SELECT {PLAN_COLUMNS} FROM plans WHERE id = ?")))
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.first().map(plan_from).transpose()
    }

    async fn plans(&self) -> Result<Vec<Plan>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {PLAN_COLUMNS} FROM plans ORDER BY created_at, id"))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(plan_from).collect()
    }

    async fn live_plans(&self) -> Result<Vec<Plan>, StoreError> {
        let live: Vec<String> = LIVE.iter().map(|s| format!("'{}'", s.as_str())).collect();
        let rows = sqlx::query(&format!(
            "SELECT {PLAN_COLUMNS} FROM plans WHERE state IN ({}) ORDER BY created_at, id",
            live.join(", ")
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(plan_from).collect()
    }

    async fn set_plan_state(&self, id: &str, from: PlanState, to: PlanState) -> Result<bool, StoreError> {
        if !from.can_become(to) {
            return Err(StoreError::IllegalTransition { from: from.to_string(), to: to.to_string() });
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        let done = sqlx::query(&self.sql("UPDATE plans SET state = ? WHERE id = ? AND state = ?"))
            .bind(to.as_str())
            .bind(id.to_string())
            .bind(from.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let moved = done.rows_affected() == 1;
        if moved && matches!(to, PlanState::Halted | PlanState::Aborted) {
            let skip = self.sql(
                "UPDATE steps SET state = 'skipped', updated_at = ? WHERE plan_id = ? AND state = 'pending'
                 RETURNING wave",
            );
            let skipped = sqlx::query(&skip)
                .bind(Utc::now().to_rfc3339())
                .bind(id.to_string())
                .fetch_all(&mut *tx)
                .await
                .map_err(db)?;
            let mut moves = Moves::default();
            for row in skipped {
                moves.moved(id, wave_of(&row, 0).map_err(db)?, StepState::Pending, StepState::Skipped);
            }
            self.count(&mut tx, &moves.changed()).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(moved)
    }

    async fn steps(&self, plan_id: &str) -> Result<Vec<Step>, StoreError> {
        let rows = sqlx::query(
            &self.sql(&format!("SELECT {STEP_COLUMNS} FROM steps WHERE plan_id = ? ORDER BY wave, target")),
        )
        .bind(plan_id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(step_from).collect()
    }

    async fn step(&self, plan_id: &str, target: &str) -> Result<Option<Step>, StoreError> {
        let rows =
            sqlx::query(&self.sql(&format!("SELECT {STEP_COLUMNS} FROM steps WHERE plan_id = ? AND target = ?")))
                .bind(plan_id.to_string())
                .bind(target.to_string())
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        rows.first().map(step_from).transpose()
    }

    async fn steps_of(&self, plan_id: &str, targets: &[&str]) -> Result<Vec<Step>, StoreError> {
        let mut steps = Vec::with_capacity(targets.len());
        for chunk in targets.chunks(500) {
            let list = vec!["?"; chunk.len()].join(", ");
            let sql = self.sql(&format!("SELECT {STEP_COLUMNS} FROM steps WHERE plan_id = ? AND target IN ({list})"));
            // As many shapes as list lengths: not kept prepared, so they never push the hot statements out.
            let first = sqlx::query(&sql).persistent(false).bind(plan_id.to_string());
            let query = chunk.iter().fold(first, |q, t| q.bind(t.to_string()));
            for row in query.fetch_all(&self.pool).await.map_err(db)? {
                steps.push(step_from(&row)?);
            }
        }
        Ok(steps)
    }

    async fn all_step_counts(&self) -> Result<BTreeMap<String, Vec<StepCount>>, StoreError> {
        let rows =
            sqlx::query("SELECT wave, state, n, plan_id FROM step_counts WHERE n <> 0 ORDER BY plan_id, wave, state")
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        let mut out: BTreeMap<String, Vec<StepCount>> = BTreeMap::new();
        for r in &rows {
            out.entry(get(r, 3)?).or_default().push(step_count(r)?);
        }
        Ok(out)
    }

    async fn last_succeeded_steps(&self) -> Result<Vec<(String, Step)>, StoreError> {
        let columns: Vec<String> = STEP_COLUMNS.split(", ").map(|c| format!("s.{c}")).collect();
        let rows = sqlx::query(&format!(
            "SELECT {STEP_COLUMNS}, bundle FROM (
               SELECT {}, p.bundle,
                      ROW_NUMBER() OVER (PARTITION BY s.target ORDER BY p.created_at DESC, p.id DESC) AS newest
               FROM steps s JOIN plans p ON p.id = s.plan_id WHERE s.state = 'succeeded') latest
             WHERE newest = 1 ORDER BY target",
            columns.join(", ")
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(|r| Ok((get(r, 10)?, step_from(r)?))).collect()
    }

    async fn step_counts(&self, plan_id: &str) -> Result<Vec<StepCount>, StoreError> {
        let rows = sqlx::query(
            &self.sql("SELECT wave, state, n FROM step_counts WHERE plan_id = ? AND n <> 0 ORDER BY wave, state"),
        )
        .bind(plan_id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(step_count).collect()
    }

    async fn steps_in_state(
        &self,
        plan_id: &str,
        state: StepState,
        wave: Option<u32>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Step>, StoreError> {
        // Only the conditions asked for, so the (plan_id, state, wave, target) index serves the range directly.
        let wave_clause = if wave.is_some() { " AND wave = ?" } else { "" };
        let after_clause = if after.is_some() { " AND target > ?" } else { "" };
        let sql = self.sql(&format!(
            "SELECT {STEP_COLUMNS} FROM steps WHERE plan_id = ? AND state = ?{wave_clause}{after_clause}
             ORDER BY target LIMIT ?"
        ));
        let mut query = sqlx::query(&sql).bind(plan_id.to_string()).bind(state.as_str());
        if let Some(wave) = wave {
            query = query.bind(i64::from(wave));
        }
        if let Some(after) = after {
            query = query.bind(after.to_string());
        }
        let rows = query.bind(i64::from(limit)).fetch_all(&self.pool).await.map_err(db)?;
        rows.iter().map(step_from).collect()
    }

    async fn approve_wave(&self, id: &str, wave: u32) -> Result<bool, StoreError> {
        let done = sqlx::query(
            &self.sql("UPDATE plans SET state = ?, approved_wave = ? WHERE id = ? AND state = ? AND approved_wave < ?"),
        )
        .bind(PlanState::Running.as_str())
        .bind(i64::from(wave))
        .bind(id.to_string())
        .bind(PlanState::AwaitingApproval.as_str())
        .bind(i64::from(wave))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn max_token(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(token), 0) FROM steps").fetch_one(&self.pool).await.map_err(db)?;
        Ok(u64::try_from(get::<i64>(&row, 0)?).unwrap_or(0))
    }

    async fn set_step_state(
        &self,
        plan_id: &str,
        target: &str,
        from: StepState,
        to: StepState,
        token: Option<u64>,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        if !from.can_become(to) {
            return Err(StoreError::IllegalTransition { from: from.to_string(), to: to.to_string() });
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        let moved = sqlx::query(&self.sql(
            "UPDATE steps SET state = ?, token = ?, error = ?, updated_at = ? WHERE plan_id = ? AND target = ? AND state = ?
             RETURNING wave",
        ))
        .bind(to.as_str())
        .bind(token_value(token))
        .bind(error.map(str::to_string))
        .bind(Utc::now().to_rfc3339())
        .bind(plan_id.to_string())
        .bind(target.to_string())
        .bind(from.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(row) = moved else { return Ok(false) };
        let mut moves = Moves::default();
        moves.moved(plan_id, wave_of(&row, 0).map_err(db)?, from, to);
        self.count(&mut tx, &moves.changed()).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn assign_steps(&self, plan_id: &str, steps: &[Assigning]) -> Result<Vec<String>, StoreError> {
        self.assign_pending(plan_id, steps).await
    }

    async fn record(&self, facts: &[Fact]) -> Result<Vec<bool>, StoreError> {
        self.record_facts(facts).await
    }

    async fn finish_step(&self, r: &StepFinish) -> Result<Option<Step>, StoreError> {
        self.finish_in_flight(r).await
    }

    async fn finish_unchanged(&self, plan_id: &str, steps: &[Unchanged]) -> Result<Vec<Step>, StoreError> {
        self.finish_pending(plan_id, steps).await
    }

    async fn append_event(
        &self,
        plan_id: &str,
        target: Option<&str>,
        kind: EventKind,
        detail: &serde_json::Value,
    ) -> Result<u64, StoreError> {
        let insert = self.sql(INSERT_EVENT);
        let row = retried(|| async {
            let mut tx = self.pool.begin().await?;
            self.take_turns(&mut tx, &[plan_id]).await?;
            let row = sqlx::query(&insert)
                .bind(plan_id.to_string())
                .bind(Utc::now().to_rfc3339())
                .bind(target.map(str::to_string))
                .bind(kind.as_str())
                .bind(detail.to_string())
                .bind(plan_id.to_string())
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(row)
        })
        .await?;
        u64::try_from(get::<i64>(&row, 0)?).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    async fn events_after(&self, plan_id: &str, seq: u64, limit: u32) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(&self.sql(
            "SELECT plan_id, seq, at, target, kind, detail FROM events WHERE plan_id = ? AND seq > ? ORDER BY seq \
             LIMIT ?",
        ))
        .bind(plan_id.to_string())
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .bind(i64::from(limit.clamp(1, EVENT_PAGE)))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(Event {
                    plan_id: get(r, 0)?,
                    seq: u64::try_from(get::<i64>(r, 1)?).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    at: time(&get::<String>(r, 2)?)?,
                    target: get(r, 3)?,
                    kind: get::<String>(r, 4)?.parse().map_err(StoreError::Corrupt)?,
                    detail: json(&get::<String>(r, 5)?)?,
                })
            })
            .collect()
    }

    async fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let id = format!("{:016x}{:016x}", entry.at.timestamp_micros(), rand::random::<u64>());
        sqlx::query(&self.sql("INSERT INTO audit (id, at, actor, action, plan_id, detail) VALUES (?, ?, ?, ?, ?, ?)"))
            .bind(id)
            .bind(entry.at.to_rfc3339())
            .bind(entry.actor.clone())
            .bind(entry.action.clone())
            .bind(entry.plan_id.clone())
            .bind(entry.detail.clone())
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(db)
    }

    async fn audit_log(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        // Ids begin with the time in microseconds (hex, fixed width), so they sort by time; `since` becomes one.
        let since = q.since.map(|t| format!("{:016x}", t.timestamp_micros().max(0)));
        let rows = sqlx::query(&self.sql(
            "SELECT id, at, actor, action, plan_id, detail FROM audit
             WHERE (? IS NULL OR id > ?) AND (? IS NULL OR id >= ?) AND (? IS NULL OR plan_id = ?)
             ORDER BY id LIMIT ?",
        ))
        .bind(q.after.clone())
        .bind(q.after.clone())
        .bind(since.clone())
        .bind(since)
        .bind(q.plan_id.clone())
        .bind(q.plan_id.clone())
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    id: get(r, 0)?,
                    entry: AuditEntry {
                        at: time(&get::<String>(r, 1)?)?,
                        actor: get(r, 2)?,
                        action: get(r, 3)?,
                        plan_id: get(r, 4)?,
                        detail: get(r, 5)?,
                    },
                })
            })
            .collect()
    }
}
