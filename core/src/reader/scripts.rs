//! A migration's scripts: its UP and DOWN texts, dbmate's sections, and Flotilla's directives.

use std::path::Path;

use super::conventions::{Combined, Parts};
use super::{Files, Format, ReadError, ReadOptions};
use crate::migration::{Backfill, Checksum, Migration, MigrationOptions, Phase, Script, ScriptKind, Timeouts};
use crate::version::Version;

pub(super) fn build(
    files: &Files,
    version: Version,
    parts: Parts,
    format: Format,
    options: &ReadOptions,
) -> Result<Migration, ReadError> {
    let name = parts.name.unwrap_or_default();
    let kind = if format == Format::Mongo { ScriptKind::MongoCommands } else { ScriptKind::Sql };
    let script = |rel: &str| -> Result<Script, ReadError> {
        // No file for this engine (pop): an empty script, a no-op.
        let text = if rel.is_empty() { "" } else { files.text(rel)? };
        Ok(Script {
            text: text.to_string(),
            path: files.path(rel),
            first_line: 1,
            no_transaction: parts.no_transaction,
            backfill: None,
            timeouts: Timeouts::default(),
        })
    };
    let (up, down) = if let Some(combined) = parts.combined {
        let rel = parts
            .up
            .as_deref()
            .ok_or_else(|| ReadError::new(files.root(), format!("version {version} has no file")))?;
        match combined {
            Combined::Dbmate => dbmate_sections(&files.path(rel), files.text(rel)?)?,
            Combined::Knex => super::knex::scripts(&files.path(rel), files.text(rel)?)?,
        }
    } else {
        let Some(up) = parts.up.as_deref() else {
            let down = files.path(parts.down.as_deref().unwrap_or_default());
            return Err(ReadError::new(&down, format!("version {version} has a DOWN but no UP")));
        };
        (script(up)?, parts.down.as_deref().map(script).transpose()?)
    };
    migration(version, name, kind, up, down, options)
}

/// A migration from its scripts: directives read, a missing DOWN refused unless allowed, commands checked, summed.
pub(super) fn migration(
    version: Version,
    name: String,
    kind: ScriptKind,
    up: Script,
    down: Option<Script>,
    options: &ReadOptions,
) -> Result<Migration, ReadError> {
    let (up, up_options) = apply_directives(up)?;
    let down = match down {
        Some(d) => Some(apply_directives(d)?.0),
        None => None,
    };
    // A file that exists but holds no statement is an explicit no-op (golang-migrate, sqlx and pop run it as such):
    // recorded in history like any other. A missing file is still missing.
    if down.is_none() && !options.allow_missing_down {
        return Err(ReadError::new(
            &up.path,
            format!("version {version} has no DOWN migration (write one, or pass --allow-missing-down to accept migrations that cannot be rolled back)"),
        ));
    }
    if kind == ScriptKind::MongoCommands {
        for script in std::iter::once(&up).chain(down.as_ref()).filter(|s| !s.is_blank()) {
            crate::mongo::parse_commands(&script.text).map_err(|e| ReadError::at(&script.path, e.line, e.message))?;
        }
    }
    // An empty DOWN sums as no DOWN, as releases that read it as missing recorded it.
    let checksum = Checksum::of(&up.text, down.as_ref().filter(|d| !d.is_blank()).map(|d| d.text.as_str()));
    Ok(Migration { version, name, kind, up, down, options: up_options, checksum })
}

/// Flyway's repeatable migrations (`R__<name>.sql`), by name.
pub(super) fn repeatables(files: &Files) -> Result<Vec<crate::migration::Repeatable>, ReadError> {
    let mut out = Vec::new();
    for (file, is_dir) in files.top_level() {
        let Some(name) = file.strip_prefix("R__").and_then(|n| n.strip_suffix(".sql")).filter(|_| !is_dir) else {
            continue;
        };
        if name.is_empty() {
            return Err(ReadError::new(&files.path(&file), "a repeatable migration needs a name after R__"));
        }
        let script = Script {
            text: files.text(&file)?.to_string(),
            path: files.path(&file),
            first_line: 1,
            no_transaction: false,
            backfill: None,
            timeouts: Timeouts::default(),
        };
        let (script, _) = apply_directives(script)?;
        let checksum = Checksum::of(&script.text, None);
        out.push(crate::migration::Repeatable { name: name.to_string(), script, checksum });
    }
    Ok(out)
}

/// Splits a dbmate file into its `-- migrate:up` and `-- migrate:down` sections.
fn dbmate_sections(path: &Path, text: &str) -> Result<(Script, Option<Script>), ReadError> {
    let mut up: Option<(usize, usize, bool)> = None; // (byte start, first line, no_transaction)
    let mut down: Option<(usize, usize, bool)> = None;
    let mut up_end = text.len();
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim();
        let marker =
            |m: &str| trimmed.strip_prefix(m).map(|rest| rest.split_whitespace().any(|o| o == "transaction:false"));
        if let Some(no_tx) = marker("-- migrate:up") {
            if up.is_some() {
                return Err(ReadError::at(path, i + 1, "second `-- migrate:up` section"));
            }
            up = Some((offset + line.len(), i + 2, no_tx));
        } else if let Some(no_tx) = marker("-- migrate:down") {
            if up.is_none() {
                return Err(ReadError::at(path, i + 1, "`-- migrate:down` comes before `-- migrate:up`"));
            }
            if down.is_some() {
                return Err(ReadError::at(path, i + 1, "second `-- migrate:down` section"));
            }
            up_end = offset;
            down = Some((offset + line.len(), i + 2, no_tx));
        }
        offset += line.len();
    }
    let (start, first_line, no_transaction) = up.ok_or_else(|| ReadError::new(path, "no `-- migrate:up` section"))?;
    let up = Script {
        path: path.to_path_buf(),
        first_line,
        text: text[start..up_end].to_string(),
        no_transaction,
        backfill: None,
        timeouts: Timeouts::default(),
    };
    let down = down.map(|(start, first_line, no_transaction)| Script {
        path: path.to_path_buf(),
        first_line,
        text: text[start..].to_string(),
        no_transaction,
        backfill: None,
        timeouts: Timeouts::default(),
    });
    Ok((up, down))
}

/// Reads `-- flotilla:…` directives (and sqlx's `-- no-transaction`) from a script's leading comments.
fn apply_directives(mut script: Script) -> Result<(Script, MigrationOptions), ReadError> {
    let mut options = MigrationOptions::default();
    let mut in_header = true;
    for (i, line) in script.text.lines().enumerate() {
        let line_no = script.first_line + i;
        let trimmed = line.trim();
        if in_header && !(trimmed.is_empty() || trimmed.starts_with("--")) {
            in_header = false;
        }
        let Some(directive) = trimmed.strip_prefix("-- flotilla:").or_else(|| trimmed.strip_prefix("--flotilla:"))
        else {
            if in_header && trimmed == "-- no-transaction" {
                script.no_transaction = true;
            }
            continue;
        };
        if !in_header {
            return Err(ReadError::at(
                &script.path,
                line_no,
                "flotilla directives belong in the comments before the first statement",
            ));
        }
        let mut words = directive.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("no-transaction"), None, _) => script.no_transaction = true,
            (Some("phase"), Some("expand"), None) => options.phase = Some(Phase::Expand),
            (Some("phase"), Some("contract"), None) => options.phase = Some(Phase::Contract),
            (Some("phase"), _, _) => return Err(ReadError::at(&script.path, line_no, "phase must be `expand` or `contract`")),
            (Some(which @ ("lock-timeout" | "statement-timeout")), Some(value), None) => {
                let d = crate::migration::parse_duration(value).map_err(|e| ReadError::at(&script.path, line_no, format!("{which}: {e}")))?;
                if which == "lock-timeout" {
                    script.timeouts.lock = Some(d);
                } else {
                    script.timeouts.statement = Some(d);
                }
            }
            (Some("lock-retries"), Some(value), None) => {
                let n = value.parse::<u32>().ok().filter(|n| *n <= 100).ok_or_else(|| {
                    ReadError::at(&script.path, line_no, format!("lock-retries `{value}` must be a whole number from 0 to 100"))
                })?;
                script.timeouts.lock_retries = Some(n);
            }
            (Some("lock-timeout" | "statement-timeout" | "lock-retries"), _, _) => {
                return Err(ReadError::at(&script.path, line_no, "a timeout directive takes one value, e.g. `-- flotilla:lock-timeout 3s`"))
            }
            // Lint rule switches, read by `flotilla lint`.
            (Some("allow" | "deny"), Some(_), _) => {}
            (Some("backfill"), _, _) => {
                let words: Vec<&str> = directive.split_whitespace().skip(1).collect();
                let backfill = Backfill::parse(&words).map_err(|e| ReadError::at(&script.path, line_no, e))?;
                if !(script.text.contains(Backfill::LO) && script.text.contains(Backfill::HI)) {
                    return Err(ReadError::at(
                        &script.path,
                        line_no,
                        "a backfill's UPDATE must limit itself to the batch with {lo} and {hi}, e.g. WHERE id > {lo} AND id <= {hi}",
                    ));
                }
                script.backfill = Some(backfill);
            }
            _ => {
                return Err(ReadError::at(
                    &script.path,
                    line_no,
                    format!("unknown directive `flotilla:{directive}` (known: no-transaction, phase expand|contract, backfill table=… key=… batch=…, lock-timeout 3s, statement-timeout 10m, lock-retries N, allow RULE, deny RULE)"),
                ))
            }
        }
    }
    Ok((script, options))
}
