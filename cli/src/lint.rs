//! `flotilla lint`: read the directory, lint every SQL migration, print findings, exit by the worst one.

use std::path::Path;

use flotilla_core::lint::{check_directives, lint, RuleSet, Severity};
use flotilla_core::{read_dir, Engine, Format, ReadOptions};
use serde_json::json;

use crate::exit::Code;
use crate::output::Output;

pub fn run(out: Output, dir: &Path, engine: Option<Engine>) -> Code {
    let engine = engine
        .or_else(|| std::env::var("FLOTILLA_DB_URL").ok().and_then(|u| Engine::from_url(&u)))
        .unwrap_or(Engine::Postgres);
    // A missing DOWN is a finding here, not a reason to stop reading.
    let set = match read_dir(dir, &ReadOptions { allow_missing_down: true, engine: Some(engine) }) {
        Ok(set) => set,
        Err(e) => return out.error(Code::BadInput, &e.to_string()),
    };
    if set.format == Some(Format::Mongo) {
        return out.error(Code::BadInput, "lint checks SQL migrations; this directory holds MongoDB commands");
    }
    let config = dir.join("flotilla-lint.toml");
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
    let report = lint(&set.migrations, engine, &rules);
    let worst = report.iter().flat_map(|m| m.findings.iter().map(|f| f.severity)).max();
    if out.json {
        out.print_json(&json!({ "ok": true, "engine": engine, "worst": worst, "migrations": report }));
    } else {
        for m in &report {
            println!("{} {} ({:?})", m.version, m.name, m.class);
            for f in &m.findings {
                let line = f.line.map(|l| format!("line {l}")).unwrap_or_default();
                println!("  {:<7} {:<9} {}: {}", f.severity, line, f.rule, f.message);
            }
        }
        let count = |s| report.iter().flat_map(|m| &m.findings).filter(|f| f.severity == s).count();
        println!(
            "\n{} migration(s): {} error(s), {} warning(s), {} note(s)",
            report.len(),
            count(Severity::Error),
            count(Severity::Warning),
            count(Severity::Info)
        );
    }
    match worst {
        Some(Severity::Error) => Code::LintErrors,
        Some(Severity::Warning) => Code::LintWarnings,
        _ => Code::Ok,
    }
}
