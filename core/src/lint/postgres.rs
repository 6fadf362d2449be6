//! PostgreSQL through squawk: its parser reads the script once; squawk's rules run on that tree, and each statement
//! becomes a [`Stmt`] for Flotilla's own rules.

use std::collections::BTreeSet;

use squawk_linter::{Linter, LinterSettings, Rule};
use squawk_syntax::ast::{self, AstNode};
use squawk_syntax::{Parse, SourceFile, SyntaxNode};

use super::catalogue::{squawk_rules, squawk_severity};
use super::model::{line_at, unquote, words, Added, Effect, Stmt};
use super::{Context, Finding, Source};
use crate::migration::Script;

/// A script read by squawk's parser.
pub(super) struct Read {
    pub stmts: Vec<Stmt>,
    parse: Parse<SourceFile>,
}

pub(super) fn read(script: &Script) -> Read {
    let parse = SourceFile::parse(&script.text);
    let at = |offset: usize| line_at(&script.text, script.first_line, offset);
    let mut stmts: Vec<Stmt> = parse.tree().stmts().map(|s| stmt(&s, at(start(s.syntax())))).collect();
    // squawk's parser recovers from what it cannot read: the statement around each error is not checked.
    for e in parse.errors() {
        let line = at(usize::from(e.range().start()));
        let why = format!("squawk's parser: {}", e.message());
        match stmts.iter_mut().rev().find(|s| s.line <= line) {
            Some(s) if s.unparsed.is_none() => *s = Stmt::unparsed(s.line, why),
            Some(_) => {}
            None => stmts.insert(0, Stmt::unparsed(line, why)),
        }
    }
    Read { stmts, parse }
}

/// squawk's findings on the UP. The rules are squawk's defaults plus the opt-in ones the project or the migration
/// denies; `require-lock-timeout` is left out because the executor sets a lock timeout on every migration (5 s
/// unless configured), and `require-statement-timeout` is met by a `-- flotilla:statement-timeout` or the run's.
pub(super) fn findings(script: &Script, read: &Read, context: &Context, deny: &BTreeSet<String>) -> Vec<Finding> {
    let explicit = read.stmts.iter().any(|s| s.begins_transaction);
    let rules = squawk_rules().filter(|r| {
        let on = !r.is_opt_in() || deny.contains(&r.to_string()) || context.rules.deny.contains(&r.to_string());
        let met = match r {
            Rule::RequireLockTimeout => true,
            Rule::RequireStatementTimeout => context.statement_timeout || script.timeouts.statement.is_some(),
            _ => false,
        };
        on && !met
    });
    let mut linter = Linter::from(rules);
    let pg_version = context.rules.postgres_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or_default();
    // The executor runs a script in one transaction unless it says `-- flotilla:no-transaction`; a script with its
    // own BEGIN … COMMIT shows squawk where the transaction is.
    let in_transaction = !script.no_transaction && !explicit;
    linter.settings = LinterSettings { pg_version, assume_in_transaction: in_transaction };
    let mut violations = linter.lint(&read.parse, &script.text);
    // squawk leaves a one-statement file alone (tools run those outside a transaction); Flotilla does not.
    let concurrent = read.parse.tree().stmts().find_map(|s| match s {
        ast::Stmt::CreateIndex(i) => i.concurrently_token(),
        _ => None,
    });
    let rule = Rule::BanConcurrentIndexCreationInTransaction;
    if let Some(token) = concurrent.filter(|_| in_transaction && !violations.iter().any(|v| v.code == rule)) {
        let message = "Flotilla runs the script in a transaction, where CREATE INDEX CONCURRENTLY fails.".to_string();
        violations.push(squawk_linter::Violation {
            code: rule,
            message,
            text_range: token.text_range(),
            help: Some("Say `-- flotilla:no-transaction` in the script.".into()),
            fix: None,
        });
    }
    violations
        .into_iter()
        .map(|v| Finding {
            source: Source::Squawk,
            rule: v.code.to_string(),
            severity: squawk_severity(v.code),
            line: Some(line_at(&script.text, script.first_line, usize::from(v.text_range.start()))),
            message: v.message,
            help: Some(match v.help {
                Some(help) => format!("{help} (https://squawkhq.com/docs/{})", v.code),
                None => format!("https://squawkhq.com/docs/{}", v.code),
            }),
        })
        .collect()
}

/// Offset of a node's first token that is not whitespace or a comment.
fn start(node: &SyntaxNode) -> usize {
    let first = node.descendants_with_tokens().filter_map(|e| e.into_token()).find(|t| !t.kind().is_trivia());
    usize::from(first.map_or(node.text_range().start(), |t| t.text_range().start()))
}

fn text(node: &impl AstNode) -> String {
    node.syntax().text().to_string()
}

fn name(node: Option<impl AstNode>) -> String {
    node.map(|n| unquote(&text(&n))).unwrap_or_default()
}

fn stmt(s: &ast::Stmt, line: usize) -> Stmt {
    let mut out = Stmt::at(line);
    match s {
        ast::Stmt::Begin(_) => out.begins_transaction = true,
        ast::Stmt::Commit(_) | ast::Stmt::Rollback(_) => out.ends_transaction = true,
        ast::Stmt::CreateTable(t) => out.effects.push(Effect::CreateTable(name(t.table_name()))),
        ast::Stmt::CreateTableAs(t) => {
            out.effects.push(Effect::CreateTable(name(t.table_name())));
            out.copies = t.query().map(|q| words(&text(&q))).unwrap_or_default();
        }
        ast::Stmt::DropTable(t) => out.effects.extend(t.table_name_refs().map(|n| Effect::DropTable(name(Some(n))))),
        ast::Stmt::AlterTable(t) => alter_table(t, &mut out),
        ast::Stmt::CreateIndex(i) => {
            let table = name(i.table_relation_name().and_then(|r| r.table_name_ref()));
            if i.concurrently_token().is_none() {
                out.locks = Some(table.clone());
            }
            out.effects.push(Effect::CreateIndex(name(i.index()), table));
        }
        ast::Stmt::DropIndex(i) => out.effects.extend(i.index_refs().map(|n| Effect::DropIndex(name(Some(n))))),
        ast::Stmt::CreateView(v) => out.effects.push(Effect::CreateView(name(v.view()))),
        ast::Stmt::CreateMaterializedView(v) => out.effects.push(Effect::CreateView(name(v.view()))),
        ast::Stmt::DropView(v) => out.effects.extend(v.view_refs().map(|n| Effect::DropView(name(Some(n))))),
        ast::Stmt::DropMaterializedView(v) => {
            out.effects.extend(v.view_refs().map(|n| Effect::DropView(name(Some(n)))))
        }
        ast::Stmt::Insert(i) => {
            out.effects.push(Effect::Data(name(i.relation_name_ref())));
            out.copies = i.insert_source().map(|q| words(&text(&q))).unwrap_or_default();
        }
        ast::Stmt::Update(u) => {
            let table = name(u.relation_name().and_then(|r| r.relation_name_ref()));
            out.copies = [table.clone()].into();
            out.rewrites = Some(table.clone());
            out.effects.push(Effect::Data(table));
        }
        ast::Stmt::Delete(d) => {
            let table = name(d.relation_name().and_then(|r| r.relation_name_ref()));
            out.rewrites = Some(table.clone());
            out.effects.push(Effect::Data(table));
        }
        _ => {}
    }
    out
}

fn alter_table(t: &ast::AlterTable, out: &mut Stmt) {
    let table = name(t.table_relation_name().and_then(|r| r.table_name_ref()));
    out.locks = Some(table.clone());
    for action in t.actions() {
        match action {
            ast::AlterTableAction::AddColumn(a) => {
                let column = name(a.column_name());
                let constraints: Vec<ast::Constraint> = a.constraints().collect();
                out.added.push(Added {
                    table: table.clone(),
                    column: column.clone(),
                    ty: a.ty().map(|ty| text(&ty).to_lowercase()).unwrap_or_default(),
                    not_null: constraints.iter().any(|c| matches!(c, ast::Constraint::NotNullConstraint(_))),
                    default: constraints.iter().any(|c| matches!(c, ast::Constraint::DefaultConstraint(_))),
                });
                out.effects.push(Effect::AddColumn(table.clone(), column));
            }
            ast::AlterTableAction::DropColumn(d) => {
                out.effects.push(Effect::DropColumn(table.clone(), name(d.column_name_ref())))
            }
            ast::AlterTableAction::RenameColumn(r) => {
                out.effects.push(Effect::RenameColumn(table.clone(), name(r.column_name_ref()), name(r.column_name())))
            }
            ast::AlterTableAction::TableRenameTo(r) => {
                out.effects.push(Effect::RenameTable(table.clone(), name(r.table_name())))
            }
            ast::AlterTableAction::AlterColumn(c) if matches!(c.option(), Some(ast::AlterColumnOption::SetType(_))) => {
                out.effects.push(Effect::TypeChange(table.clone(), name(c.column_name_ref())))
            }
            _ => {}
        }
    }
}
