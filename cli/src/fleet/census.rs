//! `fleet status` (each target, then the census: who is at which version with which schema, who is behind, who
//! drifted) and `fleet drift TARGET` (how its schema differs from the majority's at its version).

use std::collections::BTreeMap;

use flotilla_core::fleet::Selector;
use flotilla_core::schema::{diff, Schema};
use flotilla_proto::convert;
use flotilla_proto::v1 as pb;
use serde_json::json;

use super::{connect, finish, Conn, Fail, FleetCommand};
use crate::exit::Code;
use crate::output::Output;

pub async fn fleet(out: Output, conn: &Conn, command: FleetCommand) -> Code {
    let result = match command {
        FleetCommand::Status { selector } => status(out, conn, selector).await,
        FleetCommand::Drift { target } => drift(out, conn, target).await,
    };
    finish(out, result)
}

fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(if fingerprint.is_empty() { "?" } else { fingerprint })
}

async fn status(out: Output, conn: &Conn, selector: String) -> Result<Code, Fail> {
    selector.parse::<Selector>().map_err(|e| Fail(Code::BadInput, format!("--select: {e}")))?;
    let mut client = connect(conn).await?;
    let rows = client.fleet_status(pb::FleetStatusRequest { selector }).await?.into_inner().targets;
    let newest = rows
        .iter()
        .filter_map(|r| r.applied_version.as_deref().map(|v| convert::version("applied_version", v)))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max();
    let behind = |r: &pb::TargetStatus| {
        let applied = r.applied_version.as_deref().and_then(|v| convert::version("applied_version", v).ok());
        applied.zip(newest).is_some_and(|(a, n)| a < n)
    };
    if out.json {
        let mut json_rows = Vec::with_capacity(rows.len());
        for r in &rows {
            let pending = r.pending.iter().map(|v| convert::version("pending", v)).collect::<Result<Vec<_>, _>>()?;
            json_rows.push(json!({
                "target": r.target, "agent": r.agent,
                "applied_version": convert::optional_version("applied_version", r.applied_version.as_deref())?,
                "pending": pending, "dirty": r.dirty, "stale": r.stale,
                "fingerprint": if r.fingerprint.is_empty() { None } else { Some(&r.fingerprint) },
                "schema_drift": r.schema_drift, "behind": behind(r),
                "drift": if r.drift.is_empty() { None } else { Some(&r.drift) },
            }));
        }
        out.print_json(&json_rows);
    } else {
        print_rows(&rows);
        print_census(&rows, newest.map(|v| v.to_string()), behind);
    }
    let drifted = rows.iter().any(|r| !r.drift.is_empty() || r.dirty);
    Ok(if drifted { Code::Failed } else { Code::Ok })
}

fn print_rows(rows: &[pb::TargetStatus]) {
    println!(
        "{:<24} {:<12} {:>8} {:<16} {:<6} {:<13} DRIFT",
        "TARGET", "AGENT", "APPLIED", "PENDING", "DIRTY", "SCHEMA"
    );
    for r in rows {
        let applied = r.applied_version.clone().unwrap_or_else(|| "?".to_string());
        let pending = match r.pending.as_slice() {
            [] => String::new(),
            [one] => one.to_string(),
            [first, rest @ ..] => format!("{first} +{}", rest.len()),
        };
        let stale = if r.stale { " (stale)" } else { "" };
        let schema = format!("{}{}", short(&r.fingerprint), if r.schema_drift { "*" } else { "" });
        let dirty = if r.dirty { "yes" } else { "no" };
        println!(
            "{:<24} {:<12} {applied:>8} {pending:<16} {dirty:<6} {schema:<13} {}{stale}",
            r.target, r.agent, r.drift
        );
    }
}

/// Targets grouped by (version, schema), most first; then who is behind and who drifted.
fn print_census(rows: &[pb::TargetStatus], newest: Option<String>, behind: impl Fn(&pb::TargetStatus) -> bool) {
    let mut groups: BTreeMap<(String, String, String), Vec<&str>> = BTreeMap::new();
    for r in rows {
        let engine = convert::engine(r.engine).map(|e| e.as_str().to_string()).unwrap_or_else(|_| "?".into());
        let version = r.applied_version.clone().unwrap_or_else(|| "?".into());
        groups.entry((engine, version, short(&r.fingerprint).to_string())).or_default().push(&r.target);
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
    println!("\nCensus ({} targets):", rows.len());
    for ((engine, version, schema), targets) in &groups {
        let names = if targets.len() <= 5 { format!(": {}", targets.join(", ")) } else { String::new() };
        println!("  {engine} version {version}, schema {schema}: {} target(s){names}", targets.len());
    }
    let stragglers: Vec<String> = rows
        .iter()
        .filter(|r| behind(r))
        .map(|r| format!("{} ({})", r.target, r.applied_version.as_deref().unwrap_or("?")))
        .collect();
    if !stragglers.is_empty() {
        println!("Behind version {}: {}", newest.unwrap_or_default(), stragglers.join(", "));
    }
    let drifted: Vec<&str> = rows.iter().filter(|r| r.schema_drift).map(|r| r.target.as_str()).collect();
    if !drifted.is_empty() {
        println!("Drifted (schema differs from the majority at their version): {}", drifted.join(", "));
        println!("  see `flotilla fleet drift TARGET`");
    }
}

async fn drift(out: Output, conn: &Conn, target: String) -> Result<Code, Fail> {
    let mut client = connect(conn).await?;
    let d = client.fleet_drift(pb::FleetDriftRequest { target }).await?.into_inner();
    let parse = |what: &str, text: &str| {
        Schema::from_json(text)
            .map_err(|e| Fail(Code::Failed, format!("the coordinator sent a {what} schema this CLI cannot read: {e}")))
    };
    let (theirs, majority) = (parse("target's", &d.schema)?, parse("majority's", &d.majority_schema)?);
    let differences = diff(&majority, &theirs);
    if out.json {
        out.print_json(&json!({
            "ok": true, "target": d.target, "applied_version": d.applied_version, "fingerprint": d.fingerprint,
            "majority_fingerprint": d.majority_fingerprint, "majority_targets": d.majority_targets,
            "version_targets": d.version_targets, "majority_example": d.majority_example,
            "same": differences.is_empty(), "differences": differences,
        }));
    } else if differences.is_empty() {
        println!(
            "{} at version {} has the schema {} of {} targets of its engine at that version have.",
            d.target, d.applied_version, d.majority_targets, d.version_targets
        );
    } else {
        println!(
            "{} at version {} differs from the schema {} of {} targets of its engine at that version have (as {} has):",
            d.target, d.applied_version, d.majority_targets, d.version_targets, d.majority_example
        );
        for difference in &differences {
            println!("  {difference}");
        }
    }
    Ok(if differences.is_empty() { Code::Ok } else { Code::Failed })
}
