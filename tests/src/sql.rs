//! Per-engine migration text, so one suite runs on every engine.

use super::*;

/// UP and DOWN creating table `t` with an `id` key and a `v` text column, plus an index on `v`.
pub fn create_table(engine: Engine, t: &str) -> (String, String) {
    match engine {
        Mongodb => (
            format!(
                r#"[{{"create": "{t}"}}, {{"createIndexes": "{t}", "indexes": [{{"key": {{"v": 1}}, "name": "{t}_v"}}]}}]"#
            ),
            format!(r#"[{{"drop": "{t}"}}]"#),
        ),
        Mysql => (
            format!("CREATE TABLE {t} (id BIGINT PRIMARY KEY, v VARCHAR(64));\nCREATE INDEX {t}_v ON {t} (v);"),
            format!("DROP INDEX {t}_v ON {t};\nDROP TABLE {t};"),
        ),
        _ => (
            format!("CREATE TABLE {t} (id BIGINT PRIMARY KEY, v VARCHAR(64));\nCREATE INDEX {t}_v ON {t} (v);"),
            format!("DROP INDEX {t}_v;\nDROP TABLE {t};"),
        ),
    }
}

/// UP and DOWN inserting (deleting) the row `id` into table `t`.
pub fn insert(engine: Engine, t: &str, id: i64) -> (String, String) {
    match engine {
        Mongodb => (
            format!(r#"[{{"insert": "{t}", "documents": [{{"_id": {id}, "v": "row {id}"}}]}}]"#),
            format!(r#"[{{"delete": "{t}", "deletes": [{{"q": {{"_id": {id}}}, "limit": 1}}]}}]"#),
        ),
        _ => {
            (format!("INSERT INTO {t} (id, v) VALUES ({id}, 'row {id}');"), format!("DELETE FROM {t} WHERE id = {id};"))
        }
    }
}

/// One script running `a` then `b` (SQL texts, or MongoDB command arrays).
pub fn join(engine: Engine, a: &str, b: &str) -> String {
    match engine {
        Mongodb => {
            let mut first: Vec<serde_json::Value> = serde_json::from_str(a).expect("JSON array");
            let second: Vec<serde_json::Value> = serde_json::from_str(b).expect("JSON array");
            first.extend(second);
            serde_json::Value::Array(first).to_string()
        }
        _ => format!("{a}\n{b}"),
    }
}

/// A statement that takes about `seconds` on the server.
pub fn slow(engine: Engine, seconds: u32) -> String {
    match engine {
        Postgres => format!("SELECT pg_sleep({seconds});"),
        Mysql => format!("SELECT SLEEP({seconds});"),
        // No sleep in SQLite: count far enough.
        Sqlite => format!(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {}) SELECT count(*) FROM c;",
            u64::from(seconds) * 4_000_000
        ),
        Mongodb => format!(
            r#"[{{"create": "sleepy"}}, {{"insert": "sleepy", "documents": [{{"_id": 1}}]}},
                {{"update": "sleepy", "updates": [{{"q": {{"$where": "sleep({}) || true"}}, "u": {{"$set": {{"slept": true}}}}}}]}}]"#,
            seconds * 1000
        ),
    }
}
