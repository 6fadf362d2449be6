//! `flotilla lint`: classifies each migration as additive, destructive or a data migration, and reports rule findings
//! with their source, severity and line.
//!
//! Where the rules come from ([`catalogue`] lists them all):
//! - **PostgreSQL**: squawk's parser and every squawk rule (`postgres.rs`), through the `squawk-linter` crate.
//! - **MySQL / MariaDB**: sqlparser's MySQL dialect, and Flotilla's rules for InnoDB's online DDL (`mysql.rs`).
//! - **SQLite**: sqlparser's SQLite dialect.
//! - **MongoDB**: the command list (`mongo.rs`).
//! - **Flotilla's own rules, on every engine** (`checks.rs`): the DOWN reverses the UP, a destructive change keeps a
//!   backup for its DOWN, a DOWN exists, a reason is given, the classification. They are computed from each
//!   statement's [`model::Effect`]s, whichever parser read it.

mod catalogue;
mod checks;
mod model;
mod mongo;
mod mysql;
mod postgres;
mod sql;

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::migration::{Migration, Script};
use crate::Engine;

pub use catalogue::{catalogue, rule_exists, RuleInfo};
pub use mysql::Server as MysqlServer;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// Who wrote a rule: squawk (PostgreSQL) or Flotilla.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Flotilla,
    Squawk,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Source::Flotilla => "flotilla",
            Source::Squawk => "squawk",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub source: Source,
    pub rule: String,
    pub severity: Severity,
    /// Line in the migration's file.
    pub line: Option<usize>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Additive,
    Destructive,
    Data,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrationLint {
    pub version: crate::Version,
    pub name: String,
    pub class: Class,
    pub findings: Vec<Finding>,
}

/// Project-wide settings, from a `flotilla-lint.toml`: rules turned off (`allow`), rules raised to errors and opt-in
/// rules turned on (`deny`), and the server versions the rules judge for.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub allow: BTreeSet<String>,
    pub deny: BTreeSet<String>,
    /// `postgres_version = "15"`: what squawk's version-dependent rules assume (default 15).
    pub postgres_version: Option<String>,
    /// `mysql_server = "mariadb 10.11"` or `"mysql 8.0.32"`: which online DDL the MySQL rules count on.
    pub mysql_server: MysqlServer,
}

/// The name of the settings file in a migrations directory.
pub const CONFIG_FILE: &str = "flotilla-lint.toml";

impl RuleSet {
    /// Reads a `flotilla-lint.toml`.
    pub fn from_toml(text: &str) -> Result<RuleSet, String> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.message().to_string())?;
        let mut rules = RuleSet::default();
        for (key, value) in &table {
            let text_value = || value.as_str().ok_or(format!("`{key}` must be a string"));
            let target = match key.as_str() {
                "allow" => &mut rules.allow,
                "deny" => &mut rules.deny,
                "postgres_version" => {
                    let v = text_value()?;
                    v.parse::<squawk_linter::Version>()
                        .map_err(|_| format!("postgres_version `{v}` is not a version such as \"15\" or \"16.2\""))?;
                    rules.postgres_version = Some(v.to_string());
                    continue;
                }
                "mysql_server" => {
                    rules.mysql_server = text_value()?.parse()?;
                    continue;
                }
                other => return Err(format!("unknown key `{other}` (allow, deny, postgres_version, mysql_server)")),
            };
            let list = value.as_array().ok_or(format!("`{key}` must be a list of rule names"))?;
            for item in list {
                let rule = item.as_str().ok_or(format!("`{key}` must be a list of rule names"))?;
                if !rule_exists(rule) {
                    return Err(format!("unknown rule `{rule}`"));
                }
                target.extend(catalogue::canonical(rule));
            }
        }
        Ok(rules)
    }
}

/// What lint knows of the run beyond the files.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub rules: RuleSet,
    /// The run gives every statement a timeout (`--statement-timeout`), which meets `require-statement-timeout`.
    pub statement_timeout: bool,
}

/// Lints every migration of a set for `engine`, in order (a MySQL rule may need a column's earlier definition).
pub fn lint(migrations: &[Migration], engine: Engine, context: &Context) -> Vec<MigrationLint> {
    let mut columns = mysql::Columns::default();
    migrations
        .iter()
        .filter(|m| m.runs_on(engine))
        .map(|m| checks::lint_one(m, engine, context, &mut columns))
        .collect()
}

/// Per-migration switches over the project's, then severities: a denied rule is an error.
pub(super) fn finish(m: &Migration, class: Class, findings: Vec<Finding>, rules: &RuleSet) -> MigrationLint {
    let (allow, deny) = directives(&m.up);
    let findings = findings
        .into_iter()
        .filter(|f| !(allow.contains(&f.rule) || rules.allow.contains(&f.rule)) || deny.contains(&f.rule))
        .map(|mut f| {
            if deny.contains(&f.rule) || rules.deny.contains(&f.rule) {
                f.severity = Severity::Error;
            }
            f
        })
        .collect();
    MigrationLint { version: m.version, name: m.name.clone(), class, findings }
}

/// `-- flotilla:allow RULE` and `-- flotilla:deny RULE` in a script's header.
pub(super) fn directives(script: &Script) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut allow, mut deny) = (BTreeSet::new(), BTreeSet::new());
    for line in script.text.lines() {
        let mut words = line.trim().trim_start_matches("--").split_whitespace();
        match (words.next(), words.next()) {
            (Some("flotilla:allow"), Some(rule)) => allow.extend(catalogue::canonical(rule)),
            (Some("flotilla:deny"), Some(rule)) => deny.extend(catalogue::canonical(rule)),
            _ => {}
        }
    }
    (allow, deny)
}

/// Unknown rule names in a set's allow/deny directives, as `file:line: message`.
pub fn check_directives(migrations: &[Migration]) -> Result<(), String> {
    for m in migrations {
        for script in std::iter::once(&m.up).chain(m.down.as_ref()) {
            for (i, line) in script.text.lines().enumerate() {
                let mut words = line.trim().trim_start_matches("--").split_whitespace();
                if let (Some("flotilla:allow" | "flotilla:deny"), Some(rule)) = (words.next(), words.next()) {
                    if !rule_exists(rule) {
                        return Err(format!(
                            "{}:{}: unknown lint rule `{rule}`",
                            script.path.display(),
                            script.first_line + i
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Counts by severity, for summaries: (errors, warnings, notes).
pub fn counts(report: &[MigrationLint]) -> (usize, usize, usize) {
    let count = |s| report.iter().flat_map(|m| &m.findings).filter(|f| f.severity == s).count();
    (count(Severity::Error), count(Severity::Warning), count(Severity::Info))
}
