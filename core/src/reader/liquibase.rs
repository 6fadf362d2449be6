//! Liquibase formatted SQL: files that start with `--liquibase formatted sql`, read in name order, each a list of
//! `--changeset author:id [attributes]` with their SQL and `--rollback` lines. A changeset's version is its place
//! in that order (1, 2, 3 …), as Liquibase applies them; its name is its id.
//!
//! Attributes read: `runInTransaction:false` (statement by statement), `dbms:postgresql,mysql` (a no-op on other
//! engines), `splitStatements`, `context`, `labels`, `author`-only metadata. Refused, with file and line: changesets
//! that run again (`runOnChange`, `runAlways`), preconditions, and `endDelimiter` (the splitter knows each engine's
//! own delimiters).

use std::path::Path;

use super::{scripts, Files, Format, MigrationSet, ReadError, ReadOptions};
use crate::migration::{Script, ScriptKind, Timeouts};
use crate::version::Version;
use crate::Engine;

const HEADER: &str = "--liquibase formatted sql";

/// Whether the set is Liquibase's: a top-level `.sql` file starting with the header.
pub(super) fn is_liquibase(files: &Files) -> bool {
    changelogs(files).next().is_some()
}

fn changelogs(files: &Files) -> impl Iterator<Item = String> + '_ {
    files.top_level().into_iter().filter_map(move |(name, is_dir)| {
        let header = !is_dir
            && name.ends_with(".sql")
            && files.text(&name).is_ok_and(|t| t.trim_start().to_lowercase().starts_with(HEADER));
        header.then_some(name)
    })
}

pub(super) fn read(files: &Files, options: &ReadOptions) -> Result<MigrationSet, ReadError> {
    let mut migrations = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for file in changelogs(files).collect::<Vec<_>>() {
        let path = files.path(&file);
        for set in changesets(&path, files.text(&file)?)? {
            if !ids.insert((set.author.clone(), set.id.clone())) {
                return Err(ReadError::at(
                    &path,
                    set.line,
                    format!("changeset {}:{} is defined twice", set.author, set.id),
                ));
            }
            let version = Version::from(u64::try_from(migrations.len() + 1).unwrap_or(u64::MAX));
            let runs_here =
                set.dbms.is_empty() || options.engine.is_none_or(|e| set.dbms.iter().any(|d| dbms_is(d, e)));
            let script = |text: &str, first_line| Script {
                path: path.clone(),
                first_line,
                text: if runs_here { text.to_string() } else { String::new() },
                no_transaction: set.no_transaction,
                backfill: None,
                timeouts: Timeouts::default(),
            };
            let up = script(&set.sql, set.line + 1);
            let down = set.rollback.as_ref().map(|(line, text)| script(text, *line));
            migrations.push(scripts::migration(version, set.id.clone(), ScriptKind::Sql, up, down, options)?);
        }
    }
    Ok(MigrationSet {
        dir: files.root().to_path_buf(),
        format: Some(Format::Liquibase),
        migrations,
        repeatables: Vec::new(),
    })
}

fn dbms_is(name: &str, engine: Engine) -> bool {
    match engine {
        Engine::Postgres => name == "postgresql",
        Engine::Mysql => name == "mysql" || name == "mariadb",
        Engine::Sqlite => name == "sqlite",
        Engine::Mongodb => name == "mongodb",
    }
}

struct Changeset {
    author: String,
    id: String,
    /// Line of the `--changeset` comment.
    line: usize,
    sql: String,
    /// First line and text of its rollback, where it has one (`--rollback empty`: an explicit no-op).
    rollback: Option<(usize, String)>,
    no_transaction: bool,
    dbms: Vec<String>,
}

fn changesets(path: &Path, text: &str) -> Result<Vec<Changeset>, ReadError> {
    let mut out: Vec<Changeset> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim();
        let directive = trimmed.strip_prefix("--").map(str::trim_start);
        if let Some(rest) = directive.and_then(|d| d.strip_prefix("changeset ")) {
            out.push(changeset(path, n, rest)?);
            continue;
        }
        let Some(current) = out.last_mut() else { continue };
        match directive {
            Some(d) if d.starts_with("rollback") => {
                let sql = d["rollback".len()..].trim();
                let sql = if sql.eq_ignore_ascii_case("empty") || sql.eq_ignore_ascii_case("not required") {
                    ""
                } else {
                    sql
                };
                let (_, text) = current.rollback.get_or_insert((n, String::new()));
                if !sql.is_empty() {
                    text.push_str(sql);
                    text.push('\n');
                }
            }
            Some(d) if d.starts_with("precondition") => {
                return Err(ReadError::at(
                    path,
                    n,
                    "Liquibase preconditions are not supported: they decide at run time whether a changeset runs",
                ));
            }
            Some(d) if d.starts_with("comment") || d.starts_with("validCheckSum") || d.starts_with("ignoreLines") => {}
            _ => {
                current.sql.push_str(line);
                current.sql.push('\n');
            }
        }
    }
    Ok(out)
}

fn changeset(path: &Path, line: usize, rest: &str) -> Result<Changeset, ReadError> {
    let mut words = rest.split_whitespace();
    let who = words.next().unwrap_or_default();
    let (author, id) = who
        .split_once(':')
        .filter(|(a, i)| !a.is_empty() && !i.is_empty())
        .ok_or_else(|| ReadError::at(path, line, format!("`--changeset {rest}`: expected --changeset author:id")))?;
    let mut set = Changeset {
        author: author.to_string(),
        id: id.to_string(),
        line,
        sql: String::new(),
        rollback: None,
        no_transaction: false,
        dbms: Vec::new(),
    };
    for attribute in words {
        let (key, value) = attribute.split_once(':').unwrap_or((attribute, ""));
        match (key, value) {
            ("runInTransaction", "false") => set.no_transaction = true,
            ("runInTransaction", _)
            | ("splitStatements", _)
            | ("context", _)
            | ("contextFilter", _)
            | ("labels", _)
            | ("failOnError", "true")
            | ("stripComments", _)
            | ("created", _) => {}
            ("dbms", list) => set.dbms = list.split(',').map(|d| d.trim().to_lowercase()).collect(),
            ("runOnChange" | "runAlways", "true") => {
                return Err(ReadError::at(
                    path,
                    line,
                    format!("changeset {author}:{id} is {key}: changesets that run again are not supported"),
                ))
            }
            ("runOnChange" | "runAlways", _) => {}
            _ => {
                return Err(ReadError::at(
                    path,
                    line,
                    format!("changeset {author}:{id}: attribute `{attribute}` is not supported"),
                ))
            }
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn files(text: &str) -> Files {
        Files::from_texts("lb", &BTreeMap::from([("changelog.sql".to_string(), text.to_string())]))
    }

    const CHANGELOG: &str = "--liquibase formatted sql\n\n--changeset ada:create-accounts\n--comment: accounts hold balances\nCREATE TABLE accounts (id INT PRIMARY KEY);\n--rollback DROP TABLE accounts;\n\n--changeset ada:accounts-name-index runInTransaction:false\nCREATE INDEX CONCURRENTLY accounts_id ON accounts (id);\n--rollback DROP INDEX CONCURRENTLY accounts_id;\n\n--changeset bob:mysql-only dbms:mysql\nALTER TABLE accounts ENGINE=InnoDB;\n--rollback empty\n";

    #[test]
    fn changesets_are_versions_with_their_rollbacks_and_attributes() {
        let options = ReadOptions { engine: Some(Engine::Postgres), ..ReadOptions::default() };
        assert!(is_liquibase(&files(CHANGELOG)));
        let set = read(&files(CHANGELOG), &options).unwrap();
        let names: Vec<(u128, &str)> = set.migrations.iter().map(|m| (m.version.get(), m.name.as_str())).collect();
        assert_eq!(names, [(1, "create-accounts"), (2, "accounts-name-index"), (3, "mysql-only")]);
        let first = &set.migrations[0];
        assert_eq!(first.up.text.trim(), "CREATE TABLE accounts (id INT PRIMARY KEY);");
        assert_eq!(first.down.as_ref().unwrap().text.trim(), "DROP TABLE accounts;");
        assert_eq!(first.up.first_line, 4);
        assert!(set.migrations[1].up.no_transaction);
        assert!(set.migrations[2].up.is_blank(), "dbms:mysql is a no-op on PostgreSQL");
        assert!(set.migrations[2].down.as_ref().is_some_and(Script::is_blank), "--rollback empty is a no-op DOWN");
        let on_mysql =
            read(&files(CHANGELOG), &ReadOptions { engine: Some(Engine::Mysql), ..ReadOptions::default() }).unwrap();
        assert!(!on_mysql.migrations[2].up.is_blank());
    }

    #[test]
    fn what_runs_again_or_decides_at_run_time_is_refused_with_its_line() {
        let again = "--liquibase formatted sql\n--changeset ada:views runOnChange:true\nCREATE VIEW v AS SELECT 1;\n";
        let err = read(&files(again), &ReadOptions::default()).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("runOnChange"), "{err}");
        let pre = "--liquibase formatted sql\n--changeset ada:x\n--precondition-sql-check expectedResult:0 SELECT 1\nSELECT 1;\n--rollback SELECT 1;\n";
        assert_eq!(read(&files(pre), &ReadOptions::default()).unwrap_err().line, Some(3));
        let twice = "--liquibase formatted sql\n--changeset a:1\nSELECT 1;\n--rollback SELECT 1;\n--changeset a:1\nSELECT 2;\n--rollback SELECT 2;\n";
        assert!(read(&files(twice), &ReadOptions::default()).unwrap_err().message.contains("defined twice"));
    }
}
