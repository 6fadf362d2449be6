//! Who is calling: agents and operators are known by their client certificate (a SAN URI), never by what a request
//! says. See docs/design/fleet-service.md.
//!
//! - `spiffe://flotilla/operator/<name>`: an operator (the CLI); each further `spiffe://flotilla/operator/<name>/role/<role>`
//!   gives it a [`Role`] (the coordinator's config can add more). An operator with no role at all is a viewer.
//! - `spiffe://flotilla/agent/<name>`: an agent; each further `spiffe://flotilla/agent/<name>/targets/<glob>` lets it
//!   serve the targets matching the glob (the coordinator's config can add more).

use std::collections::BTreeMap;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

pub const URI_PREFIX: &str = "spiffe://flotilla/";

/// What an operator may do. Roles add up: an operator may hold several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// List, show, watch, status.
    Viewer,
    /// A viewer who may also create, pause, resume, abort and roll back plans.
    Operator,
    /// A viewer who may also approve waves.
    Approver,
    /// Everything, and the audit log.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Approver, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    pub fn allows(self, permission: Permission) -> bool {
        matches!(
            (self, permission),
            (Role::Admin, _)
                | (_, Permission::Read)
                | (Role::Operator, Permission::Change)
                | (Role::Approver, Permission::Approve)
        )
    }

    /// The least role that allows `action`.
    pub fn needed_for(permission: Permission) -> Role {
        match permission {
            Permission::Read => Role::Viewer,
            Permission::Change => Role::Operator,
            Permission::Approve => Role::Approver,
            Permission::Administer => Role::Admin,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a role (viewer, operator, approver, admin)"))
    }
}

/// What an operator call needs, for [`Role::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// List, show, watch, status, drift.
    Read,
    /// Create, pause, resume, abort, roll back.
    Change,
    /// Approve the next wave.
    Approve,
    /// What only an admin may do: read the audit log.
    Administer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// An operator, with the roles its certificate gives it.
    Operator {
        name: String,
        roles: Vec<Role>,
    },
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
            Identity::Operator { name, .. } => format!("operator:{name}"),
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
    let mut roles = Vec::new();
    let mut agents: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for uri in uris {
        let Some(path) = uri.strip_prefix(URI_PREFIX) else { continue };
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["operator", name] if !name.is_empty() => operator = Some(name.to_string()),
            ["operator", name, "role", role] if !name.is_empty() => {
                operator = Some(name.to_string());
                roles.push(role.parse::<Role>().map_err(|e| format!("certificate URI `{uri}`: {e}"))?);
            }
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
        (Some(name), 0) => {
            roles.sort();
            roles.dedup();
            Ok(Identity::Operator { name, roles })
        }
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
        assert_eq!(op, Identity::Operator { name: "alice".into(), roles: vec![] });
        let uris = [
            "spiffe://flotilla/operator/bob/role/approver".into(),
            "spiffe://flotilla/operator/bob/role/viewer".into(),
        ];
        assert_eq!(
            from_uris(&uris).unwrap(),
            Identity::Operator { name: "bob".into(), roles: vec![Role::Viewer, Role::Approver] }
        );
        assert!(from_uris(&["spiffe://flotilla/operator/bob/role/root".into()]).unwrap_err().contains("not a role"));
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

    #[test]
    fn roles_add_up_to_what_the_issue_lists() {
        use Permission::*;
        let may = |role: Role| [Read, Change, Approve, Administer].map(|a| role.allows(a));
        assert_eq!(may(Role::Viewer), [true, false, false, false]);
        assert_eq!(may(Role::Operator), [true, true, false, false]);
        assert_eq!(may(Role::Approver), [true, false, true, false]);
        assert_eq!(may(Role::Admin), [true, true, true, true]);
        for action in [Read, Change, Approve, Administer] {
            assert!(Role::needed_for(action).allows(action));
        }
    }
}
