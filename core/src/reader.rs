//! Reads a migrations directory, in any supported convention, into [`Migration`]s sorted by version.
//!
//! | format | files |
//! |---|---|
//! | native (golang-migrate, sqlx reversible) | `<version>_<name>.up.sql` + `<version>_<name>.down.sql` |
//! | sqlx simple | `<version>_<name>.sql` (UP only) |
//! | Flyway | `V<version>__<name>.sql` + undo `U<version>__<name>.sql` (+ `.sql.conf`) |
//! | dbmate | `<version>_<name>.sql` with `-- migrate:up` / `-- migrate:down` sections |
//! | diesel | `<version>_<name>/up.sql` + `down.sql` (+ `metadata.toml`) |
//! | MongoDB | `<version>_<name>.up.json` + `.down.json`: JSON arrays of commands |

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::migration::{Backfill, Checksum, Migration, MigrationOptions, Phase, Script, ScriptKind};

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
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Native => "native (golang-migrate / sqlx)",
            Format::Flyway => "flyway",
            Format::Dbmate => "dbmate",
            Format::Diesel => "diesel",
            Format::Mongo => "mongodb json",
        }
    }
}

/// Bad input in a migrations directory: names the file and, where it applies, the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ReadError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl ReadError {
    pub fn new(path: &Path, message: impl Into<String>) -> Self {
        ReadError { path: path.to_path_buf(), line: None, message: message.into() }
    }

    pub fn at(path: &Path, line: usize, message: impl Into<String>) -> Self {
        ReadError { path: path.to_path_buf(), line: Some(line), message: message.into() }
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path.display(), line, self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Accept migrations with no DOWN (they cannot be rolled back).
    pub allow_missing_down: bool,
}

/// The migrations of a directory and the convention they follow.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    pub dir: PathBuf,
    pub format: Option<Format>,
    pub migrations: Vec<Migration>,
}

impl MigrationSet {
    pub fn get(&self, version: i64) -> Option<&Migration> {
        self.migrations.binary_search_by_key(&version, |m| m.version).ok().map(|i| &self.migrations[i])
    }
}

/// Reads every migration in `dir`. Nothing is run; any bad file fails the whole read.
pub fn read_dir(dir: &Path, options: &ReadOptions) -> Result<MigrationSet, ReadError> {
    let entries =
        fs::read_dir(dir).map_err(|e| ReadError::new(dir, format!("cannot read migrations directory: {e}")))?;
    let mut names: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ReadError::new(dir, format!("cannot list migrations directory: {e}")))?;
        names.push(entry.path());
    }
    names.sort();

    let mut format: Option<(Format, PathBuf)> = None;
    let mut parts: BTreeMap<i64, Parts> = BTreeMap::new();
    for path in names {
        let Some(found) = classify(&path)? else { continue };
        match &format {
            None => format = Some((found.format, path.clone())),
            Some((f, first)) if *f != found.format => {
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
            Some(_) => {}
        }
        let slot = parts.entry(found.version).or_default();
        for (role, file) in found.files {
            let existing = match role {
                Role::Up => slot.up.replace(file.clone()),
                Role::Down => slot.down.replace(file.clone()),
                Role::Both => slot.up.replace(file.clone()),
            };
            if let Some(other) = existing {
                return Err(ReadError::new(
                    &file,
                    format!("duplicate version {}: also used by {}", found.version, other.display()),
                ));
            }
            if role == Role::Both {
                slot.combined = true;
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

    let format = format.map(|(f, _)| f);
    let mut migrations = Vec::with_capacity(parts.len());
    for (version, p) in parts {
        migrations.push(build(version, p, format.unwrap_or(Format::Native), options)?);
    }
    Ok(MigrationSet { dir: dir.to_path_buf(), format, migrations })
}

#[derive(Debug, Default)]
struct Parts {
    name: Option<String>,
    up: Option<PathBuf>,
    down: Option<PathBuf>,
    /// dbmate: UP and DOWN share one file.
    combined: bool,
    /// From Flyway's `.conf` or diesel's `metadata.toml`.
    no_transaction: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Up,
    Down,
    Both,
}

struct Found {
    format: Format,
    version: i64,
    name: String,
    files: Vec<(Role, PathBuf)>,
    no_transaction: bool,
}

/// Works out what a directory entry is; `None` for files that are not migrations (READMEs, dotfiles, configs).
fn classify(path: &Path) -> Result<Option<Found>, ReadError> {
    let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
        return Err(ReadError::new(path, "file name is not valid UTF-8"));
    };
    if file_name.starts_with('.') {
        return Ok(None);
    }
    if path.is_dir() {
        let (up, down) = (path.join("up.sql"), path.join("down.sql"));
        if !up.exists() && !down.exists() {
            return Ok(None);
        }
        let (version, name) = diesel_name(path, file_name)?;
        if !up.exists() {
            return Err(ReadError::new(path, "diesel migration folder has down.sql but no up.sql"));
        }
        let mut files = vec![(Role::Up, up)];
        if down.exists() {
            files.push((Role::Down, down));
        }
        let no_transaction = diesel_no_transaction(&path.join("metadata.toml"))?;
        return Ok(Some(Found { format: Format::Diesel, version, name, files, no_transaction }));
    }
    let path_buf = path.to_path_buf();
    for (suffix, format, role) in [
        (".up.sql", Format::Native, Role::Up),
        (".down.sql", Format::Native, Role::Down),
        (".up.json", Format::Mongo, Role::Up),
        (".down.json", Format::Mongo, Role::Down),
    ] {
        if let Some(stem) = file_name.strip_suffix(suffix) {
            let (version, name) = version_and_name(path, stem, "_")?;
            return Ok(Some(Found { format, version, name, files: vec![(role, path_buf)], no_transaction: false }));
        }
    }
    if let Some(stem) = file_name.strip_suffix(".sql") {
        let flyway_role = match stem.as_bytes() {
            [b'V', d, ..] if d.is_ascii_digit() => Some(Role::Up),
            [b'U', d, ..] if d.is_ascii_digit() => Some(Role::Down),
            [b'R', b'_', b'_', ..] => {
                return Err(ReadError::new(
                    path,
                    "Flyway repeatable migrations (R__) are not supported: make it a versioned migration",
                ))
            }
            _ => None,
        };
        if let Some(role) = flyway_role {
            let (version, name) = version_and_name(path, &stem[1..], "__")?;
            let no_transaction = flyway_no_transaction(&path.with_file_name(format!("{file_name}.conf")))?;
            return Ok(Some(Found {
                format: Format::Flyway,
                version,
                name,
                files: vec![(role, path_buf)],
                no_transaction,
            }));
        }
        let (version, name) = version_and_name(path, stem, "_")?;
        let text = read_text(path)?;
        let dbmate = text.lines().any(|l| l.trim_start().starts_with("-- migrate:up"));
        let (format, role) = if dbmate { (Format::Dbmate, Role::Both) } else { (Format::Native, Role::Up) };
        return Ok(Some(Found { format, version, name, files: vec![(role, path_buf)], no_transaction: false }));
    }
    if file_name.ends_with(".json") && file_name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(ReadError::new(
            path,
            "MongoDB migrations are named <version>_<name>.up.json and <version>_<name>.down.json",
        ));
    }
    Ok(None)
}

fn version_and_name(path: &Path, stem: &str, separator: &str) -> Result<(i64, String), ReadError> {
    let expected = || {
        ReadError::new(
            path,
            format!("not a migration file name: expected <version>{separator}<name> with an integer version"),
        )
    };
    let (version, name) = stem.split_once(separator).ok_or_else(expected)?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        if version.contains(['.', '_']) && version.split(['.', '_']).all(|p| p.bytes().all(|b| b.is_ascii_digit())) {
            return Err(ReadError::new(
                path,
                format!("dotted version `{version}` is not supported: versions are integers"),
            ));
        }
        return Err(expected());
    }
    let version: i64 =
        version.parse().map_err(|_| ReadError::new(path, format!("version `{version}` is too large")))?;
    if name.is_empty() {
        return Err(ReadError::new(path, "migration has no name after its version"));
    }
    Ok((version, name.to_string()))
}

/// diesel names folders `2023-05-01-120000_create_users` (or `00000000000000_diesel_initial_setup`).
fn diesel_name(path: &Path, folder: &str) -> Result<(i64, String), ReadError> {
    let (stamp, name) = folder
        .split_once('_')
        .ok_or_else(|| ReadError::new(path, "not a diesel migration folder name: expected <timestamp>_<name>"))?;
    let digits: String = stamp.chars().filter(|c| *c != '-').collect();
    version_and_name(path, &format!("{digits}_{name}"), "_")
}

fn diesel_no_transaction(metadata: &Path) -> Result<bool, ReadError> {
    if !metadata.exists() {
        return Ok(false);
    }
    let text = read_text(metadata)?;
    let value: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ReadError::new(metadata, format!("invalid TOML: {}", e.message())))?;
    match value.get("run_in_transaction") {
        None => Ok(false),
        Some(toml::Value::Boolean(b)) => Ok(!b),
        Some(_) => Err(ReadError::new(metadata, "run_in_transaction must be true or false")),
    }
}

fn flyway_no_transaction(conf: &Path) -> Result<bool, ReadError> {
    if !conf.exists() {
        return Ok(false);
    }
    let text = read_text(conf)?;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
            Some(("executeInTransaction", "false")) => return Ok(true),
            Some(("executeInTransaction", "true")) => return Ok(false),
            Some(("executeInTransaction", other)) => {
                return Err(ReadError::at(
                    conf,
                    i + 1,
                    format!("executeInTransaction must be true or false, not `{other}`"),
                ))
            }
            _ => {
                return Err(ReadError::at(
                    conf,
                    i + 1,
                    format!("unsupported setting `{line}` (only executeInTransaction)"),
                ))
            }
        }
    }
    Ok(false)
}

fn read_text(path: &Path) -> Result<String, ReadError> {
    let bytes = fs::read(path).map_err(|e| ReadError::new(path, format!("cannot read: {e}")))?;
    String::from_utf8(bytes)
        .map_err(|e| ReadError::new(path, format!("not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to())))
}

fn build(version: i64, parts: Parts, format: Format, options: &ReadOptions) -> Result<Migration, ReadError> {
    let name = parts.name.unwrap_or_default();
    let kind = if format == Format::Mongo { ScriptKind::MongoCommands } else { ScriptKind::Sql };
    let (up, down) = if parts.combined {
        let path = parts.up.ok_or_else(|| ReadError::new(Path::new("."), format!("version {version} has no file")))?;
        dbmate_sections(&path, &read_text(&path)?)?
    } else {
        let Some(up_path) = parts.up else {
            let down = parts.down.unwrap_or_default();
            return Err(ReadError::new(&down, format!("version {version} has a DOWN but no UP")));
        };
        let up = Script {
            text: read_text(&up_path)?,
            path: up_path,
            first_line: 1,
            no_transaction: parts.no_transaction,
            backfill: None,
        };
        let down = match parts.down {
            Some(p) => Some(Script {
                text: read_text(&p)?,
                path: p,
                first_line: 1,
                no_transaction: parts.no_transaction,
                backfill: None,
            }),
            None => None,
        };
        (up, down)
    };
    let (up, up_options) = apply_directives(up)?;
    let down = match down {
        Some(d) => Some(apply_directives(d)?.0),
        None => None,
    };
    let down = down.filter(|d| !d.is_blank());
    if up.is_blank() {
        return Err(ReadError::new(&up.path, format!("version {version}: the UP is empty")));
    }
    if down.is_none() && !options.allow_missing_down {
        return Err(ReadError::new(
            &up.path,
            format!("version {version} has no DOWN migration (write one, or pass --allow-missing-down to accept migrations that cannot be rolled back)"),
        ));
    }
    if kind == ScriptKind::MongoCommands {
        for script in std::iter::once(&up).chain(down.as_ref()) {
            crate::mongo::parse_commands(&script.text).map_err(|e| ReadError::at(&script.path, e.line, e.message))?;
        }
    }
    let checksum = Checksum::of(&up.text, down.as_ref().map(|d| d.text.as_str()));
    Ok(Migration { version, name, kind, up, down, options: up_options, checksum })
}

/// Splits a dbmate file into its `-- migrate:up` and `-- migrate:down` sections.
fn dbmate_sections(path: &Path, text: &str) -> Result<(Script, Option<Script>), ReadError> {
    let mut up: Option<(usize, usize, bool)> = None; // (byte start, first line, no_transaction)
    let mut down: Option<(usize, usize, bool)> = None;
    let mut up_end = text.len();
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim();
        let marker =
            |m: &str| trimmed.strip_prefix(m).map(|rest| rest.split_whitespace().any(|o| o == "transaction:false"));
        if let Some(no_tx) = marker("-- migrate:up") {
            if up.is_some() {
                return Err(ReadError::at(path, i + 1, "second `-- migrate:up` section"));
            }
            up = Some((offset + line.len(), i + 2, no_tx));
        } else if let Some(no_tx) = marker("-- migrate:down") {
            if up.is_none() {
                return Err(ReadError::at(path, i + 1, "`-- migrate:down` comes before `-- migrate:up`"));
            }
            if down.is_some() {
                return Err(ReadError::at(path, i + 1, "second `-- migrate:down` section"));
            }
            up_end = offset;
            down = Some((offset + line.len(), i + 2, no_tx));
        }
        offset += line.len();
    }
    let (start, first_line, no_transaction) = up.ok_or_else(|| ReadError::new(path, "no `-- migrate:up` section"))?;
    let up = Script {
        path: path.to_path_buf(),
        first_line,
        text: text[start..up_end].to_string(),
        no_transaction,
        backfill: None,
    };
    let down = down.map(|(start, first_line, no_transaction)| Script {
        path: path.to_path_buf(),
        first_line,
        text: text[start..].to_string(),
        no_transaction,
        backfill: None,
    });
    Ok((up, down))
}

/// Reads `-- flotilla:…` directives (and sqlx's `-- no-transaction`) from a script's leading comments.
fn apply_directives(mut script: Script) -> Result<(Script, MigrationOptions), ReadError> {
    let mut options = MigrationOptions::default();
    let mut in_header = true;
    for (i, line) in script.text.lines().enumerate() {
        let line_no = script.first_line + i;
        let trimmed = line.trim();
        if in_header && !(trimmed.is_empty() || trimmed.starts_with("--")) {
            in_header = false;
        }
        let Some(directive) = trimmed.strip_prefix("-- flotilla:").or_else(|| trimmed.strip_prefix("--flotilla:"))
        else {
            if in_header && trimmed == "-- no-transaction" {
                script.no_transaction = true;
            }
            continue;
        };
        if !in_header {
            return Err(ReadError::at(
                &script.path,
                line_no,
                "flotilla directives belong in the comments before the first statement",
            ));
        }
        let mut words = directive.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("no-transaction"), None, _) => script.no_transaction = true,
            (Some("phase"), Some("expand"), None) => options.phase = Some(Phase::Expand),
            (Some("phase"), Some("contract"), None) => options.phase = Some(Phase::Contract),
            (Some("phase"), _, _) => return Err(ReadError::at(&script.path, line_no, "phase must be `expand` or `contract`")),
            // Lint rule switches, read by `flotilla lint`.
            (Some("allow" | "deny"), Some(_), _) => {}
            (Some("backfill"), _, _) => {
                let words: Vec<&str> = directive.split_whitespace().skip(1).collect();
                let backfill = Backfill::parse(&words).map_err(|e| ReadError::at(&script.path, line_no, e))?;
                if !(script.text.contains(Backfill::LO) && script.text.contains(Backfill::HI)) {
                    return Err(ReadError::at(
                        &script.path,
                        line_no,
                        "a backfill's UPDATE must limit itself to the batch with {lo} and {hi}, e.g. WHERE id > {lo} AND id <= {hi}",
                    ));
                }
                script.backfill = Some(backfill);
            }
            _ => {
                return Err(ReadError::at(
                    &script.path,
                    line_no,
                    format!("unknown directive `flotilla:{directive}` (known: no-transaction, phase expand|contract, backfill table=… key=… batch=…, allow RULE, deny RULE)"),
                ))
            }
        }
    }
    Ok((script, options))
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let v: Vec<_> = set.migrations.iter().map(|m| (m.version, m.name.as_str())).collect();
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
        assert_eq!(m.version, 20240101120000);
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
        assert_eq!(set.migrations[0].version, 20230501120000);
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
        let set = read_dir(d.path(), &ReadOptions { allow_missing_down: true }).unwrap();
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
            (vec![("R__views.sql", "SELECT 1;")], "repeatable"),
            (vec![("1_a.down.sql", "SELECT 1;")], "DOWN but no UP"),
            (vec![("1_a.up.sql", "-- flotilla:no-transactoin\nSELECT 1;"), ("1_a.down.sql", "x")], "unknown directive"),
            (vec![("1_a.up.sql", "  \n"), ("1_a.down.sql", "x")], "UP is empty"),
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
