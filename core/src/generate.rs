//! `flotilla new`: the next version, file names in the team's convention, and UP/DOWN templates that carry the
//! safety practices (explicit transaction, IF NOT EXISTS, a comment for the business reason, and for destructive
//! changes a backup the DOWN restores from).

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::reader::{Format, MigrationSet};
use crate::{Engine, Version};

/// A naming convention to write in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Native,
    Flyway,
    GolangMigrate,
    Dbmate,
    Sqlx,
    Diesel,
    /// pop / fizz SQL: `<timestamp>_<name>.up.sql` (a `.<dialect>.` file per engine where they differ).
    Pop,
    /// `<timestamp>_<name>/migration.sql` and a `down.sql` beside it.
    Prisma,
    /// `<YYYYMMDDHHMMSS>_<name>.js` running literal SQL through `knex.raw`.
    Knex,
    /// Liquibase formatted SQL: a `<version>_<name>.sql` changelog with one changeset and its `--rollback` lines.
    Liquibase,
    /// An Alembic revision, `versions/<revision>_<name>.py`, following the project's current head.
    Alembic,
}

impl Style {
    pub const NAMES: &'static str =
        "native, flyway, golang-migrate, dbmate, sqlx, diesel, pop, prisma, knex, liquibase, alembic";

    pub fn parse(s: &str) -> Result<Style, String> {
        match s {
            "native" => Ok(Style::Native),
            "flyway" => Ok(Style::Flyway),
            "golang-migrate" => Ok(Style::GolangMigrate),
            "dbmate" => Ok(Style::Dbmate),
            "sqlx" => Ok(Style::Sqlx),
            "diesel" => Ok(Style::Diesel),
            "pop" | "fizz" => Ok(Style::Pop),
            "prisma" => Ok(Style::Prisma),
            "knex" => Ok(Style::Knex),
            "liquibase" => Ok(Style::Liquibase),
            "alembic" => Ok(Style::Alembic),
            other => Err(format!("unknown style `{other}` (expected {})", Style::NAMES)),
        }
    }

    /// The style of a directory that already has migrations; `None` where the framework's own tool writes them
    /// (a sqitch change is also a line of its plan: `sqitch add`).
    pub fn of(format: Format) -> Option<Style> {
        Some(match format {
            Format::Native | Format::Mongo => Style::Native,
            Format::Flyway => Style::Flyway,
            Format::Dbmate => Style::Dbmate,
            Format::Diesel => Style::Diesel,
            Format::Pop => Style::Pop,
            Format::Prisma => Style::Prisma,
            Format::Knex => Style::Knex,
            Format::Liquibase => Style::Liquibase,
            Format::Sqitch => return None,
        })
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub description: &'a str,
    pub engine: Engine,
    pub style: Style,
    /// Template an UP that backs up what it destroys and a DOWN that restores it.
    pub destructive: bool,
    /// The revision the new one follows (Alembic's current head; `None` for the first).
    pub parent: Option<&'a str>,
}

/// A file to write, relative to the migrations directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFile {
    pub path: PathBuf,
    pub text: String,
}

/// `add status column to orders` → `add_status_column_to_orders`.
pub fn slug(description: &str) -> Result<String, String> {
    let mut out = String::new();
    for c in description.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    let out = out.trim_end_matches('_').to_string();
    if out.is_empty() {
        return Err("the description needs at least one letter or digit".into());
    }
    Ok(out)
}

/// The next version: the next number where the directory already counts 1, 2, 3 … (keeping its zero padding),
/// otherwise a `YYYYMMDDHHMMSS` timestamp (bumped past the newest existing version if the clock is behind).
pub fn next_version(existing: &MigrationSet, now: DateTime<Utc>) -> (Version, usize) {
    let newest = existing.migrations.last().map(|m| m.version);
    let timestamp: Version = now.format("%Y%m%d%H%M%S").to_string().parse().unwrap_or_default();
    match newest {
        Some(v) if v.get() < 1_000_000_000 => {
            let width = existing
                .migrations
                .last()
                .and_then(|m| {
                    m.up.path
                        .file_name()?
                        .to_str()
                        .map(|n| n.trim_start_matches(['V', 'U']).chars().take_while(char::is_ascii_digit).count())
                })
                .unwrap_or(0);
            (v.next(), width)
        }
        Some(v) => (timestamp.max(v.next()), 14),
        None => (timestamp, 14),
    }
}

/// The files of a new migration.
pub fn files(req: &Request, version: Version, width: usize) -> Result<Vec<NewFile>, String> {
    let name = slug(req.description)?;
    let v = format!("{version:0width$}");
    // Knex, Liquibase and Alembic run each migration in a transaction of their own: its SQL opens none.
    let (up, down) = templates(req, !matches!(req.style, Style::Knex | Style::Liquibase | Style::Alembic));
    let ext = if req.engine == Engine::Mongodb { "json" } else { "sql" };
    if req.engine == Engine::Mongodb && req.style != Style::Native {
        return Err("MongoDB migrations use the native style (<version>_<name>.up.json / .down.json)".into());
    }
    let file = |path: String, text: String| NewFile { path: PathBuf::from(path), text };
    Ok(match req.style {
        Style::Native | Style::GolangMigrate | Style::Sqlx | Style::Pop => {
            vec![file(format!("{v}_{name}.up.{ext}"), up), file(format!("{v}_{name}.down.{ext}"), down)]
        }
        Style::Flyway => vec![file(format!("V{v}__{name}.sql"), up), file(format!("U{v}__{name}.sql"), down)],
        Style::Dbmate => vec![file(format!("{v}_{name}.sql"), format!("-- migrate:up\n{up}\n-- migrate:down\n{down}"))],
        Style::Diesel => {
            let folder = diesel_folder(&v, &name);
            vec![file(format!("{folder}/up.sql"), up), file(format!("{folder}/down.sql"), down)]
        }
        Style::Prisma => {
            vec![file(format!("{v}_{name}/migration.sql"), up), file(format!("{v}_{name}/down.sql"), down)]
        }
        Style::Knex => vec![file(format!("{v}_{name}.js"), knex_file(req.description.trim(), &up, &down))],
        Style::Liquibase => vec![file(format!("{v}_{name}.sql"), liquibase_file(&format!("{v}-{name}"), &up, &down))],
        Style::Alembic => {
            let id = revision_id(req.description, &v);
            let text = alembic_file(req.description.trim(), &id, req.parent, &up, &down);
            vec![file(format!("versions/{id}_{name}.py"), text)]
        }
    })
}

/// One changeset of Liquibase formatted SQL; its DOWN as `--rollback` lines.
fn liquibase_file(id: &str, up: &str, down: &str) -> String {
    let rollback: String = down.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("--rollback {l}\n")).collect();
    format!("--liquibase formatted sql\n\n--changeset flotilla:{id}\n{}\n{rollback}", up.trim_end())
}

/// Twelve hex digits, as Alembic's own revision ids.
fn revision_id(description: &str, version: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(format!("{version}:{description}").as_bytes()))[..12].to_string()
}

/// An Alembic revision running the templates' SQL with `op.execute`, following `parent`.
fn alembic_file(description: &str, id: &str, parent: Option<&str>, up: &str, down: &str) -> String {
    let body = |sql: &str| {
        let sql = sql.replace('\\', "\\\\").replace("\"\"\"", "\\\"\\\"\\\"");
        let indented: String =
            sql.lines().map(|l| if l.is_empty() { "\n".to_string() } else { format!("        {l}\n") }).collect();
        format!("    op.execute(\n        \"\"\"\n{indented}        \"\"\"\n    )\n")
    };
    let down_revision = parent.map_or("None".to_string(), |p| format!("\"{p}\""));
    format!(
        "\"\"\"{description}\n\nRevision ID: {id}\nRevises: {}\n\"\"\"\nfrom alembic import op\n\nrevision = \"{id}\"\n\
         down_revision = {down_revision}\nbranch_labels = None\ndepends_on = None\n\n\ndef upgrade():\n{}\n\ndef downgrade():\n{}",
        parent.unwrap_or(""),
        body(up),
        body(down)
    )
}

/// A Knex migration whose `up` and `down` run the templates' SQL as it is, so Knex and Flotilla run the same thing.
fn knex_file(description: &str, up: &str, down: &str) -> String {
    let body = |sql: &str| {
        let sql = sql.replace('\\', "\\\\").replace('`', "\\`").replace("${", "\\${");
        let indented: String =
            sql.lines().map(|l| if l.is_empty() { "\n".to_string() } else { format!("    {l}\n") }).collect();
        format!("  await knex.raw(`\n{indented}  `);\n")
    };
    format!(
        "// {description}\n// Literal SQL through knex.raw: Knex runs it as written, and Flotilla reads this file as it is.\n\n\
         exports.up = async function (knex) {{\n{}}};\n\nexports.down = async function (knex) {{\n{}}};\n",
        body(up),
        body(down)
    )
}

/// diesel writes timestamps as `2024-01-31-120000`.
fn diesel_folder(version: &str, name: &str) -> String {
    if version.len() == 14 {
        format!("{}-{}-{}-{}_{name}", &version[..4], &version[4..6], &version[6..8], &version[8..])
    } else {
        format!("{version}_{name}")
    }
}

fn templates(req: &Request, explicit_transaction: bool) -> (String, String) {
    let description = req.description.trim();
    if req.engine == Engine::Mongodb {
        return mongo_templates(req);
    }
    let header = format!("-- {description}\n-- Why: <the business reason for this change>\n");
    // MySQL commits DDL implicitly, so an explicit transaction would only pretend; Flotilla records each statement.
    let (begin, commit) = match req.engine {
        Engine::Mysql => ("", ""),
        _ if !explicit_transaction => ("", ""),
        _ => ("BEGIN;\n\n", "\nCOMMIT;\n"),
    };
    let if_not_exists = if req.engine == Engine::Mysql { "" } else { " IF NOT EXISTS" };
    let not_null = match req.engine {
        Engine::Postgres => "-- ALTER TABLE my_table ALTER COLUMN my_column SET NOT NULL;",
        Engine::Mysql => "-- ALTER TABLE my_table MODIFY my_column VARCHAR(32) NOT NULL;",
        _ => "-- (SQLite cannot add NOT NULL to an existing column: rebuild the table, or keep it nullable)",
    };
    if req.destructive {
        let up = format!(
            "{header}-- Destructive: what is dropped is first copied to a backup table, so the DOWN can restore it.\n\
             {begin}-- CREATE TABLE{if_not_exists} my_table_my_column_backup AS SELECT id, my_column FROM my_table;\n\
             -- ALTER TABLE my_table DROP COLUMN my_column;\n{commit}"
        );
        let restore = match req.engine {
            Engine::Postgres => "-- UPDATE my_table t SET my_column = b.my_column FROM my_table_my_column_backup b WHERE b.id = t.id;",
            Engine::Mysql => "-- UPDATE my_table t JOIN my_table_my_column_backup b ON b.id = t.id SET t.my_column = b.my_column;",
            _ => "-- UPDATE my_table SET my_column = (SELECT b.my_column FROM my_table_my_column_backup b WHERE b.id = my_table.id);",
        };
        let down = format!(
            "-- Restores {description}: re-create what the UP dropped, refill it from the backup, drop the backup.\n\
             {begin}-- ALTER TABLE my_table ADD COLUMN my_column TEXT;\n{restore}\n-- DROP TABLE my_table_my_column_backup;\n{commit}"
        );
        return (up, down);
    }
    let up = format!(
        "{header}-- Safe shape for a new column: add it nullable, backfill, then require it.\n\
         {begin}-- ALTER TABLE my_table ADD COLUMN{if_not_exists} my_column VARCHAR(32);\n\
         -- UPDATE my_table SET my_column = 'default' WHERE my_column IS NULL;\n{not_null}\n{commit}"
    );
    let down =
        format!("-- Reverses {description} exactly.\n{begin}-- ALTER TABLE my_table DROP COLUMN my_column;\n{commit}");
    (up, down)
}

fn mongo_templates(req: &Request) -> (String, String) {
    let up = if req.destructive {
        r#"[
  {"update": "my_collection", "updates": [{"q": {"my_field": {"$exists": true}}, "u": [{"$set": {"my_field_backup": "$my_field"}}], "multi": true}]},
  {"update": "my_collection", "updates": [{"q": {}, "u": {"$unset": {"my_field": ""}}, "multi": true}]}
]
"#
    } else {
        r#"[
  {"update": "my_collection", "updates": [{"q": {"my_field": {"$exists": false}}, "u": {"$set": {"my_field": "default"}}, "multi": true}]}
]
"#
    };
    let down = if req.destructive {
        r#"[
  {"update": "my_collection", "updates": [{"q": {"my_field_backup": {"$exists": true}}, "u": [{"$set": {"my_field": "$my_field_backup"}}, {"$unset": "my_field_backup"}], "multi": true}]}
]
"#
    } else {
        r#"[
  {"update": "my_collection", "updates": [{"q": {}, "u": {"$unset": {"my_field": ""}}, "multi": true}]}
]
"#
    };
    (up.to_string(), down.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::{read_dir, ReadOptions};

    fn write(dir: &std::path::Path, files: &[NewFile]) {
        for f in files {
            let path = dir.join(&f.path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, &f.text).unwrap();
        }
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("Add status column to orders!").unwrap(), "add_status_column_to_orders");
        assert_eq!(slug("  drop   legacy--notes ").unwrap(), "drop_legacy_notes");
        assert!(slug("!!!").is_err());
    }

    #[test]
    fn every_style_reads_back_with_its_version_and_name() {
        let now = DateTime::parse_from_rfc3339("2026-11-24T07:10:00Z").unwrap().with_timezone(&Utc);
        for (style, format) in [
            (Style::Native, Format::Native),
            (Style::GolangMigrate, Format::Native),
            (Style::Sqlx, Format::Native),
            (Style::Flyway, Format::Flyway),
            (Style::Dbmate, Format::Dbmate),
            (Style::Diesel, Format::Diesel),
            (Style::Pop, Format::Native),
            (Style::Prisma, Format::Prisma),
            (Style::Knex, Format::Knex),
            (Style::Liquibase, Format::Liquibase),
        ] {
            for (engine, destructive) in [(Engine::Postgres, false), (Engine::Mysql, true), (Engine::Sqlite, true)] {
                let dir = tempfile::tempdir().unwrap();
                let empty = read_dir(dir.path(), &ReadOptions::default()).unwrap();
                let (version, width) = next_version(&empty, now);
                let req = Request { description: "Add status to orders", engine, style, destructive, parent: None };
                write(dir.path(), &files(&req, version, width).unwrap());
                let set = read_dir(dir.path(), &ReadOptions::default()).unwrap();
                assert_eq!(set.format, Some(format), "{style:?}");
                let m = &set.migrations[0];
                let expected = match style {
                    // A changeset's version is its place in the changelog; its name is its id.
                    Style::Liquibase => (1, "20261124071000-add_status_to_orders"),
                    _ => (20261124071000, "add_status_to_orders"),
                };
                assert_eq!((m.version.get(), m.name.as_str()), expected, "{style:?}");
                assert!(m.down.is_some());
                // Templates parse for their engine.
                m.up.statements(m.kind, engine).unwrap();
                if style == Style::Knex {
                    assert!(!m.up.text.contains("BEGIN;"), "Knex runs each migration in its own transaction");
                    assert!(m.up.text.contains("-- Why:"), "the reason travels into the SQL: {}", m.up.text);
                }
            }
        }
    }

    #[test]
    fn sequences_continue_with_their_padding_and_timestamps_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("000007_a.up.sql"), "SELECT 1;").unwrap();
        std::fs::write(dir.path().join("000007_a.down.sql"), "SELECT 1;").unwrap();
        let set = read_dir(dir.path(), &ReadOptions::default()).unwrap();
        assert_eq!(next_version(&set, Utc::now()), (Version::from(8u32), 6));
        let req = Request {
            description: "next",
            engine: Engine::Postgres,
            style: Style::Native,
            destructive: false,
            parent: None,
        };
        assert_eq!(files(&req, Version::from(8u32), 6).unwrap()[0].path, PathBuf::from("000008_next.up.sql"));

        let future = tempfile::tempdir().unwrap();
        std::fs::write(future.path().join("29991231235959_x.up.sql"), "SELECT 1;").unwrap();
        std::fs::write(future.path().join("29991231235959_x.down.sql"), "SELECT 1;").unwrap();
        let set = read_dir(future.path(), &ReadOptions::default()).unwrap();
        assert_eq!(next_version(&set, Utc::now()).0.get(), 29991231235960);
    }

    #[test]
    fn mongo_templates_are_valid_command_lists() {
        for destructive in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let req = Request {
                description: "backfill",
                engine: Engine::Mongodb,
                style: Style::Native,
                destructive,
                parent: None,
            };
            write(dir.path(), &files(&req, Version::from(1u32), 0).unwrap());
            let set = read_dir(dir.path(), &ReadOptions::default()).unwrap();
            assert_eq!(set.format, Some(Format::Mongo));
        }
        let req = Request {
            description: "x",
            engine: Engine::Mongodb,
            style: Style::Flyway,
            destructive: false,
            parent: None,
        };
        assert!(files(&req, Version::from(1u32), 0).is_err());
    }
}
