//! One migration: read by its engine's parser, the engine's rules (squawk, MySQL, MongoDB), then Flotilla's own rules
//! on the statements: each one, the UP as a whole, and the DOWN against the UP.

use std::collections::{BTreeMap, BTreeSet};

use super::catalogue::flotilla_severity;
use super::model::{classify, describe, is_reason_comment, undone_by, Effect, Stmt};
use super::mysql::Columns;
use super::{directives, finish, mongo, mysql, postgres, sql, Context, Finding, MigrationLint, Source};
use crate::migration::{Migration, Script};
use crate::Engine;

pub(super) fn lint_one(m: &Migration, engine: Engine, context: &Context, columns: &mut Columns) -> MigrationLint {
    let mut findings = Findings::default();
    let up = match engine {
        Engine::Postgres => {
            let read = postgres::read(&m.up);
            let (_, deny) = directives(&m.up);
            findings.0.extend(postgres::findings(&m.up, &read, context, &deny));
            read.stmts
        }
        Engine::Mysql | Engine::Sqlite => match sql::parse(&m.up, engine) {
            Ok(parsed) => {
                let mut kept = BTreeSet::new();
                if engine == Engine::Mysql {
                    findings.0.extend(mysql::check(&parsed, context.rules.mysql_server, columns, &mut kept));
                }
                let mut stmts: Vec<Stmt> = parsed.into_iter().map(|p| p.stmt).collect();
                for s in &mut stmts {
                    s.effects
                        .retain(|e| !matches!(e, Effect::TypeChange(t, c) if kept.contains(&(t.clone(), c.clone()))));
                }
                stmts
            }
            Err(e) => vec![Stmt::unparsed(m.up.first_line, e)],
        },
        Engine::Mongodb => {
            let (stmts, commands) = mongo::read(&m.up);
            findings.0.extend(mongo::check(&m.up, &commands));
            stmts
        }
    };
    let check = Check::new(engine, up);
    for s in &check.up {
        check.statement(s, &mut findings);
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
    let mut findings = findings.0;
    findings.sort_by_key(|f| f.line);
    finish(m, class, findings, &context.rules)
}

/// A script's statements, by its engine's parser.
fn statements(script: &Script, engine: Engine) -> Vec<Stmt> {
    match engine {
        Engine::Postgres => postgres::read(script).stmts,
        Engine::Mysql | Engine::Sqlite => match sql::parse(script, engine) {
            Ok(parsed) => parsed.into_iter().map(|p| p.stmt).collect(),
            Err(e) => vec![Stmt::unparsed(script.first_line, e)],
        },
        Engine::Mongodb => mongo::read(script).0,
    }
}

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, rule: &'static str, line: Option<usize>, message: String) {
        let severity = flotilla_severity(rule);
        self.0.push(Finding { source: Source::Flotilla, rule: rule.to_string(), severity, line, message, help: None });
    }
}

/// What the UP does, read once.
struct Check {
    engine: Engine,
    up: Vec<Stmt>,
    up_effects: Vec<(usize, Effect)>,
    /// Tables this migration creates: changes to them touch no existing rows.
    created: BTreeSet<String>,
    /// Columns this migration adds, with their types.
    added_columns: BTreeMap<(String, String), String>,
}

impl Check {
    fn new(engine: Engine, up: Vec<Stmt>) -> Check {
        let up_effects: Vec<(usize, Effect)> =
            up.iter().flat_map(|s| s.effects.iter().map(move |e| (s.line, e.clone()))).collect();
        let created = up_effects
            .iter()
            .filter_map(|(_, e)| if let Effect::CreateTable(t) = e { Some(t.clone()) } else { None })
            .collect();
        let added_columns =
            up.iter().flat_map(|s| &s.added).map(|a| ((a.table.clone(), a.column.clone()), a.ty.clone())).collect();
        Check { engine, up, up_effects, created, added_columns }
    }

    fn statement(&self, s: &Stmt, findings: &mut Findings) {
        if let Some(why) = &s.unparsed {
            findings.add("unparsed", Some(s.line), format!("not checked: {why}"));
            return;
        }
        // On PostgreSQL squawk's rules say these (adding-required-field, prefer-robust-stmts, renaming-*).
        if self.engine != Engine::Postgres && self.engine != Engine::Mongodb {
            if let Some(what) = &s.create_without_if_not_exists {
                if !(self.engine == Engine::Mysql && what.starts_with("CREATE INDEX")) {
                    findings.add(
                        "create-without-if-not-exists",
                        Some(s.line),
                        format!("{what} without IF NOT EXISTS: a re-run fails"),
                    );
                }
            }
            for a in s.added.iter().filter(|a| a.not_null && !a.default && !self.created.contains(&a.table)) {
                findings.add(
                    "not-null-without-default",
                    Some(s.line),
                    format!(
                        "{}.{} is added NOT NULL without a default: existing rows fail it. Add it nullable, backfill, then set NOT NULL",
                        a.table, a.column
                    ),
                );
            }
        }
        for e in &s.effects {
            self.effect(e, s.line, findings);
        }
    }

    fn effect(&self, e: &Effect, line: usize, findings: &mut Findings) {
        match e {
            Effect::RenameTable(..) | Effect::RenameColumn(..) if self.engine != Engine::Postgres => findings.add(
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
                if !self.up.iter().filter(|q| q.line < line).any(|q| q.backs_up(t)) {
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
        if self.engine == Engine::Mongodb {
            return; // a JSON command list has no comments
        }
        if !up.text.lines().any(is_reason_comment) {
            let message = "say why in a comment: the next reader needs the business reason".into();
            findings.add("no-reason-comment", Some(up.first_line), message);
        }
        let explicit = self.up.iter().any(|s| s.begins_transaction);
        if matches!(self.engine, Engine::Postgres | Engine::Sqlite)
            && !up.no_transaction
            && up.backfill.is_none()
            && !explicit
            && !up.is_blank()
        {
            let message = "wrap the UP in BEGIN … COMMIT to say it is one unit".into();
            findings.add("no-explicit-transaction", Some(up.first_line), message);
        }
        if self.engine == Engine::Postgres && !up.no_transaction {
            self.backfill_under_lock(explicit, findings);
        }
    }

    /// An UPDATE or DELETE of a table that an earlier statement of the same transaction altered or indexed: the
    /// DDL's lock is held until the backfill commits, so every query on the table waits for the whole backfill
    /// (strong_migrations' "backfilling data"). A table this migration creates is nobody else's yet.
    fn backfill_under_lock(&self, explicit: bool, findings: &mut Findings) {
        // Without its own BEGIN the script is one transaction; with one, only what stands between BEGIN and COMMIT.
        let mut in_transaction = !explicit;
        let mut locked: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &self.up {
            if s.begins_transaction {
                in_transaction = true;
            }
            if s.ends_transaction {
                in_transaction = false;
                locked.clear();
            }
            if let Some(t) = s.locks.as_deref().filter(|t| in_transaction && !self.created.contains(*t)) {
                locked.entry(t).or_insert(s.line);
            }
            if let Some((t, ddl)) = s.rewrites.as_deref().and_then(|t| locked.get_key_value(t)) {
                let message = format!(
                    "this backfill of {t} runs in the transaction whose DDL locked {t} at line {ddl}: every query on \
                     {t} waits until the backfill commits. Commit the DDL first and backfill in a migration of its own \
                     (`-- flotilla:backfill` runs it in batches)"
                );
                findings.add("backfill-in-ddl-transaction", Some(s.line), message);
            }
        }
    }

    /// The DOWN must undo everything the UP did, and create nothing the UP did not remove.
    fn down(&self, down: &Script, findings: &mut Findings) {
        let parsed = statements(down, self.engine);
        if let Some(s) = parsed.iter().find(|s| s.unparsed.is_some()) {
            // Claiming the DOWN is not a reverse on half the information would mislead.
            let why = s.unparsed.as_deref().unwrap_or_default();
            findings.add("unparsed", Some(s.line), format!("DOWN not checked against the UP: {why}"));
            return;
        }
        let down_effects: Vec<Effect> = parsed.into_iter().flat_map(|s| s.effects).collect();
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
