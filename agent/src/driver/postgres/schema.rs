//! PostgreSQL: schemas, extensions, enum and domain types, sequences, functions, tables (columns, constraints),
//! foreign keys, views, materialized views, indexes, triggers and comments, from pg_catalog.

use std::collections::BTreeMap;

use flotilla_core::schema::{Kind, Object, Schema};
use flotilla_core::Engine;
use sqlx::AnyConnection;

use crate::driver::shared::{object, rows};
use crate::driver::DriverError;

/// Namespaces that are the user's, and objects not owned by an extension.
const USER_NS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'";

/// `schema.name`, or just `name` in `public`, quoted where needed.
fn qual(ns: &str, name: &str) -> String {
    format!(
        "CASE WHEN {ns} = 'public' THEN quote_ident({name}) ELSE quote_ident({ns}) || '.' || quote_ident({name}) END"
    )
}

fn not_extension(oid: &str) -> String {
    format!("NOT EXISTS (SELECT 1 FROM pg_depend dep WHERE dep.objid = {oid} AND dep.deptype = 'e')")
}

pub(in crate::driver) async fn dump(conn: &mut AnyConnection) -> Result<Schema, DriverError> {
    let mut objects = before_tables(conn).await?;
    objects.extend(tables(conn).await?);
    objects.extend(after_tables(conn).await?);
    Ok(Schema::new(Engine::Postgres, objects))
}

/// What tables may depend on: schemas, extensions, types, sequences and functions.
async fn before_tables(conn: &mut AnyConnection) -> Result<Vec<Object>, DriverError> {
    let mut objects = Vec::new();

    for r in rows(
        conn,
        &format!("SELECT quote_ident(n.nspname) FROM pg_namespace n WHERE {USER_NS} AND n.nspname <> 'public'"),
    )
    .await?
    {
        objects.push(object(Kind::Schema, &r[0], format!("CREATE SCHEMA IF NOT EXISTS {}", r[0])));
    }
    for r in rows(conn, "SELECT quote_ident(extname), extversion FROM pg_extension WHERE extname <> 'plpgsql'").await? {
        let mut o = object(Kind::Extension, &r[0], format!("CREATE EXTENSION IF NOT EXISTS {}", r[0]));
        o.parts.insert("version".into(), r[1].clone());
        objects.push(o);
    }
    let enums = format!(
        "SELECT {}, string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
         FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace JOIN pg_enum e ON e.enumtypid = t.oid
         WHERE {USER_NS} AND {} GROUP BY n.nspname, t.typname",
        qual("n.nspname", "t.typname"),
        not_extension("t.oid")
    );
    for r in rows(conn, &enums).await? {
        objects.push(object(Kind::Type, &r[0], format!("CREATE TYPE {} AS ENUM ({})", r[0], r[1])));
    }
    let domains = format!(
        "SELECT {}, format_type(t.typbasetype, t.typtypmod), CASE WHEN t.typnotnull THEN ' NOT NULL' ELSE '' END,
                coalesce(' DEFAULT ' || t.typdefault, ''),
                coalesce((SELECT string_agg(' CONSTRAINT ' || quote_ident(c.conname) || ' ' || pg_get_constraintdef(c.oid), '' ORDER BY c.conname)
                          FROM pg_constraint c WHERE c.contypid = t.oid), '')
         FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.typtype = 'd' AND {USER_NS} AND {}",
        qual("n.nspname", "t.typname"),
        not_extension("t.oid")
    );
    for r in rows(conn, &domains).await? {
        objects.push(object(Kind::Type, &r[0], format!("CREATE DOMAIN {} AS {}{}{}{}", r[0], r[1], r[2], r[3], r[4])));
    }
    let sequences = format!(
        "SELECT {}, s.data_type::text, s.start_value::text, s.increment_by::text, s.min_value::text, s.max_value::text,
                CASE WHEN s.cycle THEN ' CYCLE' ELSE '' END
         FROM pg_sequences s JOIN pg_namespace n ON n.nspname = s.schemaname
         JOIN pg_class c ON c.relname = s.sequencename AND c.relnamespace = n.oid
         WHERE {USER_NS} AND {} AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'i')",
        qual("n.nspname", "s.sequencename"),
        not_extension("c.oid")
    );
    for r in rows(conn, &sequences).await? {
        let ddl = format!(
            "CREATE SEQUENCE {} AS {} START WITH {} INCREMENT BY {} MINVALUE {} MAXVALUE {}{}",
            r[0], r[1], r[2], r[3], r[4], r[5], r[6]
        );
        objects.push(object(Kind::Sequence, &r[0], ddl));
    }
    let functions = format!(
        "SELECT {} || '(' || pg_get_function_identity_arguments(p.oid) || ')', pg_get_functiondef(p.oid)
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE p.prokind IN ('f', 'p') AND {USER_NS} AND {}",
        qual("n.nspname", "p.proname"),
        not_extension("p.oid")
    );
    for r in rows(conn, &functions).await? {
        objects.push(object(Kind::Function, &r[0], r[1].trim_end()));
    }
    Ok(objects)
}

/// What depends on tables: sequence ownership, views, indexes, triggers and comments.
async fn after_tables(conn: &mut AnyConnection) -> Result<Vec<Object>, DriverError> {
    let mut objects = Vec::new();
    // A serial column's sequence belongs to the column (pg_depend 'a'); identity sequences ('i') come with their
    // column and are not dumped at all.
    let owners = format!(
        "SELECT {}, {} || '.' || quote_ident(a.attname)
         FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
         JOIN pg_namespace n ON n.oid = s.relnamespace
         JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace
         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
         WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a'
           AND {USER_NS} AND t.relname NOT LIKE 'flotilla%'",
        qual("n.nspname", "s.relname"),
        qual("tn.nspname", "t.relname")
    );
    for r in rows(conn, &owners).await? {
        let mut o = object(Kind::SequenceOwner, &r[0], format!("ALTER SEQUENCE {} OWNED BY {}", r[0], r[1]));
        o.parts.insert("owned by".into(), r[1].clone());
        objects.push(o);
    }
    let views = format!(
        "SELECT {}, c.relkind::text, pg_get_viewdef(c.oid, true) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('v', 'm') AND {USER_NS} AND {}",
        qual("n.nspname", "c.relname"),
        not_extension("c.oid")
    );
    for r in rows(conn, &views).await? {
        let body = r[2].trim().trim_end_matches(';');
        if r[1] == "m" {
            objects.push(object(
                Kind::MaterializedView,
                &r[0],
                format!("CREATE MATERIALIZED VIEW {} AS\n{body}\nWITH NO DATA", r[0]),
            ));
        } else {
            objects.push(object(Kind::View, &r[0], format!("CREATE VIEW {} AS\n{body}", r[0])));
        }
    }
    let indexes = format!(
        "SELECT {}, pg_get_indexdef(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
         JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = i.relnamespace
         WHERE {USER_NS} AND t.relname NOT LIKE 'flotilla%' AND {}
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid AND c.contype IN ('p', 'u', 'x'))",
        qual("n.nspname", "i.relname"),
        not_extension("t.oid")
    );
    for r in rows(conn, &indexes).await? {
        objects.push(object(Kind::Index, &r[0], &r[1]));
    }
    let triggers = format!(
        "SELECT quote_ident(t.tgname) || ' ON ' || {}, pg_get_triggerdef(t.oid, true)
         FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE NOT t.tgisinternal AND {USER_NS} AND c.relname NOT LIKE 'flotilla%'",
        qual("n.nspname", "c.relname")
    );
    for r in rows(conn, &triggers).await? {
        objects.push(object(Kind::Trigger, &r[0], &r[1]));
    }
    let comments = format!(
        "SELECT CASE WHEN d.objsubid = 0 THEN 'TABLE ' || {rel} ELSE 'COLUMN ' || {rel} || '.' || quote_ident(a.attname) END,
                quote_literal(d.description)
         FROM pg_description d JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass
         JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid
         WHERE {USER_NS} AND c.relname NOT LIKE 'flotilla%' AND c.relkind IN ('r', 'p', 'v', 'm')",
        rel = qual("n.nspname", "c.relname")
    );
    for r in rows(conn, &comments).await? {
        objects.push(object(Kind::Comment, &r[0], format!("COMMENT ON {} IS {}", r[0], r[1])));
    }
    Ok(objects)
}

/// Tables with their columns and non-foreign-key constraints; foreign keys as their own objects, so a dump can
/// create every table before any reference between them.
async fn tables(conn: &mut AnyConnection) -> Result<Vec<Object>, DriverError> {
    let table_filter = format!(
        "c.relkind IN ('r', 'p') AND {USER_NS} AND c.relname NOT LIKE 'flotilla%' AND {}",
        not_extension("c.oid")
    );
    let columns = format!(
        "SELECT {}, quote_ident(a.attname), format_type(a.atttypid, a.atttypmod),
                CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
                CASE WHEN a.attgenerated = 's' THEN ' GENERATED ALWAYS AS (' || pg_get_expr(d.adbin, d.adrelid) || ') STORED'
                     WHEN d.adbin IS NOT NULL THEN ' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid) ELSE '' END,
                CASE a.attidentity WHEN 'a' THEN ' GENERATED ALWAYS AS IDENTITY' WHEN 'd' THEN ' GENERATED BY DEFAULT AS IDENTITY' ELSE '' END,
                coalesce(' COLLATE ' || quote_ident(co.collname), '')
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
         LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> (SELECT oid FROM pg_collation WHERE collname = 'default')
         WHERE {table_filter} ORDER BY n.nspname, c.relname, a.attnum",
        qual("n.nspname", "c.relname")
    );
    let constraints = format!(
        "SELECT {}, quote_ident(con.conname), con.contype::text, pg_get_constraintdef(con.oid)
         FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {table_filter} ORDER BY 1, 2",
        qual("n.nspname", "c.relname")
    );
    let mut tables: BTreeMap<String, (Vec<String>, BTreeMap<String, String>)> = BTreeMap::new();
    for r in rows(conn, &columns).await? {
        let definition = format!("{}{}{}{}{}", r[2], r[6], r[3], r[4], r[5]);
        let entry = tables.entry(r[0].clone()).or_default();
        entry.0.push(format!("{} {definition}", r[1]));
        entry.1.insert(format!("column {}", r[1]), definition);
    }
    let mut out = Vec::new();
    for r in rows(conn, &constraints).await? {
        let (table, name, kind, def) = (&r[0], &r[1], &r[2], &r[3]);
        if kind == "f" {
            let ddl = format!("ALTER TABLE {table} ADD CONSTRAINT {name} {def}");
            out.push(object(Kind::ForeignKey, format!("{table}.{name}"), ddl));
            continue;
        }
        let entry = tables.entry(table.clone()).or_default();
        entry.0.push(format!("CONSTRAINT {name} {def}"));
        entry.1.insert(format!("constraint {name}"), def.clone());
    }
    for (name, (lines, parts)) in tables {
        let ddl = format!("CREATE TABLE {name} (\n    {}\n)", lines.join(",\n    "));
        out.push(Object { kind: Kind::Table, name, parts, ddl });
    }
    Ok(out)
}
