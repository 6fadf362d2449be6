//! One connection to the coordinator: register, re-send held results, heartbeat on its own task, take assignments.

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_service_client::AgentServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use super::bundles::{SessionBundles, BUNDLES_KEPT};
use super::*;

/// One connection to the coordinator: register, heartbeat, take assignments until the stream ends.
pub(super) async fn session(
    state: &Arc<State>,
    endpoint: &Endpoint,
    shutdown: &CancellationToken,
    rotate: &CancellationToken,
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
        .map(|t| {
            // Every target has a host (the server it lives on), so the coordinator can limit steps per server.
            let mut labels: std::collections::HashMap<String, String> = t.labels.clone().into_iter().collect();
            labels.entry("host".into()).or_insert_with(|| t.host());
            pb::TargetInfo { name: t.name.clone(), engine: pb::Engine::from(t.engine) as i32, labels }
        })
        .collect();
    let max_idle_connections = u32::try_from(state.connections.max_idle()).unwrap_or(u32::MAX);
    let version = env!("CARGO_PKG_VERSION").into();
    client
        .register(pb::RegisterRequest { agent_version: version, targets, name: name.clone(), max_idle_connections })
        .await?;
    info!(agent = %name, targets = state.targets.len(), "registered with the coordinator");
    // A new coordinator (or one restarted) has none of the census's schemas yet.
    locked(&state.census).sent.clear();
    state.metrics.connected.set(1);
    let _disconnected = Disconnected(state.clone());
    resend_results(state, &mut client).await;
    client.heartbeat(heartbeat(state)).await?;

    // The session outlives a shutdown request until running steps have drained: heartbeats, progress and results
    // keep flowing, so the coordinator never takes a draining agent for a dead one.
    let session = CancellationToken::new();
    let _stop = session.clone().drop_guard();
    spawn_heartbeats(state.clone(), client.clone(), session.clone());
    let progress_tx = spawn_progress(client.clone(), session.clone());
    let pull = pb::PullAssignmentsRequest { agent_id: name.clone(), bundles_kept: BUNDLES_KEPT };
    let mut assignments = client.pull_assignments(pull).await?.into_inner();
    let mut bundles = SessionBundles::new(state.targets.values().map(|t| t.engine));
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => {
                drain(steps).await;
                return Ok(());
            }
            _ = session.cancelled() => return Err(tonic::Status::unavailable("the progress stream ended")),
            // New certificate files: this session ends, the next presents them.
            _ = rotate.cancelled() => return Ok(()),
            next = assignments.message() => next?,
        };
        let Some(work) = next else {
            return Err(tonic::Status::unavailable("the coordinator closed the stream"));
        };
        let (state, client) = (state.clone(), client.clone());
        // Every message's bundle, in the stream's order (see SessionBundles::resolve).
        match work.work {
            Some(pb::work::Work::Assignment(mut a)) => {
                let bundle = bundles.resolve(&a.bundle_id, std::mem::take(&mut a.bundle));
                let progress = progress_tx.clone();
                steps.spawn(async move { handle(state, client, progress, a, bundle).await });
            }
            Some(pb::work::Work::Check(mut c)) => {
                let bundle = bundles.resolve(&c.bundle_id, std::mem::take(&mut c.bundle));
                steps.spawn(super::checks::handle(state, client, c, bundle));
            }
            // From a newer coordinator: whatever it is, not doing it is safe (it takes the step back).
            None => warn!("ignoring work of a kind this agent does not know"),
        }
    }
}

/// Heartbeats, on their own task: nothing else waits in their loop.
fn spawn_heartbeats(state: Arc<State>, mut client: AgentServiceClient<Channel>, session: CancellationToken) {
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

/// Progress: one client stream for the session. Without it the session is broken: it ends, and the agent
/// reconnects.
fn spawn_progress(
    mut client: AgentServiceClient<Channel>,
    session: CancellationToken,
) -> mpsc::UnboundedSender<pb::ProgressEvent> {
    let (progress_tx, progress_rx) = mpsc::unbounded_channel::<pb::ProgressEvent>();
    tokio::spawn(async move {
        tokio::select! {
            _ = session.cancelled() => {}
            result = client.report_progress(UnboundedReceiverStream::new(progress_rx)) => {
                if let Err(e) = result { warn!(error = %e, "progress stream ended"); }
                session.cancel();
            }
        }
    });
    progress_tx
}

/// Sets the connected gauge back to 0 when a session ends, however it ends.
struct Disconnected(Arc<State>);

impl Drop for Disconnected {
    fn drop(&mut self) {
        self.0.metrics.connected.set(0);
    }
}

pub(super) fn heartbeat(state: &State) -> pb::HeartbeatRequest {
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
                req.applied_versions.insert(target.clone(), applied.to_string());
                if *dirty {
                    req.dirty_targets.push(target.clone());
                }
            }
            Err(e) => {
                req.unreachable.insert(target.clone(), e.clone());
            }
        }
    }
    // A fingerprint counts only with the version it was read at: one from before the target's last change is not
    // sent.
    let mut census = locked(&state.census);
    let census = &mut *census;
    let current: Vec<(&String, &String)> = census
        .fingerprints
        .iter()
        .filter(|(t, (v, _))| req.applied_versions.get(*t) == Some(&v.to_string()))
        .map(|(t, (_, f))| (t, f))
        .collect();
    req.fingerprints = current.iter().map(|(t, f)| (t.to_string(), f.to_string())).collect();
    for (_, fingerprint) in current {
        if census.sent.insert(fingerprint.clone()) {
            if let Some(schema) = census.schemas.get(fingerprint) {
                req.schemas.insert(fingerprint.clone(), schema.clone());
            }
        }
    }
    let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    state.metrics.steps_running.set(gauge(req.running.len()));
    state.metrics.targets.set(gauge(state.targets.len()));
    state.metrics.targets_dirty.set(gauge(req.dirty_targets.len()));
    state.metrics.targets_unreachable.set(gauge(req.unreachable.len()));
    req
}
