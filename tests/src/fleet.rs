//! A real fleet for tests: `flotilla certs init`, a `flotilla-coordinator` process and `flotilla-agent` processes
//! over mTLS on loopback, each logging to a file in the fleet's directory. Processes are killed (SIGKILL) when
//! dropped, or on purpose with `kill_*`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::{binary, finish, Run};

/// Which store the coordinator keeps its plans in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

/// Instantiates async test functions `fn name(store: Store)` once per coordinator store, in modules named after
/// them, so the fleet's end-to-end tests run on both.
#[macro_export]
macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod sqlite_store { $( #[tokio::test(flavor = "multi_thread")] async fn $test() { super::$test($crate::fleet::Store::Sqlite).await } )* }
        mod postgres_store { $( #[tokio::test(flavor = "multi_thread")] async fn $test() { super::$test($crate::fleet::Store::Postgres).await } )* }
    };
}

/// A database an agent serves.
#[derive(Debug, Clone)]
pub struct FleetTarget {
    pub name: String,
    pub url: String,
    pub labels: Vec<(String, String)>,
    /// The body of the target's `[targets.throttle]` table.
    pub throttle: Option<String>,
}

impl FleetTarget {
    pub fn new(name: &str, url: &str, labels: &[(&str, &str)]) -> FleetTarget {
        FleetTarget {
            name: name.into(),
            url: url.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            throttle: None,
        }
    }
}

pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub port: u16,
    etcd: Option<String>,
    /// This fleet's locks in etcd, shared by its coordinators.
    etcd_prefix: String,
    lease_ttl: u64,
    /// The coordinator's store: a SQLite file in `dir` unless set (a PostgreSQL URL, say).
    pub store: Option<String>,
    /// A PostgreSQL store database this fleet made for itself, dropped with it.
    store_db: Option<crate::TestDb>,
    coordinator: Option<Child>,
    standby: Option<Child>,
    agents: BTreeMap<String, Child>,
    /// Environment for every process started from now on (e.g. OTEL_EXPORTER_OTLP_ENDPOINT).
    pub env: Vec<(String, String)>,
    /// TOML tables added to every agent's config from now on (e.g. `[connections]`).
    pub agent_config: String,
    /// Top-level TOML keys added to every agent's config from now on (e.g. `metrics_listen = "…"`).
    pub agent_settings: String,
    /// Flags added to the coordinator's command line from its next start on.
    pub coordinator_args: Vec<String>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

impl Fleet {
    /// Makes certificates for an operator `admin` and each `(agent, glob)`, and starts the coordinator.
    pub async fn start(agents: &[(&str, &str)], etcd: Option<String>, lease_ttl: u64) -> Fleet {
        Fleet::start_with(agents, etcd, lease_ttl, Vec::new()).await
    }

    /// `start`, with `env` set for every process.
    pub async fn start_with(
        agents: &[(&str, &str)],
        etcd: Option<String>,
        lease_ttl: u64,
        env: Vec<(String, String)>,
    ) -> Fleet {
        Fleet::launch(agents, etcd, lease_ttl, env, None).await
    }

    /// `start_with`, the coordinator started with `coordinator_args` too (e.g. `--config FILE`, etcd's TLS flags).
    pub async fn start_with_args(
        agents: &[(&str, &str)],
        etcd: Option<String>,
        lease_ttl: u64,
        env: Vec<(String, String)>,
        coordinator_args: Vec<String>,
    ) -> Fleet {
        let mut fleet = Fleet::prepare(agents, etcd, lease_ttl, env, None).await;
        fleet.coordinator_args = coordinator_args;
        fleet.start_coordinator().await;
        fleet
    }

    /// `start` on either store: the SQLite file (the embedded default) or a fresh PostgreSQL database.
    pub async fn start_on(store: Store, agents: &[(&str, &str)], etcd: Option<String>, lease_ttl: u64) -> Fleet {
        match store {
            Store::Sqlite => Fleet::start(agents, etcd, lease_ttl).await,
            Store::Postgres => {
                let db = crate::TestDb::new(crate::Postgres).await;
                let mut fleet = Fleet::start_on_store(agents, etcd, lease_ttl, &db.url).await;
                fleet.store_db = Some(db);
                fleet
            }
        }
    }

    /// `start`, with the coordinator's store at `store` (e.g. a PostgreSQL database).
    pub async fn start_on_store(agents: &[(&str, &str)], etcd: Option<String>, lease_ttl: u64, store: &str) -> Fleet {
        Fleet::launch(agents, etcd, lease_ttl, Vec::new(), Some(store.to_string())).await
    }

    /// `start_with`, the coordinator's store at `store` if given (the SQLite file otherwise).
    pub async fn start_with_store(
        agents: &[(&str, &str)],
        etcd: Option<String>,
        lease_ttl: u64,
        env: Vec<(String, String)>,
        store: Option<&str>,
    ) -> Fleet {
        Fleet::launch(agents, etcd, lease_ttl, env, store.map(str::to_string)).await
    }

    async fn launch(
        agents: &[(&str, &str)],
        etcd: Option<String>,
        lease_ttl: u64,
        env: Vec<(String, String)>,
        store: Option<String>,
    ) -> Fleet {
        let mut fleet = Fleet::prepare(agents, etcd, lease_ttl, env, store).await;
        fleet.start_coordinator().await;
        fleet
    }

    /// Certificates and the fleet's settings; nothing started (set `coordinator_args`, then `start_coordinator`).
    pub async fn prepare(
        agents: &[(&str, &str)],
        etcd: Option<String>,
        lease_ttl: u64,
        env: Vec<(String, String)>,
        store: Option<String>,
    ) -> Fleet {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        let mut args = vec!["certs".to_string(), "init".into(), "--out".into(), certs.display().to_string()];
        for (name, glob) in agents {
            args.push("--agent".into());
            args.push(format!("{name}:{glob}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::flotilla(&args).await.ok();
        Fleet {
            dir,
            port: free_port(),
            etcd,
            etcd_prefix: format!("/flotilla-test/{:016x}/", rand::random::<u64>()),
            lease_ttl,
            store,
            store_db: None,
            coordinator: None,
            standby: None,
            agents: BTreeMap::new(),
            env,
            agent_config: String::new(),
            agent_settings: String::new(),
            coordinator_args: Vec::new(),
        }
    }

    /// Stops every process with SIGTERM (an ordered shutdown) and waits for each to exit.
    pub async fn stop(&mut self) {
        let mut children: Vec<Child> = std::mem::take(&mut self.agents).into_values().collect();
        children.extend(self.coordinator.take());
        children.extend(self.standby.take());
        for mut child in children {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            }
            let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
        }
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .expect("log file")
    }

    /// Starts (or restarts) the coordinator on the same port and store; returns once it accepts connections.
    pub async fn start_coordinator(&mut self) {
        let certs = self.certs();
        let mut cmd = Command::new(binary("flotilla-coordinator"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--store")
            .arg(
                self.store
                    .clone()
                    .unwrap_or_else(|| format!("sqlite://{}", self.dir.path().join("store.db").display())),
            )
            .arg("--ca")
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join("coordinator.pem"))
            .arg("--key")
            .arg(certs.join("coordinator.key"))
            .arg("--lease-ttl-secs")
            .arg(self.lease_ttl.to_string());
        if let Some(etcd) = &self.etcd {
            // Tests run side by side on one etcd, often with the same target names: each fleet has its own locks.
            cmd.arg("--etcd").arg(etcd).arg("--etcd-prefix").arg(&self.etcd_prefix);
        }
        cmd.args(&self.coordinator_args);
        let child = cmd
            .env("RUST_LOG", "info,sqlx=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(self.log("coordinator"))
            .stderr(self.log("coordinator"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn coordinator");
        self.coordinator = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < deadline, "the coordinator did not start:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a second coordinator process on the same store and etcd (a standby), on a port of its own, which it
    /// returns. It is killed with the fleet.
    pub async fn start_standby(&mut self) -> u16 {
        let port = free_port();
        let primary = self.coordinator.take();
        let primary_port = std::mem::replace(&mut self.port, port);
        self.start_coordinator().await;
        self.standby = self.coordinator.take();
        self.coordinator = primary;
        self.port = primary_port;
        port
    }

    /// SIGKILL, as a crash would.
    pub async fn kill_coordinator(&mut self) {
        if let Some(mut child) = self.coordinator.take() {
            child.kill().await.expect("kill coordinator");
        }
    }

    /// Starts agent `name` serving `targets` (its certificate must exist: see `start`).
    pub async fn start_agent(&mut self, name: &str, targets: &[FleetTarget]) {
        self.start_agent_via(name, targets, self.port).await
    }

    /// `start_agent`, reaching the coordinator at `127.0.0.1:port` (a proxy in front of it, say).
    pub async fn start_agent_via(&mut self, name: &str, targets: &[FleetTarget], port: u16) {
        let certs = self.certs();
        let mut config = format!(
            "name = \"{name}\"\ncoordinator = \"https://127.0.0.1:{}\"\nheartbeat_secs = 1\n{}\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            port,
            self.agent_settings,
            certs.join("ca.pem").display(),
            certs.join(format!("{name}.pem")).display(),
            certs.join(format!("{name}.key")).display()
        );
        config.push_str(&self.agent_config);
        for t in targets {
            let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("{k} = \"{v}\"")).collect();
            config.push_str(&format!(
                "[[targets]]\nname = \"{}\"\nurl = \"{}\"\nlabels = {{ {} }}\n",
                t.name,
                t.url,
                labels.join(", ")
            ));
            if let Some(throttle) = &t.throttle {
                config.push_str(&format!("[targets.throttle]\n{throttle}\n"));
            }
        }
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, config).expect("agent config");
        let child = Command::new(binary("flotilla-agent"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info,sqlx=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(self.log(name))
            .stderr(self.log(name))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn agent");
        self.agents.insert(name.to_string(), child);
    }

    pub async fn kill_agent(&mut self, name: &str) {
        if let Some(mut child) = self.agents.remove(name) {
            child.kill().await.expect("kill agent");
        }
    }

    /// Hands over agent `name`'s process: the fleet forgets it (a new one may start under the name), and dropping
    /// the child kills it.
    pub fn take_agent(&mut self, name: &str) -> Option<Child> {
        self.agents.remove(name)
    }

    /// SIGTERM to agent `name` (an ordered shutdown); returns its exit code once it has exited.
    pub async fn stop_agent(&mut self, name: &str) -> Option<i32> {
        let mut child = self.agents.remove(name)?;
        let pid = child.id()?;
        let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        let status = tokio::time::timeout(Duration::from_secs(90), child.wait()).await.ok()?.ok()?;
        status.code()
    }

    /// Process ids of the coordinator and each agent, by name.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let coordinator = self.coordinator.as_ref().and_then(Child::id).map(|pid| ("coordinator".to_string(), pid));
        coordinator.into_iter().chain(self.agents.iter().filter_map(|(n, c)| Some((n.clone(), c.id()?)))).collect()
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            paths.sort();
            for p in paths.iter().filter(|p| p.extension().is_some_and(|e| e == "log")) {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                out.push_str(&format!("==== {} ====\n", p.display()));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }

    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// `flotilla ARGS` as operator `operator`, against this fleet.
    pub async fn cli_as(&self, operator: &str, args: &[&str]) -> Run {
        let child = Command::new(binary("flotilla"))
            .args(args)
            .env("FLOTILLA_COORDINATOR", format!("https://127.0.0.1:{}", self.port))
            .env("FLOTILLA_CERTS", self.certs())
            .env("FLOTILLA_OPERATOR", operator)
            .env_remove("FLOTILLA_DB_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn flotilla");
        finish(child).await
    }

    /// A gRPC channel to the coordinator presenting `name`'s certificate (`admin` or an agent's), for raw RPCs.
    pub async fn channel_as(&self, name: &str) -> tonic::transport::Channel {
        let certs = self.certs();
        let read = |file: String| std::fs::read(certs.join(file)).expect("certificate file");
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem".into())))
            .identity(tonic::transport::Identity::from_pem(read(format!("{name}.pem")), read(format!("{name}.key"))));
        tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", self.port))
            .expect("endpoint")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect")
    }

    /// The ids of the rollback plans of plan `id`.
    pub async fn rollbacks_of(&self, id: &str) -> Vec<String> {
        let plans = self.cli(&["--json", "plan", "list"]).await.ok().json();
        plans
            .as_array()
            .map(|a| a.iter().filter(|p| p["rollback_of"] == id).filter_map(|p| p["id"].as_str()).map(str::to_string))
            .into_iter()
            .flatten()
            .collect()
    }

    pub async fn cli(&self, args: &[&str]) -> Run {
        self.cli_as("admin", args).await
    }

    /// `plan show --json`.
    pub async fn plan(&self, id: &str) -> serde_json::Value {
        let run = self.cli(&["--json", "plan", "show", id]).await;
        assert_eq!(run.code, 0, "plan show: {run:#?}\n{}", self.logs());
        run.json()
    }

    /// Waits until `plan show` satisfies `done`.
    pub async fn wait_plan(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let plan = self.plan(id).await;
            if done(&plan) {
                return plan;
            }
            assert!(Instant::now() < deadline, "plan {id} never became {what}: {plan:#}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn wait_state(&self, id: &str, state: &str) -> serde_json::Value {
        self.wait_plan(id, state, |p| p["state"] == state).await
    }

    /// Waits until the coordinator knows `n` targets and their versions, and every agent is connected (its
    /// assignment stream open: a plan created earlier could skip an agent whose stream is still opening).
    pub async fn wait_targets(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let run = self.cli(&["--json", "fleet", "status"]).await;
            let known = run.code <= 1
                && run
                    .json()
                    .as_array()
                    .is_some_and(|a| a.len() >= n && a.iter().all(|t| !t["applied_version"].is_null()));
            if known {
                let agents = self.cli(&["--json", "agents"]).await;
                let connected = agents.code == 0
                    && agents.json().as_array().is_some_and(|a| a.iter().all(|x| x["connected"] == true));
                if connected {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "only some targets registered: {run:#?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `plan create --json ARGS`; returns the plan id.
    pub async fn create(&self, dir: &Path, extra: &[&str]) -> String {
        let dir = dir.to_str().expect("utf-8");
        let mut args = vec!["--json", "plan", "create", "--dir", dir];
        args.extend_from_slice(extra);
        let run = self.cli(&args).await;
        assert_eq!(run.code, 0, "plan create: {run:#?}\n{}", self.logs());
        run.json()["id"].as_str().expect("plan id").to_string()
    }
}

/// The steps of a `plan show --json`, by target.
pub fn steps(plan: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    plan["steps"]
        .as_array()
        .map(|a| a.iter().map(|s| (s["target"].as_str().unwrap_or_default().to_string(), s.clone())).collect())
        .unwrap_or_default()
}

/// How many steps are in `state`.
pub fn count(plan: &serde_json::Value, state: &str) -> usize {
    plan["steps"].as_array().map(|a| a.iter().filter(|s| s["state"] == state).count()).unwrap_or(0)
}
