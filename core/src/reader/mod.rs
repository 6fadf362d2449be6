//! Reads a set of migrations, in any supported convention, into [`Migration`]s sorted by version. The set is a
//! [`Files`] tree in memory (a directory loaded from disk, or a bundle's files): reading does no I/O.
//!
//! | format | files |
//! |---|---|
//! | native (golang-migrate, sqlx reversible) | `<version>_<name>.up.sql` + `<version>_<name>.down.sql` |
//! | sqlx simple | `<version>_<name>.sql` (UP only) |
//! | Flyway | `V<version>__<name>.sql` + undo `U<version>__<name>.sql` (+ `.sql.conf`) |
//! | dbmate | `<version>_<name>.sql` with `-- migrate:up` / `-- migrate:down` sections |
//! | diesel | `<version>_<name>/up.sql` + `down.sql` (+ `metadata.toml`) |
//! | MongoDB | `<version>_<name>.up.json` + `.down.json`: JSON arrays of commands |

mod conventions;
mod files;
mod knex;
mod liquibase;
mod scripts;
mod sqitch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use crate::error::ReadError;
use crate::migration::Migration;
use crate::version::Version;
use conventions::{classify, Parts, Role, POP_DIALECTS};
pub use files::Files;

/// A directory convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// golang-migrate and sqlx: `.up.sql` / `.down.sql`, or sqlx's up-only `.sql`.
    Native,
    Flyway,
    Dbmate,
    Diesel,
    Mongo,
    /// pop / fizz SQL: native names, with `.<dialect>.` files for one engine only.
    Pop,
    /// `<timestamp>_<name>/migration.sql` (+ `down.sql`).
    Prisma,
    /// JavaScript migrations whose `up` and `down` only run literal SQL through `knex.raw`.
    Knex,
    /// `sqitch.plan` with `deploy/`, `revert/` and `verify/` scripts.
    Sqitch,
    /// Liquibase formatted SQL: `--changeset author:id` with `--rollback` lines.
    Liquibase,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Native => "native (golang-migrate / sqlx)",
            Format::Flyway => "flyway",
            Format::Dbmate => "dbmate",
            Format::Diesel => "diesel",
            Format::Mongo => "mongodb json",
            Format::Pop => "pop",
            Format::Prisma => "prisma",
            Format::Knex => "knex",
            Format::Sqitch => "sqitch",
            Format::Liquibase => "liquibase formatted sql",
        }
    }

    /// Formats that may share a directory: pop's generic files are native ones.
    fn compatible(self, other: Format) -> bool {
        self == other || matches!((self, other), (Format::Native, Format::Pop) | (Format::Pop, Format::Native))
    }
}

#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Accept migrations with no DOWN (they cannot be rolled back).
    pub allow_missing_down: bool,
    /// The engine the set is read for: picks pop's per-engine files. `None` reads the generic ones.
    pub engine: Option<crate::Engine>,
}

/// The migrations of a directory and the convention they follow.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    pub dir: PathBuf,
    pub format: Option<Format>,
    pub migrations: Vec<Migration>,
    /// Flyway's repeatable migrations, by name.
    pub repeatables: Vec<crate::migration::Repeatable>,
}

impl MigrationSet {
    pub fn get(&self, version: Version) -> Option<&Migration> {
        self.migrations.binary_search_by_key(&version, |m| m.version).ok().map(|i| &self.migrations[i])
    }
}

/// Reads every migration in `dir`. Nothing is run; any bad file fails the whole read.
pub fn read_dir(dir: &Path, options: &ReadOptions) -> Result<MigrationSet, ReadError> {
    read_files(&Files::load(dir)?, options)
}

/// Reads every migration in `files`.
pub fn read_files(files: &Files, options: &ReadOptions) -> Result<MigrationSet, ReadError> {
    if files.exists(sqitch::PLAN) {
        return sqitch::read(files, options);
    }
    if liquibase::is_liquibase(files) {
        return liquibase::read(files, options);
    }
    let (mut format, parts) = collect(files)?;
    let repeatables = scripts::repeatables(files)?;
    if !repeatables.is_empty() {
        match format {
            None | Some(Format::Flyway) => format = Some(Format::Flyway),
            Some(other) => {
                let first = files.path(&format!("R__{}.sql", repeatables[0].name));
                return Err(ReadError::new(
                    &first,
                    format!(
                        "is a Flyway repeatable migration, but the directory is {}: one directory holds one convention",
                        other.as_str()
                    ),
                ));
            }
        }
    }
    let mut migrations = Vec::with_capacity(parts.len());
    for (version, mut p) in parts {
        if !p.dialects.is_empty() {
            pick_dialect(files, version, &mut p, options.engine)?;
        }
        migrations.push(scripts::build(files, version, p, format.unwrap_or(Format::Native), options)?);
    }
    Ok(MigrationSet { dir: files.root().to_path_buf(), format, migrations, repeatables })
}

/// Every top-level entry classified, by version; one convention for the whole set.
fn collect(files: &Files) -> Result<(Option<Format>, BTreeMap<Version, Parts>), ReadError> {
    let mut format: Option<(Format, PathBuf)> = None;
    let mut parts: BTreeMap<Version, Parts> = BTreeMap::new();
    for (name, is_dir) in files.top_level() {
        let Some(found) = classify(files, &name, is_dir)? else { continue };
        let path = files.path(&name);
        match &format {
            None => format = Some((found.format, path.clone())),
            Some((f, first)) if !f.compatible(found.format) => {
                return Err(ReadError::new(
                    &path,
                    format!(
                        "is a {} migration, but {} is {}: one directory holds one convention",
                        found.format.as_str(),
                        first.display(),
                        f.as_str()
                    ),
                ))
            }
            Some((Format::Native, first)) if found.format == Format::Pop => format = Some((Format::Pop, first.clone())),
            Some(_) => {}
        }
        let slot = parts.entry(found.version).or_default();
        for (role, file) in found.files {
            if let Some(dialect) = &found.dialect {
                slot.dialects.push((dialect.clone(), role, file));
                continue;
            }
            let existing = match role {
                Role::Up | Role::Both(_) => slot.up.replace(file.clone()),
                Role::Down => slot.down.replace(file.clone()),
            };
            if let Some(other) = existing {
                return Err(ReadError::new(
                    &files.path(&file),
                    format!("duplicate version {}: also used by {}", found.version, files.path(&other).display()),
                ));
            }
            if let Role::Both(combined) = role {
                slot.combined = Some(combined);
            }
        }
        match &slot.name {
            Some(name) if *name != found.name => {
                return Err(ReadError::new(
                    &path,
                    format!("version {} is named `{name}` elsewhere but `{}` here", found.version, found.name),
                ));
            }
            _ => slot.name = Some(found.name),
        }
        slot.no_transaction |= found.no_transaction;
    }
    Ok((format.map(|(f, _)| f), parts))
}

/// pop: the engine's own file where there is one, else the generic one; a version with neither is a no-op on
/// this engine (its scripts are empty, and it is recorded like any other).
fn pick_dialect(
    files: &Files,
    version: Version,
    p: &mut Parts,
    engine: Option<crate::Engine>,
) -> Result<(), ReadError> {
    use crate::Engine;
    let wanted = match engine {
        Some(Engine::Postgres) => Some("postgres"),
        Some(Engine::Mysql) => Some("mysql"),
        Some(Engine::Sqlite) => Some("sqlite3"),
        Some(Engine::Mongodb) | None => None,
    };
    for (dialect, role, rel) in std::mem::take(&mut p.dialects) {
        debug_assert!(POP_DIALECTS.contains(&dialect.as_str()));
        if Some(dialect.as_str()) != wanted {
            continue;
        }
        match role {
            Role::Down => p.down = Some(rel),
            _ => p.up = Some(rel),
        }
    }
    if p.up.is_none() && p.down.is_none() {
        // Nothing for this engine: an explicit no-op.
        p.up = Some(String::new());
        p.down = Some(String::new());
    } else if p.up.is_none() {
        let down = files.path(p.down.as_deref().unwrap_or_default());
        return Err(ReadError::new(&down, format!("version {version} has a DOWN but no UP for this engine")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::migration::{Checksum, Phase, Script, ScriptKind};
    use crate::{Direction, Engine, Statement};

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = d.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        d
    }

    fn read(d: &tempfile::TempDir) -> Result<MigrationSet, ReadError> {
        read_dir(d.path(), &ReadOptions::default())
    }

    #[test]
    fn native_pairs() {
        let d = dir(&[
            ("000002_add_email.up.sql", "ALTER TABLE users ADD COLUMN email text;"),
            ("000002_add_email.down.sql", "ALTER TABLE users DROP COLUMN email;"),
            ("000001_create_users.up.sql", "-- flotilla:phase expand\nCREATE TABLE users (id int);"),
            ("000001_create_users.down.sql", "DROP TABLE users;"),
            ("README.md", "notes"),
        ]);
        let set = read(&d).unwrap();
        assert_eq!(set.format, Some(Format::Native));
        let v: Vec<_> = set.migrations.iter().map(|m| (m.version.get(), m.name.as_str())).collect();
        assert_eq!(v, [(1, "create_users"), (2, "add_email")]);
        assert_eq!(set.migrations[0].options.phase, Some(Phase::Expand));
        assert!(!set.migrations[0].up.no_transaction);
    }

    #[test]
    fn flyway_with_undo_and_conf() {
        let d = dir(&[
            ("V1__create_users.sql", "CREATE TABLE users (id int);"),
            ("U1__create_users.sql", "DROP TABLE users;"),
            ("V2__index.sql", "CREATE INDEX CONCURRENTLY i ON users (id);"),
            ("V2__index.sql.conf", "# conf\nexecuteInTransaction=false\n"),
            ("U2__index.sql", "DROP INDEX i;"),
        ]);
        let set = read(&d).unwrap();
        assert_eq!(set.format, Some(Format::Flyway));
        assert_eq!(set.migrations.len(), 2);
        assert!(set.migrations[1].up.no_transaction);
        assert!(set.migrations[0].down.is_some());
    }

    #[test]
    fn dbmate_sections_and_lines() {
        let text = "-- migrate:up\nCREATE TABLE a (id int);\n\n-- migrate:down transaction:false\nDROP TABLE a;\n";
        let d = dir(&[("20240101120000_create_a.sql", text)]);
        let set = read(&d).unwrap();
        assert_eq!(set.format, Some(Format::Dbmate));
        let m = &set.migrations[0];
        assert_eq!(m.version.get(), 20240101120000);
        assert!(!m.up.no_transaction);
        assert!(m.down.as_ref().unwrap().no_transaction);
        let down = m.down.as_ref().unwrap().statements(ScriptKind::Sql, Engine::Postgres).unwrap();
        assert_eq!(down, vec![Statement::Sql { text: "DROP TABLE a".into(), line: 5 }]);
    }

    #[test]
    fn diesel_folders() {
        let d = dir(&[
            ("2023-05-01-120000_create_users/up.sql", "CREATE TABLE users (id int);"),
            ("2023-05-01-120000_create_users/down.sql", "DROP TABLE users;"),
            ("2023-05-02-000000_idx/up.sql", "CREATE INDEX CONCURRENTLY i ON users (id);"),
            ("2023-05-02-000000_idx/down.sql", "DROP INDEX i;"),
            ("2023-05-02-000000_idx/metadata.toml", "run_in_transaction = false\n"),
        ]);
        let set = read(&d).unwrap();
        assert_eq!(set.format, Some(Format::Diesel));
        assert_eq!(set.migrations[0].version.get(), 20230501120000);
        assert!(set.migrations[1].up.no_transaction);
    }

    #[test]
    fn mongo_json() {
        let d = dir(&[
            (
                "1_orders.up.json",
                r#"[{"create": "orders"}, {"createIndexes": "orders", "indexes": [{"key": {"a": 1}, "name": "a_1"}]}]"#,
            ),
            ("1_orders.down.json", r#"[{"drop": "orders"}]"#),
        ]);
        let set = read(&d).unwrap();
        assert_eq!(set.format, Some(Format::Mongo));
        let m = &set.migrations[0];
        assert_eq!(m.script(Direction::Up).unwrap().statements(m.kind, Engine::Mongodb).unwrap().len(), 2);
        assert!(m.up.statements(m.kind, Engine::Postgres).is_err());
    }

    #[test]
    fn sqlx_no_transaction_directive_and_up_only_needs_flag() {
        let d = dir(&[("20240101_idx.sql", "-- no-transaction\nCREATE INDEX CONCURRENTLY i ON t (x);")]);
        let err = read(&d).unwrap_err();
        assert!(err.message.contains("no DOWN"), "{err}");
        let set = read_dir(d.path(), &ReadOptions { allow_missing_down: true, ..ReadOptions::default() }).unwrap();
        assert!(set.migrations[0].up.no_transaction);
        assert!(set.migrations[0].down.is_none());
    }

    #[test]
    fn bad_inputs_name_the_file() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![("1_a.up.sql", "SELECT 1;"), ("1_b.up.sql", "SELECT 2;")], "duplicate version 1"),
            (
                vec![("1_a.up.sql", "SELECT 1;"), ("1_a.down.sql", "x"), ("V2__b.sql", "SELECT 2;")],
                "one directory holds one convention",
            ),
            (vec![("x_a.up.sql", "SELECT 1;")], "not a migration file name"),
            (vec![("V1.1__a.sql", "SELECT 1;")], "dotted version"),
            (vec![("1_a.down.sql", "SELECT 1;")], "DOWN but no UP"),
            (vec![("1_a.up.sql", "-- flotilla:no-transactoin\nSELECT 1;"), ("1_a.down.sql", "x")], "unknown directive"),
            (vec![("1_a.up.json", "[{\"bogus\": 1}]"), ("1_a.down.json", "[]")], "unknown command"),
            (vec![("1_a.up.json", "[{\"drop\": \"x\"}"), ("1_a.down.json", "[]")], "not a JSON array"),
            (vec![("schema.sql", "CREATE TABLE x (id int);")], "not a migration file name"),
            (
                vec![("1_a.up.sql", "SELECT 1;\n-- flotilla:no-transaction\n"), ("1_a.down.sql", "x")],
                "before the first statement",
            ),
        ];
        for (files, expected) in cases {
            let d = dir(&files);
            let err = read(&d).expect_err(expected);
            assert!(err.to_string().contains(expected), "expected `{expected}` in `{err}`");
            assert!(err.path.starts_with(d.path()), "{err} names a file in the directory");
        }
        let err = read_dir(Path::new("/nonexistent/flotilla"), &ReadOptions::default()).unwrap_err();
        assert!(err.message.contains("cannot read migrations directory"));
    }

    #[test]
    fn an_empty_file_is_a_no_op_and_a_missing_one_is_missing() {
        let d = dir(&[
            ("20240115093000000001_a.up.sql", "CREATE TABLE a (id int);"),
            ("20240115093000000001_a.down.sql", "-- nothing to undo here\n\n"),
            ("20240115093000000002_b.up.sql", "/* only on MySQL */\n"),
            ("20240115093000000002_b.down.sql", ""),
        ]);
        let set = read(&d).unwrap();
        assert_eq!(set.migrations[0].version.to_string(), "20240115093000000001");
        let noop = &set.migrations[1];
        assert!(noop.up.is_blank() && noop.down.as_ref().is_some_and(Script::is_blank));
        assert_eq!(noop.up.statements(ScriptKind::Sql, Engine::Postgres).unwrap(), vec![]);
        let with_empty_down = Checksum::of("CREATE TABLE a (id int);", None);
        assert_eq!(set.migrations[0].checksum, with_empty_down, "an empty DOWN sums as none, as before");
        let missing = dir(&[("1_a.up.sql", "SELECT 1;")]);
        assert!(read(&missing).unwrap_err().message.contains("no DOWN"), "a missing DOWN is still missing");
        let mongo = dir(&[("1_a.up.json", "[]"), ("1_a.down.json", "  ")]);
        let set = read(&mongo).unwrap();
        assert_eq!(set.migrations[0].up.statements(ScriptKind::MongoCommands, Engine::Mongodb).unwrap(), vec![]);
    }

    #[test]
    fn timeout_directives_are_read_and_bad_ones_refused_with_their_line() {
        let up = "-- flotilla:lock-timeout 2s\n-- flotilla:statement-timeout 10m\n-- flotilla:lock-retries 4\nALTER TABLE a ADD b int;";
        let d = dir(&[("1_a.up.sql", up), ("1_a.down.sql", "ALTER TABLE a DROP b;")]);
        let set = read(&d).unwrap();
        let t = set.migrations[0].up.timeouts;
        assert_eq!(t.lock, Some(std::time::Duration::from_secs(2)));
        assert_eq!(t.statement, Some(std::time::Duration::from_secs(600)));
        assert_eq!(t.lock_retries, Some(4));
        assert_eq!(set.migrations[0].down.as_ref().map(|s| s.timeouts), Some(Default::default()), "per script");
        for (bad, expected) in [
            ("-- flotilla:lock-timeout 3x", "units: ms, s, m, h"),
            ("-- flotilla:lock-timeout", "takes one value"),
            ("-- flotilla:lock-retries many", "whole number from 0 to 100"),
            ("-- flotilla:statement-timeout 0s", "more than 0"),
        ] {
            let d = dir(&[("1_a.up.sql", &format!("-- why\n{bad}\nSELECT 1;")), ("1_a.down.sql", "x")]);
            let err = read(&d).expect_err(bad);
            assert!(err.to_string().contains(expected), "{bad}: {err}");
            assert_eq!(err.line, Some(2), "{bad}");
        }
    }

    #[test]
    fn directive_error_has_line() {
        let d = dir(&[("1_a.up.sql", "-- why: because\n-- flotilla:phase sideways\nSELECT 1;"), ("1_a.down.sql", "x")]);
        assert_eq!(read(&d).unwrap_err().line, Some(2));
    }

    #[test]
    fn invalid_utf8_is_reported() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("1_a.up.sql"), b"SELECT '\xff';").unwrap();
        fs::write(d.path().join("1_a.down.sql"), "x").unwrap();
        assert!(read_dir(d.path(), &ReadOptions::default()).unwrap_err().message.contains("UTF-8"));
    }
}
