//! `flotilla-coordinator`: parse the config, then `flotilla_coordinator::run`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use flotilla_coordinator::config::{File, TlsFiles};
use flotilla_coordinator::etcd::EtcdTls;

/// Every step allocates and frees many small objects on several threads (store rows, gRPC messages, events); under
/// load glibc's malloc took over a quarter of the coordinator's CPU. jemalloc: 28–40% more target-steps/s in
/// the coordinator bench, for about 15 MiB more peak RSS at 10,000 targets (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    version,
    about = "Flotilla's fleet coordinator: stores plans, takes per-target locks, and assigns work to agents over mTLS gRPC"
)]
struct Args {
    /// TOML config file (flags override it).
    #[arg(long, env = "FLOTILLA_COORDINATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    listen: Option<String>,
    /// Store URL: sqlite://PATH (default sqlite://flotilla-coordinator.db) or postgres://...
    #[arg(long)]
    store: Option<String>,
    /// etcd endpoint for per-target locks (repeatable); without it, locks live in this process.
    #[arg(long)]
    etcd: Vec<String>,
    /// Where this fleet's locks live in etcd (default /flotilla/locks/); fleets sharing one etcd need their own.
    #[arg(long)]
    etcd_prefix: Option<String>,
    /// etcd's CA: talk to etcd over TLS (`https://` endpoints).
    #[arg(long)]
    etcd_ca: Option<PathBuf>,
    /// A client certificate and key for etcd's `--client-cert-auth`.
    #[arg(long, requires_all = ["etcd_ca", "etcd_key"])]
    etcd_cert: Option<PathBuf>,
    #[arg(long, requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// An etcd user; its password from --etcd-password-file or FLOTILLA_ETCD_PASSWORD.
    #[arg(long)]
    etcd_user: Option<String>,
    #[arg(long)]
    etcd_password_file: Option<PathBuf>,
    #[arg(long, requires_all = ["cert", "key"])]
    ca: Option<PathBuf>,
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    /// Plaintext, no client certificates: every caller may do everything. Local trials only.
    #[arg(long)]
    insecure_dev: bool,
    /// Seconds a target's lock outlives its last renewal.
    #[arg(long)]
    lease_ttl_secs: Option<u64>,
    /// Logs as `text` (default) or `json` (one object per line).
    #[arg(long)]
    log_format: Option<flotilla_proto::telemetry::LogFormat>,
    /// Address to serve Prometheus metrics on (`/metrics`, plain HTTP), e.g. 127.0.0.1:9464.
    #[arg(long)]
    metrics_listen: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut file = match &args.config {
        Some(path) => File::read(path).map_err(anyhow::Error::msg)?,
        None => File::default(),
    };
    let format = args.log_format.or(file.log_format).unwrap_or_default();
    let telemetry = flotilla_proto::telemetry::init("flotilla-coordinator", "info,sqlx=warn", format);
    if let Some(listen) = args.listen {
        file.listen = Some(listen);
    }
    if let Some(store) = args.store {
        file.store = Some(store);
    }
    if !args.etcd.is_empty() {
        file.etcd = args.etcd;
    }
    if args.etcd_prefix.is_some() {
        file.etcd_prefix = args.etcd_prefix;
    }
    if let Some(ca) = args.etcd_ca {
        file.etcd_tls = Some(EtcdTls { ca, cert: args.etcd_cert, key: args.etcd_key });
    }
    if args.etcd_user.is_some() {
        file.etcd_user = args.etcd_user;
    }
    if args.etcd_password_file.is_some() {
        file.etcd_password_file = args.etcd_password_file;
    }
    file.etcd_password = std::env::var("FLOTILLA_ETCD_PASSWORD").ok().filter(|p| !p.is_empty());
    if let (Some(ca), Some(cert), Some(key)) = (args.ca, args.cert, args.key) {
        file.tls = Some(TlsFiles { ca, cert, key });
    }
    file.insecure_dev |= args.insecure_dev;
    if args.metrics_listen.is_some() {
        file.metrics_listen = args.metrics_listen;
    }
    if args.lease_ttl_secs.is_some() {
        file.lease_ttl_secs = args.lease_ttl_secs;
    }
    let listen = file.listen.clone().unwrap_or_else(|| "127.0.0.1:7443".into());
    if file.insecure_dev && !flotilla_proto::process::is_loopback(&listen) {
        anyhow::bail!(
            "--insecure-dev listens only on a loopback address (127.0.0.1, ::1, localhost), not {listen}: without TLS \
             any caller that reaches it may run DDL on every database of the fleet"
        );
    }
    let mut config = file.into_config().map_err(anyhow::Error::msg)?;
    config.file = args.config.clone();
    let listener =
        tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let shutdown = flotilla_proto::process::shutdown_on_signal();
    let result = flotilla_coordinator::run(listener, config, shutdown).await;
    telemetry.shutdown();
    Ok(result?)
}
