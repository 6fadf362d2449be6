//! The operators' service: submit, list, show and watch plans, act on them, and read the fleet.

use std::sync::Arc;

use flotilla_proto::convert;
use flotilla_proto::errors::ErrorCode;
use flotilla_proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::limits::Bounded;
use super::{invalid, messages, status, Auth, BoxStream};
use crate::service::{Action, Coordinator, PlanView, Submission};

pub struct OperatorApi {
    pub coordinator: Arc<Coordinator>,
    pub auth: Auth,
    pub shutdown: CancellationToken,
}

impl OperatorApi {
    async fn detail(&self, view: &PlanView) -> Result<pb::PlanDetail, Status> {
        let targets = self.coordinator.store.targets().await.map_err(|e| status(e.into()))?;
        Ok(messages::detail(view, &targets))
    }

    async fn act(&self, request: Request<pb::PlanAction>, action: Action) -> Result<Response<pb::PlanSummary>, Status> {
        let who = self.auth.identify(&request)?;
        let req = request.into_inner();
        req.check()?;
        let overview = self.coordinator.act(&who, &req.id, action, &req.reason).await.map_err(status)?;
        Ok(Response::new(messages::overview_summary(&overview)))
    }
}

#[tonic::async_trait]
impl pb::operator_service_server::OperatorService for OperatorApi {
    async fn submit_plan(&self, request: Request<pb::SubmitPlanRequest>) -> Result<Response<pb::PlanDetail>, Status> {
        let who = self.auth.identify(&request)?;
        let req = request.into_inner();
        req.check()?;
        let submission = Submission {
            bundle: req.bundle,
            selector: messages::selector(&req.selector)?,
            goal: convert::goal(req.goal).map_err(invalid)?,
            strategy: messages::strategy(req.strategy)?,
            phase: convert::phase(req.phase).map_err(invalid)?,
            validate_on: if req.validate_on.is_empty() { None } else { Some(messages::selector(&req.validate_on)?) },
            dry_run: req.dry_run,
            allow_lint: req.allow_lint,
        };
        let view = self.coordinator.submit(&who, submission).await.map_err(status)?;
        Ok(Response::new(self.detail(&view).await?))
    }

    async fn list_plans(
        &self,
        request: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        let who = self.auth.identify(&request)?;
        let plans = self.coordinator.plans(&who).await.map_err(status)?;
        Ok(Response::new(pb::ListPlansResponse { plans: plans.iter().map(messages::overview_summary).collect() }))
    }

    async fn get_plan(&self, request: Request<pb::GetPlanRequest>) -> Result<Response<pb::PlanDetail>, Status> {
        let who = self.auth.identify(&request)?;
        let view = self.coordinator.plan(&who, &request.get_ref().id).await.map_err(status)?;
        Ok(Response::new(self.detail(&view).await?))
    }

    type WatchPlanStream = BoxStream<pb::PlanEvent>;

    async fn watch_plan(
        &self,
        request: Request<pb::WatchPlanRequest>,
    ) -> Result<Response<Self::WatchPlanStream>, Status> {
        let who = self.auth.identify(&request)?;
        let req = request.into_inner();
        let events = self.coordinator.watch(&who, &req.id, req.after, self.shutdown.clone()).await.map_err(status)?;
        let out = ReceiverStream::new(events).map(|e| e.map(messages::event).map_err(status));
        Ok(Response::new(Box::pin(out)))
    }

    async fn pause_plan(&self, request: Request<pb::PlanAction>) -> Result<Response<pb::PlanSummary>, Status> {
        self.act(request, Action::Pause).await
    }

    async fn resume_plan(&self, request: Request<pb::PlanAction>) -> Result<Response<pb::PlanSummary>, Status> {
        self.act(request, Action::Resume).await
    }

    async fn abort_plan(&self, request: Request<pb::PlanAction>) -> Result<Response<pb::PlanSummary>, Status> {
        self.act(request, Action::Abort).await
    }

    async fn approve_wave(&self, request: Request<pb::PlanAction>) -> Result<Response<pb::PlanSummary>, Status> {
        self.act(request, Action::Approve).await
    }

    async fn create_rollback(&self, request: Request<pb::PlanAction>) -> Result<Response<pb::PlanSummary>, Status> {
        let who = self.auth.identify(&request)?;
        let view = self.coordinator.rollback(&who, &request.get_ref().id).await.map_err(status)?;
        Ok(Response::new(messages::summary(&view)))
    }

    async fn list_targets(
        &self,
        request: Request<pb::ListTargetsRequest>,
    ) -> Result<Response<pb::ListTargetsResponse>, Status> {
        let who = self.auth.identify(&request)?;
        let sel = messages::selector(&request.get_ref().selector)?;
        let targets = self.coordinator.targets(&who, &sel).await.map_err(status)?;
        let targets = targets.into_iter().map(messages::target_info).collect();
        Ok(Response::new(pb::ListTargetsResponse { targets }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let who = self.auth.identify(&request)?;
        let agents = self.coordinator.agents(&who).await.map_err(status)?;
        let agents = agents
            .into_iter()
            .map(|a| pb::AgentInfo {
                id: a.name,
                targets: a.targets,
                last_heartbeat: a.last_seen.map(|t| t.to_rfc3339()).unwrap_or_default(),
                connected: a.connected,
                certificate_expires: a.certificate_expires.map(|t| t.to_rfc3339()).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let who = self.auth.identify(&request)?;
        let req = request.into_inner();
        let since = match req.since.as_str() {
            "" => None,
            t => Some(
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|e| ErrorCode::InvalidInput.status(format!("since `{t}` is not an RFC 3339 time: {e}")))?
                    .with_timezone(&chrono::Utc),
            ),
        };
        let query = crate::store::AuditQuery {
            plan_id: (!req.plan_id.is_empty()).then_some(req.plan_id),
            since,
            after: (!req.after.is_empty()).then_some(req.after),
            limit: req.limit,
        };
        let (page, next) = self.coordinator.audit_log(&who, query).await.map_err(status)?;
        let entries = page
            .into_iter()
            .map(|r| pb::AuditEntry {
                at: r.entry.at.to_rfc3339(),
                actor: r.entry.actor,
                action: r.entry.action,
                plan_id: r.entry.plan_id.unwrap_or_default(),
                detail: r.entry.detail,
            })
            .collect();
        Ok(Response::new(pb::ListAuditResponse { entries, next: next.unwrap_or_default() }))
    }

    async fn fleet_status(
        &self,
        request: Request<pb::FleetStatusRequest>,
    ) -> Result<Response<pb::FleetStatusResponse>, Status> {
        let who = self.auth.identify(&request)?;
        let sel = messages::selector(&request.get_ref().selector)?;
        let rows = self.coordinator.fleet_status(&who, &sel).await.map_err(status)?;
        let targets = rows
            .into_iter()
            .map(|r| pb::TargetStatus {
                target: r.target.name,
                applied_version: r.applied.map(|v| v.to_string()),
                pending: r.pending.iter().map(ToString::to_string).collect(),
                dirty: r.dirty,
                drift: r.drift.unwrap_or_default(),
                agent: r.target.agent,
                engine: pb::Engine::from(r.target.engine) as i32,
                stale: r.stale,
                fingerprint: r.fingerprint.unwrap_or_default(),
                schema_drift: r.schema_drift,
            })
            .collect();
        Ok(Response::new(pb::FleetStatusResponse { targets }))
    }

    async fn fleet_drift(
        &self,
        request: Request<pb::FleetDriftRequest>,
    ) -> Result<Response<pb::FleetDriftResponse>, Status> {
        let who = self.auth.identify(&request)?;
        let d = self.coordinator.fleet_drift(&who, &request.get_ref().target).await.map_err(status)?;
        Ok(Response::new(pb::FleetDriftResponse {
            target: d.target,
            applied_version: d.applied.to_string(),
            fingerprint: d.fingerprint,
            schema: d.schema.to_string(),
            majority_fingerprint: d.majority_fingerprint,
            majority_schema: d.majority_schema.to_string(),
            majority_targets: u32::try_from(d.majority_targets).unwrap_or(u32::MAX),
            version_targets: u32::try_from(d.version_targets).unwrap_or(u32::MAX),
            majority_example: d.majority_example,
        }))
    }
}
