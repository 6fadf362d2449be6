//! The agent's Prometheus metrics (served at `/metrics` on `metrics_listen`): what its migrations did, by engine.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

pub use flotilla_proto::metrics::EngineDirection;
use flotilla_proto::metrics::{durations, Histograms};

use crate::executor::{Progress, ProgressKind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MigrationOutcome {
    pub engine: String,
    pub direction: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineLabel {
    pub engine: String,
}

pub struct Metrics {
    pub migrations: Family<MigrationOutcome, Counter>,
    pub migration_duration: Histograms<EngineDirection>,
    pub backfill_rows: Family<EngineLabel, Counter>,
    pub backfill_batches: Family<EngineLabel, Counter>,
    /// Migrations rolled back on a lock timeout and retried.
    pub lock_retries: Family<EngineLabel, Counter>,
    /// Throttle events: a health check held a migration (reported when it starts holding, then every 5 s).
    pub throttled: Family<EngineLabel, Counter>,
    pub steps_running: Gauge,
    /// 1 while the agent has a session with the coordinator.
    pub connected: Gauge,
    pub targets: Gauge,
    pub targets_dirty: Gauge,
    pub targets_unreachable: Gauge,
    /// When the agent's certificate expires (Unix time; 0 without TLS).
    pub certificate_expiry: Gauge,
    /// Database connections opened (for a step, a check or a history read).
    pub connections_opened: Counter,
    /// Uses of a warm connection kept from an earlier one instead.
    pub connections_reused: Counter,
}

impl Metrics {
    pub fn new() -> (Metrics, Registry) {
        let m = Metrics {
            migrations: Family::default(),
            migration_duration: Family::new_with_constructor(durations),
            backfill_rows: Family::default(),
            backfill_batches: Family::default(),
            lock_retries: Family::default(),
            throttled: Family::default(),
            steps_running: Gauge::default(),
            connected: Gauge::default(),
            targets: Gauge::default(),
            targets_dirty: Gauge::default(),
            targets_unreachable: Gauge::default(),
            certificate_expiry: Gauge::default(),
            connections_opened: Counter::default(),
            connections_reused: Counter::default(),
        };
        let mut r = Registry::with_prefix("flotilla_agent");
        r.register("migrations", "Migrations run, by engine, direction and result", m.migrations.clone());
        r.register_with_unit(
            "migration_duration",
            "Time one migration took, by engine and direction",
            Unit::Seconds,
            m.migration_duration.clone(),
        );
        r.register("backfill_rows", "Rows updated by backfill batches", m.backfill_rows.clone());
        r.register("backfill_batches", "Backfill batches committed", m.backfill_batches.clone());
        r.register("lock_retries", "Migrations rolled back on a lock timeout and retried", m.lock_retries.clone());
        r.register("throttle_events", "Times a health check held a migration", m.throttled.clone());
        r.register("steps_running", "Steps this agent is running", m.steps_running.clone());
        r.register("connected", "1 while the agent has a session with its coordinator", m.connected.clone());
        r.register("targets", "Targets this agent serves", m.targets.clone());
        r.register("targets_dirty", "Targets whose history has a dirty record", m.targets_dirty.clone());
        r.register("targets_unreachable", "Targets whose history could not be read", m.targets_unreachable.clone());
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When the agent's client certificate expires (Unix time)",
            m.certificate_expiry.clone(),
        );
        r.register("database_connections_opened", "Database connections opened", m.connections_opened.clone());
        r.register(
            "database_connections_reused",
            "Uses of a warm database connection kept from an earlier one",
            m.connections_reused.clone(),
        );
        (m, r)
    }

    /// Creates the per-engine counters at 0 for the engines served, so rates over them see their first increase.
    pub fn engines(&self, engines: impl IntoIterator<Item = flotilla_core::Engine>) {
        for engine in engines {
            let labels = EngineLabel { engine: engine.as_str().to_string() };
            let _ = self.lock_retries.get_or_create(&labels);
            let _ = self.backfill_rows.get_or_create(&labels);
            let _ = self.backfill_batches.get_or_create(&labels);
            let _ = self.throttled.get_or_create(&labels);
        }
    }

    /// Counts what one progress event of a migration on `engine` says.
    pub fn observe(&self, engine: &str, p: &Progress) {
        let engine = engine.to_string();
        let direction = p.direction.as_str().to_string();
        let outcome = |result: &str| MigrationOutcome {
            engine: engine.clone(),
            direction: direction.clone(),
            result: result.into(),
        };
        match &p.kind {
            ProgressKind::Finished { elapsed_ms } => {
                self.migrations.get_or_create(&outcome("succeeded")).inc();
                let labels = EngineDirection { engine: engine.clone(), direction: direction.clone() };
                self.migration_duration.get_or_create(&labels).observe(*elapsed_ms as f64 / 1000.0);
            }
            ProgressKind::Failed { .. } => {
                self.migrations.get_or_create(&outcome("failed")).inc();
            }
            ProgressKind::Batch { rows_affected, .. } => {
                let labels = EngineLabel { engine: engine.clone() };
                self.backfill_batches.get_or_create(&labels).inc();
                self.backfill_rows.get_or_create(&labels).inc_by(*rows_affected);
            }
            ProgressKind::LockRetry { .. } => {
                self.lock_retries.get_or_create(&EngineLabel { engine: engine.clone() }).inc();
            }
            ProgressKind::Throttled { .. } => {
                self.throttled.get_or_create(&EngineLabel { engine: engine.clone() }).inc();
            }
            ProgressKind::Started { .. } | ProgressKind::Statement { .. } => {}
        }
    }
}
