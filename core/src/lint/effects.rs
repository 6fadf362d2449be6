//! What each statement does to the schema ([`Effect`]s), from sqlparser's tree: what the classification and the
//! "DOWN reverses UP" check are computed from.

use std::collections::{BTreeMap, BTreeSet};

use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ObjectName, ObjectType, RenameTableNameKind, Statement as Ast,
};
use sqlparser::dialect::{Dialect as SqlDialect, GenericDialect, MySqlDialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;

use super::Class;
use crate::migration::{Script, ScriptKind};
use crate::{Engine, Statement};

/// What a statement does to the schema, by normalized name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Effect {
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

pub(super) fn describe(e: &Effect) -> String {
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
pub(super) fn norm(name: &ObjectName) -> String {
    unquote(&name.to_string())
}

pub(super) fn unquote(s: &str) -> String {
    s.rsplit('.').next().unwrap_or(s).trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']').to_lowercase()
}

pub(super) fn dialect(engine: Engine) -> Box<dyn SqlDialect> {
    match engine {
        Engine::Mysql => Box::new(MySqlDialect {}),
        Engine::Sqlite => Box::new(SQLiteDialect {}),
        _ => Box::new(PostgreSqlDialect {}),
    }
}

/// A parsed statement with its line; `None` when the parser did not understand it.
pub(super) struct Parsed {
    pub line: usize,
    pub ast: Option<Ast>,
    pub error: Option<String>,
}

pub(super) fn parse(script: &Script, engine: Engine) -> Result<Vec<Parsed>, String> {
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

pub(super) fn effects(ast: &Ast) -> Vec<Effect> {
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
pub(super) fn inverses(e: &Effect) -> Vec<Effect> {
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

pub(super) fn undone_by(e: &Effect, down: &[Effect]) -> bool {
    inverses(e).iter().any(|inv| match inv {
        // A dropped index comes back under its name, whatever table the DOWN names.
        Effect::CreateIndex(i, _) => down.iter().any(|d| matches!(d, Effect::CreateIndex(j, _) if j == i)),
        other => down.contains(other),
    })
}

/// Destructive if it drops, retypes or renames what existed before; data if it changes existing rows; else additive.
pub(super) fn classify(
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
pub(super) fn backs_up(ast: &Ast, table: &str) -> bool {
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
pub(super) fn is_reason_comment(line: &str) -> bool {
    let l = line.trim();
    let body = l.strip_prefix("--").or_else(|| l.strip_prefix('#')).or_else(|| l.strip_prefix("/*")).map(str::trim);
    match body {
        Some(b) => !(b.is_empty() || b.starts_with("flotilla:") || b.starts_with("migrate:") || b == "no-transaction"),
        None => false,
    }
}
