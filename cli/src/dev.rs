//! `flotilla dev`: Flotilla on embedded defaults. Writes a sample migration set, applies it to a SQLite database
//! (or the database given), shows status, rolls everything back, and checks the database is back where it started.

use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_agent::driver::{default_owner, redact};
use flotilla_agent::{connect, ConnectOptions, ExecError, Executor};
use flotilla_core::{read_dir, Engine, ReadOptions, Request};
use include_dir::{include_dir, Dir};
use serde_json::json;

use crate::exit::Code;
use crate::output::Output;

static SAMPLES: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/samples");

pub async fn run(out: Output, db: Option<String>, keep: Option<PathBuf>) -> Code {
    let mut temp = None;
    let workdir: PathBuf = match keep {
        Some(dir) => dir,
        None => match tempfile::Builder::new().prefix("flotilla-dev-").tempdir() {
            Ok(t) => temp.insert(t).path().to_path_buf(),
            Err(e) => return out.error(Code::Failed, &format!("cannot create a temporary directory: {e}")),
        },
    };
    let db = db.unwrap_or_else(|| format!("sqlite://{}", workdir.join("dev.db").display()));
    let Some(engine) = Engine::from_url(&db) else {
        return out.error(
            Code::BadInput,
            &format!("`{}` is not a postgres://, mysql://, sqlite:// or mongodb:// URL", redact(&db)),
        );
    };
    let dir = workdir.join("migrations");
    if let Err(e) = write_samples(engine, &dir) {
        return out.error(Code::Failed, &format!("cannot write sample migrations to {}: {e}", dir.display()));
    }
    match demo(out, &db, &dir, temp.is_none()).await {
        Ok(summary) => {
            if out.json {
                out.print_json(&summary);
            }
            Code::Ok
        }
        Err(e) => out.error(Code::of(&e), &e.to_string()),
    }
}

fn write_samples(engine: Engine, dir: &Path) -> std::io::Result<()> {
    let set =
        SAMPLES.get_dir(engine.as_str()).ok_or_else(|| std::io::Error::other(format!("no samples for {engine}")))?;
    std::fs::create_dir_all(dir)?;
    for file in set.files() {
        if let Some(name) = file.path().file_name() {
            std::fs::write(dir.join(name), file.contents())?;
        }
    }
    Ok(())
}

async fn demo(out: Output, db: &str, dir: &Path, kept: bool) -> Result<serde_json::Value, ExecError> {
    let say = |text: String| {
        if !out.json {
            println!("{text}");
        }
    };
    let set = read_dir(dir, &ReadOptions::default())?;
    say(format!("Flotilla dev: {} sample migrations in {}", set.migrations.len(), dir.display()));
    say(format!("Database: {}\n", redact(db)));

    let driver = connect(db, &ConnectOptions::default()).await?;
    let mut ex = Executor::new(driver, default_owner()).with_lock_timeout(Duration::from_secs(30));
    if let Some(sink) = out.progress_sink() {
        ex = ex.with_progress(sink);
    }
    let before = ex.history().await?;
    if !before.is_empty() {
        return Err(ExecError::Refused(format!(
            "{} already has {} migration record(s); `flotilla dev` wants a database of its own",
            redact(db),
            before.len()
        )));
    }

    say("1. Apply every migration:".into());
    let up = ex.migrate(&set, Request::Up { to: None }, false).await?;
    say("\n2. Status:".into());
    let applied = ex.status(&set).await?;
    if !out.json {
        out.status(&applied);
    }

    say("\n3. Roll everything back, newest first:".into());
    let down = ex.migrate(&set, Request::DownAll, false).await?;
    let after = ex.status(&set).await?;
    ex.close().await;
    let all_pending = after.iter().all(|r| r.status == "pending");
    say(format!(
        "\nSummary: applied {} and rolled back {} migrations; every migration is {} again.",
        up.steps.len(),
        down.steps.len(),
        if all_pending { "pending" } else { "NOT pending" }
    ));
    if kept {
        say(format!("Try it yourself: flotilla up --db {} --dir {}", redact(db), dir.display()));
    } else {
        say("The temporary files are gone; pass --keep DIR to keep the migrations and the database.".into());
    }
    if !all_pending {
        return Err(ExecError::Refused("after the rollback some migrations are still recorded".into()));
    }
    Ok(
        json!({ "ok": true, "database": redact(db), "dir": dir, "applied": up.steps, "rolled_back": down.steps, "status_after_up": applied }),
    )
}
