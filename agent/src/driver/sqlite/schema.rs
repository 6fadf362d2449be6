//! SQLite: tables, indexes, views and triggers from `sqlite_master`, with each table's columns as parts.

use flotilla_core::schema::{Kind, Schema};
use flotilla_core::Engine;
use sqlx::AnyConnection;

use crate::driver::shared::{object, rows};
use crate::driver::DriverError;

pub(in crate::driver) async fn dump(conn: &mut AnyConnection) -> Result<Schema, DriverError> {
    let master = rows(
        conn,
        "SELECT type, name, sql FROM sqlite_master
         WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND tbl_name NOT LIKE 'flotilla%'",
    )
    .await?;
    let columns = rows(
        conn,
        "SELECT m.name, p.name, p.type || CASE WHEN p.\"notnull\" THEN ' NOT NULL' ELSE '' END
                || coalesce(' DEFAULT ' || p.dflt_value, '') || CASE WHEN p.pk > 0 THEN ' PRIMARY KEY ' || p.pk ELSE '' END
         FROM sqlite_master m JOIN pragma_table_info(m.name) p
         WHERE m.type = 'table' AND m.name NOT LIKE 'flotilla%'",
    )
    .await?;
    let mut objects = Vec::new();
    for r in master {
        let kind = match r[0].as_str() {
            "table" => Kind::Table,
            "index" => Kind::Index,
            "view" => Kind::View,
            "trigger" => Kind::Trigger,
            _ => continue,
        };
        let mut o = object(kind, &r[1], &r[2]);
        if kind == Kind::Table {
            for c in columns.iter().filter(|c| c[0] == r[1]) {
                o.parts.insert(format!("column {}", c[1]), c[2].clone());
            }
        }
        objects.push(o);
    }
    Ok(Schema::new(Engine::Sqlite, objects))
}
