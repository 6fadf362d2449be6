//! `flotilla lint`: read the directory, lint every SQL migration, print findings, exit by the worst one.

use std::path::Path;

use flotilla_core::lint::{catalogue, check_directives, counts, lint, Context, RuleSet, Severity, CONFIG_FILE};
use flotilla_core::{read_dir, Engine, Format, ReadOptions};
use serde_json::json;

use crate::exit::Code;
use crate::output::Output;

pub fn run(out: Output, dir: &Path, engine: Option<Engine>, list_rules: bool) -> Code {
    if list_rules {
        return rules(out);
    }
    let engine = engine
        .or_else(|| std::env::var("FLOTILLA_DB_URL").ok().and_then(|u| Engine::from_url(&u)))
        .unwrap_or(Engine::Postgres);
    // A missing DOWN is a finding here, not a reason to stop reading.
    let set = match read_dir(dir, &ReadOptions { allow_missing_down: true, engine: Some(engine) }) {
        Ok(set) => set,
        Err(e) => return out.error(Code::BadInput, &e.to_string()),
    };
    let engine = if set.format == Some(Format::Mongo) { Engine::Mongodb } else { engine };
    let config = dir.join(CONFIG_FILE);
    let rules = if config.exists() {
        match std::fs::read_to_string(&config).map_err(|e| e.to_string()).and_then(|t| RuleSet::from_toml(&t)) {
            Ok(rules) => rules,
            Err(e) => return out.error(Code::BadInput, &format!("{}: {e}", config.display())),
        }
    } else {
        RuleSet::default()
    };
    if let Err(e) = check_directives(&set.migrations) {
        return out.error(Code::BadInput, &e);
    }
    let report = lint(&set.migrations, engine, &Context { rules, statement_timeout: false });
    let worst = report.iter().flat_map(|m| m.findings.iter().map(|f| f.severity)).max();
    if out.json {
        out.print_json(&json!({ "ok": true, "engine": engine, "worst": worst, "migrations": report }));
    } else {
        for m in &report {
            println!("{} {} ({:?})", m.version, m.name, m.class);
            for f in &m.findings {
                let line = f.line.map(|l| format!("line {l}")).unwrap_or_default();
                println!("  {:<7} {:<9} {}/{}: {}", f.severity, line, f.source, f.rule, f.message);
                if let Some(help) = &f.help {
                    println!("  {:<17} help: {help}", "");
                }
            }
        }
        let (errors, warnings, notes) = counts(&report);
        println!("\n{} migration(s): {errors} error(s), {warnings} warning(s), {notes} note(s)", report.len());
    }
    match worst {
        Some(Severity::Error) => Code::LintErrors,
        Some(Severity::Warning) => Code::LintWarnings,
        _ => Code::Ok,
    }
}

/// `flotilla lint --rules`: every rule, where it comes from, its engines and default severity.
fn rules(out: Output) -> Code {
    let all = catalogue();
    if out.json {
        out.print_json(&json!({ "ok": true, "rules": all }));
        return Code::Ok;
    }
    for r in &all {
        let engines: Vec<&str> = r.engines.iter().map(|e| e.as_str()).collect();
        let opt_in = if r.opt_in { " (opt-in: turn on with deny)" } else { "" };
        println!("{:<8} {:<46} {:<7} {:<26} {}{opt_in}", r.source, r.rule, r.severity, engines.join(","), r.about);
    }
    Code::Ok
}
