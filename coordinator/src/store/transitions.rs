//! Step transitions that carry their event, and the events agents report: each fact applied by compare-and-set,
//! with its event, in one transaction; and a batch of facts in one transaction too (group commit). A batch of
//! assignments, agents' facts (events, starts, results), a batch of steps a check found at their goal.

use std::collections::HashMap;

use chrono::Utc;
use flotilla_core::fleet::{EventKind, Step, StepState};
use serde_json::json;
use sqlx::AnyConnection;

use super::rows::*;
use super::sql::SqlStore;
use super::{retried, Assigning, Fact, NewEvent, Starting, StepFinish, StoreError, Unchanged};

impl SqlStore {
    /// [`Store::assign_steps`].
    pub(super) async fn assign_pending(&self, plan_id: &str, steps: &[Assigning]) -> Result<Vec<String>, StoreError> {
        let update = self.sql(
            "UPDATE steps SET state = 'assigned', token = ?, error = NULL, updated_at = ?
             WHERE plan_id = ? AND target = ? AND state = 'pending'",
        );
        retried(|| async {
            let mut tx = self.pool.begin().await?;
            let now = Utc::now().to_rfc3339();
            let mut moved = Vec::with_capacity(steps.len());
            let mut events = Vec::with_capacity(steps.len());
            for a in steps {
                let done = sqlx::query(&update)
                    .bind(token_value(Some(a.token)))
                    .bind(now.clone())
                    .bind(plan_id.to_string())
                    .bind(a.target.clone())
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() != 1 {
                    continue;
                }
                events.push(NewEvent {
                    plan_id: plan_id.to_string(),
                    target: Some(a.target.clone()),
                    kind: EventKind::Assigned,
                    detail: a.detail.clone(),
                });
                moved.push(a.target.clone());
            }
            self.insert_events(&mut tx, &events, &now).await?;
            tx.commit().await?;
            Ok(moved)
        })
        .await
    }

    /// [`Store::record`].
    pub(super) async fn record_facts(&self, facts: &[Fact]) -> Result<Vec<bool>, StoreError> {
        for fact in facts {
            if let Fact::Finish(r) = fact {
                finishable(r)?;
            }
        }
        retried(|| async {
            let mut tx = self.pool.begin().await?;
            let now = Utc::now().to_rfc3339();
            let mut written = Vec::with_capacity(facts.len());
            let mut events = Vec::with_capacity(facts.len());
            for fact in facts {
                written.push(match fact {
                    Fact::Event(e) => {
                        events.push(e.clone());
                        true
                    }
                    Fact::Start(s) => self.start_in(&mut tx, s, &now, &mut events).await?,
                    Fact::Finish(r) => self.finish_in(&mut tx, r, &now, &mut events).await?.is_some(),
                });
            }
            self.insert_events(&mut tx, &events, &now).await?;
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
            let (now, mut events) = (Utc::now().to_rfc3339(), Vec::new());
            let step = self.finish_in(&mut tx, r, &now, &mut events).await?;
            self.insert_events(&mut tx, &events, &now).await?;
            tx.commit().await?;
            Ok(step)
        })
        .await?;
        step.transpose()
    }

    /// A transaction's events, appended in order at its end, numbered after each plan's last: one read of the
    /// last number per plan and a few multi-row inserts, rather than a numbering read and an insert per event.
    /// (Two writers may pick the same numbers; the primary key refuses one, whose transaction runs again.)
    async fn insert_events(&self, conn: &mut AnyConnection, events: &[NewEvent], at: &str) -> Result<(), sqlx::Error> {
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
                    sqlx::Row::try_get::<i64, _>(&last, 0)? + 1
                }
            };
            next.insert(&e.plan_id, seq);
            numbered.push((seq, e));
        }
        for chunk in shaped_chunks(&numbered, &EVENT_ROWS) {
            let rows = vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let insert =
                self.sql(&format!("INSERT INTO events (plan_id, seq, at, target, kind, detail) VALUES {rows}"));
            let mut query = sqlx::query(&insert);
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

    /// `assigned → running` under the token, the first `before` standing, with its `step_started` event.
    async fn start_in(
        &self,
        conn: &mut AnyConnection,
        s: &Starting,
        at: &str,
        events: &mut Vec<NewEvent>,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(&self.sql(
            "UPDATE steps SET state = 'running', version_before = COALESCE(version_before, ?), updated_at = ?
             WHERE plan_id = ? AND target = ? AND state = 'assigned' AND token = ?",
        ))
        .bind(s.before.map(|v| v.to_string()))
        .bind(at.to_string())
        .bind(s.plan_id.clone())
        .bind(s.target.clone())
        .bind(token_value(Some(s.token)))
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        if let Some(detail) = &s.detail {
            events.push(NewEvent {
                plan_id: s.plan_id.clone(),
                target: Some(s.target.clone()),
                kind: EventKind::StepStarted,
                detail: detail.clone(),
            });
        }
        Ok(true)
    }

    /// A step in flight under the token ends, with its event (the step's wave added to the detail).
    /// A result under the step's token ends it. A step taken back (pending again, or skipped since, when its plan
    /// halted) keeps its token until it is assigned anew, so a result under that token is still the truth: the agent
    /// ran it after all (an assignment it took in after two heartbeats had missed it, under load). Once assigned
    /// anew the token differs, and the old result writes nothing.
    async fn finish_in(
        &self,
        conn: &mut AnyConnection,
        r: &StepFinish,
        at: &str,
        events: &mut Vec<NewEvent>,
    ) -> Result<Option<Result<Step, StoreError>>, sqlx::Error> {
        let update = self.sql(&format!(
            "UPDATE steps SET state = ?, error = ?, version_before = COALESCE(version_before, ?),
             version_after = COALESCE(?, version_after), updated_at = ?
             WHERE plan_id = ? AND target = ? AND token = ? AND state IN ('assigned', 'running', 'pending', 'skipped')
             RETURNING {STEP_COLUMNS}"
        ));
        let row = sqlx::query(&update)
            .bind(r.state.as_str())
            .bind(r.error.clone())
            .bind(r.before.map(|v| v.to_string()))
            .bind(r.after.map(|v| v.to_string()))
            .bind(at.to_string())
            .bind(r.plan_id.clone())
            .bind(r.target.clone())
            .bind(token_value(Some(r.token)))
            .fetch_optional(&mut *conn)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let step = step_from(&row);
        let mut detail = r.detail.clone();
        if let (Ok(step), Some(map)) = (&step, detail.as_object_mut()) {
            map.insert("wave".into(), step.wave.into());
        }
        let kind = if r.state == StepState::Failed { EventKind::Failed } else { EventKind::Succeeded };
        events.push(NewEvent { plan_id: r.plan_id.clone(), target: Some(r.target.clone()), kind, detail });
        Ok(Some(step))
    }

    /// [`Store::finish_unchanged`].
    pub(super) async fn finish_pending(&self, plan_id: &str, steps: &[Unchanged]) -> Result<Vec<Step>, StoreError> {
        let update = self.sql(&format!(
            "UPDATE steps SET state = 'succeeded', version_before = COALESCE(version_before, ?),
             version_after = COALESCE(?, version_after), updated_at = ?
             WHERE plan_id = ? AND target = ? AND state = 'pending' RETURNING {STEP_COLUMNS}"
        ));
        retried(|| async {
            let mut tx = self.pool.begin().await?;
            let now = Utc::now().to_rfc3339();
            let mut done = Vec::with_capacity(steps.len());
            let mut events = Vec::with_capacity(steps.len());
            for u in steps {
                let row = sqlx::query(&update)
                    .bind(u.before.map(|v| v.to_string()))
                    .bind(u.applied.map(|v| v.to_string()))
                    .bind(now.clone())
                    .bind(plan_id.to_string())
                    .bind(u.target.clone())
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(step) = row.as_ref().map(step_from) else { continue };
                let wave = step.as_ref().map(|s| s.wave).ok();
                events.push(NewEvent {
                    plan_id: plan_id.to_string(),
                    target: Some(u.target.clone()),
                    kind: EventKind::Succeeded,
                    detail: json!({
                        "at_goal": true, "version_before": u.before, "applied_version": u.applied, "wave": wave,
                    }),
                });
                done.push(step);
            }
            self.insert_events(&mut tx, &events, &now).await?;
            tx.commit().await?;
            Ok(done)
        })
        .await?
        .into_iter()
        .collect()
    }
}

/// Rows per event insert, largest first.
const EVENT_ROWS: [usize; 4] = [64, 16, 4, 1];

/// A result ends a step as succeeded or failed, nothing else.
fn finishable(r: &StepFinish) -> Result<(), StoreError> {
    if !r.state.is_done() || r.state == StepState::Skipped {
        return Err(StoreError::IllegalTransition { from: "running".into(), to: r.state.to_string() });
    }
    Ok(())
}
