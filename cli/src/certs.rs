//! `flotilla certs init`: a development CA and the certificates a fleet needs (rcgen). Identities are SAN URIs the
//! coordinator reads (see coordinator::identity): `spiffe://flotilla/operator/NAME`, `spiffe://flotilla/agent/NAME`,
//! and one `spiffe://flotilla/agent/NAME/targets/GLOB` per glob of targets the agent may serve.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// One leaf certificate and its key, PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// Which certificate to make.
pub enum Role<'a> {
    Coordinator { hosts: &'a [String] },
    Operator { name: &'a str },
    Agent { name: &'a str, targets: &'a [String] },
}

fn err(e: rcgen::Error) -> String {
    format!("cannot make a certificate: {e}")
}

impl Ca {
    pub fn new(common_name: &str) -> Result<Ca, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(err)?;
        Ok(Ca { issuer: CertifiedIssuer::self_signed(params, key).map_err(err)? })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn issue(&self, role: Role<'_>) -> Result<Leaf, String> {
        let (cn, dns, uris, server): (String, Vec<String>, Vec<String>, bool) = match role {
            Role::Coordinator { hosts } => ("flotilla-coordinator".into(), hosts.to_vec(), vec![], true),
            Role::Operator { name } => {
                (format!("operator {name}"), vec![], vec![format!("spiffe://flotilla/operator/{name}")], false)
            }
            Role::Agent { name, targets } => {
                let mut uris = vec![format!("spiffe://flotilla/agent/{name}")];
                uris.extend(targets.iter().map(|g| format!("spiffe://flotilla/agent/{name}/targets/{g}")));
                (format!("agent {name}"), vec![], uris, false)
            }
        };
        let mut params = CertificateParams::new(dns).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        for uri in uris {
            let uri = uri.try_into().map_err(|e: rcgen::Error| format!("`{e}` is not a valid certificate URI"))?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages =
            vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        let key = KeyPair::generate().map_err(err)?;
        let issuer: &Issuer<'_, KeyPair> = &self.issuer;
        let cert = params.signed_by(&key, issuer).map_err(err)?;
        Ok(Leaf { cert: cert.pem(), key: key.serialize_pem() })
    }
}

/// An agent to certify: `NAME` or `NAME:GLOB,GLOB` (the targets it may serve).
pub fn parse_agent(text: &str) -> Result<(String, Vec<String>), String> {
    let (name, globs) = match text.split_once(':') {
        Some((n, g)) => (n, g.split(',').map(str::trim).filter(|g| !g.is_empty()).map(str::to_string).collect()),
        None => (text, Vec::new()),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
        return Err(format!("agent name `{name}` must be letters, digits, `-`, `_` or `.`"));
    }
    Ok((name.to_string(), globs))
}

/// Writes a CA, a coordinator certificate, and one certificate per operator and agent into `dir`. Refuses to
/// overwrite anything. Returns the files written.
pub fn init(
    dir: &Path,
    hosts: &[String],
    operators: &[String],
    agents: &[(String, Vec<String>)],
) -> Result<Vec<PathBuf>, String> {
    let ca = Ca::new("Flotilla development CA")?;
    let mut files: Vec<(String, String)> = vec![("ca.pem".into(), ca.cert_pem())];
    let coordinator = ca.issue(Role::Coordinator { hosts })?;
    files.push(("coordinator.pem".into(), coordinator.cert));
    files.push(("coordinator.key".into(), coordinator.key));
    for name in operators {
        parse_agent(name).map_err(|e| e.replace("agent", "operator"))?;
        let leaf = ca.issue(Role::Operator { name })?;
        files.push((format!("{name}.pem"), leaf.cert));
        files.push((format!("{name}.key"), leaf.key));
    }
    for (name, targets) in agents {
        let leaf = ca.issue(Role::Agent { name, targets })?;
        files.push((format!("{name}.pem"), leaf.cert));
        files.push((format!("{name}.key"), leaf.key));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if let Some((name, _)) = files.iter().find(|(name, _)| dir.join(name).exists()) {
        return Err(format!("{} already exists; certs init never overwrites", dir.join(name).display()));
    }
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        write_private(&path, &text)?;
        written.push(path);
    }
    Ok(written)
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mode = if path.extension().is_some_and(|e| e == "key") { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_specs() {
        assert_eq!(parse_agent("a1:pg-*,my-*").unwrap(), ("a1".into(), vec!["pg-*".into(), "my-*".into()]));
        assert_eq!(parse_agent("a1").unwrap(), ("a1".into(), vec![]));
        assert!(parse_agent("a/1").is_err() && parse_agent(":x").is_err());
    }
}
