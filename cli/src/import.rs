//! `flotilla import alembic`: Alembic renders each revision's SQL (offline mode), Flotilla keeps it as native files.

use std::path::{Path, PathBuf};

use flotilla_core::alembic::{revisions, without_bookkeeping, Revision};
use flotilla_core::generate::slug;
use flotilla_core::reader::Files;
use flotilla_core::Engine;

use crate::args::ImportCommand;
use crate::exit::Code;
use crate::output::print_written;
use crate::output::Output;

pub async fn run(out: Output, command: ImportCommand) -> Code {
    let ImportCommand::Alembic { dir, out: into, engine, alembic } = command;
    print_written(out, import_alembic(&dir, &into, engine, &alembic).await.map(|files| (files, "wrote")))
}

async fn import_alembic(dir: &Path, into: &Path, engine: Engine, alembic: &Path) -> Result<Vec<PathBuf>, String> {
    let dialect = engine.sql_dialect().ok_or("Alembic renders SQL: give a SQL engine")?;
    let config = dir.join("alembic.ini");
    if !config.exists() {
        return Err(format!("{} has no alembic.ini", dir.display()));
    }
    if into.exists() && std::fs::read_dir(into).map_err(|e| format!("{}: {e}", into.display()))?.next().is_some() {
        return Err(format!("{} is not empty: import writes a new directory, never over migrations", into.display()));
    }
    let chain =
        revisions(&Files::load(&dir.join("versions")).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let width = chain.len().to_string().len().max(6);
    let mut written = Vec::new();
    let mut files = Vec::new();
    for (i, revision) in chain.iter().enumerate() {
        let before = revision.down.as_deref().unwrap_or("base");
        let up = offline(alembic, &config, "upgrade", &format!("{before}:{}", revision.id)).await?;
        let down = offline(alembic, &config, "downgrade", &format!("{}:{before}", revision.id)).await?;
        let name = slug(&revision.message).unwrap_or_else(|_| revision.id.clone());
        let stem = format!("{:0width$}_{name}", i + 1);
        let header = |direction: &str| header(revision, direction);
        let keep = |sql: &str| without_bookkeeping(sql, dialect).map_err(|e| format!("revision {}: {e}", revision.id));
        files.push((format!("{stem}.up.sql"), format!("{}{}\n", header("upgrade"), keep(&up)?)));
        files.push((format!("{stem}.down.sql"), format!("{}{}\n", header("downgrade"), keep(&down)?)));
    }
    std::fs::create_dir_all(into).map_err(|e| format!("cannot create {}: {e}", into.display()))?;
    for (name, text) in files {
        let path = into.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn header(revision: &Revision, direction: &str) -> String {
    format!(
        "-- {}\n-- Imported from Alembic revision {} ({direction}, rendered by Alembic's offline mode).\n",
        revision.message, revision.id
    )
}

/// Alembic's SQL for one step, from its offline mode.
async fn offline(alembic: &Path, config: &Path, verb: &str, range: &str) -> Result<String, String> {
    let output = tokio::process::Command::new(alembic)
        .arg("-c")
        .arg(config)
        .args([verb, range, "--sql"])
        .output()
        .await
        .map_err(|e| format!("cannot run {} (install Alembic, or give --alembic): {e}", alembic.display()))?;
    if !output.status.success() {
        return Err(format!("alembic {verb} {range} --sql failed: {}", String::from_utf8_lossy(&output.stderr).trim()));
    }
    String::from_utf8(output.stdout).map_err(|_| format!("alembic {verb} {range} --sql printed text that is not UTF-8"))
}
