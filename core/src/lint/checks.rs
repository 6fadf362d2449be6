//! The rules for one migration: its statements one by one, the UP as a whole, and the DOWN against the UP.

use std::collections::{BTreeMap, BTreeSet};

use sqlparser::ast::{
    AlterTableAlgorithm, AlterTableOperation, ColumnDef, ColumnOption, Statement as Ast, TableConstraint,
};

use super::effects::{
    backs_up, classify, describe, effects, is_reason_comment, norm, parse, undone_by, unquote, Effect, Parsed,
};
use super::{finish, Class, Finding, MigrationLint, RuleSet, Severity, RULES};
use crate::migration::{Migration, Script};
use crate::Engine;

pub(super) fn lint_one(m: &Migration, engine: Engine, rules: &RuleSet) -> MigrationLint {
    let up = match parse(&m.up, engine) {
        Ok(p) => p,
        Err(e) => {
            let mut findings = Findings::default();
            findings.add("unparsed", None, e);
            return finish(m, Class::Additive, findings.0, rules);
        }
    };
    let check = Check::new(engine, up);
    let mut findings = Findings::default();
    for p in &check.up {
        check.statement(p, &mut findings);
    }
    check.whole_up(&m.up, &mut findings);
    match &m.down {
        None => findings.add("missing-down", None, "no DOWN: this migration cannot be rolled back".into()),
        Some(down) if down.is_blank() => findings.add(
            "empty-down",
            Some(down.first_line),
            "the DOWN is empty: rolling back does nothing, so the UP must change nothing a rollback should undo".into(),
        ),
        Some(down) => check.down(down, &mut findings),
    }
    let class = classify(&check.up_effects, &check.created, &check.added_columns);
    finish(m, class, findings.0, rules)
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, rule: &'static str, line: Option<usize>, message: String) {
        let severity = RULES.iter().find(|(id, _, _)| *id == rule).map_or(Severity::Warning, |r| r.1);
        self.0.push(Finding { rule, severity, line, message });
    }
}

/// What the UP does, read once.
struct Check {
    engine: Engine,
    up: Vec<Parsed>,
    up_effects: Vec<(usize, Effect)>,
    /// Tables this migration creates: changes to them touch no existing rows.
    created: BTreeSet<String>,
    /// Columns this migration adds, with their types.
    added_columns: BTreeMap<(String, String), String>,
}

impl Check {
    fn new(engine: Engine, up: Vec<Parsed>) -> Check {
        let up_effects: Vec<(usize, Effect)> = up
            .iter()
            .filter_map(|p| p.ast.as_ref().map(|a| (p.line, a)))
            .flat_map(|(l, a)| effects(a).into_iter().map(move |e| (l, e)))
            .collect();
        let created = up_effects
            .iter()
            .filter_map(|(_, e)| if let Effect::CreateTable(t) = e { Some(t.clone()) } else { None })
            .collect();
        let added_columns = up
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
        Check { engine, up, up_effects, created, added_columns }
    }

    fn statement(&self, p: &Parsed, findings: &mut Findings) {
        let Some(ast) = &p.ast else {
            let why = p.error.as_deref().unwrap_or("unknown statement");
            findings.add("unparsed", Some(p.line), format!("not checked: {why}"));
            return;
        };
        let line = Some(p.line);
        match ast {
            Ast::CreateTable(ct) if !ct.if_not_exists => findings.add(
                "create-without-if-not-exists",
                line,
                format!("CREATE TABLE {} without IF NOT EXISTS: a re-run fails", ct.name),
            ),
            Ast::CreateIndex(ci) => {
                let table = norm(&ci.table_name);
                if !ci.if_not_exists && self.engine != Engine::Mysql {
                    let message = "CREATE INDEX without IF NOT EXISTS: a re-run fails".into();
                    findings.add("create-without-if-not-exists", line, message);
                }
                if self.engine == Engine::Postgres && !ci.concurrently && !self.created.contains(&table) {
                    findings.add(
                        "index-not-concurrent",
                        line,
                        format!("CREATE INDEX on existing table {table} blocks its writes; use CONCURRENTLY (with -- flotilla:no-transaction)"),
                    );
                }
            }
            Ast::AlterTable { name, operations, .. } => self.alter_table(&norm(name), operations, line, findings),
            _ => {}
        }
        for e in effects(ast) {
            self.effect(&e, p.line, findings);
        }
    }

    fn alter_table(
        &self,
        table: &str,
        operations: &[AlterTableOperation],
        line: Option<usize>,
        findings: &mut Findings,
    ) {
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
                self.added_column(table, column_def, line, findings);
            }
            if self.engine == Engine::Mysql && !online && self.copies_table(table, op) {
                findings.add(
                    "mysql-not-online",
                    line,
                    format!("this ALTER TABLE {table} copies the table under lock; say ALGORITHM=INPLACE (or INSTANT) to make MySQL refuse rather than copy"),
                );
            }
        }
    }

    fn added_column(&self, table: &str, column: &ColumnDef, line: Option<usize>, findings: &mut Findings) {
        let not_null = column.options.iter().any(|o| matches!(o.option, ColumnOption::NotNull));
        let default = column.options.iter().any(|o| matches!(o.option, ColumnOption::Default(_)));
        if not_null && !default && !self.created.contains(table) {
            findings.add(
                "not-null-without-default",
                line,
                format!(
                    "{table}.{} is added NOT NULL without a default: existing rows fail it. Add it nullable, backfill, then set NOT NULL",
                    column.name
                ),
            );
        }
    }

    /// Whether MySQL rebuilds the table for `op` unless told to work in place.
    fn copies_table(&self, table: &str, op: &AlterTableOperation) -> bool {
        match op {
            AlterTableOperation::ModifyColumn { col_name, data_type, .. } => {
                self.added_columns.get(&(table.to_string(), unquote(&col_name.to_string())))
                    != Some(&data_type.to_string().to_lowercase())
            }
            AlterTableOperation::ChangeColumn { .. } | AlterTableOperation::DropPrimaryKey { .. } => true,
            AlterTableOperation::AddConstraint { constraint: TableConstraint::PrimaryKey { .. }, .. } => true,
            _ => false,
        }
    }

    fn effect(&self, e: &Effect, line: usize, findings: &mut Findings) {
        match e {
            Effect::RenameTable(..) | Effect::RenameColumn(..) => findings.add(
                "rename",
                Some(line),
                format!("{}: running code still uses the old name. Expand (add the new name), migrate the application, then contract", describe(e)),
            ),
            Effect::DropTable(t) | Effect::DropColumn(t, _) | Effect::TypeChange(t, _) if !self.created.contains(t) => {
                if let Effect::TypeChange(t, c) = e {
                    if self.added_columns.contains_key(&(t.clone(), c.clone())) {
                        return; // a column this migration added: only its nullability or default changes
                    }
                }
                let earlier = self.up.iter().filter(|q| q.line < line).filter_map(|q| q.ast.as_ref());
                if !earlier.into_iter().any(|a| backs_up(a, t)) {
                    findings.add(
                        "destructive-without-backup",
                        Some(line),
                        format!("{}: the data is lost and the DOWN cannot restore it. Copy it to a backup table or column first", describe(e)),
                    );
                }
            }
            _ => {}
        }
    }

    /// Rules about the UP as a whole: its reason, its transaction.
    fn whole_up(&self, up: &Script, findings: &mut Findings) {
        if !up.text.lines().any(is_reason_comment) {
            let message = "say why in a comment: the next reader needs the business reason".into();
            findings.add("no-reason-comment", Some(up.first_line), message);
        }
        let explicit = self.up.iter().any(|p| matches!(p.ast, Some(Ast::StartTransaction { .. })));
        if matches!(self.engine, Engine::Postgres | Engine::Sqlite)
            && !up.no_transaction
            && up.backfill.is_none()
            && !explicit
            && !up.is_blank()
        {
            let message = "wrap the UP in BEGIN … COMMIT to say it is one unit".into();
            findings.add("no-explicit-transaction", Some(up.first_line), message);
        }
    }

    /// The DOWN must undo everything the UP did, and create nothing the UP did not remove.
    fn down(&self, down: &Script, findings: &mut Findings) {
        let parsed = parse(down, self.engine).unwrap_or_default();
        if let Some(p) = parsed.iter().find(|p| p.ast.is_none()) {
            // Claiming the DOWN is not a reverse on half the information would mislead.
            let why = p.error.as_deref().unwrap_or("unknown statement");
            findings.add("unparsed", Some(p.line), format!("DOWN not checked against the UP: {why}"));
            return;
        }
        let down_effects: Vec<Effect> = parsed.iter().filter_map(|p| p.ast.as_ref()).flat_map(effects).collect();
        let mut missing: Vec<String> = Vec::new();
        for (line, e) in &self.up_effects {
            // A type change of a column this migration adds is undone by dropping the column.
            let own_column =
                matches!(e, Effect::TypeChange(t, c) if self.added_columns.contains_key(&(t.clone(), c.clone())));
            if !matches!(e, Effect::Data(_)) && !own_column && !undone_by(e, &down_effects) {
                missing.push(format!("{} (line {line})", describe(e)));
            }
        }
        for e in &down_effects {
            if let Effect::DropColumn(t, _) | Effect::DropTable(t) = e {
                let col = if let Effect::DropColumn(_, c) = e { Some(c) } else { None };
                let from_up = self.up_effects.iter().any(|(_, u)| match (u, col) {
                    (Effect::AddColumn(ut, uc), Some(c)) => ut == t && uc == c,
                    (Effect::CreateTable(ut), _) => ut == t,
                    _ => false,
                });
                if !from_up && !t.contains("backup") {
                    missing.push(format!("the DOWN {} that the UP never created", describe(e)));
                }
            }
        }
        if !missing.is_empty() {
            let message = format!("the DOWN does not undo: {}", missing.join("; "));
            findings.add("down-not-reverse", Some(down.first_line), message);
        }
    }
}
