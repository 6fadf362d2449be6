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
        Self::operator(who)?;
        Ok(self.store.targets().await?.into_iter().filter(|t| selector.matches(t)).collect())
    }

    /// Each target's applied version as its agent last read it, what is pending, and drift from what plans left.
    pub async fn fleet_status(&self, who: &Identity, selector: &Selector) -> Result<Vec<TargetStatus>> {
        Self::operator(who)?;
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
            out.push(TargetStatus {
                dirty: live.as_ref().is_some_and(|l| l.dirty),
                target: t,
                applied,
                pending,
                drift,
                stale,
            });
        }
        Ok(out)
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
