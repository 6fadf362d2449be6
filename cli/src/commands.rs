//! The single-database commands: status, up, down, repair, baseline.

use std::time::Duration;

use flotilla_agent::driver::{default_owner, redact};
use flotilla_agent::validate::{validate, TestCommand};
use flotilla_agent::{connect, ConnectOptions, ExecError, Executor, RepairAction};
use flotilla_core::{read_dir, MigrationSet, PlanOptions, ReadOptions, Request, Version};
use serde_json::json;

use crate::args::{CertsCommand, Cli, Command, Target};
use crate::exit::Code;
use crate::output::{print_written, Output};

pub async fn run(cli: Cli) -> Code {
    let out = Output { json: cli.json, verbose: cli.verbose };
    match cli.command {
        Command::Status(target) => status(out, &target).await,
        Command::Up { target, to, dry_run, allow_out_of_order, phase, group } => {
            let options = PlanOptions { allow_out_of_order, ignore_missing: target.ignore_missing, phase, group };
            migrate(out, &target, Request::Up { to }, options, dry_run, "apply").await
        }
        Command::Down { target, how_far, dry_run, group } => {
            let request = match (how_far.to, how_far.steps) {
                (Some(to), _) => Request::DownTo(to),
                (_, Some(n)) => Request::DownSteps(n),
                _ => Request::DownAll,
            };
            let options = PlanOptions { ignore_missing: target.ignore_missing, group, ..PlanOptions::default() };
            migrate(out, &target, request, options, dry_run, "roll back").await
        }
        Command::Repair { target, action, dry_run } => {
            let action = if action.resume {
                RepairAction::Resume
            } else if action.mark_applied {
                RepairAction::MarkApplied
            } else {
                RepairAction::MarkNotApplied
            };
            repair(out, &target, action, dry_run).await
        }
        Command::Baseline { target, at, dry_run } => baseline(out, &target, at, dry_run).await,
        Command::Dev { dbs, targets, keep } => crate::dev::run(out, dbs, usize::from(targets), keep).await,
        Command::Plan { conn, command } => crate::fleet::plan(out, &conn, command).await,
        Command::Rollback { conn, plan, watch } => crate::fleet::rollback(out, &conn, plan, watch).await,
        Command::Fleet { conn, command } => crate::fleet::fleet(out, &conn, command).await,
        Command::Agents { conn } => crate::fleet::agents(out, &conn).await,
        Command::Audit { conn, plan, since, limit } => crate::fleet::audit(out, &conn, plan, since, limit).await,
        Command::Certs { command } => certs(out, command),
        Command::Completions { shell } => {
            let mut command = <crate::args::Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "flotilla", &mut script);
            // A reader that stops early (`| head`) is not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Code::Ok
        }
        Command::Schema { command } => crate::schema::run(out, command).await,
        Command::Import { command } => crate::import::run(out, command).await,
        Command::Lint { dir, engine, rules } => crate::lint::run(out, &dir, engine, rules),
        Command::New { description, dir, engine, style, destructive } => {
            let written = new_migration(&description, &dir, engine, style.as_deref(), destructive);
            print_written(out, written.map(|files| (files, "created")))
        }
        Command::Validate { target, test_cmd } => validate_target(out, &target, test_cmd.as_deref()).await,
    }
}

fn certs(out: Output, command: CertsCommand) -> Code {
    use crate::certs::{self, Issue};
    let written = match command {
        CertsCommand::Init { out: dir, hosts, operators, agents, days } => {
            let operators: Result<Vec<_>, String> = operators.iter().map(|o| certs::parse_operator(o)).collect();
            operators.and_then(|operators| certs::init(&dir, &hosts, &operators, &agents, days)).map(|f| (f, "wrote"))
        }
        CertsCommand::Issue { dir, operator, agent, coordinator: _, hosts, days } => {
            let what = match (operator, agent) {
                (Some((name, roles)), _) => Issue::Operator { name, roles },
                (None, Some((name, targets))) => Issue::Agent { name, targets },
                (None, None) => Issue::Coordinator { hosts },
            };
            certs::issue(&dir, &what, days).map(|f| (f, "wrote"))
        }
        CertsCommand::Renew { dir, names, days } => certs::renew(&dir, &names, days).map(|f| (f, "renewed")),
    };
    print_written(out, written)
}

async fn status(out: Output, target: &Target) -> Code {
    with_target(out, target, false, PlanOptions::default(), |mut ex, set| async move {
        let rows = ex.status(&set).await;
        let repeatables = ex.repeatable_status(&set).await;
        ex.close().await;
        let (rows, repeatables) = (rows?, repeatables?);
        out.status(&rows, &repeatables);
        Ok(())
    })
    .await
}

async fn migrate(
    out: Output,
    target: &Target,
    request: Request,
    options: PlanOptions,
    dry_run: bool,
    verb: &str,
) -> Code {
    with_target(out, target, !dry_run, options, |mut ex, set| async move {
        let report = ex.migrate(&set, request, dry_run).await;
        ex.close().await;
        report.map(|r| out.run_report(&r, verb))
    })
    .await
}

async fn repair(out: Output, target: &Target, action: RepairAction, dry_run: bool) -> Code {
    with_target(out, target, !dry_run, PlanOptions::default(), |mut ex, set| async move {
        let done = ex.repair(&set, action, dry_run).await;
        ex.close().await;
        done.map(|what| {
            if out.json {
                out.print_json(&json!({ "ok": true, "dry_run": dry_run, "repair": what }));
            } else if dry_run {
                println!("Dry run: would {what} (nothing was changed).");
            } else {
                println!("Repaired {what}.");
            }
        })
    })
    .await
}

async fn baseline(out: Output, target: &Target, at: Version, dry_run: bool) -> Code {
    with_target(out, target, !dry_run, PlanOptions::default(), |mut ex, set| async move {
        let versions = ex.baseline(&set, at, dry_run).await;
        ex.close().await;
        versions.map(|v| {
            if out.json {
                out.print_json(&json!({ "ok": true, "dry_run": dry_run, "baselined": v }));
            } else {
                let verb = if dry_run { "Dry run: would record" } else { "Recorded" };
                println!("{verb} {} migration(s) up to {at} as baseline, without running them.", v.len());
            }
        })
    })
    .await
}

async fn validate_target(out: Output, target: &Target, test_cmd: Option<&str>) -> Code {
    let url = target.db.clone();
    with_target(out, target, true, PlanOptions::default(), |mut ex, set| async move {
        let test = test_cmd.map(|shell| TestCommand { shell, env: vec![("FLOTILLA_DB_URL".to_string(), url.clone())] });
        let report = validate(&mut ex, &set, test.as_ref()).await;
        ex.close().await;
        let report = report?;
        crate::schema::print_validation(out, &report);
        if report.passed() {
            Ok(Code::Ok)
        } else {
            // The report says what: one JSON document, or the list above and this line.
            if !out.json {
                eprintln!("error: validation found problems (listed above)");
            }
            Ok(Code::Refused)
        }
    })
    .await
}

/// Reads the directory, connects, and runs `body` with an executor; every error is reported here, once.
pub(crate) async fn with_target<F, Fut, R>(
    out: Output,
    target: &Target,
    writes: bool,
    options: PlanOptions,
    body: F,
) -> Code
where
    F: FnOnce(Executor, MigrationSet) -> Fut,
    Fut: std::future::Future<Output = Result<R, ExecError>>,
    R: Into<Code>,
{
    let read = ReadOptions {
        allow_missing_down: target.allow_missing_down,
        engine: flotilla_core::Engine::from_url(&target.db),
    };
    let set = match read_dir(&target.dir, &read) {
        Ok(set) => set,
        Err(e) => return out.error(Code::BadInput, &e.to_string()),
    };
    let connect_options = ConnectOptions {
        create: writes,
        lock_ttl: Duration::from_secs(target.lock_ttl),
        connect_timeout: Duration::from_secs(target.connect_timeout),
    };
    let driver = match connect(&target.db, &connect_options).await {
        Ok(d) => d,
        Err(e) => return out.error(Code::of_driver(&e), &format!("{} ({})", e, redact(&target.db))),
    };
    let mut executor = Executor::new(driver, default_owner())
        .with_lock_timeout(Duration::from_secs(target.lock_timeout))
        .with_timeouts(flotilla_core::Timeouts {
            lock: Some(target.statement_lock_timeout),
            statement: target.statement_timeout,
            lock_retries: Some(target.lock_retries),
        })
        .with_plan_options(options);
    if let Some(sink) = out.progress_sink() {
        executor = executor.with_progress(sink);
    }
    match body(executor, set).await {
        Ok(done) => done.into(),
        Err(e) => out.error(Code::of(&e), &e.to_string()),
    }
}

/// The newest revision of the Alembic project in `dir`, if it has any.
fn alembic_head(dir: &std::path::Path) -> Result<Option<String>, String> {
    let versions = dir.join("versions");
    if !versions.exists() {
        return Ok(None);
    }
    let files = flotilla_core::Files::load(&versions).map_err(|e| e.to_string())?;
    if !files.iter().any(|(rel, _)| rel.ends_with(".py") && !rel.starts_with("__")) {
        return Ok(None);
    }
    let chain = flotilla_core::alembic::revisions(&files).map_err(|e| e.to_string())?;
    Ok(chain.last().map(|r| r.id.clone()))
}

/// Writes a new migration's files; refuses to overwrite or to mix conventions. Returns the paths written.
fn new_migration(
    description: &str,
    dir: &std::path::Path,
    engine: Option<flotilla_core::Engine>,
    style: Option<&str>,
    destructive: bool,
) -> Result<Vec<std::path::PathBuf>, String> {
    use flotilla_core::generate::{files, next_version, Request as NewRequest, Style};
    use flotilla_core::{Engine, Format};

    let existing = if dir.exists() {
        read_dir(dir, &ReadOptions { allow_missing_down: true, ..ReadOptions::default() }).map_err(|e| e.to_string())?
    } else {
        MigrationSet { dir: dir.to_path_buf(), format: None, migrations: Vec::new(), repeatables: Vec::new() }
    };
    let style = match (style.map(Style::parse).transpose()?, existing.format) {
        (_, Some(f)) if Style::of(f).is_none() => {
            return Err(format!(
                "{} holds {} migrations, which its own tool writes (for sqitch: `sqitch add NAME`)",
                dir.display(),
                f.as_str()
            ))
        }
        (Some(s), Some(f)) if Some(s) != Style::of(f) => {
            return Err(format!(
                "{} holds {} migrations; a {style:?} file would mix conventions (use --style matching it, or another --dir)",
                dir.display(),
                f.as_str(),
                style = s
            ))
        }
        (Some(s), _) => s,
        (None, Some(f)) => Style::of(f).unwrap_or(Style::Native),
        (None, None) if dir.join("alembic.ini").exists() => Style::Alembic,
        (None, None) => Style::Native,
    };
    let engine = match (engine, existing.format) {
        (Some(Engine::Mongodb), Some(f)) if f != Format::Mongo => {
            return Err(format!("{} holds SQL migrations", dir.display()))
        }
        (Some(e), Some(Format::Mongo)) if e != Engine::Mongodb => {
            return Err(format!("{} holds MongoDB migrations", dir.display()))
        }
        (Some(e), _) => e,
        (None, Some(Format::Mongo)) => Engine::Mongodb,
        (None, _) => {
            std::env::var("FLOTILLA_DB_URL").ok().and_then(|u| Engine::from_url(&u)).unwrap_or(Engine::Postgres)
        }
    };
    let (version, width) = next_version(&existing, chrono::Utc::now());
    // An Alembic revision follows the project's head.
    let head = if style == Style::Alembic { alembic_head(dir)? } else { None };
    let request = NewRequest { description, engine, style, destructive, parent: head.as_deref() };
    let new = files(&request, version, width)?;
    for f in &new {
        let path = dir.join(&f.path);
        if path.exists() {
            return Err(format!("{} already exists; nothing was written", path.display()));
        }
    }
    let mut written = Vec::new();
    for f in new {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, f.text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
