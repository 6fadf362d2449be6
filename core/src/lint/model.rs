//! What a statement does, whichever parser read it: the facts Flotilla's own rules, the classification and the
//! "DOWN reverses UP" check are computed from.

use std::collections::{BTreeMap, BTreeSet};

use super::Class;

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

/// A column a statement adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Added {
    pub table: String,
    pub column: String,
    /// Its type as written, lowercased.
    pub ty: String,
    pub not_null: bool,
    pub default: bool,
}

/// One statement, read.
#[derive(Debug, Clone, Default)]
pub(super) struct Stmt {
    /// Line in the migration's file.
    pub line: usize,
    pub effects: Vec<Effect>,
    /// `BEGIN` or `START TRANSACTION`.
    pub begins_transaction: bool,
    /// `COMMIT`, `END` or `ROLLBACK`.
    pub ends_transaction: bool,
    /// The table a DDL statement locks until its transaction ends (`ALTER TABLE`, a plain `CREATE INDEX`).
    pub locks: Option<String>,
    /// The table whose existing rows an `UPDATE` or `DELETE` rewrites: a backfill.
    pub rewrites: Option<String>,
    /// Words of the data this statement copies (the query of `CREATE TABLE … AS` or `INSERT … SELECT`; the table an
    /// `UPDATE` writes, copying into a backup column): what a backup looks like.
    pub copies: BTreeSet<String>,
    pub added: Vec<Added>,
    /// `CREATE TABLE` or `CREATE INDEX` without `IF NOT EXISTS`: what it creates.
    pub create_without_if_not_exists: Option<String>,
    /// Why no parser read it.
    pub unparsed: Option<String>,
}

impl Stmt {
    pub fn at(line: usize) -> Stmt {
        Stmt { line, ..Stmt::default() }
    }

    pub fn unparsed(line: usize, why: String) -> Stmt {
        Stmt { line, unparsed: Some(why), ..Stmt::default() }
    }

    /// Whether this statement keeps a copy of `table`'s data.
    pub fn backs_up(&self, table: &str) -> bool {
        self.copies.contains(table)
    }
}

/// The identifiers of a piece of SQL, lowercased: what `copies` holds.
pub(super) fn words(sql: &str) -> BTreeSet<String> {
    sql.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// Last part of a possibly qualified, possibly quoted name, lowercased.
pub(super) fn unquote(s: &str) -> String {
    s.trim()
        .rsplit('.')
        .next()
        .unwrap_or(s)
        .trim_matches(|c| c == '"' || c == '`' || c == '[' || c == ']')
        .to_lowercase()
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

/// A comment that says something: not a directive, not a dbmate marker, not empty.
pub(super) fn is_reason_comment(line: &str) -> bool {
    let l = line.trim();
    let body = l.strip_prefix("--").or_else(|| l.strip_prefix('#')).or_else(|| l.strip_prefix("/*")).map(str::trim);
    match body {
        Some(b) => !(b.is_empty() || b.starts_with("flotilla:") || b.starts_with("migrate:") || b == "no-transaction"),
        None => false,
    }
}

/// Line in the file of byte `offset` of a script that starts at `first_line`.
pub(super) fn line_at(text: &str, first_line: usize, offset: usize) -> usize {
    first_line + text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count()
}
