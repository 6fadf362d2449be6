//! `plan create|list|show|pause|resume|abort|approve`: requests built and checked here, answers printed here.

use flotilla_core::bundle::Bundle;
use flotilla_core::fleet::{Goal, OnFailure, PlanState, Selector, StepState, WaveSpec};
use flotilla_core::Phase;
use flotilla_proto::convert;
use flotilla_proto::v1 as pb;
use serde_json::json;

use super::{connect, finish, watch, ActionArgs, Conn, CreateArgs, Fail, PlanCommand};
use crate::exit::Code;
use crate::output::Output;

/// A plan's summary with its enums read: what the CLI prints, in text and in JSON.
pub(super) struct Summary<'a> {
    pub pb: &'a pb::PlanSummary,
    pub state: PlanState,
    pub phase: Option<Phase>,
    pub goal: Option<Goal>,
}

impl<'a> Summary<'a> {
    pub fn of(pb: &'a pb::PlanSummary) -> Result<Self, Fail> {
        Ok(Summary {
            pb,
            state: convert::plan_state(pb.state)?,
            phase: convert::phase(pb.phase)?,
            goal: pb.goal.clone().map(|g| convert::goal(Some(g))).transpose()?,
        })
    }

    pub fn json(&self) -> serde_json::Value {
        let s = self.pb;
        json!({
            "id": s.id, "state": self.state.as_str(), "selector": s.selector, "targets": s.targets,
            "succeeded": s.succeeded, "failed": s.failed, "current_wave": s.current_wave, "waves": s.waves,
            "created_at": s.created_at, "rollback_of": if s.rollback_of.is_empty() { None } else { Some(&s.rollback_of) },
            "phase": self.phase.map(|p| match p { Phase::Expand => "expand", Phase::Contract => "contract" }),
            "goal": self.goal.map(goal_text),
        })
    }
}

pub async fn plan(out: Output, conn: &Conn, command: PlanCommand) -> Code {
    finish(out, plan_inner(out, conn, command).await)
}

async fn plan_inner(out: Output, conn: &Conn, command: PlanCommand) -> Result<Code, Fail> {
    if let PlanCommand::Create(args) = &command {
        // Check what can be checked locally before connecting.
        let request = create_request(args)?;
        let mut client = connect(conn).await?;
        let detail = client.submit_plan(request).await?.into_inner();
        print_detail(out, &detail, if args.dry_run { "would run" } else { "created" })?;
        let id = detail.summary.as_ref().map(|s| s.id.clone()).unwrap_or_default();
        if args.watch && !args.dry_run {
            return watch(out, &mut client, &id, 0).await;
        }
        return Ok(Code::Ok);
    }
    let mut client = connect(conn).await?;
    match command {
        PlanCommand::Create(_) => unreachable!("handled above"),
        PlanCommand::List => {
            let plans = client.list_plans(pb::ListPlansRequest {}).await?.into_inner().plans;
            if out.json {
                let rows = plans.iter().map(|p| Ok(Summary::of(p)?.json())).collect::<Result<Vec<_>, Fail>>()?;
                out.print_json(&rows);
            } else if plans.is_empty() {
                println!("no plans");
            } else {
                println!(
                    "{:<32} {:<18} {:>7} {:>9} {:>6}  SELECTOR",
                    "PLAN", "STATE", "TARGETS", "SUCCEEDED", "FAILED"
                );
                for p in &plans {
                    let state = convert::plan_state(p.state)?;
                    println!(
                        "{:<32} {:<18} {:>7} {:>9} {:>6}  {}",
                        p.id, state, p.targets, p.succeeded, p.failed, p.selector
                    );
                }
            }
            Ok(Code::Ok)
        }
        PlanCommand::Show { id } => {
            let detail = client.get_plan(pb::GetPlanRequest { id }).await?.into_inner();
            print_detail(out, &detail, "")?;
            Ok(Code::Ok)
        }
        PlanCommand::Watch { id, after } => watch(out, &mut client, &id, after).await,
        PlanCommand::Pause(a) => act(out, client.pause_plan(action(a)).await, "paused"),
        PlanCommand::Resume(a) => act(out, client.resume_plan(action(a)).await, "resumed"),
        PlanCommand::Abort(a) => act(out, client.abort_plan(action(a)).await, "aborted"),
        PlanCommand::Approve(a) => act(out, client.approve_wave(action(a)).await, "approved the next wave of"),
    }
}

fn action(a: ActionArgs) -> pb::PlanAction {
    pb::PlanAction { id: a.id, reason: a.reason }
}

fn act(out: Output, result: Result<tonic::Response<pb::PlanSummary>, tonic::Status>, verb: &str) -> Result<Code, Fail> {
    let s = result?.into_inner();
    let summary = Summary::of(&s)?;
    if out.json {
        out.print_json(&summary.json());
    } else {
        println!("{verb} plan {} (now {})", s.id, summary.state);
    }
    Ok(Code::Ok)
}

fn create_request(args: &CreateArgs) -> Result<pb::SubmitPlanRequest, Fail> {
    let bad = |m: String| Fail(Code::BadInput, m);
    args.selector.parse::<Selector>().map_err(|e| bad(format!("--select: {e}")))?;
    if let Some(v) = &args.validate_on {
        v.parse::<Selector>().map_err(|e| bad(format!("--validate-on: {e}")))?;
    }
    for w in &args.waves {
        w.parse::<WaveSpec>().map_err(|e| bad(format!("--waves: {e}")))?;
    }
    let on_failure = args.on_failure.parse::<OnFailure>().map_err(|_| {
        bad(format!("--on-failure `{}` is not halt, rollback-failed or rollback-plan", args.on_failure))
    })?;
    let phase = match args.phase.as_deref() {
        None => None,
        Some("expand") => Some(Phase::Expand),
        Some("contract") => Some(Phase::Contract),
        Some(other) => return Err(bad(format!("--phase `{other}` is not expand or contract"))),
    };
    let goal = match (args.to, args.down_to) {
        (_, Some(v)) => Goal::Down { to: v },
        (Some(v), None) if v.is_zero() => return Err(bad("--to must be a version above 0".into())),
        (to, None) => Goal::Up { to },
    };
    let bundle = Bundle::from_dir(&args.dir).map_err(|e| bad(e.to_string()))?;
    bundle
        .check(&flotilla_core::ReadOptions { allow_missing_down: true, ..Default::default() })
        .map_err(|e| bad(format!("{}: {e}", args.dir.display())))?;
    Ok(pb::SubmitPlanRequest {
        bundle: bundle.to_json().into_bytes(),
        selector: args.selector.clone(),
        goal: Some(goal.into()),
        strategy: Some(pb::Strategy {
            waves: args.waves.clone(),
            max_parallel: args.parallel,
            max_failures_per_wave: args.max_failures,
            approve_waves: args.approve_waves,
            on_failure: pb::strategy::OnFailure::from(on_failure) as i32,
            max_per_host: args.max_per_host.unwrap_or(0),
            lock_timeout_ms: args.statement_lock_timeout.map_or(0, |d| d.as_millis() as u64),
            statement_timeout_ms: args.statement_timeout.map_or(0, |d| d.as_millis() as u64),
            lock_retries: args.lock_retries,
            group: args.group,
        }),
        dry_run: args.dry_run,
        allow_lint: args.allow_lint,
        validate_on: args.validate_on.clone().unwrap_or_default(),
        phase: convert::phase_to_proto(phase) as i32,
    })
}

fn goal_text(g: Goal) -> String {
    match g {
        Goal::Down { to } => format!("down to {to}"),
        Goal::Up { to: None } => "up to the latest".to_string(),
        Goal::Up { to: Some(v) } => format!("up to {v}"),
    }
}

pub(super) fn print_detail(out: Output, d: &pb::PlanDetail, verb: &str) -> Result<(), Fail> {
    let Some(s) = &d.summary else { return Ok(()) };
    let summary = Summary::of(s)?;
    let states = d.steps.iter().map(|st| convert::step_state(st.state)).collect::<Result<Vec<_>, _>>()?;
    if out.json {
        let steps: Vec<_> = d
            .steps
            .iter()
            .zip(&states)
            .map(|(st, state)| {
                json!({
                    "target": st.target, "wave": st.wave, "state": state.as_str(), "agent": st.agent,
                    "fencing_token": st.fencing_token,
                    "version_before": convert::optional_version("version_before", st.version_before.as_deref()).ok().flatten(),
                    "version_after": convert::optional_version("version_after", st.version_after.as_deref()).ok().flatten(), "error": if st.error.is_empty() { None } else { Some(&st.error) },
                })
            })
            .collect();
        let mut v = summary.json();
        v["steps"] = json!(steps);
        out.print_json(&v);
        return Ok(());
    }
    let goal = summary.goal.map(goal_text).unwrap_or_default();
    if s.id.is_empty() {
        println!("dry run, nothing stored: {} targets, {goal}", s.targets);
    } else {
        let verb = if verb.is_empty() { String::new() } else { format!("{verb} ") };
        println!("{verb}plan {}: {}, {} targets, {goal}", s.id, summary.state, s.targets);
    }
    if !s.rollback_of.is_empty() {
        println!("  rolls back plan {}", s.rollback_of);
    }
    let mut waves: Vec<u32> = d.steps.iter().map(|st| st.wave).collect();
    waves.dedup();
    for w in waves {
        let in_wave: Vec<(&pb::StepInfo, StepState)> =
            d.steps.iter().zip(states.iter().copied()).filter(|(st, _)| st.wave == w).collect();
        let label = if w == 0 { "wave 0 (validation)".to_string() } else { format!("wave {w}") };
        println!("  {label}: {} target(s)", in_wave.len());
        for (st, state) in in_wave {
            let versions = if matches!(state, StepState::Pending | StepState::Skipped) {
                String::new()
            } else {
                let known = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".to_string());
                format!(" {} -> {}", known(&st.version_before), known(&st.version_after))
            };
            let error = if st.error.is_empty() { String::new() } else { format!(": {}", st.error) };
            println!("    {:<24} {:<10}{versions}{error}", st.target, state.as_str());
        }
    }
    Ok(())
}
