//! Fleet status: targets and agents as the coordinator knows them, and drift from what plans left.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use flotilla_core::bundle::Bundle;
use flotilla_core::fleet::{Selector, Step, Target};
use flotilla_core::{Engine, ReadOptions, Version};

use super::*;
use crate::identity::Identity;
use crate::store::StoreError;

impl Coordinator {
    pub async fn targets(&self, who: &Identity, selector: &Selector) -> Result<Vec<Target>> {
        self.allow(who, crate::identity::Permission::Read, "list targets", None).await?;
        Ok(self.store.targets().await?.into_iter().filter(|t| selector.matches(t)).collect())
    }

    /// Each target's applied version as its agent last read it, what is pending, and drift from what plans left.
    pub async fn fleet_status(&self, who: &Identity, selector: &Selector) -> Result<Vec<TargetStatus>> {
        self.allow(who, crate::identity::Permission::Read, "read the fleet's status", None).await?;
        let targets: Vec<Target> = self.store.targets().await?.into_iter().filter(|t| selector.matches(t)).collect();
        // The newest succeeded step per target says where plans left it: one query, however many plans.
        let last: HashMap<String, (String, Step)> = self
            .store
            .last_succeeded_steps()
            .await?
            .into_iter()
            .map(|(bundle, s)| (s.target.clone(), (bundle, s)))
            .collect();
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let live = self.inner().live.get(&t.name).cloned();
            let applied = live.as_ref().and_then(|l| l.applied);
            let stale = live.as_ref().is_none_or(|l| l.reported.elapsed() > self.config.heartbeat_timeout);
            let mut pending = Vec::new();
            let mut drift = None;
            if let Some((bundle, step)) = last.get(&t.name) {
                let versions = self.bundle_versions(bundle, t.engine).await?;
                pending = versions.into_iter().filter(|v| applied.is_some_and(|a| *v > a)).collect();
                if let (Some(expected), Some(applied)) = (step.after, applied) {
                    if expected != applied {
                        drift = Some(format!("plan {} left version {expected}; history says {applied}", step.plan_id));
                    }
                }
            }
            let fingerprint = self.inner().fingerprints.get(&t.name).cloned();
            out.push(TargetStatus {
                dirty: live.as_ref().is_some_and(|l| l.dirty),
                target: t,
                applied,
                pending,
                drift,
                stale,
                fingerprint,
                schema_drift: false,
            });
        }
        // The census: per engine and version, the schema most targets have; a target with another one has drifted.
        let census: Vec<Census> = out.iter().map(|s| (s.target.engine, s.applied, s.fingerprint.as_deref())).collect();
        let majorities = majority_schemas(&census);
        for status in &mut out {
            let engine = status.target.engine;
            let Some((majority, n, of)) = status.applied.and_then(|v| majorities.get(&(engine, v))).cloned() else {
                continue;
            };
            if status.fingerprint.as_ref().is_some_and(|f| *f != majority) {
                status.schema_drift = true;
                let note = format!(
                    "schema differs from the one {n} of {of} {engine} targets at version {} have (flotilla fleet drift {})",
                    status.applied.map(|v| v.to_string()).unwrap_or_default(),
                    status.target.name
                );
                status.drift = Some(match status.drift.take() {
                    Some(d) => format!("{d}; {note}"),
                    None => note,
                });
            }
        }
        Ok(out)
    }

    /// A target's schema beside the one most targets at its version have (among every target this coordinator
    /// knows).
    pub async fn fleet_drift(&self, who: &Identity, target: &str) -> Result<Drift> {
        self.allow(who, crate::identity::Permission::Read, "read a target's drift", None).await?;
        let not_yet = |what: &str| ServiceError::Refused(format!("target `{target}`: {what}"));
        let inner = self.inner();
        let applied = inner.live.get(target).and_then(|l| l.applied).ok_or_else(|| {
            not_yet("its agent has not reported its applied version (not registered, or not connected yet)")
        })?;
        let fingerprint = inner
            .fingerprints
            .get(target)
            .cloned()
            .ok_or_else(|| not_yet("its agent has not reported its schema yet"))?;
        let engine_of = |name: &str| inner.engines.get(name).copied();
        let engine = engine_of(target).ok_or_else(|| not_yet("its agent has not registered it"))?;
        let census: Vec<Census> = inner
            .live
            .iter()
            .filter(|(name, _)| engine_of(name) == Some(engine))
            .map(|(name, live)| (engine, live.applied, inner.fingerprints.get(name).map(String::as_str)))
            .collect();
        let (majority, n, of) = majority_schemas(&census)
            .remove(&(engine, applied))
            .ok_or_else(|| not_yet("no schema is known at its version"))?;
        let mut examples: Vec<&String> = inner
            .fingerprints
            .iter()
            .filter(|(name, f)| {
                **f == majority
                    && engine_of(name) == Some(engine)
                    && inner.live.get(*name).and_then(|l| l.applied) == Some(applied)
            })
            .map(|(name, _)| name)
            .collect();
        examples.sort();
        let schema_of =
            |f: &str| inner.schemas.get(f).cloned().ok_or_else(|| not_yet("the schema was not received yet"));
        Ok(Drift {
            target: target.to_string(),
            applied,
            schema: schema_of(&fingerprint)?,
            fingerprint,
            majority_schema: schema_of(&majority)?,
            majority_example: examples.first().map(|s| s.to_string()).unwrap_or_default(),
            majority_fingerprint: majority,
            majority_targets: n,
            version_targets: of,
        })
    }

    pub(super) async fn bundle_versions(&self, bundle_id: &str, engine: Engine) -> Result<Vec<Version>> {
        let cached = self.inner().versions.get(bundle_id).cloned();
        let sets = match cached {
            Some(sets) => sets,
            None => {
                let body = self.store.bundle(bundle_id).await?.unwrap_or_default();
                let mut sets = BTreeMap::new();
                if let Ok(bundle) = Bundle::from_json(body.as_bytes()) {
                    if let Ok(read) = bundle.check(&ReadOptions { allow_missing_down: true, ..ReadOptions::default() })
                    {
                        for (key, set) in read {
                            sets.insert(key, set.migrations.iter().map(|m| m.version).collect());
                        }
                    }
                }
                self.inner().versions.insert(bundle_id.to_string(), sets.clone());
                sets
            }
        };
        Ok(sets.get(engine.as_str()).or_else(|| sets.get("*")).cloned().unwrap_or_default())
    }

    pub(crate) async fn bundle_body(&self, id: &str) -> Result<Arc<String>> {
        let body =
            self.store.bundle(id).await?.ok_or_else(|| StoreError::Corrupt(format!("bundle {id} is missing")))?;
        Ok(Arc::new(body))
    }
}

/// A target in the census: its engine, applied version and schema fingerprint.
pub(crate) type Census<'a> = (Engine, Option<Version>, Option<&'a str>);

/// For each engine and applied version: the fingerprint most targets at it have (ties: the smallest fingerprint, so
/// every reader picks the same), how many have it, and how many targets with a known schema are at that version.
/// Engines are apart: a MongoDB database and a PostgreSQL one at version 3 never share a schema.
pub(crate) fn majority_schemas(census: &[Census]) -> HashMap<(Engine, Version), (String, usize, usize)> {
    let mut counts: HashMap<(Engine, Version), BTreeMap<&str, usize>> = HashMap::new();
    for (engine, version, fingerprint) in census {
        if let (Some(v), Some(f)) = (version, fingerprint) {
            *counts.entry((*engine, *v)).or_default().entry(f).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .filter_map(|((engine, v), by)| {
            let of = by.values().sum();
            let (f, n) = by.into_iter().max_by(|(fa, a), (fb, b)| a.cmp(b).then(fb.cmp(fa)))?;
            Some(((engine, v), (f.to_string(), n, of)))
        })
        .collect()
}

#[cfg(test)]
#[test]
fn the_majority_schema_at_each_version_names_the_odd_one_out() {
    use Engine::{Mongodb, Postgres};
    let v = |n: u32| Some(Version::from(n));
    let census = [
        (Postgres, v(3), Some("aa")),
        (Postgres, v(3), Some("aa")),
        (Postgres, v(3), Some("bb")),
        (Mongodb, v(3), Some("mm")),
        (Postgres, v(2), Some("cc")),
        (Postgres, v(2), None),
        (Postgres, None, Some("aa")),
    ];
    let m = majority_schemas(&census);
    assert_eq!(m[&(Postgres, Version::from(3u32))], ("aa".to_string(), 2, 3));
    assert_eq!(m[&(Mongodb, Version::from(3u32))], ("mm".to_string(), 1, 1), "engines are counted apart");
    assert_eq!(
        m[&(Postgres, Version::from(2u32))],
        ("cc".to_string(), 1, 1),
        "a target without a schema does not count"
    );
    let tie = majority_schemas(&[(Postgres, v(1), Some("zz")), (Postgres, v(1), Some("yy"))]);
    assert_eq!(tie[&(Postgres, Version::from(1u32))].0, "yy", "a tie goes to the smallest fingerprint");
}
