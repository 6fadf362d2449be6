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
}

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
        let mut server = Server { kind, port: free_port(), dir, child: None, initiated: false };
        server.init();
        server.restart().await;
        if kind == Kind::Mongodb {
            server.initiate_replica_set().await;
            server.initiated = true;
        }
        server
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
                let client = format!("http://127.0.0.1:{}", self.port);
                let peer_url = format!("http://127.0.0.1:{peer}");
                let mut cmd = Command::new("etcd");
                cmd.args(["--name", "fault", "--data-dir"])
                    .arg(&data)
                    .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                    .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                    .args(["--initial-cluster", &format!("fault={peer_url}")]);
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
                crate::install_drivers();
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
                // etcd's own health endpoint: `{"health":"true"}` once it serves.
                let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else { return false };
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
