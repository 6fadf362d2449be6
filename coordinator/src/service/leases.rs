//! The target locks this coordinator holds for its steps in flight.

use std::collections::HashMap;
use std::time::Instant;

use tracing::warn;

use super::*;
use crate::lock::Lease;

impl Coordinator {
    pub(crate) fn held(&self, plan_id: &str, target: &str) -> bool {
        self.held_lease(plan_id, target).is_some()
    }

    /// When the step held under this lock was assigned.
    pub(crate) fn assigned_at(&self, plan_id: &str, target: &str) -> Option<Instant> {
        self.inner().held.get(&(plan_id.to_string(), target.to_string())).map(|h| h.since)
    }

    /// Of `targets`, in order, which fit under `max` steps in flight per host (counting every step whose lock this
    /// coordinator holds, in any plan).
    pub(crate) fn fit_hosts(&self, targets: &[&str], max: u32) -> Vec<bool> {
        let inner = self.inner();
        let mut busy: HashMap<String, u32> = HashMap::new();
        for (_, target) in inner.held.keys() {
            if let Some(host) = inner.hosts.get(target) {
                *busy.entry(host.clone()).or_default() += 1;
            }
        }
        let hosts: Vec<Option<&str>> = targets.iter().map(|t| inner.hosts.get(*t).map(String::as_str)).collect();
        crate::decision::within_host_limit(&hosts, &mut busy, max)
    }

    /// How many locks this coordinator holds for the plan's steps.
    pub(crate) fn held_count(&self, plan_id: &str) -> usize {
        self.inner().held.keys().filter(|(plan, _)| plan == plan_id).count()
    }

    pub(crate) fn held_lease(&self, plan_id: &str, target: &str) -> Option<Lease> {
        self.inner().held.get(&(plan_id.to_string(), target.to_string())).map(|h| h.lease.clone())
    }

    pub(crate) fn hold(&self, plan_id: &str, target: &str, lease: Lease) {
        let now = Instant::now();
        self.inner()
            .held
            .insert((plan_id.to_string(), target.to_string()), Held { lease, renewed: now, since: now, misses: 0 });
    }

    /// The step was just dispatched under its held lock: heartbeats count from now.
    pub(crate) fn assigned(&self, plan_id: &str, target: &str) {
        if let Some(h) = self.inner().held.get_mut(&(plan_id.to_string(), target.to_string())) {
            h.since = Instant::now();
            h.misses = 0;
        }
    }

    pub(crate) fn held_leases(&self) -> Vec<((String, String), Lease, Instant)> {
        self.inner().held.iter().map(|(k, h)| (k.clone(), h.lease.clone(), h.renewed)).collect()
    }

    pub(crate) fn renewed(&self, plan_id: &str, target: &str) {
        if let Some(h) = self.inner().held.get_mut(&(plan_id.to_string(), target.to_string())) {
            h.renewed = Instant::now();
        }
    }

    pub(crate) async fn release(&self, plan_id: &str, target: &str) {
        let held = self.inner().held.remove(&(plan_id.to_string(), target.to_string()));
        if let Some(h) = held {
            let started = Instant::now();
            let released = self.lock.release(&h.lease).await;
            self.metrics.lock_call("release", started.elapsed());
            if let Err(e) = released {
                warn!(plan_id, target, error = %e, "could not release a lock; it will expire");
            }
        }
    }

    /// Forgets a lease without releasing it (it was lost or has expired).
    pub(crate) fn forget(&self, plan_id: &str, target: &str) {
        self.inner().held.remove(&(plan_id.to_string(), target.to_string()));
    }
}
