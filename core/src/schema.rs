//! A database's schema as a normalized, deterministic model: what `flotilla schema dump` prints, what
//! `schema diff` compares, and what `validate` checks after each UP and DOWN.
//!
//! Every engine's catalog becomes a sorted list of [`Object`]s. An object has a kind, a qualified name, named
//! `parts` compared one by one in diffs (a table's columns and constraints, a collection's options), and the `ddl`
//! that recreates it (SQL, or a MongoDB command as JSON). The same database state always gives the same model.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Engine;

/// Object kinds in the order a SQL dump creates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Extension,
    Schema,
    Type,
    Sequence,
    Function,
    Table,
    Collection,
    ForeignKey,
    /// `ALTER SEQUENCE … OWNED BY table.column`: once the table exists; a dropped table takes its sequence along.
    SequenceOwner,
    View,
    MaterializedView,
    Index,
    Trigger,
    Comment,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Extension => "extension",
            Kind::Schema => "schema",
            Kind::Type => "type",
            Kind::Sequence => "sequence",
            Kind::Function => "function",
            Kind::Table => "table",
            Kind::Collection => "collection",
            Kind::ForeignKey => "foreign key",
            Kind::SequenceOwner => "sequence owner",
            Kind::View => "view",
            Kind::MaterializedView => "materialized view",
            Kind::Index => "index",
            Kind::Trigger => "trigger",
            Kind::Comment => "comment",
        }
    }
}

/// One schema object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub kind: Kind,
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parts: BTreeMap<String, String>,
    pub ddl: String,
}

/// A whole schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    pub engine: Engine,
    pub objects: Vec<Object>,
}

impl Schema {
    /// Sorts objects into their canonical order; call after building.
    pub fn new(engine: Engine, mut objects: Vec<Object>) -> Schema {
        objects.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        Schema { engine, objects }
    }

    pub fn to_json(&self) -> String {
        // A Schema holds only strings and maps: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    pub fn from_json(text: &str) -> Result<Schema, String> {
        serde_json::from_str(text).map_err(|e| format!("not a Flotilla schema dump: {e}"))
    }

    /// A readable baseline: DDL for SQL engines (like `pg_dump --schema-only`), a command list for MongoDB
    /// (itself a valid `.up.json` migration).
    pub fn to_sql(&self) -> String {
        if self.engine == Engine::Mongodb {
            let commands: Vec<serde_json::Value> =
                self.objects.iter().filter_map(|o| serde_json::from_str(&o.ddl).ok()).collect();
            return serde_json::to_string_pretty(&commands).unwrap_or_default() + "\n";
        }
        let mut out =
            format!("-- Schema dump by Flotilla ({}). Deterministic: same database, same text.\n", self.engine);
        if self.engine == Engine::Mysql {
            out.push_str("SET FOREIGN_KEY_CHECKS = 0;\n");
        }
        for o in &self.objects {
            out.push_str(&format!("\n-- {} {}\n", o.kind.label(), o.name));
            let needs_delimiter = self.engine == Engine::Mysql && o.kind == Kind::Trigger && o.ddl.contains(';');
            if needs_delimiter {
                out.push_str(&format!("DELIMITER //\n{}//\nDELIMITER ;\n", o.ddl.trim_end()));
            } else {
                out.push_str(o.ddl.trim_end());
                out.push_str(";\n");
            }
        }
        if self.engine == Engine::Mysql {
            out.push_str("\nSET FOREIGN_KEY_CHECKS = 1;\n");
        }
        out
    }
}

/// One difference between two schemas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Difference {
    Added {
        kind: Kind,
        name: String,
        ddl: String,
    },
    Removed {
        kind: Kind,
        name: String,
        ddl: String,
    },
    /// Same object, different parts; `part` is e.g. `column status`.
    PartChanged {
        kind: Kind,
        name: String,
        part: String,
        from: Option<String>,
        to: Option<String>,
    },
    /// Same parts (or none), different definition.
    Changed {
        kind: Kind,
        name: String,
        from: String,
        to: String,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Added { kind, name, .. } => write!(f, "+ {} {name}", kind.label()),
            Difference::Removed { kind, name, .. } => write!(f, "- {} {name}", kind.label()),
            Difference::PartChanged { kind, name, part, from, to } => match (from, to) {
                (None, Some(to)) => write!(f, "~ {} {name}: + {part} {to}", kind.label()),
                (Some(from), None) => write!(f, "~ {} {name}: - {part} {from}", kind.label()),
                (Some(from), Some(to)) => write!(f, "~ {} {name}: {part}: {from} → {to}", kind.label()),
                (None, None) => write!(f, "~ {} {name}: {part}", kind.label()),
            },
            Difference::Changed { kind, name, from, to } => {
                write!(
                    f,
                    "~ {} {name}: definition changed\n    from: {}\n    to:   {}",
                    kind.label(),
                    one_line(from),
                    one_line(to)
                )
            }
        }
    }
}

/// What kind of difference it is, for a reader deciding what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DifferenceClass {
    /// Objects or their parts differ: a real mismatch.
    Structure,
    /// The same columns and constraints, in another order (a DOWN that re-adds a column puts it last).
    ColumnOrderOnly,
    /// The definitions differ only in literal timestamps: the UP embeds the time it ran (`'now'::timestamp`).
    TimestampsOnly,
}

impl DifferenceClass {
    pub fn describe(self) -> &'static str {
        match self {
            DifferenceClass::Structure => "structure",
            DifferenceClass::ColumnOrderOnly => "column order only",
            DifferenceClass::TimestampsOnly => "non-deterministic UP: only literal timestamps differ between two runs",
        }
    }
}

impl Difference {
    pub fn class(&self) -> DifferenceClass {
        let Difference::Changed { kind, from, to, .. } = self else {
            return match self {
                Difference::PartChanged { from: Some(a), to: Some(b), .. }
                    if without_timestamps(a) == without_timestamps(b) =>
                {
                    DifferenceClass::TimestampsOnly
                }
                _ => DifferenceClass::Structure,
            };
        };
        if without_timestamps(from) == without_timestamps(to) {
            return DifferenceClass::TimestampsOnly;
        }
        let lines = |ddl: &str| {
            let mut lines: Vec<String> =
                ddl.lines().map(|l| l.trim().trim_end_matches(',').to_string()).filter(|l| !l.is_empty()).collect();
            lines.sort();
            lines
        };
        if *kind == Kind::Table && lines(from) == lines(to) {
            DifferenceClass::ColumnOrderOnly
        } else {
            DifferenceClass::Structure
        }
    }
}

/// `text` with every literal date-time (`2026-12-02 01:23:45.678+00`, `2026-12-02T01:23:45Z`) replaced by a mark.
fn without_timestamps(text: &str) -> String {
    let bytes = text.as_bytes();
    let digits = |at: usize, n: usize| at + n <= bytes.len() && bytes[at..at + n].iter().all(u8::is_ascii_digit);
    let (mut out, mut i) = (String::with_capacity(text.len()), 0);
    while i < bytes.len() {
        let date = digits(i, 4)
            && bytes.get(i + 4) == Some(&b'-')
            && digits(i + 5, 2)
            && bytes.get(i + 7) == Some(&b'-')
            && digits(i + 8, 2);
        let time = date
            && matches!(bytes.get(i + 10), Some(b' ' | b'T'))
            && digits(i + 11, 2)
            && bytes.get(i + 13) == Some(&b':')
            && digits(i + 14, 2);
        if !time {
            let c = text[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        i += 16;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || matches!(bytes[i], b':' | b'.' | b'+' | b'Z')) {
            i += 1;
        }
        out.push_str("<timestamp>");
    }
    out
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every difference from `a` to `b`, in canonical order. Empty when the schemas are the same.
pub fn diff(a: &Schema, b: &Schema) -> Vec<Difference> {
    let index = |s: &Schema| -> BTreeMap<(Kind, String), Object> {
        s.objects.iter().map(|o| ((o.kind, o.name.clone()), o.clone())).collect()
    };
    let (left, right) = (index(a), index(b));
    let mut out = Vec::new();
    let mut keys: Vec<&(Kind, String)> = left.keys().chain(right.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let (kind, name) = (key.0, key.1.clone());
        match (left.get(key), right.get(key)) {
            (Some(o), None) => out.push(Difference::Removed { kind, name, ddl: o.ddl.clone() }),
            (None, Some(o)) => out.push(Difference::Added { kind, name, ddl: o.ddl.clone() }),
            (Some(x), Some(y)) if x != y => {
                let mut parts: Vec<&String> = x.parts.keys().chain(y.parts.keys()).collect();
                parts.sort();
                parts.dedup();
                let before = out.len();
                for part in parts {
                    let (from, to) = (x.parts.get(part), y.parts.get(part));
                    if from != to {
                        out.push(Difference::PartChanged {
                            kind,
                            name: name.clone(),
                            part: part.clone(),
                            from: from.cloned(),
                            to: to.cloned(),
                        });
                    }
                }
                if out.len() == before {
                    out.push(Difference::Changed { kind, name, from: x.ddl.clone(), to: y.ddl.clone() });
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn differences_are_classed_by_what_they_are() {
        let changed = |kind, from: &str, to: &str| Difference::Changed {
            kind,
            name: "x".into(),
            from: from.into(),
            to: to.into(),
        };
        let view =
            |at: &str| format!("CREATE VIEW x AS\n SELECT id, '{at}'::timestamp without time zone AS seen FROM t");
        assert_eq!(
            changed(Kind::View, &view("2026-12-02 01:23:45.123456"), &view("2026-12-02 01:23:47.9")).class(),
            DifferenceClass::TimestampsOnly
        );
        let table = |cols: &[&str]| format!("CREATE TABLE x (\n    {}\n)", cols.join(",\n    "));
        assert_eq!(
            changed(Kind::Table, &table(&["id integer", "b text"]), &table(&["b text", "id integer"])).class(),
            DifferenceClass::ColumnOrderOnly
        );
        assert_eq!(
            changed(Kind::Table, &table(&["id integer", "b text"]), &table(&["id integer", "b varchar"])).class(),
            DifferenceClass::Structure
        );
        assert_eq!(
            changed(Kind::View, &view("2026-12-02 01:23:45"), "CREATE VIEW x AS SELECT 1").class(),
            DifferenceClass::Structure
        );
        let removed = Difference::Removed { kind: Kind::Index, name: "i".into(), ddl: "CREATE INDEX i".into() };
        assert_eq!(removed.class(), DifferenceClass::Structure);
    }

    use super::*;

    fn table(name: &str, cols: &[(&str, &str)]) -> Object {
        Object {
            kind: Kind::Table,
            name: name.into(),
            parts: cols.iter().map(|(c, t)| (format!("column {c}"), t.to_string())).collect(),
            ddl: format!("CREATE TABLE {name} (...)"),
        }
    }

    #[test]
    fn canonical_order_and_json_round_trip() {
        let idx = Object {
            kind: Kind::Index,
            name: "a_idx".into(),
            parts: BTreeMap::new(),
            ddl: "CREATE INDEX a_idx ON a (x)".into(),
        };
        let s = Schema::new(Engine::Postgres, vec![idx, table("b", &[]), table("a", &[("x", "int")])]);
        let names: Vec<_> = s.objects.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "a_idx"]);
        assert_eq!(Schema::from_json(&s.to_json()).unwrap(), s);
        assert!(s.to_sql().contains("CREATE INDEX a_idx ON a (x);"));
    }

    #[test]
    fn diff_names_each_change() {
        let a = Schema::new(
            Engine::Postgres,
            vec![table("t", &[("id", "bigint NOT NULL"), ("note", "text")]), table("gone", &[])],
        );
        let b = Schema::new(
            Engine::Postgres,
            vec![table("t", &[("id", "integer NOT NULL"), ("status", "text")]), table("new", &[])],
        );
        let lines: Vec<String> = diff(&a, &b).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "- table gone",
                "+ table new",
                "~ table t: column id: bigint NOT NULL → integer NOT NULL",
                "~ table t: - column note text",
                "~ table t: + column status text",
            ]
        );
        assert!(diff(&a, &a).is_empty());
    }
}
