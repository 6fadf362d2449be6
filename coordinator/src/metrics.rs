//! The coordinator's Prometheus metrics (served at `/metrics` on `metrics_listen`), the ones the dashboard and alert
//! rules in `deploy/` read. Names and units by Prometheus conventions: `flotilla_` prefix, seconds, `_total` for
//! counters (added by the encoder).

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

pub use flotilla_proto::metrics::EngineDirection;
use flotilla_proto::metrics::{durations, Histograms};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanState {
    pub plan: String,
    pub wave: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepOutcome {
    pub engine: String,
    pub direction: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Operation {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Code {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Holder {
    /// `coordinator`, or `agent:NAME`.
    pub holder: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetVersion {
    pub version: String,
    pub dirty: String,
}

/// Errors returned to gRPC callers, by the code `grpc::status` chose: counted where every error is mapped, so
/// process-wide.
pub(crate) static RPC_ERRORS: LazyLock<Family<Code, Counter>> = LazyLock::new(Family::default);

/// Bundle bytes sent to agents with assignments and checks: counted where messages are made, so process-wide. A
/// bundle crosses once per agent session while the agent keeps it (`flotilla_proto::KeptBundles`).
pub(crate) static BUNDLE_BYTES_SENT: LazyLock<Counter> = LazyLock::new(Counter::default);

pub struct Metrics {
    /// Steps of each live plan by wave and state, set on every scheduler pass.
    pub steps: Family<PlanState, Gauge>,
    /// Steps finished, by engine, direction and result (`succeeded`, `failed`, `at_goal`).
    pub steps_finished: Family<StepOutcome, Counter>,
    /// From assignment to result.
    pub step_duration: Histograms<EngineDirection>,
    /// Target locks asked for: `taken` or `held_elsewhere`.
    pub lock_acquisitions: Family<Outcome, Counter>,
    /// Locks found lost while their step ran (expired, or taken by another holder).
    pub lock_losses: Counter,
    /// Lock service calls (`acquire`, `renew`, `release`): etcd's latency, or the in-process lock's.
    pub lock_duration: Histograms<Operation>,
    /// Store calls on the hot path (`record`, `assign`, `counts`, `finish_unchanged`, `live_plans`).
    pub store_duration: Histograms<Operation>,
    pub agents_connected: Gauge,
    /// Targets by the applied version their agents last reported, and whether it is dirty.
    pub targets: Family<TargetVersion, Gauge>,
    /// Migrations that gave up waiting for a table lock and were retried (agents' `lock_retry` events).
    pub lock_retries: Counter,
    /// When certificates expire: the coordinator's own, and each agent's as it presented it.
    pub certificate_expiry: Family<Holder, Gauge>,
}

impl Metrics {
    /// The metrics and the registry that serves them.
    pub fn new() -> (Metrics, Registry) {
        let m = Metrics {
            steps: Family::default(),
            steps_finished: Family::default(),
            step_duration: Family::new_with_constructor(durations),
            lock_acquisitions: Family::default(),
            lock_losses: Counter::default(),
            lock_duration: Family::new_with_constructor(durations),
            store_duration: Family::new_with_constructor(durations),
            agents_connected: Gauge::default(),
            targets: Family::default(),
            lock_retries: Counter::default(),
            certificate_expiry: Family::default(),
        };
        let mut r = Registry::with_prefix("flotilla");
        r.register("plan_steps", "Steps of each live plan, by wave and state", m.steps.clone());
        r.register("steps_finished", "Steps finished, by engine, direction and result", m.steps_finished.clone());
        r.register_with_unit(
            "step_duration",
            "Time from a step's assignment to its result",
            Unit::Seconds,
            m.step_duration.clone(),
        );
        r.register("lock_acquisitions", "Target locks asked for, by result", m.lock_acquisitions.clone());
        r.register("lock_losses", "Target locks lost while their step ran", m.lock_losses.clone());
        r.register_with_unit(
            "lock_operation_duration",
            "Lock service calls (etcd or in-process), by operation",
            Unit::Seconds,
            m.lock_duration.clone(),
        );
        r.register_with_unit(
            "store_operation_duration",
            "Store calls on the scheduling path, by operation",
            Unit::Seconds,
            m.store_duration.clone(),
        );
        r.register("agents_connected", "Agents with an open assignment stream", m.agents_connected.clone());
        r.register("targets", "Targets by applied version and dirty, as their agents last reported", m.targets.clone());
        r.register("lock_retries", "Migrations rolled back on a lock timeout and retried", m.lock_retries.clone());
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When a certificate expires (Unix time): the coordinator's, and each agent's as last presented",
            m.certificate_expiry.clone(),
        );
        // Every code from the start, at 0: a rate over a counter that appears only with its first error misses it.
        for code in flotilla_proto::errors::ErrorCode::ALL {
            let _ = RPC_ERRORS.get_or_create(&Code { code: code.as_str().to_string() });
        }
        r.register("rpc_errors", "Errors returned to gRPC callers, by code", RPC_ERRORS.clone());
        r.register_with_unit(
            "bundles_sent",
            "Bundle bytes sent to agents (once per agent session while the agent keeps the bundle)",
            Unit::Bytes,
            BUNDLE_BYTES_SENT.clone(),
        );
        (m, r)
    }

    pub fn certificate_expires(&self, holder: &str, at: Option<i64>) {
        let gauge = self.certificate_expiry.get_or_create(&Holder { holder: holder.to_string() });
        gauge.set(at.unwrap_or(0));
    }

    pub fn store_call(&self, operation: &str, took: Duration) {
        self.store_duration.get_or_create(&Operation { operation: operation.into() }).observe(took.as_secs_f64());
    }

    pub fn lock_call(&self, operation: &str, took: Duration) {
        self.lock_duration.get_or_create(&Operation { operation: operation.into() }).observe(took.as_secs_f64());
    }
}
