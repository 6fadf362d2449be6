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

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1::agent_service_server::AgentServiceServer;
use flotilla_proto::v1::operator_service_server::OperatorServiceServer;
use flotilla_proto::MAX_MESSAGE_BYTES;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity as TlsIdentity, Server, ServerTlsConfig};
use tracing::{info, warn};

pub use config::{Config, TlsFiles};
pub use etcd::EtcdLock;
pub use lock::{Holder, InProcessLock, Lease, Lock, LockError};
pub use service::Coordinator;
pub use store::{Assigning, Fact, NewEvent, SqlStore, Starting, StepCount, StepFinish, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("lock service: {0}")]
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
        Arc::new(EtcdLock::connect(&config.etcd, &config.etcd_prefix).await?)
    };
    let coordinator = Coordinator::new(store, lock, config.service.clone());
    let tasks = shutdown.child_token();
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

    let mut server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    match &config.tls {
        Some(files) => server = server.tls_config(server_tls(files)?)?,
        None => warn!("--insecure-dev: plaintext gRPC and no client certificates; every caller may do everything"),
    }
    let auth = grpc::Auth::new(config.tls.is_none());
    let agents = grpc::AgentApi { coordinator: coordinator.clone(), auth: auth.clone(), shutdown: tasks.clone() };
    let operators = grpc::OperatorApi { coordinator: coordinator.clone(), auth, shutdown: tasks.clone() };
    let router = server
        .add_service(
            AgentServiceServer::new(agents)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            OperatorServiceServer::new(operators)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        );
    info!(addr = ?listener.local_addr().ok(), store = %config.store_display(), etcd = !config.etcd.is_empty(), "coordinator listening");
    // Accepted sockets need TCP_NODELAY like the clients' (tonic sets it only on listeners it binds itself):
    // without it, Nagle's algorithm and delayed ACKs hold small responses back for about 40 ms.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let stopping = tasks.clone();
    let serve = router.serve_with_incoming_shutdown(incoming, async move {
        shutdown.cancelled().await;
        stopping.cancel();
    });
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

fn server_tls(files: &TlsFiles) -> Result<ServerTlsConfig, RunError> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| RunError::Tls(format!("cannot read the {what} {}: {e}", path.display())))
    };
    let cert = read("certificate", &files.cert)?;
    let key = read("private key", &files.key)?;
    let ca = read("CA certificate", &files.ca)?;
    // A presented certificate must chain to the CA, or the handshake fails. A caller with none gets through TLS and
    // is then refused with `Unauthenticated` by every handler, which tells it plainly what is missing.
    Ok(ServerTlsConfig::new()
        .identity(TlsIdentity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(true))
}
