//! Every rule lint knows: Flotilla's own, per engine, and squawk's for PostgreSQL.

use enum_iterator::all;
use serde::Serialize;

use super::{Severity, Source};
use crate::Engine;

const ALL: &[Engine] = &[Engine::Postgres, Engine::Mysql, Engine::Sqlite, Engine::Mongodb];
const SQL: &[Engine] = &[Engine::Postgres, Engine::Mysql, Engine::Sqlite];
/// Where squawk does not cover it.
const NOT_PG: &[Engine] = &[Engine::Mysql, Engine::Sqlite];
const NOT_PG_MONGO: &[Engine] = &[Engine::Mysql, Engine::Sqlite, Engine::Mongodb];
const MYSQL: &[Engine] = &[Engine::Mysql];
const MONGO: &[Engine] = &[Engine::Mongodb];
const PG_SQLITE: &[Engine] = &[Engine::Postgres, Engine::Sqlite];
const PG: &[Engine] = &[Engine::Postgres];

/// Flotilla's rules: id, default severity, engines, what it checks.
pub(super) const FLOTILLA: &[(&str, Severity, &[Engine], &str)] = &[
    ("missing-down", Severity::Error, ALL, "no DOWN migration"),
    ("empty-down", Severity::Info, ALL, "an empty DOWN: rolling back this migration does nothing"),
    ("down-not-reverse", Severity::Warning, ALL, "the DOWN does not structurally reverse the UP"),
    (
        "destructive-without-backup",
        Severity::Error,
        ALL,
        "DROP TABLE/COLUMN or a type change with nothing kept for the DOWN",
    ),
    ("no-reason-comment", Severity::Warning, SQL, "no comment giving the reason for the change"),
    (
        "no-explicit-transaction",
        Severity::Info,
        PG_SQLITE,
        "no BEGIN … COMMIT where the engine runs DDL in transactions",
    ),
    (
        "backfill-in-ddl-transaction",
        Severity::Warning,
        PG,
        "an UPDATE or DELETE of a table the same transaction altered: the table stays locked for the whole backfill",
    ),
    ("unparsed", Severity::Info, ALL, "a statement no parser reads was not checked"),
    (
        "not-null-without-default",
        Severity::Error,
        NOT_PG,
        "NOT NULL column added to an existing table without a default",
    ),
    ("create-without-if-not-exists", Severity::Warning, NOT_PG, "CREATE TABLE or INDEX without IF NOT EXISTS"),
    (
        "rename",
        Severity::Warning,
        NOT_PG_MONGO,
        "renaming a table or column breaks running code: expand, migrate, contract",
    ),
    ("mysql-column-type-change", Severity::Warning, MYSQL, "a column type change copies the table (ALGORITHM=COPY)"),
    ("mysql-charset-conversion", Severity::Warning, MYSQL, "a character set or collation conversion copies the table"),
    (
        "mysql-enum-change",
        Severity::Warning,
        MYSQL,
        "ENUM/SET values removed, reordered or inserted: the table is copied",
    ),
    (
        "mysql-foreign-key",
        Severity::Warning,
        MYSQL,
        "a foreign key added to an existing table copies it while checks are on",
    ),
    (
        "mysql-table-rebuild",
        Severity::Warning,
        MYSQL,
        "an operation that rebuilds the table in place (hours on big tables)",
    ),
    (
        "mysql-table-copy",
        Severity::Warning,
        MYSQL,
        "an operation only ALGORITHM=COPY can do: writes blocked throughout",
    ),
    (
        "mysql-algorithm-unsupported",
        Severity::Error,
        MYSQL,
        "ALGORITHM=INSTANT or INPLACE that the server cannot use for the operation: the statement fails",
    ),
    (
        "mysql-lock-clause",
        Severity::Warning,
        MYSQL,
        "LOCK=SHARED or EXCLUSIVE: reads or writes blocked for the whole DDL",
    ),
    (
        "mysql-lock-wait-timeout",
        Severity::Warning,
        MYSQL,
        "a lock_wait_timeout set above 60 s, or globally: a blocked DDL queues every query behind it",
    ),
    ("mysql-inline-references", Severity::Warning, MYSQL, "a column-level REFERENCES that MySQL ignores"),
    ("mongo-index-on-existing", Severity::Warning, MONGO, "an index built on an existing collection"),
    (
        "mongo-unique-index-on-existing",
        Severity::Warning,
        MONGO,
        "a unique index on existing documents fails on duplicates",
    ),
    (
        "mongo-ttl-index-on-existing",
        Severity::Error,
        MONGO,
        "a TTL index on an existing collection deletes documents at once",
    ),
    (
        "mongo-validator-error",
        Severity::Warning,
        MONGO,
        "a validator with validationAction error on an existing collection: writes to old documents fail",
    ),
    (
        "mongo-rename-drop-target",
        Severity::Error,
        MONGO,
        "renameCollection with dropTarget destroys the target collection",
    ),
    ("mongo-drop-index", Severity::Warning, MONGO, "dropping indexes: the queries that used them scan"),
];

/// squawk rules that make the migration fail or lose data: errors rather than warnings.
const SQUAWK_ERRORS: &[squawk_linter::Rule] = &[
    squawk_linter::Rule::AddingRequiredField,
    squawk_linter::Rule::BanConcurrentIndexCreationInTransaction,
    squawk_linter::Rule::BanDropDatabase,
    squawk_linter::Rule::BanUncommittedTransaction,
];

/// One rule, for `flotilla lint --rules` and the README.
#[derive(Debug, Clone, Serialize)]
pub struct RuleInfo {
    pub source: Source,
    pub rule: String,
    pub severity: Severity,
    pub engines: Vec<Engine>,
    /// Off unless named in `deny` (squawk's opt-in rules).
    pub opt_in: bool,
    pub about: String,
}

/// squawk's rules as they are run: not its aliases, not its own bookkeeping.
pub(super) fn squawk_rules() -> impl Iterator<Item = squawk_linter::Rule> {
    all::<squawk_linter::Rule>().filter(|r| r.expands_to().is_empty() && *r != squawk_linter::Rule::UnusedIgnore)
}

pub(super) fn squawk_severity(rule: squawk_linter::Rule) -> Severity {
    if SQUAWK_ERRORS.contains(&rule) {
        Severity::Error
    } else {
        Severity::Warning
    }
}

pub(super) fn flotilla_severity(rule: &str) -> Severity {
    FLOTILLA.iter().find(|r| r.0 == rule).map_or(Severity::Warning, |r| r.1)
}

/// Every rule, Flotilla's first.
pub fn catalogue() -> Vec<RuleInfo> {
    let own = FLOTILLA.iter().map(|(rule, severity, engines, about)| RuleInfo {
        source: Source::Flotilla,
        rule: rule.to_string(),
        severity: *severity,
        engines: engines.to_vec(),
        opt_in: false,
        about: about.to_string(),
    });
    let squawk = squawk_rules().map(|r| RuleInfo {
        source: Source::Squawk,
        rule: r.to_string(),
        severity: squawk_severity(r),
        engines: vec![Engine::Postgres],
        opt_in: r.is_opt_in(),
        about: format!("https://squawkhq.com/docs/{r}"),
    });
    own.chain(squawk).collect()
}

/// Whether `rule` names a rule (squawk's spellings and aliases included).
pub fn rule_exists(rule: &str) -> bool {
    FLOTILLA.iter().any(|r| r.0 == rule) || rule.parse::<squawk_linter::Rule>().is_ok()
}

/// The ids a rule name stands for: itself, or squawk's canonical spelling, or what a squawk alias expands to.
pub(super) fn canonical(rule: &str) -> Vec<String> {
    match rule.parse::<squawk_linter::Rule>() {
        Ok(r) if !r.expands_to().is_empty() => r.expands_to().iter().map(ToString::to_string).collect(),
        Ok(r) if !FLOTILLA.iter().any(|f| f.0 == rule) => vec![r.to_string()],
        _ => vec![rule.to_string()],
    }
}
