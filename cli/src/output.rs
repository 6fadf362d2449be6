//! What the CLI prints: text for people, JSON for scripts, progress lines on stderr.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use flotilla_agent::executor::{ProgressSink, RepeatableStatus, RunReport};
use flotilla_agent::{Progress, ProgressKind};
use flotilla_core::plan::StatusRow;
use serde::Serialize;
use serde_json::json;

use crate::exit::Code;

pub fn init_tracing(verbose: u8) {
    let default = if verbose >= 2 { "debug" } else { "warn,sqlx=error" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
    pub verbose: u8,
}

impl Output {
    /// Live progress on stderr for people; nothing in JSON mode (the result carries it).
    pub fn progress_sink(self) -> Option<ProgressSink> {
        if self.json {
            return None;
        }
        let verbose = self.verbose;
        Some(Arc::new(move |p: &Progress| {
            let line = match &p.kind {
                ProgressKind::Started { statements, atomic, resume_from } => {
                    let mode = if *atomic { "in a transaction" } else { "statement by statement" };
                    let resume =
                        if *resume_from > 0 { format!(", resuming at {}", resume_from + 1) } else { String::new() };
                    Some(format!("{} {} {} ({statements} statements, {mode}{resume})", arrow(p), p.version, p.name))
                }
                ProgressKind::Statement { index, total, rows_affected, elapsed_ms } if verbose > 0 => {
                    Some(format!("    statement {index}/{total} done, {rows_affected} rows, {elapsed_ms} ms"))
                }
                ProgressKind::Statement { .. } => None,
                ProgressKind::Batch { batch, last_key, rows_affected, total_rows, elapsed_ms } if verbose > 0 => Some(format!(
                    "    batch {batch} committed: keys up to {last_key}, {rows_affected} rows ({total_rows} in all), {elapsed_ms} ms"
                )),
                ProgressKind::Batch { .. } => None,
                ProgressKind::LockRetry { attempt, retries, statement, pause_ms, error } => Some(format!(
                    "    statement {} gave up waiting for a lock ({error}); rolled back, retry {attempt}/{retries} in {pause_ms} ms",
                    statement.map_or("?".to_string(), |s| s.to_string())
                )),
                ProgressKind::Throttled { reason, waited_ms } => {
                    Some(format!("    held by a health check after {waited_ms} ms: {reason}"))
                }
                ProgressKind::Finished { elapsed_ms } => Some(format!("  done in {elapsed_ms} ms")),
                ProgressKind::Failed { .. } => None,
            };
            if let Some(line) = line {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        }))
    }

    pub fn print_json(self, value: &impl Serialize) {
        match serde_json::to_string_pretty(value) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: cannot render JSON: {e}"),
        }
    }

    /// Reports an error once, where it is handled, and returns its exit code.
    pub fn error(self, code: Code, message: &str) -> Code {
        if self.json {
            self.print_json(
                &json!({ "ok": false, "error": { "kind": code.label(), "exit_code": code as u8, "message": message } }),
            );
        } else {
            let red = std::io::stderr().is_terminal();
            let label = if red { "\x1b[31merror\x1b[0m" } else { "error" };
            eprintln!("{label}: {message}");
        }
        code
    }

    pub fn status(self, rows: &[StatusRow], repeatables: &[RepeatableStatus]) {
        if self.json {
            return self.print_json(&json!({ "ok": true, "migrations": rows, "repeatables": repeatables }));
        }
        if rows.is_empty() && repeatables.is_empty() {
            println!("No migrations found locally or on the database.");
            return;
        }
        let name_width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).clamp(4, 48);
        println!("{:<16} {:<name_width$} {:<9} {:<20} DETAIL", "VERSION", "NAME", "STATUS", "APPLIED AT");
        for r in rows {
            let at = r.applied_at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default();
            println!(
                "{:<16} {:<name_width$} {:<9} {:<20} {}",
                r.version,
                r.name,
                r.status,
                at,
                r.detail.as_deref().unwrap_or("")
            );
        }
        let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
        println!(
            "\n{} applied, {} pending{}{}",
            count("applied") + count("baseline"),
            count("pending"),
            plural_note(count("dirty"), "dirty"),
            plural_note(count("changed") + count("missing"), "out of step with the files"),
        );
        for r in repeatables {
            println!("{:<16} R__{:<name_width$} {}", "repeatable", r.name, r.status);
        }
    }

    pub fn run_report(self, report: &RunReport, verb: &str) {
        if self.json {
            return self.print_json(
                &json!({ "ok": true, "dry_run": report.dry_run, "steps": report.steps, "repeatables": report.repeatables }),
            );
        }
        let again = if report.repeatables.is_empty() {
            String::new()
        } else {
            format!("; repeatable: {}", report.repeatables.join(", "))
        };
        if report.steps.is_empty() && !again.is_empty() {
            let verb = if report.dry_run { "Dry run: would run" } else { "Ran" };
            println!("{verb} the repeatable migration(s) whose checksum changed{again}.");
            return;
        }
        if report.steps.is_empty() {
            println!("Nothing to {verb}: the database is already there.");
            return;
        }
        if report.dry_run {
            println!("Dry run: would {verb} {} migration(s), in this order (nothing was changed):", report.steps.len());
            for s in &report.steps {
                let mode = if s.atomic { "in a transaction" } else { "statement by statement" };
                println!("\n{} {} {} ({mode})", s.direction, s.version, s.name);
                for (i, stmt) in s.statements.iter().enumerate() {
                    println!("  {:>3}. {stmt}", i + 1);
                }
            }
            return;
        }
        let total: u64 = report.steps.iter().map(|s| s.duration_ms).sum();
        let last = report.steps.last().map(|s| s.version).unwrap_or_default();
        let past = if verb == "apply" { "Applied" } else { "Rolled back" };
        println!("{past} {} migration(s) in {total} ms (last: {last}){again}.", report.steps.len());
    }
}

fn arrow(p: &Progress) -> &'static str {
    match p.direction {
        flotilla_core::Direction::Up => "↑",
        flotilla_core::Direction::Down => "↓",
    }
}

fn plural_note(n: usize, what: &str) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(", {n} {what}")
    }
}

/// Prints the files a command wrote (`verb` each), or its error.
pub(crate) fn print_written(out: Output, written: Result<(Vec<std::path::PathBuf>, &str), String>) -> Code {
    match written {
        Ok((files, verb)) => {
            if out.json {
                out.print_json(&json!({ "ok": true, "files": files }));
            } else {
                for f in files {
                    println!("{verb} {}", f.display());
                }
            }
            Code::Ok
        }
        Err(message) => out.error(Code::BadInput, &message),
    }
}
