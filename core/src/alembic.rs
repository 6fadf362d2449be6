//! Alembic's revision chain, read from its `versions/*.py` files, and Alembic's offline SQL turned into native
//! migrations: `flotilla import alembic` runs Alembic itself (`upgrade A:B --sql`, `downgrade B:A --sql`) for each
//! revision, so the SQL is what Alembic would run, and keeps it without Alembic's own bookkeeping.

use std::collections::BTreeMap;

use crate::error::ReadError;
use crate::reader::Files;
use crate::split::{split, Dialect};

/// One revision, in chain order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub id: String,
    /// The revision before it; `None` for the first.
    pub down: Option<String>,
    /// The first line of its docstring ("add customer tier").
    pub message: String,
}

/// The chain from base to head. Branches and merges are refused: a fleet applies one order.
pub fn revisions(files: &Files) -> Result<Vec<Revision>, ReadError> {
    let mut by_parent: BTreeMap<Option<String>, Revision> = BTreeMap::new();
    for (rel, _) in files.iter() {
        if !rel.ends_with(".py") || rel.contains('/') || rel.starts_with("__") {
            continue;
        }
        let path = files.path(rel);
        let text = files.text(rel)?;
        let Some(id) = assigned(text, "revision") else { continue };
        let id = literal(&id).ok_or_else(|| ReadError::new(&path, "`revision` is not a string literal"))?;
        let down = assigned(text, "down_revision").unwrap_or_else(|| "None".into());
        let down = match down.trim() {
            "None" => None,
            d if d.starts_with('(') || d.starts_with('[') => {
                return Err(ReadError::new(
                    &path,
                    format!("revision {id} merges branches ({d}); merges are not supported"),
                ))
            }
            d => Some(literal(d).ok_or_else(|| ReadError::new(&path, "`down_revision` is not a string literal"))?),
        };
        let message = docstring(text).unwrap_or_else(|| rel.trim_end_matches(".py").to_string());
        if let Some(other) = by_parent.insert(down.clone(), Revision { id: id.clone(), down: down.clone(), message }) {
            return Err(ReadError::new(
                &path,
                format!(
                    "revisions {} and {id} both follow {}: branches are not supported",
                    other.id,
                    down.as_deref().unwrap_or("base")
                ),
            ));
        }
    }
    let mut chain = Vec::with_capacity(by_parent.len());
    let mut parent = None;
    while let Some(next) = by_parent.remove(&parent) {
        parent = Some(next.id.clone());
        chain.push(next);
    }
    if let Some(orphan) = by_parent.values().next() {
        let after = orphan.down.as_deref().unwrap_or("base");
        return Err(ReadError::new(
            files.root(),
            format!("revision {} follows {after}, which is not in the chain", orphan.id),
        ));
    }
    if chain.is_empty() {
        return Err(ReadError::new(files.root(), "no Alembic revision files (versions/*.py)"));
    }
    Ok(chain)
}

/// Alembic's offline SQL without its bookkeeping (the `alembic_version` table and its rows).
pub fn without_bookkeeping(sql: &str, dialect: Dialect) -> Result<String, String> {
    let statements = split(sql, dialect).map_err(|e| format!("line {}: {}", e.line, e.message))?;
    let kept: Vec<String> = statements
        .into_iter()
        .filter(|s| !s.text.to_lowercase().contains("alembic_version"))
        .map(|s| format!("{};", s.text.trim()))
        .collect();
    Ok(kept.join("\n\n"))
}

/// `name = <value>` at the start of a line: the value's text.
fn assigned(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.trim_start();
        let rest = rest.strip_prefix(':').map_or(rest, |r| r.split_once('=').map_or(r, |(_, v)| v)); // `x: str = …`
        let value = rest.trim_start().strip_prefix('=').unwrap_or(rest).trim();
        (!value.is_empty()).then(|| value.split('#').next().unwrap_or(value).trim().to_string())
    })
}

fn literal(value: &str) -> Option<String> {
    let v = value.trim();
    let quote = v.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let inner = v.strip_prefix(quote)?.strip_suffix(quote)?;
    (!inner.contains(quote)).then(|| inner.to_string())
}

fn docstring(text: &str) -> Option<String> {
    let start = text.trim_start();
    let body = start.strip_prefix("\"\"\"").or_else(|| start.strip_prefix("'''"))?;
    body.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(entries: &[(&str, &str)]) -> Files {
        Files::from_texts("versions", &entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn rev(id: &str, down: &str, message: &str) -> String {
        format!("\"\"\"{message}\n\nRevision ID: {id}\n\"\"\"\nrevision = '{id}'\ndown_revision = {down}\n")
    }

    #[test]
    fn the_chain_runs_from_base_to_head_whatever_the_file_order() {
        let chain = revisions(&files(&[
            ("b_second.py", &rev("bbb", "'aaa'", "add tier")),
            ("a_first.py", &rev("aaa", "None", "create customers")),
            ("c_third.py", &rev("ccc", "\"bbb\"", "create orders")),
            ("__init__.py", ""),
        ]))
        .unwrap();
        let ids: Vec<(&str, &str)> = chain.iter().map(|r| (r.id.as_str(), r.message.as_str())).collect();
        assert_eq!(ids, [("aaa", "create customers"), ("bbb", "add tier"), ("ccc", "create orders")]);
    }

    #[test]
    fn branches_merges_and_gaps_are_refused() {
        let branch = files(&[
            ("a.py", &rev("aaa", "None", "a")),
            ("b.py", &rev("bbb", "'aaa'", "b")),
            ("c.py", &rev("ccc", "'aaa'", "c")),
        ]);
        assert!(revisions(&branch).unwrap_err().message.contains("branches"));
        let merge = files(&[("a.py", &rev("aaa", "None", "a")), ("m.py", &rev("mmm", "('aaa', 'bbb')", "merge"))]);
        assert!(revisions(&merge).unwrap_err().message.contains("merges"));
        let gap = files(&[("a.py", &rev("aaa", "None", "a")), ("c.py", &rev("ccc", "'bbb'", "c"))]);
        assert!(revisions(&gap).unwrap_err().message.contains("not in the chain"));
    }

    #[test]
    fn bookkeeping_is_dropped_and_the_change_kept() {
        let offline = "BEGIN;\n\nCREATE TABLE alembic_version (\n    version_num VARCHAR(32) NOT NULL\n);\n\n-- Running upgrade  -> aaa\n\nCREATE TABLE customers (id BIGSERIAL NOT NULL);\n\nINSERT INTO alembic_version (version_num) VALUES ('aaa') RETURNING alembic_version.version_num;\n\nCOMMIT;\n";
        assert_eq!(
            without_bookkeeping(offline, Dialect::Postgres).unwrap(),
            "BEGIN;\n\nCREATE TABLE customers (id BIGSERIAL NOT NULL);\n\nCOMMIT;"
        );
    }
}
