//! Checks: which of a plan's targets already are at their goal. One history read per target, on its warm
//! connection, a bounded number at a time over all batches (`State::reads`), and one report for the batch.
//! Read-only: no lock, no write, no fencing token; a target found not at its goal (or not readable, or busy with
//! another step) is assigned by the coordinator as usual, and that path reads the history again under the lock.

use std::sync::Arc;

use flotilla_core::fleet::Goal;
use flotilla_core::AppliedMigration;
use flotilla_core::{PlanOptions, Request};
use flotilla_proto::convert;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_service_client::AgentServiceClient;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tonic::transport::Channel;
use tracing::{debug, info_span, warn, Instrument};

use super::bundles::StreamBundle;
use super::*;
use crate::driver::ConnectOptions;
use crate::executor::{ExecError, Executor};

/// Checks a batch of targets and reports the outcomes in one call. An unsent report costs nothing but time: the
/// coordinator gives the check up and assigns its targets.
pub(super) async fn handle(
    state: Arc<State>,
    mut client: AgentServiceClient<Channel>,
    c: pb::Check,
    bundle: Result<Arc<StreamBundle>, String>,
) {
    let span = info_span!("check", plan_id = %c.plan_id, targets = c.targets.len(), agent = %state.config.name);
    async move {
        let outcomes: Vec<pb::CheckOutcome> = futures_util::stream::iter(c.targets.iter().cloned())
            .map(|t| check_one(&state, &c, bundle.as_ref(), t))
            .buffer_unordered(READS_AT_ONCE)
            .collect()
            .await;
        let at_goal = outcomes.iter().filter(|o| o.at_goal).count();
        debug!(at_goal, not_at_goal = outcomes.len() - at_goal, "checked");
        let report = pb::CheckReport { plan_id: c.plan_id.clone(), agent_id: state.config.name.clone(), outcomes };
        if let Err(e) = client.report_checks(report).await {
            warn!(error = %e, "could not report a check; the coordinator will assign its targets");
        }
    }
    .instrument(span)
    .await
}

async fn check_one(
    state: &State,
    c: &pb::Check,
    bundle: Result<&Arc<StreamBundle>, &String>,
    t: pb::CheckTarget,
) -> pb::CheckOutcome {
    let target_name = t.target.clone();
    match at_goal(state, c, bundle, t).await {
        Ok(outcome) => outcome,
        Err(detail) => pb::CheckOutcome { target: target_name, at_goal: false, detail, ..Default::default() },
    }
}

async fn at_goal(
    state: &State,
    c: &pb::Check,
    bundle: Result<&Arc<StreamBundle>, &String>,
    t: pb::CheckTarget,
) -> Result<pb::CheckOutcome, String> {
    let target = state.targets.get(&t.target).ok_or("this agent does not serve the target")?;
    let gate = state.running.get(&t.target).ok_or("this agent does not serve the target")?;
    let _read = state.reads.acquire().await.map_err(|_| "the agent is stopping")?;
    // A step running on the target (another plan's) is changing it: let the lock decide.
    let _one_at_a_time = gate.try_lock().map_err(|_| "a step is running on the target")?;
    let goal = convert::goal(t.goal).map_err(|e| e.to_string())?;
    let phase = convert::phase(c.phase).map_err(|e| e.to_string())?;
    let set = bundle.map_err(String::clone)?.set(target.engine).await?;
    let request = match goal {
        Goal::Down { to } => Request::DownTo(to),
        Goal::Up { to } => Request::Up { to },
    };
    let make = |driver| {
        Executor::new(driver, format!("flotilla-agent:{}", state.config.name))
            .with_plan_options(PlanOptions { phase, ..PlanOptions::default() })
    };
    let options = ConnectOptions::default();
    let (ex, (history, at_goal)) = state.connections.open(target, &options, make, read_at_goal(set, request)).await?;
    // Not at its goal, the target's step comes next: its connection is kept for it.
    let kept = if at_goal { pool::Kept::AfterRead } else { pool::Kept::BeforeStep };
    state.connections.put(&target.name, ex.into_driver(), &options, kept).await;
    let (applied, dirty) = summarize(&history);
    locked(&state.versions).insert(target.name.clone(), Ok((applied, dirty)));
    Ok(pb::CheckOutcome {
        target: t.target,
        at_goal,
        applied_version: Some(applied.to_string()),
        version_before: Some(version_before_plan(&history, &c.plan_id).to_string()),
        detail: if at_goal { String::new() } else { "work is pending".into() },
    })
}

/// What [`Executor::at_goal`] returns: the history, and whether the target is at its goal.
type AtGoal = Result<(Vec<AppliedMigration>, bool), ExecError>;

/// The first use of a check's connection: [`Executor::at_goal`].
fn read_at_goal(
    set: Arc<flotilla_core::MigrationSet>,
    request: Request,
) -> impl for<'e> Fn(&'e mut Executor) -> BoxFuture<'e, AtGoal> {
    move |ex| {
        let set = set.clone();
        Box::pin(async move { ex.at_goal(&set, request).await })
    }
}
