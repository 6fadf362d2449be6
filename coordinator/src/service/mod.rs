//! The coordinator's domain service: what every RPC does, in domain types. The gRPC layer (`grpc`) only checks who
//! calls, converts, and calls these methods; the scheduler (`scheduler`) drives plans with them.

mod access;
mod agents;
mod checks;
mod events;
mod intake;
mod leases;
mod lint;
mod plans;
mod rollback;
mod status;
mod submission;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use flotilla_core::fleet::{EventKind, Goal, Plan, PlanState, Selector, Step, StepState, Strategy, Target};
use flotilla_core::{Phase, Version};
use tokio::sync::{mpsc, watch};

use crate::identity::Identity;
use crate::lock::{Lease, Lock, LockError};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
pub use access::Access;
use events::{write_events, Queued};

/// What went wrong, with what it concerns, classed by what the caller should do: fix its input
/// (`BadInput`, `SelectorMatchesNothing`), look again (`PlanNotFound`, `StepNotFound`, `IllegalTransition`,
/// `Conflict`), accept a refusal (`Refused`, `NotAllowed`), or retry later (`Store`, `Lock`, when retryable).
/// `grpc::status` maps each to a status in one place.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    BadInput(String),
    #[error("{what} `{selector}` matches no registered target; see `flotilla fleet status`")]
    SelectorMatchesNothing { what: &'static str, selector: String },
    #[error("no plan `{id}`")]
    PlanNotFound { id: String },
    #[error("plan `{plan_id}` has no step for `{target}`")]
    StepNotFound { plan_id: String, target: String },
    #[error("plan `{id}` is {from}: it cannot {action}")]
    IllegalTransition { id: String, from: PlanState, action: Action },
    #[error("plan `{id}` changed state while asked to {action}; look again")]
    Conflict { id: String, action: Action },
    /// What the fleet's state forbids now (steps running, contract before expand, an agent not registered).
    #[error("{0}")]
    Refused(String),
    /// What the caller's identity may not do.
    #[error("{0}")]
    NotAllowed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// What an operator does to a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Abort,
    Approve,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Approve => "approve",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// Who may do what (roles, deny-list, agents' extra allow-lists), replaceable at run time.
    pub access: Access,
    /// Most targets one plan may have: its steps are one store transaction, and a bigger fleet goes in several
    /// plans.
    pub max_targets_per_plan: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            holder: format!("coordinator-{}", std::process::id()),
            lease_ttl: Duration::from_secs(10),
            tick: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_secs(15),
            access: Access::default(),
            max_targets_per_plan: 100_000,
        }
    }
}

/// What the coordinator pushes down an agent's stream.
#[derive(Debug, Clone)]
pub enum Work {
    /// Run a step under its lock.
    Assign(Assignment),
    /// Say which of a plan's pending targets already are at their goal (read-only, no lock).
    Check(CheckRequest),
}

/// A batch of a plan's pending targets for their agent to check, each with its step's goal.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    pub plan_id: String,
    pub bundle_id: String,
    pub bundle: Arc<String>,
    pub phase: Option<Phase>,
    pub targets: Vec<(String, Goal)>,
    pub traceparent: Option<String>,
}

/// What an agent's check found for one target.
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    pub target: String,
    /// Nothing to do for the goal: the step is finished without an assignment.
    pub at_goal: bool,
    pub applied: Option<Version>,
    pub before: Option<Version>,
    pub detail: String,
}

/// Work for an agent: one step under its lock.
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
    /// The plan's timeouts for migrations that set none.
    pub timeouts: flotilla_core::Timeouts,
    /// The target's pending migrations in one transaction (the plan's `Strategy::group`).
    pub group: bool,
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
    /// On `step_started`: the applied version the step found.
    pub version_before: Option<Version>,
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
    pub version_before: Option<Version>,
    /// `None`: the history could not be read after the step.
    pub applied_version: Option<Version>,
    pub dirty: bool,
}

/// What an agent last read from its targets, and the steps it is running.
#[derive(Debug, Clone, Default)]
pub struct TargetReport {
    pub applied: BTreeMap<String, Version>,
    pub dirty: Vec<String>,
    pub unreachable: BTreeMap<String, String>,
    /// (plan, target, fencing token) of every step the agent process is running or holds a result for.
    pub running: std::collections::HashSet<(String, String, u64)>,
    /// Target → its schema's fingerprint.
    pub fingerprints: BTreeMap<String, String>,
    /// Fingerprint → schema, for fingerprints not sent before in this agent's session.
    pub schemas: BTreeMap<String, String>,
}

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
    /// Submit even when lint finds errors (they are recorded with the plan).
    pub allow_lint: bool,
}

/// A plan with its step counts by wave and state, for lists.
#[derive(Debug, Clone)]
pub struct PlanOverview {
    pub plan: Plan,
    pub counts: Vec<crate::store::StepCount>,
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
    /// When the certificate it last registered with expires.
    pub certificate_expires: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct TargetStatus {
    pub target: Target,
    pub applied: Option<Version>,
    pub pending: Vec<Version>,
    pub dirty: bool,
    pub drift: Option<String>,
    pub stale: bool,
    pub fingerprint: Option<String>,
    /// Its schema differs from the one most targets at its version have.
    pub schema_drift: bool,
}

/// A target's schema beside the one most targets at its version have.
#[derive(Debug, Clone)]
pub struct Drift {
    pub target: String,
    pub applied: Version,
    pub fingerprint: String,
    pub schema: Arc<String>,
    pub majority_fingerprint: String,
    pub majority_schema: Arc<String>,
    pub majority_targets: usize,
    pub version_targets: usize,
    pub majority_example: String,
}

struct AgentEntry {
    targets: Vec<String>,
    sender: Option<mpsc::Sender<Work>>,
    /// Bumped on each new assignment stream, so an old stream's end does not disconnect a new one.
    stream: u64,
    last_seen: Option<(Instant, DateTime<Utc>)>,
    /// When the certificate it registered with expires (Unix time).
    certificate_expiry: Option<i64>,
    /// How many idle database connections it keeps warm, as it registered.
    max_idle: usize,
}

#[derive(Clone)]
struct TargetLive {
    applied: Option<Version>,
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
    /// Target → the agent serving it; shared with every scheduler pass, copied only when an agent registers.
    pub(crate) owners: Arc<HashMap<String, String>>,
    /// Bundle id → engine key → versions, for fleet status.
    versions: HashMap<String, BTreeMap<String, Vec<Version>>>,
    /// Plan id → the checks of its current wave.
    checks: HashMap<String, checks::PlanChecks>,
    /// Target → its engine, as registered.
    engines: HashMap<String, flotilla_core::Engine>,
    /// Target → the database server it lives on (its `host` label).
    hosts: HashMap<String, String>,
    /// The census: target → its schema's fingerprint, as its agent last reported it.
    fingerprints: HashMap<String, String>,
    /// Fingerprint → the schema (normalized dump, JSON): one copy per distinct schema.
    schemas: HashMap<String, Arc<String>>,
}

pub struct Coordinator {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) lock: Arc<dyn Lock>,
    pub(crate) config: Config,
    access: std::sync::RwLock<Access>,
    inner: Mutex<Inner>,
    /// Bumped on every stored event: wakes plan watchers.
    events: watch::Sender<u64>,
    /// Wakes the scheduler before its next tick.
    pub(crate) wake: tokio::sync::Notify,
    /// Events and agents' facts go through one writer that commits whatever is queued together (group commit).
    writer: mpsc::UnboundedSender<Queued>,
    pub(crate) metrics: Arc<Metrics>,
    registry: Arc<prometheus_client::registry::Registry>,
}

impl Coordinator {
    /// Must be called inside the Tokio runtime (it starts the event writer).
    pub fn new(store: Arc<dyn Store>, lock: Arc<dyn Lock>, config: Config) -> Arc<Coordinator> {
        let (writer, queue) = mpsc::unbounded_channel();
        let (metrics, registry) = Metrics::new();
        let metrics = Arc::new(metrics);
        tokio::spawn(write_events(store.clone(), queue, metrics.clone()));
        Arc::new(Coordinator {
            writer,
            metrics,
            registry: Arc::new(registry),
            store,
            lock,
            access: std::sync::RwLock::new(config.access.clone()),
            config,
            inner: Mutex::new(Inner::default()),
            events: watch::channel(0).0,
            wake: tokio::sync::Notify::new(),
        })
    }

    /// The metrics, for `/metrics`.
    pub fn registry(&self) -> Arc<prometheus_client::registry::Registry> {
        self.registry.clone()
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Plain maps; a panic elsewhere must not poison every later call.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
