//! The agent's TOML config: the coordinator, the agent's certificates, and the targets it serves. Connection URLs
//! never leave the agent; they can be given directly, read from a file, or from an environment variable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flotilla_core::Engine;
use serde::Deserialize;

pub use flotilla_proto::process::TlsFiles;

use crate::driver::redact;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's name. With TLS, the coordinator knows the agent by its certificate and this must match it.
    pub name: String,
    /// `https://host:port` (or `http://` with `insecure_dev`).
    pub coordinator: String,
    pub tls: Option<TlsFiles>,
    #[serde(default)]
    pub insecure_dev: bool,
    /// Seconds between heartbeats.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    /// Warm connections kept between steps and checks.
    #[serde(default)]
    pub connections: ConnectionsConfig,
    /// Address for Prometheus metrics (`/metrics`, plain HTTP), e.g. 127.0.0.1:9465; none by default.
    pub metrics_listen: Option<String>,
    /// `text` (default) or `json`.
    #[serde(default)]
    pub log_format: flotilla_proto::telemetry::LogFormat,
    /// Seconds between re-reads of every target's history and schema (the census).
    #[serde(default = "default_refresh")]
    pub refresh_secs: u64,
    pub targets: Vec<TargetConfig>,
}

fn default_heartbeat() -> u64 {
    3
}

fn default_refresh() -> u64 {
    60
}

/// `[connections]`: how many idle database connections the agent keeps (one per target at most), and for how
/// long. A kept connection makes the next step, check or history read of its target skip the connect (on
/// PostgreSQL a new server process each); each counts against its server's connection limit, so keep
/// `max_idle` below what the servers allow besides the applications. An idle PostgreSQL connection is not free
/// for its server either: every DDL there makes each backend catch up (docs/benchmarks.md, "What 1,000 warm
/// connections cost the database server").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    pub max_idle: usize,
    pub idle_secs: u64,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig { max_idle: 64, idle_secs: 30 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    /// Defaults to the URL's scheme.
    pub engine: Option<Engine>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub url: Option<String>,
    pub url_file: Option<PathBuf>,
    pub url_env: Option<String>,
    /// Health checks that hold each migration and backfill batch on this target while one fails.
    pub throttle: Option<ThrottleConfig>,
}

/// `[targets.throttle]`: hold each migration and each backfill batch while the target is unhealthy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// PostgreSQL: while any replica of this primary has more than this many bytes of WAL still to replay
    /// (`pg_stat_replication`).
    pub max_replica_lag_bytes: Option<u64>,
    /// MySQL and MariaDB: while the replica at `replica_url` is more than this many seconds behind (its
    /// `SHOW SLAVE STATUS`), or its SQL thread is stopped.
    pub max_replica_lag_secs: Option<u64>,
    pub replica_url: Option<String>,
    /// Any SQL engine: a query returning one number, held while it is above `max` (e.g. MySQL's replica lag read
    /// through a federated view, a queue depth, active sessions).
    pub query: Option<String>,
    pub max: Option<f64>,
    /// Longest a step is held before it fails (seconds, default 600).
    #[serde(default = "default_max_wait")]
    pub max_wait_secs: u64,
    /// How often the checks are asked again while they fail (milliseconds, default 1000).
    #[serde(default = "default_poll")]
    pub poll_ms: u64,
}

fn default_max_wait() -> u64 {
    600
}

fn default_poll() -> u64 {
    1000
}

/// A target ready to serve: its URL resolved.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub engine: Engine,
    pub labels: BTreeMap<String, String>,
    pub url: String,
    pub throttle: Option<crate::executor::Throttle>,
}

impl Target {
    /// The database server the target lives on, for `--max-per-host`: its `host` label, else its URL's host and
    /// port (the first host of a MongoDB seed list; the engine's default port when the URL has none), else (SQLite)
    /// its file.
    pub fn host(&self) -> String {
        if let Some(host) = self.labels.get("host") {
            return host.clone();
        }
        if self.engine == Engine::Sqlite {
            return self.url.split('?').next().unwrap_or(&self.url).to_string();
        }
        let rest = self.url.split_once("://").map_or(self.url.as_str(), |(_, rest)| rest);
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        let hosts = authority.rsplit_once('@').map_or(authority, |(_, hosts)| hosts);
        let first = hosts.split(',').next().unwrap_or(hosts);
        let has_port =
            first.rsplit_once(':').is_some_and(|(_, p)| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        if has_port {
            return first.to_string();
        }
        let port = match self.engine {
            Engine::Postgres => 5432,
            Engine::Mysql => 3306,
            Engine::Mongodb => 27017,
            Engine::Sqlite => 0,
        };
        format!("{first}:{port}")
    }
}

#[cfg(test)]
#[test]
fn a_targets_host_is_its_label_else_its_servers_address() {
    let t = |engine, url: &str, host: Option<&str>| Target {
        name: "t".into(),
        engine,
        labels: host.map(|h| [("host".to_string(), h.to_string())].into()).unwrap_or_default(),
        url: url.into(),
        throttle: None,
    };
    assert_eq!(
        t(Engine::Postgres, "postgres://u:p@db1.internal:6432/shop?sslmode=require", None).host(),
        "db1.internal:6432"
    );
    assert_eq!(t(Engine::Postgres, "postgres://u:p@db1.internal/shop", None).host(), "db1.internal:5432");
    assert_eq!(t(Engine::Mysql, "mysql://root@[::1]:3307/x", None).host(), "[::1]:3307");
    assert_eq!(t(Engine::Mongodb, "mongodb://a:1,b:2/db?replicaSet=rs", None).host(), "a:1");
    assert_eq!(t(Engine::Sqlite, "sqlite:///var/db/t.db?mode=rwc", None).host(), "sqlite:///var/db/t.db");
    assert_eq!(t(Engine::Postgres, "postgres://db1/x", Some("rack-7")).host(), "rack-7");
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("engine", &self.engine)
            .field("url", &redact(&self.url))
            .finish()
    }
}

impl AgentConfig {
    pub fn read(path: &Path) -> Result<AgentConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let config: AgentConfig = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        config.check().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// Everything that can be checked before connecting anywhere.
    pub fn check(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("`name` is empty".into());
        }
        match (&self.tls, self.insecure_dev) {
            (Some(_), true) => return Err("give either [tls] or insecure_dev, not both".into()),
            (None, false) => {
                return Err("TLS is required: give [tls] ca, cert and key (see `flotilla certs init`), or insecure_dev for a local trial".into())
            }
            _ => {}
        }
        let scheme_ok = if self.insecure_dev {
            self.coordinator.starts_with("http://")
        } else {
            self.coordinator.starts_with("https://")
        };
        if !scheme_ok {
            return Err(format!(
                "coordinator `{}` must start with {}",
                self.coordinator,
                if self.insecure_dev { "http:// (insecure_dev)" } else { "https://" }
            ));
        }
        if self.insecure_dev {
            let authority = self.coordinator.trim_start_matches("http://").split('/').next().unwrap_or_default();
            if !flotilla_proto::process::is_loopback(authority) {
                return Err(format!(
                    "insecure_dev talks plaintext only to a coordinator on this machine (127.0.0.1, ::1, localhost), \
                     not {}: use [tls] for a coordinator elsewhere",
                    self.coordinator
                ));
            }
        }
        if self.targets.is_empty() {
            return Err("no [[targets]]".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.targets {
            if !seen.insert(&t.name) {
                return Err(format!("target `{}` is listed twice", t.name));
            }
            let sources = [t.url.is_some(), t.url_file.is_some(), t.url_env.is_some()].iter().filter(|b| **b).count();
            if sources != 1 {
                return Err(format!("target `{}` needs exactly one of url, url_file, url_env", t.name));
            }
        }
        Ok(())
    }

    /// Resolves every target's URL (reading files and the environment) and engine.
    pub fn resolve(&self) -> Result<Vec<Target>, String> {
        self.targets.iter().map(resolve_target).collect()
    }
}

fn resolve_target(t: &TargetConfig) -> Result<Target, String> {
    let url = if let Some(url) = &t.url {
        url.clone()
    } else if let Some(path) = &t.url_file {
        std::fs::read_to_string(path)
            .map_err(|e| format!("target `{}`: cannot read url_file {}: {e}", t.name, path.display()))?
            .trim()
            .to_string()
    } else if let Some(var) = &t.url_env {
        std::env::var(var).map_err(|_| format!("target `{}`: environment variable {var} is not set", t.name))?
    } else {
        return Err(format!("target `{}` has no URL", t.name));
    };
    let from_url = Engine::from_url(&url).ok_or_else(|| {
        format!("target `{}`: `{}` is not a postgres://, mysql://, sqlite:// or mongodb:// URL", t.name, redact(&url))
    })?;
    if let Some(engine) = t.engine {
        if engine != from_url {
            return Err(format!("target `{}` says engine {engine} but its URL is {from_url}", t.name));
        }
    }
    let throttle = t.throttle.as_ref().map(|c| throttle(&t.name, from_url, c)).transpose()?;
    Ok(Target { name: t.name.clone(), engine: from_url, labels: t.labels.clone(), url, throttle })
}

fn throttle(target: &str, engine: Engine, c: &ThrottleConfig) -> Result<crate::executor::Throttle, String> {
    use crate::executor::HealthCheck;
    let bad = |why: &str| Err(format!("target `{target}`: [targets.throttle] {why}"));
    let mut checks = Vec::new();
    if let Some(max) = c.max_replica_lag_bytes {
        if engine != Engine::Postgres {
            return bad("max_replica_lag_bytes reads pg_stat_replication: PostgreSQL targets only (use query and max)");
        }
        checks.push(HealthCheck::postgres_replica_lag_bytes(max));
    }
    match (c.max_replica_lag_secs, &c.replica_url) {
        (Some(_), _) if engine != Engine::Mysql => {
            return bad("max_replica_lag_secs reads SHOW SLAVE STATUS: MySQL and MariaDB targets only (PostgreSQL: max_replica_lag_bytes)")
        }
        (Some(max), Some(url)) => checks.push(HealthCheck::mysql_replica_lag_secs(url, max)),
        (Some(_), None) => return bad("max_replica_lag_secs needs replica_url, the replica to ask"),
        (None, Some(_)) => return bad("replica_url is only for max_replica_lag_secs"),
        (None, None) => {}
    }
    match (&c.query, c.max) {
        (Some(_), _) | (_, Some(_)) if engine == Engine::Mongodb => return bad("query runs on SQL engines only"),
        (Some(sql), Some(max)) => {
            checks.push(HealthCheck { name: format!("`{sql}`"), sql: sql.clone(), column: None, on: None, max })
        }
        (Some(_), None) => return bad("query needs max"),
        (None, Some(_)) => return bad("max needs query"),
        (None, None) => {}
    }
    if checks.is_empty() {
        return bad("sets no check: give max_replica_lag_bytes, or query and max");
    }
    if c.poll_ms == 0 {
        return bad("poll_ms must be at least 1");
    }
    Ok(crate::executor::Throttle {
        checks,
        max_wait: std::time::Duration::from_secs(c.max_wait_secs),
        poll: std::time::Duration::from_millis(c.poll_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_names_what_is_wrong_with_it() {
        let with = |engine: &str, url: &str, throttle: &str| {
            let text = format!(
                "name = \"a\"\ncoordinator = \"http://127.0.0.1:1\"\ninsecure_dev = true\n[[targets]]\nname = \"t\"\nurl = \"{url}\"\n{engine}\n[targets.throttle]\n{throttle}\n"
            );
            parse(&text).and_then(|c| c.resolve())
        };
        let pg = "postgres://db/x";
        let ok = with("", pg, "max_replica_lag_bytes = 1000\nquery = \"SELECT 1\"\nmax = 2").expect("valid");
        let throttle = ok[0].throttle.as_ref().expect("throttle");
        assert_eq!(throttle.checks.len(), 2);
        assert_eq!((throttle.max_wait.as_secs(), throttle.poll.as_millis()), (600, 1000), "defaults");
        for (url, body, expected) in [
            ("mysql://db/x", "max_replica_lag_bytes = 1", "PostgreSQL targets only"),
            (pg, "query = \"SELECT 1\"", "query needs max"),
            (pg, "max = 3", "max needs query"),
            (pg, "max_wait_secs = 3", "sets no check"),
            ("mongodb://db/x", "query = \"x\"\nmax = 1", "SQL engines only"),
            (pg, "max_replica_lag_bytes = 1\npoll_ms = 0", "poll_ms"),
            (pg, "max_replica_lag_secs = 3\nreplica_url = \"postgres://r/x\"", "MySQL and MariaDB targets only"),
            ("mysql://db/x", "max_replica_lag_secs = 3", "needs replica_url"),
            ("mysql://db/x", "replica_url = \"mysql://r/x\"\nmax_replica_lag_bytes = 1", "PostgreSQL targets only"),
        ] {
            let e = with("", url, body).err().unwrap_or_default();
            assert!(e.contains(expected) && e.contains("target `t`"), "{body}: {e}");
        }
        assert!(with("", pg, "max_lag = 1").err().unwrap_or_default().contains("unknown field"));
    }

    fn parse(text: &str) -> Result<AgentConfig, String> {
        let c: AgentConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    #[test]
    fn the_deploy_example_is_valid() {
        let c = parse(include_str!("../../../deploy/agent.toml")).unwrap();
        assert_eq!(c.targets.len(), 3);
    }

    #[test]
    fn configs_are_checked() {
        let ok = r#"
            name = "a1"
            coordinator = "http://127.0.0.1:7443"
            insecure_dev = true
            [[targets]]
            name = "db1"
            url_env = "FLOTILLA_TEST_UNSET_VAR"
            labels = { env = "prod" }
        "#;
        let c = parse(ok).unwrap();
        assert!(c.resolve().unwrap_err().contains("FLOTILLA_TEST_UNSET_VAR is not set"));
        assert!(parse(&ok.replace("http://", "https://")).unwrap_err().contains("http://"));
        assert!(parse(&ok.replace("insecure_dev = true", "")).unwrap_err().contains("TLS is required"));
        assert!(parse(&ok.replace("url_env", "url = \"sqlite://x\"\nurl_env")).unwrap_err().contains("exactly one"));
        assert!(parse(&ok.replace("labels", "lables")).is_err(), "unknown keys are refused");
        let remote = parse(&ok.replace("127.0.0.1", "10.1.2.3")).unwrap_err();
        assert!(remote.contains("only to a coordinator on this machine"), "{remote}");
    }
}
