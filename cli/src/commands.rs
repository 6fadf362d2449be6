//! The single-database commands: status, up, down, repair, baseline.

use std::time::Duration;

use flotilla_agent::driver::{default_owner, redact};
use flotilla_agent::validate::{validate, TestCommand};
use flotilla_agent::{connect, ConnectOptions, ExecError, Executor, RepairAction};
use flotilla_core::{read_dir, MigrationSet, PlanOptions, ReadOptions, Request};
use serde_json::json;

use crate::args::{Cli, Command, Target};
use crate::exit::Code;
use crate::output::Output;

pub async fn run(cli: Cli) -> Code {
    let out = Output { json: cli.json, verbose: cli.verbose };
    match cli.command {
        Command::Status(target) => {
            with_target(out, &target, false, PlanOptions::default(), |mut ex, set| async move {
                let rows = ex.status(&set).await;
                ex.close().await;
                rows.map(|rows| out.status(&rows))
            })
            .await
        }
        Command::Up { target, to, dry_run, allow_out_of_order } => {
            let options = PlanOptions { allow_out_of_order, ignore_missing: target.ignore_missing };
            with_target(out, &target, !dry_run, options, |mut ex, set| async move {
                let report = ex.migrate(&set, Request::Up { to }, dry_run).await;
                ex.close().await;
                report.map(|r| out.run_report(&r, "apply"))
            })
            .await
        }
        Command::Down { target, how_far, dry_run } => {
            let request = match (how_far.to, how_far.steps) {
                (Some(to), _) => Request::DownTo(to),
                (_, Some(n)) => Request::DownSteps(n),
                _ => Request::DownAll,
            };
            let options = PlanOptions { allow_out_of_order: false, ignore_missing: target.ignore_missing };
            with_target(out, &target, !dry_run, options, |mut ex, set| async move {
                let report = ex.migrate(&set, request, dry_run).await;
                ex.close().await;
                report.map(|r| out.run_report(&r, "roll back"))
            })
            .await
        }
        Command::Repair { target, action, dry_run } => {
            let action = if action.resume {
                RepairAction::Resume
            } else if action.mark_applied {
                RepairAction::MarkApplied
            } else {
                RepairAction::MarkNotApplied
            };
            with_target(out, &target, !dry_run, PlanOptions::default(), |mut ex, set| async move {
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
        Command::Baseline { target, at, dry_run } => {
            with_target(out, &target, !dry_run, PlanOptions::default(), |mut ex, set| async move {
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
        Command::Dev { db, keep } => crate::dev::run(out, db, keep).await,
        Command::Schema { command } => crate::schema::run(out, command).await,
        Command::Validate { target, test_cmd } => {
            let url = target.db.clone();
            with_target(out, &target, true, PlanOptions::default(), |mut ex, set| async move {
                let test = test_cmd
                    .as_deref()
                    .map(|shell| TestCommand { shell, env: vec![("FLOTILLA_DB_URL".to_string(), url.clone())] });
                let report = validate(&mut ex, &set, test.as_ref()).await;
                ex.close().await;
                let report = report?;
                crate::schema::print_validation(out, &report);
                if report.passed() {
                    Ok(())
                } else {
                    Err(ExecError::Refused("validation found problems (listed above)".into()))
                }
            })
            .await
        }
    }
}

/// Reads the directory, connects, and runs `body` with an executor; every error is reported here, once.
pub(crate) async fn with_target<F, Fut>(
    out: Output,
    target: &Target,
    writes: bool,
    options: PlanOptions,
    body: F,
) -> Code
where
    F: FnOnce(Executor, MigrationSet) -> Fut,
    Fut: std::future::Future<Output = Result<(), ExecError>>,
{
    let set = match read_dir(&target.dir, &ReadOptions { allow_missing_down: target.allow_missing_down }) {
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
        .with_plan_options(options);
    if let Some(sink) = out.progress_sink() {
        executor = executor.with_progress(sink);
    }
    match body(executor, set).await {
        Ok(()) => Code::Ok,
        Err(e) => out.error(Code::of(&e), &e.to_string()),
    }
}
