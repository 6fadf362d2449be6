//! What the coordinator and agent binaries share: the TLS files they are given, and shutdown on a signal.

use std::path::PathBuf;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// A CA to trust, and this process's certificate and key (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A token cancelled on SIGINT or SIGTERM: the start of an ordered shutdown. Call inside the Tokio runtime.
pub fn shutdown_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
        on_signal.cancel();
    });
    shutdown
}
