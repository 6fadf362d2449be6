//! MongoDB migration scripts: a JSON array of database commands in Extended JSON, run in order with `runCommand`.

use serde_json::value::RawValue;
use serde_json::Value;

/// A command a MongoDB script may contain, with the fields it must have.
struct Shape {
    name: &'static str,
    /// (field, what it must be)
    required: &'static [(&'static str, Kind)],
    /// Whether the command may run inside a multi-document transaction.
    transactional: bool,
}

#[derive(Clone, Copy)]
enum Kind {
    String,
    NonEmptyArray,
    Present,
}

const SHAPES: &[Shape] = &[
    Shape { name: "create", required: &[], transactional: false },
    Shape { name: "createIndexes", required: &[("indexes", Kind::NonEmptyArray)], transactional: false },
    Shape { name: "dropIndexes", required: &[("index", Kind::Present)], transactional: false },
    Shape { name: "collMod", required: &[], transactional: false },
    Shape { name: "renameCollection", required: &[("to", Kind::String)], transactional: false },
    Shape { name: "drop", required: &[], transactional: false },
    Shape { name: "insert", required: &[("documents", Kind::NonEmptyArray)], transactional: true },
    Shape { name: "update", required: &[("updates", Kind::NonEmptyArray)], transactional: true },
    Shape { name: "delete", required: &[("deletes", Kind::NonEmptyArray)], transactional: true },
];

/// One validated command of a script.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub name: String,
    pub body: Value,
    /// 1-based line where the command starts in its file.
    pub line: usize,
}

/// Why a script is not a valid command list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct CommandError {
    pub line: usize,
    pub message: String,
}

/// Parses and checks a script; lines are counted within `text`.
pub fn parse_commands(text: &str) -> Result<Vec<Command>, CommandError> {
    let raw: Vec<&RawValue> = serde_json::from_str(text)
        .map_err(|e| CommandError { line: e.line().max(1), message: format!("not a JSON array of commands: {e}") })?;
    raw.iter()
        .enumerate()
        .map(|(i, raw)| {
            let line = line_of(text, raw.get());
            let body: Value = serde_json::from_str(raw.get())
                .map_err(|e| CommandError { line, message: format!("command #{}: {e}", i + 1) })?;
            check(i + 1, &body)
                .map(|name| Command { name, body, line })
                .map_err(|message| CommandError { line, message })
        })
        .collect()
}

/// Whether every command may run inside one multi-document transaction.
pub fn all_transactional(commands: &[Command]) -> bool {
    commands.iter().all(|c| SHAPES.iter().any(|s| s.name == c.name && s.transactional))
}

fn check(number: usize, body: &Value) -> Result<String, String> {
    let Value::Object(map) = body else {
        return Err(format!("command #{number} is not an object"));
    };
    let Some((name, target)) = map.iter().next() else {
        return Err(format!("command #{number} is empty"));
    };
    let Some(shape) = SHAPES.iter().find(|s| s.name == name) else {
        let known: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
        return Err(format!("command #{number}: unknown command `{name}` (allowed: {})", known.join(", ")));
    };
    if !matches!(target, Value::String(s) if !s.is_empty()) {
        return Err(format!("command #{number} (`{name}`): the value of `{name}` must be a collection name"));
    }
    for (field, kind) in shape.required {
        let ok = match (kind, map.get(*field)) {
            (Kind::String, Some(Value::String(s))) => !s.is_empty(),
            (Kind::NonEmptyArray, Some(Value::Array(a))) => !a.is_empty(),
            (Kind::Present, Some(_)) => true,
            _ => false,
        };
        if !ok {
            let what = match kind {
                Kind::String => "a string",
                Kind::NonEmptyArray => "a non-empty array",
                Kind::Present => "present",
            };
            return Err(format!("command #{number} (`{name}`): field `{field}` must be {what}"));
        }
    }
    Ok(name.clone())
}

/// The line of `text` where `part` (a slice of it) starts.
fn line_of(text: &str, part: &str) -> usize {
    let offset = (part.as_ptr() as usize).saturating_sub(text.as_ptr() as usize).min(text.len());
    text[..offset].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_in_order_with_lines() {
        let text = r#"[
  {"create": "orders", "validator": {"$jsonSchema": {"bsonType": "object"}}},
  {"createIndexes": "orders", "indexes": [{"key": {"sku": 1}, "name": "sku_1", "unique": true}]},
  {"update": "orders", "updates": [{"q": {"status": {"$exists": false}}, "u": {"$set": {"status": "new"}}, "multi": true}]}
]"#;
        let cmds = parse_commands(text).unwrap();
        assert_eq!(cmds.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["create", "createIndexes", "update"]);
        assert_eq!(cmds.iter().map(|c| c.line).collect::<Vec<_>>(), [2, 3, 4]);
        assert!(!all_transactional(&cmds));
        assert!(all_transactional(&cmds[2..]));
    }

    #[test]
    fn rejects_bad_shapes_with_line() {
        let err = parse_commands("[\n{\"create\": \"a\"},\n{\"createIndexes\": \"a\"}\n]").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("`indexes`"), "{}", err.message);
        assert!(parse_commands("[{\"shutdown\": 1}]").unwrap_err().message.contains("unknown command `shutdown`"));
        assert!(parse_commands("[{\"drop\": 5}]").unwrap_err().message.contains("collection name"));
        assert!(parse_commands("[1]").unwrap_err().message.contains("not an object"));
        let err = parse_commands("[\n{\"create\": \"a\"},\n").unwrap_err();
        assert!(err.message.contains("not a JSON array"), "{}", err.message);
        assert!(parse_commands("{\"create\": \"a\"}").is_err());
    }
}
