//! sqitch projects: `sqitch.plan` lists the changes in order; each has `deploy/<change>.sql`, `revert/<change>.sql`
//! and (not run here) `verify/<change>.sql`. A change's version is its place in the plan (1, 2, 3 …), so the plan's
//! order is the order of application, as sqitch has it; tags (`@v1.0`) name points in that order and are skipped.
//! Reworked changes (`name [name@tag]`) are refused: their scripts live under another name.

use std::collections::BTreeSet;

use super::conventions::Parts;
use super::{scripts, Files, Format, MigrationSet, ReadError, ReadOptions};
use crate::version::Version;

pub(super) const PLAN: &str = "sqitch.plan";

pub(super) fn read(files: &Files, options: &ReadOptions) -> Result<MigrationSet, ReadError> {
    let plan_path = files.path(PLAN);
    let mut seen = BTreeSet::new();
    let mut migrations = Vec::new();
    for (i, line) in files.text(PLAN)?.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('%') || line.starts_with('@') {
            continue;
        }
        let name = line.split_whitespace().next().unwrap_or_default();
        let dependencies = line.split_once('[').and_then(|(_, rest)| rest.split_once(']')).map(|(deps, _)| deps);
        if dependencies
            .is_some_and(|deps| deps.split_whitespace().any(|d| d.trim_start_matches('!') == name || d.contains('@')))
        {
            return Err(ReadError::at(
                &plan_path,
                i + 1,
                format!("change `{name}` is reworked; reworked changes are not supported"),
            ));
        }
        if !seen.insert(name.to_string()) {
            return Err(ReadError::at(&plan_path, i + 1, format!("change `{name}` is listed twice")));
        }
        let deploy = format!("deploy/{name}.sql");
        if !files.exists(&deploy) {
            return Err(ReadError::at(&plan_path, i + 1, format!("change `{name}` has no {deploy}")));
        }
        let revert = format!("revert/{name}.sql");
        let parts = Parts {
            name: Some(name.to_string()),
            up: Some(deploy),
            down: files.exists(&revert).then_some(revert),
            ..Parts::default()
        };
        let version = Version::from(u64::try_from(migrations.len() + 1).unwrap_or(u64::MAX));
        migrations.push(scripts::build(files, version, parts, Format::Sqitch, options)?);
    }
    if migrations.is_empty() {
        return Err(ReadError::new(&plan_path, "the plan lists no change"));
    }
    Ok(MigrationSet {
        dir: files.root().to_path_buf(),
        format: Some(Format::Sqitch),
        migrations,
        repeatables: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn files(entries: &[(&str, &str)]) -> Files {
        let texts: BTreeMap<String, String> = entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Files::from_texts("proj", &texts)
    }

    const PLAN_TEXT: &str = "%syntax-version=1.0.0\n%project=flipr\n\nappschema 2024-01-15T09:30:00Z Marge <m@example.com> # Add schema.\nusers [appschema] 2024-01-15T09:31:00Z Marge <m@example.com> # Users.\n@v1.0 2024-01-15T09:32:00Z Marge <m@example.com> # Tag v1.0.\n";

    #[test]
    fn changes_are_versions_in_plan_order_with_deploy_and_revert() {
        let set = read(
            &files(&[
                ("sqitch.plan", PLAN_TEXT),
                ("deploy/appschema.sql", "BEGIN;\nCREATE SCHEMA flipr;\nCOMMIT;\n"),
                ("revert/appschema.sql", "BEGIN;\nDROP SCHEMA flipr;\nCOMMIT;\n"),
                ("verify/appschema.sql", "SELECT 1;"),
                ("deploy/users.sql", "CREATE TABLE flipr.users (id int);"),
                ("revert/users.sql", "DROP TABLE flipr.users;"),
            ]),
            &ReadOptions::default(),
        )
        .unwrap();
        let names: Vec<(u128, &str)> = set.migrations.iter().map(|m| (m.version.get(), m.name.as_str())).collect();
        assert_eq!(names, [(1, "appschema"), (2, "users")]);
        assert_eq!(set.format, Some(Format::Sqitch));
        assert!(set.migrations[1].down.is_some());
    }

    #[test]
    fn a_change_without_its_deploy_script_names_the_plan_line() {
        let first =
            [("sqitch.plan", PLAN_TEXT), ("deploy/appschema.sql", "SELECT 1;"), ("revert/appschema.sql", "SELECT 2;")];
        let err = read(&files(&first), &ReadOptions::default()).unwrap_err();
        assert_eq!(err.line, Some(5));
        assert!(err.message.contains("deploy/users.sql"), "{err}");
        let reworked = "users [users@v1.0] 2024-01-16T00:00:00Z M <m@e> # again\n";
        let err =
            read(&files(&[("sqitch.plan", reworked), ("deploy/users.sql", "SELECT 1;")]), &ReadOptions::default())
                .unwrap_err();
        assert!(err.message.contains("reworked"), "{err}");
    }
}
