//! Events: the group-commit writer every event goes through, the audit log, and what plan watchers wait on.

use std::sync::Arc;

use chrono::Utc;
use flotilla_core::fleet::{AuditEntry, Event, EventKind};
use tokio::sync::{mpsc, watch};

use super::*;
use crate::identity::Identity;
use crate::store::{NewEvent, Store, StoreError};

/// Events to write, and who waits for their commit.
pub(super) type QueuedEvents = (Vec<NewEvent>, tokio::sync::oneshot::Sender<Result<(), String>>);

/// The event writer: one store transaction for every batch queued while the previous one was written. It ends
/// when the coordinator (the only sender) is dropped.
pub(super) async fn write_events(store: Arc<dyn Store>, mut queue: mpsc::UnboundedReceiver<QueuedEvents>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < 256 {
            match queue.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let events: Vec<NewEvent> = batch.iter().flat_map(|(events, _)| events.iter().cloned()).collect();
        let result = store.append_events(&events).await.map_err(|e| e.to_string());
        for (_, done) in batch {
            let _ = done.send(result.clone());
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

    /// Appends events through the writer, waits for their commit, and wakes watchers.
    pub(super) async fn append(&self, events: Vec<NewEvent>) -> Result<()> {
        let (done, committed) = tokio::sync::oneshot::channel();
        self.writer.send((events, done)).map_err(|_| StoreError::Database("the event writer stopped".into()))?;
        match committed.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StoreError::Database(e).into()),
            Err(_) => return Err(StoreError::Database("the event writer stopped".into()).into()),
        }
        self.events.send_modify(|n| *n += 1);
        Ok(())
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

    /// Events after `after`; waits for new ones until the plan is over.
    pub async fn watch(&self, who: &Identity, id: &str) -> Result<watch::Receiver<u64>> {
        Self::operator(who)?;
        self.view(id).await?;
        Ok(self.events.subscribe())
    }

    pub async fn events_after(&self, id: &str, after: u64) -> Result<Vec<Event>> {
        Ok(self.store.events_after(id, after).await?)
    }
}
