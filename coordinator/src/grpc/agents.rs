//! The agents' service: register, heartbeat, the assignment stream, progress and results.

use std::sync::Arc;

use flotilla_proto::v1 as pb;
use flotilla_proto::{convert, telemetry, KeptBundles};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::limits::{self, Bounded};
use super::{invalid, messages, status, Auth, BoxStream};
use crate::identity::Identity;
use crate::service::{Coordinator, Outcome, Progress, TargetReport};

pub struct AgentApi {
    pub coordinator: Arc<Coordinator>,
    pub auth: Auth,
    /// Ends open streams at shutdown.
    pub shutdown: CancellationToken,
}

/// Marks the agent disconnected when its assignment stream is dropped.
struct Connected {
    coordinator: Arc<Coordinator>,
    agent: String,
    stream: u64,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.coordinator.disconnect(&self.agent, self.stream);
    }
}

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentApi {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let (who, name) = self.auth.agent(&request, &request.get_ref().name)?;
        let expiry = request
            .peer_certs()
            .and_then(|certs| certs.first().and_then(|c| flotilla_proto::process::certificate_expiry_der(c)));
        let req = request.into_inner();
        req.check()?;
        let max_idle = req.max_idle_connections;
        let targets = req.targets.into_iter().map(|t| messages::target(t, &name)).collect::<Result<Vec<_>, _>>()?;
        self.coordinator.register(&who, &name, targets).await.map_err(status)?;
        self.coordinator.agent_certificate(&name, expiry);
        self.coordinator.agent_max_idle(&name, max_idle);
        Ok(Response::new(pb::RegisterResponse { agent_id: name, refused_targets: Default::default() }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let (who, name) = self.auth.agent(&request, &request.get_ref().agent_id)?;
        let req = request.into_inner();
        let applied = req
            .applied_versions
            .into_iter()
            .map(|(target, v)| Ok((target, convert::version("applied_versions", &v).map_err(invalid)?)))
            .collect::<Result<_, Status>>()?;
        let report = TargetReport {
            applied,
            dirty: req.dirty_targets,
            unreachable: req.unreachable.into_iter().collect(),
            running: req.running.into_iter().map(|s| (s.plan_id, s.target, s.fencing_token)).collect(),
            fingerprints: req.fingerprints.into_iter().collect(),
            schemas: req.schemas.into_iter().collect(),
        };
        self.coordinator.heartbeat(&who, &name, report).await.map_err(status)?;
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    type PullAssignmentsStream = BoxStream<pb::Work>;

    async fn pull_assignments(
        &self,
        request: Request<pb::PullAssignmentsRequest>,
    ) -> Result<Response<Self::PullAssignmentsStream>, Status> {
        let (who, name) = self.auth.agent(&request, &request.get_ref().agent_id)?;
        let mut kept = KeptBundles::new(request.get_ref().bundles_kept.min(limits::BUNDLES_KEPT) as usize);
        let (rx, stream) = self.coordinator.connect(&who, &name).map_err(status)?;
        let guard = Connected { coordinator: self.coordinator.clone(), agent: name, stream };
        let out = ReceiverStream::new(rx).map(move |a| {
            let _connected = &guard;
            Ok(messages::work(a, &mut kept))
        });
        let out = futures_util::StreamExt::take_until(out, self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(out)))
    }

    async fn report_progress(
        &self,
        request: Request<tonic::Streaming<pb::ProgressEvent>>,
    ) -> Result<Response<pb::ProgressAck>, Status> {
        let who = self.auth.identify(&request)?;
        let mut stream = request.into_inner();
        let mut received = 0;
        loop {
            let first = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                event = stream.message() => match event? {
                    Some(event) => event,
                    None => break,
                },
            };
            // Take what else has already arrived, to record the burst in one write.
            let mut burst = vec![first];
            while burst.len() < 256 {
                match futures_util::FutureExt::now_or_never(stream.message()) {
                    Some(Ok(Some(event))) => burst.push(event),
                    Some(Err(e)) => return Err(e),
                    _ => break,
                }
            }
            let name = match &who {
                Identity::Agent { name, .. } => name.clone(),
                Identity::Insecure => burst[0].agent_id.clone(),
                Identity::Operator { name, .. } => {
                    return Err(Status::permission_denied(format!("operator `{name}` cannot report progress")))
                }
            };
            received += burst.len() as u64;
            let batch: Vec<Progress> = burst.into_iter().map(messages::progress).collect::<Result<_, _>>()?;
            self.coordinator.progress(&who, &name, batch).await.map_err(status)?;
        }
        Ok(Response::new(pb::ProgressAck { received }))
    }

    async fn report_checks(&self, request: Request<pb::CheckReport>) -> Result<Response<pb::CheckAck>, Status> {
        let (who, name) = self.auth.agent(&request, &request.get_ref().agent_id)?;
        let r = request.into_inner();
        let outcomes = r.outcomes.into_iter().map(messages::check_outcome).collect::<Result<Vec<_>, _>>()?;
        self.coordinator.checked(&who, &name, &r.plan_id, outcomes).await.map_err(status)?;
        Ok(Response::new(pb::CheckAck {}))
    }

    async fn report_result(&self, request: Request<pb::StepResult>) -> Result<Response<pb::ResultAck>, Status> {
        let (who, name) = self.auth.agent(&request, &request.get_ref().agent_id)?;
        let traceparent =
            request.metadata().get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let r = request.into_inner();
        r.check()?;
        let span = tracing::info_span!(
            "record_result",
            plan_id = %r.plan_id,
            target = %r.target,
            agent = %name,
            fencing_token = r.fencing_token,
            version = ?r.applied_version,
        );
        telemetry::join_traceparent(&span, &traceparent);
        let outcome = Outcome {
            plan_id: r.plan_id,
            target: r.target,
            token: r.fencing_token,
            error: (!r.succeeded).then(|| {
                if r.error.is_empty() {
                    "failed".to_string()
                } else {
                    limits::reported(r.error)
                }
            }),
            version_before: convert::optional_version("version_before", r.version_before.as_deref())
                .map_err(invalid)?,
            applied_version: convert::optional_version("applied_version", r.applied_version.as_deref())
                .map_err(invalid)?,
            dirty: r.dirty,
        };
        self.coordinator.result(&who, &name, outcome).instrument(span).await.map_err(status)?;
        Ok(Response::new(pb::ResultAck {}))
    }
}
