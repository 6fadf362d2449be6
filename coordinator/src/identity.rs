//! Who is calling: agents and operators are known by their client certificate (a SAN URI), never by what a request
//! says. See docs/design/fleet-service.md.
//!
//! - `spiffe://flotilla/operator/<name>`: an operator (the CLI).
//! - `spiffe://flotilla/agent/<name>`: an agent; each further `spiffe://flotilla/agent/<name>/targets/<glob>` lets it
//!   serve the targets matching the glob (the coordinator's config can add more).

use std::collections::BTreeMap;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

pub const URI_PREFIX: &str = "spiffe://flotilla/";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Operator(String),
    Agent {
        name: String,
        targets: Vec<String>,
    },
    /// `--insecure-dev`: no certificates; every caller may do everything.
    Insecure,
}

impl Identity {
    /// The name recorded in the audit log.
    pub fn actor(&self) -> String {
        match self {
            Identity::Operator(name) => format!("operator:{name}"),
            Identity::Agent { name, .. } => format!("agent:{name}"),
            Identity::Insecure => "insecure-dev".to_string(),
        }
    }
}

/// Reads the identity from a client certificate (DER).
pub fn from_certificate(der: &[u8]) -> Result<Identity, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("unreadable client certificate: {e}"))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                uris.push(uri.to_string());
            }
        }
    }
    from_uris(&uris)
}

/// The identity the SAN URIs name; exactly one role and name.
pub fn from_uris(uris: &[String]) -> Result<Identity, String> {
    let mut operator = None;
    let mut agents: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for uri in uris {
        let Some(path) = uri.strip_prefix(URI_PREFIX) else { continue };
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["operator", name] if !name.is_empty() => operator = Some(name.to_string()),
            ["agent", name] if !name.is_empty() => {
                agents.entry(name.to_string()).or_default();
            }
            ["agent", name, "targets", glob] if !name.is_empty() && !glob.is_empty() => {
                agents.entry(name.to_string()).or_default().push(glob.to_string());
            }
            _ => return Err(format!("certificate URI `{uri}` is not a Flotilla identity")),
        }
    }
    match (operator, agents.len()) {
        (Some(name), 0) => Ok(Identity::Operator(name)),
        (None, 1) => {
            let (name, targets) = agents.into_iter().next().unwrap_or_default();
            Ok(Identity::Agent { name, targets })
        }
        (None, 0) => Err(format!("the client certificate names no Flotilla identity (a SAN URI {URI_PREFIX}operator/NAME or {URI_PREFIX}agent/NAME)")),
        _ => Err("the client certificate names more than one Flotilla identity".to_string()),
    }
}

/// Whether `target` matches one of the globs (`*` and `?`).
pub fn allows(globs: &[String], target: &str) -> bool {
    globs.iter().any(|g| glob::Pattern::new(g).is_ok_and(|p| p.matches(target)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_from_uris() {
        let op = from_uris(&["spiffe://flotilla/operator/alice".into()]).unwrap();
        assert_eq!(op, Identity::Operator("alice".into()));
        let agent = from_uris(&[
            "spiffe://flotilla/agent/a1".into(),
            "spiffe://flotilla/agent/a1/targets/pg-*".into(),
            "https://example.com/other".into(),
        ])
        .unwrap();
        assert_eq!(agent, Identity::Agent { name: "a1".into(), targets: vec!["pg-*".into()] });
        assert!(from_uris(&[]).is_err());
        assert!(from_uris(&["spiffe://flotilla/operator/a".into(), "spiffe://flotilla/agent/b".into()]).is_err());
        assert!(from_uris(&["spiffe://flotilla/root".into()]).is_err());
        assert!(allows(&["pg-*".into()], "pg-07") && !allows(&["pg-*".into()], "my-07"));
    }
}
