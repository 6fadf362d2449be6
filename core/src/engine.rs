//! The engines Flotilla migrates, and what kind of script each runs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::split::Dialect;

/// A database engine Flotilla can migrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Postgres,
    Mysql,
    Sqlite,
    Mongodb,
}

impl Engine {
    pub const ALL: [Engine; 4] = [Engine::Postgres, Engine::Mysql, Engine::Sqlite, Engine::Mongodb];

    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
            Engine::Sqlite => "sqlite",
            Engine::Mongodb => "mongodb",
        }
    }

    /// The engine a connection URL points at, from its scheme.
    pub fn from_url(url: &str) -> Option<Engine> {
        let scheme = url.split_once(':')?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => Some(Engine::Postgres),
            "mysql" | "mariadb" => Some(Engine::Mysql),
            "sqlite" => Some(Engine::Sqlite),
            "mongodb" | "mongodb+srv" => Some(Engine::Mongodb),
            _ => None,
        }
    }

    /// Which kind of script this engine runs.
    pub fn script_kind(self) -> ScriptKind {
        match self {
            Engine::Mongodb => ScriptKind::MongoCommands,
            _ => ScriptKind::Sql,
        }
    }

    pub fn sql_dialect(self) -> Option<Dialect> {
        match self {
            Engine::Postgres => Some(Dialect::Postgres),
            Engine::Mysql => Some(Dialect::Mysql),
            Engine::Sqlite => Some(Dialect::Sqlite),
            Engine::Mongodb => None,
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" | "pg" => Ok(Engine::Postgres),
            "mysql" | "mariadb" => Ok(Engine::Mysql),
            "sqlite" => Ok(Engine::Sqlite),
            "mongodb" | "mongo" => Ok(Engine::Mongodb),
            other => Err(format!("unknown engine `{other}` (expected postgres, mysql, sqlite or mongodb)")),
        }
    }
}

/// What a script is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptKind {
    /// SQL for PostgreSQL, MySQL or SQLite.
    Sql,
    /// A JSON array of MongoDB database commands.
    MongoCommands,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_from_url() {
        assert_eq!(Engine::from_url("postgres://u@h/db"), Some(Engine::Postgres));
        assert_eq!(Engine::from_url("mysql://u@h/db"), Some(Engine::Mysql));
        assert_eq!(Engine::from_url("sqlite:///tmp/x.db"), Some(Engine::Sqlite));
        assert_eq!(Engine::from_url("mongodb://h/db"), Some(Engine::Mongodb));
        assert_eq!(Engine::from_url("redis://h"), None);
        assert_eq!(Engine::from_url("nonsense"), None);
    }
}
