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

fn main() -> anyhow::Result<()> {
    one_malloc_arena();
    tokio::runtime::Runtime::new()?.block_on(agent())
}

/// glibc gives each thread that allocates an arena of its own (up to 8 per core), and each keeps what was freed in
/// it: an agent of 1,000 targets peaked at 8.6 MiB of anonymous memory with its runtime's threads in three
/// arenas, 6.8 MiB in one. The agent waits on databases, not on malloc's lock (and small allocations come from
/// each thread's cache without it). Before any thread starts.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt changes an allocator setting; called once, before the runtime's threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

async fn agent() -> anyhow::Result<()> {
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
