//! The agent daemon: registers its targets with the coordinator, pulls assignments, runs each through the local
//! [`Executor`], streams progress and reports what the target's history table says afterwards. It reconnects with
//! backoff and keeps, per target, the highest fencing token it has seen, refusing work under a lower one.

mod assignments;
mod bundles;
mod checks;
pub mod config;
mod fencing;
mod histories;
mod metrics;
mod pool;
mod results;
mod session;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flotilla_core::Version;
use flotilla_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{info, warn};

pub use config::{AgentConfig, Target};
pub use histories::{summarize, version_before_plan};

use assignments::handle;
use fencing::Tokens;
use histories::{read_versions, refresh_loop};
use results::{resend_results, send_result, Sent};
use session::session;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("config: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// How long shutdown lets running steps finish (heartbeats and reports go on meanwhile) before it stops anyway.
const DRAIN: Duration = Duration::from_secs(60);

/// A step as the coordinator names it: (plan, target, fencing token).
type StepKey = (String, String, u64);

/// A target's applied version and whether it is dirty, or why they could not be read.
type Versions = Result<(Version, bool), String>;

/// How many targets' histories an agent reads at once for checks and re-reads (not steps, which the plan's
/// parallelism bounds): each read holds a connection.
const READS_AT_ONCE: usize = 16;

/// What the agent keeps across reconnections.
struct State {
    config: AgentConfig,
    targets: HashMap<String, Target>,
    /// Highest fencing token seen per target.
    tokens: Tokens,
    /// One step at a time per target.
    running: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Applied version and dirtiness per target, as last read from its history table.
    versions: Mutex<HashMap<String, Versions>>,
    /// Steps this process is running or holds an unacknowledged result for; every heartbeat reports them, and the
    /// coordinator reconciles an assigned step that is missing (lost, refused, or from before a restart).
    inflight: Mutex<HashSet<StepKey>>,
    /// Results the coordinator has not acknowledged yet, sent again after every (re)connection.
    unacked: Mutex<HashMap<StepKey, pb::StepResult>>,
    /// Warm database connections, one per target at most.
    connections: pool::Connections,
    /// Read-only reads of targets (checks, history re-reads) at once, over every batch: each holds a connection,
    /// and a plan's checks arrive in several batches at once.
    reads: tokio::sync::Semaphore,
    /// The census: each target's schema fingerprint as last read, the schema of each fingerprint, and the
    /// fingerprints whose schema was sent in this session.
    census: Mutex<Census>,
    metrics: Arc<metrics::Metrics>,
}

#[derive(Default)]
struct Census {
    /// Target → the applied version and the schema fingerprint read together.
    fingerprints: HashMap<String, (Version, String)>,
    schemas: HashMap<String, String>,
    sent: HashSet<String>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves `/metrics` on `addr` until `stop`; an address it cannot listen on is a configuration error.
async fn serve_metrics(
    addr: &str,
    registry: prometheus_client::registry::Registry,
    stop: CancellationToken,
) -> Result<(), AgentError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| AgentError::Config(format!("cannot serve metrics on {addr}: {e}")))?;
    info!(addr = ?listener.local_addr().ok(), "serving metrics at /metrics");
    let registry = Arc::new(registry);
    tokio::spawn(async move {
        if let Err(e) = flotilla_proto::metrics::serve(listener, registry, stop).await {
            warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

/// Runs the agent until `shutdown` fires. Connection failures are retried with backoff; only bad config is fatal.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    config.check().map_err(AgentError::Config)?;
    let targets = config.resolve().map_err(AgentError::Config)?;
    // Bad TLS files are a configuration error at start; later, a change that does not load keeps the ones in use.
    let mut endpoint = endpoint(&config)?;
    let (metrics, registry) = metrics::Metrics::new();
    let idle_for = Duration::from_secs(config.connections.idle_secs);
    let connections = pool::Connections::new(config.connections.max_idle, idle_for, &metrics);
    metrics.engines(targets.iter().map(|t| t.engine));
    if let Some(addr) = &config.metrics_listen {
        serve_metrics(addr, registry, shutdown.clone()).await?;
    }
    let state = Arc::new(State {
        connections,
        reads: tokio::sync::Semaphore::new(READS_AT_ONCE),
        metrics: Arc::new(metrics),
        running: targets.iter().map(|t| (t.name.clone(), Arc::default())).collect(),
        targets: targets.into_iter().map(|t| (t.name.clone(), t)).collect(),
        config,
        tokens: Tokens::default(),
        versions: Mutex::default(),
        inflight: Mutex::default(),
        unacked: Mutex::default(),
        census: Mutex::default(),
    });
    let steps = tokio_util::task::TaskTracker::new();
    // History re-reads on a task of their own: a slow or unreachable database never delays a heartbeat.
    tokio::spawn(refresh_loop(state.clone(), Duration::from_secs(state.config.refresh_secs), shutdown.clone()));
    let sweeper = tokio::spawn(pool::sweep_loop(state.clone(), shutdown.clone()));
    let mut backoff = Duration::from_millis(200);
    let mut tls_seen = tls_stamp(&state.config);
    state.metrics.certificate_expiry.set(certificate_expiry(&state.config).unwrap_or(0));
    while !shutdown.is_cancelled() {
        let started = std::time::Instant::now();
        // Changed certificate files end the session, and the next one presents them: held results are sent again,
        // running steps go on.
        let rotate = CancellationToken::new();
        let watcher = tokio::spawn(watch_tls(state.clone(), tls_seen.clone(), rotate.clone()));
        let ended = session(&state, &endpoint, &shutdown, &rotate, &steps).await;
        watcher.abort();
        if rotate.is_cancelled() && !shutdown.is_cancelled() {
            tls_seen = tls_stamp(&state.config);
            if let Some(e) = reloaded_endpoint(&state) {
                endpoint = e;
            }
            continue;
        }
        match ended {
            Ok(()) => {}
            Err(e) => {
                warn!(agent = %state.config.name, error = %e, retry_in_ms = backoff.as_millis() as u64, "coordinator connection lost")
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(200);
        }
        let jitter = Duration::from_millis(rand::random::<u64>() % 200);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff + jitter) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    // Running steps finish (a migration is never cut in half on purpose); then stop. A connected session drained
    // them already, with heartbeats going; this covers a shutdown while the coordinator was away.
    drain(&steps).await;
    let _ = sweeper.await;
    state.connections.close_all().await;
    info!(agent = %state.config.name, "agent stopped");
    Ok(())
}

/// Stops taking work and waits for running steps, up to `DRAIN`.
async fn drain(steps: &tokio_util::task::TaskTracker) {
    steps.close();
    if !steps.is_empty() {
        info!(steps = steps.len(), "draining running steps");
    }
    if tokio::time::timeout(DRAIN, steps.wait()).await.is_err() {
        warn!(steps = steps.len(), "steps still running after the drain timeout; stopping anyway");
    }
}

/// How often the TLS files are looked at.
const TLS_WATCH: Duration = Duration::from_secs(1);

fn tls_stamp(config: &AgentConfig) -> Vec<Option<(std::time::SystemTime, u64)>> {
    match &config.tls {
        Some(t) => flotilla_proto::process::stamp(&[t.cert.as_path(), t.key.as_path(), t.ca.as_path()]),
        None => Vec::new(),
    }
}

fn certificate_expiry(config: &AgentConfig) -> Option<i64> {
    let tls = config.tls.as_ref()?;
    flotilla_proto::process::certificate_expiry(&std::fs::read(&tls.cert).ok()?)
}

/// The endpoint with the TLS files as they are now, or `None` (the one in use stays) if they do not load.
fn reloaded_endpoint(state: &State) -> Option<Endpoint> {
    match endpoint(&state.config) {
        Ok(e) => {
            state.metrics.certificate_expiry.set(certificate_expiry(&state.config).unwrap_or(0));
            info!(agent = %state.config.name, "certificate files changed: reconnecting with them");
            Some(e)
        }
        Err(e) => {
            warn!(error = %e, "certificate files changed but do not load; keeping the ones in use");
            None
        }
    }
}

/// Cancels `rotate` once the TLS files differ from `seen` and load (a certificate written before its key does not
/// yet).
async fn watch_tls(state: Arc<State>, seen: Vec<Option<(std::time::SystemTime, u64)>>, rotate: CancellationToken) {
    loop {
        tokio::select! {
            _ = rotate.cancelled() => return,
            _ = tokio::time::sleep(TLS_WATCH) => {}
        }
        if tls_stamp(&state.config) != seen && endpoint(&state.config).is_ok() {
            rotate.cancel();
            return;
        }
    }
}

fn endpoint(config: &AgentConfig) -> Result<Endpoint, AgentError> {
    let mut endpoint = Endpoint::from_shared(config.coordinator.clone())
        .map_err(|e| AgentError::Config(format!("coordinator `{}`: {e}", config.coordinator)))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(tls) = &config.tls {
        endpoint = endpoint
            .tls_config(client_tls(&tls.ca, &tls.cert, &tls.key)?)
            .map_err(|e| AgentError::Tls(e.to_string()))?;
    }
    Ok(endpoint)
}

/// A client TLS config presenting `cert`/`key` and trusting `ca`.
pub fn client_tls(
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<ClientTlsConfig, AgentError> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| AgentError::Tls(format!("cannot read the {what} {}: {e}", path.display())))
    };
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("CA certificate", ca)?)).identity(
        Identity::from_pem(
            read("certificate", cert)?,
            flotilla_proto::process::read_private_key(key).map_err(AgentError::Tls)?,
        ),
    ))
}
