//! A step's end, as one fact in one transaction: a result from its agent, or a batch of steps a check found at
//! their goal.

use chrono::Utc;
use flotilla_core::fleet::{Step, StepState};
use serde_json::json;

use super::rows::*;
use super::sql::{SqlStore, INSERT_EVENT};
use super::{retried, StepFinish, StoreError, Unchanged};

impl SqlStore {
    /// [`Store::finish_step`].
    pub(super) async fn finish_in_flight(&self, r: &StepFinish) -> Result<Option<Step>, StoreError> {
        if !r.state.is_done() || r.state == StepState::Skipped {
            return Err(StoreError::IllegalTransition { from: "running".into(), to: r.state.to_string() });
        }
        let update = self.sql(&format!(
            "UPDATE steps SET state = ?, error = ?, version_before = COALESCE(version_before, ?),
             version_after = COALESCE(?, version_after), updated_at = ?
             WHERE plan_id = ? AND target = ? AND token = ? AND state IN ('assigned', 'running') RETURNING {STEP_COLUMNS}"
        ));
        let insert = self.sql(INSERT_EVENT);
        let step = retried(|| async {
            let mut tx = self.pool.begin().await?;
            let row = sqlx::query(&update)
                .bind(r.state.as_str())
                .bind(r.error.clone())
                .bind(r.before.map(|v| v.to_string()))
                .bind(r.after.map(|v| v.to_string()))
                .bind(Utc::now().to_rfc3339())
                .bind(r.plan_id.clone())
                .bind(r.target.clone())
                .bind(token_value(Some(r.token)))
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                tx.rollback().await?;
                return Ok(None);
            };
            let step = step_from(&row);
            let mut detail = r.detail.clone();
            if let (Ok(step), Some(map)) = (&step, detail.as_object_mut()) {
                map.insert("wave".into(), step.wave.into());
            }
            sqlx::query(&insert)
                .bind(r.plan_id.clone())
                .bind(Utc::now().to_rfc3339())
                .bind(Some(r.target.clone()))
                .bind(r.state.as_str())
                .bind(detail.to_string())
                .bind(r.plan_id.clone())
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(step))
        })
        .await?;
        step.transpose()
    }

    /// [`Store::finish_unchanged`].
    pub(super) async fn finish_pending(&self, plan_id: &str, steps: &[Unchanged]) -> Result<Vec<Step>, StoreError> {
        let update = self.sql(&format!(
            "UPDATE steps SET state = 'succeeded', version_before = COALESCE(version_before, ?),
             version_after = COALESCE(?, version_after), updated_at = ?
             WHERE plan_id = ? AND target = ? AND state = 'pending' RETURNING {STEP_COLUMNS}"
        ));
        let insert = self.sql(INSERT_EVENT);
        retried(|| async {
            let mut tx = self.pool.begin().await?;
            let now = Utc::now().to_rfc3339();
            let mut done = Vec::with_capacity(steps.len());
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
                let detail = json!({
                    "at_goal": true, "version_before": u.before, "applied_version": u.applied, "wave": wave,
                });
                sqlx::query(&insert)
                    .bind(plan_id.to_string())
                    .bind(now.clone())
                    .bind(Some(u.target.clone()))
                    .bind(StepState::Succeeded.as_str())
                    .bind(detail.to_string())
                    .bind(plan_id.to_string())
                    .fetch_one(&mut *tx)
                    .await?;
                done.push(step);
            }
            tx.commit().await?;
            Ok(done)
        })
        .await?
        .into_iter()
        .collect()
    }
}
