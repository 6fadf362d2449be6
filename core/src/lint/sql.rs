//! MySQL and SQLite statements through sqlparser, with the engine's dialect: each becomes a [`Stmt`], and keeps its
//! tree for the MySQL rules.

use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ColumnOption, ObjectName, ObjectType, RenameTableNameKind,
    Statement as Ast,
};
use sqlparser::dialect::{Dialect as SqlDialect, GenericDialect, MySqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;

use super::model::{unquote, words, Added, Effect, Stmt};
use crate::migration::{Script, ScriptKind};
use crate::{Engine, Statement};

/// A statement read, with sqlparser's tree when it understood it.
pub(super) struct Parsed {
    pub stmt: Stmt,
    pub text: String,
    pub ast: Option<Ast>,
}

pub(super) fn norm(name: &ObjectName) -> String {
    unquote(&name.to_string())
}

fn dialect(engine: Engine) -> Box<dyn SqlDialect> {
    match engine {
        Engine::Sqlite => Box::new(SQLiteDialect {}),
        _ => Box::new(MySqlDialect {}),
    }
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
            // MariaDB extensions the MySQL dialect lacks (ADD COLUMN IF NOT EXISTS) often parse with the generic one.
            let parsed = Parser::parse_sql(d.as_ref(), &text)
                .or_else(|e| Parser::parse_sql(&GenericDialect {}, &text).map_err(|_| e));
            match parsed {
                Ok(mut asts) if asts.len() == 1 => {
                    let ast = asts.pop().expect("one statement");
                    Parsed { stmt: read(&ast, line), ast: Some(ast), text }
                }
                Ok(_) => Parsed { stmt: Stmt::unparsed(line, "not exactly one statement".into()), ast: None, text },
                Err(e) => Parsed { stmt: Stmt::unparsed(line, e.to_string()), ast: None, text },
            }
        })
        .collect())
}

fn read(ast: &Ast, line: usize) -> Stmt {
    let mut s = Stmt::at(line);
    s.effects = effects(ast);
    match ast {
        Ast::StartTransaction { .. } => s.begins_transaction = true,
        Ast::CreateTable(ct) => {
            if let Some(q) = &ct.query {
                s.copies = words(&q.to_string());
            }
            if !ct.if_not_exists {
                s.create_without_if_not_exists = Some(format!("CREATE TABLE {}", ct.name));
            }
        }
        Ast::CreateIndex(ci) if !ci.if_not_exists => {
            let name = ci.name.as_ref().map(ToString::to_string).unwrap_or_default();
            s.create_without_if_not_exists = Some(format!("CREATE INDEX {name}"));
        }
        Ast::Insert(i) => s.copies = i.source.as_ref().map(|q| words(&q.to_string())).unwrap_or_default(),
        Ast::Update { table, .. } => s.copies = [unquote(&table.relation.to_string())].into(),
        Ast::AlterTable { name, operations, .. } => {
            s.added = operations
                .iter()
                .filter_map(|op| match op {
                    AlterTableOperation::AddColumn { column_def, .. } => Some(Added {
                        table: norm(name),
                        column: unquote(&column_def.name.to_string()),
                        ty: column_def.data_type.to_string().to_lowercase(),
                        not_null: column_def.options.iter().any(|o| matches!(o.option, ColumnOption::NotNull)),
                        default: column_def.options.iter().any(|o| matches!(o.option, ColumnOption::Default(_))),
                    }),
                    _ => None,
                })
                .collect();
        }
        _ => {}
    }
    s
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
            operations.iter().flat_map(|op| alter_effects(&t, op)).collect()
        }
        Ast::Insert(i) => vec![Effect::Data(unquote(&i.table.to_string()))],
        Ast::Update { table, .. } => vec![Effect::Data(unquote(&table.relation.to_string()))],
        Ast::Delete(d) => vec![Effect::Data(unquote(d.from.to_string().trim_start_matches("FROM ")))],
        _ => vec![],
    }
}

fn alter_effects(t: &str, op: &AlterTableOperation) -> Vec<Effect> {
    let t = t.to_string();
    match op {
        AlterTableOperation::AddColumn { column_def, .. } => {
            vec![Effect::AddColumn(t, unquote(&column_def.name.to_string()))]
        }
        AlterTableOperation::DropColumn { column_names, .. } => {
            column_names.iter().map(|c| Effect::DropColumn(t.clone(), unquote(&c.to_string()))).collect()
        }
        AlterTableOperation::RenameColumn { old_column_name, new_column_name } => {
            vec![Effect::RenameColumn(t, unquote(&old_column_name.to_string()), unquote(&new_column_name.to_string()))]
        }
        AlterTableOperation::RenameTable { table_name } => {
            let to = match table_name {
                RenameTableNameKind::As(n) | RenameTableNameKind::To(n) => norm(n),
            };
            vec![Effect::RenameTable(t, to)]
        }
        AlterTableOperation::AlterColumn { column_name, op: AlterColumnOperation::SetDataType { .. } } => {
            vec![Effect::TypeChange(t, unquote(&column_name.to_string()))]
        }
        AlterTableOperation::ModifyColumn { col_name, .. } => {
            vec![Effect::TypeChange(t, unquote(&col_name.to_string()))]
        }
        AlterTableOperation::ChangeColumn { old_name, new_name, .. } => {
            let (a, b) = (unquote(&old_name.to_string()), unquote(&new_name.to_string()));
            let mut e = vec![Effect::TypeChange(t.clone(), a.clone())];
            if a != b {
                e.push(Effect::RenameColumn(t, a, b));
            }
            e
        }
        _ => vec![],
    }
}
