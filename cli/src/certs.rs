//! `flotilla certs`: a CA and the certificates a fleet needs (rcgen). Identities are SAN URIs the coordinator reads
//! (see coordinator::identity):
//! - `spiffe://flotilla/operator/NAME`, with one `…/operator/NAME/role/ROLE` per role;
//! - `spiffe://flotilla/agent/NAME`, with one `…/agent/NAME/targets/GLOB` per glob of targets it may serve.
//!
//! Leaf certificates live 90 days unless told otherwise; `certs renew` issues a certificate again with the same
//! identity and a new key, swapping the files in place so running processes pick it up. Private keys are written
//! 0600, and the CA's key stays beside its certificate (`ca.key`) for `issue` and `renew`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use time::{Duration, OffsetDateTime};

/// How long a leaf certificate lives unless `--days` says otherwise.
pub const DEFAULT_DAYS: u32 = 90;
/// How long a CA made by `certs init` lives.
pub const CA_DAYS: u32 = 5 * 365;

/// One leaf certificate and its key, PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

pub struct Ca {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// Which certificate to make.
pub enum Role<'a> {
    Coordinator { hosts: &'a [String] },
    Operator { name: &'a str, roles: &'a [String] },
    Agent { name: &'a str, targets: &'a [String] },
}

fn err(e: rcgen::Error) -> String {
    format!("cannot make a certificate: {e}")
}

/// Valid from a minute ago (clocks differ a little) for `days`.
fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + Duration::days(i64::from(days));
}

impl Ca {
    pub fn new(common_name: &str, days: u32) -> Result<Ca, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, days);
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.self_signed(&key).map_err(err)?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        Ok(Ca { issuer: Issuer::new(params, key), cert_pem, key_pem })
    }

    /// The CA of a directory `certs init` wrote: `ca.pem` and `ca.key`.
    pub fn load(dir: &Path) -> Result<Ca, String> {
        let cert_pem = read(&dir.join("ca.pem"))?;
        let key_pem = read(&dir.join("ca.key"))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| format!("{}: not a private key: {e}", dir.join("ca.key").display()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| format!("{}: not a CA certificate: {e}", dir.join("ca.pem").display()))?;
        Ok(Ca { issuer, cert_pem, key_pem })
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    pub fn issue(&self, role: Role<'_>, days: u32) -> Result<Leaf, String> {
        let (cn, dns, uris, server): (String, Vec<String>, Vec<String>, bool) = match role {
            Role::Coordinator { hosts } => ("flotilla-coordinator".into(), hosts.to_vec(), vec![], true),
            Role::Operator { name, roles } => {
                let mut uris = vec![format!("spiffe://flotilla/operator/{name}")];
                uris.extend(roles.iter().map(|r| format!("spiffe://flotilla/operator/{name}/role/{r}")));
                (format!("operator {name}"), vec![], uris, false)
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
        self.sign(params, days)
    }

    fn sign(&self, mut params: CertificateParams, days: u32) -> Result<Leaf, String> {
        validity(&mut params, days);
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(Leaf { cert: cert.pem(), key: key.serialize_pem() })
    }

    /// The same identity as `cert_pem` (its Flotilla URIs, or its host names for the coordinator's), a new key, a
    /// new validity.
    pub fn renew(&self, cert_pem: &str, days: u32) -> Result<Leaf, String> {
        match identity_of(cert_pem)? {
            Issue::Coordinator { hosts } => self.issue(Role::Coordinator { hosts: &hosts }, days),
            Issue::Operator { name, roles } => self.issue(Role::Operator { name: &name, roles: &roles }, days),
            Issue::Agent { name, targets } => self.issue(Role::Agent { name: &name, targets: &targets }, days),
        }
    }
}

/// What a certificate `certs` made is for, read back from its SANs.
fn identity_of(cert_pem: &str) -> Result<Issue, String> {
    use x509_parser::extensions::GeneralName;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| format!("not PEM: {e}"))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&pem.contents).map_err(|e| format!("not a certificate: {e}"))?;
    let names =
        cert.subject_alternative_name().ok().flatten().map(|s| s.value.general_names.clone()).unwrap_or_default();
    let (mut uris, mut hosts) = (Vec::new(), Vec::new());
    for n in names {
        match n {
            GeneralName::URI(u) => uris.push(u.to_string()),
            GeneralName::DNSName(d) => hosts.push(d.to_string()),
            GeneralName::IPAddress(ip) => match ip.len() {
                4 => hosts.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                16 => hosts.push(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(ip).unwrap_or_default()).to_string()),
                _ => {}
            },
            _ => {}
        }
    }
    if uris.is_empty() {
        return if hosts.is_empty() {
            Err("the certificate names no Flotilla identity and no host".into())
        } else {
            Ok(Issue::Coordinator { hosts })
        };
    }
    match flotilla_coordinator::identity::from_uris(&uris)? {
        flotilla_coordinator::identity::Identity::Operator { name, roles } => {
            Ok(Issue::Operator { name, roles: roles.iter().map(ToString::to_string).collect() })
        }
        flotilla_coordinator::identity::Identity::Agent { name, targets } => Ok(Issue::Agent { name, targets }),
        flotilla_coordinator::identity::Identity::Insecure => Err("not a certificate identity".into()),
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn valid_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
        return Err(format!("{what} name `{name}` must be letters, digits, `-`, `_` or `.`"));
    }
    Ok(())
}

/// `NAME` or `NAME:A,B`.
fn split(text: &str) -> (&str, Vec<String>) {
    match text.split_once(':') {
        Some((n, rest)) => (n, rest.split(',').map(str::trim).filter(|g| !g.is_empty()).map(str::to_string).collect()),
        None => (text, Vec::new()),
    }
}

/// An agent to certify: `NAME` or `NAME:GLOB,GLOB` (the targets it may serve).
pub fn parse_agent(text: &str) -> Result<(String, Vec<String>), String> {
    let (name, globs) = split(text);
    valid_name(name, "agent")?;
    Ok((name.to_string(), globs))
}

/// An operator to certify: `NAME` or `NAME:ROLE,ROLE` (viewer, operator, approver, admin).
pub fn parse_operator(text: &str) -> Result<(String, Vec<String>), String> {
    let (name, roles) = split(text);
    valid_name(name, "operator")?;
    for role in &roles {
        role.parse::<flotilla_coordinator::identity::Role>()?;
    }
    Ok((name.to_string(), roles))
}

/// Writes a CA (certificate and key), a coordinator certificate, and one certificate per operator and agent into
/// `dir`. An operator named without roles is an admin: the one who sets the fleet up. Refuses to overwrite
/// anything. Returns the files written.
pub fn init(
    dir: &Path,
    hosts: &[String],
    operators: &[(String, Vec<String>)],
    agents: &[(String, Vec<String>)],
    days: u32,
) -> Result<Vec<PathBuf>, String> {
    let ca = Ca::new("Flotilla CA", CA_DAYS.max(days))?;
    let mut files: Vec<(String, String)> =
        vec![("ca.pem".into(), ca.cert_pem()), ("ca.key".into(), ca.key_pem.clone())];
    let coordinator = ca.issue(Role::Coordinator { hosts }, days)?;
    files.push(("coordinator.pem".into(), coordinator.cert));
    files.push(("coordinator.key".into(), coordinator.key));
    for (name, roles) in operators {
        let roles = if roles.is_empty() { vec!["admin".to_string()] } else { roles.clone() };
        let leaf = ca.issue(Role::Operator { name, roles: &roles }, days)?;
        files.extend([(format!("{name}.pem"), leaf.cert), (format!("{name}.key"), leaf.key)]);
    }
    for (name, targets) in agents {
        let leaf = ca.issue(Role::Agent { name, targets }, days)?;
        files.extend([(format!("{name}.pem"), leaf.cert), (format!("{name}.key"), leaf.key)]);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    write_new(dir, files)
}

/// What `certs issue` makes.
pub enum Issue {
    Coordinator { hosts: Vec<String> },
    Operator { name: String, roles: Vec<String> },
    Agent { name: String, targets: Vec<String> },
}

/// One more certificate from the CA in `dir` (NAME.pem, NAME.key; `coordinator` for the coordinator's). An operator
/// named without roles is a viewer. Refuses to overwrite.
pub fn issue(dir: &Path, what: &Issue, days: u32) -> Result<Vec<PathBuf>, String> {
    let ca = Ca::load(dir)?;
    let (name, leaf) = match what {
        Issue::Coordinator { hosts } => ("coordinator", ca.issue(Role::Coordinator { hosts }, days)?),
        Issue::Operator { name, roles } => (name.as_str(), ca.issue(Role::Operator { name, roles }, days)?),
        Issue::Agent { name, targets } => (name.as_str(), ca.issue(Role::Agent { name, targets }, days)?),
    };
    write_new(dir, vec![(format!("{name}.pem"), leaf.cert), (format!("{name}.key"), leaf.key)])
}

/// Issues NAME.pem again (same identity, new key, new validity) and swaps NAME.pem and NAME.key in place: each file
/// is written beside and renamed over the old one, so a process reading them sees the old pair or the new one.
pub fn renew(dir: &Path, names: &[String], days: u32) -> Result<Vec<PathBuf>, String> {
    let ca = Ca::load(dir)?;
    let mut renewed = Vec::new();
    for name in names {
        valid_name(name, "certificate")?;
        if name == "ca" {
            return Err("`renew` renews leaf certificates; the CA is made by `certs init`".into());
        }
        let cert_path = dir.join(format!("{name}.pem"));
        let leaf = ca.renew(&read(&cert_path)?, days).map_err(|e| format!("{}: {e}", cert_path.display()))?;
        for (file, text) in [(format!("{name}.key"), leaf.key), (format!("{name}.pem"), leaf.cert)] {
            let path = dir.join(&file);
            let temp = dir.join(format!(".{file}.new"));
            let _ = std::fs::remove_file(&temp);
            write_file(&temp, &text)?;
            std::fs::rename(&temp, &path).map_err(|e| format!("cannot replace {}: {e}", path.display()))?;
            renewed.push(path);
        }
    }
    Ok(renewed)
}

fn write_new(dir: &Path, files: Vec<(String, String)>) -> Result<Vec<PathBuf>, String> {
    if let Some((name, _)) = files.iter().find(|(name, _)| dir.join(name).exists()) {
        return Err(format!("{} already exists; certs never overwrites (use `certs renew`)", dir.join(name).display()));
    }
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        write_file(&path, &text)?;
        written.push(path);
    }
    Ok(written)
}

/// Writes a new file: 0600 for a private key, 0644 for a certificate, whatever the umask.
pub fn write_file(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mode = if path.to_string_lossy().ends_with(".key") || path.to_string_lossy().ends_with(".key.new") {
        0o600
    } else {
        0o644
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    // The mode given to open is masked by the umask; set it exactly.
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_roles() {
        assert_eq!(parse_agent("a1:pg-*,my-*").unwrap(), ("a1".into(), vec!["pg-*".into(), "my-*".into()]));
        assert_eq!(parse_agent("a1").unwrap(), ("a1".into(), vec![]));
        assert!(parse_agent("a/1").is_err() && parse_agent(":x").is_err());
        assert_eq!(
            parse_operator("bob:viewer,approver").unwrap(),
            ("bob".into(), vec!["viewer".into(), "approver".into()])
        );
        assert!(parse_operator("bob:root").unwrap_err().contains("not a role"));
    }

    #[test]
    fn a_leaf_lives_as_long_as_asked_and_renew_keeps_the_identity() {
        let ca = Ca::new("test", 30).unwrap();
        let leaf = ca.issue(Role::Operator { name: "bob", roles: &["viewer".into()] }, 7).unwrap();
        let days = |pem: &str| {
            let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).unwrap();
            let v = cert.validity();
            let uris: Vec<String> = cert
                .subject_alternative_name()
                .unwrap()
                .map(|san| san.value.general_names.iter().map(|n| n.to_string()).collect())
                .unwrap_or_default();
            ((v.not_after.timestamp() - v.not_before.timestamp()) / 86_400, uris)
        };
        let (lifetime, uris) = days(&leaf.cert);
        assert_eq!(lifetime, 7);
        assert!(uris.iter().any(|u| u.contains("spiffe://flotilla/operator/bob/role/viewer")), "{uris:?}");
        let renewed = ca.renew(&leaf.cert, 90).unwrap();
        let (lifetime, renewed_uris) = days(&renewed.cert);
        assert_eq!((lifetime, renewed_uris), (90, uris));
        assert_ne!(renewed.key, leaf.key, "a new key");
    }
}
