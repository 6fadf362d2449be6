//! Knex migrations (`<YYYYMMDDHHMMSS>_<name>.js`) whose `up` and `down` only run literal SQL:
//! `knex.raw('…')`, `knex.schema.raw("…")` or a template literal without `${}`, each optionally after `return` or
//! `await`. That is what a team that writes SQL by hand in Knex has; anything else (the schema builder, variables,
//! loops) is JavaScript only Node can run, and is refused with its file and line rather than guessed at.

use std::path::Path;

use super::ReadError;
use crate::migration::{Script, Timeouts};

/// The UP and DOWN of a Knex migration file.
pub(super) fn scripts(path: &Path, text: &str) -> Result<(Script, Option<Script>), ReadError> {
    let up = function(path, text, "up")?.ok_or_else(|| ReadError::new(path, "a Knex migration exports no `up`"))?;
    let down = function(path, text, "down")?;
    let script = |(first_line, sql): (usize, String)| Script {
        path: path.to_path_buf(),
        first_line,
        text: sql,
        no_transaction: false,
        backfill: None,
        timeouts: Timeouts::default(),
    };
    Ok((script(up), down.map(script)))
}

/// The SQL of the exported function `name`: its line and its statements, one per line block.
fn function(path: &Path, text: &str, name: &str) -> Result<Option<(usize, String)>, ReadError> {
    let patterns = [
        format!("exports.{name} = "),
        format!("exports.{name}="),
        format!("export async function {name}("),
        format!("export function {name}("),
        format!("export const {name} = "),
        format!("async function {name}("),
        format!("function {name}("),
    ];
    let Some(at) = patterns.iter().filter_map(|p| find_code(text, p)).min() else { return Ok(None) };
    let body_start = text[at..]
        .find('{')
        .map(|i| at + i)
        .ok_or_else(|| ReadError::at(path, line_of(text, at), format!("`{name}` has no body in braces")))?;
    let body_end = matching_brace(text, body_start)
        .ok_or_else(|| ReadError::at(path, line_of(text, body_start), format!("`{name}`'s body never closes")))?;
    let sql = raw_calls(path, text, body_start + 1, body_end)?;
    Ok(Some((line_of(text, body_start), sql)))
}

/// The SQL of every `knex.raw(<literal>)` between `start` and `end`; anything else there is an error.
fn raw_calls(path: &Path, text: &str, start: usize, end: usize) -> Result<String, ReadError> {
    let mut statements = Vec::new();
    let mut at = start;
    loop {
        at = skip_trivia(text, at, end);
        if at >= end {
            break;
        }
        let rest = &text[at..end];
        let rest_trimmed = rest.trim_start_matches("return ").trim_start_matches("await ");
        let skipped = rest.len() - rest_trimmed.len();
        let call = ["knex.schema.raw(", "knex.raw("].into_iter().find(|c| rest_trimmed.starts_with(c));
        let Some(call) = call else {
            let shown: String = rest.lines().next().unwrap_or("").chars().take(60).collect();
            return Err(ReadError::at(
                path,
                line_of(text, at),
                format!("only knex.raw / knex.schema.raw with literal SQL can be read, not `{shown}`"),
            ));
        };
        let literal_at = at + skipped + call.len();
        let (sql, after) = literal(text, literal_at).ok_or_else(|| {
            ReadError::at(
                path,
                line_of(text, literal_at),
                "knex.raw takes one string literal here (no variables or ${})",
            )
        })?;
        let after = skip_trivia(text, after, end);
        if !text[after..].starts_with(')') {
            return Err(ReadError::at(path, line_of(text, after), "knex.raw takes one argument here: its SQL"));
        }
        let sql = sql.trim().trim_end_matches(';').trim().to_string();
        if !sql.is_empty() {
            statements.push(format!("{sql};"));
        }
        at = after + 1;
        at = skip_trivia(text, at, end);
        if text[at..end].starts_with(';') {
            at += 1;
        }
    }
    Ok(statements.join("\n"))
}

/// A string or template literal starting at `at` (after whitespace): its text and the index after it.
fn literal(text: &str, at: usize) -> Option<(String, usize)> {
    let at = at + (text[at..].len() - text[at..].trim_start().len());
    let quote = text[at..].chars().next()?;
    if !matches!(quote, '\'' | '"' | '`') {
        return None;
    }
    let mut out = String::new();
    let mut chars = text[at + 1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            '$' if quote == '`' && text[at + 1 + i..].starts_with("${") => return None,
            c if c == quote => return Some((out, at + 1 + i + 1)),
            '\n' if quote != '`' => return None,
            c => out.push(c),
        }
    }
    None
}

/// Skips whitespace and comments.
fn skip_trivia(text: &str, mut at: usize, end: usize) -> usize {
    while at < end {
        let rest = &text[at..end];
        let trimmed = rest.trim_start();
        at += rest.len() - trimmed.len();
        if trimmed.starts_with("//") {
            at += trimmed.find('\n').unwrap_or(trimmed.len());
        } else if trimmed.starts_with("/*") {
            at += trimmed.find("*/").map_or(trimmed.len(), |i| i + 2);
        } else {
            break;
        }
    }
    at.min(end)
}

/// Where `pattern` occurs outside strings and comments.
fn find_code(text: &str, pattern: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find(pattern) {
        let at = from + i;
        let line_start = text[..at].rfind('\n').map_or(0, |n| n + 1);
        let before = &text[line_start..at];
        if !before.contains("//") && !before.trim_start().starts_with('*') {
            return Some(at);
        }
        from = at + pattern.len();
    }
    None
}

/// The `}` that closes the `{` at `open`, skipping strings, template literals and comments.
fn matching_brace(text: &str, open: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, open);
    while i < bytes.len() {
        match bytes[i] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            q @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = text[i..].find("*/").map_or(bytes.len(), |j| i + j + 1);
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_sql_in_up_and_down_is_read_in_every_export_style() {
        let commonjs = "// why: orders need a status\nexports.up = function (knex) {\n  return knex.raw(`\n    ALTER TABLE orders ADD COLUMN status text;\n  `);\n};\n\nexports.down = async (knex) => {\n  await knex.schema.raw('ALTER TABLE orders DROP COLUMN status');\n};\n";
        let (up, down) = scripts(Path::new("m.js"), commonjs).unwrap();
        assert_eq!(up.text, "ALTER TABLE orders ADD COLUMN status text;");
        assert_eq!(up.first_line, 2);
        assert_eq!(down.unwrap().text, "ALTER TABLE orders DROP COLUMN status;");
        let esm = "export async function up(knex) {\n  await knex.raw(\"CREATE TABLE a (id int)\");\n  await knex.raw('CREATE INDEX a_id ON a (id)');\n}\nexport async function down(knex) { await knex.raw('DROP TABLE a'); }\n";
        let (up, down) = scripts(Path::new("m.mjs"), esm).unwrap();
        assert_eq!(up.text, "CREATE TABLE a (id int);\nCREATE INDEX a_id ON a (id);");
        assert_eq!(down.unwrap().text, "DROP TABLE a;");
        let (_, down) =
            scripts(Path::new("m.js"), "exports.up = function (knex) { return knex.raw('SELECT 1') }").unwrap();
        assert!(down.is_none(), "no down is no DOWN");
    }

    #[test]
    fn anything_but_literal_raw_sql_is_refused_with_its_line() {
        let builder =
            "exports.up = function (knex) {\n  return knex.schema.createTable('a', (t) => { t.increments() });\n};";
        let err = scripts(Path::new("m.js"), builder).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("knex.schema.createTable"), "{err}");
        let interpolated = "exports.up = function (knex) {\n  return knex.raw(`ALTER TABLE ${table} ADD x int`);\n};";
        let err = scripts(Path::new("m.js"), interpolated).unwrap_err();
        assert!(err.message.contains("literal"), "{err}");
        assert!(scripts(Path::new("m.js"), "module.exports = {}").unwrap_err().message.contains("no `up`"));
    }
}
