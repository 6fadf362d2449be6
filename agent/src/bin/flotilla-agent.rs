//! `flotilla-agent`: read the config, then `flotilla_agent::daemon::run`.

use std::path::PathBuf;

use clap::Parser;
use flotilla_agent::daemon::{self, AgentConfig};

#[derive(Parser)]
#[command(
    version,
    about = "Flotilla's agent: serves the databases near it, pulling work from the coordinator over mTLS gRPC"
)]
struct Args {
    /// TOML config: name, coordinator, [tls], [[targets]] (see deploy/agent.toml).
    #[arg(long, env = "FLOTILLA_AGENT_CONFIG")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = AgentConfig::read(&args.config).map_err(anyhow::Error::msg)?;
    let telemetry = flotilla_proto::telemetry::init("flotilla-agent", "info,sqlx=warn", config.log_format);
    if config.insecure_dev {
        tracing::warn!("insecure_dev: plaintext gRPC without certificates; for local trials only");
    }
    let shutdown = flotilla_proto::process::shutdown_on_signal();
    let result = daemon::run(config, shutdown).await;
    telemetry.shutdown();
    Ok(result?)
}
