//! Fleet commands: talk to the coordinator over mTLS gRPC (`plan ...`, `rollback`, `fleet status`, `agents`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use flotilla_core::bundle::Bundle;
use flotilla_core::fleet::{EventKind, OnFailure, Selector, WaveSpec};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::operator_service_client::OperatorServiceClient;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code as GrpcCode;

use crate::exit::Code;
use crate::output::Output;

/// How to reach the coordinator.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// Coordinator address.
    #[arg(long, env = "FLOTILLA_COORDINATOR", default_value = "https://127.0.0.1:7443", global = true)]
    pub coordinator: String,
    /// Directory with ca.pem and the operator's NAME.pem / NAME.key (from `flotilla certs init`).
    #[arg(long, env = "FLOTILLA_CERTS", global = true)]
    pub certs: Option<PathBuf>,
    /// Operator name in --certs (its NAME.pem and NAME.key).
    #[arg(long, env = "FLOTILLA_OPERATOR", default_value = "admin", global = true)]
    pub operator: String,
    /// Plaintext, no certificate (only against a coordinator started with --insecure-dev).
    #[arg(long, env = "FLOTILLA_INSECURE_DEV", global = true)]
    pub insecure_dev: bool,
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Submit a plan: migrate the selected targets in waves.
    Create(CreateArgs),
    /// List plans.
    List,
    /// Show a plan and each target's step.
    Show { id: String },
    /// Follow a plan's progress until it ends (a bar per wave; one line per event when not a terminal).
    Watch {
        id: String,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Start no new steps (running ones finish).
    Pause(ActionArgs),
    /// Go on after a pause.
    Resume(ActionArgs),
    /// Stop for good: running steps finish, the rest are skipped.
    Abort(ActionArgs),
    /// Let the next wave start (plans created with --approve-waves).
    Approve(ActionArgs),
}

#[derive(Debug, Args)]
pub struct ActionArgs {
    pub id: String,
    /// Recorded in the audit log.
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Migrations directory; subdirectories named postgres/, mysql/, sqlite/, mongodb/ give one set per engine.
    #[arg(long, env = "FLOTILLA_DIR", default_value = "migrations")]
    pub dir: PathBuf,
    /// Targets by label, e.g. `env=prod,region=eu` (empty: every target).
    #[arg(long = "select", default_value = "")]
    pub selector: String,
    /// Waves, cumulative: counts (`1`), shares (`10%`) or labels (`label:region=eu`).
    #[arg(long, default_value = "1,10%,50%,100%", value_delimiter = ',')]
    pub waves: Vec<String>,
    /// Steps running at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel: u32,
    /// Failed targets a wave tolerates; one more halts the plan.
    #[arg(long, default_value_t = 0)]
    pub max_failures: u32,
    /// Apply up to this version (default: all).
    #[arg(long, conflicts_with = "down_to")]
    pub to: Option<i64>,
    /// Roll every target back to this version instead.
    #[arg(long)]
    pub down_to: Option<i64>,
    /// Wait for `flotilla plan approve` before each wave after the first.
    #[arg(long)]
    pub approve_waves: bool,
    /// halt, rollback-failed (roll back each failed target) or rollback-plan (roll back every target touched).
    #[arg(long, default_value = "halt")]
    pub on_failure: String,
    /// Expand/contract: run only this phase; contract is refused until expand finished on every target.
    #[arg(long)]
    pub phase: Option<String>,
    /// Validate (up, down, up, comparing schemas) on these staging targets first, as wave 0.
    #[arg(long)]
    pub validate_on: Option<String>,
    /// Show the waves; store nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the plan after creating it.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Each target's applied version, pending migrations, dirty state and drift from what the plans say.
    Status {
        #[arg(long = "select", default_value = "")]
        selector: String,
    },
}

/// A failure with its exit code.
pub struct Fail(pub Code, pub String);

/// The one place a coordinator's status becomes an exit code: by the error code it carries where it set one,
/// else by the gRPC code (a status from the transport, not from the coordinator).
impl From<tonic::Status> for Fail {
    fn from(s: tonic::Status) -> Self {
        use flotilla_proto::errors::ErrorCode;
        if let Some(error) = ErrorCode::of(&s) {
            let code = match error {
                ErrorCode::InvalidInput | ErrorCode::NotFound => Code::BadInput,
                ErrorCode::Refused | ErrorCode::PermissionDenied => Code::Refused,
                ErrorCode::StoreUnavailable | ErrorCode::LockUnavailable => Code::CoordinatorDependency,
                ErrorCode::StoreCorrupt => Code::Failed,
            };
            let hint = match error {
                ErrorCode::StoreUnavailable | ErrorCode::LockUnavailable => {
                    "; the coordinator is up but cannot reach it: nothing changed, try again once it is back"
                }
                _ => "",
            };
            return Fail(code, format!("coordinator: {}{hint} ({error})", s.message()));
        }
        // A TLS handshake the coordinator refused (say, a certificate from another CA) surfaces as a dropped
        // connection, not as a status the coordinator chose.
        let dropped = matches!(s.code(), GrpcCode::Cancelled | GrpcCode::Unknown)
            && (s.message().contains("transport error") || s.message().contains("canceled"));
        let code = match s.code() {
            _ if dropped => Code::CannotConnect,
            GrpcCode::InvalidArgument | GrpcCode::NotFound => Code::BadInput,
            GrpcCode::Unavailable | GrpcCode::DeadlineExceeded => Code::CannotConnect,
            GrpcCode::FailedPrecondition | GrpcCode::PermissionDenied | GrpcCode::Unauthenticated => Code::Refused,
            _ => Code::Failed,
        };
        let mut message = if s.message().is_empty() { format!("{:?}", s.code()) } else { s.message().to_string() };
        if dropped {
            message.push_str("; the coordinator dropped the connection: is the client certificate signed by its CA?");
        }
        Fail(code, format!("coordinator: {message} ({:?})", s.code()))
    }
}

type Client = OperatorServiceClient<Channel>;

pub async fn connect(conn: &Conn) -> Result<Client, Fail> {
    let bad = |m: String| Fail(Code::BadInput, m);
    let mut endpoint = Endpoint::from_shared(conn.coordinator.clone())
        .map_err(|e| bad(format!("coordinator address `{}`: {e}", conn.coordinator)))?
        .connect_timeout(Duration::from_secs(5));
    if conn.insecure_dev {
        if !conn.coordinator.starts_with("http://") {
            return Err(bad("--insecure-dev needs an http:// coordinator address".into()));
        }
    } else {
        let dir = conn.certs.clone().ok_or_else(|| {
            bad("give --certs DIR (ca.pem and the operator's certificate, from `flotilla certs init`), or --insecure-dev".into())
        })?;
        let read = |name: String| {
            let path = dir.join(&name);
            std::fs::read(&path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))
        };
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("ca.pem".into())?)).identity(
            Identity::from_pem(read(format!("{}.pem", conn.operator))?, read(format!("{}.key", conn.operator))?),
        );
        endpoint = endpoint.tls_config(tls).map_err(|e| bad(format!("TLS: {e}")))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Fail(Code::CannotConnect, format!("cannot reach the coordinator at {}: {e}", conn.coordinator)))?;
    Ok(OperatorServiceClient::new(channel)
        .max_decoding_message_size(flotilla_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(flotilla_proto::MAX_MESSAGE_BYTES))
}

fn finish(out: Output, result: Result<Code, Fail>) -> Code {
    match result {
        Ok(code) => code,
        Err(Fail(code, message)) => out.error(code, &message),
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
        print_detail(out, &detail, if args.dry_run { "would run" } else { "created" });
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
                out.print_json(&plans.iter().map(summary_json).collect::<Vec<_>>());
            } else if plans.is_empty() {
                println!("no plans");
            } else {
                println!(
                    "{:<32} {:<18} {:>7} {:>9} {:>6}  SELECTOR",
                    "PLAN", "STATE", "TARGETS", "SUCCEEDED", "FAILED"
                );
                for p in &plans {
                    println!(
                        "{:<32} {:<18} {:>7} {:>9} {:>6}  {}",
                        p.id, p.state, p.targets, p.succeeded, p.failed, p.selector
                    );
                }
            }
            Ok(Code::Ok)
        }
        PlanCommand::Show { id } => {
            let detail = client.get_plan(pb::GetPlanRequest { id }).await?.into_inner();
            print_detail(out, &detail, "");
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
    if out.json {
        out.print_json(&summary_json(&s));
    } else {
        println!("{verb} plan {} (now {})", s.id, s.state);
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
    let on_failure =
        match args.on_failure.parse::<OnFailure>().map_err(|_| {
            bad(format!("--on-failure `{}` is not halt, rollback-failed or rollback-plan", args.on_failure))
        })? {
            OnFailure::Halt => pb::strategy::OnFailure::Halt,
            OnFailure::RollbackFailed => pb::strategy::OnFailure::RollbackFailed,
            OnFailure::RollbackPlan => pb::strategy::OnFailure::RollbackPlan,
        };
    let phase = match args.phase.as_deref() {
        None => String::new(),
        Some(p @ ("expand" | "contract")) => p.to_string(),
        Some(other) => return Err(bad(format!("--phase `{other}` is not expand or contract"))),
    };
    let goal = match (args.to, args.down_to) {
        (_, Some(v)) if v < 0 => return Err(bad("--down-to must be 0 or more".into())),
        (_, Some(v)) => pb::Goal { direction: pb::goal::Direction::Down as i32, version: v },
        (Some(v), None) if v <= 0 => return Err(bad("--to must be a version above 0".into())),
        (to, None) => pb::Goal { direction: pb::goal::Direction::Up as i32, version: to.unwrap_or(0) },
    };
    let bundle = Bundle::from_dir(&args.dir).map_err(|e| bad(e.to_string()))?;
    bundle
        .check(&flotilla_core::ReadOptions { allow_missing_down: true })
        .map_err(|e| bad(format!("{}: {e}", args.dir.display())))?;
    Ok(pb::SubmitPlanRequest {
        bundle: bundle.to_json().into_bytes(),
        selector: args.selector.clone(),
        goal: Some(goal),
        strategy: Some(pb::Strategy {
            waves: args.waves.clone(),
            max_parallel: args.parallel,
            max_failures_per_wave: args.max_failures,
            approve_waves: args.approve_waves,
            on_failure: on_failure as i32,
        }),
        dry_run: args.dry_run,
        validate_on: args.validate_on.clone().unwrap_or_default(),
        phase,
    })
}

fn summary_json(s: &pb::PlanSummary) -> serde_json::Value {
    json!({
        "id": s.id, "state": s.state, "selector": s.selector, "targets": s.targets, "succeeded": s.succeeded,
        "failed": s.failed, "current_wave": s.current_wave, "waves": s.waves, "created_at": s.created_at,
        "rollback_of": if s.rollback_of.is_empty() { None } else { Some(&s.rollback_of) },
        "phase": if s.phase.is_empty() { None } else { Some(&s.phase) },
        "goal": s.goal.as_ref().map(goal_text),
    })
}

fn goal_text(g: &pb::Goal) -> String {
    match (pb::goal::Direction::try_from(g.direction), g.version) {
        (Ok(pb::goal::Direction::Down), v) => format!("down to {v}"),
        (_, 0) => "up to the latest".to_string(),
        (_, v) => format!("up to {v}"),
    }
}

fn print_detail(out: Output, d: &pb::PlanDetail, verb: &str) {
    let Some(s) = &d.summary else { return };
    if out.json {
        let steps: Vec<_> = d
            .steps
            .iter()
            .map(|st| {
                json!({
                    "target": st.target, "wave": st.wave, "state": st.state, "agent": st.agent,
                    "fencing_token": st.fencing_token, "version_before": st.version_before,
                    "version_after": st.version_after, "error": if st.error.is_empty() { None } else { Some(&st.error) },
                })
            })
            .collect();
        let mut v = summary_json(s);
        v["steps"] = json!(steps);
        out.print_json(&v);
        return;
    }
    let goal = s.goal.as_ref().map(goal_text).unwrap_or_default();
    if s.id.is_empty() {
        println!("dry run, nothing stored: {} targets, {goal}", s.targets);
    } else {
        let verb = if verb.is_empty() { String::new() } else { format!("{verb} ") };
        println!("{verb}plan {}: {}, {} targets, {goal}", s.id, s.state, s.targets);
    }
    if !s.rollback_of.is_empty() {
        println!("  rolls back plan {}", s.rollback_of);
    }
    let mut waves: Vec<u32> = d.steps.iter().map(|st| st.wave).collect();
    waves.dedup();
    for w in waves {
        let in_wave: Vec<&pb::StepInfo> = d.steps.iter().filter(|st| st.wave == w).collect();
        let label = if w == 0 { "wave 0 (validation)".to_string() } else { format!("wave {w}") };
        println!("  {label}: {} target(s)", in_wave.len());
        for st in in_wave {
            let versions = if st.state == "pending" || st.state == "skipped" {
                String::new()
            } else {
                let known = |v: Option<i64>| v.map_or("?".to_string(), |v| v.to_string());
                format!(" {} -> {}", known(st.version_before), known(st.version_after))
            };
            let error = if st.error.is_empty() { String::new() } else { format!(": {}", st.error) };
            println!("    {:<24} {:<10}{versions}{error}", st.target, st.state);
        }
    }
}

/// Follows a plan until its event stream ends; the exit code says how it ended.
pub async fn watch(out: Output, client: &mut Client, id: &str, after: u64) -> Result<Code, Fail> {
    follow(Some(out), client, id, after).await
}

/// Follows a plan to its end; prints nothing when `out` is `None`.
pub async fn follow(out: Option<Output>, client: &mut Client, id: &str, after: u64) -> Result<Code, Fail> {
    let quiet = out.is_none();
    let out = out.unwrap_or(Output { json: false, verbose: 0 });
    let detail = client.get_plan(pb::GetPlanRequest { id: id.to_string() }).await?.into_inner();
    let wave_of: HashMap<String, u32> = detail.steps.iter().map(|s| (s.target.clone(), s.wave)).collect();
    let mut stream = client.watch_plan(pb::WatchPlanRequest { id: id.to_string(), after }).await?.into_inner();
    let bars = (!quiet && !out.json && std::io::stderr().is_terminal()).then(|| Bars::new(&detail));
    while let Some(event) = stream.message().await? {
        if quiet {
            continue;
        }
        if out.json {
            let detail: serde_json::Value = serde_json::from_str(&event.detail).unwrap_or(json!(event.detail));
            println!(
                "{}",
                json!({ "plan": event.plan_id, "seq": event.seq, "at": event.at, "target": event.target, "kind": event.kind, "detail": detail })
            );
        } else if let Some(bars) = &bars {
            bars.event(&event, wave_of.get(&event.target).copied());
        } else if out.verbose > 0 || !is_detail(&event.kind) {
            println!("{}", event_line(&event));
        }
    }
    if let Some(bars) = bars {
        bars.done();
    }
    let detail = client.get_plan(pb::GetPlanRequest { id: id.to_string() }).await?.into_inner();
    let s = detail.summary.unwrap_or_default();
    if !out.json && !quiet {
        println!("plan {}: {} ({} succeeded, {} failed of {})", s.id, s.state, s.succeeded, s.failed, s.targets);
    }
    Ok(match s.state.as_str() {
        "succeeded" if s.failed == 0 => Code::Ok,
        "succeeded" | "halted" | "aborted" => Code::Failed,
        _ => Code::Ok,
    })
}

/// A version from an event's detail, `?` where it is unknown (null).
fn known(v: &serde_json::Value) -> String {
    if v.is_null() {
        "?".to_string()
    } else {
        v.to_string()
    }
}

/// Per-statement and per-migration events: shown with -v. An event of a kind this CLI does not know (from a newer
/// coordinator) is shown as it is, never hidden.
fn is_detail(kind: &str) -> bool {
    kind.parse::<EventKind>().is_ok_and(EventKind::is_detail)
}

fn event_line(e: &pb::PlanEvent) -> String {
    use EventKind::*;
    let detail: serde_json::Value = serde_json::from_str(&e.detail).unwrap_or_default();
    let target = if e.target.is_empty() { String::new() } else { format!(" {}", e.target) };
    let by = || detail["by"].as_str().map(|by| format!(" by {by}")).unwrap_or_default();
    let reason = || detail["reason"].as_str().filter(|r| !r.is_empty()).map(|r| format!(": {r}")).unwrap_or_default();
    let extra = match e.kind.parse::<EventKind>().ok() {
        Some(Statement) => {
            format!(" {} statement {}/{}", detail["version"], detail["statement"], detail["statements"])
        }
        Some(Succeeded | Failed) => format!(
            " {} -> {}{}",
            known(&detail["version_before"]),
            known(&detail["applied_version"]),
            detail["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default()
        ),
        Some(Assigned) => format!(" to {} (token {})", detail["agent"].as_str().unwrap_or(""), detail["fencing_token"]),
        Some(Halted | Reconcile) => reason(),
        Some(Paused | Resumed | Aborted | Approved) => format!("{}{}", by(), reason()),
        Some(RollbackCreated) => format!(": {}", detail["plan"].as_str().unwrap_or("")),
        Some(RollbackLeftAlone) => format!(": {} ({})", detail["targets"], detail["reason"].as_str().unwrap_or("")),
        _ => String::new(),
    };
    format!("[{}] {}{target}{extra}", e.seq, e.kind)
}

/// A bar per wave and one overall.
struct Bars {
    _multi: MultiProgress,
    overall: ProgressBar,
    waves: HashMap<u32, ProgressBar>,
    log: ProgressBar,
}

impl Bars {
    fn new(d: &pb::PlanDetail) -> Bars {
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let overall =
            multi.add(ProgressBar::new(d.steps.len() as u64).with_style(style.clone()).with_prefix("overall"));
        let mut waves = HashMap::new();
        let mut numbers: Vec<u32> = d.steps.iter().map(|s| s.wave).collect();
        numbers.sort();
        numbers.dedup();
        for w in numbers {
            let len = d.steps.iter().filter(|s| s.wave == w).count() as u64;
            let bar = multi.add(ProgressBar::new(len).with_style(style.clone()).with_prefix(format!("wave {w}")));
            waves.insert(w, bar);
        }
        let log = multi.add(ProgressBar::new_spinner());
        log.enable_steady_tick(Duration::from_millis(120));
        Bars { _multi: multi, overall, waves, log }
    }

    fn event(&self, e: &pb::PlanEvent, wave: Option<u32>) {
        use EventKind::*;
        let kind = e.kind.parse::<EventKind>().ok();
        if let Some(Succeeded | Failed) = kind {
            self.overall.inc(1);
            if let Some(bar) = wave.and_then(|w| self.waves.get(&w)) {
                bar.inc(1);
                if kind == Some(Failed) {
                    bar.set_message("(with failures)");
                }
            }
        }
        if !is_detail(&e.kind) {
            self.log.set_message(event_line(e));
        }
        // What an operator must not miss stays on the screen above the bars.
        if matches!(kind, None | Some(Failed | Halted | Reconcile | AwaitingApproval | Paused | Resumed | Aborted)) {
            self.log.println(event_line(e));
        }
    }

    fn done(&self) {
        for bar in self.waves.values() {
            bar.abandon();
        }
        self.overall.abandon();
        self.log.finish_and_clear();
    }
}

pub async fn rollback(out: Output, conn: &Conn, plan: String, follow: bool) -> Code {
    let result = async {
        let mut client = connect(conn).await?;
        let s = client.create_rollback(pb::PlanAction { id: plan, reason: String::new() }).await?.into_inner();
        if out.json && !follow {
            out.print_json(&summary_json(&s));
        } else if !out.json {
            println!("created rollback plan {} for {} target(s), rolling back plan {}", s.id, s.targets, s.rollback_of);
        }
        if follow {
            return watch(out, &mut client, &s.id, 0).await;
        }
        Ok(Code::Ok)
    }
    .await;
    finish(out, result)
}

pub async fn fleet(out: Output, conn: &Conn, command: FleetCommand) -> Code {
    let FleetCommand::Status { selector } = command;
    let result = async {
        selector.parse::<Selector>().map_err(|e| Fail(Code::BadInput, format!("--select: {e}")))?;
        let mut client = connect(conn).await?;
        let rows = client.fleet_status(pb::FleetStatusRequest { selector }).await?.into_inner().targets;
        if out.json {
            let rows: Vec<_> = rows
                .iter()
                .map(|r| {
                    json!({
                        "target": r.target, "agent": r.agent, "applied_version": (r.applied_version >= 0).then_some(r.applied_version),
                        "pending": r.pending, "dirty": r.dirty, "stale": r.stale,
                        "drift": if r.drift.is_empty() { None } else { Some(&r.drift) },
                    })
                })
                .collect();
            out.print_json(&rows);
        } else {
            println!("{:<24} {:<12} {:>8} {:<16} {:<6} DRIFT", "TARGET", "AGENT", "APPLIED", "PENDING", "DIRTY");
            for r in &rows {
                let applied = if r.applied_version < 0 { "?".to_string() } else { r.applied_version.to_string() };
                let pending = match r.pending.as_slice() {
                    [] => String::new(),
                    [one] => one.to_string(),
                    [first, rest @ ..] => format!("{first} +{}", rest.len()),
                };
                let stale = if r.stale { " (stale)" } else { "" };
                println!(
                    "{:<24} {:<12} {:>8} {:<16} {:<6} {}{stale}",
                    r.target,
                    r.agent,
                    applied,
                    pending,
                    if r.dirty { "yes" } else { "no" },
                    r.drift
                );
            }
        }
        let drifted = rows.iter().any(|r| !r.drift.is_empty() || r.dirty);
        Ok(if drifted { Code::Failed } else { Code::Ok })
    }
    .await;
    finish(out, result)
}

pub async fn agents(out: Output, conn: &Conn) -> Code {
    let result = async {
        let mut client = connect(conn).await?;
        let agents = client.list_agents(pb::ListAgentsRequest {}).await?.into_inner().agents;
        if out.json {
            let rows: Vec<_> = agents
                .iter()
                .map(|a| json!({ "agent": a.id, "connected": a.connected, "last_heartbeat": a.last_heartbeat, "targets": a.targets }))
                .collect();
            out.print_json(&rows);
        } else {
            println!("{:<20} {:<10} {:>7}  LAST HEARTBEAT", "AGENT", "CONNECTED", "TARGETS");
            for a in &agents {
                println!("{:<20} {:<10} {:>7}  {}", a.id, if a.connected { "yes" } else { "no" }, a.targets.len(), a.last_heartbeat);
            }
        }
        Ok(Code::Ok)
    }
    .await;
    finish(out, result)
}
