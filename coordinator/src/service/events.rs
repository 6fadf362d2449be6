//! Events: the group-commit writer every event and every fact from agents goes through, the audit log, and what plan
//! watchers wait on.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use flotilla_core::fleet::{AuditEntry, Event, EventKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::identity::Identity;
use crate::store::{Fact, NewEvent, Store, StoreError};

/// Facts to write, and who waits for their commit (and whether each was written).
pub(super) type Queued = (Vec<Fact>, tokio::sync::oneshot::Sender<Result<Vec<bool>, String>>);

/// The writer: one store transaction for everything queued while the previous one was written. It ends when the
/// coordinator (the only sender) is dropped.
pub(super) async fn write_events(
    store: Arc<dyn Store>,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < 256 {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let facts: Vec<Fact> = batch.iter().flat_map(|(facts, _)| facts.iter().cloned()).collect();
        let started = std::time::Instant::now();
        let result = store.record(&facts).await.map_err(|e| e.to_string());
        metrics.store_call("record", started.elapsed());
        let mut at = 0;
        for (facts, done) in batch {
            let answer = result.as_ref().map(|w| w.get(at..at + facts.len()).unwrap_or_default().to_vec());
            at += facts.len();
            let _ = done.send(answer.map_err(String::clone));
        }
    }
}

impl Coordinator {
    pub(crate) async fn event(
        &self,
        plan_id: &str,
        target: Option<&str>,
        kind: EventKind,
        detail: serde_json::Value,
    ) -> Result<()> {
        let event = NewEvent { plan_id: plan_id.into(), target: target.map(str::to_string), kind, detail };
        self.append(vec![event]).await
    }

    /// Wakes plan watchers: events were committed.
    pub(crate) fn events_committed(&self) {
        self.events.send_modify(|n| *n += 1);
    }

    /// Appends events through the writer, waits for their commit, and wakes watchers.
    pub(super) async fn append(&self, events: Vec<NewEvent>) -> Result<()> {
        self.commit(events.into_iter().map(Fact::Event).collect()).await.map(drop)
    }

    /// Records facts through the writer (one transaction with whatever else is queued), waits for their commit,
    /// and wakes watchers. Whether each was written.
    pub(super) async fn commit(&self, facts: Vec<Fact>) -> Result<Vec<bool>> {
        let stopped = || StoreError::Database("the event writer stopped".into());
        let (done, committed) = tokio::sync::oneshot::channel();
        self.writer.send((facts, done)).map_err(|_| stopped())?;
        let written = committed.await.map_err(|_| stopped())?.map_err(StoreError::Database)?;
        self.events_committed();
        Ok(written)
    }

    pub(super) async fn audit(
        &self,
        who: &Identity,
        action: &str,
        plan_id: Option<&str>,
        detail: String,
    ) -> Result<()> {
        let entry = AuditEntry {
            at: Utc::now(),
            actor: who.actor(),
            action: action.to_string(),
            plan_id: plan_id.map(str::to_string),
            detail,
        };
        Ok(self.store.audit(&entry).await?)
    }

    /// A plan's events after `after`, as they are committed, until the plan is over and all its events are out
    /// (or `shutdown`, or the receiver is dropped). The plan-level end is the cue: only then is every step read.
    pub async fn watch(
        self: &Arc<Self>,
        who: &Identity,
        id: &str,
        after: u64,
        shutdown: CancellationToken,
    ) -> Result<mpsc::Receiver<Result<Event>>> {
        self.allow(who, crate::identity::Permission::Read, "watch a plan", Some(id)).await?;
        // Only that the plan exists: reading its steps too would hold the store for a large plan's every row.
        self.stored_plan(id).await?;
        let mut changes = self.events.subscribe();
        let (tx, rx) = mpsc::channel(256);
        let (coordinator, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            let mut after = after;
            let mut ending = false;
            loop {
                changes.mark_unchanged();
                let events = match coordinator.store.events_after(&id, after, crate::store::EVENT_PAGE).await {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let fresh = !events.is_empty();
                // A full page: more are waiting; read them now, not at the next change.
                let more = events.len() >= crate::store::EVENT_PAGE as usize;
                for e in events {
                    after = e.seq;
                    ending |= e.target.is_none() && e.kind.ends_plan();
                    if tx.send(Ok(e)).await.is_err() {
                        return; // the watcher went away
                    }
                }
                if more {
                    continue;
                }
                if (ending || !fresh) && coordinator.is_over(&id, after).await {
                    return;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        Ok(rx)
    }

    /// Whether a plan is done (no longer live, no step unfinished) and has no event after `after`.
    /// Asked whenever a watcher wakes with nothing new: the plan's row, then (only once it is over) its counts.
    async fn is_over(&self, id: &str, after: u64) -> bool {
        let done = match self.store.plan(id).await {
            Ok(Some(plan)) if plan.state.is_live() => false,
            Ok(Some(_)) => match self.store.step_counts(id).await {
                Ok(counts) => counts.iter().all(|c| c.state.is_done() || c.count == 0),
                Err(_) => false,
            },
            Ok(None) | Err(_) => true,
        };
        done && self.store.events_after(id, after, 1).await.map(|e| e.is_empty()).unwrap_or(true)
    }
}
