//! Reading targets' history tables: the version before a plan, and the periodic re-read that feeds heartbeats.

use std::sync::Arc;
use std::time::Duration;

use flotilla_core::{AppliedMigration, Version};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::driver::ConnectOptions;
use crate::executor::Executor;

/// Re-reads every target's history and schema at start and then every `every` (`refresh_secs`), so the coordinator
/// sees applied versions and changes made outside Flotilla (drift).
pub(super) async fn refresh_loop(state: Arc<State>, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = refresh_all(&state) => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every.max(Duration::from_secs(1))) => {}
        }
    }
}

/// Applied version and dirtiness from a history table.
pub fn summarize(history: &[AppliedMigration]) -> (Version, bool) {
    let applied = history.iter().filter(|r| !r.state.is_dirty()).map(|r| r.version).max().unwrap_or_default();
    (applied, history.iter().any(|r| r.state.is_dirty()))
}

/// The version a target had before plan `plan_id` touched it: the highest applied version among rows the plan did
/// not write. A re-run of a step whose first run committed (and whose result was lost) still reports where the
/// target was before the plan, not where the first run left it.
pub fn version_before_plan(history: &[AppliedMigration], plan_id: &str) -> Version {
    history
        .iter()
        .filter(|r| !r.state.is_dirty() && r.plan_id.as_deref() != Some(plan_id))
        .map(|r| r.version)
        .max()
        .unwrap_or_default()
}

/// Applied version and dirtiness, read on the target's warm connection (or a new one, kept afterwards); and on the
/// same connection the schema, for the census, recorded with the version it was read at.
pub(super) async fn read_versions(state: &State, target: &Target) -> Versions {
    let options = ConnectOptions { create: false, ..ConnectOptions::default() };
    let make = |driver| Executor::new(driver, "flotilla-agent");
    let (mut ex, history) = state.connections.open(target, &options, make, |ex| Box::pin(ex.history())).await?;
    let schema = ex.schema().await;
    state.connections.put(&target.name, ex.into_driver(), &options, pool::Kept::AfterRead).await;
    let versions = summarize(&history);
    let mut census = locked(&state.census);
    match schema {
        Ok(schema) => {
            let dump = schema.to_json();
            let fingerprint = hex::encode(sha2::Sha256::digest(dump.as_bytes()));
            census.schemas.insert(fingerprint.clone(), dump);
            census.fingerprints.insert(target.name.clone(), (versions.0, fingerprint));
            let used: HashSet<&String> = census.fingerprints.values().map(|(_, f)| f).collect();
            let unused: Vec<String> = census.schemas.keys().filter(|f| !used.contains(f)).cloned().collect();
            for f in unused {
                census.schemas.remove(&f);
            }
        }
        Err(e) => {
            tracing::warn!(target = %target.name, error = %e, "cannot read the schema for the census");
            census.fingerprints.remove(&target.name);
        }
    }
    Ok(versions)
}

/// Reads every target's history, a bounded number at a time (shared with checks: `State::reads`): an agent serving
/// thousands of databases must not open thousands of connections at once.
pub(super) async fn refresh_all(state: &State) {
    use futures_util::StreamExt;
    let reads = state.targets.values().cloned().map(|t| async move {
        let _read = state.reads.acquire().await;
        let versions = read_versions(state, &t).await;
        (t.name, versions)
    });
    let mut results = futures_util::stream::iter(reads).buffer_unordered(READS_AT_ONCE);
    while let Some((name, result)) = results.next().await {
        locked(&state.versions).insert(name, result);
    }
}

#[cfg(test)]
mod tests {
    use super::version_before_plan;
    use flotilla_core::{AppliedMigration, Checksum, RecordState, Version};

    fn row(version: u32, plan: Option<&str>) -> AppliedMigration {
        AppliedMigration {
            version: Version::from(version),
            name: format!("m{version}"),
            checksum: Checksum::of("up", Some("down")),
            state: RecordState::Applied,
            applied_at: chrono::Utc::now(),
            duration_ms: 1,
            applied_by: "test".into(),
            plan_id: plan.map(str::to_string),
        }
    }

    #[test]
    fn the_version_before_a_plan_ignores_what_the_plan_itself_applied() {
        let history = vec![row(1, None), row(2, Some("p1")), row(3, Some("p2")), row(4, Some("p2"))];
        assert_eq!(version_before_plan(&history, "p2").get(), 2, "a re-run of p2 reports where p2 found the target");
        assert_eq!(version_before_plan(&history, "p3").get(), 4, "a new plan finds the top");
        assert_eq!(version_before_plan(&history[..1], "p2").get(), 1);
        assert_eq!(version_before_plan(&[], "p2").get(), 0, "an empty history is 0: known, and nothing applied");
    }
}
