//! Running one assignment: admit it, run the executor on one connection, report what the history says.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_core::fleet::{EventKind, Goal};
use flotilla_core::{PlanOptions, Request, Version};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_service_client::AgentServiceClient;
use flotilla_proto::{convert, telemetry};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tracing::{info, info_span, warn, Instrument};

use super::bundles::StreamBundle;
use super::*;
use crate::driver::ConnectOptions;
use crate::executor::{Executor, Progress, ProgressKind, ProgressSink};

/// Runs one assignment and reports its result.
pub(super) async fn handle(
    state: Arc<State>,
    mut client: AgentServiceClient<Channel>,
    progress: mpsc::UnboundedSender<pb::ProgressEvent>,
    a: pb::Assignment,
    bundle: Result<Arc<StreamBundle>, String>,
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
        let run = execute(&state, &target, &a, bundle, &progress).await;
        report(&state, &mut client, &target, &a, key, run).await;
    }
    .instrument(span)
    .await
}

/// Reports what a step did, holding the result until the coordinator acknowledges it.
async fn report(
    state: &State,
    client: &mut AgentServiceClient<Channel>,
    target: &Target,
    a: &pb::Assignment,
    key: StepKey,
    run: StepRun,
) {
    // The history as the step's own connection read it afterwards; a new connection only if that failed.
    let versions = match run.after {
        Some(Ok(v)) => Ok(v),
        _ => read_versions(state, target).await,
    };
    locked(&state.versions).insert(target.name.clone(), versions.clone());
    // The step changed the schema: its fingerprint is unknown until the next census read.
    locked(&state.census).fingerprints.remove(&target.name);
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
        applied_version: applied.map(|v| v.to_string()),
        dirty,
        version_before: before.map(|v| v.to_string()),
        agent_id: state.config.name.clone(),
    };
    // The result is held until the coordinator acknowledges it: retried here for a while, then sent again
    // after the next (re)connection. Meanwhile heartbeats list the step, so it is not reconciled under it.
    locked(&state.unacked).insert(key.clone(), report.clone());
    let parent = telemetry::traceparent(&tracing::Span::current(), &a.plan_id, &a.target);
    let mut wait = Duration::from_millis(200);
    for attempt in 1..=5 {
        match send_result(state, client, &key, &report, Some(&parent)).await {
            Sent::Done => break,
            Sent::Retry if attempt < 5 => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Sent::Retry => warn!("could not report the result; holding it until the coordinator is back"),
        }
    }
}

/// What running a step found and left.
pub(super) struct StepRun {
    /// Applied version before the step; `None` if the step failed before it could read the history.
    before: Option<Version>,
    error: Option<String>,
    /// Applied version and dirtiness after, read on the step's connection (`None` if it never connected).
    after: Option<Versions>,
}

/// Runs the step on one connection: read the history, run, read the history again.
pub(super) async fn execute(
    state: &State,
    target: &Target,
    a: &pb::Assignment,
    bundle: Result<Arc<StreamBundle>, String>,
    progress: &mpsc::UnboundedSender<pb::ProgressEvent>,
) -> StepRun {
    let failed = |e: String| StepRun { before: None, error: Some(e), after: None };
    let (phase, goal) = match (convert::phase(a.phase), convert::goal(a.goal.clone())) {
        (Ok(phase), Ok(goal)) => (phase, goal),
        (Err(e), _) | (_, Err(e)) => return failed(format!("the assignment does not convert: {e}")),
    };
    let set = match async { bundle?.set(target.engine).await }.await {
        Ok(set) => set,
        Err(e) => return failed(e),
    };
    let base = pb::ProgressEvent {
        plan_id: a.plan_id.clone(),
        target: a.target.clone(),
        fencing_token: a.fencing_token,
        agent_id: state.config.name.clone(),
        ..Default::default()
    };
    let sink = progress_sink(state, target, base.clone(), progress.clone());
    let timeouts = flotilla_core::Timeouts {
        lock: (a.lock_timeout_ms > 0).then(|| Duration::from_millis(a.lock_timeout_ms)),
        statement: (a.statement_timeout_ms > 0).then(|| Duration::from_millis(a.statement_timeout_ms)),
        lock_retries: a.lock_retries,
    };
    let make = |driver| {
        Executor::new(driver, format!("flotilla-agent:{}", state.config.name))
            .with_plan_id(Some(a.plan_id.clone()))
            .with_fencing_token(Some(a.fencing_token))
            .with_plan_options(PlanOptions { phase, group: a.group, ..PlanOptions::default() })
            .with_timeouts(timeouts)
            .with_throttle(target.throttle.clone())
            .with_progress(sink.clone())
    };
    let options = ConnectOptions::default();
    let opened = state.connections.open(target, &options, make, |ex| Box::pin(ex.history())).await;
    let (mut ex, before) = match opened {
        Ok((ex, history)) => (ex, version_before_plan(&history, &a.plan_id)),
        Err(e) => return failed(e),
    };
    let _ = progress.send(pb::ProgressEvent {
        kind: pb::EventKind::from(EventKind::StepStarted) as i32,
        version_before: before.to_string(),
        ..base.clone()
    });
    // Whether migrations ran on the connection (its session must be reset before it is used again).
    let mut ran = true;
    let result = if a.validate {
        match crate::validate::validate(&mut ex, &set, None).await {
            Ok(report) if report.passed() => Ok(()),
            Ok(report) => Err(validation_problems(&report)),
            Err(e) => Err(e.to_string()),
        }
    } else {
        let request = match goal {
            Goal::Down { to } => Request::DownTo(to),
            Goal::Up { to } => Request::Up { to },
        };
        ex.migrate(&set, request, false)
            .await
            .map(|r| ran = !r.steps.is_empty() || !r.repeatables.is_empty())
            .map_err(|e| e.to_string())
    };
    let after = ex.history().await.map(|h| summarize(&h)).map_err(|e| e.to_string());
    if result.is_ok() && after.is_ok() {
        let kept = pool::Kept::AfterStep { ran_migrations: ran };
        state.connections.put(&target.name, ex.into_driver(), &options, kept).await;
    } else {
        ex.close().await;
    }
    StepRun { before: Some(before), error: result.err(), after: Some(after) }
}

/// A statement's or a backfill batch's end goes to the coordinator only once this long has passed since the step's
/// last event.
const PROGRESS_EVENTS_EVERY: Duration = Duration::from_secs(1);

/// Whether an event of `kind` goes to the coordinator, `since_last` after the step's last one that went. A
/// migration's start and end, a lock retry, a hold and a failure always go; a statement's or a backfill batch's end
/// goes only when the step has said nothing for [`PROGRESS_EVENTS_EVERY`]. Fast statements and batches would
/// otherwise be most of a plan's events and of its store's rows, where `plan watch` shows of them only how far a
/// migration got: a long migration still reports where it is at least once a second, and a long statement when it
/// ends.
fn forwarded(kind: &ProgressKind, since_last: Option<Duration>) -> bool {
    let progress = matches!(kind, ProgressKind::Statement { .. } | ProgressKind::Batch { .. });
    !progress || since_last.is_none_or(|d| d >= PROGRESS_EVENTS_EVERY)
}

/// Turns the executor's progress into progress events on the stream to the coordinator ([`forwarded`] says
/// which). The agent's metrics count every event.
fn progress_sink(
    state: &State,
    target: &Target,
    base: pb::ProgressEvent,
    progress: mpsc::UnboundedSender<pb::ProgressEvent>,
) -> ProgressSink {
    let metrics = state.metrics.clone();
    let engine = target.engine.as_str();
    let last_sent = Mutex::new(None::<Instant>);
    Arc::new(move |p: &Progress| {
        metrics.observe(engine, p);
        {
            let mut last = locked(&last_sent);
            let now = Instant::now();
            if !forwarded(&p.kind, last.map(|at| now.duration_since(at))) {
                return;
            }
            *last = Some(now);
        }
        let mut e = base.clone();
        e.version = p.version.to_string();
        e.direction = pb::Direction::from(p.direction) as i32;
        match &p.kind {
            ProgressKind::Started { statements, .. } => {
                e.kind = pb::EventKind::from(EventKind::MigrationStarted) as i32;
                e.statement_total = *statements as u32;
            }
            ProgressKind::Statement { index, total, rows_affected, elapsed_ms } => {
                e.kind = pb::EventKind::from(EventKind::Statement) as i32;
                e.statement_index = *index as u32;
                e.statement_total = *total as u32;
                e.rows_affected = *rows_affected;
                e.elapsed_ms = *elapsed_ms;
            }
            ProgressKind::Batch { batch, rows_affected, elapsed_ms, .. } => {
                e.kind = pb::EventKind::from(EventKind::Batch) as i32;
                e.statement_index = u32::try_from(*batch).unwrap_or(u32::MAX);
                e.rows_affected = *rows_affected;
                e.elapsed_ms = *elapsed_ms;
            }
            ProgressKind::Finished { elapsed_ms } => {
                e.kind = pb::EventKind::from(EventKind::MigrationFinished) as i32;
                e.elapsed_ms = *elapsed_ms;
            }
            ProgressKind::LockRetry { attempt, retries, statement, pause_ms, error } => {
                e.kind = pb::EventKind::from(EventKind::LockRetry) as i32;
                e.statement_index = statement.map_or(0, |s| s as u32);
                e.attempt = *attempt;
                e.retries = *retries;
                e.pause_ms = *pause_ms;
                e.error = error.clone();
            }
            ProgressKind::Throttled { reason, waited_ms } => {
                e.kind = pb::EventKind::from(EventKind::Throttled) as i32;
                e.error = reason.clone();
                e.elapsed_ms = *waited_ms;
            }
            ProgressKind::Failed { statement, error } => {
                e.kind = pb::EventKind::from(EventKind::MigrationFailed) as i32;
                e.statement_index = statement.map_or(0, |s| s as u32);
                e.error = error.clone();
            }
        }
        let _ = progress.send(e);
    })
}

pub(super) fn validation_problems(report: &crate::validate::ValidationReport) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statements_or_batchs_end_goes_only_after_a_second_of_silence_and_every_other_event_always() {
        let statement = ProgressKind::Statement { index: 2, total: 3, rows_affected: 1, elapsed_ms: 5 };
        let finished = ProgressKind::Finished { elapsed_ms: 5 };
        let failed = ProgressKind::Failed { statement: Some(2), error: "boom".into() };
        let batch = ProgressKind::Batch { batch: 7, last_key: 70, rows_affected: 10, total_rows: 100, elapsed_ms: 5 };
        let ms = Duration::from_millis;
        assert!(!forwarded(&statement, Some(ms(5))), "a fast statement after the migration's start");
        assert!(!forwarded(&statement, Some(ms(999))));
        assert!(forwarded(&statement, Some(ms(1000))), "a second of silence");
        assert!(forwarded(&statement, None), "the step's first word");
        assert!(!forwarded(&batch, Some(ms(999))) && forwarded(&batch, Some(ms(1000))), "a batch as a statement");
        assert!(forwarded(&finished, Some(ms(1))) && forwarded(&failed, Some(ms(1))), "ends always go");
    }
}
