//! `flotilla schema dump|diff` and the printing of `validate` reports.

use std::time::Duration;

use flotilla_agent::driver::redact;
use flotilla_agent::validate::ValidationReport;
use flotilla_agent::{connect, ConnectOptions};
use flotilla_core::schema::{diff, Schema};
use flotilla_core::Engine;
use serde_json::json;

use crate::args::{DumpFormat, SchemaCommand};
use crate::exit::Code;
use crate::output::Output;

pub async fn run(out: Output, command: SchemaCommand) -> Code {
    match command {
        SchemaCommand::Dump { db, format, output } => {
            let schema = match live(&db).await {
                Ok(s) => s,
                Err((code, message)) => return out.error(code, &message),
            };
            let text = match format {
                DumpFormat::Json => schema.to_json(),
                DumpFormat::Sql => schema.to_sql(),
            };
            match output {
                Some(path) => match std::fs::write(&path, text) {
                    Ok(()) => Code::Ok,
                    Err(e) => out.error(Code::BadInput, &format!("cannot write {}: {e}", path.display())),
                },
                None => {
                    print!("{text}");
                    Code::Ok
                }
            }
        }
        SchemaCommand::Diff { a, b } => {
            let (a, b) = match (load(&a).await, load(&b).await) {
                (Ok(a), Ok(b)) => (a, b),
                (Err((code, message)), _) | (_, Err((code, message))) => return out.error(code, &message),
            };
            let differences = diff(&a, &b);
            if out.json {
                out.print_json(&json!({ "ok": true, "same": differences.is_empty(), "differences": differences }));
            } else if differences.is_empty() {
                println!("The schemas are the same.");
            } else {
                for d in &differences {
                    println!("{d}");
                }
                println!("\n{} difference(s).", differences.len());
            }
            if differences.is_empty() {
                Code::Ok
            } else {
                Code::Failed
            }
        }
    }
}

async fn live(url: &str) -> Result<Schema, (Code, String)> {
    let options = ConnectOptions { create: false, connect_timeout: Duration::from_secs(10), ..Default::default() };
    let mut driver =
        connect(url, &options).await.map_err(|e| (Code::of_driver(&e), format!("{e} ({})", redact(url))))?;
    let schema = driver.schema().await.map_err(|e| (Code::of_driver(&e), e.to_string()));
    driver.close().await;
    schema
}

/// A JSON dump file, or a live database when the argument is a database URL.
async fn load(source: &str) -> Result<Schema, (Code, String)> {
    if Engine::from_url(source).is_some() {
        return live(source).await;
    }
    let text = std::fs::read_to_string(source).map_err(|e| (Code::BadInput, format!("cannot read {source}: {e}")))?;
    Schema::from_json(&text)
        .map_err(|e| (Code::BadInput, format!("{source}: {e} (diff reads `schema dump --format json` files)")))
}

pub fn print_validation(out: Output, report: &ValidationReport) {
    if out.json {
        out.print_json(&json!({ "ok": report.passed(), "report": report }));
        return;
    }
    if report.migrations.is_empty() && report.stopped.is_none() {
        println!("Nothing to validate: no pending migrations.");
        return;
    }
    for m in &report.migrations {
        if m.problems.is_empty() {
            println!("ok    {} {}: up, down (schema restored), up again (same schema)", m.version, m.name);
        } else {
            println!("FAIL  {} {}", m.version, m.name);
            for p in &m.problems {
                println!("  {}", p.replace('\n', "\n  "));
            }
        }
        for note in &m.notes {
            println!("  note: {}", note.replace('\n', "\n  "));
        }
    }
    if report.stopped.is_some() {
        println!("\nStopped at a migration that could not run or left changes behind; later ones were not validated.");
    }
}
