//! The coordinator's domain service: what every RPC does, in domain types. The gRPC layer (`grpc`) only checks who
//! calls, converts, and calls these methods; the scheduler (`scheduler`) drives plans with them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flotilla_core::bundle::Bundle;
use flotilla_core::fleet::{
    assign_waves, AuditEntry, Event, EventKind, Goal, OnFailure, Plan, PlanState, Selector, Step, StepState, Strategy,
    Target,
};
use flotilla_core::{Engine, Phase, ReadOptions};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::identity::{self, Identity};
use crate::lock::{Lease, Lock, LockError};
use crate::store::{NewEvent, StepFinish, Store, StoreError};

/// What went wrong, as callers branch on it; `grpc::status` maps each to a gRPC status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] LockError),
}

type Result<T, E = ServiceError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct Config {
    /// This coordinator's name as a lock holder.
    pub holder: String,
    /// How long a target's lock outlives its holder's last renewal.
    pub lease_ttl: Duration,
    /// How often the scheduler looks at every live plan (it also runs whenever something changes).
    pub tick: Duration,
    /// An agent silent this long is treated as gone: its leases are left to expire.
    pub heartbeat_timeout: Duration,
    /// Agent name → target globs it may serve, on top of what its certificate allows.
    pub agent_targets: BTreeMap<String, Vec<String>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            holder: format!("coordinator-{}", std::process::id()),
            lease_ttl: Duration::from_secs(10),
            tick: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_secs(15),
            agent_targets: BTreeMap::new(),
        }
    }
}

/// Work for an agent.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub plan_id: String,
    pub target: String,
    pub bundle_id: String,
    pub bundle: Arc<String>,
    pub goal: Goal,
    pub token: u64,
    pub wave: u32,
    pub phase: Option<Phase>,
    pub validate: bool,
    /// W3C traceparent of the plan's span, so the agent's spans join the rollout's trace.
    pub traceparent: Option<String>,
}

/// A progress event from an agent.
#[derive(Debug, Clone)]
pub struct Progress {
    pub plan_id: String,
    pub target: String,
    pub token: u64,
    pub kind: EventKind,
    pub detail: serde_json::Value,
}

/// A step's outcome, with what the target's history table says afterwards.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub plan_id: String,
    pub target: String,
    pub token: u64,
    pub error: Option<String>,
    /// `None`: the step failed before it read the target's history, so nothing is known of where it was.
    pub version_before: Option<i64>,
    /// `None`: the history could not be read after the step.
    pub applied_version: Option<i64>,
    pub dirty: bool,
}

/// What an agent last read from its targets, and the steps it is running.
#[derive(Debug, Clone, Default)]
pub struct TargetReport {
    pub applied: BTreeMap<String, i64>,
    pub dirty: Vec<String>,
    pub unreachable: BTreeMap<String, String>,
    /// (plan, target, fencing token) of every step the agent process is running or holds a result for.
    pub running: std::collections::HashSet<(String, String, u64)>,
}

/// Heartbeats that must miss an assigned step before it is taken back: one could have been sent before the
/// assignment arrived.
const MISSES_BEFORE_RECLAIM: u32 = 2;
/// A heartbeat this soon after an assignment was sent does not count as missing it (it may be in transit).
const ASSIGNMENT_TRANSIT: Duration = Duration::from_secs(1);

/// A plan submission.
#[derive(Debug, Clone)]
pub struct Submission {
    pub bundle: Vec<u8>,
    pub selector: Selector,
    pub goal: Goal,
    pub strategy: Strategy,
    pub phase: Option<Phase>,
    pub validate_on: Option<Selector>,
    pub dry_run: bool,
}

#[derive(Debug, Clone)]
pub struct PlanView {
    pub plan: Plan,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone)]
pub struct AgentView {
    pub name: String,
    pub targets: Vec<String>,
    pub last_seen: Option<DateTime<Utc>>,
    pub connected: bool,
}

#[derive(Debug, Clone)]
pub struct TargetStatus {
    pub target: Target,
    pub applied: Option<i64>,
    pub pending: Vec<i64>,
    pub dirty: bool,
    pub drift: Option<String>,
    pub stale: bool,
}

struct AgentEntry {
    targets: Vec<String>,
    sender: Option<mpsc::Sender<Assignment>>,
    /// Bumped on each new assignment stream, so an old stream's end does not disconnect a new one.
    stream: u64,
    last_seen: Option<(Instant, DateTime<Utc>)>,
}

#[derive(Clone)]
struct TargetLive {
    applied: Option<i64>,
    dirty: bool,
    reported: Instant,
}

pub(crate) struct Held {
    pub lease: Lease,
    pub renewed: Instant,
    /// When the lock was taken for the step (its assignment follows at once).
    pub since: Instant,
    /// Heartbeats from the target's agent that did not list the step.
    pub misses: u32,
}

#[derive(Default)]
struct Inner {
    agents: HashMap<String, AgentEntry>,
    live: HashMap<String, TargetLive>,
    /// (plan, target) → the lock held for its step.
    held: HashMap<(String, String), Held>,
    /// Target → the agent serving it.
    pub(crate) owners: HashMap<String, String>,
    /// Bundle id → engine key → versions, for fleet status.
    versions: HashMap<String, BTreeMap<String, Vec<i64>>>,
}

pub struct Coordinator {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) lock: Arc<dyn Lock>,
    pub(crate) config: Config,
    inner: Mutex<Inner>,
    /// Bumped on every stored event: wakes plan watchers.
    events: watch::Sender<u64>,
    /// Wakes the scheduler before its next tick.
    pub(crate) wake: tokio::sync::Notify,
    /// Events go through one writer that commits whatever is queued together (group commit).
    writer: mpsc::UnboundedSender<QueuedEvents>,
}

/// Events to write, and who waits for their commit.
type QueuedEvents = (Vec<NewEvent>, tokio::sync::oneshot::Sender<Result<(), String>>);

/// The event writer: one store transaction for every batch queued while the previous one was written. It ends
/// when the coordinator (the only sender) is dropped.
async fn write_events(store: Arc<dyn Store>, mut queue: mpsc::UnboundedReceiver<QueuedEvents>) {
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
    /// Must be called inside the Tokio runtime (it starts the event writer).
    pub fn new(store: Arc<dyn Store>, lock: Arc<dyn Lock>, config: Config) -> Arc<Coordinator> {
        let (writer, queue) = mpsc::unbounded_channel();
        tokio::spawn(write_events(store.clone(), queue));
        Arc::new(Coordinator {
            writer,
            store,
            lock,
            config,
            inner: Mutex::new(Inner::default()),
            events: watch::channel(0).0,
            wake: tokio::sync::Notify::new(),
        })
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Plain maps; a panic elsewhere must not poison every later call.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

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
    async fn append(&self, events: Vec<NewEvent>) -> Result<()> {
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

    async fn audit(&self, who: &Identity, action: &str, plan_id: Option<&str>, detail: String) -> Result<()> {
        let entry = AuditEntry {
            at: Utc::now(),
            actor: who.actor(),
            action: action.to_string(),
            plan_id: plan_id.map(str::to_string),
            detail,
        };
        Ok(self.store.audit(&entry).await?)
    }

    // ---------- agents ----------

    /// The globs an agent may serve: from its certificate and the coordinator's config.
    fn allowed(&self, who: &Identity, name: &str) -> Option<Vec<String>> {
        match who {
            Identity::Insecure => Some(vec!["*".to_string()]),
            Identity::Agent { name: n, targets } if n == name => {
                let mut globs = targets.clone();
                globs.extend(self.config.agent_targets.get(name).cloned().unwrap_or_default());
                Some(globs)
            }
            _ => None,
        }
    }

    /// Registers an agent's targets. Every target must be allowed, or nothing is registered.
    pub async fn register(&self, who: &Identity, name: &str, targets: Vec<Target>) -> Result<()> {
        let globs = self.allowed(who, name).ok_or_else(|| {
            ServiceError::PermissionDenied(format!("{} may not register as agent `{name}`", who.actor()))
        })?;
        let refused: Vec<&str> =
            targets.iter().filter(|t| !identity::allows(&globs, &t.name)).map(|t| t.name.as_str()).collect();
        if !refused.is_empty() {
            return Err(ServiceError::PermissionDenied(format!(
                "agent `{name}` may not serve target(s) {}: its certificate and the coordinator's config allow only {}",
                refused.join(", "),
                if globs.is_empty() { "none".to_string() } else { globs.join(", ") }
            )));
        }
        let known = self.store.targets().await?;
        for t in &targets {
            if let Some(other) = known.iter().find(|k| k.name == t.name && k.agent != name) {
                if self.is_connected(&other.agent) {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "target `{}` is served by connected agent `{}`",
                        t.name, other.agent
                    )));
                }
            }
        }
        for t in &targets {
            self.store.upsert_target(&Target { agent: name.to_string(), ..t.clone() }).await?;
        }
        let mut inner = self.inner();
        for t in &targets {
            inner.owners.insert(t.name.clone(), name.to_string());
        }
        let entry = inner.agents.entry(name.to_string()).or_insert_with(|| AgentEntry {
            targets: Vec::new(),
            sender: None,
            stream: 0,
            last_seen: None,
        });
        entry.targets = targets.iter().map(|t| t.name.clone()).collect();
        entry.last_seen = Some((Instant::now(), Utc::now()));
        info!(agent = name, targets = targets.len(), "agent registered");
        Ok(())
    }

    fn check_agent(&self, who: &Identity, name: &str) -> Result<()> {
        self.allowed(who, name)
            .map(drop)
            .ok_or_else(|| ServiceError::PermissionDenied(format!("{} may not act as agent `{name}`", who.actor())))
    }

    pub async fn heartbeat(&self, who: &Identity, name: &str, report: TargetReport) -> Result<()> {
        self.check_agent(who, name)?;
        let missing = self.record_heartbeat(name, &report)?;
        for (plan_id, target, token) in missing {
            self.reclaim(
                &plan_id,
                &target,
                token,
                "its agent is not running the step (restarted, or the assignment was lost or refused)",
            )
            .await?;
        }
        Ok(())
    }

    /// Records what the heartbeat says; returns the steps held for this agent's targets that it has now missed
    /// `MISSES_BEFORE_RECLAIM` times.
    fn record_heartbeat(&self, name: &str, report: &TargetReport) -> Result<Vec<(String, String, u64)>> {
        let mut guard = self.inner();
        let inner = &mut *guard;
        let Some(entry) = inner.agents.get_mut(name) else {
            return Err(ServiceError::FailedPrecondition(format!("agent `{name}` has not registered")));
        };
        entry.last_seen = Some((Instant::now(), Utc::now()));
        let owned: Vec<String> = entry.targets.clone();
        let now = Instant::now();
        for target in owned {
            if report.unreachable.contains_key(&target) {
                continue;
            }
            if let Some(&applied) = report.applied.get(&target) {
                let dirty = report.dirty.contains(&target);
                inner.live.insert(target, TargetLive { applied: Some(applied), dirty, reported: now });
            }
        }
        let mut missing = Vec::new();
        for ((plan_id, target), held) in inner.held.iter_mut() {
            if inner.owners.get(target).map(String::as_str) != Some(name) || held.since.elapsed() < ASSIGNMENT_TRANSIT {
                continue;
            }
            if report.running.contains(&(plan_id.clone(), target.clone(), held.lease.token)) {
                held.misses = 0;
                continue;
            }
            held.misses += 1;
            if held.misses >= MISSES_BEFORE_RECLAIM {
                missing.push((plan_id.clone(), target.clone(), held.lease.token));
            }
        }
        Ok(missing)
    }

    /// Opens an agent's assignment stream; the coordinator pushes work into it. Returns the stream's generation,
    /// for [`Coordinator::disconnect`].
    pub fn connect(&self, who: &Identity, name: &str) -> Result<(mpsc::Receiver<Assignment>, u64)> {
        self.check_agent(who, name)?;
        let (tx, rx) = mpsc::channel(256);
        let mut inner = self.inner();
        let Some(entry) = inner.agents.get_mut(name) else {
            return Err(ServiceError::FailedPrecondition(format!("agent `{name}` has not registered")));
        };
        entry.sender = Some(tx);
        entry.stream += 1;
        entry.last_seen = Some((Instant::now(), Utc::now()));
        let stream = entry.stream;
        drop(inner);
        self.wake.notify_one();
        Ok((rx, stream))
    }

    /// The agent's stream ended (it went away or reconnected).
    pub fn disconnect(&self, name: &str, stream: u64) {
        let mut inner = self.inner();
        if let Some(entry) = inner.agents.get_mut(name) {
            if entry.stream == stream {
                entry.sender = None;
                info!(agent = name, "agent disconnected");
            }
        }
    }

    /// Which agent serves each registered target (agents that have not registered since a restart are absent).
    pub(crate) fn owners(&self) -> HashMap<String, String> {
        self.inner().owners.clone()
    }

    pub(crate) fn is_connected(&self, agent: &str) -> bool {
        let inner = self.inner();
        inner.agents.get(agent).is_some_and(|e| {
            e.sender.as_ref().is_some_and(|s| !s.is_closed())
                && e.last_seen.is_some_and(|(t, _)| t.elapsed() < self.config.heartbeat_timeout)
        })
    }

    pub(crate) fn sender(&self, agent: &str) -> Option<mpsc::Sender<Assignment>> {
        self.inner().agents.get(agent).and_then(|e| e.sender.clone())
    }

    /// The target's step in `plan_id`, if `name` serves the target and the token is the step's current one.
    async fn owned_step(
        &self,
        who: &Identity,
        name: &str,
        plan_id: &str,
        target: &str,
        token: u64,
    ) -> Result<Option<Step>> {
        self.check_agent(who, name)?;
        let owner = self.inner().owners.get(target).cloned();
        let owner = match owner {
            Some(owner) => Some(owner),
            None => self.store.targets().await?.into_iter().find(|t| t.name == target).map(|t| t.agent),
        };
        if owner.as_deref() != Some(name) {
            return Err(ServiceError::PermissionDenied(format!("agent `{name}` does not serve target `{target}`")));
        }
        match self.store.step(plan_id, target).await? {
            None => Err(ServiceError::NotFound(format!("plan `{plan_id}` has no step for `{target}`"))),
            Some(s) if s.token != Some(token) => {
                warn!(plan_id, target, token, current = ?s.token, "ignoring a report under a stale fencing token");
                Ok(None)
            }
            Some(s) => Ok(Some(s)),
        }
    }

    /// Records a burst of progress events: those of steps running under their current lock in one write.
    pub async fn progress(&self, who: &Identity, name: &str, batch: Vec<Progress>) -> Result<()> {
        self.check_agent(who, name)?;
        let mut fast = Vec::with_capacity(batch.len());
        for p in batch {
            // The common case, checked in memory: the step's lock is held here under this token, for this agent.
            let current = self.held_lease(&p.plan_id, &p.target).is_some_and(|l| l.token == p.token)
                && self.inner().owners.get(&p.target).is_some_and(|owner| owner == name);
            if current && p.kind != EventKind::StepStarted {
                fast.push(NewEvent { plan_id: p.plan_id, target: Some(p.target), kind: p.kind, detail: p.detail });
            } else {
                if !fast.is_empty() {
                    self.append(std::mem::take(&mut fast)).await?;
                }
                self.progress_checked(who, name, p).await?;
            }
        }
        if !fast.is_empty() {
            self.append(fast).await?;
        }
        Ok(())
    }

    /// One progress event, checked against the store.
    async fn progress_checked(&self, who: &Identity, name: &str, p: Progress) -> Result<()> {
        let Some(step) = self.owned_step(who, name, &p.plan_id, &p.target, p.token).await? else { return Ok(()) };
        if step.state.is_done() {
            // Progress that arrives after the step's result adds nothing, and would read out of order.
            return Ok(());
        }
        if p.kind == EventKind::StepStarted && step.state == StepState::Assigned {
            let before = p.detail.get("version_before").and_then(serde_json::Value::as_i64);
            self.store.start_step(&p.plan_id, &p.target, p.token, before).await?;
        }
        self.event(&p.plan_id, Some(&p.target), p.kind, p.detail).await
    }

    /// A step's result: recorded in one store transaction if the step is still in flight under the report's
    /// token; a late or repeated report is acknowledged and ignored, so the agent stops sending it.
    pub async fn result(&self, who: &Identity, name: &str, o: Outcome) -> Result<()> {
        if self.owned_step(who, name, &o.plan_id, &o.target, o.token).await?.is_none() {
            return Ok(());
        }
        let to = if o.error.is_some() { StepState::Failed } else { StepState::Succeeded };
        let finish = StepFinish {
            plan_id: o.plan_id.clone(),
            target: o.target.clone(),
            token: o.token,
            state: to,
            error: o.error.clone(),
            before: o.version_before,
            after: o.applied_version,
            detail: json!({
                "version_before": o.version_before, "applied_version": o.applied_version, "dirty": o.dirty,
                "error": o.error,
            }),
        };
        if self.store.finish_step(&finish).await?.is_none() {
            info!(plan_id = %o.plan_id, target = %o.target, token = o.token, "a late or repeated result, acknowledged");
            return Ok(());
        }
        self.events.send_modify(|n| *n += 1);
        if let Some(applied) = o.applied_version {
            self.inner().live.insert(
                o.target.clone(),
                TargetLive { applied: Some(applied), dirty: o.dirty, reported: Instant::now() },
            );
        }
        self.release(&o.plan_id, &o.target).await;
        if o.error.is_some() {
            let plan = self.store.plan(&o.plan_id).await?;
            if let Some(plan) = plan.filter(|p| p.strategy.on_failure == OnFailure::RollbackFailed) {
                self.rollback_targets(&plan, std::slice::from_ref(&o.target)).await?;
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    // ---------- locks ----------

    pub(crate) fn held(&self, plan_id: &str, target: &str) -> bool {
        self.held_lease(plan_id, target).is_some()
    }

    pub(crate) fn held_lease(&self, plan_id: &str, target: &str) -> Option<Lease> {
        self.inner().held.get(&(plan_id.to_string(), target.to_string())).map(|h| h.lease.clone())
    }

    pub(crate) fn hold(&self, plan_id: &str, target: &str, lease: Lease) {
        let now = Instant::now();
        self.inner()
            .held
            .insert((plan_id.to_string(), target.to_string()), Held { lease, renewed: now, since: now, misses: 0 });
    }

    /// The step was just dispatched under its held lock: heartbeats count from now.
    pub(crate) fn assigned(&self, plan_id: &str, target: &str) {
        if let Some(h) = self.inner().held.get_mut(&(plan_id.to_string(), target.to_string())) {
            h.since = Instant::now();
            h.misses = 0;
        }
    }

    pub(crate) fn held_leases(&self) -> Vec<((String, String), Lease, Instant)> {
        self.inner().held.iter().map(|(k, h)| (k.clone(), h.lease.clone(), h.renewed)).collect()
    }

    pub(crate) fn renewed(&self, plan_id: &str, target: &str) {
        if let Some(h) = self.inner().held.get_mut(&(plan_id.to_string(), target.to_string())) {
            h.renewed = Instant::now();
        }
    }

    pub(crate) async fn release(&self, plan_id: &str, target: &str) {
        let held = self.inner().held.remove(&(plan_id.to_string(), target.to_string()));
        if let Some(h) = held {
            if let Err(e) = self.lock.release(&h.lease).await {
                warn!(plan_id, target, error = %e, "could not release a lock; it will expire");
            }
        }
    }

    /// Forgets a lease without releasing it (it was lost or has expired).
    pub(crate) fn forget(&self, plan_id: &str, target: &str) {
        self.inner().held.remove(&(plan_id.to_string(), target.to_string()));
    }

    // ---------- operators ----------

    fn operator(who: &Identity) -> Result<()> {
        match who {
            Identity::Operator(_) | Identity::Insecure => Ok(()),
            Identity::Agent { name, .. } => Err(ServiceError::PermissionDenied(format!(
                "agent `{name}` called an operator method: operator calls need an operator certificate"
            ))),
        }
    }

    pub async fn submit(&self, who: &Identity, s: Submission) -> Result<PlanView> {
        Self::operator(who)?;
        let bundle = Bundle::from_json(&s.bundle).map_err(|e| ServiceError::InvalidArgument(e.to_string()))?;
        let sets = bundle
            .check(&ReadOptions { allow_missing_down: true })
            .map_err(|e| ServiceError::InvalidArgument(format!("the migrations do not read: {e}")))?;
        let targets = self.store.targets().await?;
        let validate: Vec<Target> = match &s.validate_on {
            Some(sel) => targets.iter().filter(|t| sel.matches(t)).cloned().collect(),
            None => Vec::new(),
        };
        if s.validate_on.is_some() && validate.is_empty() {
            return Err(ServiceError::FailedPrecondition("--validate-on matches no registered target".into()));
        }
        let selected: Vec<Target> = targets
            .iter()
            .filter(|t| s.selector.matches(t) && !validate.iter().any(|v| v.name == t.name))
            .cloned()
            .collect();
        if selected.is_empty() {
            return Err(ServiceError::FailedPrecondition(format!(
                "selector `{}` matches no registered target; see `flotilla fleet status`",
                s.selector
            )));
        }
        let no_set: Vec<&str> = selected
            .iter()
            .chain(&validate)
            .filter(|t| bundle.files_for(t.engine).is_none())
            .map(|t| t.name.as_str())
            .collect();
        if !no_set.is_empty() {
            return Err(ServiceError::InvalidArgument(format!(
                "the migrations have no set for the engine of {}",
                no_set.join(", ")
            )));
        }
        // A goal version must be a migration of every set the plan uses, or every step would fail on it.
        let wanted = match s.goal {
            Goal::Up { to: Some(v) } => Some(v),
            Goal::Down { to } if to > 0 => Some(to),
            _ => None,
        };
        if let Some(v) = wanted {
            for t in selected.iter().chain(&validate) {
                let key = if bundle.sets.contains_key(t.engine.as_str()) { t.engine.as_str() } else { "*" };
                if sets.get(key).is_some_and(|set| set.get(v).is_none()) {
                    return Err(ServiceError::InvalidArgument(format!(
                        "version {v} is not a migration in the {} set (target {})",
                        if key == "*" { "migrations" } else { key },
                        t.name
                    )));
                }
            }
        }
        if s.phase == Some(Phase::Contract) {
            self.check_expand_done(&bundle, &sets, &selected)?;
        }
        let id = format!("{}-{:04x}", Utc::now().format("%Y%m%d-%H%M%S"), rand::random::<u16>());
        let now = Utc::now();
        let mut steps: Vec<Step> = validate.iter().map(|t| new_step(&id, &t.name, 0, None, now)).collect();
        steps.extend(
            assign_waves(&selected, &s.strategy.waves).into_iter().map(|(t, w)| new_step(&id, &t, w, None, now)),
        );
        let plan = Plan {
            id: if s.dry_run { String::new() } else { id },
            bundle: bundle.id(),
            selector: s.selector.clone(),
            goal: s.goal,
            strategy: s.strategy,
            phase: s.phase,
            rollback_of: None,
            approved_wave: 0,
            state: PlanState::Pending,
            created_at: now,
        };
        if s.dry_run {
            return Ok(PlanView { plan, steps });
        }
        self.store.put_bundle(&bundle.to_json()).await?;
        self.store.create_plan(&plan, &steps).await?;
        self.audit(who, "submit", Some(&plan.id), format!("selector {}, {} targets", plan.selector, steps.len()))
            .await?;
        self.event(&plan.id, None, EventKind::Submitted, json!({ "targets": steps.len(), "by": who.actor() })).await?;
        self.wake.notify_one();
        Ok(PlanView { plan, steps })
    }

    /// Contract is refused until every selected target has applied every migration before the first contract one.
    fn check_expand_done(
        &self,
        bundle: &Bundle,
        sets: &BTreeMap<String, flotilla_core::MigrationSet>,
        selected: &[Target],
    ) -> Result<()> {
        let inner = self.inner();
        let mut behind = Vec::new();
        for t in selected {
            let key = if bundle.sets.contains_key(t.engine.as_str()) { t.engine.as_str() } else { "*" };
            let Some(set) = sets.get(key) else { continue };
            let first_contract = set.migrations.iter().position(|m| m.options.phase == Some(Phase::Contract));
            let Some(first) = first_contract else { continue };
            let needed = set.migrations[..first].last().map(|m| m.version).unwrap_or(0);
            let applied = inner.live.get(&t.name).and_then(|l| l.applied);
            if applied.is_none_or(|a| a < needed) {
                behind.push(format!(
                    "{} (at {}, expand ends at {needed})",
                    t.name,
                    applied.map_or("?".into(), |a| a.to_string())
                ));
            }
        }
        if behind.is_empty() {
            Ok(())
        } else {
            Err(ServiceError::FailedPrecondition(format!(
                "contract is refused until expand has finished on every selected target; not yet: {}",
                behind.join(", ")
            )))
        }
    }

    pub async fn plans(&self, who: &Identity) -> Result<Vec<PlanView>> {
        Self::operator(who)?;
        let mut out = Vec::new();
        for plan in self.store.plans().await? {
            let steps = self.store.steps(&plan.id).await?;
            out.push(PlanView { plan, steps });
        }
        Ok(out)
    }

    pub async fn plan(&self, who: &Identity, id: &str) -> Result<PlanView> {
        Self::operator(who)?;
        self.view(id).await
    }

    pub(crate) async fn view(&self, id: &str) -> Result<PlanView> {
        let plan = self.store.plan(id).await?.ok_or_else(|| ServiceError::NotFound(format!("no plan `{id}`")))?;
        let steps = self.store.steps(id).await?;
        Ok(PlanView { plan, steps })
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

    /// Pause, resume, abort or approve: `action` names it for errors and the audit log.
    pub async fn act(&self, who: &Identity, id: &str, action: &str, reason: &str) -> Result<PlanView> {
        Self::operator(who)?;
        let view = self.view(id).await?;
        let from = view.plan.state;
        let cannot = || ServiceError::FailedPrecondition(format!("plan `{id}` is {from}: it cannot {action}"));
        let moved = match action {
            "pause" | "resume" | "abort" => {
                let to = match action {
                    "pause" => PlanState::Paused,
                    "resume" => PlanState::Running,
                    _ => PlanState::Aborted,
                };
                let allowed = if to == PlanState::Running { from == PlanState::Paused } else { from.can_become(to) };
                if !allowed {
                    return Err(cannot());
                }
                let moved = self.store.set_plan_state(id, from, to).await?;
                if moved && to == PlanState::Aborted {
                    self.skip_pending(&view.steps).await?;
                }
                moved
            }
            "approve" => {
                if from != PlanState::AwaitingApproval {
                    return Err(cannot());
                }
                let next = view.steps.iter().filter(|s| !s.state.is_done()).map(|s| s.wave).min().unwrap_or(0);
                self.store.approve_wave(id, next).await?
            }
            other => return Err(ServiceError::InvalidArgument(format!("unknown action `{other}`"))),
        };
        if !moved {
            return Err(ServiceError::FailedPrecondition(format!(
                "plan `{id}` changed state while asked to {action}; look again"
            )));
        }
        self.audit(who, action, Some(id), reason.to_string()).await?;
        let kind = match action {
            "pause" => EventKind::Paused,
            "resume" => EventKind::Resumed,
            "abort" => EventKind::Aborted,
            _ => EventKind::Approved,
        };
        self.event(id, None, kind, json!({ "by": who.actor(), "reason": reason })).await?;
        self.wake.notify_one();
        self.view(id).await
    }

    pub(crate) async fn skip_pending(&self, steps: &[Step]) -> Result<()> {
        for s in steps.iter().filter(|s| s.state == StepState::Pending) {
            self.store
                .set_step_state(&s.plan_id, &s.target, StepState::Pending, StepState::Skipped, None, None)
                .await?;
        }
        Ok(())
    }

    /// `rollback PLAN`: a plan taking every target `id` touched back to the version it had, in reverse wave order.
    pub async fn rollback(&self, who: &Identity, id: &str) -> Result<PlanView> {
        Self::operator(who)?;
        let view = self.view(id).await?;
        if view.steps.iter().any(|s| matches!(s.state, StepState::Assigned | StepState::Running)) {
            return Err(ServiceError::FailedPrecondition(format!(
                "plan `{id}` has steps running; pause or abort it and wait for them to finish"
            )));
        }
        if view.plan.state.is_live() && view.plan.state != PlanState::Paused {
            return Err(ServiceError::FailedPrecondition(format!(
                "plan `{id}` is {}; pause or abort it first",
                view.plan.state
            )));
        }
        let plan = self.rollback_touched(&view.plan).await?.ok_or_else(|| {
            let unknown = unknown_before(&view.steps);
            ServiceError::FailedPrecondition(if unknown.is_empty() {
                format!("plan `{id}` changed no target, so there is nothing to roll back")
            } else {
                format!(
                    "plan `{id}` changed no target it knows the prior version of, so there is nothing to roll back; \
                     left alone because their version before the plan was never read: {}",
                    unknown.join(", ")
                )
            })
        })?;
        self.audit(who, "rollback", Some(id), format!("rollback plan {}", plan.plan.id)).await?;
        Ok(plan)
    }

    /// Creates and starts a rollback plan for every target `original` touched; `None` if it touched none.
    pub(crate) async fn rollback_touched(&self, original: &Plan) -> Result<Option<PlanView>> {
        let ran: Vec<String> = self
            .store
            .steps(&original.id)
            .await?
            .into_iter()
            .filter(|s| s.before.is_some() || matches!(s.state, StepState::Failed | StepState::Succeeded))
            .map(|s| s.target)
            .collect();
        if ran.is_empty() {
            return Ok(None);
        }
        self.rollback_targets(original, &ran).await
    }

    /// Creates and starts a rollback plan for `targets` of `original`: each down to the version its step found.
    /// Targets whose version before is unknown are left alone (an event says so); `None` if that leaves none.
    pub(crate) async fn rollback_targets(&self, original: &Plan, targets: &[String]) -> Result<Option<PlanView>> {
        let steps = self.store.steps(&original.id).await?;
        let last = steps.iter().map(|s| s.wave).max().unwrap_or(0);
        let id = rollback_id(original, targets);
        let now = Utc::now();
        let chosen: Vec<Step> = steps.iter().filter(|s| targets.contains(&s.target)).cloned().collect();
        // Only down to a version the target was seen at: a target whose prior version is unknown (its step failed
        // before it read the history) is left alone, never taken down to 0.
        let rb_steps: Vec<Step> = chosen
            .iter()
            .filter_map(|s| {
                let before = s.before?;
                Some(new_step(&id, &s.target, last - s.wave + 1, Some(Goal::Down { to: before }), now))
            })
            .collect();
        let unknown = unknown_before(&chosen);
        if !unknown.is_empty() {
            let reason = "the version before the plan was never read, so a rollback would not know where to stop";
            self.event(
                &original.id,
                None,
                EventKind::RollbackLeftAlone,
                json!({ "targets": unknown, "reason": reason }),
            )
            .await?;
        }
        if rb_steps.is_empty() {
            return Ok(None);
        }
        let plan = Plan {
            id: id.clone(),
            bundle: original.bundle.clone(),
            selector: original.selector.clone(),
            goal: Goal::Down {
                to: rb_steps
                    .iter()
                    .filter_map(|s| match s.goal {
                        Some(Goal::Down { to }) => Some(to),
                        _ => None,
                    })
                    .min()
                    .unwrap_or(0),
            },
            strategy: Strategy {
                waves: original.strategy.waves.clone(),
                max_parallel: original.strategy.max_parallel,
                max_failures: u32::MAX,
                approve_waves: false,
                on_failure: OnFailure::Halt,
            },
            phase: None,
            rollback_of: Some(original.id.clone()),
            approved_wave: 0,
            state: PlanState::Pending,
            created_at: now,
        };
        self.store.create_plan(&plan, &rb_steps).await?;
        self.event(&original.id, None, EventKind::RollbackCreated, json!({ "plan": id, "targets": rb_steps.len() }))
            .await?;
        self.event(&id, None, EventKind::Submitted, json!({ "rollback_of": original.id, "targets": rb_steps.len() }))
            .await?;
        self.wake.notify_one();
        Ok(Some(PlanView { plan, steps: rb_steps }))
    }

    pub async fn targets(&self, who: &Identity, selector: &Selector) -> Result<Vec<Target>> {
        Self::operator(who)?;
        Ok(self.store.targets().await?.into_iter().filter(|t| selector.matches(t)).collect())
    }

    pub async fn agents(&self, who: &Identity) -> Result<Vec<AgentView>> {
        Self::operator(who)?;
        let mut names: Vec<String> = self.inner().agents.keys().cloned().collect();
        for t in self.store.targets().await? {
            if !names.contains(&t.agent) {
                names.push(t.agent);
            }
        }
        names.sort();
        let targets = self.store.targets().await?;
        Ok(names
            .into_iter()
            .map(|name| {
                let last_seen = self.inner().agents.get(&name).and_then(|e| e.last_seen.map(|(_, at)| at));
                AgentView {
                    targets: targets.iter().filter(|t| t.agent == name).map(|t| t.name.clone()).collect(),
                    connected: self.is_connected(&name),
                    last_seen,
                    name,
                }
            })
            .collect())
    }

    /// Each target's applied version as its agent last read it, what is pending, and drift from what plans left.
    pub async fn fleet_status(&self, who: &Identity, selector: &Selector) -> Result<Vec<TargetStatus>> {
        Self::operator(who)?;
        let targets: Vec<Target> = self.store.targets().await?.into_iter().filter(|t| selector.matches(t)).collect();
        // The newest plan step per target says where plans left it.
        let mut last: HashMap<String, (Plan, Step)> = HashMap::new();
        for plan in self.store.plans().await? {
            for step in self.store.steps(&plan.id).await? {
                if step.state == StepState::Succeeded {
                    last.insert(step.target.clone(), (plan.clone(), step));
                }
            }
        }
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let live = self.inner().live.get(&t.name).cloned();
            let applied = live.as_ref().and_then(|l| l.applied);
            let stale = live.as_ref().is_none_or(|l| l.reported.elapsed() > self.config.heartbeat_timeout);
            let mut pending = Vec::new();
            let mut drift = None;
            if let Some((plan, step)) = last.get(&t.name) {
                let versions = self.bundle_versions(&plan.bundle, t.engine).await?;
                pending = versions.into_iter().filter(|v| applied.is_some_and(|a| *v > a)).collect();
                if let (Some(expected), Some(applied)) = (step.after, applied) {
                    if expected != applied {
                        drift = Some(format!("plan {} left version {expected}; history says {applied}", plan.id));
                    }
                }
            }
            out.push(TargetStatus {
                dirty: live.as_ref().is_some_and(|l| l.dirty),
                target: t,
                applied,
                pending,
                drift,
                stale,
            });
        }
        Ok(out)
    }

    async fn bundle_versions(&self, bundle_id: &str, engine: Engine) -> Result<Vec<i64>> {
        let cached = self.inner().versions.get(bundle_id).cloned();
        let sets = match cached {
            Some(sets) => sets,
            None => {
                let body = self.store.bundle(bundle_id).await?.unwrap_or_default();
                let mut sets = BTreeMap::new();
                if let Ok(bundle) = Bundle::from_json(body.as_bytes()) {
                    if let Ok(read) = bundle.check(&ReadOptions { allow_missing_down: true }) {
                        for (key, set) in read {
                            sets.insert(key, set.migrations.iter().map(|m| m.version).collect());
                        }
                    }
                }
                self.inner().versions.insert(bundle_id.to_string(), sets.clone());
                sets
            }
        };
        Ok(sets.get(engine.as_str()).or_else(|| sets.get("*")).cloned().unwrap_or_default())
    }

    pub(crate) async fn bundle_body(&self, id: &str) -> Result<Arc<String>> {
        let body =
            self.store.bundle(id).await?.ok_or_else(|| StoreError::Corrupt(format!("bundle {id} is missing")))?;
        Ok(Arc::new(body))
    }
}

/// A rollback plan's id: the original's and 8 hex digits, never built from a target's name (names may be as long as
/// the store allows; ids must fit 64 characters). `rollback-failed` derives the digits from the target, so one
/// failed target has one rollback plan.
fn rollback_id(original: &Plan, targets: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let suffix = if targets.len() == 1 && original.strategy.on_failure == OnFailure::RollbackFailed {
        hex::encode(&Sha256::digest(targets[0].as_bytes())[..4])
    } else {
        format!("{:08x}", rand::random::<u32>())
    };
    format!("{}-rb-{suffix}", original.id)
}

/// Targets whose step ran or failed without ever reading the target's history: a rollback leaves them alone.
fn unknown_before(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter(|s| s.before.is_none() && matches!(s.state, StepState::Failed | StepState::Succeeded))
        .map(|s| s.target.clone())
        .collect()
}

pub(crate) fn new_step(plan: &str, target: &str, wave: u32, goal: Option<Goal>, now: DateTime<Utc>) -> Step {
    Step {
        plan_id: plan.to_string(),
        target: target.to_string(),
        wave,
        state: StepState::Pending,
        token: None,
        error: None,
        goal,
        before: None,
        after: None,
        updated_at: now,
    }
}
