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

/// Reads a private key, refusing one that group or others may read: a key anyone on the machine can copy is no
/// secret. The message names the file, its mode and the fix.
pub fn read_private_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    read_secret(path, "private key")
}

/// Reads a file holding a secret (`what`: "private key", "etcd password file"), refusing one that group or others
/// may read, with a message naming the file, its mode and the fix.
pub fn read_secret(path: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the {what} {} may be read by group or others (mode {mode:04o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

/// Whether `listen` (`HOST:PORT`) only accepts connections from this machine.
pub fn is_loopback(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// When the first certificate of a PEM file expires (seconds since the epoch); `None` if it does not read.
pub fn certificate_expiry(pem: &[u8]) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// When a DER certificate expires (seconds since the epoch).
pub fn certificate_expiry_der(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// What a set of files looks like now (modified time and length of each), to notice a change.
pub fn stamp(files: &[&std::path::Path]) -> Vec<Option<(std::time::SystemTime, u64)>> {
    files.iter().map(|f| std::fs::metadata(f).and_then(|m| Ok((m.modified()?, m.len()))).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        for a in ["127.0.0.1:7443", "localhost:1", "[::1]:7443", "127.5.0.1:9"] {
            assert!(is_loopback(a), "{a}");
        }
        for a in ["0.0.0.0:7443", "10.0.0.5:7443", "[::]:7443", "example.com:7443", "7443"] {
            assert!(!is_loopback(a), "{a}");
        }
    }

    #[test]
    fn a_key_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        std::fs::write(&key, "secret").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_private_key(&key).unwrap_err();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_private_key(&key).unwrap(), b"secret");
    }
}
