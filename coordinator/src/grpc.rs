//! The flotilla.v1 gRPC services. Each handler checks who calls, converts proto to domain types, calls the
//! [`Coordinator`], and converts back; domain errors become a `tonic::Status` in [`status`], and only there.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_core::fleet::{EventKind, Goal, OnFailure, Selector, Step, StepState, Strategy, Target, WaveSpec};
use flotilla_core::{Engine, Phase};
use flotilla_proto::errors::ErrorCode;
use flotilla_proto::telemetry;
use flotilla_proto::v1 as pb;
use futures_util::Stream;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{error, Instrument};

use crate::identity::{self, Identity};
use crate::service::{
    Assignment, Coordinator, Outcome, PlanOverview, PlanView, Progress, ServiceError, Submission, TargetReport,
};
use crate::store::StepCount;

/// The one place domain errors become gRPC statuses. Errors of the coordinator's own systems are logged here.
/// The one place a domain error becomes a status: its gRPC code and, in the details, what it means
/// ([`ErrorCode`]), so a caller can tell a store that is down from a coordinator it cannot reach.
pub fn status(e: ServiceError) -> Status {
    match e {
        ServiceError::InvalidArgument(m) => ErrorCode::InvalidInput.status(m),
        ServiceError::NotFound(m) => ErrorCode::NotFound.status(m),
        ServiceError::FailedPrecondition(m) => ErrorCode::Refused.status(m),
        ServiceError::PermissionDenied(m) => ErrorCode::PermissionDenied.status(m),
        ServiceError::Store(e) => {
            error!(error = %e, "request failed: store");
            let code = if e.is_retryable() { ErrorCode::StoreUnavailable } else { ErrorCode::StoreCorrupt };
            code.status(format!("the coordinator's store: {e}"))
        }
        ServiceError::Lock(e) => {
            error!(error = %e, "request failed: lock service");
            ErrorCode::LockUnavailable.status(format!("the coordinator's lock service: {e}"))
        }
    }
}

/// How callers are known.
#[derive(Clone)]
pub struct Auth {
    insecure: bool,
}

impl Auth {
    pub fn new(insecure: bool) -> Self {
        Auth { insecure }
    }

    fn identify<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        if self.insecure {
            return Ok(Identity::Insecure);
        }
        let certs =
            request.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required (mTLS)"))?;
        let leaf = certs.first().ok_or_else(|| Status::unauthenticated("a client certificate is required (mTLS)"))?;
        identity::from_certificate(leaf.as_ref()).map_err(Status::unauthenticated)
    }

    /// The agent's name: from its certificate, or (insecure dev mode only) from the request.
    fn agent<T>(&self, request: &Request<T>, claimed: &str) -> Result<(Identity, String), Status> {
        let who = self.identify(request)?;
        let name = match &who {
            Identity::Agent { name, .. } => name.clone(),
            Identity::Insecure if !claimed.is_empty() => claimed.to_string(),
            Identity::Insecure => return Err(Status::invalid_argument("agent_id is required")),
            Identity::Operator(name) => {
                return Err(Status::permission_denied(format!(
                    "operator `{name}` called an agent method: agent calls need an agent certificate"
                )))
            }
        };
        Ok((who, name))
    }
}

pub fn engine_to_proto(e: Engine) -> pb::Engine {
    match e {
        Engine::Postgres => pb::Engine::Postgres,
        Engine::Mysql => pb::Engine::Mysql,
        Engine::Sqlite => pb::Engine::Sqlite,
        Engine::Mongodb => pb::Engine::Mongodb,
    }
}

fn engine_from_proto(value: i32, target: &str) -> Result<Engine, Status> {
    match pb::Engine::try_from(value) {
        Ok(pb::Engine::Postgres) => Ok(Engine::Postgres),
        Ok(pb::Engine::Mysql) => Ok(Engine::Mysql),
        Ok(pb::Engine::Sqlite) => Ok(Engine::Sqlite),
        Ok(pb::Engine::Mongodb) => Ok(Engine::Mongodb),
        _ => Err(Status::invalid_argument(format!("target `{target}` has no engine"))),
    }
}

pub fn goal_to_proto(g: Goal) -> pb::Goal {
    match g {
        Goal::Up { to } => pb::Goal { direction: pb::goal::Direction::Up as i32, version: to.unwrap_or(0) },
        Goal::Down { to } => pb::Goal { direction: pb::goal::Direction::Down as i32, version: to },
    }
}

fn goal_from_proto(g: Option<pb::Goal>) -> Result<Goal, Status> {
    let g = g.ok_or_else(|| Status::invalid_argument("goal is required"))?;
    if g.version < 0 {
        return Err(Status::invalid_argument(format!("goal version {} is negative", g.version)));
    }
    match pb::goal::Direction::try_from(g.direction) {
        Ok(pb::goal::Direction::Up) => Ok(Goal::Up { to: (g.version > 0).then_some(g.version) }),
        Ok(pb::goal::Direction::Down) => Ok(Goal::Down { to: g.version }),
        _ => Err(Status::invalid_argument("goal direction must be up or down")),
    }
}

fn phase_from(text: &str) -> Result<Option<Phase>, Status> {
    match text {
        "" => Ok(None),
        "expand" => Ok(Some(Phase::Expand)),
        "contract" => Ok(Some(Phase::Contract)),
        other => Err(Status::invalid_argument(format!("phase `{other}` is not expand or contract"))),
    }
}

fn phase_text(p: Option<Phase>) -> String {
    match p {
        Some(Phase::Expand) => "expand".into(),
        Some(Phase::Contract) => "contract".into(),
        None => String::new(),
    }
}

fn selector(text: &str) -> Result<Selector, Status> {
    text.parse().map_err(|e: String| Status::invalid_argument(format!("selector: {e}")))
}

fn strategy_from(s: Option<pb::Strategy>) -> Result<Strategy, Status> {
    let Some(s) = s else { return Ok(Strategy::default()) };
    let waves = if s.waves.is_empty() {
        Strategy::default().waves
    } else {
        s.waves.iter().map(|w| w.parse::<WaveSpec>()).collect::<Result<_, _>>().map_err(Status::invalid_argument)?
    };
    let on_failure = match pb::strategy::OnFailure::try_from(s.on_failure) {
        Ok(pb::strategy::OnFailure::RollbackFailed) => OnFailure::RollbackFailed,
        Ok(pb::strategy::OnFailure::RollbackPlan) => OnFailure::RollbackPlan,
        Ok(_) => OnFailure::Halt,
        Err(_) => return Err(Status::invalid_argument(format!("unknown on_failure {}", s.on_failure))),
    };
    Ok(Strategy {
        waves,
        max_parallel: if s.max_parallel == 0 { Strategy::default().max_parallel } else { s.max_parallel },
        max_failures: s.max_failures_per_wave,
        approve_waves: s.approve_waves,
        on_failure,
    })
}

fn summary(view: &PlanView) -> pb::PlanSummary {
    let counts: Vec<StepCount> =
        view.steps.iter().map(|s| StepCount { wave: s.wave, state: s.state, count: 1 }).collect();
    overview_summary(&PlanOverview { plan: view.plan.clone(), counts })
}

/// A plan's summary from its step counts (by wave and state).
fn overview_summary(o: &PlanOverview) -> pb::PlanSummary {
    let sum = |pick: &dyn Fn(&StepCount) -> bool| o.counts.iter().filter(|c| pick(c)).map(|c| c.count).sum::<u64>();
    let count = |state: StepState| u32::try_from(sum(&|c| c.state == state)).unwrap_or(u32::MAX);
    let current = if o.plan.state.is_live() {
        o.counts.iter().filter(|c| c.count > 0 && !c.state.is_done()).map(|c| c.wave).min().unwrap_or(0)
    } else {
        0
    };
    pb::PlanSummary {
        id: o.plan.id.clone(),
        state: o.plan.state.to_string(),
        selector: o.plan.selector.to_string(),
        goal: Some(goal_to_proto(o.plan.goal)),
        current_wave: current,
        targets: u32::try_from(sum(&|_| true)).unwrap_or(u32::MAX),
        succeeded: count(StepState::Succeeded),
        failed: count(StepState::Failed),
        created_at: o.plan.created_at.to_rfc3339(),
        rollback_of: o.plan.rollback_of.clone().unwrap_or_default(),
        waves: o.counts.iter().map(|c| c.wave).max().unwrap_or(0),
        phase: phase_text(o.plan.phase),
    }
}

fn step_info(s: &Step, agent: &str) -> pb::StepInfo {
    pb::StepInfo {
        target: s.target.clone(),
        wave: s.wave,
        state: s.state.to_string(),
        fencing_token: s.token.unwrap_or(0),
        error: s.error.clone().unwrap_or_default(),
        version_before: s.before,
        version_after: s.after,
        agent: agent.to_string(),
    }
}

fn detail(view: &PlanView, targets: &[Target]) -> pb::PlanDetail {
    let agent = |name: &str| targets.iter().find(|t| t.name == name).map(|t| t.agent.clone()).unwrap_or_default();
    pb::PlanDetail {
        summary: Some(summary(view)),
        steps: view.steps.iter().map(|s| step_info(s, &agent(&s.target))).collect(),
    }
}

fn assignment_to_proto(a: Assignment) -> pb::Assignment {
    pb::Assignment {
        plan_id: a.plan_id,
        target: a.target,
        bundle_id: a.bundle_id,
        bundle: a.bundle.as_bytes().to_vec(),
        goal: Some(goal_to_proto(a.goal)),
        fencing_token: a.token,
        wave: a.wave,
        trace: a.traceparent.map(|traceparent| pb::TraceContext { traceparent, tracestate: String::new() }),
        phase: phase_text(a.phase),
        validate: a.validate,
    }
}

/// A progress event, its kind checked: an agent reports only what happens inside its step.
fn progress_from_proto(event: pb::ProgressEvent) -> Result<Progress, Status> {
    let kind = event
        .kind
        .parse::<EventKind>()
        .ok()
        .filter(|k| k.is_progress())
        .ok_or_else(|| Status::invalid_argument(format!("`{}` is not a kind of step progress", event.kind)))?;
    let mut detail = json!({
        "version": event.version,
        "direction": event.direction,
        "statement": event.statement_index,
        "statements": event.statement_total,
        "rows_affected": event.rows_affected,
        "elapsed_ms": event.elapsed_ms,
    });
    if !event.error.is_empty() {
        detail["error"] = json!(event.error);
    }
    if kind == EventKind::StepStarted {
        detail["version_before"] = json!(event.version_before);
    }
    Ok(Progress { plan_id: event.plan_id, target: event.target, token: event.fencing_token, kind, detail })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

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
        let req = request.into_inner();
        let mut targets = Vec::with_capacity(req.targets.len());
        for t in req.targets {
            if t.name.is_empty() {
                return Err(Status::invalid_argument("a target has no name"));
            }
            targets.push(Target {
                engine: engine_from_proto(t.engine, &t.name)?,
                labels: t.labels.into_iter().collect(),
                agent: name.clone(),
                name: t.name,
            });
        }
        self.coordinator.register(&who, &name, targets).await.map_err(status)?;
        Ok(Response::new(pb::RegisterResponse { agent_id: name, refused_targets: Default::default() }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let (who, name) = self.auth.agent(&request, &request.get_ref().agent_id)?;
        let req = request.into_inner();
        let report = TargetReport {
            applied: req.applied_versions.into_iter().collect(),
            dirty: req.dirty_targets,
            unreachable: req.unreachable.into_iter().collect(),
            running: req.running.into_iter().map(|s| (s.plan_id, s.target, s.fencing_token)).collect(),
        };
        self.coordinator.heartbeat(&who, &name, report).await.map_err(status)?;
        Ok(Response::new(pb::HeartbeatResponse {}))
    }

    type PullAssignmentsStream = BoxStream<pb::Assignment>;

    async fn pull_assignments(
        &self,
        request: Request<pb::PullAssignmentsRequest>,
    ) -> Result<Response<Self::PullAssignmentsStream>, Status> {
        let (who, name) = self.auth.agent(&request, &request.get_ref().agent_id)?;
        let (rx, stream) = self.coordinator.connect(&who, &name).map_err(status)?;
        let guard = Connected { coordinator: self.coordinator.clone(), agent: name, stream };
        let out = ReceiverStream::new(rx).map(move |a| {
            let _connected = &guard;
            Ok(assignment_to_proto(a))
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
                Identity::Operator(name) => {
                    return Err(Status::permission_denied(format!("operator `{name}` cannot report progress")))
                }
            };
            received += burst.len() as u64;
            let batch: Vec<Progress> = burst.into_iter().map(progress_from_proto).collect::<Result<_, _>>()?;
            self.coordinator.progress(&who, &name, batch).await.map_err(status)?;
        }
        Ok(Response::new(pb::ProgressAck { received }))
    }

    async fn report_result(&self, request: Request<pb::StepResult>) -> Result<Response<pb::ResultAck>, Status> {
        let (who, name) = self.auth.agent(&request, &request.get_ref().agent_id)?;
        let traceparent =
            request.metadata().get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let r = request.into_inner();
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
            error: (!r.succeeded).then(|| if r.error.is_empty() { "failed".to_string() } else { r.error }),
            version_before: r.version_before,
            applied_version: r.applied_version,
            dirty: r.dirty,
        };
        self.coordinator.result(&who, &name, outcome).instrument(span).await.map_err(status)?;
        Ok(Response::new(pb::ResultAck {}))
    }
}

pub struct OperatorApi {
    pub coordinator: Arc<Coordinator>,
    pub auth: Auth,
    pub shutdown: CancellationToken,
}

impl OperatorApi {
    async fn detail(&self, view: &PlanView) -> Result<pb::PlanDetail, Status> {
        let targets = self.coordinator.store.targets().await.map_err(|e| status(e.into()))?;
        Ok(detail(view, &targets))
    }

    async fn act(&self, request: Request<pb::PlanAction>, action: &str) -> Result<Response<pb::PlanSummary>, Status> {
        let who = self.auth.identify(&request)?;
        let req = request.into_inner();
        let view = self.coordinator.act(&who, &req.id, action, &req.reason).await.map_err(status)?;
        Ok(Response::new(summary(&view)))
    }
}

#[tonic::async_trait]
impl pb::operator_service_server::OperatorService for OperatorApi {
    async fn submit_plan(&self, request: Request<pb::SubmitPlanRequest>) -> Result<Response<pb::PlanDetail>, Status> {
        let who = self.auth.identify(&request)?;
        let req = request.into_inner();
        let submission = Submission {
            bundle: req.bundle,
            selector: selector(&req.selector)?,
            goal: goal_from_proto(req.goal)?,
            strategy: strategy_from(req.strategy)?,
            phase: phase_from(&req.phase)?,
            validate_on: if req.validate_on.is_empty() { None } else { Some(selector(&req.validate_on)?) },
            dry_run: req.dry_run,
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
        Ok(Response::new(pb::ListPlansResponse { plans: plans.iter().map(overview_summary).collect() }))
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
        let mut changes = self.coordinator.watch(&who, &req.id).await.map_err(status)?;
        let (tx, rx) = mpsc::channel(256);
        let coordinator = self.coordinator.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut after = req.after;
            // Whether the plan may be over: checked (a read of every step) only once a plan-level end was seen.
            let mut ending = false;
            loop {
                changes.mark_unchanged();
                let events = match coordinator.events_after(&req.id, after).await {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                };
                let fresh = !events.is_empty();
                for e in events {
                    after = e.seq;
                    ending |= e.target.is_none() && e.kind.parse::<EventKind>().is_ok_and(EventKind::ends_plan);
                    let event = pb::PlanEvent {
                        plan_id: e.plan_id,
                        seq: e.seq,
                        at: e.at.to_rfc3339(),
                        target: e.target.unwrap_or_default(),
                        kind: e.kind,
                        detail: e.detail.to_string(),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return; // the watcher went away
                    }
                }
                if ending || !fresh {
                    let over = match coordinator.view(&req.id).await {
                        Ok(view) => !view.plan.state.is_live() && !view.steps.iter().any(|s| !s.state.is_done()),
                        Err(_) => true,
                    };
                    if over && coordinator.events_after(&req.id, after).await.map(|e| e.is_empty()).unwrap_or(true) {
                        return;
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn pause_plan(&self, request: Request<pb::PlanAction>) -> Result<Response<pb::PlanSummary>, Status> {
        self.act(request, "pause").await
    }

    async fn resume_plan(&self, request: Request<pb::PlanAction>) -> Result<Response<pb::PlanSummary>, Status> {
        self.act(request, "resume").await
    }

    async fn abort_plan(&self, request: Request<pb::PlanAction>) -> Result<Response<pb::PlanSummary>, Status> {
        self.act(request, "abort").await
    }

    async fn approve_wave(&self, request: Request<pb::PlanAction>) -> Result<Response<pb::PlanSummary>, Status> {
        self.act(request, "approve").await
    }

    async fn create_rollback(&self, request: Request<pb::PlanAction>) -> Result<Response<pb::PlanSummary>, Status> {
        let who = self.auth.identify(&request)?;
        let view = self.coordinator.rollback(&who, &request.get_ref().id).await.map_err(status)?;
        Ok(Response::new(summary(&view)))
    }

    async fn list_targets(
        &self,
        request: Request<pb::ListTargetsRequest>,
    ) -> Result<Response<pb::ListTargetsResponse>, Status> {
        let who = self.auth.identify(&request)?;
        let sel = selector(&request.get_ref().selector)?;
        let targets = self.coordinator.targets(&who, &sel).await.map_err(status)?;
        let targets = targets
            .into_iter()
            .map(|t| pb::TargetInfo {
                name: t.name,
                engine: engine_to_proto(t.engine) as i32,
                labels: t.labels.into_iter().collect(),
            })
            .collect();
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
            })
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    async fn fleet_status(
        &self,
        request: Request<pb::FleetStatusRequest>,
    ) -> Result<Response<pb::FleetStatusResponse>, Status> {
        let who = self.auth.identify(&request)?;
        let sel = selector(&request.get_ref().selector)?;
        let rows = self.coordinator.fleet_status(&who, &sel).await.map_err(status)?;
        let targets = rows
            .into_iter()
            .map(|r| pb::TargetStatus {
                target: r.target.name,
                applied_version: r.applied.unwrap_or(-1),
                pending: r.pending,
                dirty: r.dirty,
                drift: r.drift.unwrap_or_default(),
                agent: r.target.agent,
                engine: engine_to_proto(r.target.engine) as i32,
                stale: r.stale,
            })
            .collect();
        Ok(Response::new(pb::FleetStatusResponse { targets }))
    }
}
