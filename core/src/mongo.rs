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

/// Whether a script can run in one transaction with its history write (MongoDB 4.4 and later): row changes, creating
/// a plain collection, and creating indexes on a collection the script itself created (a transaction cannot build an
/// index on a collection that existed before it). Such a script is all or nothing, and its commands wait for one
/// journal commit instead of one each. Anything else (drops, renames, `collMod`, capped collections, views, a
/// command with a write concern of its own) runs command by command. Commands are (name, body).
pub fn fits_one_transaction<'a>(commands: impl IntoIterator<Item = (&'a str, &'a Value)>) -> bool {
    const PLAIN_CREATE: [&str; 5] = ["create", "validator", "validationLevel", "validationAction", "comment"];
    let mut created = std::collections::HashSet::new();
    commands.into_iter().all(|(name, body)| {
        let Value::Object(map) = body else { return false };
        if map.contains_key("writeConcern") {
            return false; // a command in a transaction may not carry one
        }
        let collection = map.get(name).and_then(Value::as_str);
        match name {
            "create" => {
                map.keys().all(|k| PLAIN_CREATE.contains(&k.as_str())) && collection.is_some_and(|c| created.insert(c))
            }
            "createIndexes" => collection.is_some_and(|c| created.contains(c)),
            _ => SHAPES.iter().any(|s| s.name == name && s.transactional),
        }
    })
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
    if let Some(concern) = map.get("writeConcern").filter(|c| !c.is_object()) {
        return Err(format!("command #{number} (`{name}`): `writeConcern` must be a document, not {concern}"));
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

    fn script(commands: &str) -> Vec<Command> {
        parse_commands(commands).expect("valid commands")
    }

    #[test]
    fn a_new_collection_with_its_indexes_and_rows_fits_one_transaction() {
        let fits = |commands: &str| fits_one_transaction(script(commands).iter().map(|c| (c.name.as_str(), &c.body)));
        assert!(fits(r#"[{"insert": "a", "documents": [{"_id": 1}]}, {"delete": "a", "deletes": [{}]}]"#));
        assert!(fits(
            r#"[{"create": "a", "validator": {"$jsonSchema": {}}}, {"createIndexes": "a", "indexes": [{}]},
                {"insert": "a", "documents": [{"_id": 1}]}]"#
        ));
        // An index on a collection that existed before: built outside a transaction.
        assert!(!fits(r#"[{"createIndexes": "a", "indexes": [{}]}]"#));
        assert!(!fits(r#"[{"create": "b"}, {"createIndexes": "a", "indexes": [{}]}]"#));
        // Capped collections, views, the same collection twice, other DDL, an explicit write concern.
        assert!(!fits(r#"[{"create": "a", "capped": true, "size": 4096}]"#));
        assert!(!fits(r#"[{"create": "v", "viewOn": "a", "pipeline": []}]"#));
        assert!(!fits(r#"[{"create": "a"}, {"create": "a"}]"#));
        assert!(!fits(r#"[{"create": "a"}, {"drop": "a"}]"#));
        assert!(!fits(r#"[{"collMod": "a"}]"#));
        assert!(!fits(r#"[{"insert": "a", "documents": [{}], "writeConcern": {"w": 1}}]"#));
    }

    #[test]
    fn a_write_concern_that_is_not_a_document_is_refused_with_its_command() {
        let e =
            parse_commands(r#"[{"create": "a"}, {"insert": "a", "documents": [{}], "writeConcern": 5}]"#).unwrap_err();
        assert!(e.message.contains("command #2 (`insert`): `writeConcern` must be a document, not 5"), "{e}");
    }

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
        let fits = |cmds: &[Command]| fits_one_transaction(cmds.iter().map(|c| (c.name.as_str(), &c.body)));
        assert!(fits(&cmds), "a new collection, its index and its rows");
        assert!(fits(&cmds[2..]));
        assert!(!fits(&cmds[1..]), "an index on a collection that existed before");
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
