//! Private servers for fault tests that kill them: a PostgreSQL, MariaDB, MongoDB or etcd of a test's own, on a free
//! loopback port with its own data directory and normal durability (fsync on), started from the binaries
//! `tests/servers.sh` installs. The server is this process's child, so `kill` is a real SIGKILL of the server
//! itself, and `restart` starts it again on the same port and data, as a supervisor would. Dropped, it is killed.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    Mariadb,
    Mongodb,
    Etcd,
}

pub struct Server {
    pub kind: Kind,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// MongoDB: the replica set was initiated (a restarted node must become primary again before it is used).
    initiated: bool,
    /// etcd: served over TLS with client certificates required, and users (see `start_etcd_secured`).
    secured: Option<Secured>,
}

/// An etcd that takes only TLS clients with a certificate from its CA, and authenticates users.
struct Secured {
    /// `flotilla certs init` output: ca.pem, coordinator.pem (etcd's server certificate), admin.pem (a client's).
    certs: PathBuf,
    /// Plain-HTTP /health and /metrics, for readiness.
    metrics_port: u16,
}

/// The etcd user a coordinator logs in as, allowed read-write under `/flotilla-test/` only.
pub const ETCD_USER: &str = "flotilla";
pub const ETCD_PASSWORD: &str = "fl0tilla-etcd-pass";

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// uid and gid of a system user (`postgres`, `mysql`).
fn user(name: &str) -> (u32, u32) {
    let id = |flag: &str| {
        let out = std::process::Command::new("id").arg(flag).arg(name).output().expect("id");
        String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().unwrap_or_else(|_| panic!("no user `{name}`"))
    };
    (id("-u"), id("-g"))
}

fn chown(path: &Path, owner: &str) {
    let status = std::process::Command::new("chown").arg("-R").arg(owner).arg(path).status().expect("chown");
    assert!(status.success(), "chown {owner} {}", path.display());
}

fn mongod() -> PathBuf {
    let tools = std::env::var_os("FLOTILLA_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/flotilla-test-tools"));
    tools.join("mongod")
}

impl Server {
    /// Initializes a data directory and starts the server; returns once it answers.
    pub async fn start(kind: Kind) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        // The server runs as its own user (PostgreSQL, MariaDB): let it through the temporary directory.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let mut server = Server { kind, port: free_port(), dir, child: None, initiated: false, secured: None };
        server.init();
        server.restart().await;
        if kind == Kind::Mongodb {
            server.initiate_replica_set().await;
            server.initiated = true;
        }
        server
    }

    /// An etcd served over TLS that requires client certificates from its own CA (`--client-cert-auth`), with
    /// authentication on: user `ETCD_USER` may read and write under `/flotilla-test/`, nothing else.
    pub async fn start_etcd_secured() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        crate::flotilla(&["certs", "init", "--out", certs.to_str().expect("utf-8")]).await.ok();
        let secured = Secured { certs, metrics_port: free_port() };
        let mut server =
            Server { kind: Kind::Etcd, port: free_port(), dir, child: None, initiated: false, secured: Some(secured) };
        server.init();
        server.restart().await;
        let role_prefix = "/flotilla-test/";
        for args in [
            vec!["user", "add", "root:root-pass"],
            vec!["user", "grant-role", "root", "root"],
            vec!["role", "add", ETCD_USER],
            vec!["role", "grant-permission", ETCD_USER, "--prefix=true", "readwrite", role_prefix],
            vec!["user", "add", &format!("{ETCD_USER}:{ETCD_PASSWORD}")],
            vec!["user", "grant-role", ETCD_USER, ETCD_USER],
            vec!["auth", "enable"],
        ] {
            server.etcdctl(&args);
        }
        server
    }

    /// etcdctl against a secured etcd, before `auth enable` (no user needed yet).
    fn etcdctl(&self, args: &[&str]) {
        let secured = self.secured.as_ref().expect("a secured etcd");
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=https://127.0.0.1:{}", self.port))
            .arg(format!("--cacert={}", secured.certs.join("ca.pem").display()))
            .arg(format!("--cert={}", secured.certs.join("admin.pem").display()))
            .arg(format!("--key={}", secured.certs.join("admin.key").display()))
            .args(args)
            .output()
            .expect("etcdctl");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "etcdctl {args:?}: {text}");
    }

    /// What a coordinator needs to use a secured etcd: its flags (CA, client certificate) and environment (the
    /// etcd user's password).
    pub fn etcd_client(&self) -> (Vec<String>, Vec<(String, String)>) {
        let secured = self.secured.as_ref().expect("a secured etcd");
        let file = |name: &str| secured.certs.join(name).display().to_string();
        let args = ["--etcd-ca", &file("ca.pem"), "--etcd-cert", &file("admin.pem"), "--etcd-key", &file("admin.key")];
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend(["--etcd-user".to_string(), ETCD_USER.to_string()]);
        (args, vec![("FLOTILLA_ETCD_PASSWORD".into(), ETCD_PASSWORD.into())])
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log file")
    }

    fn init(&self) {
        let data = self.data();
        match self.kind {
            Kind::Postgres => {
                std::fs::create_dir_all(&data).expect("mkdir");
                chown(&data, "postgres");
                let (uid, gid) = user("postgres");
                let out = std::process::Command::new(format!("{PG_BIN}/initdb"))
                    .args(["-D", data.to_str().expect("utf-8"), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
                    .args(["--locale=C.UTF-8", "--no-sync"])
                    .uid(uid)
                    .gid(gid)
                    .output()
                    .expect("initdb");
                assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
                let conf = format!(
                    "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nmax_connections = 50\n",
                    self.port,
                    data.display()
                );
                let mut text = std::fs::read_to_string(data.join("postgresql.conf")).expect("conf");
                text.push_str(&conf);
                std::fs::write(data.join("postgresql.conf"), text).expect("conf");
            }
            Kind::Mariadb => {
                let out = std::process::Command::new("mariadb-install-db")
                    .args([
                        "--no-defaults",
                        "--user=mysql",
                        "--auth-root-authentication-method=normal",
                        "--skip-test-db",
                    ])
                    .arg(format!("--datadir={}", data.display()))
                    .output()
                    .expect("mariadb-install-db");
                assert!(out.status.success(), "mariadb-install-db: {}", String::from_utf8_lossy(&out.stderr));
                chown(self.dir.path(), "mysql");
            }
            Kind::Mongodb | Kind::Etcd => std::fs::create_dir_all(&data).expect("mkdir"),
        }
    }

    /// Starts the server (again) on the same port and data; returns once it answers.
    pub async fn restart(&mut self) {
        let data = self.data();
        let mut cmd = match self.kind {
            Kind::Postgres => {
                let (uid, gid) = user("postgres");
                let mut cmd = Command::new(format!("{PG_BIN}/postgres"));
                cmd.arg("-D").arg(&data).uid(uid).gid(gid);
                cmd
            }
            Kind::Mariadb => {
                let mut cmd = Command::new("mariadbd");
                cmd.args(["--no-defaults", "--user=mysql", "--bind-address=127.0.0.1", "--skip-log-bin"])
                    .arg(format!("--datadir={}", data.display()))
                    .arg(format!("--socket={}", self.dir.path().join("sock").display()))
                    .arg(format!("--port={}", self.port));
                cmd
            }
            Kind::Mongodb => {
                let mut cmd = Command::new(mongod());
                cmd.arg("--dbpath")
                    .arg(&data)
                    .args(["--bind_ip", "127.0.0.1", "--replSet", "rs0", "--wiredTigerCacheSizeGB", "0.25"])
                    .args(["--nounixsocket", "--port", &self.port.to_string()]);
                cmd
            }
            Kind::Etcd => {
                let peer = free_port();
                let scheme = if self.secured.is_some() { "https" } else { "http" };
                let client = format!("{scheme}://127.0.0.1:{}", self.port);
                let peer_url = format!("http://127.0.0.1:{peer}");
                let mut cmd = Command::new("etcd");
                cmd.args(["--name", "fault", "--data-dir"])
                    .arg(&data)
                    .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                    .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                    .args(["--initial-cluster", &format!("fault={peer_url}")]);
                if let Some(secured) = &self.secured {
                    cmd.arg("--client-cert-auth")
                        .arg(format!("--trusted-ca-file={}", secured.certs.join("ca.pem").display()))
                        .arg(format!("--cert-file={}", secured.certs.join("coordinator.pem").display()))
                        .arg(format!("--key-file={}", secured.certs.join("coordinator.key").display()))
                        .arg(format!("--listen-metrics-urls=http://127.0.0.1:{}", secured.metrics_port));
                }
                cmd
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(self.log())
            .stderr(self.log())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e} (run tests/servers.sh start first)", self.kind));
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// SIGKILL, as a crash would; waits until the process is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill server");
        }
    }

    /// Where a client connects (a database for the SQL engines' and MongoDB's admin work).
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
            Kind::Mariadb => format!("mysql://root@127.0.0.1:{}/mysql", self.port),
            Kind::Mongodb => format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port),
            Kind::Etcd if self.secured.is_some() => format!("https://127.0.0.1:{}", self.port),
            Kind::Etcd => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// A database `name` on this server, created, and its URL.
    pub async fn database(&self, name: &str) -> String {
        match self.kind {
            Kind::Postgres | Kind::Mariadb => {
                let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&self.url()).await.expect("connect");
                sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str()).await.expect("create");
                let base = self.url();
                let cut = base.rfind('/').expect("path");
                format!("{}/{name}", &base[..cut])
            }
            Kind::Mongodb => format!("mongodb://127.0.0.1:{}/{name}?directConnection=true", self.port),
            Kind::Etcd => panic!("etcd has no databases"),
        }
    }

    async fn answers(&self) -> bool {
        match self.kind {
            Kind::Postgres | Kind::Mariadb => {
                crate::db::install_drivers();
                match <sqlx::AnyConnection as sqlx::Connection>::connect(&self.url()).await {
                    Ok(c) => {
                        let _ = sqlx::Connection::close(c).await;
                        true
                    }
                    Err(_) => false,
                }
            }
            Kind::Mongodb => {
                let Ok(client) =
                    mongodb::Client::with_uri_str(format!("{}&serverSelectionTimeoutMS=500", self.url())).await
                else {
                    return false;
                };
                let ok = client.database("admin").run_command(bson::doc! { "ping": 1 }).await.is_ok();
                client.shutdown().await;
                ok
            }
            Kind::Etcd => {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                // etcd's own health endpoint: `{"health":"true"}` once it serves (plain HTTP on its metrics port
                // when clients must use TLS).
                let port = self.secured.as_ref().map_or(self.port, |s| s.metrics_port);
                let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
                let mut answer = String::new();
                s.write_all(b"GET /health HTTP/1.0\r\n\r\n").await.is_ok()
                    && tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut answer)).await.is_ok()
                    && answer.contains("\"health\":\"true\"")
            }
        }
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.answers().await {
            let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "{:?} did not come up on port {}:\n{log}", self.kind, self.port);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.kind == Kind::Mongodb && self.initiated {
            self.wait_primary().await;
        }
    }

    async fn initiate_replica_set(&self) {
        let client = mongodb::Client::with_uri_str(self.url()).await.expect("mongo client");
        let config = bson::doc! { "_id": "rs0", "members": [{ "_id": 0, "host": format!("127.0.0.1:{}", self.port) }] };
        let _ = client.database("admin").run_command(bson::doc! { "replSetInitiate": config }).await;
        client.shutdown().await;
        self.wait_primary().await;
    }

    /// Transactions need a writable primary: after a start or a crash, wait until the node is one again.
    async fn wait_primary(&self) {
        let client = mongodb::Client::with_uri_str(self.url()).await.expect("mongo client");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let hello = client.database("admin").run_command(bson::doc! { "hello": 1 }).await;
            if hello.is_ok_and(|h| h.get_bool("isWritablePrimary").unwrap_or(false)) {
                break;
            }
            assert!(Instant::now() < deadline, "mongod on port {} did not become primary", self.port);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client.shutdown().await;
    }
}
