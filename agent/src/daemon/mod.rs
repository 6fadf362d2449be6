//! The agent daemon: registers its targets with the coordinator, pulls assignments, runs each through the local
//! [`Executor`], streams progress and reports what the target's history table says afterwards. It reconnects with
//! backoff and keeps, per target, the highest fencing token it has seen, refusing work under a lower one.

pub mod config;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flotilla_core::bundle::Bundle;
use flotilla_core::fleet::EventKind;
use flotilla_core::{AppliedMigration, MigrationSet, Phase, PlanOptions, ReadOptions, Request};
use flotilla_proto::telemetry;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_service_client::AgentServiceClient;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{info, info_span, warn, Instrument};

pub use config::{AgentConfig, Target};

use crate::driver::{connect, ConnectOptions};
use crate::executor::{Executor, Progress, ProgressKind};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("config: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// How often idle targets' history tables are read again.
const REREAD: Duration = Duration::from_secs(60);
/// How many targets' histories are read at once when all are re-read.
const REFRESH_PARALLEL: usize = 16;
/// How long shutdown lets running steps finish (heartbeats and reports go on meanwhile) before it stops anyway.
const DRAIN: Duration = Duration::from_secs(60);

/// A step as the coordinator names it: (plan, target, fencing token).
type StepKey = (String, String, u64);

/// A target's applied version and whether it is dirty, or why they could not be read.
type Versions = Result<(i64, bool), String>;

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
    /// Parsed bundles by (bundle id, engine).
    sets: Mutex<HashMap<(String, String), Arc<MigrationSet>>>,
    /// Steps this process is running or holds an unacknowledged result for; every heartbeat reports them, and the
    /// coordinator reconciles an assigned step that is missing (lost, refused, or from before a restart).
    inflight: Mutex<HashSet<StepKey>>,
    /// Results the coordinator has not acknowledged yet, sent again after every (re)connection.
    unacked: Mutex<HashMap<StepKey, pb::StepResult>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the agent until `shutdown` fires. Connection failures are retried with backoff; only bad config is fatal.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    config.check().map_err(AgentError::Config)?;
    let targets = config.resolve().map_err(AgentError::Config)?;
    let endpoint = endpoint(&config)?;
    let state = Arc::new(State {
        running: targets.iter().map(|t| (t.name.clone(), Arc::default())).collect(),
        targets: targets.into_iter().map(|t| (t.name.clone(), t)).collect(),
        config,
        tokens: Tokens::default(),
        versions: Mutex::default(),
        sets: Mutex::default(),
        inflight: Mutex::default(),
        unacked: Mutex::default(),
    });
    let steps = tokio_util::task::TaskTracker::new();
    // History re-reads on a task of their own: a slow or unreachable database never delays a heartbeat.
    tokio::spawn(refresh_loop(state.clone(), shutdown.clone()));
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let started = std::time::Instant::now();
        match session(&state, &endpoint, &shutdown, &steps).await {
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

/// Re-reads every target's history at start and then every `REREAD`, so the coordinator sees applied versions and
/// changes made outside Flotilla (drift).
async fn refresh_loop(state: Arc<State>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = refresh_all(&state) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(REREAD) => {}
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
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("CA certificate", ca)?))
        .identity(Identity::from_pem(read("certificate", cert)?, read("private key", key)?)))
}

/// One connection to the coordinator: register, heartbeat, take assignments until the stream ends.
async fn session(
    state: &Arc<State>,
    endpoint: &Endpoint,
    shutdown: &CancellationToken,
    steps: &tokio_util::task::TaskTracker,
) -> Result<(), tonic::Status> {
    let channel: Channel =
        endpoint.connect().await.map_err(|e| tonic::Status::unavailable(format!("cannot connect: {e}")))?;
    let mut client = AgentServiceClient::new(channel)
        .max_decoding_message_size(flotilla_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(flotilla_proto::MAX_MESSAGE_BYTES);
    let name = state.config.name.clone();
    let targets = state
        .targets
        .values()
        .map(|t| pb::TargetInfo {
            name: t.name.clone(),
            engine: engine_to_proto(t.engine) as i32,
            labels: t.labels.clone().into_iter().collect(),
        })
        .collect();
    client
        .register(pb::RegisterRequest { agent_version: env!("CARGO_PKG_VERSION").into(), targets, name: name.clone() })
        .await?;
    info!(agent = %name, targets = state.targets.len(), "registered with the coordinator");
    resend_results(state, &mut client).await;
    client.heartbeat(heartbeat(state)).await?;

    // The session outlives a shutdown request until running steps have drained: heartbeats, progress and results
    // keep flowing, so the coordinator never takes a draining agent for a dead one.
    let session = CancellationToken::new();
    let _stop = session.clone().drop_guard();
    // Heartbeats, on their own task: nothing else waits in their loop.
    {
        let (state, mut client, session) = (state.clone(), client.clone(), session.clone());
        tokio::spawn(async move {
            let every = Duration::from_secs(state.config.heartbeat_secs.max(1));
            loop {
                tokio::select! {
                    _ = session.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = client.heartbeat(heartbeat(&state)).await {
                    warn!(error = %e, "heartbeat failed");
                }
            }
        });
    }
    // Progress: one client stream for the session.
    let (progress_tx, progress_rx) = mpsc::unbounded_channel::<pb::ProgressEvent>();
    {
        let (mut client, session) = (client.clone(), session.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = session.cancelled() => {}
                result = client.report_progress(UnboundedReceiverStream::new(progress_rx)) => {
                    // Without a progress stream the session is broken: end it, and the agent reconnects.
                    if let Err(e) = result { warn!(error = %e, "progress stream ended"); }
                    session.cancel();
                }
            }
        });
    }
    let mut assignments =
        client.pull_assignments(pb::PullAssignmentsRequest { agent_id: name.clone() }).await?.into_inner();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => {
                drain(steps).await;
                return Ok(());
            }
            _ = session.cancelled() => return Err(tonic::Status::unavailable("the progress stream ended")),
            next = assignments.message() => next?,
        };
        let Some(assignment) = next else {
            return Err(tonic::Status::unavailable("the coordinator closed the stream"));
        };
        let (state, client, progress) = (state.clone(), client.clone(), progress_tx.clone());
        steps.spawn(async move { handle(state, client, progress, assignment).await });
    }
}

fn engine_to_proto(e: flotilla_core::Engine) -> pb::Engine {
    use flotilla_core::Engine::*;
    match e {
        Postgres => pb::Engine::Postgres,
        Mysql => pb::Engine::Mysql,
        Sqlite => pb::Engine::Sqlite,
        Mongodb => pb::Engine::Mongodb,
    }
}

fn heartbeat(state: &State) -> pb::HeartbeatRequest {
    let running = locked(&state.inflight)
        .iter()
        .map(|(plan_id, target, token)| pb::StepRef {
            plan_id: plan_id.clone(),
            target: target.clone(),
            fencing_token: *token,
        })
        .collect();
    let mut req = pb::HeartbeatRequest { agent_id: state.config.name.clone(), running, ..Default::default() };
    for (target, v) in locked(&state.versions).iter() {
        match v {
            Ok((applied, dirty)) => {
                req.applied_versions.insert(target.clone(), *applied);
                if *dirty {
                    req.dirty_targets.push(target.clone());
                }
            }
            Err(e) => {
                req.unreachable.insert(target.clone(), e.clone());
            }
        }
    }
    req
}

/// Applied version and dirtiness from a history table.
pub fn summarize(history: &[AppliedMigration]) -> (i64, bool) {
    let applied = history.iter().filter(|r| !r.state.is_dirty()).map(|r| r.version).max().unwrap_or(0);
    (applied, history.iter().any(|r| r.state.is_dirty()))
}

/// The version a target had before plan `plan_id` touched it: the highest applied version among rows the plan did
/// not write. A re-run of a step whose first run committed (and whose result was lost) still reports where the
/// target was before the plan, not where the first run left it.
pub fn version_before_plan(history: &[AppliedMigration], plan_id: &str) -> i64 {
    history
        .iter()
        .filter(|r| !r.state.is_dirty() && r.plan_id.as_deref() != Some(plan_id))
        .map(|r| r.version)
        .max()
        .unwrap_or(0)
}

async fn read_versions(target: &Target) -> Versions {
    let options = ConnectOptions { create: false, ..ConnectOptions::default() };
    let driver = connect(&target.url, &options).await.map_err(|e| e.to_string())?;
    let mut ex = Executor::new(driver, "flotilla-agent");
    let history = ex.history().await.map_err(|e| e.to_string());
    ex.close().await;
    Ok(summarize(&history?))
}

/// Reads every target's history, a bounded number at a time: an agent serving thousands of databases must not open
/// thousands of connections at once.
async fn refresh_all(state: &State) {
    use futures_util::StreamExt;
    let reads = state.targets.values().cloned().map(|t| async move {
        let versions = read_versions(&t).await;
        (t.name, versions)
    });
    let mut results = futures_util::stream::iter(reads).buffer_unordered(REFRESH_PARALLEL);
    while let Some((name, result)) = results.next().await {
        locked(&state.versions).insert(name, result);
    }
}

/// Runs one assignment and reports its result.
async fn handle(
    state: Arc<State>,
    mut client: AgentServiceClient<Channel>,
    progress: mpsc::UnboundedSender<pb::ProgressEvent>,
    a: pb::Assignment,
) {
    let traceparent = a.trace.as_ref().map(|t| t.traceparent.clone()).unwrap_or_default();
    let span = info_span!(
        "execute_assignment",
        plan_id = %a.plan_id,
        target = %a.target,
        agent = %state.config.name,
        fencing_token = a.fencing_token,
        wave = a.wave,
    );
    telemetry::join_traceparent(&span, &traceparent);
    async move {
        let Some(target) = state.targets.get(&a.target).cloned() else {
            warn!("refusing an assignment for a target this agent does not serve");
            return;
        };
        let Some(gate) = state.running.get(&a.target).cloned() else { return };
        if !state.tokens.admit(&a.target, a.fencing_token) {
            // Not reported as running: the coordinator reconciles the step.
            warn!("refusing an assignment under a stale fencing token");
            return;
        }
        let key: StepKey = (a.plan_id.clone(), a.target.clone(), a.fencing_token);
        locked(&state.inflight).insert(key.clone());
        let _one_at_a_time = gate.lock().await;
        // A newer assignment may have arrived while this one waited.
        if state.tokens.superseded(&a.target, a.fencing_token) {
            warn!("dropping an assignment superseded by a newer fencing token");
            locked(&state.inflight).remove(&key);
            return;
        }
        let run = execute(&state, &target, &a, &progress).await;
        // The history as the step's own connection read it afterwards; a new connection only if that failed.
        let versions = match run.after {
            Some(Ok(v)) => Ok(v),
            _ => read_versions(&target).await,
        };
        locked(&state.versions).insert(target.name.clone(), versions.clone());
        let (applied, dirty) = match &versions {
            Ok((applied, dirty)) => (Some(*applied), *dirty),
            Err(_) => (None, false),
        };
        let (before, error) = (run.before, run.error);
        match &error {
            None => info!(applied = ?applied, "step succeeded"),
            Some(e) => warn!(error = %e, "step failed"),
        }
        let report = pb::StepResult {
            plan_id: a.plan_id.clone(),
            target: a.target.clone(),
            fencing_token: a.fencing_token,
            succeeded: error.is_none() && versions.is_ok(),
            error: error.or(versions.err()).unwrap_or_default(),
            applied_version: applied,
            dirty,
            version_before: before,
            agent_id: state.config.name.clone(),
        };
        // The result is held until the coordinator acknowledges it: retried here for a while, then sent again
        // after the next (re)connection. Meanwhile heartbeats list the step, so it is not reconciled under it.
        locked(&state.unacked).insert(key.clone(), report.clone());
        let parent = telemetry::traceparent(&tracing::Span::current(), &a.plan_id, &a.target);
        let mut wait = Duration::from_millis(200);
        for attempt in 1..=5 {
            match send_result(&state, &mut client, &key, &report, Some(&parent)).await {
                Sent::Done => break,
                Sent::Retry if attempt < 5 => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Sent::Retry => warn!("could not report the result; holding it until the coordinator is back"),
            }
        }
    }
    .instrument(span)
    .await
}

enum Sent {
    /// Acknowledged, or refused for good: the result is no longer held.
    Done,
    /// The coordinator could not be reached: keep the result.
    Retry,
}

/// Sends one held result. The coordinator acknowledges late and repeated results too, so anything but
/// unavailability means it will never want this one again.
async fn send_result(
    state: &State,
    client: &mut AgentServiceClient<Channel>,
    key: &StepKey,
    report: &pb::StepResult,
    traceparent: Option<&str>,
) -> Sent {
    let mut request = tonic::Request::new(report.clone());
    if let Some(value) = traceparent.and_then(|t| t.parse().ok()) {
        request.metadata_mut().insert("traceparent", value);
    }
    match client.report_result(request).await {
        Err(e) if matches!(e.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled) => {
            Sent::Retry
        }
        outcome => {
            if let Err(e) = outcome {
                warn!(plan_id = %key.0, target = %key.1, error = %e, "the coordinator refused a result; dropping it");
            }
            locked(&state.unacked).remove(key);
            locked(&state.inflight).remove(key);
            Sent::Done
        }
    }
}

/// Sends every result still held (from before a reconnection).
async fn resend_results(state: &State, client: &mut AgentServiceClient<Channel>) {
    let held: Vec<(StepKey, pb::StepResult)> =
        locked(&state.unacked).iter().map(|(k, r)| (k.clone(), r.clone())).collect();
    for (key, report) in held {
        if let Sent::Done = send_result(state, client, &key, &report, None).await {
            info!(plan_id = %key.0, target = %key.1, "reported a result held across a reconnection");
        }
    }
}

/// The highest fencing token seen per target: work under a lower one comes from a coordinator that lost the lock.
#[derive(Default)]
struct Tokens(Mutex<HashMap<String, u64>>);

impl Tokens {
    /// Records `token` for `target`; `false` if a higher one was seen before (refuse the work).
    fn admit(&self, target: &str, token: u64) -> bool {
        let mut tokens = locked(&self.0);
        let seen = tokens.entry(target.to_string()).or_insert(0);
        if token < *seen {
            return false;
        }
        *seen = token;
        true
    }

    /// Whether a newer token arrived for `target` since `token` was admitted.
    fn superseded(&self, target: &str, token: u64) -> bool {
        locked(&self.0).get(target).is_some_and(|t| *t > token)
    }
}

/// What running a step found and left.
struct StepRun {
    /// Applied version before the step; `None` if the step failed before it could read the history.
    before: Option<i64>,
    error: Option<String>,
    /// Applied version and dirtiness after, read on the step's connection (`None` if it never connected).
    after: Option<Versions>,
}

/// Runs the step on one connection: read the history, run, read the history again.
async fn execute(
    state: &State,
    target: &Target,
    a: &pb::Assignment,
    progress: &mpsc::UnboundedSender<pb::ProgressEvent>,
) -> StepRun {
    let failed = |e: String| StepRun { before: None, error: Some(e), after: None };
    let set = match load_set(state, target, a) {
        Ok(set) => set,
        Err(e) => return failed(e),
    };
    let driver = match connect(&target.url, &ConnectOptions::default()).await {
        Ok(driver) => driver,
        Err(e) => return failed(e.to_string()),
    };
    let base = pb::ProgressEvent {
        plan_id: a.plan_id.clone(),
        target: a.target.clone(),
        fencing_token: a.fencing_token,
        agent_id: state.config.name.clone(),
        ..Default::default()
    };
    let sink_base = base.clone();
    let sink_tx = progress.clone();
    let sink = Arc::new(move |p: &Progress| {
        let mut e = sink_base.clone();
        e.version = p.version;
        e.direction = p.direction.as_str().to_string();
        match &p.kind {
            ProgressKind::Started { statements, .. } => {
                e.kind = EventKind::MigrationStarted.to_string();
                e.statement_total = *statements as u32;
            }
            ProgressKind::Statement { index, total, rows_affected, elapsed_ms } => {
                e.kind = EventKind::Statement.to_string();
                e.statement_index = *index as u32;
                e.statement_total = *total as u32;
                e.rows_affected = *rows_affected;
                e.elapsed_ms = *elapsed_ms;
            }
            ProgressKind::Batch { batch, rows_affected, elapsed_ms, .. } => {
                e.kind = EventKind::Batch.to_string();
                e.statement_index = u32::try_from(*batch).unwrap_or(u32::MAX);
                e.rows_affected = *rows_affected;
                e.elapsed_ms = *elapsed_ms;
            }
            ProgressKind::Finished { elapsed_ms } => {
                e.kind = EventKind::MigrationFinished.to_string();
                e.elapsed_ms = *elapsed_ms;
            }
            ProgressKind::Failed { statement, error } => {
                e.kind = EventKind::MigrationFailed.to_string();
                e.statement_index = statement.map_or(0, |s| s as u32);
                e.error = error.clone();
            }
        }
        let _ = sink_tx.send(e);
    });
    let phase = match a.phase.as_str() {
        "expand" => Some(Phase::Expand),
        "contract" => Some(Phase::Contract),
        _ => None,
    };
    let mut ex = Executor::new(driver, format!("flotilla-agent:{}", state.config.name))
        .with_plan_id(Some(a.plan_id.clone()))
        .with_fencing_token(Some(a.fencing_token))
        .with_plan_options(PlanOptions { phase, ..PlanOptions::default() })
        .with_progress(sink);
    let before = match ex.history().await {
        Ok(h) => version_before_plan(&h, &a.plan_id),
        Err(e) => {
            ex.close().await;
            return failed(e.to_string());
        }
    };
    let _ = progress.send(pb::ProgressEvent {
        kind: EventKind::StepStarted.to_string(),
        version_before: before,
        ..base.clone()
    });
    let result = if a.validate {
        match crate::validate::validate(&mut ex, &set, None).await {
            Ok(report) if report.passed() => Ok(()),
            Ok(report) => Err(validation_problems(&report)),
            Err(e) => Err(e.to_string()),
        }
    } else {
        let request = match a.goal {
            Some(g) if g.direction == pb::goal::Direction::Down as i32 => Request::DownTo(g.version),
            Some(g) if g.version > 0 => Request::Up { to: Some(g.version) },
            _ => Request::Up { to: None },
        };
        ex.migrate(&set, request, false).await.map(drop).map_err(|e| e.to_string())
    };
    let after = ex.history().await.map(|h| summarize(&h)).map_err(|e| e.to_string());
    ex.close().await;
    StepRun { before: Some(before), error: result.err(), after: Some(after) }
}

fn validation_problems(report: &crate::validate::ValidationReport) -> String {
    let mut parts: Vec<String> = report
        .migrations
        .iter()
        .filter(|m| !m.problems.is_empty())
        .map(|m| format!("{} ({}): {}", m.version, m.name, m.problems.join("; ")))
        .collect();
    if let Some(stopped) = &report.stopped {
        parts.push(stopped.clone());
    }
    format!("validation failed: {}", parts.join(" | "))
}

/// The bundle's migration set for the target's engine, checked against its content address and parsed once.
fn load_set(state: &State, target: &Target, a: &pb::Assignment) -> Result<Arc<MigrationSet>, String> {
    let key = (a.bundle_id.clone(), target.engine.as_str().to_string());
    if let Some(set) = locked(&state.sets).get(&key) {
        return Ok(set.clone());
    }
    let digest = hex::encode(Sha256::digest(&a.bundle));
    if digest != a.bundle_id {
        return Err(format!("the bundle's content does not match its id {} (got {digest})", a.bundle_id));
    }
    let bundle = Bundle::from_json(&a.bundle).map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let set =
        bundle.read(target.engine, dir.path(), &ReadOptions { allow_missing_down: true }).map_err(|e| e.to_string())?;
    let set = Arc::new(set);
    locked(&state.sets).insert(key, set.clone());
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::{version_before_plan, Tokens};
    use flotilla_core::{AppliedMigration, Checksum, RecordState};

    fn row(version: i64, plan: Option<&str>) -> AppliedMigration {
        AppliedMigration {
            version,
            name: format!("m{version}"),
            checksum: Checksum::of("up", Some("down")),
            state: RecordState::Applied,
            applied_at: chrono::Utc::now(),
            duration_ms: 1,
            applied_by: "test".into(),
            plan_id: plan.map(str::to_string),
        }
    }

    #[test]
    fn the_version_before_a_plan_ignores_what_the_plan_itself_applied() {
        let history = vec![row(1, None), row(2, Some("p1")), row(3, Some("p2")), row(4, Some("p2"))];
        assert_eq!(version_before_plan(&history, "p2"), 2, "a re-run of p2 reports where p2 found the target");
        assert_eq!(version_before_plan(&history, "p3"), 4, "a new plan finds the top");
        assert_eq!(version_before_plan(&history[..1], "p2"), 1);
        assert_eq!(version_before_plan(&[], "p2"), 0, "an empty history is 0: known, and nothing applied");
    }

    #[test]
    fn stale_fencing_tokens_are_refused() {
        let tokens = Tokens::default();
        assert!(tokens.admit("db1", 5));
        assert!(tokens.admit("db1", 5), "the same assignment again (a re-sent stream) is fine");
        assert!(!tokens.admit("db1", 4), "a lower token is a coordinator that lost the lock");
        assert!(tokens.admit("db2", 1), "tokens are per target");
        assert!(tokens.admit("db1", 7));
        assert!(tokens.superseded("db1", 5) && !tokens.superseded("db1", 7));
    }
}
