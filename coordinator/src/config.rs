//! The coordinator's configuration: a TOML file, with command-line flags on top (see deploy/coordinator.toml).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use flotilla_proto::process::TlsFiles;

use crate::service;

#[derive(Debug, Clone)]
pub struct Config {
    /// `sqlite://PATH` (the embedded default) or `postgres://…`.
    pub store: String,
    /// etcd endpoints; empty: locks inside this process (one coordinator only).
    pub etcd: Vec<String>,
    /// Where in etcd this fleet's locks live: `/…/`. Coordinators of one fleet share it; fleets sharing one etcd
    /// must not.
    pub etcd_prefix: String,
    /// TLS and/or a user toward etcd.
    pub etcd_auth: crate::etcd::EtcdAuth,
    /// `None` only with `--insecure-dev`.
    pub tls: Option<TlsFiles>,
    /// Where to serve Prometheus metrics (`/metrics`, plain HTTP); `None`: not served.
    pub metrics_listen: Option<String>,
    pub service: service::Config,
    /// The config file, read again for its access rules (roles, deny-list, allow-lists) whenever it changes.
    pub file: Option<std::path::PathBuf>,
}

impl Config {
    /// The store URL without its password, for logs.
    pub fn store_display(&self) -> String {
        match url_password(&self.store) {
            Some(p) => self.store.replace(&format!(":{p}@"), ":***@"),
            None => self.store.clone(),
        }
    }
}

fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    userinfo.split_once(':').map(|(_, p)| p)
}

/// Where locks live in etcd unless the config says otherwise.
pub const DEFAULT_ETCD_PREFIX: &str = "/flotilla/locks/";

/// The file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub listen: Option<String>,
    pub store: Option<String>,
    #[serde(default)]
    pub etcd: Vec<String>,
    pub etcd_prefix: Option<String>,
    /// etcd over TLS: its CA, and a client certificate and key for etcd's `--client-cert-auth`.
    pub etcd_tls: Option<crate::etcd::EtcdTls>,
    /// An etcd user (etcd's `auth enable`); its password in `etcd_password_file` or `FLOTILLA_ETCD_PASSWORD`.
    pub etcd_user: Option<String>,
    pub etcd_password_file: Option<std::path::PathBuf>,
    /// From `FLOTILLA_ETCD_PASSWORD`, never from the file.
    #[serde(skip)]
    pub etcd_password: Option<String>,
    pub tls: Option<TlsFiles>,
    /// Address for `/metrics` (plain HTTP, e.g. 127.0.0.1:9464).
    pub metrics_listen: Option<String>,
    /// `text` (default) or `json`.
    pub log_format: Option<flotilla_proto::telemetry::LogFormat>,
    #[serde(default)]
    pub insecure_dev: bool,
    pub lease_ttl_secs: Option<u64>,
    pub heartbeat_timeout_secs: Option<u64>,
    /// Most targets one plan may have (default 100,000).
    pub max_targets_per_plan: Option<usize>,
    /// Agent name → target globs it may serve (on top of its certificate).
    #[serde(default)]
    pub agents: BTreeMap<String, AgentEntry>,
    /// Operator name → roles (on top of its certificate's).
    #[serde(default)]
    pub operators: BTreeMap<String, OperatorEntry>,
    /// Agents and operators refused whatever their certificate says: `agent:NAME`, `operator:NAME`.
    #[serde(default)]
    pub deny: Vec<String>,
    /// The operator who submitted a plan may not approve its waves.
    #[serde(default)]
    pub approver_must_differ: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorEntry {
    pub roles: Vec<crate::identity::Role>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    pub targets: Vec<String>,
}

impl File {
    pub fn read(path: &Path) -> Result<File, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Who may do what, as the file says: the part a running coordinator takes again when the file changes.
    pub fn access(&self) -> Result<service::Access, String> {
        for who in &self.deny {
            let valid =
                who.strip_prefix("agent:").or_else(|| who.strip_prefix("operator:")).is_some_and(|n| !n.is_empty());
            if !valid {
                return Err(format!("deny entry `{who}` is not `agent:NAME` or `operator:NAME`"));
            }
        }
        Ok(service::Access {
            operator_roles: self.operators.iter().map(|(k, v)| (k.clone(), v.roles.clone())).collect(),
            agent_targets: self.agents.iter().map(|(k, v)| (k.clone(), v.targets.clone())).collect(),
            deny: self.deny.iter().cloned().collect(),
            approver_must_differ: self.approver_must_differ,
        })
    }

    /// How to reach etcd: TLS where the endpoints say `https://` (and only there), a user with its password.
    fn etcd_auth(&self) -> Result<crate::etcd::EtcdAuth, String> {
        if self.etcd.is_empty() && (self.etcd_tls.is_some() || self.etcd_user.is_some()) {
            return Err("etcd_tls and etcd_user need etcd endpoints (`etcd = [\"https://…:2379\"]`)".into());
        }
        for endpoint in &self.etcd {
            match (endpoint.starts_with("https://"), &self.etcd_tls) {
                (false, Some(_)) => {
                    return Err(format!("etcd endpoint `{endpoint}` is not https:// but [etcd_tls] is set"))
                }
                (true, None) => {
                    return Err(format!("etcd endpoint `{endpoint}` is https://: give [etcd_tls] ca (etcd's CA)"))
                }
                _ => {}
            }
        }
        if let Some(tls) = &self.etcd_tls {
            if tls.cert.is_some() != tls.key.is_some() {
                return Err("[etcd_tls] cert and key go together (a client certificate and its key)".into());
            }
        }
        let user = match (&self.etcd_user, &self.etcd_password_file, &self.etcd_password) {
            (None, None, _) => None,
            (None, Some(_), _) => return Err("etcd_password_file is set but etcd_user is not".into()),
            (Some(name), Some(path), _) => {
                let secret = flotilla_proto::process::read_secret(path, "etcd password file")?;
                let password = String::from_utf8(secret)
                    .map_err(|_| format!("the etcd password file {} is not UTF-8", path.display()))?;
                Some(crate::etcd::EtcdUser { name: name.clone(), password: password.trim_end().to_string() })
            }
            (Some(name), None, Some(password)) => {
                Some(crate::etcd::EtcdUser { name: name.clone(), password: password.clone() })
            }
            (Some(name), None, None) => {
                return Err(format!(
                "etcd_user `{name}` needs a password: etcd_password_file, or FLOTILLA_ETCD_PASSWORD in the environment"
            ))
            }
        };
        Ok(crate::etcd::EtcdAuth { tls: self.etcd_tls.clone(), user })
    }

    /// The config this file describes; `tls` must be set unless `insecure_dev`.
    pub fn into_config(self) -> Result<Config, String> {
        let access = self.access()?;
        let etcd_auth = self.etcd_auth()?;
        let tls = match (self.tls, self.insecure_dev) {
            (Some(_), true) => return Err("give either [tls] or insecure_dev, not both".into()),
            (None, false) => {
                return Err("TLS is required: give [tls] ca, cert and key (see `flotilla certs init`), or insecure_dev for a local trial".into())
            }
            (tls, _) => tls,
        };
        let mut service = service::Config::default();
        if let Some(ttl) = self.lease_ttl_secs {
            if ttl == 0 {
                return Err("lease_ttl_secs must be at least 1".into());
            }
            service.lease_ttl = Duration::from_secs(ttl);
        }
        if let Some(t) = self.heartbeat_timeout_secs {
            service.heartbeat_timeout = Duration::from_secs(t.max(1));
        }
        service.access = access;
        if let Some(most) = self.max_targets_per_plan {
            if most == 0 {
                return Err("max_targets_per_plan must be at least 1".into());
            }
            service.max_targets_per_plan = most;
        }
        let etcd_prefix = self.etcd_prefix.unwrap_or_else(|| DEFAULT_ETCD_PREFIX.into());
        if !(etcd_prefix.starts_with('/') && etcd_prefix.ends_with('/') && etcd_prefix.len() > 1) {
            return Err(format!("etcd_prefix `{etcd_prefix}` must start and end with `/`, e.g. /flotilla/locks/"));
        }
        Ok(Config {
            store: self.store.unwrap_or_else(|| "sqlite://flotilla-coordinator.db".into()),
            etcd: self.etcd,
            etcd_prefix,
            etcd_auth,
            tls,
            metrics_listen: self.metrics_listen,
            service,
            file: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_example_is_valid_and_tls_is_required() {
        let file: File = toml::from_str(include_str!("../../deploy/coordinator.toml")).unwrap();
        let config = file.into_config().unwrap();
        assert_eq!(config.etcd.len(), 3);
        assert_eq!(config.service.access.agent_targets["agent-eu-1"], vec!["shop-eu-*".to_string()]);
        assert_eq!(config.store_display(), "postgres://flotilla@pg.internal/flotilla");
        let bare: File = toml::from_str("store = \"sqlite://x.db\"").unwrap();
        assert!(bare.into_config().unwrap_err().contains("TLS is required"));
        assert!(toml::from_str::<File>("lisen = \"x\"").is_err(), "unknown keys are refused");
        assert_eq!(config.etcd_prefix, DEFAULT_ETCD_PREFIX);
        assert_eq!(config.service.max_targets_per_plan, 100_000, "the default");
        let small: File = toml::from_str("insecure_dev = true\nmax_targets_per_plan = 5000").unwrap();
        assert_eq!(small.into_config().unwrap().service.max_targets_per_plan, 5000);
        let zero: File = toml::from_str("insecure_dev = true\nmax_targets_per_plan = 0").unwrap();
        assert!(zero.into_config().unwrap_err().contains("at least 1"));
    }

    #[test]
    fn etcd_tls_goes_with_https_endpoints_and_a_user_needs_a_password() {
        let with = |text: &str| toml::from_str::<File>(&format!("insecure_dev = true\n{text}")).unwrap().into_config();
        let tls = "[etcd_tls]\nca = \"/ca.pem\"";
        let ok = with(&format!("etcd = [\"https://e:2379\"]\n{tls}")).unwrap();
        assert!(ok.etcd_auth.tls.is_some() && ok.etcd_auth.user.is_none());
        assert!(with(&format!("etcd = [\"http://e:2379\"]\n{tls}")).unwrap_err().contains("is not https://"));
        assert!(with("etcd = [\"https://e:2379\"]").unwrap_err().contains("give [etcd_tls] ca"));
        assert!(with(tls).unwrap_err().contains("need etcd endpoints"));
        let half = format!("etcd = [\"https://e:2379\"]\n{tls}\ncert = \"/c.pem\"");
        assert!(with(&half).unwrap_err().contains("cert and key go together"));
        let user = "etcd = [\"http://e:2379\"]\netcd_user = \"flotilla\"";
        assert!(with(user).unwrap_err().contains("needs a password"));

        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("etcd-password");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let from_file = format!("{user}\netcd_password_file = \"{}\"", secret.display());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(with(&from_file).unwrap_err().contains("may be read by group or others (mode 0644)"));
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = with(&from_file).unwrap();
        let user = config.etcd_auth.user.as_ref().expect("user");
        assert_eq!((user.name.as_str(), user.password.as_str()), ("flotilla", "s3cret"));
        assert!(!format!("{:?}", config.etcd_auth).contains("s3cret"), "the password is not in Debug output");
    }

    #[test]
    fn an_etcd_prefix_must_be_a_path() {
        let with = |prefix: &str| {
            let file: File = toml::from_str(&format!("insecure_dev = true\netcd_prefix = \"{prefix}\"")).unwrap();
            file.into_config()
        };
        assert_eq!(with("/fleet-eu/locks/").unwrap().etcd_prefix, "/fleet-eu/locks/");
        for bad in ["", "/", "fleet/", "/fleet"] {
            assert!(with(bad).unwrap_err().contains("must start and end with `/`"), "{bad}");
        }
    }
}
