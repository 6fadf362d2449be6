//! Which convention a top-level entry follows, and the version, name and files it contributes.

use std::path::Path;

use super::{Files, Format, ReadError};
use crate::version::Version;

#[derive(Debug, Default)]
pub(super) struct Parts {
    pub name: Option<String>,
    /// Relative paths in the set's [`Files`].
    pub up: Option<String>,
    pub down: Option<String>,
    /// UP and DOWN come out of one file (`up` names it).
    pub combined: Option<Combined>,
    /// pop: scripts for one engine only, by pop's dialect name (`postgres`, `mysql`, `sqlite3`, `cockroach`).
    pub dialects: Vec<(String, Role, String)>,
    /// From Flyway's `.conf` or diesel's `metadata.toml`.
    pub no_transaction: bool,
}

/// A file that holds both scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Combined {
    /// `-- migrate:up` / `-- migrate:down` sections.
    Dbmate,
    /// `up` and `down` functions calling `knex.raw` with literal SQL.
    Knex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Up,
    Down,
    Both(Combined),
}

pub(super) struct Found {
    pub format: Format,
    pub version: Version,
    pub name: String,
    pub files: Vec<(Role, String)>,
    /// pop's dialect, for a file meant for one engine only.
    pub dialect: Option<String>,
    pub no_transaction: bool,
}

impl Found {
    fn one(format: Format, (version, name): (Version, String), role: Role, rel: String) -> Found {
        Found { format, version, name, files: vec![(role, rel)], dialect: None, no_transaction: false }
    }
}

/// pop's dialect suffixes (`<version>_<name>.<dialect>.up.sql`).
pub(super) const POP_DIALECTS: [&str; 4] = ["postgres", "mysql", "sqlite3", "cockroach"];

/// Works out what a top-level entry (`name`, a folder when `is_dir`) is; `None` for files that are not
/// migrations (READMEs, configs).
pub(super) fn classify(files: &Files, name: &str, is_dir: bool) -> Result<Option<Found>, ReadError> {
    let path = &files.path(name);
    let file_name = name;
    if is_dir {
        return classify_folder(files, name);
    }
    let path_buf = name.to_string();
    for (suffix, format, role) in [
        (".up.sql", Format::Native, Role::Up),
        (".down.sql", Format::Native, Role::Down),
        (".up.json", Format::Mongo, Role::Up),
        (".down.json", Format::Mongo, Role::Down),
    ] {
        if let Some(stem) = file_name.strip_suffix(suffix) {
            // pop: `<version>_<name>.<dialect>.up.sql` is for that engine only.
            let dialect = POP_DIALECTS.iter().find(|d| stem.ends_with(&format!(".{d}")) && format == Format::Native);
            if let Some(dialect) = dialect {
                let stem = &stem[..stem.len() - dialect.len() - 1];
                let mut found = Found::one(Format::Pop, version_and_name(path, stem, "_")?, role, path_buf);
                found.dialect = Some(dialect.to_string());
                return Ok(Some(found));
            }
            return Ok(Some(Found::one(format, version_and_name(path, stem, "_")?, role, path_buf)));
        }
    }
    for suffix in [".js", ".ts", ".cjs", ".mjs"] {
        if let Some(stem) = file_name.strip_suffix(suffix) {
            if stem.starts_with(|c: char| c.is_ascii_digit()) && stem.contains('_') {
                let found = version_and_name(path, stem, "_")?;
                return Ok(Some(Found::one(Format::Knex, found, Role::Both(Combined::Knex), path_buf)));
            }
        }
    }
    if let Some(stem) = file_name.strip_suffix(".sql") {
        return classify_sql(files, name, stem);
    }
    if file_name.ends_with(".json") && file_name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(ReadError::new(
            path,
            "MongoDB migrations are named <version>_<name>.up.json and <version>_<name>.down.json",
        ));
    }
    Ok(None)
}

/// A folder: Prisma's (`migration.sql`) or diesel's (`up.sql`, `down.sql`); `None` for any other.
fn classify_folder(files: &Files, name: &str) -> Result<Option<Found>, ReadError> {
    let path = &files.path(name);
    let file_name = name;
    let (up, down) = (format!("{name}/up.sql"), format!("{name}/down.sql"));
    let prisma = format!("{name}/migration.sql");
    if files.exists(&prisma) {
        // Prisma: `<timestamp>_<name>/migration.sql`, and a `down.sql` beside it where the team writes one.
        let mut parts = vec![(Role::Up, prisma)];
        if files.exists(&down) {
            parts.push((Role::Down, down));
        }
        let (version, name) = version_and_name(path, file_name, "_")?;
        return Ok(Some(Found {
            format: Format::Prisma,
            version,
            name,
            files: parts,
            dialect: None,
            no_transaction: false,
        }));
    }
    if !files.exists(&up) && !files.exists(&down) {
        return Ok(None);
    }
    let (version, name) = diesel_name(path, file_name)?;
    if !files.exists(&up) {
        return Err(ReadError::new(path, "diesel migration folder has down.sql but no up.sql"));
    }
    let mut parts = vec![(Role::Up, up)];
    if files.exists(&down) {
        parts.push((Role::Down, down));
    }
    let no_transaction = diesel_no_transaction(files, &format!("{file_name}/metadata.toml"))?;
    Ok(Some(Found { format: Format::Diesel, version, name, files: parts, dialect: None, no_transaction }))
}

/// A `.sql` file that is not `.up.sql` / `.down.sql`: Flyway's, dbmate's, or sqlx's up-only one.
fn classify_sql(files: &Files, file_name: &str, stem: &str) -> Result<Option<Found>, ReadError> {
    let path = &files.path(file_name);
    let path_buf = file_name.to_string();
    let flyway_role = match stem.as_bytes() {
        [b'V', d, ..] if d.is_ascii_digit() => Some(Role::Up),
        [b'U', d, ..] if d.is_ascii_digit() => Some(Role::Down),
        // Repeatable migrations are read apart (`scripts::repeatables`).
        [b'R', b'_', b'_', ..] => return Ok(None),
        _ => None,
    };
    if let Some(role) = flyway_role {
        let (version, name) = version_and_name(path, &stem[1..], "__")?;
        let no_transaction = flyway_no_transaction(files, &format!("{file_name}.conf"))?;
        return Ok(Some(Found {
            format: Format::Flyway,
            version,
            name,
            files: vec![(role, path_buf)],
            dialect: None,
            no_transaction,
        }));
    }
    let (version, name) = version_and_name(path, stem, "_")?;
    let text = files.text(file_name)?;
    let dbmate = text.lines().any(|l| l.trim_start().starts_with("-- migrate:up"));
    let (format, role) =
        if dbmate { (Format::Dbmate, Role::Both(Combined::Dbmate)) } else { (Format::Native, Role::Up) };
    Ok(Some(Found::one(format, (version, name), role, path_buf)))
}

fn version_and_name(path: &Path, stem: &str, separator: &str) -> Result<(Version, String), ReadError> {
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
    let version: Version = version.parse().map_err(|e: String| ReadError::new(path, e))?;
    if name.is_empty() {
        return Err(ReadError::new(path, "migration has no name after its version"));
    }
    Ok((version, name.to_string()))
}

/// diesel names folders `2023-05-01-120000_create_users` (or `00000000000000_diesel_initial_setup`).
fn diesel_name(path: &Path, folder: &str) -> Result<(Version, String), ReadError> {
    let (stamp, name) = folder
        .split_once('_')
        .ok_or_else(|| ReadError::new(path, "not a diesel migration folder name: expected <timestamp>_<name>"))?;
    let digits: String = stamp.chars().filter(|c| *c != '-').collect();
    version_and_name(path, &format!("{digits}_{name}"), "_")
}

fn diesel_no_transaction(files: &Files, rel: &str) -> Result<bool, ReadError> {
    if !files.exists(rel) {
        return Ok(false);
    }
    let metadata = &files.path(rel);
    let text = files.text(rel)?;
    let value: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ReadError::new(metadata, format!("invalid TOML: {}", e.message())))?;
    match value.get("run_in_transaction") {
        None => Ok(false),
        Some(toml::Value::Boolean(b)) => Ok(!b),
        Some(_) => Err(ReadError::new(metadata, "run_in_transaction must be true or false")),
    }
}

fn flyway_no_transaction(files: &Files, rel: &str) -> Result<bool, ReadError> {
    if !files.exists(rel) {
        return Ok(false);
    }
    let conf = &files.path(rel);
    let text = files.text(rel)?;
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
