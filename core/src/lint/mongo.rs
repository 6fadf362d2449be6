//! MongoDB rules on a script's command list: index builds on existing collections (plain, unique, TTL), validators
//! that reject writes to documents already there, `renameCollection` over a target, index drops. Each command also
//! becomes a [`Stmt`] for Flotilla's own rules (a `drop` is destructive, the DOWN must reverse the UP).

use std::collections::BTreeSet;

use serde_json::Value;

use super::catalogue::flotilla_severity;
use super::model::{Effect, Stmt};
use super::{Finding, Source};
use crate::migration::Script;
use crate::mongo::{parse_commands, Command};

/// The commands of a script as statements; a script that does not parse is one unparsed statement.
pub(super) fn read(script: &Script) -> (Vec<Stmt>, Vec<Command>) {
    match parse_commands(&script.text) {
        Ok(commands) => (commands.iter().map(|c| stmt(c, script.first_line)).collect(), commands),
        Err(e) => (vec![Stmt::unparsed(script.first_line + e.line - 1, e.message)], Vec::new()),
    }
}

fn collection(c: &Command) -> String {
    let name = c.body.get(&c.name).and_then(Value::as_str).unwrap_or_default();
    // renameCollection names `db.collection`.
    name.split_once('.').map_or(name, |(_, coll)| coll).to_lowercase()
}

fn stmt(c: &Command, first_line: usize) -> Stmt {
    let mut s = Stmt::at(first_line + c.line - 1);
    let coll = collection(c);
    match c.name.as_str() {
        "create" => s.effects.push(Effect::CreateTable(coll)),
        "drop" => s.effects.push(Effect::DropTable(coll)),
        "createIndexes" => {
            for index in indexes(c) {
                let name = index.get("name").and_then(Value::as_str).unwrap_or_default().to_lowercase();
                s.effects.push(Effect::CreateIndex(name, coll.clone()));
            }
        }
        "dropIndexes" => {
            let names = match c.body.get("index") {
                Some(Value::String(n)) => vec![n.to_lowercase()],
                Some(Value::Array(ns)) => ns.iter().filter_map(Value::as_str).map(str::to_lowercase).collect(),
                _ => vec![],
            };
            s.effects.extend(names.into_iter().map(Effect::DropIndex));
        }
        "renameCollection" => {
            let to = c.body.get("to").and_then(Value::as_str).unwrap_or_default();
            let to = to.split_once('.').map_or(to, |(_, coll)| coll).to_lowercase();
            s.effects.push(Effect::RenameTable(coll, to));
        }
        "insert" | "update" | "delete" => s.effects.push(Effect::Data(coll)),
        _ => {}
    }
    s
}

fn indexes(c: &Command) -> Vec<&Value> {
    c.body.get("indexes").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
}

/// The MongoDB rules over one UP.
pub(super) fn check(script: &Script, commands: &[Command]) -> Vec<Finding> {
    let created: BTreeSet<String> = commands.iter().filter(|c| c.name == "create").map(collection).collect();
    let mut findings = Vec::new();
    let mut add = |rule: &str, c: &Command, message: String, help: &str| {
        findings.push(Finding {
            source: Source::Flotilla,
            rule: rule.to_string(),
            severity: flotilla_severity(rule),
            line: Some(script.first_line + c.line - 1),
            message,
            help: Some(help.to_string()),
        })
    };
    for c in commands {
        let coll = collection(c);
        let existing = !created.contains(&coll);
        match c.name.as_str() {
            "createIndexes" if existing => {
                for index in indexes(c) {
                    let name = index.get("name").and_then(Value::as_str).unwrap_or("?");
                    if index.get("expireAfterSeconds").is_some() {
                        add("mongo-ttl-index-on-existing", c, format!("TTL index {name} on existing collection {coll}: every document already past its expiry is deleted as soon as the index is built"), "check how many documents the TTL would delete first; back them up, or add the index with a long expiry and shorten it with collMod");
                    } else if index.get("unique").and_then(Value::as_bool) == Some(true) {
                        add("mongo-unique-index-on-existing", c, format!("unique index {name} on existing collection {coll}: the build fails on the first duplicate, after reading the whole collection"), "find duplicates first with an aggregation ($group by the key, count > 1) and fix them in an earlier migration");
                    } else {
                        add("mongo-index-on-existing", c, format!("index {name} on existing collection {coll}: the build reads every document and holds an exclusive lock at its start and end"), "build it off-peak, or as a rolling build replica by replica");
                    }
                }
            }
            "collMod" | "create" => validator(c, existing, &mut add),
            "renameCollection" if c.body.get("dropTarget").and_then(Value::as_bool) == Some(true) => {
                let to = c.body.get("to").and_then(Value::as_str).unwrap_or("?");
                add(
                    "mongo-rename-drop-target",
                    c,
                    format!("renameCollection to {to} with dropTarget: true drops {to} and every document in it"),
                    "rename the target away first (kept for the DOWN), then rename without dropTarget",
                );
            }
            "dropIndexes" if existing => {
                let which = c.body.get("index").map(|v| v.to_string()).unwrap_or_default();
                add(
                    "mongo-drop-index",
                    c,
                    format!("dropping index {which} on {coll}: queries that used it scan the collection"),
                    "hide it first (collMod with hidden: true), watch the queries, then drop it",
                );
            }
            _ => {}
        }
    }
    findings
}

/// A validator that errors: old documents that fail it can no longer be updated.
fn validator(c: &Command, existing: bool, add: &mut impl FnMut(&str, &Command, String, &str)) {
    if c.name == "create" || !existing || c.body.get("validator").is_none() {
        return;
    }
    let action = c.body.get("validationAction").and_then(Value::as_str).unwrap_or("error");
    let level = c.body.get("validationLevel").and_then(Value::as_str).unwrap_or("strict");
    if action == "error" && level == "strict" {
        let coll = collection(c);
        add("mongo-validator-error", c, format!("a validator on existing collection {coll} with validationAction error (level strict): any update to a document that does not match it fails"), "start with validationAction: \"warn\" or validationLevel: \"moderate\", fix the documents, then tighten");
    }
}
