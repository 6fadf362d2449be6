//! `flotilla lint`: parses migration SQL (sqlparser, with the engine's dialect), classifies each migration as
//! additive, destructive or a data migration, and reports rule findings with severity and line.
//!
//! Each statement becomes [`Effect`]s (create/drop table, add/drop column, index, rename, type change, data). The
//! classification and the "DOWN reverses UP" check are computed from effects, the other rules from the statements.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use sqlparser::ast::{
    AlterColumnOperation, AlterTableAlgorithm, AlterTableOperation, ColumnOption, ObjectName, ObjectType,
    RenameTableNameKind, Statement as Ast, TableConstraint,
};
use sqlparser::dialect::{Dialect as SqlDialect, GenericDialect, MySqlDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;

use crate::migration::{Migration, Script, ScriptKind};
use crate::{Engine, Statement};

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
    pub version: i64,
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

/// What a statement does to the schema, by normalized name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Effect {
    CreateTable(String),
    DropTable(String),
    AddColumn(String, String),
    DropColumn(String, String),
    CreateIndex(String, String),
    DropIndex(String),
    RenameTable(String, String),
    RenameColumn(String, String, String),
    TypeChange(String, String),
    CreateView(String),
    DropView(String),
    Data(String),
}

fn describe(e: &Effect) -> String {
    match e {
        Effect::CreateTable(t) => format!("creates table {t}"),
        Effect::DropTable(t) => format!("drops table {t}"),
        Effect::AddColumn(t, c) => format!("adds column {t}.{c}"),
        Effect::DropColumn(t, c) => format!("drops column {t}.{c}"),
        Effect::CreateIndex(i, _) => format!("creates index {i}"),
        Effect::DropIndex(i) => format!("drops index {i}"),
        Effect::RenameTable(a, b) => format!("renames table {a} to {b}"),
        Effect::RenameColumn(t, a, b) => format!("renames column {t}.{a} to {b}"),
        Effect::TypeChange(t, c) => format!("changes the type of {t}.{c}"),
        Effect::CreateView(v) => format!("creates view {v}"),
        Effect::DropView(v) => format!("drops view {v}"),
        Effect::Data(t) => format!("changes data in {t}"),
    }
}

/// Last part of a possibly qualified, possibly quoted name, lowercased.
fn norm(name: &ObjectName) -> String {
    unquote(&name.to_string())
}

fn unquote(s: &str) -> String {
    s.rsplit('.').next().unwrap_or(s).trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']').to_lowercase()
}

fn dialect(engine: Engine) -> Box<dyn SqlDialect> {
    match engine {
        Engine::Mysql => Box::new(MySqlDialect {}),
        Engine::Sqlite => Box::new(SQLiteDialect {}),
        _ => Box::new(PostgreSqlDialect {}),
    }
}

/// A parsed statement with its line; `None` when the parser did not understand it.
struct Parsed {
    line: usize,
    ast: Option<Ast>,
    error: Option<String>,
}

fn parse(script: &Script, engine: Engine) -> Result<Vec<Parsed>, String> {
    let statements = script.statements(ScriptKind::Sql, engine).map_err(|e| e.to_string())?;
    let d = dialect(engine);
    Ok(statements
        .into_iter()
        .filter_map(|s| match s {
            Statement::Sql { text, line } => Some((text, line)),
            Statement::Command { .. } => None,
        })
        .map(|(text, line)| {
            // MariaDB and PostgreSQL extensions the engine's dialect lacks (ADD COLUMN IF NOT EXISTS) often parse
            // with the generic dialect.
            let parsed = Parser::parse_sql(d.as_ref(), &text)
                .or_else(|e| Parser::parse_sql(&GenericDialect {}, &text).map_err(|_| e));
            match parsed {
                Ok(mut asts) if asts.len() == 1 => Parsed { line, ast: asts.pop(), error: None },
                Ok(_) => Parsed { line, ast: None, error: Some("not exactly one statement".into()) },
                Err(e) => Parsed { line, ast: None, error: Some(e.to_string()) },
            }
        })
        .collect())
}

fn effects(ast: &Ast) -> Vec<Effect> {
    match ast {
        Ast::CreateTable(ct) => vec![Effect::CreateTable(norm(&ct.name))],
        Ast::CreateIndex(ci) => {
            vec![Effect::CreateIndex(ci.name.as_ref().map(norm).unwrap_or_default(), norm(&ci.table_name))]
        }
        Ast::CreateView { name, .. } => vec![Effect::CreateView(norm(name))],
        Ast::Drop { object_type, names, .. } => names
            .iter()
            .filter_map(|n| match object_type {
                ObjectType::Table => Some(Effect::DropTable(norm(n))),
                ObjectType::Index => Some(Effect::DropIndex(norm(n))),
                ObjectType::View | ObjectType::MaterializedView => Some(Effect::DropView(norm(n))),
                _ => None,
            })
            .collect(),
        Ast::RenameTable(renames) => {
            renames.iter().map(|r| Effect::RenameTable(norm(&r.old_name), norm(&r.new_name))).collect()
        }
        Ast::AlterTable { name, operations, .. } => {
            let t = norm(name);
            operations
                .iter()
                .flat_map(|op| match op {
                    AlterTableOperation::AddColumn { column_def, .. } => {
                        vec![Effect::AddColumn(t.clone(), unquote(&column_def.name.to_string()))]
                    }
                    AlterTableOperation::DropColumn { column_names, .. } => {
                        column_names.iter().map(|c| Effect::DropColumn(t.clone(), unquote(&c.to_string()))).collect()
                    }
                    AlterTableOperation::RenameColumn { old_column_name, new_column_name } => {
                        vec![Effect::RenameColumn(
                            t.clone(),
                            unquote(&old_column_name.to_string()),
                            unquote(&new_column_name.to_string()),
                        )]
                    }
                    AlterTableOperation::RenameTable { table_name } => {
                        let to = match table_name {
                            RenameTableNameKind::As(n) | RenameTableNameKind::To(n) => norm(n),
                        };
                        vec![Effect::RenameTable(t.clone(), to)]
                    }
                    AlterTableOperation::AlterColumn { column_name, op: AlterColumnOperation::SetDataType { .. } } => {
                        vec![Effect::TypeChange(t.clone(), unquote(&column_name.to_string()))]
                    }
                    AlterTableOperation::ModifyColumn { col_name, .. } => {
                        vec![Effect::TypeChange(t.clone(), unquote(&col_name.to_string()))]
                    }
                    AlterTableOperation::ChangeColumn { old_name, new_name, .. } => {
                        let (a, b) = (unquote(&old_name.to_string()), unquote(&new_name.to_string()));
                        let mut e = vec![Effect::TypeChange(t.clone(), a.clone())];
                        if a != b {
                            e.push(Effect::RenameColumn(t.clone(), a, b));
                        }
                        e
                    }
                    _ => vec![],
                })
                .collect()
        }
        Ast::Insert(i) => vec![Effect::Data(unquote(&i.table.to_string()))],
        Ast::Update { table, .. } => vec![Effect::Data(unquote(&table.relation.to_string()))],
        Ast::Delete(d) => vec![Effect::Data(unquote(d.from.to_string().trim_start_matches("FROM ")))],
        _ => vec![],
    }
}

/// The effects that undo `e`, any one of which counts.
fn inverses(e: &Effect) -> Vec<Effect> {
    match e {
        Effect::CreateTable(t) => vec![Effect::DropTable(t.clone())],
        Effect::DropTable(t) => vec![Effect::CreateTable(t.clone())],
        Effect::AddColumn(t, c) => vec![Effect::DropColumn(t.clone(), c.clone()), Effect::DropTable(t.clone())],
        Effect::DropColumn(t, c) => vec![Effect::AddColumn(t.clone(), c.clone())],
        Effect::CreateIndex(i, t) => vec![Effect::DropIndex(i.clone()), Effect::DropTable(t.clone())],
        Effect::DropIndex(i) => vec![Effect::CreateIndex(i.clone(), String::new())],
        Effect::RenameTable(a, b) => vec![Effect::RenameTable(b.clone(), a.clone())],
        Effect::RenameColumn(t, a, b) => vec![Effect::RenameColumn(t.clone(), b.clone(), a.clone())],
        Effect::TypeChange(t, c) => vec![Effect::TypeChange(t.clone(), c.clone())],
        Effect::CreateView(v) => vec![Effect::DropView(v.clone())],
        Effect::DropView(v) => vec![Effect::CreateView(v.clone())],
        Effect::Data(_) => vec![],
    }
}

fn undone_by(e: &Effect, down: &[Effect]) -> bool {
    inverses(e).iter().any(|inv| match inv {
        // A dropped index comes back under its name, whatever table the DOWN names.
        Effect::CreateIndex(i, _) => down.iter().any(|d| matches!(d, Effect::CreateIndex(j, _) if j == i)),
        other => down.contains(other),
    })
}

/// Lints every SQL migration of a set for `engine`.
pub fn lint(migrations: &[Migration], engine: Engine, rules: &RuleSet) -> Vec<MigrationLint> {
    migrations.iter().filter(|m| m.kind == ScriptKind::Sql).map(|m| lint_one(m, engine, rules)).collect()
}

fn lint_one(m: &Migration, engine: Engine, rules: &RuleSet) -> MigrationLint {
    let mut findings = Vec::new();
    let mut add = |rule: &'static str, line: Option<usize>, message: String| {
        let severity = RULES.iter().find(|(id, _, _)| *id == rule).map_or(Severity::Warning, |r| r.1);
        findings.push(Finding { rule, severity, line, message });
    };
    let up = match parse(&m.up, engine) {
        Ok(p) => p,
        Err(e) => {
            add("unparsed", None, e);
            return finish(m, Class::Additive, findings, rules);
        }
    };
    let up_effects: Vec<(usize, Effect)> = up
        .iter()
        .filter_map(|p| p.ast.as_ref().map(|a| (p.line, a)))
        .flat_map(|(l, a)| effects(a).into_iter().map(move |e| (l, e)))
        .collect();
    let created: BTreeSet<String> = up_effects
        .iter()
        .filter_map(|(_, e)| if let Effect::CreateTable(t) = e { Some(t.clone()) } else { None })
        .collect();
    let added_columns: BTreeMap<(String, String), String> = up
        .iter()
        .filter_map(|p| p.ast.as_ref())
        .flat_map(|a| match a {
            Ast::AlterTable { name, operations, .. } => operations
                .iter()
                .filter_map(|op| match op {
                    AlterTableOperation::AddColumn { column_def, .. } => Some((
                        (norm(name), unquote(&column_def.name.to_string())),
                        column_def.data_type.to_string().to_lowercase(),
                    )),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            _ => vec![],
        })
        .collect();

    for p in &up {
        let Some(ast) = &p.ast else {
            add(
                "unparsed",
                Some(p.line),
                format!("not checked: {}", p.error.as_deref().unwrap_or("unknown statement")),
            );
            continue;
        };
        let line = Some(p.line);
        match ast {
            Ast::CreateTable(ct) if !ct.if_not_exists => add(
                "create-without-if-not-exists",
                line,
                format!("CREATE TABLE {} without IF NOT EXISTS: a re-run fails", ct.name),
            ),
            Ast::CreateIndex(ci) => {
                let table = norm(&ci.table_name);
                if !ci.if_not_exists && engine != Engine::Mysql {
                    add(
                        "create-without-if-not-exists",
                        line,
                        "CREATE INDEX without IF NOT EXISTS: a re-run fails".into(),
                    );
                }
                if engine == Engine::Postgres && !ci.concurrently && !created.contains(&table) {
                    add(
                        "index-not-concurrent",
                        line,
                        format!("CREATE INDEX on existing table {table} blocks its writes; use CONCURRENTLY (with -- flotilla:no-transaction)"),
                    );
                }
            }
            Ast::AlterTable { name, operations, .. } => {
                let table = norm(name);
                let online = operations.iter().any(|op| {
                    matches!(
                        op,
                        AlterTableOperation::Algorithm {
                            algorithm: AlterTableAlgorithm::Instant | AlterTableAlgorithm::Inplace,
                            ..
                        }
                    )
                });
                for op in operations {
                    if let AlterTableOperation::AddColumn { column_def, .. } = op {
                        let not_null = column_def.options.iter().any(|o| matches!(o.option, ColumnOption::NotNull));
                        let default = column_def.options.iter().any(|o| matches!(o.option, ColumnOption::Default(_)));
                        if not_null && !default && !created.contains(&table) {
                            add(
                                "not-null-without-default",
                                line,
                                format!(
                                    "{table}.{} is added NOT NULL without a default: existing rows fail it. Add it nullable, backfill, then set NOT NULL",
                                    column_def.name
                                ),
                            );
                        }
                    }
                    if engine == Engine::Mysql && !online {
                        let copy = match op {
                            AlterTableOperation::ModifyColumn { col_name, data_type, .. } => {
                                added_columns.get(&(table.clone(), unquote(&col_name.to_string())))
                                    != Some(&data_type.to_string().to_lowercase())
                            }
                            AlterTableOperation::ChangeColumn { .. } | AlterTableOperation::DropPrimaryKey { .. } => {
                                true
                            }
                            AlterTableOperation::AddConstraint {
                                constraint: TableConstraint::PrimaryKey { .. },
                                ..
                            } => true,
                            _ => false,
                        };
                        if copy {
                            add(
                                "mysql-not-online",
                                line,
                                format!("this ALTER TABLE {table} copies the table under lock; say ALGORITHM=INPLACE (or INSTANT) to make MySQL refuse rather than copy"),
                            );
                        }
                    }
                }
            }
            _ => {}
        }
        for e in effects(ast) {
            match &e {
                Effect::RenameTable(..) | Effect::RenameColumn(..) => add(
                    "rename",
                    line,
                    format!("{}: running code still uses the old name. Expand (add the new name), migrate the application, then contract", describe(&e)),
                ),
                Effect::DropTable(t) | Effect::DropColumn(t, _) | Effect::TypeChange(t, _) if !created.contains(t) => {
                    if let Effect::TypeChange(t2, c) = &e {
                        if added_columns.contains_key(&(t2.clone(), c.clone())) {
                            continue; // a column this migration added: only its nullability or default changes
                        }
                    }
                    let backed_up = up.iter().filter(|q| q.line < p.line).filter_map(|q| q.ast.as_ref()).any(|a| backs_up(a, t));
                    if !backed_up {
                        add(
                            "destructive-without-backup",
                            line,
                            format!("{}: the data is lost and the DOWN cannot restore it. Copy it to a backup table or column first", describe(&e)),
                        );
                    }
                }
                _ => {}
            }
        }
    }

    if !m.up.text.lines().any(is_reason_comment) {
        add(
            "no-reason-comment",
            Some(m.up.first_line),
            "say why in a comment: the next reader needs the business reason".into(),
        );
    }
    if matches!(engine, Engine::Postgres | Engine::Sqlite)
        && !m.up.no_transaction
        && m.up.backfill.is_none()
        && !up.iter().any(|p| matches!(p.ast, Some(Ast::StartTransaction { .. })))
    {
        add(
            "no-explicit-transaction",
            Some(m.up.first_line),
            "wrap the UP in BEGIN … COMMIT to say it is one unit".into(),
        );
    }

    match &m.down {
        None => add("missing-down", None, "no DOWN: this migration cannot be rolled back".into()),
        Some(down) => {
            let parsed = parse(down, engine).unwrap_or_default();
            if let Some(p) = parsed.iter().find(|p| p.ast.is_none()) {
                // Claiming the DOWN is not a reverse on half the information would mislead.
                let why = p.error.as_deref().unwrap_or("unknown statement");
                add("unparsed", Some(p.line), format!("DOWN not checked against the UP: {why}"));
                return finish(m, classify(&up_effects, &created, &added_columns), findings, rules);
            }
            let down_effects: Vec<Effect> = parsed.iter().filter_map(|p| p.ast.as_ref()).flat_map(effects).collect();
            let mut missing: Vec<String> = Vec::new();
            for (line, e) in &up_effects {
                // A type change of a column this migration adds is undone by dropping the column.
                let own_column =
                    matches!(e, Effect::TypeChange(t, c) if added_columns.contains_key(&(t.clone(), c.clone())));
                if !matches!(e, Effect::Data(_)) && !own_column && !undone_by(e, &down_effects) {
                    missing.push(format!("{} (line {line})", describe(e)));
                }
            }
            // Everything the DOWN creates must be something the UP dropped (or a restore of it).
            for e in &down_effects {
                if let Effect::DropColumn(t, _) | Effect::DropTable(t) = e {
                    let col = if let Effect::DropColumn(_, c) = e { Some(c) } else { None };
                    let from_up = up_effects.iter().any(|(_, u)| match (u, col) {
                        (Effect::AddColumn(ut, uc), Some(c)) => ut == t && uc == c,
                        (Effect::CreateTable(ut), _) => ut == t,
                        _ => false,
                    });
                    let backup = t.contains("backup");
                    if !from_up && !backup {
                        missing.push(format!("the DOWN {} that the UP never created", describe(e)));
                    }
                }
            }
            if !missing.is_empty() {
                add(
                    "down-not-reverse",
                    Some(down.first_line),
                    format!("the DOWN does not undo: {}", missing.join("; ")),
                );
            }
        }
    }

    finish(m, classify(&up_effects, &created, &added_columns), findings, rules)
}

/// Destructive if it drops, retypes or renames what existed before; data if it changes existing rows; else additive.
fn classify(
    up_effects: &[(usize, Effect)],
    created: &BTreeSet<String>,
    added_columns: &BTreeMap<(String, String), String>,
) -> Class {
    let destroys = up_effects.iter().any(|(_, e)| match e {
        Effect::DropTable(t) | Effect::DropColumn(t, _) => !created.contains(t),
        Effect::TypeChange(t, c) => !added_columns.contains_key(&(t.clone(), c.clone())),
        Effect::RenameTable(..) | Effect::RenameColumn(..) => true,
        _ => false,
    });
    if destroys {
        Class::Destructive
    } else if up_effects.iter().any(|(_, e)| matches!(e, Effect::Data(t) if !created.contains(t))) {
        Class::Data
    } else {
        Class::Additive
    }
}

/// Whether `ast` keeps a copy of `table`'s data: `CREATE TABLE … AS SELECT` or `INSERT … SELECT` from it, or an
/// `UPDATE` of it (copying into a backup column).
fn backs_up(ast: &Ast, table: &str) -> bool {
    let mentions = |text: String| {
        let text = text.to_lowercase();
        text.split(|c: char| !(c.is_alphanumeric() || c == '_')).any(|w| w == table)
    };
    match ast {
        Ast::CreateTable(ct) => ct.query.as_ref().is_some_and(|q| mentions(q.to_string())),
        Ast::Insert(i) => i.source.as_ref().is_some_and(|q| mentions(q.to_string())),
        Ast::Update { table: t, .. } => unquote(&t.relation.to_string()) == table,
        _ => false,
    }
}

/// A comment that says something: not a directive, not a dbmate marker, not empty.
fn is_reason_comment(line: &str) -> bool {
    let l = line.trim();
    let body = l.strip_prefix("--").or_else(|| l.strip_prefix('#')).or_else(|| l.strip_prefix("/*")).map(str::trim);
    match body {
        Some(b) => !(b.is_empty() || b.starts_with("flotilla:") || b.starts_with("migrate:") || b == "no-transaction"),
        None => false,
    }
}

fn finish(m: &Migration, class: Class, findings: Vec<Finding>, rules: &RuleSet) -> MigrationLint {
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
