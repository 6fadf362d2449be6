//! The migration model every reader produces and every driver consumes.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::engine::{Engine, ScriptKind};
use crate::error::ReadError;

/// Expand/contract phase of a zero-downtime change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Expand,
    Contract,
}

/// Options a migration declares through directives in its leading comments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationOptions {
    pub phase: Option<Phase>,
}

/// One script (the UP or the DOWN) as read from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    pub path: PathBuf,
    /// Line in `path` where the script's text starts (1-based; > 1 for dbmate sections).
    pub first_line: usize,
    pub text: String,
    /// Run statement by statement outside a transaction (needed for `CREATE INDEX CONCURRENTLY`).
    pub no_transaction: bool,
    /// Run the script's one UPDATE in key-range batches (`-- flotilla:backfill …`).
    pub backfill: Option<Backfill>,
    /// How long its statements may wait for locks and run, and how often a lock timeout is retried.
    pub timeouts: Timeouts,
}

/// How long a migration's statements may wait for a lock (`-- flotilla:lock-timeout 3s`) and run
/// (`-- flotilla:statement-timeout 10m`), and how many times a migration rolled back on a lock timeout runs again
/// (`-- flotilla:lock-retries 5`). `None`: the run's default.
///
/// A lock timeout is what keeps a migration from becoming an outage: an `ALTER TABLE` waiting for its lock makes
/// every later query on the table queue behind it; with a timeout the queue lasts at most that long, the migration
/// rolls back, and it tries again after a pause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    pub lock: Option<std::time::Duration>,
    pub statement: Option<std::time::Duration>,
    pub lock_retries: Option<u32>,
}

impl Timeouts {
    /// What is set here, else what `defaults` sets.
    pub fn or(self, defaults: Timeouts) -> Timeouts {
        Timeouts {
            lock: self.lock.or(defaults.lock),
            statement: self.statement.or(defaults.statement),
            lock_retries: self.lock_retries.or(defaults.lock_retries),
        }
    }
}

/// Parses a duration written as a whole number and a unit: `500ms`, `3s`, `10m`, `1h`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration such as 500ms, 3s, 10m or 1h"))?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("`{text}` is not a duration such as 500ms, 3s, 10m or 1h (units: ms, s, m, h)")),
    };
    match millis {
        Some(0) => Err(format!("`{text}`: a timeout must be more than 0")),
        Some(ms) => Ok(std::time::Duration::from_millis(ms)),
        None => Err(format!("`{text}` is too long")),
    }
}

/// A large data change run in batches over an integer key: each batch's update and its cursor commit together, so a
/// killed run resumes after the last committed batch and every row is updated once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backfill {
    pub table: String,
    pub key: String,
    pub batch: u32,
    /// Pause between batches, to leave the database room for its real work.
    pub pause_ms: u64,
}

impl Backfill {
    pub const LO: &'static str = "{lo}";
    pub const HI: &'static str = "{hi}";

    /// Parses `table=orders key=id batch=10000 pause-ms=5`.
    pub fn parse(words: &[&str]) -> Result<Backfill, String> {
        let (mut table, mut key, mut batch, mut pause_ms) = (None, None, 1000u32, 0u64);
        for word in words {
            let (k, v) = word.split_once('=').ok_or_else(|| format!("backfill option `{word}` is not key=value"))?;
            let ident = |v: &str| {
                if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                    Ok(v.to_string())
                } else {
                    Err(format!("backfill {k} `{v}` must be a plain name (letters, digits, _ and .)"))
                }
            };
            match k {
                "table" => table = Some(ident(v)?),
                "key" => key = Some(ident(v)?),
                "batch" => {
                    batch = v
                        .parse()
                        .ok()
                        .filter(|b| *b > 0)
                        .ok_or(format!("backfill batch `{v}` must be a positive integer"))?
                }
                "pause-ms" => {
                    pause_ms = v.parse().map_err(|_| format!("backfill pause-ms `{v}` must be a whole number"))?
                }
                other => return Err(format!("unknown backfill option `{other}` (table, key, batch, pause-ms)")),
            }
        }
        Ok(Backfill {
            table: table.ok_or("backfill needs table=NAME")?,
            key: key.ok_or("backfill needs key=COLUMN (an integer key)")?,
            batch,
            pause_ms,
        })
    }

    /// The script's update for keys in `(lo, hi]`.
    pub fn bind(template: &str, lo: i64, hi: i64) -> String {
        template.replace(Self::LO, &lo.to_string()).replace(Self::HI, &hi.to_string())
    }
}

impl Script {
    /// Whether the script holds no statement: only whitespace and comments (`--`, `#`, `//`, `/* … */`), or an
    /// empty JSON array of commands. Such a script runs as a no-op.
    pub fn is_blank(&self) -> bool {
        let mut rest = self.text.as_str();
        let mut code = String::new();
        while let Some(start) = rest.find("/*") {
            code.push_str(&rest[..start]);
            rest = rest[start..].find("*/").map_or("", |end| &rest[start + end + 2..]);
        }
        code.push_str(rest);
        let code: String = code
            .lines()
            .map(str::trim)
            .filter(|l| !(l.is_empty() || l.starts_with("--") || l.starts_with('#') || l.starts_with("//")))
            .collect();
        code.is_empty() || code == "[]"
    }

    /// Splits the script into statements for `engine`; lines are lines of the script's file.
    pub fn statements(&self, kind: ScriptKind, engine: Engine) -> Result<Vec<Statement>, ReadError> {
        let at = |line: usize| self.first_line + line - 1;
        if self.is_blank() && (kind == engine.script_kind()) {
            return Ok(Vec::new());
        }
        match (kind, engine.sql_dialect()) {
            (ScriptKind::Sql, Some(dialect)) => crate::split::split(&self.text, dialect)
                .map(|stmts| stmts.into_iter().map(|s| Statement::Sql { text: s.text, line: at(s.line) }).collect())
                .map_err(|e| ReadError::at(&self.path, at(e.line), e.message)),
            (ScriptKind::MongoCommands, None) => crate::mongo::parse_commands(&self.text)
                .map(|cmds| {
                    cmds.into_iter()
                        .map(|c| Statement::Command { command: c.body, name: c.name, line: at(c.line) })
                        .collect()
                })
                .map_err(|e| ReadError::at(&self.path, at(e.line), e.message)),
            (ScriptKind::Sql, None) => {
                Err(ReadError::new(&self.path, format!("a SQL migration cannot run on {engine}")))
            }
            (ScriptKind::MongoCommands, Some(_)) => {
                Err(ReadError::new(&self.path, format!("a MongoDB command migration cannot run on {engine}")))
            }
        }
    }
}

/// One executable unit of a script: a SQL statement or a MongoDB command.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    Sql {
        text: String,
        /// 1-based line in the migration file where the statement starts.
        line: usize,
    },
    Command {
        command: serde_json::Value,
        /// The command's name (its first key), e.g. `createIndexes`.
        name: String,
        /// 1-based line in the migration file where the command starts.
        line: usize,
    },
}

impl Statement {
    /// A one-line summary for progress output and dry runs.
    pub fn summary(&self) -> String {
        match self {
            Statement::Sql { text, .. } => {
                let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
                truncate(&flat, 100)
            }
            Statement::Command { command, .. } => truncate(&command.to_string(), 100),
        }
    }

    /// Whether the statement only changes rows (SQL INSERT, UPDATE, DELETE, REPLACE; MongoDB insert, update,
    /// delete): such a statement commits with the transaction it runs in, where DDL may commit on its own (MySQL).
    pub fn is_dml(&self) -> bool {
        match self {
            Statement::Sql { text, .. } => {
                let mut rest = text.trim_start();
                // Leading comments do not change what the statement is.
                loop {
                    if let Some(after) = rest.strip_prefix("--") {
                        rest = after.split_once('\n').map_or("", |(_, tail)| tail).trim_start();
                    } else if let Some(after) = rest.strip_prefix("/*") {
                        rest = after.split_once("*/").map_or("", |(_, tail)| tail).trim_start();
                    } else {
                        break;
                    }
                }
                let word: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
                matches!(word.to_ascii_uppercase().as_str(), "INSERT" | "UPDATE" | "DELETE" | "REPLACE")
            }
            Statement::Command { name, .. } => matches!(name.as_str(), "insert" | "update" | "delete"),
        }
    }

    pub fn line(&self) -> usize {
        match self {
            Statement::Sql { line, .. } | Statement::Command { line, .. } => *line,
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max - 1).collect();
        out.push('…');
        out
    }
}

/// SHA-256 over a migration's normalized UP and DOWN, as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Checksum(pub String);

impl Checksum {
    /// Normalization makes the checksum ignore what editors and git change without meaning to:
    /// a byte-order mark, CRLF line ends, trailing spaces, and blank lines at either end.
    pub fn of(up: &str, down: Option<&str>) -> Checksum {
        let mut hasher = Sha256::new();
        hasher.update(normalize(up).as_bytes());
        hasher.update([0u8]);
        if let Some(down) = down {
            hasher.update(normalize(down).as_bytes());
        }
        Checksum(hex::encode(hasher.finalize()))
    }

    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn normalize(text: &str) -> String {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    let start = lines.iter().position(|l| !l.is_empty()).unwrap_or(lines.len());
    let end = lines.iter().rposition(|l| !l.is_empty()).map_or(start, |i| i + 1);
    lines[start..end].join("\n")
}

/// A Flyway repeatable migration (`R__<name>.sql`): no version, run after the versioned ones whenever its checksum
/// differs from the one last recorded, in name order. It has no DOWN.
#[derive(Debug, Clone)]
pub struct Repeatable {
    pub name: String,
    pub script: Script,
    pub checksum: Checksum,
}

/// A versioned migration with its UP, optional DOWN, options and checksum.
#[derive(Debug, Clone)]
pub struct Migration {
    pub version: crate::Version,
    pub name: String,
    pub kind: ScriptKind,
    pub up: Script,
    pub down: Option<Script>,
    pub options: MigrationOptions,
    pub checksum: Checksum,
}

impl Migration {
    pub fn script(&self, direction: crate::direction::Direction) -> Option<&Script> {
        match direction {
            crate::direction::Direction::Up => Some(&self.up),
            crate::direction::Direction::Down => self.down.as_ref(),
        }
    }

    /// Whether this migration can run on `engine`.
    pub fn runs_on(&self, engine: Engine) -> bool {
        self.kind == engine.script_kind()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_parse_with_their_unit_and_bad_ones_are_named() {
        use std::time::Duration;
        assert_eq!(super::parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(super::parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(super::parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(super::parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "3", "s", "3 s", "1.5s", "3d", "0s", "-1s"] {
            let e = super::parse_duration(bad).expect_err(bad);
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }

    #[test]
    fn dml_is_told_from_ddl() {
        let sql = |text: &str| Statement::Sql { text: text.into(), line: 1 };
        for dml in [
            "INSERT INTO t VALUES (1)",
            "  update t set n = 1",
            "-- why\nDELETE FROM t",
            "/* x */ REPLACE INTO t VALUES (1)",
        ] {
            assert!(sql(dml).is_dml(), "{dml}");
        }
        for ddl in [
            "CREATE TABLE t (n INT)",
            "ALTER TABLE t ADD COLUMN m INT",
            "SELECT SLEEP(1)",
            "-- INSERT\nDROP TABLE t",
            "UPDATED",
        ] {
            assert!(!sql(ddl).is_dml(), "{ddl}");
        }
        let command = |name: &str| Statement::Command { command: serde_json::json!({}), name: name.into(), line: 1 };
        assert!(command("update").is_dml() && !command("createIndexes").is_dml());
    }
    use super::*;

    #[test]
    fn checksum_ignores_line_endings_and_trailing_space() {
        let a = Checksum::of("CREATE TABLE t (id int);\n", Some("DROP TABLE t;\n"));
        let b = Checksum::of("\u{feff}\r\nCREATE TABLE t (id int);   \r\n\r\n", Some("DROP TABLE t;"));
        assert_eq!(a, b);
    }

    #[test]
    fn checksum_sees_real_edits_and_which_script_they_are_in() {
        let base = Checksum::of("CREATE TABLE t (id int);", Some("DROP TABLE t;"));
        assert_ne!(base, Checksum::of("CREATE TABLE t (id bigint);", Some("DROP TABLE t;")));
        assert_ne!(base, Checksum::of("CREATE TABLE t (id int);", None));
        // Moving text between UP and DOWN must change the checksum.
        assert_ne!(Checksum::of("a", Some("b")), Checksum::of("ab", Some("")));
    }
}
