//! Lint across the fleet: before a plan is stored, its migrations are linted for every engine its targets run. The
//! findings go into the plan's `submitted` event; an error refuses the plan unless the submitter allows it.

use std::collections::BTreeMap;

use flotilla_core::bundle::{Bundle, ANY_ENGINE};
use flotilla_core::fleet::{Strategy, Target};
use flotilla_core::lint::{check_directives, counts, lint, Context, MigrationLint, RuleSet, Severity, CONFIG_FILE};
use flotilla_core::{Engine, MigrationSet};
use serde_json::{json, Value};

use super::{Result, ServiceError};

/// How many findings a plan's record keeps (the counts are always whole).
const KEPT: usize = 200;
/// How many errors a refusal names.
const NAMED: usize = 5;

/// Lints the sets the plan's targets use; refuses errors unless `allow`. Returns the record for the plan.
pub(super) fn lint_plan<'t>(
    bundle: &Bundle,
    sets: &BTreeMap<String, MigrationSet>,
    targets: impl Iterator<Item = &'t Target>,
    strategy: &Strategy,
    allow: bool,
) -> Result<Value> {
    let used: Vec<Engine> = targets.map(|t| t.engine).collect();
    let engines = Engine::ALL.into_iter().filter(|e| used.contains(e));
    let mut reports: Vec<(Engine, Vec<MigrationLint>)> = Vec::new();
    for engine in engines {
        let key = if bundle.sets.contains_key(engine.as_str()) { engine.as_str() } else { ANY_ENGINE };
        let Some(set) = sets.get(key) else { continue };
        let rules = match bundle.sets.get(key).and_then(|files| files.get(CONFIG_FILE)) {
            Some(text) => {
                RuleSet::from_toml(text).map_err(|e| ServiceError::BadInput(format!("{CONFIG_FILE}: {e}")))?
            }
            None => RuleSet::default(),
        };
        check_directives(&set.migrations).map_err(ServiceError::BadInput)?;
        let context = Context { rules, statement_timeout: strategy.timeouts.statement.is_some() };
        reports.push((engine, lint(&set.migrations, engine, &context)));
    }
    let findings: Vec<Value> = reports
        .iter()
        .flat_map(|(engine, report)| {
            report.iter().flat_map(move |m| {
                m.findings.iter().map(move |f| {
                    json!({
                        "engine": engine, "version": m.version.to_string(), "migration": m.name,
                        "source": f.source, "rule": f.rule, "severity": f.severity, "line": f.line, "message": f.message,
                    })
                })
            })
        })
        .collect();
    let all: Vec<MigrationLint> = reports.into_iter().flat_map(|(_, r)| r).collect();
    let (errors, warnings, notes) = counts(&all);
    if errors > 0 && !allow {
        let named: Vec<String> = findings
            .iter()
            .filter(|f| f["severity"] == json!(Severity::Error))
            .take(NAMED)
            .map(|f| {
                format!(
                    "{} {} {}{}: {}/{}: {}",
                    f["engine"].as_str().unwrap_or_default(),
                    f["version"].as_str().unwrap_or_default(),
                    f["migration"].as_str().unwrap_or_default(),
                    f["line"].as_u64().map(|l| format!(" line {l}")).unwrap_or_default(),
                    f["source"].as_str().unwrap_or_default(),
                    f["rule"].as_str().unwrap_or_default(),
                    f["message"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        return Err(ServiceError::BadInput(format!(
            "lint found {errors} error(s) in the migrations (fix them, allow the rule, or submit with --allow-lint): {}",
            named.join("; ")
        )));
    }
    let truncated = findings.len() > KEPT;
    let kept: Vec<Value> = findings.into_iter().take(KEPT).collect();
    Ok(
        json!({ "errors": errors, "warnings": warnings, "notes": notes, "allowed": errors > 0, "findings": kept, "truncated": truncated }),
    )
}
