//! `flotilla lint`: parses migration SQL (sqlparser, with the engine's dialect), classifies each migration as
//! additive, destructive or a data migration, and reports rule findings with severity and line.
//!
//! Each statement becomes [`Effect`]s (create/drop table, add/drop column, index, rename, type change, data). The
//! classification and the "DOWN reverses UP" check are computed from effects, the other rules from the statements.

mod checks;
mod effects;

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::migration::{Migration, Script, ScriptKind};
use crate::Engine;

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

/// Every rule: id, default severity, what it checks.
pub const RULES: &[(&str, Severity, &str)] = &[
    ("not-null-without-default", Severity::Error, "NOT NULL column added to an existing table without a default"),
    ("create-without-if-not-exists", Severity::Warning, "CREATE TABLE or INDEX without IF NOT EXISTS"),
    ("no-explicit-transaction", Severity::Info, "no BEGIN … COMMIT where the engine runs DDL in transactions"),
    ("index-not-concurrent", Severity::Warning, "PostgreSQL CREATE INDEX on an existing table without CONCURRENTLY"),
    (
        "destructive-without-backup",
        Severity::Error,
        "DROP TABLE/COLUMN or a type change with nothing kept for the DOWN",
    ),
    ("missing-down", Severity::Error, "no DOWN migration"),
    ("empty-down", Severity::Info, "an empty DOWN: rolling back this migration does nothing"),
    ("down-not-reverse", Severity::Warning, "the DOWN does not structurally reverse the UP"),
    ("rename", Severity::Warning, "renaming a table or column breaks running code: expand, migrate, contract"),
    ("no-reason-comment", Severity::Warning, "no comment giving the reason for the change"),
    ("mysql-not-online", Severity::Warning, "MySQL DDL that cannot run with ALGORITHM=INSTANT or INPLACE"),
    ("unparsed", Severity::Info, "a statement the parser does not understand was not checked"),
];

pub fn rule_exists(rule: &str) -> bool {
    RULES.iter().any(|(id, _, _)| *id == rule)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    pub line: Option<usize>,
    pub message: String,
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

/// Project-wide switches: rules turned off, and rules raised to errors.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub allow: BTreeSet<String>,
    pub deny: BTreeSet<String>,
}

impl RuleSet {
    /// Reads `allow = [...]` / `deny = [...]` from a `flotilla-lint.toml`.
    pub fn from_toml(text: &str) -> Result<RuleSet, String> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.message().to_string())?;
        let mut rules = RuleSet::default();
        for (key, value) in &table {
            let target = match key.as_str() {
                "allow" => &mut rules.allow,
                "deny" => &mut rules.deny,
                other => return Err(format!("unknown key `{other}` (allow, deny)")),
            };
            let list = value.as_array().ok_or(format!("`{key}` must be a list of rule names"))?;
            for item in list {
                let rule = item.as_str().ok_or(format!("`{key}` must be a list of rule names"))?;
                if !rule_exists(rule) {
                    return Err(format!("unknown rule `{rule}`"));
                }
                target.insert(rule.to_string());
            }
        }
        Ok(rules)
    }
}

/// Lints every SQL migration of a set for `engine`.
pub fn lint(migrations: &[Migration], engine: Engine, rules: &RuleSet) -> Vec<MigrationLint> {
    migrations.iter().filter(|m| m.kind == ScriptKind::Sql).map(|m| checks::lint_one(m, engine, rules)).collect()
}

pub(super) fn finish(m: &Migration, class: Class, findings: Vec<Finding>, rules: &RuleSet) -> MigrationLint {
    let (allow, deny) = directives(&m.up);
    let findings = findings
        .into_iter()
        .filter(|f| !(allow.contains(f.rule) || rules.allow.contains(f.rule)) || deny.contains(f.rule))
        .map(|mut f| {
            if deny.contains(f.rule) || rules.deny.contains(f.rule) {
                f.severity = Severity::Error;
            }
            f
        })
        .collect();
    MigrationLint { version: m.version, name: m.name.clone(), class, findings }
}

/// `-- flotilla:allow RULE` and `-- flotilla:deny RULE` in a script's header.
fn directives(script: &Script) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut allow, mut deny) = (BTreeSet::new(), BTreeSet::new());
    for line in script.text.lines() {
        let mut words = line.trim().trim_start_matches("--").split_whitespace();
        match (words.next(), words.next()) {
            (Some("flotilla:allow"), Some(rule)) => {
                allow.insert(rule.to_string());
            }
            (Some("flotilla:deny"), Some(rule)) => {
                deny.insert(rule.to_string());
            }
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
