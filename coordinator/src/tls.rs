//! The coordinator's TLS: mTLS with client certificates optional at the handshake (a caller without one is refused
//! by every handler, with a plain `Unauthenticated`), and certificate, key and CA files taken again when they
//! change: new connections get the new ones, open ones go on.
//!
//! Accepting is ours, not tonic's, so the server config can be swapped: each accepted socket is handshaken on a task
//! of its own (a slow client holds up nobody) and handed to tonic as a `TlsStream`, whose peer certificates the
//! handlers read as before.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::TlsFiles;

/// How often the files are looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// A handshake that takes longer is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The server config in force, and when its certificate expires.
pub struct Reloading {
    files: TlsFiles,
    current: RwLock<(Arc<ServerConfig>, Option<i64>)>,
}

impl Reloading {
    pub fn load(files: &TlsFiles) -> Result<Arc<Reloading>, String> {
        let (config, expiry) = server_config(files)?;
        Ok(Arc::new(Reloading { files: files.clone(), current: RwLock::new((Arc::new(config), expiry)) }))
    }

    fn config(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).0.clone()
    }

    /// When the certificate in force expires (seconds since the epoch).
    pub fn expiry(&self) -> Option<i64> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).1
    }

    /// Takes the files again whenever they change. Files that do not load (say, a certificate written before its
    /// key) keep the config in force, and are tried again on the next change.
    pub async fn watch(self: Arc<Self>, on_change: impl Fn(Option<i64>) + Send + 'static, stop: CancellationToken) {
        let paths = [self.files.cert.as_path(), self.files.key.as_path(), self.files.ca.as_path()];
        let mut seen = flotilla_proto::process::stamp(&paths);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(WATCH_EVERY) => {}
            }
            let now = flotilla_proto::process::stamp(&paths);
            if now == seen {
                continue;
            }
            match server_config(&self.files) {
                Ok((config, expiry)) => {
                    seen = now;
                    *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
                        (Arc::new(config), expiry);
                    info!(cert = %self.files.cert.display(), expires = ?expiry, "TLS certificate files reloaded");
                    on_change(expiry);
                }
                Err(e) => warn!(error = %e, "TLS files changed but do not load; the ones in force stay"),
            }
        }
    }

    /// Accepts on `listener` until `stop`, handing each handshaken connection on.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> tokio_stream::wrappers::ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let (socket, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Small responses must not wait for Nagle's algorithm and delayed ACKs (about 40 ms).
                let _ = socket.set_nodelay(true);
                let acceptor = TlsAcceptor::from(self.config());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

/// The rustls config the files describe, and the certificate's expiry.
fn server_config(files: &TlsFiles) -> Result<(ServerConfig, Option<i64>), String> {
    let cert_pem = read("certificate", &files.cert)?;
    let key_pem = flotilla_proto::process::read_private_key(&files.key)?;
    let ca_pem = read("CA certificate", &files.ca)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: not a PEM private key: {e}", files.key.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&ca_pem) {
        let ca = ca.map_err(|e| format!("{}: not a PEM certificate: {e}", files.ca.display()))?;
        roots.add(ca).map_err(|e| format!("{}: {e}", files.ca.display()))?;
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("{}: {e}", files.ca.display()))?;
    let expiry = flotilla_proto::process::certificate_expiry(&cert_pem);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} and {} do not make a key pair: {e}", files.cert.display(), files.key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, expiry))
}
