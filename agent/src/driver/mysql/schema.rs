//! MySQL / MariaDB: tables (with columns, charsets and collations, indexes, checks and foreign keys), views and
//! triggers, from information_schema and `SHOW CREATE TABLE`.

use std::collections::BTreeMap;

use flotilla_core::schema::{Kind, Schema};
use flotilla_core::Engine;
use sqlx::AnyConnection;

use crate::driver::shared::{object, rows};
use crate::driver::DriverError;

pub(in crate::driver) async fn dump(conn: &mut AnyConnection) -> Result<Schema, DriverError> {
    let db = rows(conn, "SELECT CAST(DATABASE() AS CHAR(255))")
        .await?
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .unwrap_or_default();
    let mut objects = Vec::new();

    let mut parts: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let columns = "SELECT table_name, column_name, CAST(CONCAT(column_type,
            CASE WHEN character_set_name IS NOT NULL THEN CONCAT(' CHARACTER SET ', character_set_name, ' COLLATE ', collation_name) ELSE '' END,
            CASE WHEN is_nullable = 'NO' THEN ' NOT NULL' ELSE '' END,
            CASE WHEN column_default IS NOT NULL THEN CONCAT(' DEFAULT ', column_default) ELSE '' END,
            CASE WHEN extra <> '' THEN CONCAT(' ', extra) ELSE '' END) AS CHAR(2000))
        FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name NOT LIKE 'flotilla%'";
    for r in rows(conn, columns).await? {
        parts.entry(r[0].clone()).or_default().insert(format!("column {}", r[1]), r[2].clone());
    }
    let indexes = "SELECT table_name, index_name, CAST(CONCAT(CASE WHEN non_unique = 0 THEN 'UNIQUE ' ELSE '' END, index_type, ' (',
            GROUP_CONCAT(CONCAT(column_name, coalesce(CONCAT('(', sub_part, ')'), '')) ORDER BY seq_in_index SEPARATOR ', '), ')') AS CHAR(2000))
        FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name NOT LIKE 'flotilla%'
        GROUP BY table_name, index_name, non_unique, index_type";
    for r in rows(conn, indexes).await? {
        parts.entry(r[0].clone()).or_default().insert(format!("index {}", r[1]), r[2].clone());
    }
    // Two filtered queries joined here: MariaDB re-reads information_schema for every row of a join between its
    // tables, which took seconds on a server holding a few hundred databases.
    let rules: BTreeMap<(String, String), String> = rows(
        conn,
        "SELECT table_name, constraint_name, CAST(CONCAT(' ON UPDATE ', update_rule, ' ON DELETE ', delete_rule) AS CHAR(200))
         FROM information_schema.referential_constraints WHERE constraint_schema = DATABASE()",
    )
    .await?
    .into_iter()
    .map(|r| ((r[0].clone(), r[1].clone()), r[2].clone()))
    .collect();
    let foreign_keys = "SELECT table_name, constraint_name, CAST(CONCAT('(', GROUP_CONCAT(column_name ORDER BY ordinal_position), ') REFERENCES ',
            referenced_table_name, ' (', GROUP_CONCAT(referenced_column_name ORDER BY ordinal_position), ')') AS CHAR(2000))
        FROM information_schema.key_column_usage
        WHERE table_schema = DATABASE() AND referenced_table_name IS NOT NULL
        GROUP BY table_name, constraint_name, referenced_table_name";
    for r in rows(conn, foreign_keys).await? {
        let rule = rules.get(&(r[0].clone(), r[1].clone())).cloned().unwrap_or_default();
        parts.entry(r[0].clone()).or_default().insert(format!("foreign key {}", r[1]), format!("{}{rule}", r[2]));
    }
    let checks =
        "SELECT table_name, constraint_name, CAST(check_clause AS CHAR(2000)) FROM information_schema.check_constraints
        WHERE constraint_schema = DATABASE() AND table_name NOT LIKE 'flotilla%'";
    for r in rows(conn, checks).await? {
        parts.entry(r[0].clone()).or_default().insert(format!("check {}", r[1]), r[2].clone());
    }
    let table_options = "SELECT table_name, CAST(CONCAT('ENGINE=', coalesce(engine, ''), ' COLLATE=', coalesce(table_collation, '')) AS CHAR(500)),
            CAST(table_type AS CHAR(64))
        FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name NOT LIKE 'flotilla%'";
    for r in rows(conn, table_options).await? {
        if r[2] != "BASE TABLE" {
            continue;
        }
        let ddl = show_create(conn, "TABLE", &r[0], 1).await?;
        let mut o = object(Kind::Table, &r[0], strip_auto_increment(&ddl));
        o.parts = parts.remove(&r[0]).unwrap_or_default();
        o.parts.insert("options".into(), r[1].clone());
        objects.push(o);
    }
    let views = "SELECT table_name, CAST(view_definition AS CHAR(16000)) FROM information_schema.views WHERE table_schema = DATABASE()";
    for r in rows(conn, views).await? {
        let body = r[1].replace(&format!("`{db}`."), "");
        objects.push(object(Kind::View, &r[0], format!("CREATE VIEW `{}` AS {body}", r[0])));
    }
    let triggers = "SELECT trigger_name, CAST(CONCAT(action_timing, ' ', event_manipulation, ' ON `', event_object_table, '` FOR EACH ROW ') AS CHAR(500)),
            CAST(action_statement AS CHAR(16000))
        FROM information_schema.triggers WHERE trigger_schema = DATABASE()";
    for r in rows(conn, triggers).await? {
        objects.push(object(Kind::Trigger, &r[0], format!("CREATE TRIGGER `{}` {}{}", r[0], r[1], r[2])));
    }
    Ok(Schema::new(Engine::Mysql, objects))
}

/// `SHOW CREATE …` output column `column` (1 for tables).
async fn show_create(conn: &mut AnyConnection, what: &str, name: &str, column: usize) -> Result<String, DriverError> {
    let quoted = name.replace('`', "``");
    let row = rows(conn, &format!("SHOW CREATE {what} `{quoted}`")).await?;
    row.into_iter()
        .next()
        .and_then(|r| r.into_iter().nth(column))
        .ok_or_else(|| DriverError::Database(format!("SHOW CREATE {what} {name} returned nothing")))
}

/// The AUTO_INCREMENT counter is data, not schema.
fn strip_auto_increment(ddl: &str) -> String {
    ddl.split(' ').filter(|w| !w.starts_with("AUTO_INCREMENT=")).collect::<Vec<_>>().join(" ")
}
