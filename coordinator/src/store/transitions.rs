//! Step transitions that carry their event, and the events agents report: each fact applied by compare-and-set,
//! with its event, in one transaction; and a batch of facts in one transaction too (group commit). A batch of
//! assignments, agents' facts (events, starts, results), a batch of steps a check found at their goal.
//!
//! Each kind of transition in a batch is one UPDATE over the batch's rows, bound as a VALUES list
//! (`WITH v (…) AS (VALUES …) UPDATE steps … FROM v … RETURNING …`): a batch of 200 results is a few statements, not
//! 200 round trips to PostgreSQL or 200 hand-offs to SQLite's thread. A row that matches no step in flight under its
//! token comes back in no RETURNING row, and so is "not written". Each step appears once per statement
//! ([`tried_once`], `first_of_each`): with two rows for one step, which one an UPDATE … FROM applies is not
//! defined.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use flotilla_core::fleet::{EventKind, Step, StepState};
use serde_json::json;
use sqlx::{AnyConnection, Row};

use super::counts::{bind_cells, upsert, Moves, CELLS};
use super::rows::*;
use super::sql::SqlStore;
use super::{retried, Assigning, Fact, NewEvent, Starting, StepFinish, StoreError, Unchanged};

/// Rows per statement (of an UPDATE over a VALUES list, or of an event insert), largest first.
const ROWS: [usize; 4] = [64, 16, 4, 1];

/// The states a result under the step's token ends a step from, the usual first.
const ENDS_FROM: [StepState; 4] = [StepState::Running, StepState::Assigned, StepState::Pending, StepState::Skipped];

/// A step under one token: plan, target, token.
type Key = (String, String, u64);

/// Results written, by step and token: the step as it now is (or why its row cannot be read).
type Finished = HashMap<Key, Result<Step, StoreError>>;

impl SqlStore {
    /// [`Store::assign_steps`].
    pub(super) async fn assign_pending(&self, plan_id: &str, steps: &[Assigning]) -> Result<Vec<String>, StoreError> {
        let steps = first_of_each(steps, |a| &a.target);
        retried(|| async {
            let mut tx = self.pool.begin().await?;
            let now = Utc::now().to_rfc3339();
            let mut moved = HashSet::with_capacity(steps.len());
            let mut moves = Moves::default();
            for chunk in shaped_chunks(&steps, &ROWS) {
                let update = self.batched(Batched::Assign, chunk.len());
                let query = chunk.iter().fold(sqlx::query(&update), |q, a| {
                    q.bind(plan_id.to_string())
                        .bind(a.target.clone())
                        .bind(token_value(Some(a.token)))
                        .bind(StepState::Pending.as_str())
                });
                for row in query.bind(now.clone()).fetch_all(&mut *tx).await? {
                    moved.insert(row.try_get::<String, _>(0)?);
                    moves.moved(plan_id, wave_of(&row, 1)?, StepState::Pending, StepState::Assigned);
                }
            }
            let moved: Vec<&Assigning> = steps.iter().copied().filter(|a| moved.contains(&a.target)).collect();
            let events: Vec<NewEvent> = moved
                .iter()
                .map(|a| NewEvent {
                    plan_id: plan_id.to_string(),
                    target: Some(a.target.clone()),
                    kind: EventKind::Assigned,
                    detail: a.detail.clone(),
                })
                .collect();
            self.conclude(&mut tx, &moves, &events, &now).await?;
            tx.commit().await?;
            Ok(moved.iter().map(|a| a.target.clone()).collect())
        })
        .await
    }

    /// [`Store::record`]: the batch's starts in one statement, then its results in another, then its events, in the
    /// facts' order, in one transaction.
    pub(super) async fn record_facts(&self, facts: &[Fact]) -> Result<Vec<bool>, StoreError> {
        for fact in facts {
            if let Fact::Finish(r) = fact {
                finishable(r)?;
            }
        }
        let tried = tried_once(facts);
        let (mut starts, mut finishes) = (Vec::new(), Vec::new());
        for (fact, _) in facts.iter().zip(&tried).filter(|(_, &tried)| tried) {
            match fact {
                Fact::Start(s) => starts.push(s),
                Fact::Finish(r) => finishes.push(r),
                Fact::Event(_) => {}
            }
        }
        retried(|| async {
            let mut tx = self.pool.begin().await?;
            let now = Utc::now().to_rfc3339();
            let mut moves = Moves::default();
            let started = self.start_all(&mut tx, &starts, &now, &mut moves).await?;
            let mut finished = self.finish_all(&mut tx, &finishes, &now, &mut moves).await?;
            let mut written = Vec::with_capacity(facts.len());
            let mut events = Vec::with_capacity(facts.len());
            for (fact, &tried) in facts.iter().zip(&tried) {
                written.push(match fact {
                    Fact::Event(e) => {
                        events.push(e.clone());
                        true
                    }
                    Fact::Start(s) => {
                        let moved = tried && started.contains(&(s.plan_id.clone(), s.target.clone(), s.token));
                        if let (true, Some(detail)) = (moved, &s.detail) {
                            events.push(NewEvent {
                                plan_id: s.plan_id.clone(),
                                target: Some(s.target.clone()),
                                kind: EventKind::StepStarted,
                                detail: detail.clone(),
                            });
                        }
                        moved
                    }
                    Fact::Finish(_) if !tried => false,
                    Fact::Finish(r) => match finished.remove(&key(r)) {
                        Some(step) => {
                            events.push(finish_event(r, &step));
                            true
                        }
                        None => false,
                    },
                });
            }
            self.conclude(&mut tx, &moves, &events, &now).await?;
            tx.commit().await?;
            Ok(written)
        })
        .await
    }

    /// [`Store::finish_step`].
    pub(super) async fn finish_in_flight(&self, r: &StepFinish) -> Result<Option<Step>, StoreError> {
        finishable(r)?;
        let step = retried(|| async {
            let mut tx = self.pool.begin().await?;
            let now = Utc::now().to_rfc3339();
            let mut moves = Moves::default();
            let step = self.finish_all(&mut tx, &[r], &now, &mut moves).await?.remove(&key(r));
            let events: Vec<NewEvent> = step.iter().map(|step| finish_event(r, step)).collect();
            self.conclude(&mut tx, &moves, &events, &now).await?;
            tx.commit().await?;
            Ok(step)
        })
        .await?;
        step.transpose()
    }

    /// `transition`'s statement over `rows` rows: `WITH v (…) AS (VALUES (?, …), …) UPDATE steps … FROM v`, the rows
    /// bound first.
    fn batched(&self, transition: Batched, rows: usize) -> String {
        let row = format!("({})", vec!["?"; transition.columns().split(", ").count()].join(", "));
        let values = vec![row; rows].join(", ");
        self.sql(&format!("WITH v ({}) AS (VALUES {values}) {}", transition.columns(), transition.update()))
    }

    /// What a transaction writes once its steps moved: the counts of its moves, then its events, appended in order,
    /// numbered after each plan's last: one read of the last number per plan and a few multi-row inserts, rather
    /// than a numbering read and an insert per event. (Should two writers pick the same numbers anyway, e.g. two
    /// coordinators on a SQLite file, the primary key refuses one, whose transaction runs again.) On PostgreSQL the
    /// counts ride in the first insert of events (`WITH counted AS (INSERT INTO step_counts …) INSERT INTO events
    /// …`): the turn every writer of the plan waits for has no more round trips than it had without counts.
    async fn conclude(
        &self,
        conn: &mut AnyConnection,
        moves: &Moves,
        events: &[NewEvent],
        at: &str,
    ) -> Result<(), sqlx::Error> {
        let cells = moves.changed();
        if events.is_empty() {
            return self.count(conn, &cells).await;
        }
        let plans: Vec<&str> = events.iter().map(|e| e.plan_id.as_str()).collect();
        self.take_turns(conn, &plans).await?;
        let mut counted = Some(&cells[..]).filter(|c| self.postgres && !c.is_empty() && c.len() <= CELLS);
        if counted.is_none() {
            self.count(conn, &cells).await?;
        }
        let mut next: HashMap<&str, i64> = HashMap::new();
        let mut numbered = Vec::with_capacity(events.len());
        for e in events {
            let seq = match next.get_mut(e.plan_id.as_str()) {
                Some(seq) => *seq + 1,
                None => {
                    let last = sqlx::query(&self.sql("SELECT COALESCE(MAX(seq), 0) FROM events WHERE plan_id = ?"))
                        .bind(e.plan_id.clone())
                        .fetch_one(&mut *conn)
                        .await?;
                    last.try_get::<i64, _>(0)? + 1
                }
            };
            next.insert(&e.plan_id, seq);
            numbered.push((seq, e));
        }
        for chunk in shaped_chunks(&numbered, &ROWS) {
            let rows = vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let insert = format!("INSERT INTO events (plan_id, seq, at, target, kind, detail) VALUES {rows}");
            let (insert, cells) = match counted.take() {
                Some(cells) => (format!("WITH counted AS ({}) {insert}", upsert(cells.len())), cells),
                None => (insert, &[][..]),
            };
            let insert = self.sql(&insert);
            let mut query = bind_cells(sqlx::query(&insert), cells);
            for (seq, e) in chunk {
                query = query
                    .bind(e.plan_id.clone())
                    .bind(*seq)
                    .bind(at.to_string())
                    .bind(e.target.clone())
                    .bind(e.kind.as_str())
                    .bind(e.detail.to_string());
            }
            query.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// On PostgreSQL, writers of one plan's events take turns from here to their commit, each reading the plan's last
    /// event number after the one before it committed, instead of taking the same numbers, colliding on the key and
    /// trying again (ten writers at once ran out of tries). In plan order, so two transactions never wait on each
    /// other. (SQLite has one writer.)
    pub(super) async fn take_turns(&self, conn: &mut AnyConnection, plans: &[&str]) -> Result<(), sqlx::Error> {
        if self.postgres {
            let mut plans = plans.to_vec();
            plans.sort_unstable();
            plans.dedup();
            for plan in plans {
                sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtext($1))) AS turn")
                    .bind(plan.to_string())
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// `assigned → running` under each start's token, the first `before` standing. The steps moved.
    async fn start_all(
        &self,
        conn: &mut AnyConnection,
        starts: &[&Starting],
        at: &str,
        moves: &mut Moves,
    ) -> Result<HashSet<Key>, sqlx::Error> {
        let mut moved = HashSet::with_capacity(starts.len());
        for chunk in shaped_chunks(starts, &ROWS) {
            let update = self.batched(Batched::Start, chunk.len());
            let query = chunk.iter().fold(sqlx::query(&update), |q, s| {
                q.bind(s.plan_id.clone())
                    .bind(s.target.clone())
                    .bind(token_value(Some(s.token)))
                    .bind(s.before.map(|v| v.to_string()))
                    .bind(StepState::Assigned.as_str())
            });
            for row in query.bind(at.to_string()).fetch_all(&mut *conn).await? {
                let key = row_key(&row, 2)?;
                moves.moved(&key.0, wave_of(&row, 3)?, StepState::Assigned, StepState::Running);
                moved.insert(key);
            }
        }
        Ok(moved)
    }

    /// Steps in flight under each result's token end as it says: one statement per state a step may end from,
    /// each over the results not written yet (all of them end `running` but for a rare few).
    /// A result under the step's token ends it. A step taken back (pending again, or skipped since, when its plan
    /// halted) keeps its token until it is assigned anew, so a result under that token is still the truth: the agent
    /// ran it after all (an assignment it took in after two heartbeats had missed it, under load). Once assigned
    /// anew the token differs, and the old result writes nothing.
    async fn finish_all(
        &self,
        conn: &mut AnyConnection,
        results: &[&StepFinish],
        at: &str,
        moves: &mut Moves,
    ) -> Result<Finished, sqlx::Error> {
        let mut finished = HashMap::with_capacity(results.len());
        let mut left = results.to_vec();
        for from in ENDS_FROM {
            if left.is_empty() {
                break;
            }
            self.finish_from(conn, from, &left, at, moves, &mut finished).await?;
            left.retain(|r| !finished.contains_key(&key(r)));
        }
        Ok(finished)
    }

    /// The results of `results` whose steps are in `from` under their token.
    async fn finish_from(
        &self,
        conn: &mut AnyConnection,
        from: StepState,
        results: &[&StepFinish],
        at: &str,
        moves: &mut Moves,
        finished: &mut Finished,
    ) -> Result<(), sqlx::Error> {
        for chunk in shaped_chunks(results, &ROWS) {
            let update = self.batched(Batched::Finish, chunk.len());
            let query = chunk.iter().fold(sqlx::query(&update), |q, r| {
                q.bind(r.plan_id.clone())
                    .bind(r.target.clone())
                    .bind(token_value(Some(r.token)))
                    .bind(r.state.as_str())
                    .bind(r.error.clone())
                    .bind(r.before.map(|v| v.to_string()))
                    .bind(r.after.map(|v| v.to_string()))
                    .bind(from.as_str())
            });
            for row in query.bind(at.to_string()).fetch_all(&mut *conn).await? {
                let key = row_key(&row, 4)?;
                let to = row.try_get::<String, _>(3)?.parse().map_err(|e: String| sqlx::Error::Decode(e.into()))?;
                moves.moved(&key.0, wave_of(&row, 2)?, from, to);
                finished.insert(key, step_from(&row));
            }
        }
        Ok(())
    }

    /// [`Store::finish_unchanged`].
    pub(super) async fn finish_pending(&self, plan_id: &str, steps: &[Unchanged]) -> Result<Vec<Step>, StoreError> {
        let steps = first_of_each(steps, |u| &u.target);
        retried(|| async {
            let mut tx = self.pool.begin().await?;
            let now = Utc::now().to_rfc3339();
            let mut done = HashMap::with_capacity(steps.len());
            let mut moves = Moves::default();
            for chunk in shaped_chunks(&steps, &ROWS) {
                let update = self.batched(Batched::AtGoal, chunk.len());
                let query = chunk.iter().fold(sqlx::query(&update), |q, u| {
                    q.bind(plan_id.to_string())
                        .bind(u.target.clone())
                        .bind(u.before.map(|v| v.to_string()))
                        .bind(u.applied.map(|v| v.to_string()))
                        .bind(StepState::Pending.as_str())
                });
                for row in query.bind(now.clone()).fetch_all(&mut *tx).await? {
                    moves.moved(plan_id, wave_of(&row, 2)?, StepState::Pending, StepState::Succeeded);
                    done.insert(row.try_get::<String, _>(1)?, step_from(&row));
                }
            }
            let mut moved = Vec::with_capacity(done.len());
            let mut events = Vec::with_capacity(done.len());
            for u in &steps {
                let Some(step) = done.remove(&u.target) else { continue };
                let wave = step.as_ref().map(|s| s.wave).ok();
                events.push(NewEvent {
                    plan_id: plan_id.to_string(),
                    target: Some(u.target.clone()),
                    kind: EventKind::Succeeded,
                    detail: json!({
                        "at_goal": true, "version_before": u.before, "applied_version": u.applied, "wave": wave,
                    }),
                });
                moved.push(step);
            }
            self.conclude(&mut tx, &moves, &events, &now).await?;
            tx.commit().await?;
            Ok(moved)
        })
        .await?
        .into_iter()
        .collect()
    }
}

/// The transitions applied to a batch of steps in one UPDATE each. Every one joins its rows to their steps on the
/// whole primary key, `(plan_id, target) = (v.p, v.t)`: with the plan a parameter instead, SQLite (3.46) plans a
/// batch of 64 as a scan of the plan's pending steps (`steps_by_state`) with the VALUES list inside, not 64 lookups.
#[derive(Debug, Clone, Copy)]
pub(super) enum Batched {
    /// `pending → assigned` under a new token.
    Assign,
    /// `assigned → running` under the token; the first `before` stands.
    Start,
    /// In flight under the token (or taken back and not yet assigned anew) → the result's end, from the one state
    /// bound (one statement per state a step may end from, so each moves its steps from a known state).
    Finish,
    /// `pending → succeeded`: a check found the step at its goal.
    AtGoal,
}

impl Batched {
    /// The VALUES list's columns, bound in this order for each row; the last, `f`, is the state the step moves
    /// from. A row's column and not a constant in the statement: a constant state lets PostgreSQL, whose statistics
    /// may say that state is rare, look the steps up by its (plan, state, wave, target) index, reading every entry
    /// of the plan's steps in that state (live and dead) for each row. Finishes at 64 a statement took 15-25 ms so,
    /// and the store on PostgreSQL went from 2,500 to 1,500 target-steps/s. As a column of the rows it is a join
    /// condition, planned as one: in the same bench no batched statement took over 15 ms (auto_explain). A one-row
    /// statement PostgreSQL still folds into constants, its state among them: it reads at most the plan's steps in
    /// that state.
    fn columns(self) -> &'static str {
        match self {
            Batched::Assign => "p, t, k, f",
            Batched::Start => "p, t, k, b, f",
            Batched::Finish => "p, t, k, s, e, b, a, f",
            Batched::AtGoal => "p, t, b, a, f",
        }
    }

    /// The UPDATE over `v`; its one parameter after the rows is the time.
    fn update(self) -> String {
        let (set, token, returning) = match self {
            Batched::Assign => ("state = 'assigned', token = v.k, error = NULL", "", "target, wave"),
            Batched::Start => (
                "state = 'running', version_before = COALESCE(steps.version_before, v.b)",
                " AND steps.token = v.k",
                "plan_id, target, token, wave",
            ),
            Batched::Finish => (
                "state = v.s, error = v.e, version_before = COALESCE(steps.version_before, v.b),
                 version_after = COALESCE(v.a, steps.version_after)",
                " AND steps.token = v.k",
                STEP_COLUMNS,
            ),
            Batched::AtGoal => (
                "state = 'succeeded', version_before = COALESCE(steps.version_before, v.b),
                 version_after = COALESCE(v.a, steps.version_after)",
                "",
                STEP_COLUMNS,
            ),
        };
        format!(
            "UPDATE steps SET {set}, updated_at = ? FROM v
             WHERE steps.plan_id = v.p AND steps.target = v.t AND steps.state = v.f{token} RETURNING {returning}"
        )
    }
}

/// A returned row's step and token (the token in column `token_at`).
fn row_key(row: &sqlx::any::AnyRow, token_at: usize) -> Result<Key, sqlx::Error> {
    let token = row.try_get::<Option<i64>, _>(token_at)?.and_then(|t| u64::try_from(t).ok()).unwrap_or(0);
    Ok((row.try_get(0)?, row.try_get(1)?, token))
}

fn key(r: &StepFinish) -> Key {
    (r.plan_id.clone(), r.target.clone(), r.token)
}

/// A result's event: `failed` or `succeeded`, its detail with the step's wave added.
fn finish_event(r: &StepFinish, step: &Result<Step, StoreError>) -> NewEvent {
    let mut detail = r.detail.clone();
    if let (Ok(step), Some(map)) = (step, detail.as_object_mut()) {
        map.insert("wave".into(), step.wave.into());
    }
    let kind = if r.state == StepState::Failed { EventKind::Failed } else { EventKind::Succeeded };
    NewEvent { plan_id: r.plan_id.clone(), target: Some(r.target.clone()), kind, detail }
}

/// Which facts of a batch its statements try, as they would apply one after another: every event; the first start
/// and the first result of each step under each token (a repeat would find the step moved already); and no start
/// after its step's result (which would find the step ended).
fn tried_once(facts: &[Fact]) -> Vec<bool> {
    let (mut started, mut finished) = (HashSet::new(), HashSet::new());
    facts
        .iter()
        .map(|fact| match fact {
            Fact::Event(_) => true,
            Fact::Start(s) => {
                let key = (s.plan_id.as_str(), s.target.as_str(), s.token);
                !finished.contains(&key) && started.insert(key)
            }
            Fact::Finish(r) => finished.insert((r.plan_id.as_str(), r.target.as_str(), r.token)),
        })
        .collect()
}

/// A result ends a step as succeeded or failed, nothing else.
fn finishable(r: &StepFinish) -> Result<(), StoreError> {
    if !r.state.is_done() || r.state == StepState::Skipped {
        return Err(StoreError::IllegalTransition { from: "running".into(), to: r.state.to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(target: &str, token: u64) -> Fact {
        Fact::Start(Starting { plan_id: "p".into(), target: target.into(), token, before: None, detail: None })
    }

    fn finish(target: &str, token: u64) -> Fact {
        Fact::Finish(StepFinish {
            plan_id: "p".into(),
            target: target.into(),
            token,
            state: StepState::Succeeded,
            error: None,
            before: None,
            after: None,
            detail: serde_json::Value::Null,
        })
    }

    #[test]
    fn a_batch_tries_each_start_and_result_once_and_no_start_after_its_result() {
        let event = Fact::Event(NewEvent {
            plan_id: "p".into(),
            target: None,
            kind: EventKind::Statement,
            detail: serde_json::Value::Null,
        });
        let facts = [
            start("a", 1),
            start("a", 1),  // a repeat
            start("a", 2),  // another token: its own compare-and-set
            finish("a", 1), //
            finish("a", 1), // a repeat
            event.clone(),
            event,
            finish("b", 3),
            start("b", 3), // after its own result
            start("b", 4), // another token
        ];
        assert_eq!(tried_once(&facts), [true, false, true, true, false, true, true, true, false, true]);
    }

    /// Every batched UPDATE, at every batch size, looks its steps up by primary key. (A batch of 64 planned as a
    /// scan of the plan's pending steps took the coordinator bench's checks from 9,000 steps/s to 3,600.)
    #[tokio::test]
    async fn each_batched_update_looks_its_steps_up_by_primary_key() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqlStore::open(&format!("sqlite://{}", dir.path().join("store.db").display())).await.expect("open");
        for transition in [Batched::Assign, Batched::Start, Batched::Finish, Batched::AtGoal] {
            for rows in ROWS {
                let sql = format!("EXPLAIN QUERY PLAN {}", store.batched(transition, rows));
                let nulls = sql.matches('?').count();
                let query = (0..nulls).fold(sqlx::query(&sql), |q, _| q.bind(None::<String>));
                let plan = query.fetch_all(&store.pool).await.expect("explain");
                let steps: Vec<String> = plan
                    .iter()
                    .map(|row| row.try_get::<String, _>(3).expect("detail"))
                    .filter(|detail| detail.contains(" steps "))
                    .collect();
                assert_eq!(
                    steps,
                    ["SEARCH steps USING INDEX sqlite_autoindex_steps_1 (plan_id=? AND target=?)"],
                    "{transition:?} over {rows} rows"
                );
            }
        }
    }
}
