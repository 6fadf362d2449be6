//! The fleet coordinator: store, locks, scheduler and the flotilla.v1 gRPC service (docs/design/fleet.md,
//! docs/design/fleet-service.md). `run` is the whole server; the binary only parses its config.

pub mod config;
pub mod decision;
pub mod etcd;
pub mod grpc;
pub mod identity;
pub mod lock;
pub mod metrics;
pub mod scheduler;
pub mod service;
pub mod store;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1::agent_service_server::AgentServiceServer;
use flotilla_proto::v1::operator_service_server::OperatorServiceServer;
use flotilla_proto::MAX_MESSAGE_BYTES;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tracing::{info, warn};

pub use config::{Config, TlsFiles};
pub use etcd::EtcdLock;
pub use lock::{Holder, InProcessLock, Lease, Lock, LockError};
pub use service::Coordinator;
pub use store::{
    Assigning, AuditQuery, AuditRecord, Fact, NewEvent, SqlStore, Starting, StepCount, StepFinish, Store, StoreError,
    Unchanged, EVENT_PAGE,
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot serve metrics on {addr}: {error}")]
    Metrics { addr: String, error: std::io::Error },
}

/// How long shutdown waits for in-flight requests before it stops anyway.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves the coordinator on `listener` until `shutdown` fires, then shuts down in order: stop accepting, cancel
/// the scheduler and the open streams, drain for up to five seconds.
pub async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let store: Arc<dyn Store> = Arc::new(SqlStore::open(&config.store).await?);
    let lock: Arc<dyn Lock> = if config.etcd.is_empty() {
        Arc::new(InProcessLock::with_token_floor(store.max_token().await?))
    } else {
        Arc::new(EtcdLock::connect_with(&config.etcd, &config.etcd_prefix, &config.etcd_auth).await?)
    };
    let coordinator = Coordinator::new(store, lock, config.service.clone());
    let tasks = shutdown.child_token();
    if let Some(file) = &config.file {
        tokio::spawn(reload_access(coordinator.clone(), file.clone(), tasks.clone()));
    }
    let scheduler = tokio::spawn(scheduler::run(coordinator.clone(), tasks.clone()));
    if let Some(addr) = &config.metrics_listen {
        let listener =
            TcpListener::bind(addr).await.map_err(|error| RunError::Metrics { addr: addr.clone(), error })?;
        info!(addr = ?listener.local_addr().ok(), "serving metrics at /metrics");
        let (registry, stop) = (coordinator.registry(), tasks.clone());
        tokio::spawn(async move {
            if let Err(e) = flotilla_proto::metrics::serve(listener, registry, stop).await {
                warn!(error = %e, "the metrics endpoint stopped");
            }
        });
    }

    let tls = serve_tls(&config, &coordinator, &tasks)?;
    let auth = grpc::Auth::new(tls.is_none());
    let agents = grpc::AgentApi { coordinator: coordinator.clone(), auth: auth.clone(), shutdown: tasks.clone() };
    let operators = grpc::OperatorApi { coordinator: coordinator.clone(), auth, shutdown: tasks.clone() };
    let router = Server::builder()
        .layer(tower::util::MapRequestLayer::new(grpc::limits::limit_body))
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(
            AgentServiceServer::new(agents)
                .max_decoding_message_size(grpc::limits::AGENT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            OperatorServiceServer::new(operators)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        );
    info!(addr = ?listener.local_addr().ok(), store = %config.store_display(), etcd = !config.etcd.is_empty(), "coordinator listening");
    let stopping = tasks.clone();
    let stopped = async move {
        shutdown.cancelled().await;
        stopping.cancel();
    };
    let serve: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>> =
        match tls {
            Some(tls) => Box::pin(router.serve_with_incoming_shutdown(tls.incoming(listener, tasks.clone()), stopped)),
            // Accepted sockets need TCP_NODELAY like the clients' (tonic sets it only on listeners it binds
            // itself): without it, Nagle's algorithm and delayed ACKs hold small responses back for about 40 ms.
            None => Box::pin(
                router.serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), stopped),
            ),
        };
    tokio::pin!(serve);
    let served = tokio::select! {
        result = &mut serve => result,
        _ = async { tasks.cancelled().await; tokio::time::sleep(DRAIN).await } => {
            warn!("requests still open after the drain timeout; stopping anyway");
            Ok(())
        }
    };
    tasks.cancel();
    if tokio::time::timeout(DRAIN, scheduler).await.is_err() {
        warn!("the scheduler did not stop within the drain timeout");
    }
    info!("coordinator stopped");
    Ok(served?)
}

/// The TLS files loaded and watched for changes (their expiry in the metrics); `None` in insecure dev mode.
fn serve_tls(
    config: &Config,
    coordinator: &Arc<Coordinator>,
    tasks: &CancellationToken,
) -> Result<Option<Arc<tls::Reloading>>, RunError> {
    let Some(files) = &config.tls else {
        warn!("--insecure-dev: plaintext gRPC and no client certificates; every caller may do everything");
        return Ok(None);
    };
    let tls = tls::Reloading::load(files).map_err(RunError::Tls)?;
    coordinator.metrics.certificate_expires("coordinator", tls.expiry());
    let metrics = coordinator.metrics.clone();
    let on_change = move |expiry| metrics.certificate_expires("coordinator", expiry);
    tokio::spawn(tls.clone().watch(on_change, tasks.clone()));
    Ok(Some(tls))
}

/// How often the config file is looked at for changed access rules.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Takes the config file's access rules again whenever the file changes. A file that no longer reads keeps the
/// rules in force, with a warning.
async fn reload_access(coordinator: Arc<Coordinator>, file: std::path::PathBuf, stop: CancellationToken) {
    let stamp = |f: &std::path::Path| std::fs::metadata(f).and_then(|m| Ok((m.modified()?, m.len()))).ok();
    let mut seen = stamp(&file);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RELOAD_EVERY) => {}
        }
        let now = stamp(&file);
        if now == seen {
            continue;
        }
        seen = now;
        match config::File::read(&file).and_then(|f| f.access()) {
            Ok(access) => coordinator.set_access(access),
            Err(e) => warn!(error = %e, "the config file changed but does not read; the access rules in force stay"),
        }
    }
}
