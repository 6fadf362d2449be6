//! Domain values as proto messages and back, for what the services send and take. Enums go through
//! `flotilla_proto::convert`; a value that does not convert is the caller's error ([`invalid`]).

use flotilla_core::fleet::{Event, EventKind, Selector, Step, StepState, Strategy, Target, WaveSpec};
use flotilla_proto::convert;
use flotilla_proto::errors::ErrorCode;
use flotilla_proto::v1 as pb;
use flotilla_proto::KeptBundles;
use serde_json::json;
use tonic::Status;

use super::invalid;
use super::limits::{self, Bounded};
use crate::service::{Assignment, CheckOutcome, CheckRequest, PlanOverview, PlanView, Progress, Work};
use crate::store::StepCount;

pub(super) fn selector(text: &str) -> Result<Selector, Status> {
    text.parse().map_err(|e: String| Status::invalid_argument(format!("selector: {e}")))
}

pub(super) fn strategy(s: Option<pb::Strategy>) -> Result<Strategy, Status> {
    let Some(s) = s else { return Ok(Strategy::default()) };
    let waves = if s.waves.is_empty() {
        Strategy::default().waves
    } else {
        s.waves.iter().map(|w| w.parse::<WaveSpec>()).collect::<Result<_, _>>().map_err(Status::invalid_argument)?
    };
    Ok(Strategy {
        waves,
        max_parallel: if s.max_parallel == 0 { Strategy::default().max_parallel } else { s.max_parallel },
        max_failures: s.max_failures_per_wave,
        approve_waves: s.approve_waves,
        on_failure: convert::on_failure(s.on_failure).map_err(invalid)?,
        max_per_host: (s.max_per_host > 0).then_some(s.max_per_host),
        timeouts: flotilla_core::Timeouts {
            lock: (s.lock_timeout_ms > 0).then(|| std::time::Duration::from_millis(s.lock_timeout_ms)),
            statement: (s.statement_timeout_ms > 0).then(|| std::time::Duration::from_millis(s.statement_timeout_ms)),
            lock_retries: s.lock_retries,
        },
        group: s.group,
    })
}

pub(super) fn target(t: pb::TargetInfo, agent: &str) -> Result<Target, Status> {
    if t.name.is_empty() {
        return Err(Status::invalid_argument("a target has no name"));
    }
    let engine =
        convert::engine(t.engine).map_err(|e| ErrorCode::InvalidInput.status(format!("target `{}`: {e}", t.name)))?;
    Ok(Target { engine, labels: t.labels.into_iter().collect(), agent: agent.to_string(), name: t.name })
}

pub(super) fn target_info(t: Target) -> pb::TargetInfo {
    pb::TargetInfo { name: t.name, engine: pb::Engine::from(t.engine) as i32, labels: t.labels.into_iter().collect() }
}

pub(super) fn summary(view: &PlanView) -> pb::PlanSummary {
    let counts: Vec<StepCount> =
        view.steps.iter().map(|s| StepCount { wave: s.wave, state: s.state, count: 1 }).collect();
    overview_summary(&PlanOverview { plan: view.plan.clone(), counts })
}

/// A plan's summary from its step counts (by wave and state).
pub(super) fn overview_summary(o: &PlanOverview) -> pb::PlanSummary {
    let sum = |pick: &dyn Fn(&StepCount) -> bool| o.counts.iter().filter(|c| pick(c)).map(|c| c.count).sum::<u64>();
    let count = |state: StepState| u32::try_from(sum(&|c| c.state == state)).unwrap_or(u32::MAX);
    let current = if o.plan.state.is_live() {
        o.counts.iter().filter(|c| c.count > 0 && !c.state.is_done()).map(|c| c.wave).min().unwrap_or(0)
    } else {
        0
    };
    pb::PlanSummary {
        id: o.plan.id.clone(),
        state: pb::PlanState::from(o.plan.state) as i32,
        selector: o.plan.selector.to_string(),
        goal: Some(o.plan.goal.into()),
        current_wave: current,
        targets: u32::try_from(sum(&|_| true)).unwrap_or(u32::MAX),
        succeeded: count(StepState::Succeeded),
        failed: count(StepState::Failed),
        created_at: o.plan.created_at.to_rfc3339(),
        rollback_of: o.plan.rollback_of.clone().unwrap_or_default(),
        waves: o.counts.iter().map(|c| c.wave).max().unwrap_or(0),
        phase: convert::phase_to_proto(o.plan.phase) as i32,
    }
}

fn step_info(s: &Step, agent: &str) -> pb::StepInfo {
    pb::StepInfo {
        target: s.target.clone(),
        wave: s.wave,
        state: pb::StepState::from(s.state) as i32,
        fencing_token: s.token.unwrap_or(0),
        error: s.error.clone().unwrap_or_default(),
        version_before: s.before.map(|v| v.to_string()),
        version_after: s.after.map(|v| v.to_string()),
        agent: agent.to_string(),
    }
}

pub(super) fn detail(view: &PlanView, targets: &[Target]) -> pb::PlanDetail {
    // By name, once: a search of every target per step was quadratic (10^8 comparisons for a plan of 10,000).
    let agents: std::collections::HashMap<&str, &str> =
        targets.iter().map(|t| (t.name.as_str(), t.agent.as_str())).collect();
    pb::PlanDetail {
        summary: Some(summary(view)),
        steps: view.steps.iter().map(|s| step_info(s, agents.get(s.target.as_str()).copied().unwrap_or(""))).collect(),
    }
}

/// The next message of an agent's assignment stream; `kept`, the bundles the agent keeps from this stream so far.
pub(super) fn work(w: Work, kept: &mut KeptBundles<()>) -> pb::Work {
    let work = match w {
        Work::Assign(a) => pb::work::Work::Assignment(assignment(a, kept)),
        Work::Check(c) => pb::work::Work::Check(check(c, kept)),
    };
    pb::Work { work: Some(work) }
}

/// A bundle's bytes, or none where the agent keeps them.
fn bundle_bytes(id: &str, bundle: &str, kept: &mut KeptBundles<()>) -> Vec<u8> {
    if kept.send(id) {
        return Vec::new();
    }
    crate::metrics::BUNDLE_BYTES_SENT.inc_by(bundle.len() as u64);
    bundle.as_bytes().to_vec()
}

fn check(c: CheckRequest, kept: &mut KeptBundles<()>) -> pb::Check {
    pb::Check {
        bundle: bundle_bytes(&c.bundle_id, &c.bundle, kept),
        plan_id: c.plan_id,
        bundle_id: c.bundle_id,
        phase: convert::phase_to_proto(c.phase) as i32,
        targets: c
            .targets
            .into_iter()
            .map(|(target, goal)| pb::CheckTarget { target, goal: Some(goal.into()) })
            .collect(),
        trace: c.traceparent.map(|traceparent| pb::TraceContext { traceparent, tracestate: String::new() }),
    }
}

/// A check outcome, its versions parsed.
pub(super) fn check_outcome(o: pb::CheckOutcome) -> Result<CheckOutcome, Status> {
    Ok(CheckOutcome {
        applied: convert::optional_version("applied_version", o.applied_version.as_deref()).map_err(invalid)?,
        before: convert::optional_version("version_before", o.version_before.as_deref()).map_err(invalid)?,
        target: o.target,
        at_goal: o.at_goal,
        detail: limits::reported(o.detail),
    })
}

fn assignment(a: Assignment, kept: &mut KeptBundles<()>) -> pb::Assignment {
    pb::Assignment {
        bundle: bundle_bytes(&a.bundle_id, &a.bundle, kept),
        plan_id: a.plan_id,
        target: a.target,
        bundle_id: a.bundle_id,
        goal: Some(a.goal.into()),
        fencing_token: a.token,
        wave: a.wave,
        trace: a.traceparent.map(|traceparent| pb::TraceContext { traceparent, tracestate: String::new() }),
        phase: convert::phase_to_proto(a.phase) as i32,
        validate: a.validate,
        lock_timeout_ms: a.timeouts.lock.map_or(0, millis),
        statement_timeout_ms: a.timeouts.statement.map_or(0, millis),
        lock_retries: a.timeouts.lock_retries,
        group: a.group,
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) fn event(e: Event) -> pb::PlanEvent {
    pb::PlanEvent {
        plan_id: e.plan_id,
        seq: e.seq,
        at: e.at.to_rfc3339(),
        target: e.target.unwrap_or_default(),
        kind: pb::EventKind::from(e.kind) as i32,
        detail: e.detail.to_string(),
    }
}

/// A progress event, its kind checked: an agent reports only what happens inside its step.
pub(super) fn progress(event: pb::ProgressEvent) -> Result<Progress, Status> {
    event.check()?;
    let kind = convert::event_kind(event.kind).map_err(invalid)?;
    if !kind.is_progress() {
        return Err(invalid(convert::ConvertError::Invalid {
            field: "kind",
            reason: format!("`{kind}` is not a kind of step progress"),
        }));
    }
    // A step starts before any migration, so it has no direction or version of its own.
    let (direction, version, version_before) = match kind {
        EventKind::StepStarted => {
            (None, None, Some(convert::version("version_before", &event.version_before).map_err(invalid)?))
        }
        _ => (
            Some(convert::direction(event.direction).map_err(invalid)?),
            Some(convert::version("version", &event.version).map_err(invalid)?),
            None,
        ),
    };
    let mut detail = json!({
        "version": version,
        "direction": direction.map(|d| d.as_str()),
        "statement": event.statement_index,
        "statements": event.statement_total,
        "rows_affected": event.rows_affected,
        "elapsed_ms": event.elapsed_ms,
    });
    if !event.error.is_empty() {
        detail["error"] = json!(limits::reported(event.error));
    }
    if let Some(before) = version_before {
        detail["version_before"] = json!(before);
    }
    if kind == EventKind::LockRetry {
        detail["attempt"] = json!(event.attempt);
        detail["retries"] = json!(event.retries);
        detail["pause_ms"] = json!(event.pause_ms);
    }
    Ok(Progress {
        plan_id: event.plan_id,
        target: event.target,
        token: event.fencing_token,
        kind,
        version_before,
        detail,
    })
}
