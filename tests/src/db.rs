//! A fresh database per test on the test servers, and snapshots of its catalog read independently of Flotilla's
//! own code.

use std::sync::Once;

use futures_util::TryStreamExt;
use sqlx::{AnyConnection, Connection, Row};

use super::*;

pub(crate) fn install_drivers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(sqlx::any::install_default_drivers);
}

/// A fresh, empty database on one engine, for one test.
pub struct TestDb {
    pub engine: Engine,
    pub url: String,
    pub name: String,
    /// The server's admin URL it was created through (dropped through it too).
    server: String,
    _dir: Option<tempfile::TempDir>,
}

/// Databases are dropped when their test is done, so runs do not pile them up on the test servers' disk (thousands
/// of PostgreSQL databases filled a disk once). Best effort, bounded: what a killed run leaves behind is swept by
/// `tests/servers.sh start`.
impl Drop for TestDb {
    fn drop(&mut self) {
        if self.engine == Sqlite || self.name.is_empty() {
            return;
        }
        let (engine, name, server) = (self.engine, self.name.clone(), self.server.clone());
        // Drop cannot await, and may run inside a runtime: drop from a thread with a runtime of its own.
        let dropping = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async {
                let dropped = TestDb::drop_database(engine, &server, &name);
                let _ = tokio::time::timeout(Duration::from_secs(10), dropped).await;
            });
        });
        let _ = dropping.join();
    }
}

impl TestDb {
    pub async fn new(engine: Engine) -> TestDb {
        let server = if engine == Sqlite { String::new() } else { server_url(engine) };
        TestDb::new_on(engine, &server).await
    }

    /// A fresh database on the server at admin URL `base` (another than the test servers: the benchmarks' durable
    /// ones, say).
    pub async fn new_on(engine: Engine, base: &str) -> TestDb {
        install_drivers();
        let name = format!("t_{}", rand::random::<u64>() % 1_000_000_000_000);
        let server = base.to_string();
        match engine {
            Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                TestDb { engine, url, name, server, _dir: Some(dir) }
            }
            Mongodb => {
                let url = base.replacen("/?", &format!("/{name}?"), 1);
                TestDb { engine, url, name, server, _dir: None }
            }
            Postgres | Mysql => {
                let mut admin = AnyConnection::connect(base).await.unwrap_or_else(|e| panic!("connect {base}: {e}"));
                sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("create database");
                let _ = admin.close().await;
                let cut = base.rfind('/').expect("URL has a path");
                TestDb { engine, url: format!("{}/{name}", &base[..cut]), name, server, _dir: None }
            }
        }
    }

    /// A database that lives elsewhere (on a private server of a fault test, say), for the same checks; it is not
    /// dropped with this value.
    pub fn on(engine: Engine, url: &str) -> TestDb {
        install_drivers();
        TestDb { engine, url: url.to_string(), name: String::new(), server: String::new(), _dir: None }
    }

    /// Drops the database (see `Drop`).
    async fn drop_database(engine: Engine, base: &str, name: &str) {
        match engine {
            Sqlite => {}
            Mongodb => {
                if let Ok(client) = mongodb::Client::with_uri_str(base).await {
                    let _ = client.database(name).drop().await;
                    client.shutdown().await;
                }
            }
            Postgres | Mysql => {
                let Ok(mut admin) = AnyConnection::connect(base).await else { return };
                // PostgreSQL: FORCE ends sessions a test left behind (an agent process still connected, say).
                let force = if engine == Postgres { " WITH (FORCE)" } else { "" };
                let _ = sqlx::Executor::execute(&mut admin, format!("DROP DATABASE IF EXISTS {name}{force}").as_str())
                    .await;
                let _ = admin.close().await;
            }
        }
    }

    /// Runs SQL (or, on MongoDB, one JSON command) directly, bypassing Flotilla.
    pub async fn exec(&self, statement: &str) {
        match self.engine {
            Mongodb => {
                let doc: bson::Document = serde_json::from_str::<serde_json::Value>(statement)
                    .ok()
                    .and_then(|v| bson::to_document(&v).ok())
                    .expect("a JSON command");
                self.mongo().await.run_command(doc).await.expect("mongo command");
            }
            _ => {
                let mut conn = self.sql().await;
                sqlx::Executor::execute(&mut conn, statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
                let _ = conn.close().await;
            }
        }
    }

    pub async fn sql(&self) -> AnyConnection {
        install_drivers();
        let url = if self.engine == Sqlite { format!("{}?mode=rwc", self.url) } else { self.url.clone() };
        AnyConnection::connect(&url).await.unwrap_or_else(|e| panic!("connect {}: {e}", self.url))
    }

    pub async fn mongo(&self) -> mongodb::Database {
        let client = mongodb::Client::with_uri_str(&self.url).await.expect("mongo client");
        client.default_database().unwrap_or_else(|| client.database(&self.name))
    }

    /// Everything in the schema except Flotilla's own tables, as sorted lines. Read with plain catalog queries.
    pub async fn catalog(&self) -> Vec<String> {
        let query = match self.engine {
            Postgres => {
                "SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || coalesce(column_default, '')
                   FROM information_schema.columns WHERE table_schema = 'public' AND table_name NOT LIKE 'flotilla%'
                 UNION ALL SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename NOT LIKE 'flotilla%'
                 UNION ALL SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
                   FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text NOT LIKE 'flotilla%'
                 UNION ALL SELECT 'relation ' || relname || ' ' || relkind::text FROM pg_class
                   WHERE relnamespace = 'public'::regnamespace AND relname NOT LIKE 'flotilla%'
                 ORDER BY 1"
            }
            Mysql => {
                "SELECT CAST(CONCAT('column ', table_name, '.', column_name, ' ', column_type, ' ', is_nullable, ' ', coalesce(column_default, '')) AS CHAR(2000))
                   FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name NOT LIKE 'flotilla%'
                 UNION ALL SELECT CONCAT('index ', table_name, '.', index_name, ' ', seq_in_index, ' ', column_name, ' ', non_unique)
                   FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name NOT LIKE 'flotilla%'
                 UNION ALL SELECT CONCAT('constraint ', table_name, '.', constraint_name, ' ', constraint_type)
                   FROM information_schema.table_constraints WHERE table_schema = DATABASE() AND table_name NOT LIKE 'flotilla%'
                 UNION ALL SELECT CONCAT('table ', table_name, ' ', table_type) FROM information_schema.tables
                   WHERE table_schema = DATABASE() AND table_name NOT LIKE 'flotilla%'
                 ORDER BY 1"
            }
            Sqlite => {
                "SELECT type || ' ' || name || ' ' || coalesce(sql, '') FROM sqlite_master
                 WHERE name NOT LIKE 'flotilla%' AND name NOT LIKE 'sqlite%' ORDER BY 1"
            }
            Mongodb => return self.mongo_catalog().await,
        };
        let mut conn = self.sql().await;
        let rows = sqlx::query(query).fetch_all(&mut conn).await.expect("catalog query");
        let _ = conn.close().await;
        rows.iter().map(|r| r.get::<String, _>(0)).collect()
    }

    async fn mongo_catalog(&self) -> Vec<String> {
        let db = self.mongo().await;
        let mut out = Vec::new();
        let specs: Vec<_> = db.list_collections().await.expect("list").try_collect().await.expect("list");
        for spec in specs {
            if spec.name.starts_with("flotilla") {
                continue;
            }
            out.push(format!("collection {} {:?}", spec.name, spec.options.validator));
            let coll = db.collection::<bson::Document>(&spec.name);
            let indexes: Vec<_> = coll.list_indexes().await.expect("indexes").try_collect().await.expect("indexes");
            for i in indexes {
                out.push(format!(
                    "index {} {} {:?} {:?}",
                    spec.name,
                    i.keys,
                    i.options.as_ref().and_then(|o| o.unique),
                    i.options.as_ref().and_then(|o| o.partial_filter_expression.clone())
                ));
            }
        }
        out.sort();
        out
    }

    /// Rows in the history table, read directly, by version: (version, state, statements_done).
    pub async fn history(&self) -> Vec<(u128, String, i64)> {
        match self.engine {
            Mongodb => {
                let coll = self.mongo().await.collection::<bson::Document>("flotilla_schema_history");
                let docs: Vec<bson::Document> = coll
                    .find(bson::doc! {})
                    .sort(bson::doc! {"_id": 1})
                    .await
                    .expect("find")
                    .try_collect()
                    .await
                    .expect("find");
                let mut rows: Vec<(u128, String, i64)> = docs
                    .iter()
                    .map(|d| {
                        let version = match d.get("_id").expect("_id") {
                            bson::Bson::Int64(n) => u128::try_from(*n).expect("version"),
                            bson::Bson::String(text) => text.parse().expect("version"),
                            other => panic!("history _id {other}"),
                        };
                        (
                            version,
                            d.get_str("state").expect("state").to_string(),
                            d.get_i64("statements_done").expect("done"),
                        )
                    })
                    .collect();
                rows.sort();
                rows
            }
            _ => {
                let mut conn = self.sql().await;
                let version = match self.engine {
                    Postgres => "version::text",
                    Mysql => "CAST(version AS CHAR)",
                    _ => "CAST(version AS TEXT)",
                };
                let rows =
                    sqlx::query(&format!("SELECT {version}, state, statements_done FROM flotilla_schema_history"))
                        .fetch_all(&mut conn)
                        .await;
                let _ = conn.close().await;
                match rows {
                    Ok(rows) => {
                        let mut rows: Vec<(u128, String, i64)> = rows
                            .iter()
                            .map(|r| (r.get::<String, _>(0).parse().expect("version"), r.get(1), r.get(2)))
                            .collect();
                        rows.sort();
                        rows
                    }
                    Err(e) if e.to_string().contains("exist") || e.to_string().contains("no such table") => Vec::new(),
                    Err(e) => panic!("history: {e}"),
                }
            }
        }
    }

    /// Whether a table (collection) exists, by its exact name, including Flotilla's own.
    pub async fn has_table(&self, table: &str) -> bool {
        match self.engine {
            Mongodb => self.mongo().await.list_collection_names().await.expect("list").iter().any(|n| n == table),
            Sqlite if !Path::new(self.url.trim_start_matches("sqlite://")).exists() => false,
            _ => {
                let query = match self.engine {
                    Postgres => "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name = $1",
                    Mysql => "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
                    _ => "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
                };
                let mut conn = self.sql().await;
                let n: i64 = sqlx::query_scalar(query).bind(table).fetch_one(&mut conn).await.expect("has_table");
                let _ = conn.close().await;
                n > 0
            }
        }
    }

    /// Runs every statement of a script written for this engine, bypassing Flotilla (to build "existing" databases).
    pub async fn apply_script(&self, script: &str) {
        match self.engine {
            Mongodb => {
                let commands: Vec<serde_json::Value> = serde_json::from_str(script).expect("JSON array");
                for c in commands {
                    self.exec(&c.to_string()).await;
                }
            }
            _ => {
                for statement in script.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
                    self.exec(statement.trim_end_matches(';')).await;
                }
            }
        }
    }

    /// Counts rows (documents) of a table (collection).
    pub async fn count(&self, table: &str) -> i64 {
        match self.engine {
            Mongodb => {
                let n = self
                    .mongo()
                    .await
                    .collection::<bson::Document>(table)
                    .count_documents(bson::doc! {})
                    .await
                    .expect("count");
                i64::try_from(n).expect("count fits")
            }
            _ => {
                let mut conn = self.sql().await;
                let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                    .fetch_one(&mut conn)
                    .await
                    .expect("count");
                let _ = conn.close().await;
                n
            }
        }
    }
}
