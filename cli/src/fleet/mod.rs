//! Fleet commands: talk to the coordinator over mTLS gRPC (`plan ...`, `rollback`, `fleet status`, `agents`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use flotilla_core::Version;
use flotilla_proto::convert::ConvertError;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::operator_service_client::OperatorServiceClient;
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code as GrpcCode;

use crate::exit::Code;
use crate::output::Output;

mod census;
mod plans;
mod watch;

pub use census::fleet;
pub use plans::plan;
use plans::Summary;
pub use watch::follow;
use watch::watch;

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
    Create(Box<CreateArgs>),
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
    /// Steps running at once on one database server (a target's `host` label; by default its URL's host and port),
    /// counted across plans, on top of --parallel.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_per_host: Option<u32>,
    /// How long a migration's statement may wait for a table lock before it is rolled back and retried (e.g. 3s);
    /// default: the agent's (5 s). A migration's `-- flotilla:lock-timeout` overrides it.
    #[arg(long, value_name = "DURATION", value_parser = flotilla_core::parse_duration)]
    pub statement_lock_timeout: Option<std::time::Duration>,
    /// How many times a migration rolled back on a lock timeout runs again; default: the agent's (3).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub lock_retries: Option<u32>,
    /// How long one statement may run (e.g. 10m); default: no limit.
    #[arg(long, value_name = "DURATION", value_parser = flotilla_core::parse_duration)]
    pub statement_timeout: Option<std::time::Duration>,
    /// Each target's pending migrations in one transaction: all of them apply, or none does (Flyway's `group`).
    /// A target whose engine cannot (MySQL's DDL, `no-transaction` scripts, backfills) fails, changing nothing.
    #[arg(long)]
    pub group: bool,
    /// Apply up to this version (default: all).
    #[arg(long, conflicts_with = "down_to")]
    pub to: Option<Version>,
    /// Roll every target back to this version instead.
    #[arg(long)]
    pub down_to: Option<Version>,
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
    /// Submit even when lint finds errors in the migrations (the plan records them). Without it, `plan create`
    /// lints the migrations for every engine the selected targets run and refuses on an error.
    #[arg(long)]
    pub allow_lint: bool,
    /// Follow the plan after creating it.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Each target's applied version, pending migrations, dirty state and schema; then the census: targets grouped
    /// by (version, schema), those behind the newest version, and those whose schema differs from the majority's at
    /// their version (drift).
    Status {
        #[arg(long = "select", default_value = "")]
        selector: String,
    },
    /// How a target's schema differs from the one most targets at its version have.
    Drift {
        /// The target's name.
        target: String,
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
                ErrorCode::Refused | ErrorCode::Conflict | ErrorCode::PermissionDenied => Code::Refused,
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

/// An answer this CLI cannot read (a coordinator of a newer version, say) fails the command, naming the value.
impl From<ConvertError> for Fail {
    fn from(e: ConvertError) -> Self {
        Fail(Code::Failed, format!("the coordinator's answer: {e}; is the coordinator newer than this CLI?"))
    }
}

pub(crate) type Client = OperatorServiceClient<Channel>;

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
            Identity::from_pem(
                read(format!("{}.pem", conn.operator))?,
                flotilla_proto::process::read_private_key(&dir.join(format!("{}.key", conn.operator))).map_err(bad)?,
            ),
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

pub async fn rollback(out: Output, conn: &Conn, plan: String, follow: bool) -> Code {
    let result = async {
        let mut client = connect(conn).await?;
        let s = client.create_rollback(pb::PlanAction { id: plan, reason: String::new() }).await?.into_inner();
        if out.json && !follow {
            out.print_json(&Summary::of(&s)?.json());
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

pub async fn agents(out: Output, conn: &Conn) -> Code {
    let result = async {
        let mut client = connect(conn).await?;
        let agents = client.list_agents(pb::ListAgentsRequest {}).await?.into_inner().agents;
        if out.json {
            let rows: Vec<_> = agents
                .iter()
                .map(|a| json!({ "agent": a.id, "connected": a.connected, "last_heartbeat": a.last_heartbeat, "targets": a.targets, "certificate_expires": a.certificate_expires }))
                .collect();
            out.print_json(&rows);
        } else {
            println!("{:<20} {:<10} {:>7}  {:<33} CERTIFICATE EXPIRES", "AGENT", "CONNECTED", "TARGETS", "LAST HEARTBEAT");
            for a in &agents {
                let connected = if a.connected { "yes" } else { "no" };
                println!("{:<20} {:<10} {:>7}  {:<33} {}", a.id, connected, a.targets.len(), a.last_heartbeat, a.certificate_expires);
            }
        }
        Ok(Code::Ok)
    }
    .await;
    finish(out, result)
}

/// `--since`: an RFC 3339 time, or a duration back from now (`1h`), as RFC 3339.
pub fn parse_since(text: &str) -> Result<String, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc).to_rfc3339());
    }
    let days = text.strip_suffix('d').and_then(|n| n.parse::<u64>().ok());
    let back = match days {
        Some(d) => std::time::Duration::from_secs(d * 86_400),
        None => flotilla_core::parse_duration(text)
            .map_err(|_| format!("`{text}` is neither an RFC 3339 time nor a duration such as 1h, 30m or 7d"))?,
    };
    let back = chrono::Duration::from_std(back).map_err(|e| e.to_string())?;
    Ok((chrono::Utc::now() - back).to_rfc3339())
}

/// `flotilla audit`: pages through the audit log.
pub async fn audit(out: Output, conn: &Conn, plan: Option<String>, since: Option<String>, limit: u32) -> Code {
    let result = async {
        let mut client = connect(conn).await?;
        let mut entries = Vec::new();
        let mut after = String::new();
        while (entries.len() as u32) < limit {
            let request = pb::ListAuditRequest {
                plan_id: plan.clone().unwrap_or_default(),
                since: since.clone().unwrap_or_default(),
                after: after.clone(),
                limit: (limit - entries.len() as u32).min(1000),
            };
            let page = client.list_audit(request).await?.into_inner();
            entries.extend(page.entries);
            if page.next.is_empty() {
                break;
            }
            after = page.next;
        }
        if out.json {
            let rows: Vec<_> = entries
                .iter()
                .map(|e| json!({ "at": e.at, "actor": e.actor, "action": e.action, "plan": e.plan_id, "detail": e.detail }))
                .collect();
            out.print_json(&rows);
        } else {
            println!("{:<32} {:<24} {:<10} {:<26} DETAIL", "AT", "ACTOR", "ACTION", "PLAN");
            for e in &entries {
                println!("{:<32} {:<24} {:<10} {:<26} {}", e.at, e.actor, e.action, e.plan_id, e.detail);
            }
        }
        Ok(Code::Ok)
    }
    .await;
    finish(out, result)
}
